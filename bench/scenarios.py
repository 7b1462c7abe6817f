"""The four scenarios of issue 6, each run against every target of a stack, alternating targets per round.

(a) non-streaming chat, 16-token answers, 1 and 32 connections (wrk when installed, else Python)
(b) streaming chat, 256-token answers, 64 concurrent streams (Python: it must read the SSE for TTFT)
(c) 1,000 concurrent slow streams (the node waits 0.2 s per token), held open to the end
(d) small requests and 50k-token prompts, each at a steady rate (p99 of the small ones)

Each round visits every target once, starting one target later than the round before, so no target always
runs first or last. A target's figure is the median of its rounds. Peak RSS is taken per scenario.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from . import load
from .stack import Stack, Target, chat_body
from .wrk import run_wrk

Metrics = dict[str, float | int | str | None]


@dataclass(frozen=True)
class Params:
    rounds: int
    a_seconds: int  # wrk takes whole seconds
    b_seconds: float
    c_streams: int
    c_tokens: int
    d_seconds: float
    d_prompt_tokens: int
    a_connections: tuple[int, ...] = (1, 32)
    a_tokens: int = 16
    b_streams: int = 64
    b_tokens: int = 256
    c_token_delay: float = 0.2
    d_small_connections: int = 4
    d_large_connections: int = 2
    d_small_rate: float = 200.0  # small requests per second, in all
    d_large_rate: float = 4.0  # large prompts per second, in all: 200,000 prompt tokens a second to count
    grace: float = 30.0  # seconds a request may run past the end of its window before it is cancelled


MODES = {
    "full": Params(rounds=2, a_seconds=5, b_seconds=8, c_streams=1000, c_tokens=25, d_seconds=8,
                   d_prompt_tokens=50_000),
    "quick": Params(rounds=1, a_seconds=3, b_seconds=4, c_streams=1000, c_tokens=10, d_seconds=4,
                    d_prompt_tokens=50_000),
    "smoke": Params(rounds=1, a_seconds=1, b_seconds=1, c_streams=20, c_tokens=3, d_seconds=1,
                    d_prompt_tokens=2_000, a_connections=(1, 4), b_streams=4, b_tokens=16,
                    d_small_connections=2, d_large_connections=1, d_small_rate=50.0, grace=10.0),
}


@dataclass(frozen=True)
class Bench:
    params: Params
    generator: str  # "wrk" or "python": who drives scenario (a)
    workdir: Path
    large_prompt: str


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _median(values: list[float | int | str | None]) -> float | int | str | None:
    """Median of the rounds' numbers; for text (an error message), the last one seen."""
    texts = [v for v in values if isinstance(v, str) and v]
    if texts:
        return texts[-1]
    numbers = [v for v in values if isinstance(v, int | float)]
    return statistics.median(numbers) if numbers else None


async def alternate(stack: Stack, rounds: int, run: Callable[[Target], Awaitable[Metrics]]) -> dict[str, Metrics]:
    """Run every target once per round, rotating the order; median of the rounds; peak RSS of the scenario."""
    for server in stack.servers:
        server.reset_peak()
    per_target: dict[str, list[Metrics]] = {target.name: [] for target in stack.targets}
    count = len(stack.targets)
    for round_index in range(rounds):
        for i in range(count):
            target = stack.targets[(round_index + i) % count]
            metrics = await run(target)
            if not target.server.alive():  # a crashed server must not pass for a slow one
                metrics["server_exit_code"] = target.server.process.returncode
            per_target[target.name].append(metrics)
    results: dict[str, Metrics] = {}
    for target in stack.targets:
        runs = per_target[target.name]
        merged: Metrics = {key: _median([run[key] for run in runs]) for key in runs[0]}
        merged["peak_rss_mb"] = round(target.server.peak_rss_mb(), 1)
        results[target.name] = merged
    return results


def request_metrics(stats: load.RequestStats) -> Metrics:
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "rps": stats.ok / stats.elapsed if stats.elapsed else 0.0,
        "p50_ms": ms(load.percentile(stats.latencies, 50)),
        "p99_ms": ms(load.percentile(stats.latencies, 99)),
        "last_error": stats.last_error or None,
    }


