"""GET /metrics: counters that move with real traffic, a parseable exposition, and sums across workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FREE_WALLET, PRO_WALLET, eventually, sse_payloads
from .serve_support import flushed_redis, serve_gateway

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello there"}]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def scrape(http: httpx.AsyncClient, base: str) -> str:
    response = await http.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def chat(http: httpx.AsyncClient, gw: Any, wallet: str = FREE_WALLET, **extra: Any) -> httpx.Response:
    body = {"model": LLAMA, "messages": HELLO, "max_tokens": 5, **extra}
    return await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers(wallet))


async def test_request_token_and_node_metrics_follow_real_traffic(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([node.url], free_tier_limit=2)
    assert value(await scrape(http, gw.url), "openai_proxy_requests_total", route=CHAT) == 0
    plain = await chat(http, gw)
    streamed = await chat(http, gw, stream=True, stream_options={"include_usage": True})
    refused = await chat(http, gw)  # the free tier's third request in the window
    unauthorised = await http.get(f"{gw.v1}/models")
    pro = await chat(http, gw, wallet=PRO_WALLET)
    assert [plain.status_code, streamed.status_code, refused.status_code, unauthorised.status_code,
            pro.status_code] == [200, 200, 429, 401, 200]
    usages = [plain.json()["usage"], json.loads(sse_payloads(streamed.text)[-2])["usage"], pro.json()["usage"]]

    text = await scrape(http, gw.url)
    ok = {"route": CHAT, "method": "POST", "status": "200", "model": LLAMA}
    assert value(text, "openai_proxy_requests_total", **ok, tier="free") == 2
    assert value(text, "openai_proxy_requests_total", **ok, tier="pro") == 1
    assert value(text, "openai_proxy_requests_total", route=CHAT, status="429", tier="free", model=LLAMA) == 1
    assert value(text, "openai_proxy_requests_total", route="/v1/models", status="401", tier="none") == 1
    assert value(text, "openai_proxy_rate_limited_requests_total", route=CHAT, tier="free") == 1
    assert value(text, "openai_proxy_prompt_tokens_total", model=LLAMA) == sum(u["prompt_tokens"] for u in usages)
    assert value(text, "openai_proxy_completion_tokens_total", model=LLAMA) == sum(
        u["completion_tokens"] for u in usages)
    assert value(text, "openai_proxy_time_to_first_token_seconds_count", model=LLAMA) == 3
    assert value(text, "openai_proxy_request_duration_seconds_count", route=CHAT) == 4
    assert value(text, "openai_proxy_request_duration_seconds_bucket", route=CHAT, le="+Inf") == 4
    assert value(text, "openai_proxy_node_requests_total", node=node.url) == 3
    assert value(text, "openai_proxy_node_healthy", node=node.url) == 1
    assert value(text, "openai_proxy_node_in_flight", node=node.url) == 0
    assert value(text, "openai_proxy_node_info", node=node.url, kind="plumise") == 1
    assert value(text, "openai_proxy_failovers_total") == 0


async def test_unknown_paths_and_models_never_become_labels(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([node.url])
    await http.get(f"{gw.url}/no/such/path/12345")
    assert (await chat(http, gw, model="made-up-model-67890")).status_code == 404
    text = await scrape(http, gw.url)
    assert "12345" not in text and "67890" not in text
    assert value(text, "openai_proxy_requests_total", route="<unmatched>", status="404") == 1
    assert value(text, "openai_proxy_requests_total", route=CHAT, status="404", model="none") == 1


async def test_in_flight_is_counted_while_a_stream_runs(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(token_delay=0.05)
    gw = await start_gateway([f"petals+ws://{node.hostport}"])  # a node protocol that streams token by token
    body = {"model": LLAMA, "messages": HELLO, "max_tokens": 40, "stream": True}
    async with http.stream("POST", f"{gw.v1}/chat/completions", json=body, headers=gw.headers()) as stream:
        chunks = stream.aiter_lines()
        while '"content":"' not in await anext(chunks):
            pass  # the node is producing text now
        assert value(await scrape(http, gw.url), "openai_proxy_node_in_flight", node=node.url) == 1
        assert "[DONE]" in "".join([line async for line in chunks])
    assert value(await scrape(http, gw.url), "openai_proxy_node_in_flight", node=node.url) == 0


async def test_failures_failovers_and_continuations_are_counted(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    dying = await start_devnode(fault="die", die_after=3, address="0x" + "a1" * 20)
    steady = await start_devnode(address="0x" + "b2" * 20)
    # Petals WebSocket streams token by token, so "die after 3 tokens" is a failure after the first byte.
    gw = await start_gateway([f"petals+ws://{n.hostport}" for n in (dying, steady)], node_max_failures=100)

    async def continued() -> bool:  # the first node is chosen at random: stream until the dying one went first
        response = await chat(http, gw, wallet=PRO_WALLET, stream=True, max_tokens=8)
        assert sse_payloads(response.text)[-1] == "[DONE]"
        return value(await scrape(http, gw.url), "openai_proxy_continuations_total", model=LLAMA) >= 1

    await eventually(continued, within=30)
    text = await scrape(http, gw.url)
    continuations = value(text, "openai_proxy_continuations_total", model=LLAMA)
    assert continuations == 1
    assert value(text, "openai_proxy_failovers_total", model=LLAMA) == 1
    assert value(text, "openai_proxy_node_failures_total", node=dying.url) == 1
    assert value(text, "openai_proxy_node_failures_total", node=steady.url) == 0


async def test_several_workers_report_the_sums_of_all_workers(start_devnode, tmp_path: Path) -> None:
    node = await start_devnode()
    async with flushed_redis() as redis_url, serve_gateway(tmp_path, [node.url], workers=2,
                                                           REDIS_URL=redis_url) as gw:
        fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection, so a possibly new worker, each time
        async with httpx.AsyncClient(limits=fresh, timeout=30) as client:
            sent = 0

            async def both_workers_served() -> bool:
                nonlocal sent
                body = {"model": LLAMA, "messages": HELLO, "max_tokens": 3}
                response = await client.post(f"{gw.url}/v1/chat/completions", json=body, headers=gw.headers(PRO_WALLET))
                assert response.status_code == 200
                sent += 1
                pids = {e["pid"] for e in gw.log_entries() if e.get("route") == CHAT and e.get("status") == 200}
                return len(pids) == 2

            await eventually(both_workers_served, within=60)
            scrapes = [await scrape(client, gw.url) for _ in range(6)]

            async def nodes_synced() -> bool:  # each worker copies its node counters every second
                text = await scrape(client, gw.url)
                return value(text, "openai_proxy_node_requests_total", node=node.url) == sent

            await eventually(nodes_synced, within=10)
    # Both workers served chat requests, so no worker's own count is `sent`: every scrape, whichever worker
    # answered it, must have read the other's numbers too.
    for text in scrapes:
        assert value(text, "openai_proxy_requests_total", route=CHAT, status="200", tier="pro") == sent
        assert value(text, "openai_proxy_completion_tokens_total", model=LLAMA) == 3 * sent
