"""Pure ASGI middleware: a request id on every response, bound to the logging context for the request, and
one access-log line plus the request's metrics when it ends (after the last byte of a stream)."""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..telemetry import UNMATCHED, RequestInfo, tracking

if TYPE_CHECKING:
    from ..metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("openai_proxy.access")

PROBES = frozenset({"/health", "/ready", "/metrics", "/api/v1/health"})  # logged at debug: pollers are noisy
_CONVERTER = re.compile(r"\{(\w+):\w+\}")
_LABELS: dict[str, str] = {}


def route_label(scope: Scope) -> str:
    """The matched route's template (`/v1/models/{model_id}`), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str) or not path:
        return UNMATCHED
    label = _LABELS.get(path)
    if label is None:  # once per route: the routes are the app's, a bounded set
        label = _LABELS[path] = _CONVERTER.sub(r"{\1}", path)
    return label


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{secrets.token_hex(12)}"
        token = request_id_var.set(request_id)
        info = RequestInfo(request_id=request_id, method=scope["method"], path=scope["path"])

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        try:
            with tracking(info):
                await self.app(scope, receive, send_with_id)
        finally:
            self._finish(scope, info)
            request_id_var.reset(token)

    def _finish(self, scope: Scope, info: RequestInfo) -> None:
        info.route = route_label(scope)
        duration = time.perf_counter() - info.started
        level = logging.DEBUG if info.route in PROBES else logging.INFO
        access_log.log(level, "%s %s %d", info.method, info.path, info.status, extra=info.log_fields(duration))
        if self.metrics is not None:
            self.metrics.observe(info, duration)
