"""Dockerfile, docker-compose.yml and Makefile, checked without a Docker engine (none runs on this machine).

The image is not built here. What can be checked is: the Dockerfile's key lines, the compose file's shape and
wiring, that the commands both files run actually work (the health checks against live servers, the
devnode command line), and that every Make target expands to the command it promises.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO, eventually
from .serve_support import clean_env, free_port

DOCKERFILE = (REPO / "Dockerfile").read_text()
INSTRUCTIONS = [line for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in INSTRUCTIONS if line.split(None, 1)[0] == name]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return document


def test_dockerfile_is_slim_non_root_and_runtime_only() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    installs = [run for run in instruction("RUN") if "pip install" in run]
    assert installs == ["pip install /tmp/src && rm -rf /tmp/src"]  # `.` copied to /tmp/src: no [test] extra
    user = instruction("USER")
    assert user == ["gateway"]
    order = [line.split(None, 1)[0] for line in INSTRUCTIONS]
    assert order.index("USER") > max(i for i, name in enumerate(order) if name == "RUN")  # nothing runs as root after
    assert instruction("CMD") == ['["openai-proxy", "serve"]']
    assert instruction("EXPOSE") == ["3200"]
    assert any("TIKTOKEN_CACHE_DIR=/opt/tiktoken-cache" in env for env in instruction("ENV"))
    assert "docker/tiktoken-cache/ /opt/tiktoken-cache/" in instruction("COPY")
    assert (REPO / "docker" / "tiktoken-cache" / "README.md").exists()  # the COPY source always exists


def test_dockerignore_keeps_secrets_and_tests_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {".env", ".git", "tests", "compat_tests", "**/node_modules"} <= set(ignored)
    for needed in ("pyproject.toml", "README.md", "openai_proxy", "docker"):
        assert needed not in ignored


async def run_python(code: str, env: dict[str, str]) -> int:
    """Run `python -c code` without blocking this event loop (the servers under test live in it)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=env,
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await process.wait()


def healthcheck_command() -> list[str]:
    (line,) = instruction("HEALTHCHECK")
    command: list[str] = json.loads(line.split("CMD", 1)[1])
    return command


async def test_the_image_health_check_passes_on_a_live_gateway_only(start_devnode, start_gateway) -> None:  # type: ignore[no-untyped-def]
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and "/health" in command[2]
    node = await start_devnode()
    gateway = await start_gateway([node.url])
    port = gateway.url.rsplit(":", 1)[1]
    assert await run_python(command[2], clean_env(PORT=port)) == 0
    assert await run_python(command[2], clean_env(PORT=str(free_port()))) != 0  # nothing listens there


def test_compose_runs_the_gateway_with_redis_and_two_devnodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"gateway", "redis", "devnode-1", "devnode-2"}
    gateway = services["gateway"]
    assert gateway["build"] == "." and gateway["command"][:2] == ["openai-proxy", "serve"]
    env = gateway["environment"]
    assert env["JWT_SECRET"].startswith("${JWT_SECRET:?")  # required, never a default secret
    assert env["REDIS_URL"].startswith("redis://redis:6379/")  # several workers need it
    assert env["NODE_URLS"].split(",") == ["http://devnode-1:8090", "http://devnode-2:8090"]
    assert {name: dep["condition"] for name, dep in gateway["depends_on"].items()} == {
        "redis": "service_healthy", "devnode-1": "service_healthy", "devnode-2": "service_healthy"}
    assert int(gateway["stop_grace_period"].rstrip("s")) > 30  # longer than SHUTDOWN_GRACE_SECONDS
    addresses = {services[name]["command"][services[name]["command"].index("--address") + 1]
                 for name in ("devnode-1", "devnode-2")}
    assert len(addresses) == 2  # one pool entry per node address: two devnodes need two addresses


async def test_the_compose_devnode_command_and_health_check_work(compose: dict[str, Any], tmp_path: Path) -> None:
    devnode = compose["services"]["devnode-1"]
    port = str(free_port())
    command = [port if part == "8090" else "127.0.0.1" if part == "0.0.0.0" else part for part in devnode["command"]]
    assert command[0] == "openai-proxy"
    check = devnode["healthcheck"]["test"]
    probe = check[3].replace(":8090/", f":{port}/")
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; polled below, never waited on
        [sys.executable, "-m", "openai_proxy", *command[1:]], cwd=tmp_path, env=clean_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async def healthy() -> bool:
            assert process.poll() is None
            return await run_python(probe, clean_env()) == 0

        await eventually(healthy, within=60)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is installed by .ci/services")
@pytest.mark.parametrize(("target", "expected"), [
    ("build", "-m pip wheel --no-deps --wheel-dir dist ."),
    ("start", "openai-proxy serve"),
    ("start-dev", "-m uvicorn openai_proxy.asgi:create_app --factory --reload"),
    ("docker-build", "docker build -t openai-proxy ."),
    ("docker-up", "docker compose up -d --build"),
    ("docker-logs", "docker compose logs -f gateway"),
    ("docker-down", "docker compose down"),
    ("test", "-m pytest -q"),
    ("lint", "ruff check openai_proxy tests compat_tests examples bench\nmypy"),
    ("format", "ruff format openai_proxy tests compat_tests examples bench"),
])
def test_make_targets_mirror_the_original_npm_scripts(target: str, expected: str) -> None:
    result = subprocess.run(["make", "-n", "-s", target], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert all(shlex.split(line) for line in result.stdout.splitlines())  # well-formed shell
