"""A Redis database of the local server that one group of tests owns: empty before and after each use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis


def redis_url(db: int) -> str:
    return f"redis://127.0.0.1:6379/{db}"


@asynccontextmanager
async def flushed_db(db: int) -> AsyncIterator[str]:
    """Redis db `db`, flushed before and after; yields its URL."""
    client = aioredis.Redis.from_url(redis_url(db))
    try:
        await client.flushdb()
        yield redis_url(db)
        await client.flushdb()
    finally:
        await client.aclose()
