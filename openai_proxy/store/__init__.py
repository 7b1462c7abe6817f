"""Shared gateway state (nonces, rate windows, revocations, usage, tiers): memory or Redis."""

from __future__ import annotations

from openai_proxy.store.base import DEFAULT_PREFIX, StateStore, StoreUnavailable, WindowDecision
from openai_proxy.store.memory import MemoryStore
from openai_proxy.store.redis import RedisStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "StateStore",
    "StoreUnavailable",
    "WindowDecision",
    "create_store",
]


def create_store(redis_url: str | None, *, prefix: str = DEFAULT_PREFIX) -> StateStore:
    """A `RedisStore` when `redis_url` is set (every worker shares it), else a per-process `MemoryStore`."""
    if redis_url:
        return RedisStore(redis_url, prefix=prefix)
    return MemoryStore(prefix=prefix)