async def scenario_a(bench: Bench, stack: Stack, connections: int) -> dict[str, Metrics]:
    params = bench.params
    body = chat_body(params.a_tokens)
    body_file = bench.workdir / "a-body.json"
    body_file.write_bytes(json.dumps(body, separators=(",", ":")).encode())

    async def run(target: Target) -> Metrics:
        if bench.generator == "wrk":
            return await run_wrk(target, body_file, connections=connections, seconds=params.a_seconds)
        stats = await load.closed_loop("127.0.0.1", target.port, target.request(body),
                                       connections=connections, duration=params.a_seconds, grace=params.grace)
        return request_metrics(stats)

    return await alternate(stack, params.rounds, run)


def stream_metrics(stats: load.StreamStats, seconds: float) -> Metrics:
    return {
        "tokens_per_s": stats.tokens / seconds,
        "ttft_p50_ms": ms(load.percentile(stats.ttfts, 50)),
        "ttft_p99_ms": ms(load.percentile(stats.ttfts, 99)),
        "streams_completed": stats.completed,
        "errors": stats.errors,
        "last_error": stats.last_error or None,
    }


async def scenario_b(bench: Bench, stack: Stack) -> dict[str, Metrics]:
    params = bench.params
    body = chat_body(params.b_tokens, stream=True)

    async def run(target: Target) -> Metrics:
        stats = await load.stream_loop("127.0.0.1", target.port, target.request(body),
                                       streams=params.b_streams, duration=params.b_seconds)
        return stream_metrics(stats, params.b_seconds)

    return await alternate(stack, params.rounds, run)


async def scenario_c(bench: Bench, stack: Stack) -> dict[str, Metrics]:
    """Each target in turn holds all streams; one round (a slow scenario's duration is set by the node)."""
    params = bench.params
    body = chat_body(params.c_tokens, stream=True)
    limit = params.c_tokens * params.c_token_delay + 2 * params.grace

    async def run(target: Target) -> Metrics:
        stats = await load.hold_streams("127.0.0.1", target.port, target.request(body),
                                        streams=params.c_streams, limit=limit)
        return {
            "streams": params.c_streams,
            "completed": stats.completed,
            "failed": params.c_streams - stats.completed,
            "unfinished_at_limit": stats.started - stats.completed - stats.errors,  # cut after `limit` s
            "limit_s": limit,
            "ttft_p50_ms": ms(load.percentile(stats.ttfts, 50)),
            "ttft_p99_ms": ms(load.percentile(stats.ttfts, 99)),
            "stream_p50_s": load.percentile(stats.durations, 50),
            "wall_s": stats.elapsed,
            "last_error": stats.last_error or None,
        }

    return await alternate(stack, 1, run)


async def scenario_d(bench: Bench, stack: Stack) -> dict[str, Metrics]:
    """Small requests at a steady rate while large prompts arrive at a steady rate (both paced, Python).

    Paced, not back to back: back to back, the small requests keep the server saturated and their p99 is the
    queueing of a saturated server (what (a) at 32 connections measures), and the large ones keep both cores
    busy parsing 200 KB bodies in the generator, the server and the node alike (the node alone had 22 ms p99
    that way). At a steady rate that the server can carry, the small requests' p99 shows what (d) asks:
    whether the server's event loop stalls while a large prompt is read, parsed and counted."""
    params = bench.params
    small = chat_body(16)
    large = chat_body(1, content=bench.large_prompt)

    async def run(target: Target) -> Metrics:
        small_stats, large_stats = await asyncio.gather(
            load.paced_loop("127.0.0.1", target.port, target.request(small), connections=params.d_small_connections,
                            rate=params.d_small_rate, duration=params.d_seconds, grace=params.grace),
            load.paced_loop("127.0.0.1", target.port, target.request(large), connections=params.d_large_connections,
                            rate=params.d_large_rate, duration=params.d_seconds, grace=params.grace),
        )
        metrics = request_metrics(small_stats)
        metrics["large_rps"] = large_stats.ok / large_stats.elapsed if large_stats.elapsed else 0.0
        metrics["large_p50_ms"] = ms(load.percentile(large_stats.latencies, 50))
        metrics["errors"] = small_stats.errors + large_stats.errors
        metrics["last_error"] = small_stats.last_error or large_stats.last_error or None
        return metrics

    return await alternate(stack, params.rounds, run)
