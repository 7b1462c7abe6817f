"""The Python load generator: closed-loop requests, streaming runs, held streams, and mixed load.

Every run is bounded: workers stop sending at a deadline, and whatever is still in flight after a grace
period is cancelled. Latencies are measured from the first byte written to the last byte read; time to first
token (TTFT) runs to the first SSE event that carries text. A "token" is one word of streamed text
(`delta.content` or `text`; the devnode's tokens are words), so a server that relays the node's events one
by one and one that hands on in one event the tokens that arrived together (the gateway) count alike.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .http1 import Connection, ProtocolError, Request

# The text of an event, with or without a space after the colon (servers serialise differently).
_TEXT = re.compile(rb'"(?:content|text)":\s?"((?:[^"\\]|\\.)+)"')
_DONE = b"data: [DONE]"
MAX_ERRORS_PER_WORKER = 200  # a server that refuses everything must not turn a worker into a busy loop


@dataclass
class RequestStats:
    """Closed-loop results: latencies (seconds) of the successful requests, and the rest."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    last_error: str = ""

    @property
    def ok(self) -> int:
        return len(self.latencies)


@dataclass
class StreamStats:
    """Streaming results: per-stream TTFT (seconds), text events received, and how streams ended."""

    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    started: int = 0
    completed: int = 0
    errors: int = 0
    elapsed: float = 0.0
    durations: list[float] = field(default_factory=list)
    last_error: str = ""


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


async def _bounded(workers: list[Awaitable[None]], limit: float) -> None:
    """Run the workers; cancel whatever is still running after `limit` seconds."""
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]  # a bug in the generator itself: surface it


async def timed_fetch(conn: Connection, request: Request, stats: RequestStats) -> bool:
    """Send one request and record it in `stats`: its latency when it is a 200, else the error. True if OK."""
    sent = time.perf_counter()
    try:
        await conn.fetch(request)
    except ProtocolError as exc:
        stats.errors += 1
        stats.last_error = str(exc)
        return False
    if conn.status != 200:
        stats.errors += 1
        stats.last_error = f"HTTP {conn.status}"
        return False
    stats.latencies.append(time.perf_counter() - sent)
    return True


async def closed_loop(
    host: str, port: int, request: Request, *, connections: int, duration: float, grace: float = 30.0
) -> RequestStats:
    """`connections` keep-alive connections, each sending `request` back to back for `duration` seconds."""
    stats = RequestStats()
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        conn = Connection(host, port)
        errors = 0
        try:
            while time.perf_counter() < deadline and errors < MAX_ERRORS_PER_WORKER:
                if not await timed_fetch(conn, request, stats):
                    errors += 1
        finally:
            conn.close()

    await _bounded([worker() for _ in range(connections)], duration + grace)
    stats.elapsed = time.perf_counter() - started
    return stats


async def one_stream(conn: Connection, request: Request, stats: StreamStats) -> None:
    """Read one SSE response to its end, counting text events as they arrive."""
    sent = time.perf_counter()
    stats.started += 1
    first = True
    done = False
    pending = b""
    try:
        async for piece in conn.stream(request):
            events = (pending + piece.replace(b"\r\n", b"\n")).split(b"\n\n")
            pending = events.pop()
            for event in events:
                if text := _TEXT.search(event):
                    stats.tokens += len(text[1].split())
                    if first:
                        first = False
                        stats.ttfts.append(time.perf_counter() - sent)
                elif event.startswith(_DONE):
                    done = True
    except ProtocolError as exc:
        stats.errors += 1
        stats.last_error = str(exc)
        return
    if conn.status == 200 and done:
        stats.completed += 1
        stats.durations.append(time.perf_counter() - sent)
    else:
        stats.errors += 1
        stats.last_error = f"HTTP {conn.status}" if conn.status != 200 else "stream ended without [DONE]"


async def stream_loop(host: str, port: int, request: Request, *, streams: int, duration: float) -> StreamStats:
    """`streams` connections, each streaming answers back to back; counts tokens received in `duration`.

    At the deadline the streams still open are cut: tokens/s is what arrived inside the window."""
    stats = StreamStats()
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            while time.perf_counter() < deadline and stats.errors < MAX_ERRORS_PER_WORKER * streams:
                await one_stream(conn, request, stats)
        finally:
            conn.close()

    await _bounded([worker() for _ in range(streams)], duration)
    stats.elapsed = time.perf_counter() - started
    return stats


async def hold_streams(host: str, port: int, request: Request, *, streams: int, limit: float) -> StreamStats:
    """Open `streams` streaming requests at once and read each to its end (cancelled after `limit` s)."""
    stats = StreamStats()
    started = time.perf_counter()

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            await one_stream(conn, request, stats)
        finally:
            conn.close()

    await _bounded([worker() for _ in range(streams)], limit)
    stats.elapsed = time.perf_counter() - started
    return stats


async def paced_loop(
    host: str, port: int, request: Request, *, connections: int, rate: float, duration: float, grace: float = 30.0
) -> RequestStats:
    """`connections` keep-alive connections sending `request` at `rate` per second in all, evenly spaced.

    Each connection sends its next request at its next slot, or as soon as its answer arrives when that is
    later: the load stays at `rate` when the server keeps up and never piles up when it does not."""
    stats = RequestStats()
    started = time.perf_counter()
    deadline = started + duration
    interval = connections / rate

    async def worker(offset: float) -> None:
        conn = Connection(host, port)
        errors = 0
        next_send = started + offset
        try:
            while next_send < deadline and errors < MAX_ERRORS_PER_WORKER:
                await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
                next_send += interval
                if not await timed_fetch(conn, request, stats):
                    errors += 1
        finally:
            conn.close()

    await _bounded([worker(i * interval / connections) for i in range(connections)], duration + grace)
    stats.elapsed = time.perf_counter() - started
    return stats


async def until_ok(probe: Callable[[], Awaitable[bool]], limit: float, interval: float = 0.1) -> bool:
    """Poll `probe` until it returns True, for at most `limit` seconds (a readiness wait, not a timer)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if await probe():
            return True
        await asyncio.sleep(interval)
    return False
