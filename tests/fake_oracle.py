"""A small fake Plumise Oracle: the endpoints the gateway reads and the one it posts usage reports to.

A real Starlette app (served by `serve_app` on loopback) whose answers the test sets directly on the object.
`down = True` makes every endpoint answer 503, as an Oracle outage would. `/api/metrics` behaves like the
real one where it matters (upstream-protocols.md §6.4): a wrong `x-api-key` is 401 and a timestamp that is not
strictly greater than the wallet's last accepted one is 400 "Replay detected".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .conftest import serve_app

ORACLE_KEY = "oracle-test-key"


@dataclass
class FakeOracle:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    capacity: list[dict[str, Any]] = field(default_factory=list)
    topology: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)  # accepted /api/metrics bodies
    report_headers: list[dict[str, str]] = field(default_factory=list)
    down: bool = False
    polls: int = 0
    url: str = ""
    _last_timestamp: dict[str, int] = field(default_factory=dict)

    def add_node(self, address: str, endpoint: str, capabilities: list[str] | None = None) -> None:
        self.nodes.append({"address": address, "endpoint": endpoint, "status": "active", "score": 1,
                           "lastHeartbeat": 0, "capabilities": capabilities or []})

    def set_benchmark(self, address: str, tokens_per_second: float) -> None:
        self.capacity.append({"address": address, "epoch": 1, "tokensProcessed": 0, "requestCount": 0,
                              "uptimeSeconds": 0, "avgLatencyMs": 0, "throughputTokPerSec": 0,
                              "benchmarkTokPerSec": tokens_per_second, "device": "cpu", "ramMb": 0, "vramMb": 0})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/nodes", self._nodes),
            Route("/api/v1/metrics/capacity", self._capacity),
            Route("/api/v1/pipeline/topology", self._topology),
            Route("/api/metrics", self._metrics, methods=["POST"]),
        ])

    async def _nodes(self, request: Request) -> Response:
        self.polls += 1
        if self.down:
            return Response(status_code=503)
        return JSONResponse({"count": len(self.nodes), "nodes": self.nodes})

    async def _capacity(self, request: Request) -> Response:
        return Response(status_code=503) if self.down else JSONResponse(self.capacity)

    async def _topology(self, request: Request) -> Response:
        if self.down:
            return Response(status_code=503)
        model = request.query_params.get("model")
        if not model:
            return JSONResponse({"statusCode": 400, "message": "model is required"}, status_code=400)
        rows = self.topology.get(model, [])
        return JSONResponse({"model": model, "nodes": rows, "count": len(rows)})

    async def _metrics(self, request: Request) -> Response:
        if self.down:
            return Response(status_code=503)
        if request.headers.get("x-api-key") != ORACLE_KEY:
            return JSONResponse({"statusCode": 401, "message": "Invalid API key"}, status_code=401)
        body = json.loads(await request.body())
        wallet, timestamp = body["wallet"], body["timestamp"]
        if timestamp <= self._last_timestamp.get(wallet, -1):
            return JSONResponse({"statusCode": 400, "message": "Replay detected: timestamp must be strictly "
                                 "increasing"}, status_code=400)
        self._last_timestamp[wallet] = timestamp
        self.reports.append(body)
        self.report_headers.append(dict(request.headers))
        return JSONResponse({"success": True, "message": "Metrics recorded successfully", "shouldReset": False},
                            status_code=201)

    def reports_for(self, wallet: str) -> list[dict[str, Any]]:
        return [r for r in self.reports if r["wallet"] == wallet.lower()]


@asynccontextmanager
async def running_oracle(oracle: FakeOracle | None = None) -> AsyncIterator[FakeOracle]:
    oracle = oracle or FakeOracle()
    async with serve_app(oracle.app(), lifespan="off") as url:
        oracle.url = url
        yield oracle
