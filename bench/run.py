"""The one benchmark command: start everything on loopback, run the scenarios, print one table, write JSON.

    python -m bench.run            # full run (~7 minutes on 2 cores)
    python -m bench.run --quick    # one round, shorter windows (~3 minutes)
    python -m bench.run --smoke    # tiny numbers: checks that every piece still works (the test suite runs it)

See bench/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from openai_proxy.devnode import VOCAB
from openai_proxy.tokens import TokenCounter

from . import report, scenarios
from .scenarios import MODES, Bench, Params
from .stack import BENCH_DIR, Stack, StackOptions, aiohttp_available, base_env, litellm_available, start_stack
from .wrk import wrk_path, wrk_version

DEFAULT_OUT = BENCH_DIR / "results" / "latest.json"
PUBLISHED = BENCH_DIR / "published"
PYTHON_GENERATOR = "python (bench/load.py)"
SCENARIOS = ("a", "b", "c", "d")
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"  # keys under a fresh per-run prefix; the tests use DBs 13 and 14
PACKAGES = ("openai-proxy", "starlette", "uvicorn", "httpx", "aiohttp", "litellm", "uvloop", "httptools", "h11",
            "pydantic", "tiktoken")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="one short round")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke", help="tiny numbers (tests)")
    parser.set_defaults(mode="full")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result file (default {DEFAULT_OUT})")
    parser.add_argument("--publish", action="store_true", help=f"also copy the JSON and table to {PUBLISHED}/")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run, e.g. a,b (default all)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                        help="load generator for scenario (a): wrk when installed (auto), or the Python one")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--gateway-node", default="openai+http",
                        choices=["openai+http", "http", "petals+http", "petals+ws"],
                        help="protocol the gateway uses to reach the devnode (default openai+http, like the others)")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--gateway-workers", type=int, default=1,
                        help="`serve --workers N` for the gateway (N > 1 uses Redis, see --redis-url)")
    parser.add_argument("--redis-url", help=f"the gateway's Redis (default: memory store for one worker, "
                        f"{DEFAULT_REDIS} for more)")
    args = parser.parse_args(argv)
    if args.gateway_workers < 1:
        parser.error("--gateway-workers must be at least 1")
    if args.redis_url is None and args.gateway_workers > 1:
        args.redis_url = DEFAULT_REDIS
    return args


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "kernel": platform.release(),
            "python": platform.python_version()}


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def source() -> dict[str, Any]:
    """Which code was measured: the commit, and how many files differed from it (read-only git calls)."""
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD") or "unknown", "changed_files": len(status.splitlines())}


def large_prompt(tokens: int) -> str:
    """Deterministic lorem text of about `tokens` cl100k tokens (what the gateway counts)."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", base_env()["TIKTOKEN_CACHE_DIR"])
    counter = TokenCounter("cl100k_base")
    rng = random.Random(6)
    sample = " ".join(rng.choice(VOCAB) for _ in range(2000))
    words = max(1, round(tokens * 2000 / counter.count(sample)))
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def choose_generator(wanted: str) -> str:
    if wanted == "wrk" and wrk_path() is None:
        raise SystemExit("--generator wrk: wrk is not installed (apt-get install wrk)")
    if wanted == "auto":
        return "wrk" if wrk_path() is not None else "python"
    return wanted


