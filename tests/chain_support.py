"""A real local EVM chain for the tests: anvil (from npm, tests/chain/) with our InferencePayment-compatible
contract (tests/chain/InferencePayment.sol) compiled by solc-js at set-up and deployed at test start.

Accounts: anvil's first default account deploys the contract (it is its owner); the gateway signs with a
fresh random key that the test funds; users are fresh random addresses that act through anvil's
auto-impersonation (`eth_sendTransaction` from any address), so the tests never hold user keys.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_abi.abi import decode, encode
from eth_account import Account
from eth_utils.crypto import keccak

from .conftest import eventually

CHAIN_DIR = Path(__file__).resolve().parent / "chain"
ANVIL = CHAIN_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
CHAIN_ID = 41956
PLM = 10**18
COST_PER_TOKEN_WEI = 10**15 // 1000  # the contract's default: 0.001 PLM per 1000 tokens
CREDIT_USED = "0x" + keccak(text="CreditUsed(address,uint256,uint256)").hex()


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
