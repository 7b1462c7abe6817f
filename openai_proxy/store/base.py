"""The state store seam: one small async interface over memory (one process) or Redis (every replica).

It holds the gateway's short-lived shared state: single-use sign-in nonces, sliding rate-limit windows,
revoked token ids, usage counters and cached tiers. Keys passed in are bare names; each implementation
prefixes them with its namespace so several deployments can share one Redis.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_PREFIX = "oaip:"


class StoreUnavailable(Exception):
    """The backend cannot be reached; the gateway answers 503 with `Retry-After: retry_after`."""

    def __init__(self, message: str = "state store unavailable", *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class WindowDecision:
    """The outcome of one sliding-window check (see `StateStore.acquire_slot`)."""

    allowed: bool
    limit: int
    remaining: int  # slots left after this decision
    reset_after: float  # seconds until the oldest counted hit leaves the window (0 if none)
    retry_after: float  # when refused: seconds until a slot frees; 0 when allowed


def check_window_args(limit: int, window: float) -> None:
    """Reject arguments that would make a window meaningless, identically in every backend."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if window <= 0:
        raise ValueError(f"window must be > 0 seconds, got {window}")


def check_ttl(ttl: float) -> None:
    """A non-positive TTL would store a key that is already dead (Redis rejects it too)."""
    if ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl}")


def decide(
    *,
    allowed: bool,
    count: int,
    limit: int,
    window: float,
    now: float,
    oldest: float | None,
    freeing: float | None,
) -> WindowDecision:
    """Build a decision from the window's state after the hit (if any) was counted.

    `oldest` is the earliest counted hit; `freeing` is the hit whose departure brings the count below
    `limit` (the `count - limit`-th oldest), None when the count is already below it or never can be.
    """
    reset_after = max(0.0, oldest + window - now) if oldest is not None else 0.0
    if allowed:
        retry_after = 0.0
    elif freeing is not None:
        retry_after = max(0.0, freeing + window - now)
    else:
        retry_after = window  # limit 0: nothing will ever free; ask again after a full window
    return WindowDecision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, limit - count),
        reset_after=reset_after,
        retry_after=retry_after,
    )


class StateStore(ABC):
    """Async key/value, sliding-window and counter operations; every mutation is atomic.

    Every method raises `StoreUnavailable` when the backend cannot be reached, except `ping`
    (returns False) and `close`.
    """

    @abstractmethod
    async def put(self, key: str, value: str, ttl: float) -> None:
        """Set `key` to `value`, expiring after `ttl` seconds."""

    @abstractmethod
    async def get(self, key: str) -> str | None:
        """The live value of `key`, or None."""

    @abstractmethod
    async def take(self, key: str) -> str | None:
        """Get and delete atomically: among racing callers exactly one receives the value."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove `key` (of any kind); absent keys are fine."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether `key` (of any kind) is live."""

    @abstractmethod
    async def acquire_slot(self, key: str, *, limit: int, window: float, member: str) -> WindowDecision:
        """Count hit `member` in the sliding window at `key` if fewer than `limit` hits fall in the last
        `window` seconds. `member` must be unique per hit (a request id); acquiring the same member
        twice counts it once, so a retried call is harmless.
        """

    @abstractmethod
    async def release_slot(self, key: str, member: str) -> None:
        """Refund hit `member` (a request that failed on our side)."""

    @abstractmethod
    async def peek_window(self, key: str, *, limit: int, window: float) -> WindowDecision:
        """The window's state without taking a slot; `allowed` means a slot is free."""

    @abstractmethod
    async def incr_counters(self, key: str, amounts: Mapping[str, int], ttl: float) -> None:
        """Add `amounts` to the named counters of the hash at `key` and refresh its TTL."""

    @abstractmethod
    async def get_counters(self, key: str) -> dict[str, int]:
        """All counters of the hash at `key` ({} when absent)."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the backend answers; never raises."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
