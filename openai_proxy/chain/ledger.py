"""Pending debits and in-flight `useCredits` transactions, kept in the state store so they survive restarts.

Layout (one store, shared by every replica):
- `chain:debits`, a counter hash: `p:<address>` = tokens used but not yet in any transaction,
  `f:<address>` = tokens in the one transaction in flight for that address (0 when none).
- `chain:tx:<address>`, a JSON record of that transaction: nonce, tokens, and every signed version of it
  (hash + raw bytes; more than one only after a fee bump, all with the same nonce, so at most one mines).

Every step moves tokens with ONE atomic counter update, and the record is written before the move that
points at it and deleted after the move that releases it:

    begin:    put record  → {p -= n, f += n}   → send
    settle:   {f -= n}     → delete record       (a receipt was found)
    abandon:  {f -= n, p += n} → delete record   (the transaction can never be mined)

So after a crash at any point, `f > 0` means "a record exists and its transaction may be out there" (check
its receipts before doing anything else), and a record with `f == 0` is an unsent draft or a settled
leftover, safe to delete. No token is ever in two transactions that can both be mined.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from .. import jsonsafe
from ..store import StateStore, StoreUnavailable

log = logging.getLogger("openai_proxy.chain.ledger")

DEBITS_KEY = "chain:debits"
LEDGER_TTL = 90 * 86400  # refreshed on every change; only a ledger untouched for 90 days expires


@dataclass(frozen=True, slots=True)
class Signed:
    hash: str  # 0x-prefixed transaction hash
    raw: str  # 0x-prefixed signed transaction, kept so it can be re-broadcast after a restart
    max_fee: int  # maxFeePerGas, or gasPrice for a legacy transaction: a replacement must outbid both
    tip: int | None  # maxPriorityFeePerGas; None for a legacy transaction


@dataclass(frozen=True, slots=True)
class InFlight:
    """One `useCredits(address, tokens)` transaction: all versions share `nonce`."""

    address: str
    nonce: int
    tokens: int
    versions: tuple[Signed, ...]
    sent_at: float  # unix time the newest version was signed: a stuck transaction is bumped after a while

    def to_json(self) -> str:
        versions = [{"hash": s.hash, "raw": s.raw, "max_fee": s.max_fee, "tip": s.tip} for s in self.versions]
        return json.dumps({"address": self.address, "nonce": self.nonce, "tokens": self.tokens,
                           "versions": versions, "sent_at": self.sent_at})

    @classmethod
    def from_json(cls, raw: str) -> InFlight:
        data = jsonsafe.loads(raw)
        versions = tuple(
            Signed(str(v["hash"]), str(v["raw"]), int(v["max_fee"]), None if v["tip"] is None else int(v["tip"]))
            for v in data["versions"]
        )
        return cls(str(data["address"]), int(data["nonce"]), int(data["tokens"]), versions,
                   float(data["sent_at"]))


@dataclass
class Account:
    """One address's line in the ledger."""

    pending: int = 0
    in_flight: int = 0


@dataclass
class DebitLedger:
    """The bookkeeping above, plus a memory buffer for debits that arrive while the store is down."""

    store: StateStore
    unsaved: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    async def add(self, address: str, tokens: int) -> None:
        """Record `tokens` used by `address` (the request path: one atomic increment)."""
        key = address.lower()
        try:
            await self.store.incr_counters(DEBITS_KEY, {f"p:{key}": tokens}, LEDGER_TTL)
        except StoreUnavailable:
            self.unsaved[key] += tokens  # saved by the sender's next round
            log.warning("debit of %d tokens kept in memory: state store unreachable", tokens)

    async def save_unsaved(self) -> None:
        while self.unsaved:
            key, tokens = next(iter(self.unsaved.items()))
            await self.store.incr_counters(DEBITS_KEY, {f"p:{key}": tokens}, LEDGER_TTL)
            del self.unsaved[key]

    async def accounts(self) -> dict[str, Account]:
        counters = await self.store.get_counters(DEBITS_KEY)
        found: dict[str, Account] = defaultdict(Account)
        for name, value in counters.items():
            kind, _, address = name.partition(":")
            if kind == "p":
                found[address].pending = value
            elif kind == "f":
                found[address].in_flight = value
        return {address: line for address, line in found.items() if line.pending or line.in_flight}

    async def account(self, address: str) -> Account:
        counters = await self.store.get_counters(DEBITS_KEY)
        key = address.lower()
        return Account(pending=counters.get(f"p:{key}", 0) + self.unsaved.get(key, 0),
                       in_flight=counters.get(f"f:{key}", 0))

    async def record(self, address: str) -> InFlight | None:
        raw = await self.store.get(_tx_key(address))
        if raw is None:
            return None
        try:
            return InFlight.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.error("unreadable in-flight record for %s: ignored", address)
            return None

    async def begin(self, tx: InFlight) -> None:
        await self.store.put(_tx_key(tx.address), tx.to_json(), LEDGER_TTL)
        key = tx.address.lower()
        await self.store.incr_counters(DEBITS_KEY, {f"p:{key}": -tx.tokens, f"f:{key}": tx.tokens}, LEDGER_TTL)

    async def add_version(self, tx: InFlight) -> None:
        """Save a replacement version before it is sent (the move already happened)."""
        await self.store.put(_tx_key(tx.address), tx.to_json(), LEDGER_TTL)

    async def settle(self, address: str, tokens: int) -> None:
        await self.store.incr_counters(DEBITS_KEY, {f"f:{address.lower()}": -tokens}, LEDGER_TTL)
        await self.store.delete(_tx_key(address))

    async def abandon(self, address: str, tokens: int) -> None:
        key = address.lower()
        await self.store.incr_counters(DEBITS_KEY, {f"f:{key}": -tokens, f"p:{key}": tokens}, LEDGER_TTL)
        await self.store.delete(_tx_key(address))

    async def drop_in_flight(self, address: str, tokens: int) -> None:
        """Forget in-flight tokens whose record is gone: they may have been debited, so never resend them."""
        await self.store.incr_counters(DEBITS_KEY, {f"f:{address.lower()}": -tokens}, LEDGER_TTL)

    async def discard_draft(self, address: str) -> None:
        await self.store.delete(_tx_key(address))


def _tx_key(address: str) -> str:
    return f"chain:tx:{address.lower()}"
