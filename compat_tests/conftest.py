"""Real processes on loopback for the client-compatibility suite.

Session fixtures start three devnodes (`openai-proxy devnode`) and a gateway (`openai-proxy serve`) that reaches
them over three different node protocols (`gateway`), plus, on demand, `dead_gateway`, whose only node URL is a
closed port (no healthy node: the 503 path), and `dying_gateway`, whose only node drops every answer after three
tokens (a failure after HTTP 200). All gateways share one JWT_SECRET; the free and pro wallet keys are minted once
with `openai-proxy token`, exactly as a user would. Child output goes to log files in a session temp folder and
is quoted when a process fails to start. Every test talks to a gateway with a real client over real HTTP.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .support import FREE_MODEL, Gateway, clean_env

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
STOP_TIMEOUT = 10.0


def openai_proxy_exe() -> str:
    exe = shutil.which("openai-proxy")
    if exe is None:
        raise RuntimeError("the `openai-proxy` console script is not on PATH: activate /work/venv first")
    return exe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def random_wallet() -> str:
    return "0x" + secrets.token_hex(20)


@dataclass
class Process:
    """A child process whose output goes to a log file (never a pipe nobody reads)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=STOP_TIMEOUT)


@dataclass
class Launcher:
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Process:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [openai_proxy_exe(), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,  # no stray .env from the checkout
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def wait_until_http_ok(process: Process, url: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it exits or the time runs out."""
    attempts = int(timeout / POLL_INTERVAL)
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        for _ in range(attempts):
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            try:
                # Doubles as the pause between polls and as the check that the process is still alive.
                code = process.popen.wait(timeout=POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"{process.name} exited with code {code} before {url} was ready:\n{process.log_tail()}")
    pytest.fail(f"{process.name}: {url} not ready after {timeout:g} s ({last}):\n{process.log_tail()}")


def mint_tokens(env: dict[str, str], addresses: list[str], workdir: Path) -> list[str]:
    """Run `openai-proxy token --address A` for every address (in parallel) and return the JWTs."""
    runs = [
        subprocess.Popen(
            [openai_proxy_exe(), "token", "--address", address],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=workdir,
        )
        for address in addresses
    ]
    tokens = []
    for address, run in zip(addresses, runs, strict=True):
        out, err = run.communicate(timeout=READY_TIMEOUT)
        if run.returncode != 0:
            pytest.fail(f"openai-proxy token --address {address} failed ({run.returncode}): {err.decode()}")
        token = out.decode().strip()
        assert token.count(".") == 2, f"not a JWT: {token!r}"
        tokens.append(token)
    return tokens


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("compat-processes"))
    try:
        yield launcher
    finally:
        launcher.stop_all()


def start_devnodes(launcher: Launcher, count: int, *extra: str) -> list[int]:
    """Start `count` devnodes (in parallel) and return their ports once every one answers /health."""
    ports = [free_port() for _ in range(count)]
    args = ["--token-delay", "0.002", *extra]
    devnodes = [
        launcher.start(f"devnode-{port}", ["devnode", "--port", str(port), *args], clean_env()) for port in ports
    ]
    for devnode, port in zip(devnodes, ports, strict=True):
        wait_until_http_ok(devnode, f"http://127.0.0.1:{port}/health")
    return ports


@dataclass(frozen=True)
class Keys:
    """One JWT secret for every gateway of the session, and a key for a free and a pro wallet."""

    jwt_secret: str
    free_wallet: str
    pro_wallet: str
    free_key: str
    pro_key: str


@pytest.fixture(scope="session")
def keys(launcher: Launcher) -> Keys:
    secret, free_wallet, pro_wallet = secrets.token_hex(32), random_wallet(), random_wallet()
    free_key, pro_key = mint_tokens(clean_env(JWT_SECRET=secret), [free_wallet, pro_wallet], launcher.workdir)
    return Keys(secret, free_wallet, pro_wallet, free_key, pro_key)


def start_gateway(
    launcher: Launcher,
    keys: Keys,
    name: str,
    node_urls: tuple[str, ...],
    *,
    ready_path: str = "/ready",
    **env_extra: str,
) -> tuple[Gateway, Process]:
    """`openai-proxy serve` over `node_urls`; `keys.pro_wallet` is in PRO_ADDRESSES."""
    port = free_port()
    env = clean_env(
        JWT_SECRET=keys.jwt_secret,
        NODE_URLS=",".join(node_urls),
        FREE_TIER_LIMIT="100000",
        PRO_ADDRESSES=keys.pro_wallet,
        LOG_LEVEL="warning",
        **env_extra,
    )
    server = launcher.start(name, ["serve", "--host", "127.0.0.1", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    wait_until_http_ok(server, url + ready_path)
    gateway = Gateway(url, keys.free_key, keys.pro_key, keys.free_wallet, keys.pro_wallet, node_urls)
    return gateway, server


@pytest.fixture(scope="session")
def gateway(launcher: Launcher, keys: Keys) -> Gateway:
    """A gateway over three devnodes, one per node protocol family (Plumise JSON, Petals WS, OpenAI)."""
    ports = start_devnodes(launcher, 3)
    node_urls = (
        f"http://127.0.0.1:{ports[0]}",
        f"petals+ws://127.0.0.1:{ports[1]}",
        f"openai+http://127.0.0.1:{ports[2]}",
    )
    gateway, server = start_gateway(launcher, keys, "gateway", node_urls)
    wait_until_all_nodes_healthy(server, gateway.url)
    return gateway


def wait_until_all_nodes_healthy(process: Process, url: str, timeout: float = READY_TIMEOUT) -> None:
    """/ready is 200 once one node is healthy; the tests want all three in rotation."""
    with httpx.Client(timeout=2.0) as client:
        for _ in range(int(timeout / POLL_INTERVAL)):
            healthy = client.get(f"{url}/ready").json()["healthy_nodes"]
            if healthy.get(FREE_MODEL) == 3:
                return
            try:
                code = process.popen.wait(timeout=POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"gateway exited with code {code}:\n{process.log_tail()}")
    pytest.fail(f"not all three devnodes became healthy in {timeout:g} s:\n{process.log_tail()}")


@pytest.fixture(scope="session")
def dead_gateway(launcher: Launcher, keys: Keys) -> Gateway:
    """A gateway whose only node URL is a closed port: every model has no healthy node (503)."""
    node_urls = (f"http://127.0.0.1:{free_port()}",)
    # /ready is 503 by design here, so wait for liveness only.
    gateway, _ = start_gateway(
        launcher, keys, "dead-gateway", node_urls, ready_path="/health", NODE_CONNECT_TIMEOUT="1"
    )
    return gateway


@pytest.fixture(scope="session")
def dying_gateway(launcher: Launcher, keys: Keys) -> Gateway:
    """A gateway whose only node (Petals WebSocket) drops the connection after 3 tokens of every answer:
    the failure comes after HTTP 200, with no other node to continue on."""
    (port,) = start_devnodes(launcher, 1, "--fault", "die", "--die-after", "3")
    # Many failures allowed before cooldown, so every test sees the mid-stream failure, not a 503.
    node_urls = (f"petals+ws://127.0.0.1:{port}",)
    gateway, _ = start_gateway(launcher, keys, "dying-gateway", node_urls, NODE_MAX_FAILURES="1000")
    return gateway
