"""Tiers and request limits through a real gateway, over the memory store and Redis (db 12).

Admission is counted atomically when a request starts, so a burst cannot overshoot; failures on the node
side are refunded; pro is unlimited; max_tokens is capped per tier (and by the model); every admitted or
refused generation carries OpenAI's x-ratelimit headers.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, PermissionDeniedError

from .auth_support import OPENAI_DURATION, assert_envelope, new_account
from .conftest import PRO_WALLET, sse_payloads

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
HELLO = [{"role": "user", "content": "Hello there"}]
LIMIT = 5
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


@pytest.fixture
async def node(start_devnode):  # type: ignore[no-untyped-def]
    return await start_devnode()


@pytest.fixture
async def gw(store_url, node, start_gateway):  # type: ignore[no-untyped-def]
    return await start_gateway([f"http://{node.hostport}"], redis_url=store_url, free_tier_limit=LIMIT)


def fresh_wallet() -> str:
    return new_account().address


async def chat(http: httpx.AsyncClient, gw: Any, address: str, **body: Any) -> httpx.Response:
    request = {"model": LLAMA, "messages": HELLO, "max_tokens": 3, **body}
    return await http.post(f"{gw.v1}/chat/completions", json=request, headers=gw.headers(address))


async def me(http: httpx.AsyncClient, gw: Any, address: str) -> dict[str, Any]:
    response = await http.get(f"{gw.url}/api/v1/auth/me", headers=gw.headers(address))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def duration_seconds(text: str) -> float:
    """Seconds in an OpenAI duration (`1h2m3s`, `59m58s`, `950ms`)."""
    assert re.fullmatch(OPENAI_DURATION, text), text
    if text.endswith("ms"):
        return int(text[:-2]) / 1000
    total = 0.0
    for amount, unit in re.findall(r"(\d+)([hms])", text):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def assert_rate_headers(response: httpx.Response, *, limit: int, remaining: int) -> None:
    assert response.headers["x-ratelimit-limit-requests"] == str(limit)
    assert response.headers["x-ratelimit-remaining-requests"] == str(remaining)
    reset = duration_seconds(response.headers["x-ratelimit-reset-requests"])
    assert (reset == 0 if remaining == limit else 0 < reset <= 3600)  # a full quota has nothing to reset


async def test_fifty_concurrent_requests_admit_exactly_the_quota(gw, node, http) -> None:  # type: ignore[no-untyped-def]
    node.config.token_delay = 0.02  # the admitted ones are still running while the rest arrive
    wallet = fresh_wallet()
    responses = await asyncio.gather(*[chat(http, gw, wallet) for _ in range(50)])
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(admitted) == LIMIT and len(refused) == 50 - LIMIT
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted) == list(range(LIMIT))
    for response in admitted:
        assert response.headers["x-ratelimit-limit-requests"] == str(LIMIT)
        assert 3590 < duration_seconds(response.headers["x-ratelimit-reset-requests"]) <= 3600
    for response in refused:
        error = assert_envelope(response, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error"
        assert 3590 < int(response.headers["retry-after"]) <= 3600  # the oldest admitted hit leaves in ~1 h
        assert_rate_headers(response, limit=LIMIT, remaining=0)
    assert (await node.counters())["requests"] == LIMIT  # the refused never reached a node
    account = await me(http, gw, wallet)
    assert account["limits"]["remaining"] == 0 and account["usage_today"]["requests"] == LIMIT
    assert (await chat(http, gw, fresh_wallet())).status_code == 200  # limits are per wallet


async def test_every_generation_response_carries_rate_headers(gw, http) -> None:  # type: ignore[no-untyped-def]
    wallet = fresh_wallet()
    assert_rate_headers(await chat(http, gw, wallet), limit=LIMIT, remaining=4)
    completion = await http.post(f"{gw.v1}/completions", json={"model": LLAMA, "prompt": "Hi", "max_tokens": 2},
                                 headers=gw.headers(wallet))
    assert_rate_headers(completion, limit=LIMIT, remaining=3)
    stream = await chat(http, gw, wallet, stream=True)
    assert sse_payloads(stream.text)[-1] == "[DONE]"
    assert_rate_headers(stream, limit=LIMIT, remaining=2)
    async with AsyncOpenAI(base_url=gw.v1, api_key=gw.token(wallet), max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(model=LLAMA, messages=HELLO, max_tokens=2)
    assert_rate_headers(raw.http_response, limit=LIMIT, remaining=1)
    pro = await chat(http, gw, PRO_WALLET)
    assert {name: pro.headers[name] for name in RATE_HEADERS} == {
        "x-ratelimit-limit-requests": "unlimited", "x-ratelimit-remaining-requests": "unlimited",
        "x-ratelimit-reset-requests": "0s"}


async def test_models_and_refused_requests_carry_rate_headers_without_spending(gw, http) -> None:  # type: ignore[no-untyped-def]
    wallet = fresh_wallet()
    headers = gw.headers(wallet)
    assert_rate_headers(await http.get(f"{gw.v1}/models", headers=headers), limit=LIMIT, remaining=LIMIT)
    assert_rate_headers(await http.get(f"{gw.v1}/models/{LLAMA}", headers=headers), limit=LIMIT, remaining=LIMIT)
    missing = await http.get(f"{gw.v1}/models/no/such-model", headers=headers)
    assert_envelope(missing, 404, "model_not_found")
    assert_rate_headers(missing, limit=LIMIT, remaining=LIMIT)
    invalid = await chat(http, gw, wallet, messages="not a list")
    assert invalid.status_code == 400
    assert_rate_headers(invalid, limit=LIMIT, remaining=LIMIT)  # refused before admission: nothing spent
    assert_rate_headers(await chat(http, gw, wallet), limit=LIMIT, remaining=LIMIT - 1)
    assert_rate_headers(await http.get(f"{gw.v1}/models", headers=headers), limit=LIMIT, remaining=LIMIT - 1)


async def test_a_request_that_fails_on_the_node_side_is_refunded(store_url, node, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    # The node must not sit out a cooldown after the failures we cause: this test is about the quota.
    gw = await start_gateway([f"http://{node.hostport}"], redis_url=store_url, free_tier_limit=LIMIT,
                             node_max_failures=100)
    wallet = fresh_wallet()
    assert_rate_headers(await chat(http, gw, wallet), limit=LIMIT, remaining=4)
    node.config.fault = "fail"
    assert_envelope(await chat(http, gw, wallet), 502)
    assert (await me(http, gw, wallet))["limits"]["remaining"] == 4  # given back
    node.config.fault = "die"
    node.config.die_after = 1
    broken = await chat(http, gw, wallet, stream=True, max_tokens=5)
    assert broken.status_code == 200 and "[DONE]" not in sse_payloads(broken.text)  # failed after the first byte
    assert (await me(http, gw, wallet))["limits"]["remaining"] == 4  # given back too
    node.config.fault = "none"

    assert (await chat(http, gw, wallet)).status_code == 200
    assert (await me(http, gw, wallet))["limits"]["remaining"] == 3


async def test_pro_wallets_are_unlimited(gw, http) -> None:  # type: ignore[no-untyped-def]
    responses = await asyncio.gather(*[chat(http, gw, PRO_WALLET) for _ in range(4 * LIMIT)])
    assert [r.status_code for r in responses] == [200] * (4 * LIMIT)
    account = await me(http, gw, PRO_WALLET)
    assert account["tier"] == "pro" and account["limits"]["requests_per_window"] is None
    assert account["usage_today"]["requests"] == 4 * LIMIT


@pytest.mark.parametrize(("address", "cap"), [("free", 2048), ("pro", 4096)])
async def test_max_tokens_above_the_tier_cap_is_400(gw, node, http, address, cap) -> None:  # type: ignore[no-untyped-def]
    wallet = PRO_WALLET if address == "pro" else fresh_wallet()
    node.config.eos_after = 2  # keep the allowed answers short
    for field in ("max_tokens", "max_completion_tokens"):
        error = assert_envelope(await chat(http, gw, wallet, **{"max_tokens": None, field: cap + 1}), 400)
        assert error["param"] == "max_tokens" and str(cap) in error["message"]
    completion = await http.post(f"{gw.v1}/completions", json={"model": LLAMA, "prompt": "Hi", "max_tokens": cap + 1},
                                 headers=gw.headers(wallet))
    assert assert_envelope(completion, 400)["param"] == "max_tokens"
    allowed = await chat(http, gw, wallet, max_tokens=cap)
    assert allowed.status_code == 200, allowed.text
    if address == "free":
        assert allowed.headers["x-ratelimit-remaining-requests"] == str(LIMIT - 1)  # refusals took no slot


async def test_free_wallet_asking_for_a_pro_model_gets_403(gw, http) -> None:  # type: ignore[no-untyped-def]
    wallet = fresh_wallet()
    error = assert_envelope(await chat(http, gw, wallet, model=PRO_MODEL), 403)
    assert error["type"] == "permission_error" and "pro" in error["message"] and error["param"] == "model"
    async with AsyncOpenAI(base_url=gw.v1, api_key=gw.token(wallet), max_retries=0) as client:
        with pytest.raises(PermissionDeniedError, match="pro"):
            await client.chat.completions.create(model=PRO_MODEL, messages=HELLO, max_tokens=2)
    assert (await me(http, gw, wallet))["limits"]["remaining"] == LIMIT
    assert (await chat(http, gw, PRO_WALLET, model=PRO_MODEL)).status_code == 200


async def test_without_max_tokens_the_tier_cap_bounded_by_the_model_applies(  # type: ignore[no-untyped-def]
    store_url, node, start_gateway, http, tmp_path: Path
) -> None:
    catalogue = {"models": [
        {"id": "test/roomy", "template": "plain", "context_length": 4096, "tier": "free", "max_output_tokens": 4096,
         "created": 0},
        {"id": "test/terse", "template": "plain", "context_length": 4096, "tier": "free", "max_output_tokens": 4,
         "created": 0},
    ]}
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps(catalogue))
    gw = await start_gateway([f"http://{node.hostport}"], redis_url=store_url, models_file=str(models_file),
                             free_tier_max_tokens=7, pro_tier_max_tokens=9)
    cases = [(fresh_wallet(), "test/roomy", 7), (PRO_WALLET, "test/roomy", 9), (fresh_wallet(), "test/terse", 4),
             (PRO_WALLET, "test/terse", 4)]
    for wallet, model, expected in cases:
        response = await chat(http, gw, wallet, model=model, max_tokens=None)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["usage"]["completion_tokens"] == expected, (wallet, model)
        assert body["choices"][0]["finish_reason"] == "length"
    account = await me(http, gw, fresh_wallet())
    assert account["limits"]["max_tokens"] == 7


async def test_usage_per_wallet_per_day_is_in_me(gw, http) -> None:  # type: ignore[no-untyped-def]
    wallet = fresh_wallet()
    first = (await chat(http, gw, wallet, max_tokens=3)).json()["usage"]
    second = (await chat(http, gw, wallet, max_tokens=5, messages=[{"role": "user", "content": "A longer one"}])).json()
    stream = await chat(http, gw, wallet, max_tokens=2, stream=True, stream_options={"include_usage": True})
    third = json.loads(sse_payloads(stream.text)[-2])["usage"]
    usages = [first, second["usage"], third]
    assert [u["completion_tokens"] for u in usages] == [3, 5, 2]
    usage = (await me(http, gw, wallet))["usage_today"]
    assert usage == {"requests": 3, "prompt_tokens": sum(u["prompt_tokens"] for u in usages), "completion_tokens": 10}
    assert (await me(http, gw, fresh_wallet()))["usage_today"]["requests"] == 0  # per wallet
