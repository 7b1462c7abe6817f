"""Usage reports to a (fake) Oracle, their signatures checked with eth-account, and the /api/v1/report inbox."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from pydantic import SecretStr

from openai_proxy.app import create_app
from openai_proxy.protocol import AgentReport
from openai_proxy.reports import ReportInbox, UsageReporter

from .conftest import eventually, make_settings, mint, serve_app
from .fake_oracle import ORACLE_KEY, FakeOracle, running_oracle

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
ALICE = "0x" + "A1" * 20
BOB = "0x" + "b2" * 20
GATEWAY_KEY = Account.create()


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 500.0
        self.wall = 1_750_000_000.0

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


@pytest.fixture
async def oracle() -> AsyncIterator[FakeOracle]:
    async with running_oracle() as fake:
        yield fake


def reporter(oracle: FakeOracle, http: httpx.AsyncClient, clocks: Clocks, *, signed: bool = True) -> UsageReporter:
    settings = make_settings(oracle_api_url=oracle.url, oracle_api_key=SecretStr(ORACLE_KEY),
                             private_key=SecretStr(GATEWAY_KEY.key.hex()) if signed else None)
    return UsageReporter(settings, http, clock=lambda: clocks.monotonic, wall=lambda: clocks.wall)


def signer_of(report: dict[str, Any]) -> str:
    message = json.dumps({"agent": report["wallet"], "processed_tokens": report["tokensProcessed"],
                          "timestamp": report["timestamp"]}, separators=(",", ":"))
    return str(Account.recover_message(encode_defunct(text=message), signature=report["signature"]))


async def test_reports_are_cumulative_per_node_and_signed_by_the_gateway_key(oracle, http) -> None:  # type: ignore[no-untyped-def]
    clocks = Clocks()
    usage = reporter(oracle, http, clocks)
    usage.record(ALICE, 10, 0.5)
    clocks.advance(4)
    usage.record(ALICE, 5, 1.5)
    usage.record(BOB, 7, 0.25)
    await usage.report()
    alice, bob = oracle.reports_for(ALICE), oracle.reports_for(BOB)
    assert alice == [{"wallet": ALICE.lower(), "tokensProcessed": 15, "requestCount": 2, "avgLatencyMs": 1000,
                      "uptimeSeconds": 4, "timestamp": int(clocks.wall), "signature": alice[0]["signature"]}]
    assert bob[0]["tokensProcessed"] == 7 and bob[0]["avgLatencyMs"] == 250
    assert signer_of(alice[0]) == signer_of(bob[0]) == GATEWAY_KEY.address
    assert all(h["x-api-key"] == ORACLE_KEY for h in oracle.report_headers)
    usage.record(ALICE, 1, 0.5)
    await usage.report()  # the same wall-clock second: the timestamp still moves on, or the Oracle refuses it
    latest = oracle.reports_for(ALICE)[-1]
    assert latest["timestamp"] == int(clocks.wall) + 1 and latest["tokensProcessed"] == 16
    assert signer_of(latest) == GATEWAY_KEY.address
    assert usage.failed == 0 and usage.sent == 4  # Alice twice, Bob twice (active, so re-sent)


async def test_without_a_private_key_the_signature_says_internal(oracle, http) -> None:  # type: ignore[no-untyped-def]
    usage = reporter(oracle, http, Clocks(), signed=False)
    usage.record(ALICE, 3, 0.1)
    await usage.report()
    assert oracle.reports[0]["signature"] == "internal"


async def test_an_oracle_outage_loses_no_counts(oracle, http) -> None:  # type: ignore[no-untyped-def]
    clocks = Clocks()
    usage = reporter(oracle, http, clocks)
    usage.record(ALICE, 10, 0.1)
    await usage.report()
    oracle.down = True
    usage.record(ALICE, 20, 0.1)
    clocks.advance(10)
    await usage.report()
    usage.record(ALICE, 30, 0.1)
    clocks.advance(70)  # idle for over a minute, but its last counts never got through: it stays
    await usage.report()
    assert usage.failed == 2 and len(oracle.reports) == 1
    oracle.down = False
    clocks.advance(10)
    await usage.report()
    assert [r["tokensProcessed"] for r in oracle.reports] == [10, 60]
    assert [r["requestCount"] for r in oracle.reports] == [1, 3]
    clocks.advance(10)
    await usage.report()  # idle and delivered: dropped, nothing more is sent for it
    assert len(oracle.reports) == 2 and usage.usage == {}


async def test_idle_nodes_are_dropped_after_a_minute(oracle, http) -> None:  # type: ignore[no-untyped-def]
    clocks = Clocks()
    usage = reporter(oracle, http, clocks, signed=False)
    usage.record(ALICE, 1, 0.1)
    usage.record(BOB, 1, 0.1)
    await usage.report()
    clocks.advance(59)
    usage.record(BOB, 1, 0.1)
    await usage.report()
    clocks.advance(2)  # Alice idle for 61 s, Bob for 2 s
    await usage.report()
    assert [r["wallet"] for r in oracle.reports] == [ALICE.lower(), BOB, ALICE.lower(), BOB, BOB]
    assert set(usage.usage) == {BOB}


async def test_the_gateway_reports_what_its_nodes_served_and_flushes_on_shutdown(oracle, start_devnode, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=ALICE)
    settings = make_settings(node_urls=[f"petals+ws://{node.hostport}"], oracle_api_url=oracle.url,
                             oracle_api_key=SecretStr(ORACLE_KEY), private_key=SecretStr(GATEWAY_KEY.key.hex()),
                             usage_report_interval=3600, oracle_poll_interval=3600)
    oracle.down = True  # discovery finds nothing: the static node serves
    async with serve_app(create_app(settings)) as url:
        headers = {"Authorization": f"Bearer {mint(settings, BOB)}"}
        body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        response = await http.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200
        oracle.down = False
        assert oracle.reports == []  # the interval is an hour: nothing sent yet
    (report,) = oracle.reports_for(ALICE)  # the final flush at shutdown
    assert (report["tokensProcessed"], report["requestCount"]) == (4, 1)
    assert signer_of(report) == GATEWAY_KEY.address


async def test_reports_go_out_on_their_interval(oracle, start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=ALICE)
    gw = await start_gateway([f"http://{node.hostport}"], oracle_api_url=oracle.url,
                             oracle_api_key=SecretStr(ORACLE_KEY), usage_report_interval=0.05)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for _ in range(2):
        assert (await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())).status_code == 200

    async def reported() -> bool:
        reports = oracle.reports_for(ALICE)
        return bool(reports) and reports[-1]["requestCount"] == 2

    await eventually(reported)
    assert oracle.reports_for(ALICE)[-1]["tokensProcessed"] == 6


# --- the /api/v1/report inbox --------------------------------------------------------------------------


REPORT = {"agentId": "agent-1", "address": ALICE, "models": [LLAMA, "qwen/qwen3-32b"],
          "performance": {"requests": 3, "avgLatency": 120.5, "errors": 0}, "timestamp": 1_750_000_000_000}


async def test_the_report_inbox_checks_the_key_before_the_body(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    unset = await start_gateway([node.url])
    response = await http.post(f"{unset.url}/api/v1/report", json=REPORT, headers={"x-api-key": ""})
    assert response.status_code == 401 and "not configured" in response.json()["error"]["message"]
    gw = await start_gateway([node.url], oracle_api_key=SecretStr(ORACLE_KEY))
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": ORACLE_KEY + "x"}):
        for body in (REPORT, {"junk": True}):
            response = await http.post(f"{gw.url}/api/v1/report", json=body, headers=headers)
            assert response.status_code == 401, (headers, body)  # never 400: the body is not even read
        assert (await http.get(f"{gw.url}/api/v1/report/agents", headers=headers)).status_code == 401
    key = {"x-api-key": ORACLE_KEY}
    for bad in ({**REPORT, "extra": 1}, {**REPORT, "agentId": ""}, {**REPORT, "models": "x"},
                {**REPORT, "performance": {"requests": -1, "avgLatency": 0, "errors": 0}}):
        response = await http.post(f"{gw.url}/api/v1/report", json=bad, headers=key)
        assert response.status_code == 400, bad
    response = await http.post(f"{gw.url}/api/v1/report", json=REPORT, headers=key)
    assert response.status_code == 201 and response.json() == {"status": "ok"}
    agents = (await http.get(f"{gw.url}/api/v1/report/agents", headers=key)).json()
    assert agents == {"reports": [{**REPORT, "timestamp": "2025-06-15T15:06:40.000Z",
                                   "performance": {"requests": 3.0, "avgLatency": 120.5, "errors": 0.0}}]}


def test_reports_expire_after_five_minutes_and_drive_available_models() -> None:
    now = [0.0]
    inbox = ReportInbox(clock=lambda: now[0])
    inbox.add(AgentReport.model_validate(REPORT))
    now[0] = 100
    inbox.add(AgentReport.model_validate({**REPORT, "agentId": "agent-2", "models": [LLAMA]}))
    assert inbox.available_models() == {LLAMA: 2, "qwen/qwen3-32b": 1}
    now[0] = 301
    assert inbox.available_models() == {LLAMA: 1}
    inbox.add(AgentReport.model_validate({**REPORT, "agentId": "agent-2", "models": []}))  # replaces its report
    assert inbox.available_models() == {}
    now[0] = 602
    assert inbox.reports() == []
