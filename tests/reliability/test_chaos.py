"""The chaos run at CI size: 3 devnode processes of three kinds behind `openai-proxy serve`, one node
SIGKILLed and restarted and another hung every cycle, 30 clients x 10 requests; no client may notice.
The benchmark-size run is `python -m bench.chaos` (see tests/reliability/chaos.py)."""

from __future__ import annotations

from .chaos import ChaosConfig, run_chaos
from .processes import ProcessSet


async def test_no_client_notices_nodes_dying_and_hanging(procs: ProcessSet) -> None:
    report = await run_chaos(procs, ChaosConfig(clients=30, requests=10, tokens=20, token_delay=0.005))
    print(report.summary())  # the README's figures come from this line (pytest -s)
    assert report.requests == 300
    assert report.kills >= 1 and report.hangs >= 1, "the run ended before any fault was injected"
    assert report.failures == [], "\n".join(report.failures[:20])
