"""Gateway replicas sharing one Redis (db 12): limits, nonces and revocations hold across all of them.

In-process replicas (two uvicorn servers in this event loop, each with its own RedisStore) for most cases,
and two real `openai-proxy serve` processes for the limit case, as the issue asks.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from openai_proxy.settings import Settings

from .auth_support import PUBLIC_URL, assert_envelope, flushed_redis, new_account, request_nonce, sign_text
from .conftest import REPO, Gateway, eventually, make_settings, mint

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    async with flushed_redis() as url:
        yield url


@pytest.fixture
async def replicas(redis_url, start_devnode, start_gateway) -> list[Gateway]:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return [await start_gateway([f"http://{node.hostport}"], redis_url=redis_url, public_url=PUBLIC_URL,
                                free_tier_limit=10) for _ in range(2)]


async def chat(http: httpx.AsyncClient, base_v1: str, token: str) -> httpx.Response:
    body = {"model": LLAMA, "messages": HELLO, "max_tokens": 2}
    return await http.post(f"{base_v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})


async def assert_eleventh_request_refused_everywhere(http: httpx.AsyncClient, v1_urls: list[str], token: str) -> None:
    for i in range(10):
        response = await chat(http, v1_urls[i % 2], token)
        assert response.status_code == 200, response.text
        assert response.headers["x-ratelimit-remaining-requests"] == str(9 - i)  # one window, counted once
    for url in v1_urls:
        refused = await chat(http, url, token)
        assert_envelope(refused, 429, "rate_limit_exceeded")
        assert int(refused.headers["retry-after"]) >= 1


async def test_the_eleventh_request_is_refused_whichever_replica_gets_it(replicas, http) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    token = a.token(new_account().address)
    await assert_eleventh_request_refused_everywhere(http, [a.v1, b.v1], token)
    assert (await chat(http, b.v1, b.token(new_account().address))).status_code == 200  # per wallet


async def test_concurrent_burst_across_replicas_admits_exactly_the_quota(replicas, http) -> None:  # type: ignore[no-untyped-def]
    token = replicas[0].token(new_account().address)
    responses = await asyncio.gather(*[chat(http, replicas[i % 2].v1, token) for i in range(40)])
    assert sorted(r.status_code for r in responses) == [200] * 10 + [429] * 30


async def test_a_nonce_from_one_replica_verifies_on_the_other_exactly_once(replicas, http) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    wallet = new_account()
    issued = await request_nonce(http, a.url, wallet.address)
    body = {"message": issued["siwe_message"], "signature": sign_text(wallet, issued["siwe_message"])}
    accepted = await http.post(f"{b.url}/api/v1/auth/verify", json=body)
    assert accepted.status_code == 200, accepted.text
    for gw in (b, a):
        assert_envelope(await http.post(f"{gw.url}/api/v1/auth/verify", json=body), 401)
    token = accepted.json()["token"]
    assert (await http.get(f"{a.v1}/models", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_a_nonce_raced_on_both_replicas_is_accepted_once(replicas, http) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    for _ in range(5):
        wallet = new_account()
        issued = await request_nonce(http, a.url, wallet.address)
        body = {"address": wallet.address, "signature": sign_text(wallet, issued["message"])}
        results = await asyncio.gather(*[http.post(f"{gw.url}/api/v1/auth/verify", json=body)
                                         for gw in (a, b, a, b)])
        assert sorted(r.status_code for r in results) == [200, 401, 401, 401]


async def test_logout_on_one_replica_revokes_on_the_other(replicas, http) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas
    headers = a.headers(new_account().address)
    assert (await http.post(f"{a.url}/api/v1/auth/logout", headers=headers)).status_code == 200
    assert_envelope(await http.get(f"{b.v1}/models", headers=headers), 401, "token_revoked")


async def test_nonce_limits_are_shared(replicas, http) -> None:  # type: ignore[no-untyped-def]
    address = new_account().address
    for i in range(10):
        await request_nonce(http, replicas[i % 2].url, address)
    for gw in replicas:
        assert_envelope(await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": address}), 429)


# --- two real `openai-proxy serve` processes ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_env(**settings: str) -> dict[str, str]:
    """This environment without any gateway setting the developer's shell may carry, plus `settings`."""
    ours = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in ours}
    env.update(settings)
    return env


async def start_process(stack: AsyncExitStack, env: dict[str, str], port: int, log: Path) -> str:
    """`openai-proxy serve` on `port`, stopped when the stack closes; returns its base URL once /health answers."""
    log_file = stack.enter_context(log.open("wb"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "openai_proxy", "serve", "--host", "127.0.0.1", "--port", str(port),
        env=env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
    )

    async def stop() -> None:
        if process.returncode is None:
            process.terminate()
            async with asyncio.timeout(20):
                await process.wait()

    stack.push_async_callback(stop)
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        if process.returncode is not None:
            output = await asyncio.to_thread(log.read_text)
            pytest.fail(f"gateway exited with {process.returncode}:\n{output[-3000:]}")
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"{url}/health")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(healthy, within=60)
    return url


async def test_two_gateway_processes_share_the_limit(redis_url, start_devnode, http, tmp_path) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    secret = secrets.token_hex(32)
    env = process_env(JWT_SECRET=secret, NODE_URLS=f"http://{node.hostport}", REDIS_URL=redis_url,
                      FREE_TIER_LIMIT="10", FREE_TIER_WINDOW="3600", LOG_LEVEL="warning")
    async with AsyncExitStack() as stack:
        urls = await asyncio.gather(*[start_process(stack, env, free_port(), tmp_path / f"gw{i}.log")
                                      for i in range(2)])
        settings = make_settings(jwt_secret=secret)
        token = mint(settings, new_account().address)
        await assert_eleventh_request_refused_everywhere(http, [f"{url}/v1" for url in urls], token)
        wallet = new_account()  # and a nonce from one process verifies on the other exactly once
        issued = await request_nonce(http, urls[0], wallet.address)
        body = {"address": wallet.address, "signature": sign_text(wallet, issued["message"])}
        assert (await http.post(f"{urls[1]}/api/v1/auth/verify", json=body)).status_code == 200
        assert_envelope(await http.post(f"{urls[0]}/api/v1/auth/verify", json=body), 401)
