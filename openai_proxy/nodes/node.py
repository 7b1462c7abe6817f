"""One node's routing state, and the pure rule that picks among nodes."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median

from .base import NodeClient

MIN_WEIGHT = 0.01  # even a slow, busy node keeps a sliver of traffic, so it can prove it recovered
UNKNOWN_CAPACITY = 1.0


def weight(capacity: float | None, in_flight: int) -> float:
    """capacity² / (1 + in-flight), at least MIN_WEIGHT (upstream-protocols.md §4.4).

    Capacity is the Oracle's benchmark tokens/s (UNKNOWN_CAPACITY when it has none). Squaring makes a node
    ten times faster get a hundred times the traffic; dividing by the requests already running on it spreads
    a burst instead of piling it onto the fastest node."""
    if capacity is None or capacity <= 0:
        capacity = UNKNOWN_CAPACITY
    return max(capacity**2 / (1 + max(in_flight, 0)), MIN_WEIGHT)


@dataclass(eq=False)
class Node:
    """A routing candidate: one per node address (per URL for a static node the Oracle does not know).

    A node is reachable over HTTP (`client`: any of the protocol clients), through an agent that dialled in
    over the relay (`relay`), or both; the relay is preferred while connected (upstream §11 item 8). Counters
    are plain attributes that live as long as the node, across requests and relay reconnections, so metrics
    can read them directly.
    """

    key: str
    client: NodeClient | None = None
    relay: NodeClient | None = None
    source: str = "static"  # static | oracle | relay
    address: str | None = None  # lower-case 0x address
    address_verified: bool = False  # from the Oracle or a relay signature, not just the node's own /health
    configured_models: frozenset[str] | None = None  # configuration / Oracle capabilities; None = any
    reported_model: str | None = None  # from the node's own /health
    relay_model: str | None = None  # announced by the relay agent at auth
    capacity: float = UNKNOWN_CAPACITY
    health_ok: bool = False  # the last HTTP health check passed
    relay_gone_at: float | None = None  # monotonic time the relay agent left; None while connected
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    tokens: int = 0
    busy_seconds: float = 0.0
    last_health_check: float | None = None  # unix time
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def url(self) -> str:
        active = self.relay or self.client
        return active.url if active is not None else f"relay://{self.address}"

    @property
    def kind(self) -> str:
        active = self.relay or self.client
        return active.kind if active is not None else "relay"

    @property
    def healthy(self) -> bool:
        """Able to take requests, cooldown aside: a connected relay agent or a passed health check."""
        return self.relay is not None or (self.client is not None and self.health_ok)

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now

    def models(self) -> frozenset[str] | None:
        """The models this node serves (or served, if it is down); None means an HTTP node that never said
        which, so any."""
        named = set(self.configured_models or ())
        if self.reported_model:
            named.add(self.reported_model)
        if self.relay_model:
            named.add(self.relay_model)
        if not named and self.client is not None and self.configured_models is None:
            return None
        return frozenset(named)

    def route(self, model: str, node_model: str | None = None) -> NodeClient | None:
        """The client that would serve `model` now, or None (cooldown is the pool's business).

        `node_model` is the name the nodes themselves know the model by (the catalogue's `node_model`), when
        it differs from the catalogue id: a node that reports or is configured with either name serves it."""
        names = {model} if node_model is None else {model, node_model}
        if self.relay is not None and self.relay_model in names:
            return self.relay
        if self.client is None or not self.health_ok:
            return None
        if self.reported_model is None and self.configured_models is None:
            return self.client
        if self.reported_model in names or not names.isdisjoint(self.configured_models or ()):
            return self.client
        return None

    def record_success(self, seconds: float, tokens: int) -> None:
        self.consecutive_failures = 0
        self.requests += 1
        self.tokens += tokens
        self.busy_seconds += seconds
        self.latencies.append(seconds)

    def record_failure(self, now: float, max_failures: int, cooldown: float) -> None:
        self.requests += 1
        self.failures += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= max_failures:
            self.cooldown_until = now + cooldown

    def median_latency(self) -> float | None:
        return median(self.latencies) if self.latencies else None

    def tokens_per_second(self) -> float | None:
        return self.tokens / self.busy_seconds if self.busy_seconds > 0 else None


def choose(candidates: Sequence[Node], rng: random.Random) -> Node:
    """Weighted random choice by `weight`; a seeded `rng` makes it reproducible."""
    if len(candidates) == 1:
        return candidates[0]
    weights = [weight(node.capacity, node.in_flight) for node in candidates]
    return rng.choices(candidates, weights=weights)[0]
