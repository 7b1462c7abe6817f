"""One node's routing state, and the pure rule that picks among nodes."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median

from .base import NodeClient

MIN_WEIGHT = 0.01


@dataclass(eq=False)
class Node:
    """A routing candidate. Counters live as long as the node does, across requests."""

    client: NodeClient
    source: str = "static"  # static | oracle | relay
    address: str | None = None
    configured_models: frozenset[str] | None = None  # from configuration or the Oracle; None = any
    reported_model: str | None = None  # from the node's own /health
    capacity: float = 1.0  # benchmark tokens/s from the Oracle; 1.0 when unknown
    healthy: bool = False
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    tokens: int = 0
    busy_seconds: float = 0.0
    last_health_check: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def kind(self) -> str:
        return self.client.kind

    def serves(self, model: str) -> bool:
        if self.reported_model is not None:
            return self.reported_model == model
        return self.configured_models is None or model in self.configured_models

    def in_rotation(self, now: float) -> bool:
        return self.healthy and self.cooldown_until <= now

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


def weight(node: Node) -> float:
    """capacity² / (1 + in-flight): fast nodes are strongly preferred, busy ones less so (upstream §4.4)."""
    return max(node.capacity**2 / (1 + node.in_flight), MIN_WEIGHT)


def choose(candidates: Sequence[Node], rng: random.Random) -> Node:
    if len(candidates) == 1:
        return candidates[0]
    return rng.choices(candidates, weights=[weight(node) for node in candidates])[0]
