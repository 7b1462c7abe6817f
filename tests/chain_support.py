"""A real local EVM chain for the tests: anvil (from npm, tests/chain/) with our InferencePayment-compatible
contract (tests/chain/InferencePayment.sol) compiled by solc-js at set-up and deployed at test start.

Accounts: anvil's first default account deploys the contract (it is its owner); the gateway signs with a
fresh random key that the test funds; users are fresh random addresses that act through anvil's
auto-impersonation (`eth_sendTransaction` from any address), so the tests never hold user keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from eth_abi.abi import decode, encode
from eth_account import Account
from eth_utils.crypto import keccak
from prometheus_client.parser import text_string_to_metric_families

from .conftest import eventually

CHAIN_DIR = Path(__file__).resolve().parent / "chain"
ANVIL = CHAIN_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
CHAIN_ID = 41956
PLM = 10**18
COST_PER_TOKEN_WEI = 10**15 // 1000  # the contract's default: 0.001 PLM per 1000 tokens
CREDIT_USED = "0x" + keccak(text="CreditUsed(address,uint256,uint256)").hex()
REDIS_URL = "redis://127.0.0.1:6379/8"  # the chain tests own db 8, and only their own prefix in it


@functools.cache
def compiled() -> dict[str, Any]:
    """The contract's ABI and bytecode, compiled from source by solc-js. The output is cached under
    node_modules (which `npm ci` recreates) by a hash of everything that goes into it."""
    if not ANVIL.exists():
        raise RuntimeError("tests/chain/node_modules is missing: run `bash .ci/services` (npm ci in tests/chain)")
    inputs = [CHAIN_DIR / name for name in ("InferencePayment.sol", "compile.js", "package-lock.json")]
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in inputs)).hexdigest()[:16]
    cache = CHAIN_DIR / "node_modules" / ".cache" / f"InferencePayment-{digest}.json"
    if not cache.exists():
        out = subprocess.run(["node", str(CHAIN_DIR / "compile.js")], capture_output=True, check=True, timeout=300)
        cache.parent.mkdir(exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(out.stdout)
        partial.replace(cache)  # atomic: a concurrent run never reads half a file
    result: dict[str, Any] = json.loads(cache.read_bytes())
    return result


def selector_call(signature: str, types: list[str] | None = None, args: list[Any] | None = None) -> str:
    return "0x" + (keccak(text=signature)[:4] + encode(types or [], args or [])).hex()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_address() -> str:
    return str(Account.create().address)


@dataclass
class Chain:
    """One anvil process (restartable on the same port, with its state) and the deployed contract."""

    workdir: Path
    port: int
    http: httpx.AsyncClient
    process: asyncio.subprocess.Process | None = None
    contract: str = ""
    owner: str = ""
    gateway_key: str = ""
    gateway: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def rpc(self, method: str, *params: Any) -> Any:
        body = (await self.http.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                                     "params": list(params)})).json()
        if "error" in body:
            raise RuntimeError(f"{method}: {body['error']}")
        return body["result"]

    async def start(self) -> None:
        state = self.workdir / "anvil-state.json"
        args = [str(ANVIL), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(CHAIN_ID),
                "--dump-state", str(state)]
        if state.exists():
            args += ["--load-state", str(state)]
        log = (self.workdir / "anvil.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        async with asyncio.timeout(20):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"anvil exited: see {self.workdir / 'anvil.log'}")
                try:
                    if int(await self.rpc("eth_chainId"), 16) == CHAIN_ID:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.02)
        await self.rpc("anvil_autoImpersonateAccount", True)

    async def stop(self) -> None:
        """Stop anvil (SIGTERM: it writes its state for the next `start`)."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()
        self.process = None

    async def send(self, sender: str, to: str | None, data: str = "0x", value: int = 0) -> dict[str, Any]:
        tx: dict[str, Any] = {"from": sender, "data": data, "value": hex(value)}
        if to is not None:
            tx["to"] = to
        return await self.receipt(await self.rpc("eth_sendTransaction", tx))

    async def receipt(self, tx_hash: str) -> dict[str, Any]:
        """The receipt of a successful transaction, once mined (anvil may mine just after answering)."""
        found: list[dict[str, Any]] = []

        async def mined() -> bool:
            receipt = await self.rpc("eth_getTransactionReceipt", tx_hash)
            found[:] = [] if receipt is None else [receipt]
            return bool(found)

        await eventually(mined)
        if int(found[0]["status"], 16) != 1:
            raise RuntimeError(f"transaction reverted: {found[0]}")
        return found[0]

    async def deploy(self) -> None:
        self.owner = (await self.rpc("eth_accounts"))[0]
        account = Account.create()
        self.gateway_key, self.gateway = account.key.hex(), str(account.address)
        await self.fund(self.gateway, 10 * PLM)
        treasury = new_address()
        code = compiled()["bytecode"] + encode(["address", "address"], [self.gateway, treasury]).hex()
        self.contract = (await self.send(self.owner, None, code))["contractAddress"]

    async def fund(self, address: str, wei: int) -> None:
        await self.rpc("anvil_setBalance", address, hex(wei))

    async def deposit(self, user: str, wei: int) -> None:
        await self.fund(user, wei + PLM)
        await self.send(user, self.contract, selector_call("deposit()"), value=wei)

    async def withdraw(self, user: str, wei: int) -> None:
        await self.send(user, self.contract, selector_call("withdraw(uint256)", ["uint256"], [wei]))

    async def credit(self, user: str) -> tuple[int, int, int, int]:
        raw = await self.rpc("eth_call", {"to": self.contract, "data": selector_call(
            "getUserCredit(address)", ["address"], [user])}, "latest")
        values: tuple[int, int, int, int] = decode(["(uint256,uint256,uint256,uint256)"], bytes.fromhex(raw[2:]))[0]
        return values

    async def used_tokens(self, user: str) -> int:
        """Tokens debited so far: usedCredits in wei over the cost of one token."""
        return (await self.credit(user))[1] // COST_PER_TOKEN_WEI

    async def credit_events(self, user: str) -> list[int]:
        """Token counts of every CreditUsed event for `user`, in order."""
        topic = "0x" + encode(["address"], [user]).hex()
        logs = await self.rpc("eth_getLogs", {"address": self.contract, "fromBlock": "0x0", "toBlock": "latest",
                                              "topics": [CREDIT_USED, topic]})
        return [decode(["uint256", "uint256"], bytes.fromhex(log["data"][2:]))[0] for log in logs]

    def gateway_settings(self, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            "chain_enabled": True,
            "chain_rpc_url": self.url,
            "inference_payment_address": self.contract,
            "gateway_private_key": self.gateway_key,
            "chain_rpc_timeout": 2.0,
            "credits_flush_interval": 0.2,
        }
        values.update(overrides)
        return values


