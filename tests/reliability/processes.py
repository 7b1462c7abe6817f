"""Real processes for the reliability and security suites: `openai-proxy devnode` and `openai-proxy serve`.

Each child writes its output (the gateway's JSON logs) to a file in a temp folder, runs in that folder (so no
stray `.env` from the checkout applies) with an environment stripped of every gateway setting, and is
stopped by its own pid when the `ProcessSet` closes. Faults are real: SIGKILL, SIGTERM, restarts on the same
port. Waiting is always a bounded poll that also notices a child that died.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from openai_proxy.auth.jwt import TokenService
from openai_proxy.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TIKTOKEN_CACHE_DIR = REPO.parent / "shared" / "tiktoken-cache"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE_DIR))  # for `python -m bench.chaos` too


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wallet() -> str:
    return "0x" + secrets.token_hex(20)


def clean_env(**settings: Any) -> dict[str, str]:
    """This process's environment without any gateway setting, plus `settings` (names as Settings fields)."""
    names = {name.upper() for name in Settings.model_fields} | {"PROMETHEUS_MULTIPROC_DIR"}
    env = {key: value for key, value in os.environ.items() if key.upper() not in names}
    env["TIKTOKEN_CACHE_DIR"] = str(TIKTOKEN_CACHE_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        env[name.upper()] = ",".join(value) if isinstance(value, list | tuple) else str(value)
    return env


def exe() -> str:
    found = shutil.which("openai-proxy")
    if found is None:
        raise RuntimeError("the `openai-proxy` console script is not on PATH: activate the virtualenv")
    return found


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def spawn(self) -> None:
        command = self.args if self.args[0] == sys.executable else [exe(), *self.args]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.log_path.parent,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.pid_signal(sig)

    def pid_signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it (the port is free again once this returns)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
        if self.popen is not None:
            self.popen.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    async def wait_ready(self, path: str = "/health", limit: float = READY_TIMEOUT) -> None:
        """Poll `path` until it answers 200; fail with the child's log if it exits or time runs out."""
        deadline = time.monotonic() + limit
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"{self.name} exited before it was ready:\n{self.log()[-3000:]}")
                try:
                    if (await client.get(self.url + path)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(POLL)
        raise RuntimeError(f"{self.name} not ready after {limit:g} s:\n{self.log()[-3000:]}")


@dataclass
class ProcessSet:
    """Every child a test started; `close()` stops them all, each by its own pid."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def devnode(self, *extra: str, port: int | None = None, address: str | None = None) -> Proc:
        port = port or free_port()
        args = ["devnode", "--port", str(port), "--address", address or wallet(), *extra]
        return self._start(f"devnode-{port}", args, clean_env(), port)

    def gateway(self, node_urls: list[str], *, port: int | None = None, **settings: Any) -> Proc:
        port = port or free_port()
        values: dict[str, Any] = {"jwt_secret": JWT_SECRET, "host": "127.0.0.1", "port": port,
                                  "node_urls": node_urls, "log_level": "info"}
        values.update(settings)
        return self._start(f"gateway-{port}", ["serve"], clean_env(**values), port)

    def script(self, path: Path, *args: str, port: int | None = None) -> Proc:
        """A Python script of the test's own (a scripted node), given its port as the first argument."""
        port = port or free_port()
        return self._start(f"{path.stem}-{port}", [sys.executable, str(path), str(port), *args], clean_env(), port)

    def restart(self, proc: Proc) -> None:
        """A fresh process with the same command line and port (after `kill`)."""
        proc.kill()
        proc.spawn()

    def _start(self, name: str, args: list[str], env: dict[str, str], port: int) -> Proc:
        proc = Proc(name, args, env, self.workdir / f"{name}.log", port)
        proc.spawn()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


JWT_SECRET = "reliability-suite-secret-" + "5" * 40


def mint(address: str, secret: str = JWT_SECRET) -> str:
    settings = Settings(_env_file=None, jwt_secret=SecretStr(secret))
    return TokenService(secret, lifetime=settings.jwt_lifetime_seconds, issuer=settings.jwt_issuer,
                        audience=settings.jwt_audience).mint(address).token


def bearer(address: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(address)}"}
