"""Fixtures that start real servers on loopback: devnodes and gateways, in this test's event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.types import ASGIApp

from openai_proxy.app import create_app
from openai_proxy.auth.jwt import TokenService
from openai_proxy.devnode import DevnodeConfig, create_devnode_app
from openai_proxy.settings import Settings

from .reliability.hostile import hostile  # noqa: F401  (session fixture: one gateway for the hostile-client suites)
from .reliability.processes import ProcessSet

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken-cache"))

JWT_SECRET = "test-secret-for-the-openai-proxy-suite-0123456789"
FREE_WALLET = "0x1111111111111111111111111111111111111111"
PRO_WALLET = "0x2222222222222222222222222222222222222222"
TEST_REDIS_DB = 14  # tests/test_store.py uses 13; nothing else may touch these


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": SecretStr(JWT_SECRET),
        "pro_addresses": [PRO_WALLET],
        "health_check_interval": 0.2,
        "first_token_timeout": 5.0,
        "token_idle_timeout": 5.0,
        "node_cooldown_seconds": 30.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def mint(settings: Settings, address: str) -> str:
    assert settings.jwt_secret is not None
    service = TokenService(
        settings.jwt_secret.get_secret_value(),
        lifetime=settings.jwt_lifetime_seconds,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    return service.mint(address).token


@asynccontextmanager
async def serve_app(app: ASGIApp, *, lifespan: str = "on") -> AsyncIterator[str]:
    """Run `app` under a real uvicorn on 127.0.0.1 and yield its base URL once it listens."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited before it started")
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Devnode:
    url: str
    config: DevnodeConfig

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    async def counters(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            data: dict[str, Any] = (await client.get(f"{self.url}/control")).json()
        return data


@dataclass
class Gateway:
    url: str
    settings: Settings

    def token(self, address: str = FREE_WALLET) -> str:
        return mint(self.settings, address)

    def headers(self, address: str = FREE_WALLET) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(address)}"}

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exit_stack:
        yield exit_stack


@pytest.fixture
def start_devnode(stack: AsyncExitStack) -> Callable[..., Awaitable[Devnode]]:
    async def start(**config: Any) -> Devnode:
        cfg = DevnodeConfig(**config)
        url = await stack.enter_async_context(serve_app(create_devnode_app(cfg), lifespan="off"))
        return Devnode(url=url, config=cfg)

    return start


@pytest.fixture
def start_gateway(stack: AsyncExitStack) -> Callable[..., Awaitable[Gateway]]:
    async def start(node_urls: list[str], **overrides: Any) -> Gateway:
        settings = make_settings(node_urls=node_urls, **overrides)
        url = await stack.enter_async_context(serve_app(create_app(settings)))
        return Gateway(url=url, settings=settings)

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll `check` until it holds; fail after `within` seconds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(within):
        # Polling is the point: the condition lives in another process, so there is no event to wait on.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def sse_payloads(body: str) -> list[str]:
    """The data payloads of an SSE body, in order (comments skipped)."""
    payloads = []
    for event in body.replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")]
        if lines:
            payloads.append("\n".join(lines))
    return payloads


@pytest.fixture(params=["memory", "redis"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """The state store under test, once per backend: None (memory), or Redis db 12 flushed (tests/auth_support.py:
    the sign-in, key and limit suites that use this fixture own that database)."""
    if request.param == "memory":
        yield None
    else:
        from .auth_support import flushed_redis

        async with flushed_redis() as url:
            yield url


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessSet]:
    """Real child processes (gateways, devnodes, Oracles) for the reliability and security suites, stopped by pid
    after each test."""
    processes = ProcessSet(tmp_path)
    try:
        yield processes
    finally:
        processes.close()
