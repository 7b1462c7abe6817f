"""The console script as users run it: real subprocesses, real ports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from .conftest import JWT_SECRET

CLI = [sys.executable, "-m", "openai_proxy"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus any gateway setting the developer's shell may carry."""
    names = ("JWT_SECRET", "NODE_URLS", "PETALS_API_URL", "ORACLE_API_URL", "REDIS_URL", "PORT", "HOST")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_without_jwt_secret_names_the_variable(tmp_path: Path) -> None:
    result = run_cli(["serve"], clean_env(NODE_URLS="http://127.0.0.1:9"), tmp_path)
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr


def test_serve_without_any_node_source_says_which_to_set(tmp_path: Path) -> None:
    result = run_cli(["serve"], clean_env(JWT_SECRET="s" * 32), tmp_path)
    assert result.returncode == 2
    for name in ("NODE_URLS", "PETALS_API_URL", "ORACLE_API_URL"):
        assert name in result.stderr


def test_serve_without_the_tokenizer_says_how_to_provide_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    # Proxies pointed at a closed port make any download attempt fail at once instead of reaching out.
    env = clean_env(JWT_SECRET="s" * 32, NODE_URLS="http://127.0.0.1:9", TIKTOKEN_CACHE_DIR=str(empty),
                    HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    env.pop("NO_PROXY", None)
    result = run_cli(["serve"], env, tmp_path)
    assert result.returncode == 2
    assert "TIKTOKEN_CACHE_DIR" in result.stderr


def test_settings_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("JWT_SECRET=from-dotenv-secret-0123456789abcdef\n")
    result = run_cli(["token", "--address", "0x" + "ab" * 20], clean_env(), tmp_path)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), "from-dotenv-secret-0123456789abcdef", algorithms=["HS256"],
                        audience="openai-proxy")
    assert claims["address"] == "0x" + "ab" * 20


def test_token_mints_a_verifiable_jwt(tmp_path: Path) -> None:
    address = "0x52908400098527886E0F7030069857D2E4169EE7"
    result = run_cli(["token", "--address", address], clean_env(JWT_SECRET=JWT_SECRET), tmp_path)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), JWT_SECRET, algorithms=["HS256"], audience="openai-proxy")
    assert claims["sub"] == address and claims["address"] == address.lower()
    assert {"iat", "nbf", "exp", "jti", "iss"} <= claims.keys()


def test_token_rejects_a_malformed_address(tmp_path: Path) -> None:
    result = run_cli(["token", "--address", "0x123"], clean_env(JWT_SECRET=JWT_SECRET), tmp_path)
    assert result.returncode == 2 and "openai-proxy:" in result.stderr


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    process = subprocess.Popen([*CLI, "demo", "--port", str(port)], env=clean_env(), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        token = None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                pytest.fail(f"demo exited with {process.returncode}")
            if match := re.search(r"export OPENAI_API_KEY=(\S+)", line):
                token = match.group(1)
        assert token is not None
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
        yield base, token
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout is not None:
            process.stdout.close()


def test_demo_serves_the_printed_token_over_simulated_nodes(demo: tuple[str, str]) -> None:
    base, token = demo
    body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hello!"}]}
    headers = {"Authorization": f"Bearer {token}"}
    answers = {httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30).json()
               ["choices"][0]["finish_reason"] for _ in range(6)}
    assert answers == {"length"}
    ready = httpx.get(f"{base}/ready").json()
    assert all(count == 3 for count in ready["healthy_nodes"].values())
