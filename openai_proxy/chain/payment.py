"""The InferencePayment contract: ABI encoding of the calls the gateway makes, and its read-only views.

The functions and their meaning come from Plumise's contract (upstream-protocols.md §3.4): users `deposit()`
PLM; a balance of at least PRO_TIER_MINIMUM (100 PLM) makes them pro (`getUserTier` = 1); the gateway calls
`useCredits(user, tokenCount)`, which takes `tokenCount * costPer1000Tokens / 1000` wei from the balance,
adds it to `usedCredits`, and drops the user to free when the balance falls below the minimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from .rpc import RpcClient, RpcUnavailable

PRO_TIER = 1
WEI_PER_PLM = 10**18


def selector(signature: str) -> bytes:
    """The 4-byte function selector of e.g. `useCredits(address,uint256)`."""
    return keccak(text=signature)[:4]


def call_data(signature: str, types: list[str], args: list[Any]) -> bytes:
    return selector(signature) + encode(types, args)


def plm(wei: int) -> str:
    """Wei as a decimal PLM string without trailing zeros: 1500000000000000000 -> "1.5"."""
    text = format(Decimal(wei) / WEI_PER_PLM, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class UserCredit:
    """`getUserCredit(user)`: PLM amounts in wei, `last_deposit` in unix seconds, `tier` 1 = pro."""

    balance: int
    used_credits: int
    last_deposit: int
    tier: int


class InferencePayment:
    """Read-only views of the contract at `address`, plus the calldata of `useCredits`."""

    def __init__(self, rpc: RpcClient, address: str) -> None:
        self.rpc = rpc
        self.address = to_checksum_address(address)

    async def _view(self, signature: str, types: list[str], args: list[Any], returns: list[str]) -> tuple[Any, ...]:
        raw = await self.rpc.eth_call(self.address, call_data(signature, types, args))
        try:
            return decode(returns, raw)
        except DecodingError as exc:
            # An empty answer is what a node returns for an address without code: a wrong address or chain.
            raise RpcUnavailable(f"{signature}: undecodable answer ({len(raw)} bytes) from {self.address}") from exc

    async def tier(self, user: str) -> int:
        (value,) = await self._view("getUserTier(address)", ["address"], [user], ["uint256"])
        return int(value)

    async def balance(self, user: str) -> int:
        (value,) = await self._view("getUserBalance(address)", ["address"], [user], ["uint256"])
        return int(value)

    async def credit(self, user: str) -> UserCredit:
        values = await self._view("getUserCredit(address)", ["address"], [user], ["(uint256,uint256,uint256,uint256)"])
        balance, used, last_deposit, tier = values[0]
        return UserCredit(balance=balance, used_credits=used, last_deposit=last_deposit, tier=tier)

    async def cost_per_1000_tokens(self) -> int:
        (value,) = await self._view("costPer1000Tokens()", [], [], ["uint256"])
        return int(value)

    async def pro_tier_minimum(self) -> int:
        (value,) = await self._view("PRO_TIER_MINIMUM()", [], [], ["uint256"])
        return int(value)

    async def gateway(self) -> str:
        """The one address the contract lets call useCredits."""
        (value,) = await self._view("gateway()", [], [], ["address"])
        return to_checksum_address(value)

    @staticmethod
    def use_credits_data(user: str, tokens: int) -> bytes:
        return call_data("useCredits(address,uint256)", ["address", "uint256"], [user, tokens])
