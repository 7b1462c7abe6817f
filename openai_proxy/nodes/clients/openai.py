"""An OpenAI-compatible node (`openai+http://`, e.g. llama-server): always streamed over SSE.

Chat requests go to `/v1/chat/completions` with the original messages, so the node applies its own template;
text completions and continuations (`assistant_prefix` set) go to `/v1/completions` with the raw prompt text.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from ... import jsonsafe
from ..base import FinishReason, NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest
from .http import MAX_LOGGED_BODY, drain, probe_health, sse_batches, stream_errors

JSON_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


class OpenAIClient(NodeClient):
    kind = "openai"

    def __init__(
        self, url: str, http: httpx.AsyncClient, session: aiohttp.ClientSession, health_timeout: float
    ) -> None:
        super().__init__(url.removesuffix("/").removesuffix("/v1"))
        self._http = http  # health probes
        self._session = session  # the answers (the data plane: see http.py)
        self._health_timeout = health_timeout

    async def health(self) -> NodeHealth:
        return await probe_health(self._http, self.url, self._health_timeout)

    def _body(self, request: NodeRequest) -> tuple[str, dict[str, Any]]:
        params = request.params
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if request.messages is None or request.assistant_prefix:
            # A continuation is raw text: the rendered prompt already ends inside the assistant turn.
            return "/v1/completions", body | {"prompt": request.prompt}
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return "/v1/chat/completions", body | {"messages": messages}

    async def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        path, body = self._body(request)
        url = f"{self.url}{path}"
        # Leaving this block early (a client that left, a stop string) closes the response and its connection.
        with stream_errors(self.url):
            async with self._session.post(url, data=jsonsafe.dumps(body), headers=JSON_HEADERS,
                                          allow_redirects=False) as response:
                if response.status >= 400:
                    text = await response.content.read(MAX_LOGGED_BODY)
                    raise NodeFailure(f"{url}: HTTP {response.status}: {text!r}")
                async with aclosing(sse_batches(self.url, response)) as batches:
                    async for payloads in batches:
                        read = _merge(self.url, payloads)
                        if read.chunk is not None:
                            yield read.chunk
                        if read.failure is not None:
                            raise read.failure
                        if read.done:
                            break
                    else:
                        raise NodeFailure(f"{self.url}: stream ended without [DONE]")
                await drain(response)


@dataclass(frozen=True, slots=True)
class _Read:
    chunk: NodeChunk | None  # the text and counts of the read's events, joined
    done: bool  # `[DONE]` was among them
    failure: NodeFailure | None  # a broken event, raised after the text before it is handed on


def _merge(url: str, payloads: list[bytes]) -> _Read:
    """The events of one network read as one chunk: their text joined, their tokens summed. A broken event
    fails the node only after the text before it is handed on, so a continuation on another node starts
    exactly where this one stopped."""
    done = False
    for position, payload in enumerate(payloads):
        if payload.startswith(b"[DONE]"):
            payloads, done = payloads[:position], True
            break
    texts: list[str] = []
    total: int | None = None
    finish: FinishReason | None = None
    failure: NodeFailure | None = None
    for event in _decode_all(payloads):
        try:
            text, event_total, event_finish = _event_fields(url, event)
        except NodeFailure as exc:
            failure = exc
            break
        if text:
            texts.append(text)
        total = event_total if event_total is not None else total
        finish = event_finish or finish
    chunk = None
    if texts or total is not None or finish is not None:
        # One token per text event (llama-server), so the counts stay exact whatever the batching.
        chunk = NodeChunk(text="".join(texts), tokens=len(texts) or None, total_tokens=total, finish_reason=finish)
    return _Read(chunk, done, failure)


def _decode_all(payloads: list[bytes]) -> list[object]:
    """The events of a read decoded in one call: the payloads joined into one JSON array (one decoder call
    instead of one per token: 122 -> 35 us for a 16-token answer, bench/). When that
    fails, or the array does not hold exactly one value per payload (a payload like `{..},{..}` is not one
    event), each payload is decoded alone, and the first broken one becomes `_BROKEN` at its place."""
    if not payloads:
        return []
    try:
        events = jsonsafe.loads(b"[" + b",".join(payloads) + b"]")
        if isinstance(events, list) and len(events) == len(payloads):
            return events
    except ValueError:
        pass
    decoded: list[object] = []
    for payload in payloads:
        try:
            decoded.append(jsonsafe.loads(payload))
        except ValueError:
            decoded.append(_BROKEN)
            break
    return decoded


_BROKEN = object()  # an event that is not JSON


def _event_fields(url: str, event: object) -> tuple[str, int | None, FinishReason | None]:
    """(text, the node's completion-token total, finish_reason) of one decoded SSE event."""
    if event is _BROKEN:
        raise NodeFailure(f"{url}: unparsable SSE event")
    if not isinstance(event, dict):
        raise NodeFailure(f"{url}: SSE event is not an object")
    if "error" in event:
        raise NodeFailure(f"{url}: in-band error: {str(event['error'])[:300]}")
    usage = event.get("usage")
    total = usage.get("completion_tokens") if isinstance(usage, dict) else None
    choices = event.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    finish = choice.get("finish_reason")
    return (
        text if isinstance(text, str) else "",
        total if isinstance(total, int) else None,
        "stop" if finish == "stop" else "length" if finish == "length" else None,
    )
