"""Server processes on loopback: start, wait until they answer, read their peak memory, stop.

Each server runs in its own process group (so a stop reaches its workers too) with its output in a log file,
and in an empty working directory (so no `.env` lying around changes its configuration). Peak memory is the
sum of VmHWM over the process and its descendants; `reset_peaks` clears it between scenarios (Linux
`clear_refs` 5) so each scenario reports its own peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .http1 import Connection, ProtocolError, Request
from .load import until_ok

STOP_GRACE = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark dies, so no server outlives a killed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc/*/stat."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Server:
    """One server process we started, and where its output goes."""

    name: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.returncode is None

    def reset_peak(self) -> bool:
        """Clear the kernel's peak-RSS mark of every process in the tree; False if the kernel refused."""
        ok = True
        for pid in process_tree(self.pid):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                ok = False
        return ok

    def peak_rss_mb(self) -> float:
        return sum(_status_kb(pid, "VmHWM") for pid in process_tree(self.pid)) / 1024

    def rss_mb(self) -> float:
        return sum(_status_kb(pid, "VmRSS") for pid in process_tree(self.pid)) / 1024

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                await self.process.wait()


async def start_server(
    name: str, argv: Sequence[str], *, port: int, env: Mapping[str, str], workdir: Path, logdir: Path
) -> Server:
    logdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per server, before it starts
    log_path = logdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env), cwd=workdir, start_new_session=True, preexec_fn=_die_with_parent,
        )
    return Server(name=name, port=port, process=process, log_path=log_path)


async def wait_answering(server: Server, request: Request, limit: float) -> None:
    """Wait until `request` gets a 200 from the server (which also warms it up); raise with its log if not."""
    conn = Connection("127.0.0.1", server.port)

    async def probe() -> bool:
        if not server.alive():
            return True  # nothing to wait for: reported below
        try:
            await conn.fetch(request)
        except ProtocolError:
            return False
        return conn.status == 200

    try:
        ready = await until_ok(probe, limit, interval=0.2)
    finally:
        conn.close()
    if not ready or not server.alive():
        state = "exited" if not server.alive() else f"did not answer 200 (last status {conn.status}) in {limit:g} s"
        raise RuntimeError(f"{server.name} {state}; log {server.log_path}:\n{server.log_tail()}")
