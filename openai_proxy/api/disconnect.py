"""Stop work nobody will read: the moment a client disconnects, cancel what its request is running.

The work runs in a task of its own, which a watcher task cancels. A task of its own has a shallow stack:
each resumption on a node read is cheaper there than in the request's task under the whole middleware
chain (running non-streaming work inline measured ~8% more CPU per request at 32 connections, bench/). And
awaiting the task directly is cheaper than `asyncio.wait` on the two, or an anyio task group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected first; the work was cancelled and has stopped."""


async def run_while_connected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or ClientGone once it has been cancelled because the client left. A cancellation of
    the caller (server shutdown) cancels the work too and goes on as usual."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnected(receive))
    gone.add_done_callback(lambda _: task.cancel())
    try:
        return await task
    except asyncio.CancelledError:
        caller = asyncio.current_task()
        if not gone.done() or gone.cancelled() or (caller is not None and caller.cancelling()):
            raise
        raise ClientGone from None
    finally:
        gone.cancel()


async def disconnected(receive: Receive) -> None:
    """Return when the client disconnects. The body has been read, so the next ASGI message is the
    disconnect; it never arrives while the client waits for its answer."""
    while (await receive())["type"] != "http.disconnect":
        pass
