"""Tiers and request limits, counted at admission in the shared store.

Free accounts get FREE_TIER_LIMIT requests per sliding FREE_TIER_WINDOW, taken atomically when a request is
admitted (so concurrent requests cannot overshoot) and given back when the request then fails on our side.
Pro accounts are unlimited and never wait on the store. When the store is unreachable, free traffic is
refused with 503 (never an unlimited window) while pro and service-key traffic keeps flowing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from .auth.principal import Principal
from .errors import RateLimited, ServiceUnavailable
from .service import Usage
from .settings import Settings
from .store import StateStore, StoreUnavailable, WindowDecision

log = logging.getLogger("openai_proxy.limits")

USAGE_TTL = 8 * 86400  # per-day usage counters are kept a week

UsageHook = Callable[[Principal, Usage], Awaitable[None]]  # e.g. the on-chain credit debit (chain/)


def openai_duration(seconds: float) -> str:
    """OpenAI's reset format: `6m0s`, `1h2m3s`, `950ms`."""
    # Round up (a client that waits the advertised time must find the slot free), but not float noise:
    # `stamp + 3600 - now` taken at the stamp's own instant can come out as 3600.0000000002.
    seconds = round(seconds, 6)
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{minutes}m{secs}s" if minutes or hours else f"{secs}s"
    return f"{hours}h{text}" if hours else text


def limit_headers(decision: WindowDecision | None) -> dict[str, str]:
    if decision is None:  # unlimited tier
        return {"x-ratelimit-limit-requests": "unlimited", "x-ratelimit-remaining-requests": "unlimited",
                "x-ratelimit-reset-requests": "0s"}
    return {
        "x-ratelimit-limit-requests": str(decision.limit),
        "x-ratelimit-remaining-requests": str(decision.remaining),
        "x-ratelimit-reset-requests": openai_duration(decision.reset_after),
    }


def store_down(exc: StoreUnavailable) -> ServiceUnavailable:
    return ServiceUnavailable(
        "The gateway's state store is unreachable, so free-tier requests cannot be counted. Retry shortly.",
        retry_after=exc.retry_after,
        code="state_store_unavailable",
    )


class Admission:
    """One admitted request: it records usage when it ends, or gives its slot back if we failed it."""

    def __init__(self, limiter: RateLimiter, principal: Principal, member: str, decision: WindowDecision | None):
        self._limiter = limiter
        self.principal = principal
        self.member = member
        self.decision = decision
        self.headers = limit_headers(decision)
        self._settled = False

    async def record(self, usage: Usage) -> None:
        if not self._settled:
            self._settled = True
            await self._limiter.record_usage(self.principal, usage)

    async def refund(self) -> None:
        if not self._settled:
            self._settled = True
            await self._limiter.refund(self.principal, self.member)


class RateLimiter:
    def __init__(self, store: StateStore, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.on_usage: list[UsageHook] = []  # called after every recorded usage; must not raise or block
        self._day_number = -1
        self._day = ""

    def _key(self, principal: Principal) -> str:
        return f"rl:{principal.subject.lower()}"

    async def admit(self, principal: Principal, member: str) -> Admission:
        if principal.tier == "pro":
            return Admission(self, principal, member, None)
        try:
            decision = await self.store.acquire_slot(
                self._key(principal), limit=self.settings.free_tier_limit,
                window=self.settings.free_tier_window, member=member,
            )
        except StoreUnavailable as exc:
            raise store_down(exc) from exc
        if not decision.allowed:
            raise RateLimited(
                f"Rate limit reached: {decision.limit} requests per {self.settings.free_tier_window} s on the "
                f"free tier. Retry in {math.ceil(decision.retry_after)} s, or upgrade to pro.",
                retry_after=decision.retry_after,
                headers=limit_headers(decision),
            )
        return Admission(self, principal, member, decision)

    async def peek(self, principal: Principal) -> WindowDecision | None:
        if principal.tier == "pro":
            return None
        try:
            return await self.store.peek_window(
                self._key(principal), limit=self.settings.free_tier_limit, window=self.settings.free_tier_window
            )
        except StoreUnavailable as exc:
            raise store_down(exc) from exc

    async def refund(self, principal: Principal, member: str) -> None:
        if principal.tier == "pro":
            return
        try:
            await self.store.release_slot(self._key(principal), member)
        except StoreUnavailable:
            log.warning("could not refund a request slot for %s: store unreachable", principal.short)

    def _usage_key(self, principal: Principal) -> str:
        return f"usage:{principal.subject.lower()}:{self._today()}"

    def _today(self) -> str:
        """The UTC date, formatted once per day rather than per request (Unix days are 86400 s exactly)."""
        day = int(self.clock() // 86400)
        if day != self._day_number:
            self._day_number = day
            self._day = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%d")
        return self._day

    async def record_usage(self, principal: Principal, usage: Usage) -> None:
        amounts = {"requests": 1, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
        try:
            await self.store.incr_counters(self._usage_key(principal), amounts, USAGE_TTL)
        except StoreUnavailable:
            log.warning("usage of %s not recorded: store unreachable", principal.short)
        for hook in self.on_usage:
            await hook(principal, usage)

    async def usage_today(self, principal: Principal) -> dict[str, int]:
        try:
            counters = await self.store.get_counters(self._usage_key(principal))
        except StoreUnavailable as exc:
            raise store_down(exc) from exc
        return {name: counters.get(name, 0) for name in ("requests", "prompt_tokens", "completion_tokens")}
