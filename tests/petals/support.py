"""Process groups, a loopback-only network namespace and bounded waits, for the live-swarm tests."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
MADDR = re.compile(r"/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+")


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it: network namespaces are per thread) into the namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


class Netns:
    """A network namespace with only loopback up, plus one test thread that lives inside it.

    Every socket that thread opens (the openai SDK's, httpx's, websockets') is on the namespace's 127.0.0.1,
    where the swarm, the petals-nodes and the gateway listen; the rest of the test process stays outside.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        _run(["ip", "netns", "add", name], f"cannot create the network namespace {name}")
        try:
            _run(["ip", "-n", name, "link", "set", "lo", "up"], f"cannot bring up loopback in {name}")
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{name}", initializer=_enter_netns,
                                              initargs=(name,))
            self.run(lambda: None)  # fail here if the thread could not enter
        except BaseException:
            subprocess.run(["ip", "netns", "delete", name], check=False)
            raise

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, function: Callable[..., T], *args: Any, timeout: float = 180.0) -> T:
        """Run `function(*args)` on the thread inside the namespace and return its result."""
        return self._thread.submit(function, *args).result(timeout=timeout)

    def socket_files(self) -> set[Path]:
        """The hivemind socket files bound by live processes of this namespace (Unix sockets belong to the
        namespace they were made in: /proc/thread-self/net/unix lists ours, never a concurrent run's)."""
        return self.run(_hivemind_sockets_bound_here)

    def delete(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


def _run(argv: list[str], problem: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        # The swarm must never run on the host network (petals-local-swarm.md, error 12): fail, never skip.
        pytest.fail(f"{problem}: {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}",
                    pytrace=False)


@dataclass
class Proc:
    """A process started in a session (and so a process group) of its own, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL after `grace` seconds; then SIGKILL again for stragglers."""
        self.signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=30)


@dataclass
class Processes:
    """Everything one fixture started; `stop_all` ends them in reverse order."""

    logs: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def wait_for(check: Callable[[], T | None], what: str, timeout: float, watch: tuple[Proc, ...] = ()) -> T:
    """Poll `check` until it returns a value; fail (with the logs) if a watched process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        for proc in watch:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.tail()}",
                            pytrace=False)
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in watch)
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{logs}", pytrace=False)
        time.sleep(0.1)  # the polling interval of a bounded wait, not a wait for an event


def _hivemind_sockets_bound_here() -> set[Path]:
    """p2pd's socket files: hivemind hard-codes /tmp and leaves them behind (petals-local-swarm.md, step 5)."""
    lines = Path("/proc/thread-self/net/unix").read_text().splitlines()[1:]
    paths = {Path(line.split()[-1]) for line in lines if len(line.split()) == 8}
    return {path for path in paths if path.parent == Path("/tmp") and path.name.startswith("hivemind-")}
