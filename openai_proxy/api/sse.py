"""A server-sent-events response: `data:` frames from an async generator, keep-alive comments when idle.

Written as a small pure ASGI response rather than sse-starlette's EventSourceResponse because that one ends
every stream as soon as the server begins shutting down, while a gateway must let running answers finish
within the grace period (uvicorn already waits for open connections). Everything else it did is here in a
few lines: a keep-alive comment whenever nothing was sent for `keepalive` seconds, and cancellation of the
body (which closes the node request in the generators' `finally`) as soon as the client disconnects.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
STREAM_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx would otherwise buffer the whole answer
}


def frame(payload: str) -> bytes:
    """One SSE event. JSON from json.dumps never contains a raw newline, so one `data:` line suffices."""
    return b"data: " + payload.encode() + b"\n\n"


class EventStreamResponse(Response):
    def __init__(
        self, events: AsyncGenerator[bytes, None], *, keepalive: float, headers: Mapping[str, str] | None = None
    ) -> None:
        # Like StreamingResponse, this does not call Response.__init__: there is no body to measure.
        self.events = events
        self.keepalive = keepalive
        self.status_code = 200
        self.background = None
        self.init_headers({**STREAM_HEADERS, **(headers or {})})
        self._last_sent = time.monotonic()
        self._lock = anyio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async with anyio.create_task_group() as group:
            group.start_soon(self._cancel_on_disconnect, receive, group.cancel_scope)
            group.start_soon(self._send_keepalives, send)
            await self._send_body(send)
            group.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_body(self, send: Send) -> None:
        async with aclosing(self.events) as events:
            async for data in events:
                await self._send(send, data)

    async def _send(self, send: Send, data: bytes) -> None:
        async with self._lock:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            self._last_sent = time.monotonic()

    async def _send_keepalives(self, send: Send) -> None:
        while True:
            idle = time.monotonic() - self._last_sent
            if idle >= self.keepalive:
                await self._send(send, KEEPALIVE)
                idle = 0
            await anyio.sleep(self.keepalive - idle)

    @staticmethod
    async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return
