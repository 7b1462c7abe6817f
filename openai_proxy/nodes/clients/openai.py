"""An OpenAI-compatible node (`openai+http://`, e.g. llama-server): always streamed over SSE.

Chat requests go to `/v1/chat/completions` with the original messages, so the node applies its own template;
text completions and continuations (`assistant_prefix` set) go to `/v1/completions` with the raw prompt text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import aiohttp
import httpx

from ... import jsonsafe
from ..base import NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest
from .http import MAX_LOGGED_BODY, drain, probe_health, sse_data, stream_errors

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
            async with self._session.post(url, data=json.dumps(body).encode(), headers=JSON_HEADERS,
                                          allow_redirects=False) as response:
                if response.status >= 400:
                    text = await response.content.read(MAX_LOGGED_BODY)
                    raise NodeFailure(f"{url}: HTTP {response.status}: {text!r}")
                async with aclosing(sse_data(self.url, response)) as payloads:
                    async for payload in payloads:
                        if payload.startswith(b"[DONE]"):
                            break
                        chunk = _parse_event(self.url, payload)
                        if chunk is not None:
                            yield chunk
                    else:
                        raise NodeFailure(f"{self.url}: stream ended without [DONE]")
                await drain(response)


def _parse_event(url: str, payload: bytes) -> NodeChunk | None:
    try:
        event = jsonsafe.loads(payload)
    except ValueError as exc:
        raise NodeFailure(f"{url}: unparsable SSE event") from exc
    if not isinstance(event, dict):
        raise NodeFailure(f"{url}: SSE event is not an object")
    if "error" in event:
        raise NodeFailure(f"{url}: in-band error: {str(event['error'])[:300]}")
    usage = event.get("usage")
    total = usage.get("completion_tokens") if isinstance(usage, dict) else None
    choices = event.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    finish = choice.get("finish_reason")
    chunk = NodeChunk(
        text=text if isinstance(text, str) else "",
        tokens=1 if isinstance(text, str) and text else None,  # one token per chunk (llama-server): exact cuts
        total_tokens=total if isinstance(total, int) else None,
        finish_reason=finish if finish in ("stop", "length") else None,
    )
    if not chunk.text and chunk.total_tokens is None and chunk.finish_reason is None:
        return None
    return chunk
