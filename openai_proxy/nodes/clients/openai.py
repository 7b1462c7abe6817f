"""An OpenAI-compatible node (`openai+http://`, e.g. llama-server): always streamed over SSE.

Chat requests go to `/v1/chat/completions` with the original messages, so the node applies its own template;
text completions and continuations go to `/v1/completions` with the raw prompt text.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from ..base import NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest
from .http import check_status, node_errors, probe_health, sse_data


class OpenAIClient(NodeClient):
    kind = "openai"

    def __init__(self, url: str, http: httpx.AsyncClient, health_timeout: float) -> None:
        super().__init__(url.removesuffix("/").removesuffix("/v1"))
        self._http = http
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
        if request.messages is None:
            return "/v1/completions", body | {"prompt": request.prompt}
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return "/v1/chat/completions", body | {"messages": messages}

    async def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        path, body = self._body(request)
        with node_errors(self.url):
            async with self._http.stream("POST", f"{self.url}{path}", json=body) as response:
                if response.status_code >= 400:
                    check_status(response, await response.aread())
                async for payload in sse_data(response):
                    if payload.startswith("[DONE]"):
                        return
                    chunk = _parse_event(self.url, payload)
                    if chunk is not None:
                        yield chunk
        raise NodeFailure(f"{self.url}: stream ended without [DONE]")


def _parse_event(url: str, payload: str) -> NodeChunk | None:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError as exc:
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
        total_tokens=total if isinstance(total, int) else None,
        finish_reason=finish if finish in ("stop", "length") else None,
    )
    if not chunk.text and chunk.total_tokens is None and chunk.finish_reason is None:
        return None
    return chunk
