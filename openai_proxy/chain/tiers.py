"""On-chain tiers, cached: the `lookup` behind `auth.tiers.TierResolver`.

Each address's tier lives in the state store as `{"tier", "at"}` (so every replica shares it) and in a small
in-process copy (used only while the store is unreachable). A request never waits for the chain when any
answer is known: a stale one (older than TIER_CACHE_SECONDS) is returned at once and refreshed in the
background. Only an address never seen before waits, at most one RPC timeout, for its first answer.

When the chain is down or slow the last known tier stays in force (the store keeps it for a week, far
longer than its freshness); with none known the answer is free. Failures are logged once per outage and
counted, and refreshes back off while the chain keeps failing, so an outage does not become a request
storm against the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .. import jsonsafe
from ..auth.principal import Tier
from ..store import StateStore, StoreUnavailable
from .payment import PRO_TIER, InferencePayment
from .rpc import RpcError, RpcUnavailable
from .stats import ChainStats

log = logging.getLogger("openai_proxy.chain.tiers")

KNOWN_TIER_TTL = 7 * 86400  # how long a last known tier is kept to fall back on
LOCAL_ENTRIES = 10_000  # in-process copies kept for store outages
MAX_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class Known:
    tier: Tier
    at: float  # unix time the chain said so


def tier_key(address: str) -> str:
    return f"chain:tier:{address.lower()}"


class ChainTierCache:
    """Tier answers from `getUserTier`, shared through the store and refreshed in the background."""

    def __init__(
        self,
        payment: InferencePayment,
        store: StateStore,
        stats: ChainStats,
        *,
        cache_seconds: float,
        first_wait: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._payment = payment
        self._store = store
        self._stats = stats
        self._fresh_for = cache_seconds
        self._first_wait = first_wait
        self._clock = clock
        self._local: OrderedDict[str, Known] = OrderedDict()
        self._refreshing: dict[str, asyncio.Task[Known | None]] = {}
        self._failures = 0
        self._quiet_until = 0.0

    async def lookup(self, address: str) -> Tier | None:
        """The tier to use now: cached if anything is known, else (briefly) asked of the chain."""
        known = await self.known(address)
        if known is not None:
            if self._clock() - known.at >= self._fresh_for:
                self._refresh(address)
            return known.tier
        task = self._refresh(address)
        fetched = None
        if task is not None:
            # The fetch goes on (and caches its answer) if this request stops waiting for it.
            with contextlib.suppress(TimeoutError):
                fetched = await asyncio.wait_for(asyncio.shield(task), self._first_wait)
        if fetched is None:
            self._stats.tier_fallback_free += 1
            return None
        return fetched.tier

    async def known(self, address: str) -> Known | None:
        """The last known tier (fresh or not), without asking the chain."""
        key = address.lower()
        try:
            raw = await self._store.get(tier_key(key))
        except StoreUnavailable:
            return self._local.get(key)
        return None if raw is None else _parse(raw)

    async def remember(self, address: str, tier: Tier) -> Known:
        known = Known(tier=tier, at=self._clock())
        key = address.lower()
        self._local[key] = known
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_ENTRIES:
            self._local.popitem(last=False)
        try:
            ttl = max(KNOWN_TIER_TTL, 2 * self._fresh_for)
            await self._store.put(tier_key(key), json.dumps({"tier": tier, "at": known.at}), ttl)
        except StoreUnavailable:
            log.warning("tier of %s not cached: state store unreachable", _short(address))
        return known

    def _refresh(self, address: str) -> asyncio.Task[Known | None] | None:
        """Start (or join) a background fetch of the address's tier; None while backing off an outage."""
        key = address.lower()
        running = self._refreshing.get(key)
        if running is not None:
            return running
        if self._clock() < self._quiet_until:
            return None
        task = asyncio.create_task(self._fetch(address), name=f"tier-refresh-{_short(address)}")
        self._refreshing[key] = task
        task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        return task

    async def _fetch(self, address: str) -> Known | None:
        try:
            value = await self._payment.tier(address)
        except (RpcUnavailable, RpcError) as exc:
            self._note_failure(address, exc)
            return None
        self._stats.tier_lookups += 1
        if self._failures:
            log.info("tier lookups work again after %d failures", self._failures)
            self._failures = 0
            self._quiet_until = 0.0
        return await self.remember(address, "pro" if value == PRO_TIER else "free")

    def _note_failure(self, address: str, exc: Exception) -> None:
        self._stats.tier_lookup_failures += 1
        self._failures += 1
        if self._failures == 1:  # once per outage; the recovery line reports the count
            log.warning("tier lookup on chain failed for %s (using the last known tier, else free): %s",
                        _short(address), exc)
        backoff = min(MAX_BACKOFF, self._fresh_for, 0.25 * 2 ** min(self._failures, 8))
        self._quiet_until = self._clock() + backoff

    async def close(self) -> None:
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _parse(raw: str) -> Known | None:
    try:
        data = jsonsafe.loads(raw)
        tier = data["tier"]
        at = float(data["at"])
    except (ValueError, KeyError, TypeError):
        return None  # written by another version: treat as unknown and refetch
    return Known(tier="pro" if tier == "pro" else "free", at=at)


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}" if len(address) == 42 else address
