"""The public Petals HTTP API (`petals+http://`): form fields in, `{ok, outputs}` out, HTTP 200 even on failure."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx

from ..base import NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest
from .http import check_status, node_errors, parse_json, probe_health


class PetalsHttpClient(NodeClient):
    kind = "petals-http"
    streams = False

    def __init__(self, url: str, http: httpx.AsyncClient, health_timeout: float) -> None:
        super().__init__(url)
        self._http = http
        self._health_timeout = health_timeout

    async def health(self) -> NodeHealth:
        return await probe_health(self._http, self.url, self._health_timeout)

    async def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        params = request.params
        form = {
            "model": request.model,
            "inputs": request.prompt,
            "max_new_tokens": str(params.max_new_tokens),
            "do_sample": "1" if params.do_sample else "0",
        }
        if params.do_sample:
            form |= {"temperature": str(params.temperature), "top_p": str(params.top_p)}
        with node_errors(self.url):
            response = await self._http.post(f"{self.url}/api/v1/generate", data=form)
        check_status(response)
        data = parse_json(response)
        if data.get("ok") is not True or not isinstance(data.get("outputs"), str):
            # The traceback is for our logs only; NodeFailure messages never reach clients.
            raise NodeFailure(f"{self.url}: ok=false: {str(data.get('traceback', ''))[-300:]}")
        yield NodeChunk(text=data["outputs"])
