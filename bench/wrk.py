"""Driving wrk (when installed) for the non-streaming closed-loop runs, with bench/post.lua for the body."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

from .stack import BENCH_DIR, Target

LUA = BENCH_DIR / "post.lua"


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    path = wrk_path()
    if path is None:
        return "not installed"
    # `wrk --version` prints its banner and exits 1; the banner is all we want.
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip() if (done.stdout or done.stderr) else "wrk"


async def run_wrk(
    target: Target, body_file: Path, *, connections: int, seconds: int
) -> dict[str, float | int | str | None]:
    """One wrk run (one thread): requests/s of 2xx answers, latency p50/p99 in ms, errors."""
    path = wrk_path()
    assert path is not None
    env = dict(os.environ, BENCH_BODY_FILE=str(body_file), BENCH_AUTHORIZATION=target.headers.get("Authorization", ""))
    argv = [path, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(LUA),
            f"http://127.0.0.1:{target.port}/v1/chat/completions"]
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds + 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    line = next((row for row in out.decode().splitlines() if row.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (exit {process.returncode}): {err.decode()[-500:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["status_errors"] + raw["timeouts"]
    ok = raw["requests"] - raw["status_errors"]
    return {
        "requests": ok,
        "errors": errors,
        "rps": ok / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }
