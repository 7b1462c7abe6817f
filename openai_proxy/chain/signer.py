"""Transactions from the gateway's key, signed locally: nonces, gas, fees.

The nonce is read from the chain (`eth_getTransactionCount(address, "pending")`, which counts the node's pool)
and then counted up locally while transactions are accepted, so a round of debits needs one read, not one
per transaction. Any refusal resets it, and the next transaction reads the chain again: that is how a
nonce taken by another sender (an operator's wallet, another replica) heals itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .ledger import Signed
from .rpc import RpcClient, RpcError

DEFAULT_TIP = 10**9  # 1 gwei, when the node has no eth_maxPriorityFeePerGas
GAS_HEADROOM = 1.25  # the estimate is for the current state; storage costs can differ when it mines
BUMP_PERCENT = 125  # replacements must pay >= 110 % (geth's rule); 125 % leaves room for rounding


@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fees (`tip` set) or a legacy gas price (`tip` None)."""

    max_fee: int
    tip: int | None

    def outbid(self, previous: Signed) -> Fees:
        """Fees for a replacement of `previous`: today's fees, raised to outbid it by BUMP_PERCENT."""
        max_fee = max(self.max_fee, _bump(previous.max_fee))
        if self.tip is None or previous.tip is None:
            return Fees(max_fee=max_fee, tip=None if self.tip is None else min(self.tip, max_fee))
        return Fees(max_fee=max_fee, tip=min(max(self.tip, _bump(previous.tip)), max_fee))


def _bump(value: int) -> int:
    return value * BUMP_PERCENT // 100 + 1


class TxSigner:
    """Builds, signs and numbers the gateway's transactions to one contract."""

    def __init__(self, rpc: RpcClient, private_key: str, chain_id: int) -> None:
        self._rpc = rpc
        self._account: LocalAccount = Account.from_key(private_key)
        self.chain_id = chain_id
        self._next_nonce: int | None = None

    @property
    def address(self) -> str:
        return str(self._account.address)

    async def next_nonce(self) -> int:
        if self._next_nonce is None:
            self._next_nonce = await self._rpc.transaction_count(self.address, "pending")
        return self._next_nonce

    def accepted(self, nonce: int) -> None:
        """The node took the transaction with `nonce`: the next one uses `nonce + 1`."""
        self._next_nonce = max(self._next_nonce or 0, nonce + 1)

    def reset_nonce(self) -> None:
        self._next_nonce = None

    async def estimate_gas(self, to: str, data: bytes) -> int:
        """Gas for the call with headroom; raises RpcError when the call would revert."""
        estimate = await self._rpc.estimate_gas(self.address, to, data)
        return int(estimate * GAS_HEADROOM) + 10_000

    async def fees(self) -> Fees:
        base = await self._rpc.base_fee()
        if base is None:
            return Fees(max_fee=await self._rpc.gas_price(), tip=None)
        try:
            tip = await self._rpc.max_priority_fee()
        except RpcError:
            tip = DEFAULT_TIP
        # Twice the base fee survives several full blocks of base-fee growth before the transaction stalls.
        return Fees(max_fee=2 * base + tip, tip=tip)

    def sign(self, *, to: str, data: bytes, nonce: int, gas: int, fees: Fees) -> Signed:
        tx: dict[str, Any] = {"to": to, "data": data, "value": 0, "gas": gas, "nonce": nonce,
                                 "chainId": self.chain_id}
        if fees.tip is None:
            tx["gasPrice"] = fees.max_fee
        else:
            tx.update(type=2, maxFeePerGas=fees.max_fee, maxPriorityFeePerGas=fees.tip)
        signed = self._account.sign_transaction(tx)
        return Signed(hash=signed.hash.to_0x_hex(), raw=signed.raw_transaction.to_0x_hex(), max_fee=fees.max_fee,
                      tip=fees.tip)
