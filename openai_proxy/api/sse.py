"""A server-sent-events response: `data:` frames from an async generator, keep-alive comments when idle.

Written as a small pure ASGI response rather than sse-starlette's EventSourceResponse because that one ends
every stream as soon as the server begins shutting down, while a gateway must let running answers finish
within the grace period (uvicorn already waits for open connections). Everything else it did is here in a
few lines: a keep-alive comment whenever nothing was sent for `keepalive` seconds, and cancellation of the
body (which closes the node request in the generators' `finally`) as soon as the client disconnects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .disconnect import ClientGone, run_while_connected

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
        self.last_sent = time.monotonic()
        # asyncio's Lock: taking a free one does not yield to the event loop, where anyio's default Lock takes
        # a checkpoint (a whole loop iteration) on every acquire, that is on every token.
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One task reads the events and sends each frame as soon as it is made: no queue and no sender task
        between the node and the client (their hand-over cost a loop iteration per node read), keep-alives
        from a timer, and the task cancelled when the client leaves (disconnect.py), where an anyio task group
        started three tasks per stream. A slow client still holds the node back: `send` waits while the
        connection's write buffer is full, and nothing more is read from the node meanwhile."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            await run_while_connected(receive, self._pump(send))
        except ClientGone:
            return  # with no one left to send the end to
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        """Every frame of the body, sent as it is made."""
        keepalives = _KeepAlives(self, send)
        try:
            async with aclosing(self.events) as events:
                async for data in events:
                    await self.send_frame(send, data)
        finally:
            keepalives.stop()

    async def send_frame(self, send: Send, data: bytes) -> None:
        async with self._lock:
            await send({"type": "http.response.body", "body": data, "more_body": True})
            self.last_sent = time.monotonic()


class _KeepAlives:
    """A comment whenever nothing was sent for `keepalive` seconds: one timer that re-arms itself, and a
    task only for the rare comment actually due (a node slow to its first token)."""

    def __init__(self, response: EventStreamResponse, send: Send) -> None:
        self._response, self._send = response, send
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(response.keepalive, self._fire)

    def _fire(self) -> None:
        idle = time.monotonic() - self._response.last_sent
        due = self._response.keepalive - idle
        if due <= 0 and (self._sending is None or self._sending.done()):
            self._sending = self._loop.create_task(self._response.send_frame(self._send, KEEPALIVE))
            due = self._response.keepalive
        self._timer = self._loop.call_later(max(due, 0.001), self._fire)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None:
            self._sending.cancel()
