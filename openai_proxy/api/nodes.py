"""`GET /api/v1/nodes` and `GET /api/v1/nodes/{address}/stats` (upstream §1.5), with routing state added.

The original's fields (`url`, `address`, `status`, `lastHealthCheck`) keep their shapes; each node also shows
its kind, source, models, health, cooldown, in-flight and lifetime counters, median latency and tokens/s.
Failure counts are not secrets; node error bodies never appear here (they go to the logs, truncated).
Every node is listed, with `status` saying whether it is serving, and relay agents too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..nodes.node import Node
from ..nodes.pool import NodePool
from .context import gateway
from .docs import Operation


def describe(pool: NodePool, node: Node) -> dict[str, Any]:
    cooling = pool.is_cooling(node)
    latency = node.median_latency()
    speed = node.tokens_per_second()
    models = node.models()
    return {
        "url": node.url,
        "address": node.address or "",
        "status": "online" if node.healthy and not cooling else "offline",
        "lastHealthCheck": _iso(node.last_health_check),
        "kind": node.kind,
        "source": node.source,
        "relayConnected": node.relay is not None,
        "models": sorted(models) if models is not None else None,
        "healthy": node.healthy,
        "coolingDown": cooling,
        "inFlight": node.in_flight,
        "requests": node.requests,
        "failures": node.failures,
        "consecutiveFailures": node.consecutive_failures,
        "capacity": node.capacity,
        "medianLatencyMs": round(latency * 1000, 1) if latency is not None else None,
        "tokensPerSecond": round(speed, 2) if speed is not None else None,
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), media_type="application/json")


async def list_nodes(request: Request) -> Response:
    pool = gateway(request).pool
    nodes = [describe(pool, node) for node in pool.nodes.values()]
    return _json({"total": len(nodes), "nodes": nodes})


async def node_stats(request: Request) -> Response:
    pool = gateway(request).pool
    node = pool.by_address(request.path_params["address"])
    if node is None:
        return _json({"found": False, "message": "Node not found or not registered"})
    return _json({"found": True, "node": describe(pool, node)})


routes = [
    Route("/api/v1/nodes", list_nodes, methods=["GET"]),
    Route("/api/v1/nodes/{address}/stats", node_stats, methods=["GET"]),
]

_NODE = {"type": "object", "required": ["url", "address", "status", "lastHealthCheck"], "properties": {
    "url": {"type": "string"}, "address": {"type": "string"}, "status": {"enum": ["online", "offline"]},
    "lastHealthCheck": {"type": ["string", "null"], "format": "date-time"}, "kind": {"type": "string"},
    "source": {"enum": ["static", "oracle", "relay"]}, "relayConnected": {"type": "boolean"},
    "models": {"type": ["array", "null"], "items": {"type": "string"}}, "healthy": {"type": "boolean"},
    "coolingDown": {"type": "boolean"}, "inFlight": {"type": "integer"}, "requests": {"type": "integer"},
    "failures": {"type": "integer"}, "consecutiveFailures": {"type": "integer"}, "capacity": {"type": "number"},
    "medianLatencyMs": {"type": ["number", "null"]}, "tokensPerSecond": {"type": ["number", "null"]}},
    "additionalProperties": True}
operations = [
    Operation("GET", "/api/v1/nodes", "Every node (static, Oracle, relay) with its routing state", "Nodes",
              auth=False, response={"type": "object", "required": ["total", "nodes"], "properties": {
                  "total": {"type": "integer"}, "nodes": {"type": "array", "items": _NODE}}}),
    Operation("GET", "/api/v1/nodes/{address}/stats", "One node by address (case-insensitive)", "Nodes",
              auth=False, path_params={"address": "The node's 0x address."},
              response={"type": "object", "required": ["found"], "properties": {
                  "found": {"type": "boolean"}, "node": _NODE, "message": {"type": "string"}}}),
]
