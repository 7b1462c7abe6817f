"""Pro tiers from the InferencePayment contract on a real local chain (anvil): deposits, cache expiry, outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from .chain_support import (
    PLM,
    Chain,
    chain_metrics,
    free_port,
    new_address,
    redis_db8,
    run_chain,
    stalling_rpc,
)
from .conftest import eventually

PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
FREE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
HANG_GUARD = 60.0  # seconds: only catches a request that waits for the chain forever; never a timing assert


@pytest.fixture
async def chain(tmp_path: Path, stack: AsyncExitStack) -> AsyncIterator[Chain]:
    yield await stack.enter_async_context(run_chain(tmp_path / "chain"))


@pytest.fixture
async def node(start_devnode: Any) -> str:
    devnode = await start_devnode()
    return f"petals+ws://{devnode.hostport}"


async def tier_of(http: httpx.AsyncClient, gw: Any, address: str) -> str:
    response = await http.get(f"{gw.url}/api/v1/auth/me", headers=gw.headers(address))
    assert response.status_code == 200, response.text
    tier: str = response.json()["tier"]
    return tier


async def chat(http: httpx.AsyncClient, gw: Any, address: str, model: str = FREE_MODEL) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers(address))


async def test_deposits_on_chain_decide_free_and_pro(chain: Chain, node: str, start_gateway: Any, http: Any) -> None:
    pro, short, nobody = new_address(), new_address(), new_address()
    await chain.deposit(pro, 100 * PLM)  # PRO_TIER_MINIMUM
    await chain.deposit(short, 99 * PLM)
    gw = await start_gateway([node], **chain.gateway_settings())

    assert [await tier_of(http, gw, a) for a in (pro, short, nobody)] == ["pro", "free", "free"]
    assert (await chat(http, gw, pro, PRO_MODEL)).status_code == 200
    refused = await chat(http, gw, short, PRO_MODEL)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tier_required"

    balance = (await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(pro))).json()
    assert balance["tier"] == balance["chain_tier"] == "pro"
    assert balance["balance"] == {"wei": str(100 * PLM), "plm": "100"}
    assert balance["used_credits"]["wei"] == "0"
    assert balance["cost_per_1000_tokens"] == {"wei": str(PLM // 1000), "plm": "0.001"}
    assert balance["pro_tier_minimum"]["plm"] == "100"
    assert balance["last_deposit"] > 0
    assert balance["contract"].lower() == chain.contract.lower() and balance["chain_id"] == 41956
    short_balance = (await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(short))).json()
    assert short_balance["chain_tier"] == "free" and short_balance["balance"]["plm"] == "99"
    assert (await http.get(f"{gw.url}/api/v1/payment/balance")).status_code == 401


async def test_a_cached_tier_is_served_without_asking_the_chain(
    chain: Chain, node: str, start_gateway: Any, http: Any
) -> None:
    user = new_address()
    await chain.deposit(user, 150 * PLM)
    gw = await start_gateway([node], **chain.gateway_settings(tier_cache_seconds=300))
    assert await tier_of(http, gw, user) == "pro"
    await chain.withdraw(user, 100 * PLM)  # below the minimum: free on chain from the next block
    assert [await tier_of(http, gw, user) for _ in range(5)] == ["pro"] * 5  # fresh for 300 s


async def test_a_tier_change_is_picked_up_once_the_cache_expires(
    chain: Chain, node: str, start_gateway: Any, http: Any
) -> None:
    user = new_address()
    gw = await start_gateway([node], **chain.gateway_settings(tier_cache_seconds=0.3))
    assert await tier_of(http, gw, user) == "free"
    await chain.deposit(user, 100 * PLM)

    async def pro() -> bool:
        return await tier_of(http, gw, user) == "pro"

    await eventually(pro)
    await chain.withdraw(user, 1)

    async def free() -> bool:
        return await tier_of(http, gw, user) == "free"

    await eventually(free)


async def test_rpc_down_keeps_the_last_known_tier_and_new_wallets_are_free(
    chain: Chain, node: str, start_gateway: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    known, unseen = new_address(), new_address()
    await chain.deposit(known, 100 * PLM)
    await chain.deposit(unseen, 100 * PLM)
    gw = await start_gateway([node], **chain.gateway_settings(tier_cache_seconds=0.2))
    assert await tier_of(http, gw, known) == "pro"

    caplog.set_level(logging.WARNING, logger="openai_proxy.chain")
    await chain.stop()  # the RPC is gone mid-run
    for _ in range(5):  # well past the cache's freshness: every request still gets the last known tier
        assert await tier_of(http, gw, known) == "pro"
        assert (await chat(http, gw, known, PRO_MODEL)).status_code == 200
    assert await tier_of(http, gw, unseen) == "free"  # never seen, chain down: free, not a 500
    assert (await chat(http, gw, unseen)).status_code == 200
    assert any("tier lookup on chain failed" in r.getMessage() for r in caplog.records)
    down = await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(known))
    assert down.status_code == 503 and down.json()["error"]["code"] == "chain_unavailable"

    await chain.start()  # same port, same state

    async def unseen_is_pro() -> bool:
        return await tier_of(http, gw, unseen) == "pro"

    await eventually(unseen_is_pro)
    assert await tier_of(http, gw, known) == "pro"


async def test_the_gateway_starts_and_serves_with_no_chain(node: str, start_gateway: Any, http: Any) -> None:
    wallet = new_address()
    off = await start_gateway([node])  # default settings: no CHAIN_RPC_URL, so the chain is off
    assert (await chat(http, off, wallet)).status_code == 200
    disabled = await http.get(f"{off.url}/api/v1/payment/balance", headers=off.headers(wallet))
    assert disabled.status_code == 404 and disabled.json()["error"]["code"] == "chain_disabled"

    nothing_there = f"http://127.0.0.1:{free_port()}"
    unreachable = await start_gateway([node], chain_rpc_url=nothing_there, chain_rpc_timeout=0.5,
                                      gateway_private_key="0x" + "11" * 32, credits_flush_interval=0.05)
    assert unreachable.settings.chain_on
    assert await tier_of(http, unreachable, wallet) == "free"
    assert (await chat(http, unreachable, wallet)).status_code == 200
    assert (await http.get(f"{unreachable.url}/health")).status_code == 200


async def test_a_slow_rpc_answers_unseen_wallets_free_and_keeps_the_last_known_tier(
    chain: Chain, node: str, start_gateway: Any, http: Any, stack: AsyncExitStack
) -> None:
    """CHAIN_RPC_URL accepts connections and never answers: requests end anyway (CHAIN_RPC_TIMEOUT bounds
    every call), the wallet known as pro stays pro, a wallet never seen is free, and nothing is a 500."""
    known, unseen = new_address(), new_address()
    await chain.deposit(known, 100 * PLM)
    await chain.deposit(unseen, 100 * PLM)  # pro on chain: "free" below can only be the fallback
    rpc = await stack.enter_async_context(stalling_rpc(upstream=chain.port))
    gw = await start_gateway([node], **chain.gateway_settings(
        chain_rpc_url=rpc.url, chain_rpc_timeout=1.0, tier_cache_seconds=0.2))
    assert await tier_of(http, gw, known) == "pro"  # learnt from the chain, through the relay
    before = await chain_metrics(http, gw.url)

    rpc.stall()
    async with asyncio.timeout(HANG_GUARD):
        assert await tier_of(http, gw, unseen) == "free"
        for _ in range(3):  # stale after 0.2 s: refreshed in the background, never waited for
            assert await tier_of(http, gw, known) == "pro"
        assert (await chat(http, gw, known, PRO_MODEL)).status_code == 200
        assert (await chat(http, gw, unseen)).status_code == 200
        refused = await chat(http, gw, unseen, PRO_MODEL)
        slow = await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(known))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tier_required"
    assert slow.status_code == 503 and slow.json()["error"]["code"] == "chain_unavailable"
    assert rpc.unanswered > 0  # the gateway did ask, and got nothing back

    async def counted() -> bool:
        now = await chain_metrics(http, gw.url)
        return all(now[f"openai_proxy_chain_{name}_total"] > before[f"openai_proxy_chain_{name}_total"]
                   for name in ("rpc_failures", "tier_lookup_failures", "tier_fallback_free"))

    await eventually(counted, within=HANG_GUARD)


async def test_replicas_share_the_tier_cache_through_redis(
    chain: Chain, node: str, start_gateway: Any, http: Any, stack: AsyncExitStack
) -> None:
    """Two gateways on one Redis (db 8, a prefix of this test's own): A learns a wallet is pro from the chain;
    with the chain gone, B, which never looked that wallet up, answers pro from the shared cache."""
    user, nobody = new_address(), new_address()
    await chain.deposit(user, 100 * PLM)
    shared = await stack.enter_async_context(redis_db8())
    a = await start_gateway([node], **shared, **chain.gateway_settings())
    b = await start_gateway([node], **shared, **chain.gateway_settings())
    assert await tier_of(http, a, user) == "pro"

    await chain.stop()
    assert await tier_of(http, b, user) == "pro"
    assert (await chat(http, b, user, PRO_MODEL)).status_code == 200
    assert await tier_of(http, b, nobody) == "free"  # what nobody knows stays free while the chain is down
    seen_by_b = await chain_metrics(http, b.url)
    assert seen_by_b["openai_proxy_chain_tier_lookups_total"] == 0  # B never read a tier from the chain
    assert seen_by_b["openai_proxy_chain_tier_fallback_free_total"] == 1  # nobody's, not the user's
