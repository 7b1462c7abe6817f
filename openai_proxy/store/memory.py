"""In-process state store: the default for a single gateway process.

Atomicity comes from asyncio itself: no method awaits between reading and writing its entry, so no
other task can interleave and no locks are needed. Expiry is checked on every access, and a full sweep
of dead entries runs at most once per `purge_interval`, so memory stays bounded without a background task.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from openai_proxy.store.base import (
    DEFAULT_PREFIX,
    StateStore,
    WindowDecision,
    check_ttl,
    check_window_args,
    decide,
)


def _stamp(hit: tuple[float, str]) -> float:
    return hit[0]


class _Hits:
    """One sliding window: (timestamp, member) hits kept sorted, plus the set of members counted, so that
    "was this request already counted?" is O(1) (a linear scan made every admission O(window size))."""

    __slots__ = ("hits", "members")

    def __init__(self) -> None:
        self.hits: list[tuple[float, str]] = []
        self.members: set[str] = set()

    def drop_until(self, stamp: float) -> None:
        """Forget the hits at or before `stamp`."""
        cut = bisect.bisect_right(self.hits, stamp, key=_stamp)
        if cut:
            self.members.difference_update(member for _, member in self.hits[:cut])
            del self.hits[:cut]

    def add(self, stamp: float, member: str) -> None:
        if not self.hits or self.hits[-1][0] <= stamp:
            self.hits.append((stamp, member))  # the usual case: the clock moves forward
        else:
            bisect.insort(self.hits, (stamp, member), key=_stamp)
        self.members.add(member)

    def remove(self, member: str) -> None:
        if member in self.members:
            self.members.discard(member)
            self.hits[:] = [h for h in self.hits if h[1] != member]


_Value = str | _Hits | dict[str, int]
_V = TypeVar("_V", str, _Hits, dict[str, int])


@dataclass(slots=True)
class _Entry:
    value: _Value
    expires_at: float


class MemoryStore(StateStore):
    """`StateStore` over dicts; `clock` is injectable so tests can move time."""

    __slots__ = ("_clock", "_data", "_next_purge", "_prefix", "_purge_interval")

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = DEFAULT_PREFIX,
        *,
        purge_interval: float = 60.0,
    ) -> None:
        self._clock = clock
        self._prefix = prefix
        self._purge_interval = purge_interval
        self._data: dict[str, _Entry] = {}
        self._next_purge = clock() + purge_interval

    # --- plumbing ---------------------------------------------------------------------------------

    def _now(self) -> float:
        now = self._clock()
        if now >= self._next_purge:
            self._purge(now)
        return now

    def _purge(self, now: float) -> None:
        # An O(n) sweep, but at most once per interval: amortised over all calls in between.
        dead = [k for k, e in self._data.items() if e.expires_at <= now]
        for k in dead:
            del self._data[k]
        self._next_purge = now + self._purge_interval

    def _live(self, key: str, now: float) -> _Entry | None:
        full = self._prefix + key
        entry = self._data.get(full)
        if entry is not None and entry.expires_at <= now:
            del self._data[full]
            return None
        return entry

    @staticmethod
    def _typed(entry: _Entry | None, kind: type[_V]) -> _V | None:
        if entry is None:
            return None
        if not isinstance(entry.value, kind):
            raise TypeError(f"key holds a {type(entry.value).__name__}, not a {kind.__name__}")
        return entry.value

    # --- key/value --------------------------------------------------------------------------------

    async def put(self, key: str, value: str, ttl: float) -> None:
        check_ttl(ttl)
        self._data[self._prefix + key] = _Entry(value, self._now() + ttl)

    async def get(self, key: str) -> str | None:
        return self._typed(self._live(key, self._now()), str)

    async def take(self, key: str) -> str | None:
        value = self._typed(self._live(key, self._now()), str)
        if value is not None:
            del self._data[self._prefix + key]
        return value

    async def delete(self, key: str) -> None:
        self._data.pop(self._prefix + key, None)

    async def exists(self, key: str) -> bool:
        return self._live(key, self._now()) is not None

    # --- sliding windows --------------------------------------------------------------------------

    def _hits(self, key: str, now: float, window: float) -> _Hits:
        """The live hits at `key` with those at or before `now - window` dropped (a fresh window if none)."""
        hits = self._typed(self._live(key, now), _Hits)
        if hits is None:
            return _Hits()
        hits.drop_until(now - window)
        return hits

    def _decide(
        self, window_hits: _Hits, *, allowed: bool, limit: int, window: float, now: float
    ) -> WindowDecision:
        hits = window_hits.hits
        count = len(hits)
        freeing = hits[count - limit][0] if 0 < limit <= count else None
        oldest = hits[0][0] if hits else None
        return decide(
            allowed=allowed, count=count, limit=limit, window=window, now=now, oldest=oldest, freeing=freeing
        )

    async def acquire_slot(self, key: str, *, limit: int, window: float, member: str) -> WindowDecision:
        check_window_args(limit, window)
        now = self._now()
        hits = self._hits(key, now, window)
        admitted = member in hits.members  # a retried call is counted once
        if not admitted and len(hits.hits) < limit:
            hits.add(now, member)
            admitted = True
        if hits.hits:
            self._data[self._prefix + key] = _Entry(hits, hits.hits[-1][0] + window)
        else:
            self._data.pop(self._prefix + key, None)
        return self._decide(hits, allowed=admitted, limit=limit, window=window, now=now)

    async def release_slot(self, key: str, member: str) -> None:
        hits = self._typed(self._live(key, self._now()), _Hits)
        if hits is None:
            return
        hits.remove(member)
        if not hits.hits:
            del self._data[self._prefix + key]

    async def peek_window(self, key: str, *, limit: int, window: float) -> WindowDecision:
        check_window_args(limit, window)
        now = self._now()
        hits = self._hits(key, now, window)
        return self._decide(hits, allowed=len(hits.hits) < limit, limit=limit, window=window, now=now)

    # --- counters ---------------------------------------------------------------------------------

    async def incr_counters(self, key: str, amounts: Mapping[str, int], ttl: float) -> None:
        check_ttl(ttl)
        now = self._now()
        counters = self._typed(self._live(key, now), dict)
        if counters is None:
            if not amounts:
                return  # like Redis: refreshing the TTL of a missing hash creates nothing
            counters = {}
        for name, amount in amounts.items():
            counters[name] = counters.get(name, 0) + amount
        self._data[self._prefix + key] = _Entry(counters, now + ttl)

    async def get_counters(self, key: str) -> dict[str, int]:
        counters = self._typed(self._live(key, self._now()), dict)
        return dict(counters) if counters is not None else {}

    # --- lifecycle --------------------------------------------------------------------------------

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()