async def run_scenarios(bench: Bench, only: set[str], fast: Stack, slow: Stack | None) -> report.Results:
    results: report.Results = {}
    params = bench.params
    if "a" in only:
        for connections in params.a_connections:
            _say(f"(a) non-streaming, {connections} connection(s)")
            results[f"a_{connections}conn"] = await scenarios.scenario_a(bench, fast, connections)
    if "b" in only:
        _say(f"(b) streaming, {params.b_streams} streams of {params.b_tokens} tokens")
        results["b_streaming"] = await scenarios.scenario_b(bench, fast)
    if slow is not None:
        _say(f"(c) {params.c_streams} slow streams ({params.c_token_delay} s per token, {params.c_tokens} tokens)")
        results["c_slow_streams"] = await scenarios.scenario_c(bench, slow)
    if "d" in only:
        _say(f"(d) small requests next to {params.d_prompt_tokens}-token prompts")
        results["d_large_prompts"] = await scenarios.scenario_d(bench, fast)
    return results


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    params: Params = MODES[args.mode]
    if args.rounds:
        params = dataclasses.replace(params, rounds=args.rounds)
    only = {item.strip() for item in args.only.split(",") if item.strip()}
    generator = choose_generator(args.generator)
    with_litellm = litellm_available() and not args.no_litellm
    workdir = Path(tempfile.mkdtemp(prefix="openai-proxy-bench-"))
    options = StackOptions(workdir=workdir, logdir=args.out.parent / "logs", litellm=with_litellm,
                           aiohttp=aiohttp_available(), gateway_scheme=args.gateway_node,
                           gateway_workers=args.gateway_workers, redis_url=args.redis_url)
    prompt = large_prompt(params.d_prompt_tokens) if "d" in only else ""
    bench = Bench(params=params, generator=generator, workdir=workdir, large_prompt=prompt)
    load_before = os.getloadavg()[0]
    _say(f"mode {args.mode}; load generator for (a): {generator}; LiteLLM: {'yes' if with_litellm else 'no'}; "
         f"load average {load_before:.2f} (anything else running on this machine skews the numbers)")
    starts = [start_stack("fast", 0.0, options)]
    if "c" in only:
        starts.append(start_stack("slow", params.c_token_delay, options))
    started = await asyncio.gather(*starts, return_exceptions=True)
    stacks = [item for item in started if isinstance(item, Stack)]
    try:
        for item in started:
            if isinstance(item, BaseException):
                raise item
        _say("servers ready: " + ", ".join(t.name for t in stacks[0].targets))
        results = await run_scenarios(bench, only, stacks[0], stacks[1] if len(stacks) > 1 else None)
    finally:
        await asyncio.gather(*(stack.stop() for stack in stacks))
        shutil.rmtree(workdir, ignore_errors=True)
    report.add_overheads(results)
    a_low, a_high = (f"a_{c}conn" for c in (min(params.a_connections), max(params.a_connections)))
    return {
        "mode": args.mode,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine() | {"load_average_1m_before": round(load_before, 2),
                                "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "source": source(),
        "versions": versions(),
        "load_generator": {"a": f"wrk ({wrk_version()}), one thread" if generator == "wrk" else PYTHON_GENERATOR,
                           "b, c, d": PYTHON_GENERATOR},
        "gateway_node_protocol": args.gateway_node,
        "gateway_workers": args.gateway_workers,
        "gateway_store": "redis" if args.redis_url else "memory",
        "params": vars(params) | {"a_connections": list(params.a_connections)},
        "targets": [t.name for t in stacks[0].targets],
        "results": results,
        "checks": {gw: report.checks(results, gw, a_high, a_low, params.c_streams)
                   for gw in ("gateway (free)", "gateway (pro)")},
    }


def write(document: dict[str, Any], out: Path, publish: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    table = report.markdown_table(document["results"])
    out.with_suffix(".md").write_text(table + "\n")
    if publish:
        PUBLISHED.mkdir(exist_ok=True)
        shutil.copyfile(out, PUBLISHED / "latest.json")
        shutil.copyfile(out.with_suffix(".md"), PUBLISHED / "latest.md")


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # stop the servers on SIGTERM
    return await benchmark(args)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    document = asyncio.run(_main(args))
    write(document, args.out, args.publish)
    print(report.text_table(document["results"]))
    if notes := report.error_notes(document["results"]):
        print(f"\nerrors:\n{notes}")
    print(f"\nload generator: (a) {document['load_generator']['a']}; (b, c, d) python")
    for gateway, found in document["checks"].items():
        print(f"\nissue 6 targets, {gateway}:\n{report.checks_text(found)}")
    print(f"\nJSON: {args.out}" + (f" (and {PUBLISHED / 'latest.json'})" if args.publish else ""))


if __name__ == "__main__":
    main()
