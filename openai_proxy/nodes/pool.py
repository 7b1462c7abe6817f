"""The node pool: choose a node, retry before the first byte, continue on another node after it.

`generate` is the one place that knows about failover. A node failure before any text was produced is retried
on a different node, invisibly. After text was produced, the next node gets the original prompt plus that
text as a raw continuation of the same assistant turn, with `max_new_tokens` reduced by the tokens already
produced, so the caller sees one seamless stream. A node that failed is never tried twice for one request.
Deadlines (first token, idle between tokens) are enforced here, around every node alike.
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


class NodePool:
    def __init__(
        self,
        settings: Settings,
        counter: TokenCounter,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.counter = counter
        self.rng = rng or random.Random()
        self.clock = clock
        self.nodes: dict[str, Node] = {}

    # --- membership -------------------------------------------------------------------------------------

    def add(self, client: NodeClient, **state: object) -> Node:
        node = Node(client=client, **state)  # type: ignore[arg-type]
        self.nodes[client.url] = node
        return node

    def candidates(self, model: str, exclude: set[Node] | frozenset[Node] = frozenset()) -> list[Node]:
        now = self.clock()
        return [n for n in self.nodes.values() if n.in_rotation(now) and n.serves(model) and n not in exclude]

    def serving_models(self) -> set[str]:
        now = self.clock()
        models: set[str] = set()
        for node in self.nodes.values():
            if node.in_rotation(now) and node.reported_model:
                models.add(node.reported_model)
        return models

    def require_candidates(self, model: str) -> None:
        if not self.candidates(model):
            raise NoHealthyNode(f"No healthy node serves '{model}' right now. Try again shortly.")

    # --- health ---------------------------------------------------------------------------------------------

    async def check_health(self) -> None:
        await asyncio.gather(*(self._check_node(node) for node in list(self.nodes.values())))

    async def _check_node(self, node: Node) -> None:
        try:
            async with asyncio.timeout(self.settings.node_connect_timeout):
                health = await node.client.health()
        except (NodeFailure, TimeoutError) as exc:
            if node.healthy:
                log.warning("node %s failed its health check: %s", node.url, exc)
            node.healthy = False
        else:
            node.healthy = health.ready
            node.reported_model = health.model
            node.address = health.address or node.address
        node.last_health_check = time.time()

    async def run_health_checks(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval)
            await self.check_health()

    # --- generation -------------------------------------------------------------------------------------

    async def generate(
        self, model: str, request: NodeRequest, stats: GenerationStats
    ) -> AsyncGenerator[NodeChunk, None]:
        """Stream one answer for `model`; the last chunk carries `finish_reason`."""
        tried: set[Node] = set()
        produced: list[str] = []
        failure: NodeFailure | None = None
        for _ in range(self.settings.node_max_attempts):
            candidates = self.candidates(model, tried)
            if not candidates:
                break
            node = choose(candidates, self.rng)
            tried.add(node)
            attempt = request
            if produced and stats.completion_tokens >= request.params.max_new_tokens:
                yield NodeChunk(finish_reason="length")  # the answer was complete when its node failed
                return
            if produced:
                attempt = request.continued("".join(produced), stats.completion_tokens)
                stats.continuations += 1
            try:
                # aclosing: when our caller stops early (a stop string), the attempt must settle its token
                # count and release the node now, not whenever the garbage collector finalises it.
                async with aclosing(self._attempt(node, attempt, stats, len(produced) == 0)) as chunks:
                    async for chunk in chunks:
                        if chunk.text:
                            produced.append(chunk.text)
                        yield chunk
                return
            except NodeFailure as exc:
                failure = exc
                stats.failovers += 1
                node.record_failure(self.clock(), self.settings.node_max_failures,
                                    self.settings.node_cooldown_seconds)
                log.warning("node %s failed (%s); %d node(s) tried", node.url, exc, len(tried))
        raise _give_up(model, failure)

    async def _attempt(
        self, node: Node, request: NodeRequest, stats: GenerationStats, fresh: bool
    ) -> AsyncGenerator[NodeChunk, None]:
        segment = _Segment()
        started = self.clock()
        node.in_flight += 1
        try:
            async with aclosing(node.client.generate(request)) as stream:
                async for chunk in self._with_deadlines(node, stream, request):
                    segment.add(chunk)
                    yield chunk
            if not segment.parts and fresh:
                raise NodeFailure(f"{node.url}: empty answer")
        finally:
            node.in_flight -= 1
            tokens = segment.token_count(self.counter)
            stats.completion_tokens += tokens
            if segment.parts:
                stats.nodes.append(node.address or node.url)
        node.record_success(self.clock() - started, tokens)
        yield NodeChunk(finish_reason=_finish(segment, tokens, request))

    async def _with_deadlines(
        self, node: Node, stream: AsyncGenerator[NodeChunk, None], request: NodeRequest
    ) -> AsyncGenerator[NodeChunk, None]:
        deadline = self.settings.first_token_timeout
        if not node.client.streams:
            deadline += request.params.max_new_tokens * SECONDS_PER_TOKEN_WITHOUT_STREAMING
        while True:
            try:
                async with asyncio.timeout(deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise NodeFailure(f"{node.url}: no token for {deadline:g} s", timeout=True) from exc
            deadline = self.settings.token_idle_timeout
            yield chunk


def _finish(segment: _Segment, tokens: int, request: NodeRequest) -> FinishReason:
    if segment.finish_reason is not None:
        return segment.finish_reason
    return "length" if tokens >= request.params.max_new_tokens else "stop"


def _give_up(model: str, failure: NodeFailure | None) -> Exception:
    if failure is None:
        return NoHealthyNode(f"No healthy node serves '{model}' right now. Try again shortly.")
    if failure.timeout:
        return UpstreamTimeout(f"The nodes serving '{model}' did not answer in time. Try again.")
    return BadUpstreamResponse(f"The nodes serving '{model}' failed to produce an answer. Try again.")
