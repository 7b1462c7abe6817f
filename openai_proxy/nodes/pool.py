"""The node pool: choose a node, retry before the first byte, continue on another node after it.

`generate` is the one place that knows about failover. A node failure before any text was produced is retried
on a different node, invisibly. After text was produced, the next node gets the original prompt plus that
text as a raw continuation of the same assistant turn, with `max_new_tokens` reduced by the tokens already
produced, so the caller sees one seamless stream. A node that failed is never tried twice for one request.
Deadlines (first token, then a fresh idle deadline per chunk) are enforced here, around every node alike,
relay agents included. Which nodes exist and which may serve now is the registry's business (registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from ..errors import BadUpstreamResponse, NoHealthyNode, UpstreamTimeout
from ..settings import Settings
from ..tokens import TokenCounter
from .base import FinishReason, NodeChunk, NodeClient, NodeFailure, NodeRequest
from .node import Node, choose
from .registry import NodeRegistry

log = logging.getLogger("openai_proxy.pool")

# A node that answers in one piece gets this much extra time per requested token before its first byte.
SECONDS_PER_TOKEN_WITHOUT_STREAMING = 1.0


@dataclass
class GenerationStats:
    """Filled in by `NodePool.generate` as it goes, readable after the stream is closed."""

    completion_tokens: int = 0
    nodes: list[str] = field(default_factory=list)  # every node that produced part of the answer
    failovers: int = 0
    continuations: int = 0


@dataclass
class _Segment:
    """What one node produced for one attempt."""

    parts: list[str] = field(default_factory=list)
    known_tokens: int = 0
    all_counted: bool = True
    node_total: int | None = None
    finish_reason: FinishReason | None = None

    def add(self, chunk: NodeChunk) -> None:
        if chunk.text:
            self.parts.append(chunk.text)
        if chunk.tokens is None:
            self.all_counted = self.all_counted and not chunk.text
        else:
            self.known_tokens += chunk.tokens
        if chunk.total_tokens is not None:
            self.node_total = chunk.total_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    def token_count(self, counter: TokenCounter) -> int:
        if self.node_total is not None:
            return self.node_total
        if self.all_counted:
            return self.known_tokens
        return counter.count("".join(self.parts))


ServedHook = Callable[[Node, int, float], None]


class NodePool(NodeRegistry):
    """The registry's nodes, plus `generate`: one answer, whatever happens to the nodes serving it.

    `failovers` and `continuations` count, over the pool's life, node failures absorbed and answers finished
    on another node after the first byte; with the per-node counters they are what metrics read.
    `served` hooks get (node, tokens, seconds) for every node that produced text (usage reports)."""

    def __init__(
        self,
        settings: Settings,
        counter: TokenCounter,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(settings, clock=clock)
        self.counter = counter
        self.rng = rng or random.Random()
        self.served: list[ServedHook] = []
        self.failovers = 0
        self.continuations = 0

    # --- generation -------------------------------------------------------------------------------------

    async def generate(
        self, model: str, request: NodeRequest, stats: GenerationStats
    ) -> AsyncGenerator[NodeChunk, None]:
        """Stream one answer for `model`; the last chunk carries `finish_reason`."""
        tried: set[Node] = set()
        produced: list[str] = []  # every piece already yielded, across nodes
        failures: list[NodeFailure] = []
        while len(tried) < self.settings.node_max_attempts:
            if produced and stats.completion_tokens >= request.params.max_new_tokens:
                yield NodeChunk(finish_reason="length")  # the answer was complete when its node failed
                return
            candidates = self.candidates(model, tried)
            if not candidates:
                break
            node = choose(candidates, self.rng)
            client = self.route(node, model)
            assert client is not None  # candidates() only lists nodes with a route
            tried.add(node)
            attempt = request
            if produced:
                attempt = request.continued("".join(produced), stats.completion_tokens)
                stats.continuations += 1
                self.continuations += 1
            try:
                # aclosing: a client that leaves closes this generator, and that must close the node's
                # stream now (in-flight count, HTTP response, socket), not whenever the GC gets to it.
                async with aclosing(self._attempt(node, client, attempt, stats, fresh=not produced)) as chunks:
                    async for chunk in chunks:
                        if chunk.text:
                            produced.append(chunk.text)
                        yield chunk
                return
            except NodeFailure as exc:
                failures.append(exc)
                self._failed(node, client, exc, len(tried))
                stats.failovers += 1
        raise _give_up(model, failures)

    def _failed(self, node: Node, client: NodeClient, exc: NodeFailure, tried: int) -> None:
        self.failovers += 1
        node.record_failure(self.clock(), self.settings.node_max_failures, self.settings.node_cooldown_seconds)
        if exc.unreachable and client is node.client:
            node.health_ok = False  # out of rotation until a health check finds it again
        # The message may quote a node's error body: logs only, truncated, never to clients.
        log.warning("node %s failed (%s); %d node(s) tried", client.url, str(exc)[:500], tried)

    async def _attempt(
        self, node: Node, client: NodeClient, request: NodeRequest, stats: GenerationStats, *, fresh: bool
    ) -> AsyncGenerator[NodeChunk, None]:
        """One node's part of the answer, under the deadlines: one first-token deadline, then a fresh idle
        deadline per chunk, on the waits for the node only (the time the consumer holds a chunk is not the
        node's). One watchdog per attempt rather than a timer per chunk, and no generator layer of its own."""
        segment = _Segment()
        started = self.clock()
        limit = self.settings.first_token_timeout
        if not client.streams:
            limit += request.params.max_new_tokens * SECONDS_PER_TOKEN_WITHOUT_STREAMING
        watchdog = _Watchdog()
        node.in_flight += 1
        try:
            async with aclosing(client.generate(request)) as stream:
                while True:
                    task = watchdog.start(limit)
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        break
                    except asyncio.CancelledError as exc:
                        if watchdog.expired and task.uncancel() <= watchdog.cancelling:
                            raise NodeFailure(f"{client.url}: no token for {limit:g} s", timeout=True) from exc
                        raise
                    finally:
                        watchdog.stop()
                    limit = self.settings.token_idle_timeout
                    segment.add(chunk)
                    yield chunk
            if not segment.parts and fresh:
                raise NodeFailure(f"{client.url}: empty answer")
        finally:
            watchdog.close()
            node.in_flight -= 1
            tokens = segment.token_count(self.counter)
            stats.completion_tokens += tokens
            if segment.parts:
                stats.nodes.append(node.address or node.url)
                self._notify(node, tokens, self.clock() - started)
        node.record_success(self.clock() - started, tokens)
        yield NodeChunk(finish_reason=_finish(segment, tokens, request))

    def _notify(self, node: Node, tokens: int, seconds: float) -> None:
        for hook in self.served:
            hook(node, tokens, seconds)


class _Watchdog:
    """The deadline of the current wait on a node, enforced like `asyncio.timeout` (the waiting task is
    cancelled, and the cancellation told apart from any other by `expired` and the task's cancel count), but
    with one timer for a whole stream: a wait only moves its deadline, and the timer, when it fires before
    the deadline of the wait in progress, re-arms itself for it. Between waits nothing can expire.
    A timer per chunk (`asyncio.timeout` around each wait) was about 7% of the gateway's CPU (bench/)."""

    __slots__ = ("_loop", "_task", "_timer", "_until", "cancelling", "expired")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._until: float | None = None  # the deadline of the wait in progress; None between waits
        self.cancelling = 0
        self.expired = False

    def start(self, seconds: float) -> asyncio.Task[object]:
        task = asyncio.current_task()
        assert task is not None
        self._task, self.cancelling = task, task.cancelling()
        self._until = until = self._loop.time() + seconds
        if self._timer is None or self._timer.when() > until:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(until, self._fire)
        return task

    def stop(self) -> None:
        self._until = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if self._until is None or self._task is None:
            return  # between waits: the next wait arms a new timer
        if self._loop.time() < self._until:
            self._timer = self._loop.call_at(self._until, self._fire)
            return
        self.expired = True
        self._task.cancel()


def _finish(segment: _Segment, tokens: int, request: NodeRequest) -> FinishReason:
    if segment.finish_reason is not None:
        return segment.finish_reason
    return "length" if tokens >= request.params.max_new_tokens else "stop"


def _give_up(model: str, failures: list[NodeFailure]) -> Exception:
    """503 when nobody could be reached (or nobody was there), 504 for a timeout, else 502."""
    answered = [f for f in failures if not f.unreachable]
    if not answered:
        return NoHealthyNode(f"No healthy node serves '{model}' right now. Try again shortly.")
    if answered[-1].timeout:
        return UpstreamTimeout(f"The nodes serving '{model}' did not answer in time. Try again.")
    return BadUpstreamResponse(f"The nodes serving '{model}' failed to produce an answer. Try again.")
