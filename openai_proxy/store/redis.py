"""Redis state store: shared by every worker and replica (REDIS_URL). The only module that imports `redis`.

Needs Redis >= 6.2 (GETDEL). Every read-modify-write runs inside Redis (a Lua script, GETDEL or MULTI),
never as GET-then-SET from Python, so concurrent workers cannot both win a nonce or overshoot a limit.

Time: window timestamps come from the `clock` argument (wall time by default), not from Redis `TIME`.
That keeps the window logic testable by injecting a clock, and it costs nothing in practice: replicas
must run NTP (as they already must for JWT expiry), and a skew of milliseconds only shifts when one hit
leaves a window of seconds or minutes. Key TTLs, by contrast, are Redis's own and run on its clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from openai_proxy.store.base import (
    DEFAULT_PREFIX,
    StateStore,
    StoreUnavailable,
    WindowDecision,
    check_ttl,
    check_window_args,
    decide,
)

# KEYS[1] = window; ARGV = now, cutoff (hits at or before it have left), limit, member ('' = peek), ttl ms.
# Returns {admitted 0/1, count, oldest score or '', freeing score or ''} where "freeing" is the hit whose
# departure brings the count below the limit. Scores travel as strings: Lua numbers would be truncated.
_WINDOW_LUA = """
local key = KEYS[1]
local limit = tonumber(ARGV[3])
local member = ARGV[4]
redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[2])
local count = redis.call('ZCARD', key)
local admitted = 0
if member ~= '' then
  if redis.call('ZSCORE', key, member) then
    admitted = 1
  elseif count < limit then
    redis.call('ZADD', key, ARGV[1], member)
    count = count + 1
    admitted = 1
  end
  if admitted == 1 then
    redis.call('PEXPIRE', key, ARGV[5])
  end
elseif count < limit then
  admitted = 1
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2] or ''
local freeing = ''
if limit > 0 and count >= limit then
  freeing = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')[2] or ''
end
return {admitted, count, oldest, freeing}
"""

# incr_counters in one step: HINCRBY each (field, amount) pair of ARGV[2..], then PEXPIRE ARGV[1] ms. As atomic
# as the MULTI/EXEC it replaces, at half the client's cost (redis-py's transaction pipeline was 15% of the
# gateway's CPU per request with Redis, bench/).
_COUNTERS_LUA = """
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

_HEALTH_CHECK_INTERVAL = 10  # seconds idle before a pooled connection is pinged ahead of reuse


@contextmanager
def _unavailable() -> Iterator[None]:
    """Turn "Redis cannot be reached" into `StoreUnavailable`; other Redis errors are bugs and propagate."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"state store unavailable: {exc}") from exc


def _text(value: bytes | str) -> str:
    # The client decodes replies (decode_responses=True); the stubs still admit bytes.
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _score(text: str) -> float | None:
    return float(text) if text else None


class RedisStore(StateStore):
    """`StateStore` over one `redis.asyncio.Redis` client with a blocking connection pool.

    An outage surfaces within about `socket_timeout` seconds as `StoreUnavailable`; once Redis is back,
    the pool opens fresh connections, so no restart is needed.
    """

    __slots__ = ("_clock", "_counters", "_prefix", "_redis", "_window")

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self._clock = clock
        self._prefix = prefix
        # One quick retry on connection errors only: it replaces a pooled connection that died while
        # Redis restarted. Timeouts are not retried, because the command (a counter increment) may
        # already have run, and a long retry ladder would hide an outage from the health check.
        retry = Retry(
            ExponentialBackoff(cap=0.05, base=0.01), retries=1, supported_errors=(RedisConnectionError,)
        )
        # A blocking pool queues a burst for up to `socket_timeout` instead of failing at max_connections.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            health_check_interval=_HEALTH_CHECK_INTERVAL,
            retry=retry,
        )
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)
        # EVALSHA with an automatic EVAL fallback, so a restarted (script-less) Redis just works.
        self._window = self._redis.register_script(_WINDOW_LUA)
        self._counters = self._redis.register_script(_COUNTERS_LUA)

    def _key(self, key: str) -> str:
        return self._prefix + key

    # --- key/value --------------------------------------------------------------------------------

    async def put(self, key: str, value: str, ttl: float) -> None:
        check_ttl(ttl)
        with _unavailable():
            await self._redis.set(self._key(key), value, px=_ms(ttl))

    async def get(self, key: str) -> str | None:
        with _unavailable():
            value = await self._redis.get(self._key(key))
        return None if value is None else _text(value)

    async def take(self, key: str) -> str | None:
        with _unavailable():
            value = await self._redis.getdel(self._key(key))
        return None if value is None else _text(value)

    async def delete(self, key: str) -> None:
        with _unavailable():
            await self._redis.delete(self._key(key))

    async def exists(self, key: str) -> bool:
        with _unavailable():
            found: int = await self._redis.exists(self._key(key))
        return found > 0

    # --- sliding windows --------------------------------------------------------------------------

    async def _run_window(self, key: str, limit: int, window: float, member: str) -> WindowDecision:
        check_window_args(limit, window)
        now = self._clock()
        args: list[str | int] = [repr(now), repr(now - window), limit, member, _ms(window)]
        with _unavailable():
            reply = await self._window(keys=[self._key(key)], args=args)
        admitted, count, oldest, freeing = reply
        return decide(
            allowed=bool(admitted),
            count=int(count),
            limit=limit,
            window=window,
            now=now,
            oldest=_score(oldest),
            freeing=_score(freeing),
        )

    async def acquire_slot(self, key: str, *, limit: int, window: float, member: str) -> WindowDecision:
        if not member:
            raise ValueError("member must be a non-empty, unique id of this hit")
        return await self._run_window(key, limit, window, member)

    async def release_slot(self, key: str, member: str) -> None:
        with _unavailable():
            await self._redis.zrem(self._key(key), member)

    async def peek_window(self, key: str, *, limit: int, window: float) -> WindowDecision:
        return await self._run_window(key, limit, window, "")

    # --- counters ---------------------------------------------------------------------------------

    async def incr_counters(self, key: str, amounts: Mapping[str, int], ttl: float) -> None:
        check_ttl(ttl)
        full = self._key(key)
        args: list[str | int] = [_ms(ttl)]
        for name, amount in amounts.items():
            args += [name, amount]
        with _unavailable():
            await self._counters(keys=[full], args=args)

    async def get_counters(self, key: str) -> dict[str, int]:
        with _unavailable():
            raw = await self._redis.hgetall(self._key(key))
        return {_text(name): int(value) for name, value in raw.items()}

    # --- lifecycle --------------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        # Closing a pool whose server vanished has nothing left to release.
        with suppress(RedisError, OSError):
            await self._redis.aclose()
