"""Ethereum JSON-RPC over the gateway's shared httpx client: the only module that talks to the chain node.

Two failures, kept apart because callers treat them differently:
- `RpcUnavailable`: no answer (connection refused, timeout, HTTP error, garbage). Whether a sent
  transaction reached the node is unknown.
- `RpcError`: the node answered with a JSON-RPC error object (a revert, "nonce too low", ...). The
  request was seen and refused.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from .. import jsonsafe
from .stats import ChainStats

Json = Any  # a decoded JSON-RPC result: str, int, dict, list or None


class RpcUnavailable(Exception):
    """The chain node could not be reached or gave no usable answer."""


class RpcError(Exception):
    """The chain node answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


def to_int(value: Json) -> int:
    """A JSON-RPC quantity ("0x1a") as an int."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcUnavailable(f"expected a hex quantity, got {value!r}")
    return int(value, 16)


def to_bytes(value: Json) -> bytes:
    """JSON-RPC data ("0x…") as bytes."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcUnavailable(f"expected hex data, got {value!r}")
    return bytes.fromhex(value[2:])


class RpcClient:
    """`eth_*` calls against one endpoint, each bounded by `timeout` seconds. Calls that get no usable
    answer are counted in `stats.rpc_failures`."""

    def __init__(
        self, http: httpx.AsyncClient, url: str, *, timeout: float, stats: ChainStats | None = None
    ) -> None:
        self._http = http
        self.url = url
        self._timeout = httpx.Timeout(timeout)
        self._ids = itertools.count(1)
        self.stats = stats if stats is not None else ChainStats()

    async def call(self, method: str, *params: Json) -> Json:
        try:
            body = await self._exchange(method, list(params))
        except RpcUnavailable:
            self.stats.rpc_failures += 1
            raise
        error = body.get("error")
        if isinstance(error, dict):
            raise RpcError(int(error.get("code", 0)), str(error.get("message", "")), error.get("data"))
        return body["result"]

    async def _exchange(self, method: str, params: list[Json]) -> dict[str, Json]:
        """One request and its decoded answer: a JSON-RPC object holding a result or an error object."""
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = await self._http.post(self.url, json=payload, timeout=self._timeout)
            response.raise_for_status()
            body = jsonsafe.loads(response.content)
        except (httpx.HTTPError, ValueError) as exc:
            raise RpcUnavailable(f"{method}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict):
            raise RpcUnavailable(f"{method}: the answer is not a JSON-RPC object")
        if not isinstance(body.get("error"), dict) and "result" not in body:
            raise RpcUnavailable(f"{method}: the answer has neither result nor error")
        return body

    async def chain_id(self) -> int:
        return to_int(await self.call("eth_chainId"))

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        return to_bytes(await self.call("eth_call", {"to": to, "data": "0x" + data.hex()}, block))

    async def estimate_gas(self, sender: str, to: str, data: bytes) -> int:
        return to_int(await self.call("eth_estimateGas", {"from": sender, "to": to, "data": "0x" + data.hex()}))

    async def transaction_count(self, address: str, block: str) -> int:
        return to_int(await self.call("eth_getTransactionCount", address, block))

    async def gas_price(self) -> int:
        return to_int(await self.call("eth_gasPrice"))

    async def max_priority_fee(self) -> int:
        return to_int(await self.call("eth_maxPriorityFeePerGas"))

    async def base_fee(self) -> int | None:
        """The latest block's base fee, or None on a chain without EIP-1559."""
        block = await self.call("eth_getBlockByNumber", "latest", False)
        if not isinstance(block, dict):
            raise RpcUnavailable("eth_getBlockByNumber: no latest block")
        fee = block.get("baseFeePerGas")
        return None if fee is None else to_int(fee)

    async def send_raw_transaction(self, raw: bytes) -> str:
        result = await self.call("eth_sendRawTransaction", "0x" + raw.hex())
        return str(result)

    async def receipt(self, tx_hash: str) -> dict[str, Json] | None:
        result = await self.call("eth_getTransactionReceipt", tx_hash)
        return result if isinstance(result, dict) else None

    async def knows_transaction(self, tx_hash: str) -> bool:
        """Whether the node has the transaction, mined or waiting in its pool."""
        return await self.call("eth_getTransactionByHash", tx_hash) is not None
