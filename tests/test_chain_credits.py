"""Pro usage debited on a real local chain (anvil) with useCredits: totals, batching, restarts, nonce and gas
errors. Redis tests use db 8 only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from openai_proxy.app import create_app
from openai_proxy.chain.ledger import DebitLedger
from openai_proxy.store import create_store

from . import chain_support
from .chain_support import PLM, Chain, chain_metrics, new_address, run_chain, selector_call
from .conftest import Gateway, eventually, make_settings, serve_app

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def chain(tmp_path: Path, stack: AsyncExitStack) -> AsyncIterator[Chain]:
    yield await stack.enter_async_context(run_chain(tmp_path / "chain"))


@pytest.fixture
async def node(start_devnode: Any) -> str:
    devnode = await start_devnode()
    return f"petals+ws://{devnode.hostport}"


@pytest.fixture
async def redis_db8(stack: AsyncExitStack) -> AsyncIterator[dict[str, str]]:
    yield await stack.enter_async_context(chain_support.redis_db8())


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


async def test_usage_during_an_rpc_outage_is_debited_once_the_chain_is_back(
    chain: Chain, node: str, start_gateway: Any, http: Any, redis_db8: dict[str, str], stack: AsyncExitStack
) -> None:
    """The chain node is killed mid-run and restarted with its state: requests made meanwhile answer 200
    without waiting for it, their tokens pile up as pending debits, the failures are counted on /metrics,
    and once the node is back every token of every request is debited exactly once."""
    user, newcomer = new_address(), new_address()
    await chain.deposit(user, 150 * PLM)
    await chain.deposit(newcomer, 150 * PLM)
    gw = await start_gateway([node], **redis_db8, **chain.gateway_settings())
    store = create_store(redis_db8["redis_url"], prefix=redis_db8["redis_prefix"])
    stack.push_async_callback(store.close)
    bookkeeping = DebitLedger(store)  # the gateway's own ledger in Redis, read from outside

    used = sum(await asyncio.gather(*(use(http, gw, user) for _ in range(4))))
    before = await chain_metrics(http, gw.url)
    await chain.stop()  # killed mid-run: possibly with a debit just sent, or still pending

    async with asyncio.timeout(60):  # a hang guard: a request that waited for the chain would never end
        during = [await use(http, gw, user, max_tokens=3 + i) for i in range(5)]
        assert await tier_of(http, gw, newcomer) == "free"  # never seen, chain down: free, not a 500
        down = await http.get(f"{gw.url}/api/v1/payment/balance", headers=gw.headers(user))
    used += sum(during)
    assert down.status_code == 503 and down.json()["error"]["code"] == "chain_unavailable"

    async def piled_up() -> bool:  # nothing can leave "pending" while the node is down
        return (await bookkeeping.account(user)).pending >= sum(during)

    await eventually(piled_up)

    async def counted() -> bool:
        now = await chain_metrics(http, gw.url)
        return all(now[f"openai_proxy_chain_{name}_total"] > before[f"openai_proxy_chain_{name}_total"]
                   for name in ("rpc_failures", "debit_round_failures", "tier_lookup_failures",
                                "tier_fallback_free", "debit_tokens_recorded"))

    await eventually(counted)

    await chain.start()  # the same port, and the state anvil dumped when it stopped
    await debited(chain, user, used)
    await eventually(lambda: _settled(http, gw, user))
    for _ in range(3):  # later rounds change nothing: no token was sent twice
        await chain.rpc("evm_mine")
    assert await chain.used_tokens(user) == used and sum(await chain.credit_events(user)) == used
    assert await chain.used_tokens(newcomer) == 0  # free during the outage: not billed

    after = await chain_metrics(http, gw.url)
    assert after["openai_proxy_chain_debit_tokens_recorded_total"] == used
    assert after["openai_proxy_chain_debit_tokens_confirmed_total"] == used
    assert after["openai_proxy_chain_debit_dropped_tokens_total"] == 0


async def tier_of(http: httpx.AsyncClient, gw: Any, address: str) -> str:
    response = await http.get(f"{gw.url}/api/v1/auth/me", headers=gw.headers(address))
    assert response.status_code == 200, response.text
    tier: str = response.json()["tier"]
    return tier


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
