"""Liveness (the original service's body) and readiness (can this gateway serve anything right now?)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .context import gateway

SERVICE_NAME = "Plumise Inference API"
SERVICE_VERSION = "1.0.0"  # the original's value: clients written for it may check it


async def health(request: Request) -> Response:
    body = {
        "status": "ok",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "service": SERVICE_NAME,
        "version": SERVICE_VERSION,
    }
    return Response(json.dumps(body), media_type="application/json")


async def ready(request: Request) -> Response:
    gw = gateway(request)
    models = {spec.id: len(gw.pool.candidates(spec.id)) for spec in gw.catalog}
    serving = any(models.values())
    body = {"status": "ready" if serving else "unavailable", "healthy_nodes": models}
    return Response(json.dumps(body), status_code=200 if serving else 503, media_type="application/json")


routes = [
    Route("/", health, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/api/v1/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
]
