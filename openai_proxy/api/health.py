"""Liveness (the original service's body) and readiness (can this gateway serve anything right now?)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .context import gateway
from .docs import Operation

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


STORE_PING_SECONDS = 1.0  # a load balancer's probe must get an answer, not wait on a blackholed Redis


async def ready(request: Request) -> Response:
    """503 when no node serves any model. A state store that does not answer makes the gateway `degraded`,
    not unavailable: pro wallets and service keys are still served (free wallets get 503 per request), and
    since every replica shares the one store, taking them all out of the balancer would stop that too."""
    gw = gateway(request)
    models = {spec.id: len(gw.pool.candidates(spec.id)) for spec in gw.catalog}
    serving = any(models.values())
    try:
        async with asyncio.timeout(STORE_PING_SECONDS):
            store_ok = await gw.store.ping()
    except TimeoutError:
        store_ok = False
    status = "unavailable" if not serving else "ready" if store_ok else "degraded"
    body = {"status": status, "healthy_nodes": models, "state_store": "ok" if store_ok else "unreachable"}
    return Response(json.dumps(body), status_code=200 if serving else 503, media_type="application/json")


routes = [
    Route("/", health, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/api/v1/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
]
HEALTH_BODY = {"type": "object", "required": ["status", "timestamp", "service", "version"], "properties": {
    "status": {"const": "ok"}, "timestamp": {"type": "string", "format": "date-time"},
    "service": {"type": "string"}, "version": {"type": "string"}}}
operations = [
    Operation("GET", path, "Liveness (the original service's body)", "Operations", response=HEALTH_BODY,
              auth=False)
    for path in ("/", "/health", "/api/v1/health")
] + [
    Operation("GET", "/ready", "Readiness: 200 when the gateway can serve, else 503", "Operations", auth=False,
              same_body=(503,), description="`degraded` (still 200): nodes serve, but the state store does not "
              "answer, so only pro wallets and service keys are served.",
              response={"type": "object", "required": ["status", "healthy_nodes", "state_store"], "properties": {
                  "status": {"enum": ["ready", "degraded", "unavailable"]},
                  "healthy_nodes": {"type": "object", "additionalProperties": {"type": "integer"}},
                  "state_store": {"enum": ["ok", "unreachable"]}},
                  "additionalProperties": True}),
]
