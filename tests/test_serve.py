"""`serve --workers N` refuses to run without shared state, and the ASGI factory serves as uvicorn runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import JWT_SECRET, eventually
from .serve_support import clean_env, free_port


def test_several_workers_without_redis_refuse_to_start(tmp_path: Path) -> None:
    env = clean_env(JWT_SECRET=JWT_SECRET, NODE_URLS="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-m", "openai_proxy", "serve", "--workers", "2"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr and "worker" in result.stderr


async def test_the_asgi_factory_builds_the_app_from_the_environment(start_devnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    port = free_port()
    env = clean_env(JWT_SECRET=JWT_SECRET, NODE_URLS=node.url)
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as sink:  # what `make start-dev` runs, minus --reload
        process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; polled below, never waited on
            [sys.executable, "-m", "uvicorn", "openai_proxy.asgi:create_app", "--factory", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=sink, stderr=sink)
    try:
        async def ready() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, within=60)
    finally:
        process.terminate()
        process.wait(timeout=30)
    entries = [json.loads(line) for line in log.read_text().splitlines()]  # the factory set up JSON logs
    assert "Application startup complete." in [entry["msg"] for entry in entries]
