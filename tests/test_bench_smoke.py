"""The benchmark (bench/) with tiny numbers, so it cannot rot: every scenario runs against every server and the
JSON has the expected shape. No timing is asserted; speed is what the benchmark reports, not what tests check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import load
from bench.http1 import Connection, Request
from bench.profile import summarize
from bench.stack import DIRECT, aiohttp_available, chat_body, litellm_available

from .conftest import REPO

SCENARIOS = {"a_1conn", "a_4conn", "b_streaming", "c_slow_streams", "d_large_prompts"}
KEYS = {
    "a_1conn": {"rps", "p50_ms", "p99_ms", "added_p50_ms", "errors", "peak_rss_mb"},
    "a_4conn": {"rps", "p50_ms", "p99_ms", "added_p50_ms", "errors", "peak_rss_mb"},
    "b_streaming": {"tokens_per_s", "ttft_p50_ms", "added_ttft_p50_ms", "streams_completed", "errors", "peak_rss_mb"},
    "c_slow_streams": {"streams", "completed", "failed", "ttft_p50_ms", "peak_rss_mb"},
    "d_large_prompts": {"rps", "p50_ms", "p99_ms", "large_rps", "errors", "peak_rss_mb"},
}


def test_smoke_run_covers_every_scenario_and_server(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert {"mode", "machine", "versions", "load_generator", "targets", "results", "checks"} <= document.keys()
    ours = [DIRECT, "gateway (free)", "gateway (pro)", "passthrough (httpx)"]
    expected = ours + (["passthrough (aiohttp)"] if aiohttp_available() else [])
    expected += ["litellm proxy"] if litellm_available() else []
    assert document["targets"] == expected
    results = document["results"]
    assert set(results) == SCENARIOS
    for scenario, keys in KEYS.items():
        assert list(results[scenario]) == expected, scenario
        for target in expected:
            metrics = results[scenario][target]
            assert keys <= metrics.keys(), (scenario, target)
            if target in ours:  # correctness, not speed: our servers answer every request they get
                assert metrics.get("errors", metrics.get("failed")) == 0, (scenario, target, metrics)
    for target in ours:
        assert results["c_slow_streams"][target]["completed"] == results["c_slow_streams"][target]["streams"]
    assert all(len(found) == 10 for found in document["checks"].values())
    assert out.with_suffix(".md").read_text().startswith("| scenario | target |")
    assert "gateway (free)" in done.stdout and "issue 6 targets" in done.stdout


async def test_python_load_generator_against_a_devnode(start_devnode) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    port = int(node.url.rsplit(":", 1)[1])
    whole = Request.post_json("127.0.0.1", port, "/v1/chat/completions", chat_body(4), {})
    stats = await load.closed_loop("127.0.0.1", port, whole, connections=2, duration=0.2)
    assert stats.ok > 0 and stats.errors == 0

    streamed = Request.post_json("127.0.0.1", port, "/v1/chat/completions", chat_body(7, stream=True), {})
    held = await load.hold_streams("127.0.0.1", port, streamed, streams=5, limit=30)
    assert (held.completed, held.errors, held.tokens, len(held.ttfts)) == (5, 0, 35, 5)

    looped = await load.stream_loop("127.0.0.1", port, streamed, streams=2, duration=0.2)
    assert looped.errors == 0 and looped.started > 0

    missing = Request.post_json("127.0.0.1", port, "/nope", {}, {})
    conn = Connection("127.0.0.1", port)
    await conn.fetch(missing)
    assert conn.status == 404
    conn.close()


def test_percentile_is_nearest_rank() -> None:
    assert load.percentile([], 50) is None
    assert load.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert load.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert load.percentile([5.0], 99) == 5.0


def test_profile_summary_counts_self_and_inclusive_time() -> None:
    raw = (
        "main (/work/main/app.py:1);handler (/work/main/openai_proxy/api/x.py:5);dumps (lib/python3.11/json/x.py:9) 3\n"
        "main (/work/main/app.py:1);handler (/work/main/openai_proxy/api/x.py:7) 1\n"
    )
    text = summarize(raw)
    assert text.startswith("4 samples")
    assert " 75.0%  dumps  (json/x.py)" in text
    assert "100.0%  handler  (openai_proxy/api/x.py)" in text
    assert " 75.0%  stdlib:json" in text
