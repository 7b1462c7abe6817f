"""Pro usage debited on a real local chain (anvil) with useCredits: totals, batching, restarts, nonce and gas
errors. Redis tests use db 8 only."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from openai_proxy.app import create_app

from .chain_support import PLM, Chain, new_address, run_chain, selector_call
from .conftest import Gateway, eventually, make_settings, serve_app

REDIS_URL = "redis://127.0.0.1:6379/8"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def chain(tmp_path: Path, stack: AsyncExitStack) -> AsyncIterator[Chain]:
    yield await stack.enter_async_context(run_chain(tmp_path / "chain"))


@pytest.fixture
async def node(start_devnode: Any) -> str:
    devnode = await start_devnode()
    return f"petals+ws://{devnode.hostport}"


@pytest.fixture
async def redis_db8() -> AsyncIterator[dict[str, str]]:
    """Redis db 8 under a prefix of this test's own, removed afterwards: concurrent runs of the suite on one
    machine (and so one Redis) cannot see or wipe each other's ledger, as a FLUSHDB would."""
    prefix = f"test-chain-{uuid.uuid4().hex}:"
    yield {"redis_url": REDIS_URL, "redis_prefix": prefix}
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def use(http: httpx.AsyncClient, gw: Any, address: str, max_tokens: int = 5) -> int:
    """One chat completion; the tokens it used (what the gateway must debit)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Hello from {address}"}],
            "max_tokens": max_tokens}
    response = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers(address))
    assert response.status_code == 200, response.text
    total: int = response.json()["usage"]["total_tokens"]
    return total


async def ledger(http: httpx.AsyncClient, gw: Any, address: str) -> dict[str, Any]:
    response = await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(address))
    assert response.status_code == 200, response.text
    pending: dict[str, Any] = response.json()["pending_debit"]
    return pending


async def debited(chain: Chain, address: str, tokens: int) -> None:
    async def done() -> bool:
        return await chain.used_tokens(address) >= tokens

    await eventually(done, within=20)
    assert await chain.used_tokens(address) == tokens
    assert sum(await chain.credit_events(address)) == tokens


async def test_a_burst_of_pro_requests_is_debited_with_exact_totals(
    chain: Chain, node: str, start_gateway: Any, http: Any
) -> None:
    alice, bob, free = new_address(), new_address(), new_address()
    await chain.deposit(alice, 200 * PLM)
    await chain.deposit(bob, 100 * PLM)  # PRO_TIER_MINIMUM exactly
    gw = await start_gateway([node], **chain.gateway_settings())

    alice_tokens = sum(await asyncio.gather(*(use(http, gw, alice, 3 + i % 4) for i in range(12))))
    bob_tokens = sum(await asyncio.gather(*(use(http, gw, bob) for _ in range(5))))
    await use(http, gw, free)
    await use(http, gw, gw.settings.pro_addresses[0])  # pro by PRO_ADDRESSES only: nothing on chain to debit

    await debited(chain, alice, alice_tokens)
    await debited(chain, bob, bob_tokens)
    assert len(await chain.credit_events(alice)) < 12  # batched per user, not one transaction per request
    assert await chain.used_tokens(free) == 0
    assert await chain.used_tokens(gw.settings.pro_addresses[0]) == 0
    await eventually(lambda: _settled(http, gw, alice))  # the receipt is seen a round after it mines
    # Bob deposited exactly PRO_TIER_MINIMUM: his first debit took him below it, so the contract made him free.
    assert (await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(bob))).json()["chain_tier"] == "free"
    balance = (await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(alice))).json()
    assert balance["used_credits"]["wei"] == str(alice_tokens * 10**12)
    assert balance["balance"]["wei"] == str(200 * PLM - alice_tokens * 10**12)


async def test_no_double_debit_across_a_gateway_restart(
    chain: Chain, node: str, http: Any, redis_db8: dict[str, str], stack: AsyncExitStack
) -> None:
    """Gateway A leaves a transaction in flight (mining paused) and more usage pending; gateway B, on the
    same Redis, must finish both, debiting every token exactly once."""
    alice, bob = new_address(), new_address()
    await chain.deposit(alice, 150 * PLM)
    await chain.deposit(bob, 150 * PLM)
    settings = make_settings(node_urls=[node], **redis_db8, **chain.gateway_settings())
    used = {alice: 0, bob: 0}

    async with serve_app(create_app(settings)) as url:
        first = Gateway(url=url, settings=settings)
        used[alice] += await use(http, first, alice)
        await debited(chain, alice, used[alice])
        await eventually(lambda: _settled(http, first, alice))

        await chain.rpc("evm_setAutomine", False)
        used[alice] += await use(http, first, alice)
        await eventually(lambda: _has_in_flight(http, first, alice))
        used[alice] += await use(http, first, alice)  # pending behind the transaction in flight
        used[bob] += await use(http, first, bob)
        await eventually(lambda: _has_in_flight(http, first, bob))
        state = await ledger(http, first, alice)
        assert state["tokens"] > 0 and state["in_flight_tokens"] > 0
    # A is gone; its transactions sit unmined in the node's pool and its bookkeeping in Redis.

    second = Gateway(url=await stack.enter_async_context(serve_app(create_app(settings))), settings=settings)
    await chain.rpc("evm_setAutomine", True)
    await chain.rpc("evm_mine")
    await debited(chain, alice, used[alice])
    await debited(chain, bob, used[bob])

    await eventually(lambda: _settled(http, second, alice))
    await eventually(lambda: _settled(http, second, bob))
    for _ in range(3):  # later rounds keep the totals: nothing is sent again
        await chain.rpc("evm_mine")
    assert await chain.used_tokens(alice) == used[alice] and await chain.used_tokens(bob) == used[bob]


async def _settled(http: httpx.AsyncClient, gw: Any, address: str) -> bool:
    state = await ledger(http, gw, address)
    return bool(state == {"tokens": 0, "in_flight_tokens": 0, "cost": {"wei": "0", "plm": "0"}})


async def _has_in_flight(http: httpx.AsyncClient, gw: Any, address: str) -> bool:
    in_flight: int = (await ledger(http, gw, address))["in_flight_tokens"]
    return in_flight > 0


async def test_a_nonce_taken_out_of_band_is_retried(
    chain: Chain, node: str, start_gateway: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_address()
    await chain.deposit(user, 150 * PLM)
    gw = await start_gateway([node], **chain.gateway_settings())
    tokens = await use(http, gw, user)
    await debited(chain, user, tokens)

    caplog.set_level(logging.WARNING, logger="openai_proxy.chain")
    # The operator spends from the gateway's key elsewhere: the nonce the gateway counted on is gone.
    await chain.send(chain.gateway, chain.gateway)
    tokens += await use(http, gw, user)
    await debited(chain, user, tokens)
    assert any("refused" in r.getMessage() and "nonce" in r.getMessage() for r in caplog.records)


async def test_a_gateway_without_gas_money_retries_until_funded(
    chain: Chain, node: str, start_gateway: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user = new_address()
    await chain.deposit(user, 150 * PLM)
    await chain.fund(chain.gateway, 0)
    caplog.set_level(logging.WARNING, logger="openai_proxy.chain")
    gw = await start_gateway([node], **chain.gateway_settings())
    tokens = await use(http, gw, user)

    async def refused() -> bool:
        return any("refused" in r.getMessage() or "deferred" in r.getMessage() for r in caplog.records)

    await eventually(refused)
    assert await chain.used_tokens(user) == 0
    assert (await ledger(http, gw, user))["tokens"] == tokens  # kept, not lost
    await chain.fund(chain.gateway, PLM)
    await debited(chain, user, tokens)


async def test_a_transaction_stuck_under_a_base_fee_spike_is_replaced(
    chain: Chain, node: str, start_gateway: Any, http: Any
) -> None:
    user = new_address()
    await chain.deposit(user, 150 * PLM)
    await chain.rpc("evm_setAutomine", False)
    gw = await start_gateway([node], **chain.gateway_settings())
    tokens = await use(http, gw, user)
    await eventually(lambda: _has_in_flight(http, gw, user))
    spike = hex(1000 * 10**9)  # the base fee jumps from about 1 gwei to 1000 gwei, and stays there

    async def mine_at_spike() -> None:
        await chain.rpc("anvil_setNextBlockBaseFeePerGas", spike)
        await chain.rpc("evm_mine")

    await mine_at_spike()
    assert await chain.used_tokens(user) == 0  # its max fee no longer covers a block, and never will

    async def mined() -> bool:
        await mine_at_spike()
        return await chain.used_tokens(user) > 0

    await eventually(mined, within=20)
    assert await chain.used_tokens(user) == tokens
    assert sum(await chain.credit_events(user)) == tokens


async def test_debits_wait_while_the_key_is_not_the_contracts_gateway(
    chain: Chain, node: str, start_gateway: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    user, someone_else = new_address(), new_address()
    await chain.deposit(user, 150 * PLM)
    set_gateway = selector_call("setGateway(address)", ["address"], [someone_else])
    await chain.send(chain.owner, chain.contract, set_gateway)
    caplog.set_level(logging.ERROR, logger="openai_proxy.chain")
    gw = await start_gateway([node], **chain.gateway_settings())
    tokens = await use(http, gw, user)

    async def on_hold() -> bool:
        return any("on hold" in r.getMessage() for r in caplog.records)

    await eventually(on_hold)
    assert (await ledger(http, gw, user))["tokens"] == tokens and await chain.used_tokens(user) == 0
    await chain.send(chain.owner, chain.contract, selector_call("setGateway(address)", ["address"], [chain.gateway]))
    await debited(chain, user, tokens)
