"""Redis going away under a running gateway: pro and service-key traffic keeps flowing, free traffic and
sign-in fail closed with 503 + Retry-After (never unlimited), and everything recovers without a restart.

The gateway reaches the real Redis (db 12) through a TCP relay this test owns, so "Redis is down" is a real
refused/reset connection, not a mock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .auth_support import REDIS_DB, assert_envelope, flushed_redis, new_account, request_nonce, sign_text
from .conftest import PRO_WALLET, eventually
from .tcp_proxy import TcpProxy

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
async def relay() -> AsyncIterator[TcpProxy]:
    async with flushed_redis():
        relay = TcpProxy("127.0.0.1", 6379)
        await relay.start()
        try:
            yield relay
        finally:
            await relay.stop()


@pytest.fixture
async def gw(relay, start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"http://{node.hostport}"], redis_url=f"redis://{relay.url_host}/{REDIS_DB}",
                               free_tier_limit=3, api_keys=["svc-key-1:pro:backend", "svc-key-2:free:trial"])


async def chat(http: httpx.AsyncClient, gw: Any, headers: dict[str, str]) -> httpx.Response:
    body = {"model": LLAMA, "messages": HELLO, "max_tokens": 2}
    return await http.post(f"{gw.v1}/chat/completions", json=body, headers=headers)


async def test_outage_fails_closed_for_free_and_open_for_pro_then_recovers(gw, relay, http) -> None:  # type: ignore[no-untyped-def]
    free = gw.headers(new_account().address)
    pro = gw.headers(PRO_WALLET)
    service = {"Authorization": "Bearer svc-key-1"}
    assert (await chat(http, gw, free)).headers["x-ratelimit-remaining-requests"] == "2"
    assert (await http.get(f"{gw.url}/ready")).json()["status"] == "ready"

    await relay.stop()
    ready = await http.get(f"{gw.url}/ready")  # degraded, not out of the balancer: pro is still served
    assert ready.status_code == 200
    assert (ready.json()["status"], ready.json()["state_store"]) == ("degraded", "unreachable")
    for headers in (pro, service):
        response = await chat(http, gw, headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-limit-requests"] == "unlimited"
    assert (await http.get(f"{gw.v1}/models", headers=pro)).status_code == 200
    free_service = {"Authorization": "Bearer svc-key-2"}  # no revocation check: the limiter itself refuses
    for _ in range(5):  # more than the quota: refused every time, never waved through
        for headers in (free, free_service):
            refused = await chat(http, gw, headers)
            assert_envelope(refused, 503, "state_store_unavailable")
            assert int(refused.headers["retry-after"]) >= 1
    nonce = await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": new_account().address})
    assert_envelope(nonce, 503)
    assert int(nonce.headers["retry-after"]) >= 1
    assert_envelope(await http.post(f"{gw.url}/api/v1/auth/logout", headers=free), 503)
    # A pro token passes authentication, but its revocation cannot be recorded: 503, not a false "ok".
    assert_envelope(await http.post(f"{gw.url}/api/v1/auth/logout", headers=pro), 503)

    await relay.start()  # same port, same gateway process

    async def free_works() -> bool:
        return (await chat(http, gw, free)).status_code == 200

    await eventually(free_works)
    assert (await http.get(f"{gw.url}/ready")).json() == {
        "status": "ready", "healthy_nodes": (await http.get(f"{gw.url}/ready")).json()["healthy_nodes"],
        "state_store": "ok"}
    # The window survived in Redis: the outage neither reset nor spent the quota.
    account = (await http.get(f"{gw.url}/api/v1/auth/me", headers=free)).json()
    assert account["limits"]["remaining"] == 1
    wallet = new_account()
    issued = await request_nonce(http, gw.url, wallet.address)
    signed = {"address": wallet.address, "signature": sign_text(wallet, issued["message"])}
    assert (await http.post(f"{gw.url}/api/v1/auth/verify", json=signed)).status_code == 200


async def test_verify_during_an_outage_is_503_and_keeps_the_nonce(gw, relay, http) -> None:  # type: ignore[no-untyped-def]
    wallet = new_account()
    issued = await request_nonce(http, gw.url, wallet.address)
    signed = {"address": wallet.address, "signature": sign_text(wallet, issued["message"])}
    await relay.stop()
    assert_envelope(await http.post(f"{gw.url}/api/v1/auth/verify", json=signed), 503)
    await relay.start()

    async def signs_in() -> bool:
        return (await http.post(f"{gw.url}/api/v1/auth/verify", json=signed)).status_code == 200

    await eventually(signs_in)


async def test_redis_killed_and_restarted_under_load(relay, start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    """Clients keep sending (free and pro, streaming and not) while Redis goes away and comes back: pro is
    always served, free gets 200 or 503 + Retry-After (never a 5xx of another kind, never an unlimited
    window), and free traffic is served again once Redis returns, without a restart."""
    import asyncio
    import time

    node = await start_devnode(token_delay=0.002)
    gw = await start_gateway([f"http://{node.hostport}"], redis_url=f"redis://{relay.url_host}/{REDIS_DB}",
                             free_tier_limit=1000)
    free_wallets = [new_account().address for _ in range(4)]
    outcomes: list[tuple[str, int, str]] = []
    stop = asyncio.Event()

    async def client(wallet: str, tier: str, stream: bool) -> None:
        body = {"model": LLAMA, "messages": HELLO, "max_tokens": 4, "stream": stream}
        while not stop.is_set():
            # A hang guard per request: a request stuck on the store must fail this test, not hang it.
            response = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers(wallet),
                                       timeout=20)
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                assert response.json()["error"]["code"] == "state_store_unavailable"
            elif response.status_code == 200 and stream:
                assert response.text.rstrip().endswith("data: [DONE]")
            outcomes.append((tier, response.status_code, "stream" if stream else "json"))

    clients = [asyncio.create_task(client(wallet, "free", i % 2 == 0)) for i, wallet in enumerate(free_wallets)]
    clients += [asyncio.create_task(client(PRO_WALLET, "pro", stream)) for stream in (False, True)]
    try:
        await eventually(lambda: _served(outcomes, "free", 20), within=30)
        await asyncio.wait_for(relay.stop(), 30)
        down_at = len(outcomes)
        await eventually(lambda: _refused(outcomes[down_at:], 10), within=30)
        await asyncio.wait_for(relay.start(), 30)
        back_at = len(outcomes)
        started = time.monotonic()
        await eventually(lambda: _served(outcomes[back_at:], "free", 10), within=30)
        recovery = time.monotonic() - started
    finally:
        stop.set()
        done, running = await asyncio.wait(clients, timeout=30)
        for task in running:
            task.cancel()
        assert not running, "clients still busy 30 s after the end: a request hung"
        for task in done:
            task.result()  # a client's failed assertion fails the test
    during = outcomes[down_at:back_at]
    assert {status for tier, status, _ in outcomes if tier == "pro"} == {200}  # pro never refused
    assert {status for tier, status, _ in outcomes if tier == "free"} <= {200, 503}
    assert any(tier == "pro" for tier, _, _ in during)  # pro traffic flowed during the outage
    print(f"redis outage under load: {len(outcomes)} requests, {len(during)} during the outage "
          f"({sum(status == 503 for _, status, _ in during)} free refused with 503), "
          f"free served again {recovery:.2f} s after Redis returned")


async def _served(outcomes: list[tuple[str, int, str]], tier: str, count: int) -> bool:
    return sum(t == tier and status == 200 for t, status, _ in outcomes) >= count


async def _refused(outcomes: list[tuple[str, int, str]], count: int) -> bool:
    return sum(status == 503 for _, status, _ in outcomes) >= count
