"""What every protocol shares: pacing tokens, noticing that the client left, and the hang/die faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from itertools import islice
from typing import TypeVar

from starlette.requests import HTTPConnection, Request
from starlette.types import Receive

from .state import DevnodeConfig, NodeState
from .text import iter_tokens

T = TypeVar("T")


class ClientGone(Exception):
    """The client went away (or closed its socket) before the answer was complete."""


class SimulatedCrash(Exception):
    """Raised to kill a connection when the server gives us no transport to abort (not uvicorn)."""


async def wait_disconnect(receive: Receive) -> None:
    """Return once the HTTP client has disconnected (call only after the request body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def forever() -> None:
    """The "hang" fault: accept the work and never finish it."""
    await asyncio.Event().wait()


async def unless(stop: Awaitable[object], work: Awaitable[T]) -> T:
    """Run `work`, but cancel it and raise ClientGone if `stop` (a disconnect watcher) finishes first."""
    work_task = asyncio.ensure_future(work)
    stop_task = asyncio.ensure_future(stop)
    try:
        await asyncio.wait((work_task, stop_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also on our own cancellation: never leave either task running behind us.
        work_task.cancel()
        stop_task.cancel()
        await asyncio.gather(work_task, stop_task, return_exceptions=True)
    if work_task.cancelled():
        raise ClientGone
    return work_task.result()


async def paced(cfg: DevnodeConfig, tokens: Iterable[str]) -> AsyncIterator[str]:
    """Yield `tokens` at the configured speed.

    Each token costs `token_delay`; the first also costs `first_token_delay` (the "prefill"). Every token
    yields to the event loop even with zero delays, so a cancelled generation stops promptly.
    """
    for i, token in enumerate(tokens):
        await asyncio.sleep(cfg.token_delay + (cfg.first_token_delay if i == 0 else 0.0))
        yield token


async def collect(cfg: DevnodeConfig, tokens: Iterable[str]) -> list[str]:
    return [token async for token in paced(cfg, tokens)]


def planned_tokens(cfg: DevnodeConfig, prompt: str, requested: int) -> list[str]:
    """The tokens a request will produce: the answer cut at EOS, or at the point of death for "die"."""
    count = cfg.answer_length(requested)
    if cfg.fault == "die":
        count = min(count, cfg.die_after)
    return list(islice(iter_tokens(prompt), count))


def cut_connection(receive: Receive) -> None:
    """Drop the client's TCP connection at once: no response, no final chunk, no close frame.

    ASGI has no message for this, but uvicorn's `receive` is a bound method of its per-connection object,
    which holds the transport. Under another server, raise instead: servers close the connection on an
    application error once a response has started (before that they may send a 500).
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if not isinstance(transport, asyncio.WriteTransport):
        raise SimulatedCrash("simulated node death")
    transport.abort()


async def answer_whole(
    request: Request, node: NodeState, cfg: DevnodeConfig, prompt: str, count: int
) -> list[str] | None:
    """Produce a complete answer for a non-streaming request under the hang and die faults.

    Returns the tokens (the caller renders them), or None when nothing must be sent: the client left
    (counted as cancelled) or the node "died" (the connection is already cut; counted as failed).
    The caller handles the "fail" fault, whose error shape depends on the protocol.
    """
    with node.tally() as tally:
        try:
            if cfg.fault == "hang":
                await unless(wait_disconnect(request.receive), forever())
            tokens = await unless(wait_disconnect(request.receive), collect(cfg, planned_tokens(cfg, prompt, count)))
        except ClientGone:
            return None
        if cfg.fault == "die":
            tally.close("failed")
            cut_connection(request.receive)
            return None
        tally.close("completed")
        return tokens


def node_of(connection: HTTPConnection) -> NodeState:
    """The app's NodeState (set by create_devnode_app)."""
    node = connection.app.state.node
    assert isinstance(node, NodeState)
    return node
