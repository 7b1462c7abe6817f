"""Stop work nobody will read: cancel the request's task the moment its client disconnects.

One watcher task per request and a done-callback, where the task group or `asyncio.wait` of two tasks it
replaces cost a fifth of a short request's start-up (bench/). The watcher waits on `receive()`: the body has
been read by then, so the next ASGI message is the disconnect, and it never arrives while the client waits.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive


class DisconnectWatch:
    """`with DisconnectWatch(receive) as watch:` runs its block in the current task; if the client leaves
    first, the task is cancelled, the block's CancelledError is absorbed at the end of the `with` and
    `watch.gone` is True. A cancellation from anywhere else (server shutdown) goes on as usual."""

    __slots__ = ("_receive", "_running", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._running = False
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self.gone = False

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._running = True
        self._watcher = asyncio.ensure_future(_disconnect(self._receive))
        self._watcher.add_done_callback(self._client_left)
        return self

    def _client_left(self, watcher: asyncio.Future[None]) -> None:
        # Never once the block is over: the callback runs a loop turn after the disconnect, and by then the
        # task may be past the block, doing something that must not be cancelled.
        if self._running and not watcher.cancelled() and self._task is not None:
            self.gone = True
            self._task.cancel()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        self._running = False
        assert self._watcher is not None and self._task is not None
        self._watcher.cancel()
        # Absorb only our own cancellation: uncancel() counts the others still pending.
        return kind is asyncio.CancelledError and self.gone and self._task.uncancel() == 0


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
