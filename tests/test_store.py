"""The state store, run against both backends: MemoryStore and RedisStore (a real Redis, db 13 only)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from openai_proxy.store import (
    MemoryStore,
    RedisStore,
    StateStore,
    StoreUnavailable,
    WindowDecision,
    create_store,
)

from .tcp_proxy import TcpProxy

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 13
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
DEAD_URL = "redis://127.0.0.1:1/13"  # nothing listens on port 1: connections are refused at once
GUARD = 10.0  # a hang guard for outage tests, not a timing assertion


class Clock:
    """A hand-moved clock; it starts at wall time so Redis's own key TTLs stay in step with it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    kind: str
    store: StateStore
    clock: Clock
    prefix: str


def fresh_prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@asynccontextmanager
async def flushed_db() -> AsyncIterator[aioredis.Redis]:
    """An admin client on db 13, flushed before and after use."""
    client = aioredis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, decode_responses=True)
    try:
        await client.flushdb()
        yield client
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
async def admin() -> AsyncIterator[aioredis.Redis]:
    async with flushed_db() as client:
        yield client


@pytest.fixture(params=["memory", "redis"])
async def h(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    clock, prefix = Clock(), fresh_prefix()
    if request.param == "memory":
        store: StateStore = MemoryStore(clock=clock, prefix=prefix)
        yield Harness("memory", store, clock, prefix)
        await store.close()
        return
    async with flushed_db():
        store = RedisStore(REDIS_URL, prefix=prefix, clock=clock)
        yield Harness("redis", store, clock, prefix)
        await store.close()


async def wait_until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll (never a fixed sleep) until `predicate` holds; the guard only stops a hang."""
    async with asyncio.timeout(GUARD):
        # Redis expires keys on its own clock and offers no event to await (keyspace notifications
        # would mean reconfiguring the shared server), so polling is the only way here.
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def let_expire(h: Harness, key: str, ttl: float) -> None:
    """Move past `ttl`: the injected clock for memory; for Redis, whose TTLs are its own, poll."""
    if h.kind == "memory":
        h.clock.advance(ttl)
        return

    async def gone() -> bool:
        return not await h.store.exists(key)

    await wait_until(gone)


# --- key/value --------------------------------------------------------------------------------------------


async def test_put_get_delete_exists(h: Harness) -> None:
    assert await h.store.get("k") is None
    assert not await h.store.exists("k")
    await h.store.put("k", "v1", ttl=60)
    assert await h.store.get("k") == "v1"
    assert await h.store.exists("k")
    await h.store.put("k", "v2", ttl=60)
    assert await h.store.get("k") == "v2"
    await h.store.delete("k")
    assert await h.store.get("k") is None
    await h.store.delete("k")  # deleting an absent key is fine


async def test_value_expires_after_ttl(h: Harness) -> None:
    ttl = 0.05
    await h.store.put("short", "x", ttl=ttl)
    await h.store.put("long", "y", ttl=3600)
    if h.kind == "memory":
        h.clock.advance(ttl * 0.5)
        assert await h.store.get("short") == "x"
    await let_expire(h, "short", ttl)
    assert await h.store.get("short") is None
    assert not await h.store.exists("short")
    assert await h.store.take("short") is None
    assert await h.store.get("long") == "y"


async def test_nonpositive_ttl_and_window_are_rejected(h: Harness) -> None:
    with pytest.raises(ValueError):
        await h.store.put("k", "v", ttl=0)
    with pytest.raises(ValueError):
        await h.store.incr_counters("c", {"a": 1}, ttl=-1)
    with pytest.raises(ValueError):
        await h.store.acquire_slot("w", limit=1, window=0, member="m")
    with pytest.raises(ValueError):
        await h.store.peek_window("w", limit=-1, window=1)


async def test_take_is_single_use(h: Harness) -> None:
    assert await h.store.take("nonce") is None
    await h.store.put("nonce", "abc", ttl=60)
    assert await h.store.take("nonce") == "abc"
    assert await h.store.take("nonce") is None
    assert not await h.store.exists("nonce")


async def test_take_has_exactly_one_winner_among_50(h: Harness) -> None:
    await h.store.put("nonce", "abc", ttl=60)
    results = await asyncio.gather(*(h.store.take("nonce") for _ in range(50)))
    assert results.count("abc") == 1
    assert results.count(None) == 49


async def test_redis_take_has_one_winner_across_two_clients(admin: aioredis.Redis) -> None:
    prefix = fresh_prefix()
    first, second = RedisStore(REDIS_URL, prefix=prefix), RedisStore(REDIS_URL, prefix=prefix)
    try:
        for round_ in range(5):
            await first.put(f"nonce{round_}", "abc", ttl=60)
            takes = [s.take(f"nonce{round_}") for _ in range(25) for s in (first, second)]
            results = await asyncio.gather(*takes)
            assert results.count("abc") == 1, round_
    finally:
        await first.close()
        await second.close()


async def test_redis_keys_are_namespaced_by_prefix(admin: aioredis.Redis) -> None:
    a, b = RedisStore(REDIS_URL, prefix="dep-a:"), RedisStore(REDIS_URL, prefix="dep-b:")
    try:
        await a.put("k", "from-a", ttl=60)
        assert await b.get("k") is None
        assert await admin.get("dep-a:k") == "from-a"
        assert 0 < await admin.pttl("dep-a:k") <= 60_000
    finally:
        await a.close()
        await b.close()


# --- sliding windows ----------------------------------------------------------------------------------------


async def test_window_admits_exactly_limit_of_50_concurrent(h: Harness) -> None:
    calls = (h.store.acquire_slot("rl", limit=10, window=60, member=f"req{i}") for i in range(50))
    decisions = await asyncio.gather(*calls)
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))
    assert all(d.remaining == 0 and d.retry_after > 0 for d in decisions if not d.allowed)
    peek = await h.store.peek_window("rl", limit=10, window=60)
    assert not peek.allowed and peek.remaining == 0


async def test_window_slides_hit_by_hit(h: Harness) -> None:
    async def hit(name: str) -> WindowDecision:
        return await h.store.acquire_slot("rl", limit=3, window=10, member=name)

    first = await hit("a")  # t=0
    assert first == WindowDecision(allowed=True, limit=3, remaining=2, reset_after=10, retry_after=0)
    h.clock.advance(1)
    assert (await hit("b")).remaining == 1  # t=1
    h.clock.advance(1)
    assert (await hit("c")).remaining == 0  # t=2
    refused = await hit("d")
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(8)  # "a" leaves at t=10
    assert refused.reset_after == pytest.approx(8)
    h.clock.advance(7.5)  # t=9.5: still full
    assert not (await hit("e")).allowed
    h.clock.advance(0.5)  # t=10: "a" is exactly one window old and no longer counts
    admitted = await hit("f")
    assert admitted.allowed and admitted.remaining == 0
    assert admitted.reset_after == pytest.approx(1)  # oldest is now "b", leaving at t=11
    refused = await hit("g")
    assert refused.retry_after == pytest.approx(1)
    h.clock.advance(1)  # t=11: "b" leaves
    assert (await hit("h")).allowed


async def test_window_empties_after_a_full_window(h: Harness) -> None:
    for i in range(3):
        await h.store.acquire_slot("rl", limit=3, window=10, member=f"r{i}")
    h.clock.advance(10)
    peek = await h.store.peek_window("rl", limit=3, window=10)
    assert peek == WindowDecision(allowed=True, limit=3, remaining=3, reset_after=0, retry_after=0)


async def test_retry_after_when_limit_shrinks(h: Harness) -> None:
    # Hits at t=0,1,2,3 under limit 4; the limit then drops to 2, so three
    # must leave before a slot frees (the count must fall to 1).
    for i in range(4):
        await h.store.acquire_slot("rl", limit=4, window=10, member=f"r{i}")
        h.clock.advance(1)
    decision = await h.store.acquire_slot("rl", limit=2, window=10, member="late")  # t=4
    assert not decision.allowed
    assert decision.retry_after == pytest.approx(8)  # the hit at t=2 leaves at t=12
    assert decision.reset_after == pytest.approx(6)


async def test_release_slot_refunds_a_hit(h: Harness) -> None:
    for i in range(2):
        assert (await h.store.acquire_slot("rl", limit=2, window=60, member=f"r{i}")).allowed
    assert not (await h.store.acquire_slot("rl", limit=2, window=60, member="r2")).allowed
    await h.store.release_slot("rl", "r0")
    await h.store.release_slot("rl", "never-admitted")  # refunding an unknown hit is a no-op
    await h.store.release_slot("no-such-window", "r0")
    assert (await h.store.peek_window("rl", limit=2, window=60)).remaining == 1
    assert (await h.store.acquire_slot("rl", limit=2, window=60, member="r3")).allowed
    assert not (await h.store.acquire_slot("rl", limit=2, window=60, member="r4")).allowed


async def test_same_member_is_counted_once(h: Harness) -> None:
    first = await h.store.acquire_slot("rl", limit=2, window=60, member="retry-me")
    again = await h.store.acquire_slot("rl", limit=2, window=60, member="retry-me")
    assert first.allowed and again.allowed
    assert again.remaining == 1


async def test_peek_does_not_take_a_slot(h: Harness) -> None:
    empty = await h.store.peek_window("rl", limit=5, window=60)
    assert empty == WindowDecision(allowed=True, limit=5, remaining=5, reset_after=0, retry_after=0)
    await h.store.acquire_slot("rl", limit=5, window=60, member="x")
    for _ in range(3):
        peek = await h.store.peek_window("rl", limit=5, window=60)
        assert peek.allowed and peek.remaining == 4
        assert peek.reset_after == pytest.approx(60)


async def test_limit_zero_refuses_everything(h: Harness) -> None:
    decision = await h.store.acquire_slot("rl", limit=0, window=30, member="x")
    assert decision == WindowDecision(allowed=False, limit=0, remaining=0, reset_after=0, retry_after=30)


# --- counters ---------------------------------------------------------------------------------------------


async def test_counters_accumulate(h: Harness) -> None:
    assert await h.store.get_counters("usage") == {}
    await h.store.incr_counters("usage", {"prompt": 10, "completion": 3}, ttl=3600)
    await h.store.incr_counters("usage", {"prompt": 5, "requests": 1}, ttl=3600)
    await h.store.incr_counters("usage", {}, ttl=3600)
    assert await h.store.get_counters("usage") == {"prompt": 15, "completion": 3, "requests": 1}
    await h.store.incr_counters("usage", {"prompt": -15}, ttl=3600)
    assert (await h.store.get_counters("usage"))["prompt"] == 0


async def test_counters_are_atomic_under_concurrency(h: Harness) -> None:
    await asyncio.gather(*(h.store.incr_counters("usage", {"n": 1, "t": 2}, ttl=60) for _ in range(50)))
    assert await h.store.get_counters("usage") == {"n": 50, "t": 100}


async def test_counters_expire_and_each_increment_refreshes_ttl(h: Harness) -> None:
    ttl = 0.2
    await h.store.incr_counters("usage", {"n": 1}, ttl=3600)
    await h.store.incr_counters("usage", {"n": 1}, ttl=ttl)  # the latest TTL wins
    if h.kind == "memory":
        h.clock.advance(ttl * 0.75)
        await h.store.incr_counters("usage", {"n": 1}, ttl=ttl)
        h.clock.advance(ttl * 0.75)  # past the first TTL, within the refreshed one
        assert await h.store.get_counters("usage") == {"n": 3}
    await let_expire(h, "usage", ttl)
    assert await h.store.get_counters("usage") == {}


# --- lifecycle and outages --------------------------------------------------------------------------


async def test_ping(h: Harness) -> None:
    assert await h.store.ping() is True


async def test_create_store_picks_the_backend(admin: aioredis.Redis) -> None:
    memory = create_store(None)
    assert isinstance(memory, MemoryStore)
    shared = create_store(REDIS_URL, prefix="custom:")
    try:
        assert isinstance(shared, RedisStore)
        await shared.put("k", "v", ttl=60)
        assert await admin.get("custom:k") == "v"
    finally:
        await shared.close()
        await memory.close()


def every_operation(store: StateStore) -> list[Callable[[], Awaitable[object]]]:
    return [
        lambda: store.put("k", "v", ttl=1),
        lambda: store.get("k"),
        lambda: store.take("k"),
        lambda: store.delete("k"),
        lambda: store.exists("k"),
        lambda: store.acquire_slot("w", limit=1, window=1, member="m"),
        lambda: store.release_slot("w", "m"),
        lambda: store.peek_window("w", limit=1, window=1),
        lambda: store.incr_counters("c", {"a": 1}, ttl=1),
        lambda: store.get_counters("c"),
    ]


async def assert_unavailable(store: StateStore) -> None:
    async with asyncio.timeout(GUARD):
        for operation in every_operation(store):
            with pytest.raises(StoreUnavailable):
                await operation()
        assert await store.ping() is False


async def test_unreachable_redis_raises_store_unavailable() -> None:
    store = RedisStore(DEAD_URL)
    try:
        await assert_unavailable(store)
    finally:
        await store.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    relay = TcpProxy(REDIS_HOST, REDIS_PORT)
    await relay.start()
    yield relay
    await relay.stop()


async def test_redis_outage_raises_then_recovers_without_restart(
    admin: aioredis.Redis, proxy: TcpProxy
) -> None:
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", prefix=fresh_prefix())
    try:
        await store.put("k", "before", ttl=60)
        assert await store.get("k") == "before"
        await proxy.stop()
        await assert_unavailable(store)
        await proxy.start()
        assert await store.ping() is True
        assert await store.get("k") == "before"
        assert (await store.acquire_slot("w", limit=1, window=60, member="m")).allowed
        assert await store.take("k") == "before"
    finally:
        await store.close()


async def test_hung_redis_times_out_as_store_unavailable(admin: aioredis.Redis, proxy: TcpProxy) -> None:
    proxy.black_hole = True
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", socket_timeout=0.1)
    try:
        async with asyncio.timeout(GUARD):
            with pytest.raises(StoreUnavailable):
                await store.get("k")
            assert await store.ping() is False
    finally:
        await store.close()


async def test_memory_store_sweeps_dead_entries() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock, purge_interval=30)
    for i in range(100):
        await store.put(f"k{i}", "v", ttl=10)
    await store.acquire_slot("w", limit=5, window=10, member="m")
    await store.put("keeper", "v", ttl=3600)
    clock.advance(31)
    await store.exists("anything")  # any call past the interval triggers the sweep
    assert list(store._data) == ["oaip:keeper"]