@asynccontextmanager
async def run_chain(workdir: Path) -> AsyncIterator[Chain]:
    """A fresh anvil with the contract deployed; stopped (and its process reaped) on exit."""
    compiled()
    os.makedirs(workdir, exist_ok=True)
    async with httpx.AsyncClient(timeout=10) as http:
        chain = Chain(workdir=workdir, port=free_port(), http=http)
        await chain.start()
        try:
            await chain.deploy()
            yield chain
        finally:
            await chain.stop()


@asynccontextmanager
async def redis_db8() -> AsyncIterator[dict[str, str]]:
    """Gateway settings for Redis db 8 under a prefix of this test's own, whose keys are removed afterwards:
    concurrent runs of the suite on one machine (and so one Redis) cannot see or wipe each other's state."""
    prefix = f"test-chain-{uuid.uuid4().hex}:"
    try:
        yield {"redis_url": REDIS_URL, "redis_prefix": prefix}
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def chain_metrics(http: httpx.AsyncClient, base_url: str) -> dict[str, float]:
    """The gateway's `openai_proxy_chain_*` counters from GET /metrics, by sample name (`..._total`)."""
    response = await http.get(f"{base_url}/metrics")
    assert response.status_code == 200, response.text
    return {sample.name: sample.value for family in text_string_to_metric_families(response.text)
            for sample in family.samples if sample.name.startswith("openai_proxy_chain_")}


class StallingRpc:
    """A loopback TCP endpoint to use as CHAIN_RPC_URL: it relays to anvil at `upstream` (if given) until
    `stall()`, and from then on accepts connections and reads what is sent but never answers a byte, on new
    connections and on those already open: a chain node that is up but hopelessly slow."""

    def __init__(self, upstream: int | None = None) -> None:
        self.upstream = upstream
        self.stalled = upstream is None
        self.unanswered = 0  # reads from the gateway that got no answer
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stall(self) -> None:
        self.stalled = True

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            self._server.close()
            async with asyncio.timeout(10):
                await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        relay: asyncio.Task[None] | None = None
        try:
            if not self.stalled and self.upstream is not None:
                up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
                self._writers.add(upstream)
                relay = asyncio.create_task(self._answers(up_reader, writer))
            while data := await reader.read(65536):
                if self.stalled or upstream is None:
                    self.unanswered += 1  # swallowed: the gateway waits for an answer that never comes
                else:
                    upstream.write(data)
                    await upstream.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if relay is not None:
                relay.cancel()
            for side in (writer, upstream):
                if side is not None:
                    self._writers.discard(side)
                    side.close()

    async def _answers(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay the node's answers until stalled; then drop them (the connection stays open, silent)."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await up_reader.read(65536):
                if not self.stalled:
                    writer.write(data)
                    await writer.drain()


@asynccontextmanager
async def stalling_rpc(upstream: int | None = None) -> AsyncIterator[StallingRpc]:
    rpc = StallingRpc(upstream)
    await rpc.start()
    try:
        yield rpc
    finally:
        await rpc.close()
