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

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

KEEPALIVE = b": keep-alive\n\n"
# Frames waiting for the sender at most: past that the generator waits (backpressure from a slow client).
MAX_PENDING_FRAMES = 256
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
        # asyncio's Lock: taking a free one does not yield to the event loop, where anyio's default Lock takes
        # a checkpoint (a whole loop iteration) on every acquire, that is on every token.
        self._lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        frames: asyncio.Queue[bytes] = asyncio.Queue(MAX_PENDING_FRAMES)
        async with anyio.create_task_group() as group:
            group.start_soon(self._cancel_on_disconnect, receive, group.cancel_scope)
            group.start_soon(self._send_keepalives, send)
            group.start_soon(self._send_frames, send, frames)
            await self._send_body(frames)
            group.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_body(self, frames: asyncio.Queue[bytes]) -> None:
        async with aclosing(self.events) as events:
            async for data in events:
                await frames.put(data)  # returns at once unless the queue is full
        await frames.join()  # everything sent

    async def _send_frames(self, send: Send, frames: asyncio.Queue[bytes]) -> None:
        """Send what the generator produced, in one write per wake-up: the frames of all the tokens that
        came in one read from the node go out together (one write per token was ~30% of a stream's CPU)."""
        while True:
            batch = [await frames.get()]
            while not frames.empty():
                batch.append(frames.get_nowait())
            await self._send(send, b"".join(batch))
            for _ in batch:
                frames.task_done()

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
