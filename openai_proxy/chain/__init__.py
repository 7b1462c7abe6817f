"""The Plumise chain: pro tiers read from the InferencePayment contract, and pro usage debited on it.

    rpc.py      JSON-RPC over the shared httpx client        payment.py  the contract's ABI
    tiers.py    cached tier lookups (TierResolver's lookup)   ledger.py   pending / in-flight debits
    signer.py   nonces, gas, fees, local signing              credits.py  the background useCredits sender

Nothing here is on the request path except two store operations: reading a cached tier, and adding a
request's tokens to its user's pending debit. The gateway starts and serves with the chain unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import httpx

from ..auth.principal import Principal
from ..service import Usage
from ..settings import Settings
from ..store import StateStore
from .credits import CreditSender
from .ledger import DebitLedger
from .payment import InferencePayment
from .rpc import RpcClient
from .signer import TxSigner
from .stats import ChainStats
from .tiers import ChainTierCache

log = logging.getLogger("openai_proxy.chain")

__all__ = ["ChainServices", "ChainStats", "build_chain"]


@dataclass
class ChainServices:
    """Everything chain-related the gateway holds for its lifetime."""

    payment: InferencePayment
    tiers: ChainTierCache
    ledger: DebitLedger
    sender: CreditSender | None  # None without GATEWAY_PRIVATE_KEY: tiers only, nothing is debited
    stats: ChainStats
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def record_usage(self, principal: Principal, usage: Usage) -> None:
        """RateLimiter hook: a finished request of an on-chain pro wallet adds its tokens to its debit."""
        if self.sender is None or principal.kind != "wallet" or principal.tier != "pro":
            return
        tokens = usage.total_tokens
        known = await self.tiers.known(principal.subject)
        if tokens <= 0 or known is None or known.tier != "pro":
            return  # pro through PRO_ADDRESSES only: there is no deposit to debit
        await self.ledger.add(principal.subject, tokens)
        self.stats.debit_tokens_recorded += tokens

    def start(self) -> None:
        if self.sender is not None:
            self.tasks.append(asyncio.create_task(self.sender.run(), name="credit-sender"))

    async def close(self) -> None:
        if self.sender is not None:
            self.sender.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.tiers.close()
        if self.sender is not None:
            await self.sender.close()


def build_chain(settings: Settings, http: httpx.AsyncClient, store: StateStore) -> ChainServices | None:
    """The chain services, or None when the chain is off (see Settings.chain_on)."""
    if not settings.chain_on:
        return None
    stats = ChainStats()
    rpc = RpcClient(http, settings.chain_rpc_url, timeout=settings.chain_rpc_timeout, stats=stats)
    payment = InferencePayment(rpc, settings.inference_payment_address)
    tiers = ChainTierCache(
        payment, store, stats, cache_seconds=settings.tier_cache_seconds, first_wait=settings.chain_rpc_timeout
    )
    ledger = DebitLedger(store)
    sender = None
    if settings.gateway_private_key is None:
        log.warning("GATEWAY_PRIVATE_KEY is not set: pro tiers come from the chain, but usage is not debited")
    else:
        signer = TxSigner(rpc, settings.gateway_private_key.get_secret_value(), settings.chain_id)
        sender = CreditSender(
            ledger=ledger, signer=signer, payment=payment, store=store, stats=stats,
            interval=settings.credits_flush_interval,
        )
    return ChainServices(payment=payment, tiers=tiers, ledger=ledger, sender=sender, stats=stats)
