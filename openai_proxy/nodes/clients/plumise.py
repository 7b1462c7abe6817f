"""A Plumise node (plumise-petals / plumise-agent): `POST /api/v1/generate` JSON, one answer, no streaming."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx

from ..base import NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest
from .http import check_status, node_errors, parse_json, probe_health


class PlumiseClient(NodeClient):
    kind = "plumise"
    streams = False

    def __init__(self, url: str, http: httpx.AsyncClient, health_timeout: float) -> None:
        super().__init__(url)
        self._http = http
        self._health_timeout = health_timeout

    async def health(self) -> NodeHealth:
        return await probe_health(self._http, self.url, self._health_timeout)

    async def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        params = request.params
        body = {
            "inputs": request.prompt,
            "parameters": {
                "max_new_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "do_sample": params.do_sample,
            },
            "stream": False,
        }
        with node_errors(self.url):
            response = await self._http.post(f"{self.url}/api/v1/generate", json=body)
        check_status(response)
        data = parse_json(response)
        text = data.get("generated_text")
        if not isinstance(text, str):
            raise NodeFailure(f"{self.url}: answer has no generated_text")
        count = data.get("num_tokens")
        yield NodeChunk(text=text, total_tokens=count if isinstance(count, int) and count >= 0 else None)
