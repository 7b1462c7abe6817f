"""`openai-proxy serve` as operators run it: a real subprocess on a free loopback port, its logs in a file.

Used by the metrics (several workers), logs and shutdown tests. The environment is cleaned of every gateway
setting the developer's shell may carry; the nodes are devnodes the test runs in its own event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from openai_proxy.settings import Settings

from .conftest import FREE_WALLET, JWT_SECRET, PRO_WALLET, eventually, make_settings, mint
from .redis_db import flushed_db, redis_url

REDIS_DB = 9  # the operator-feature tests (metrics across workers, shutdown with workers) own db 9
REDIS_URL = redis_url(REDIS_DB)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    names = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    env.update(settings)
    return env


@dataclass
class ServedGateway:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def token(self, address: str = FREE_WALLET) -> str:
        return mint(make_settings(), address)

    def headers(self, address: str = FREE_WALLET) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(address)}"}

    def log_text(self) -> str:
        return self.log.read_text()

    def log_entries(self) -> list[dict[str, Any]]:
        """Every log line, parsed: a line that is not one JSON object fails the test here."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exited(self) -> int:
        await eventually(lambda: _done(self.process), within=60)
        code = self.process.returncode
        assert code is not None
        return code

    async def stopped_cleanly(self) -> bool:
        """Exited after a complete shutdown. uvicorn re-raises the SIGTERM it caught once it has shut down,
        so the status of a clean stop is "terminated by SIGTERM" (143 in a shell), as process managers expect."""
        code = await self.exited()
        return code in (0, -signal.SIGTERM) and "Application shutdown complete." in self.log_text()


async def _done(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


@asynccontextmanager
async def serve_gateway(
    directory: Path, node_urls: list[str], *, workers: int = 1, **settings: str
) -> AsyncIterator[ServedGateway]:
    port = free_port()
    env = clean_env(JWT_SECRET=JWT_SECRET, NODE_URLS=",".join(node_urls), HOST="127.0.0.1", PORT=str(port),
                    PRO_ADDRESSES=PRO_WALLET, HEALTH_CHECK_INTERVAL="0.2", **settings)
    log = directory / f"gateway-{port}.log"
    with log.open("wb") as sink:
        # A session of its own, so the workers can be stopped with their parent (by its group id) at the end.
        process = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; the test polls it, never waits
            [sys.executable, "-m", "openai_proxy", "serve", "--workers", str(workers)],
            env=env, cwd=directory, stdout=sink, stderr=sink, start_new_session=True,
        )
    served = ServedGateway(process=process, url=f"http://127.0.0.1:{port}", log=log)
    try:
        await eventually(lambda: _healthy(served), within=60)
        yield served
    finally:
        await _stop(process)


async def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: _done(process), within=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # leftover workers of this gateway, if any
    process.wait(timeout=10)


async def _healthy(served: ServedGateway) -> bool:
    if served.process.poll() is not None:
        raise AssertionError(f"the gateway exited with {served.process.returncode}:\n{served.log_text()}")
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{served.url}/health")).status_code == 200
    except httpx.TransportError:
        return False


def flushed_redis() -> AbstractAsyncContextManager[str]:
    """Redis db 9, empty before and after; yields its URL."""
    return flushed_db(REDIS_DB)
