"""The background sender of `useCredits` transactions: pending debits in, confirmed on-chain debits out.

Each round (every CREDITS_FLUSH_INTERVAL seconds) looks at every address in the ledger (ledger.py):
- a transaction in flight is followed: a receipt settles it (or, if it reverted, returns its tokens to
  pending); a nonce taken by some other transaction means none of its versions can ever mine, so its tokens
  go back to pending; one stuck too long is replaced by a version with higher fees (same nonce); otherwise
  it is re-broadcast when this process has not sent it recently (after a restart, the pool may have lost it).
- pending tokens (and nothing in flight) become one new transaction: all of that user's usage since the
  last one, so a burst of requests costs one transaction.

Only one replica sends at a time: it holds a lease in the store (a one-slot window), renewed between rounds
and released on shutdown. Requests never wait for any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable

from ..store import StateStore, StoreUnavailable
from .ledger import DebitLedger, InFlight, Signed
from .payment import InferencePayment
from .rpc import RpcClient, RpcError, RpcUnavailable, to_int
from .signer import TxSigner
from .stats import ChainStats

log = logging.getLogger("openai_proxy.chain.credits")

LEASE_KEY = "chain:sender-lease"
MAX_VERSIONS = 8  # fee bumps of one transaction before it is left to wait as it is
MAX_DEFER = 600.0
SEND_ATTEMPTS = 2  # a refused transaction is re-signed at once with a fresh nonce, once


class CreditSender:
    """Turns the ledger's pending debits into mined `useCredits` transactions; see the module docstring."""

    def __init__(
        self,
        *,
        ledger: DebitLedger,
        signer: TxSigner,
        payment: InferencePayment,
        store: StateStore,
        stats: ChainStats,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ledger = ledger
        self._signer = signer
        self._payment = payment
        self._rpc: RpcClient = payment.rpc
        self._store = store
        self._stats = stats
        self._interval = interval
        self._clock = clock
        self._member = uuid.uuid4().hex
        self._lease = max(30.0, 6 * interval)
        self._stuck_after = max(1.0, 6 * interval)
        self._retry_at: dict[str, tuple[float, int]] = {}  # address -> (not before, failures)
        self._broadcast_at: dict[str, float] = {}  # tx hash -> when this process last sent it
        self._failing = 0
        self._checked = False
        self._misconfigured = ""
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        me = asyncio.current_task()
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self._lease / 2):  # a round never outlives the lease it holds
                    await self.round()
                self._recovered()
            except (RpcUnavailable, RpcError, StoreUnavailable, TimeoutError) as exc:
                self._failed(exc)
            except Exception:  # the loop's boundary: a bug in one round must not stop billing for good
                log.exception("credit sender round failed")
                self._failing += 1
                self._stats.debit_round_failures += 1
            if me is not None and me.cancelling():
                # A cancellation that reached a round was lost on the way (a library, or Python 3.11's
                # timeouts, can swallow one or turn it into a TimeoutError): honour it, or shutdown hangs.
                raise asyncio.CancelledError
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(MAX_DEFER / 10, self._interval * 2 ** min(self._failing, 6))):
                    await self._stopping.wait()

    def stop(self) -> None:
        """End `run` after the current round, even if a cancellation of its task gets lost."""
        self._stopping.set()

    async def close(self, grace: float = 5.0) -> None:
        """One last round (debits of a memory store would be lost otherwise), then give the lease back."""
        with contextlib.suppress(RpcUnavailable, RpcError, StoreUnavailable, TimeoutError):
            async with asyncio.timeout(grace):
                await self.round()
        with contextlib.suppress(StoreUnavailable):
            await self._store.release_slot(LEASE_KEY, self._member)

    async def round(self) -> None:
        if not await self._hold_lease() or not await self._preflight():
            return
        await self._ledger.save_unsaved()
        for address, line in (await self._ledger.accounts()).items():
            if line.in_flight > 0:
                await self._follow(address, line.in_flight)
            elif line.pending > 0 and self._due(address):
                await self._debit(address, line.pending)
            elif line.pending < 0 or line.in_flight < 0:
                log.error("ledger of %s is negative (pending %d, in flight %d)", address, line.pending,
                          line.in_flight)

    async def _hold_lease(self) -> bool:
        decision = await self._store.acquire_slot(LEASE_KEY, limit=1, window=self._lease, member=self._member)
        if decision.allowed and decision.reset_after < self._lease / 2:
            # Renew between rounds, never during one: give the slot back and take it again (anyone may win).
            await self._store.release_slot(LEASE_KEY, self._member)
            decision = await self._store.acquire_slot(LEASE_KEY, limit=1, window=self._lease, member=self._member)
        return decision.allowed

    async def _preflight(self) -> bool:
        """Hold debits while the chain id or the contract's gateway do not match our key: every one would fail.
        They are kept, and go out once the operator fixes the settings or calls setGateway."""
        if self._checked:
            return True
        problems = []
        chain_id = await self._rpc.chain_id()
        if chain_id != self._signer.chain_id:
            problems.append(f"the RPC serves chain {chain_id}, CHAIN_ID is {self._signer.chain_id}")
        gateway = await self._payment.gateway()
        if gateway.lower() != self._signer.address.lower():
            problems.append(f"the contract's gateway is {gateway}, GATEWAY_PRIVATE_KEY is {self._signer.address}")
        problem = "; ".join(problems)
        if problem and problem != self._misconfigured:
            log.error("useCredits debits are on hold: %s", problem)
        self._misconfigured = problem
        self._checked = not problem
        return self._checked

    # --- new debits -------------------------------------------------------------------------------

    async def _debit(self, address: str, tokens: int) -> None:
        data = self._payment.use_credits_data(address, tokens)
        try:
            gas = await self._signer.estimate_gas(self._payment.address, data)
        except RpcError as exc:  # the contract would revert (not the gateway? no balance?): keep the debit
            self._stats.debit_estimate_failures += 1
            self._defer(address, f"useCredits would revert: {exc.message}")
            return
        fees = await self._signer.fees()
        for _ in range(SEND_ATTEMPTS):
            nonce = await self._signer.next_nonce()
            signed = self._signer.sign(to=self._payment.address, data=data, nonce=nonce, gas=gas, fees=fees)
            tx = InFlight(address=address, nonce=nonce, tokens=tokens, versions=(signed,), sent_at=self._clock())
            await self._ledger.begin(tx)
            if await self._send(tx, signed):
                self._retry_at.pop(address, None)
                return
        self._defer(address, "the node refused the transaction")

    async def _send(self, tx: InFlight, signed: Signed) -> bool:
        """Send a freshly begun transaction; False (and its tokens back in pending) if the node refused it."""
        try:
            await self._rpc.send_raw_transaction(bytes.fromhex(signed.raw[2:]))
        except RpcUnavailable:
            # It may or may not have arrived: it stays in flight, and the next round looks for its receipt.
            self._signer.reset_nonce()
            raise
        except RpcError as exc:
            if not await self._rpc.knows_transaction(signed.hash):  # e.g. "already known" is not a refusal
                await self._ledger.abandon(tx.address, tx.tokens)
                self._signer.reset_nonce()
                self._stats.debit_send_failures += 1
                self._stats.nonce_resets += 1
                log.warning("useCredits(%s, %d) nonce %d refused: %s", tx.address, tx.tokens, tx.nonce, exc.message)
                return False
        self._signer.accepted(tx.nonce)
        self._stats.debit_transactions_sent += 1
        self._broadcast_at[signed.hash] = self._clock()
        log.info("useCredits(%s, %d) sent as %s (nonce %d)", tx.address, tx.tokens, signed.hash, tx.nonce)
        return True

    # --- transactions in flight -------------------------------------------------------------------

    async def _follow(self, address: str, in_flight: int) -> None:
        tx = await self._ledger.record(address)
        if tx is None:
            # Cannot happen with this module's order of writes; if the store lost the record, the
            # transaction may still mine, so these tokens are written off rather than risk a double debit.
            log.error("%d in-flight tokens of %s have no transaction record: written off", in_flight, address)
            self._stats.debit_dropped_tokens += in_flight
            await self._ledger.drop_in_flight(address, in_flight)
            return
        if await self._settle_if_mined(tx):
            return
        if await self._rpc.transaction_count(self._signer.address, "latest") > tx.nonce:
            if await self._settle_if_mined(tx):  # it may have mined between the two reads
                return
            log.warning("nonce %d of useCredits(%s) was used by another transaction: debit re-queued",
                        tx.nonce, address)
            self._forget(tx)
            await self._ledger.abandon(address, tx.tokens)
            self._signer.reset_nonce()
            self._stats.nonce_resets += 1
        elif self._clock() - tx.sent_at >= self._stuck_after and len(tx.versions) < MAX_VERSIONS:
            await self._replace(tx)
        else:
            await self._rebroadcast(tx.versions[-1])

    async def _settle_if_mined(self, tx: InFlight) -> bool:
        for version in tx.versions:
            receipt = await self._rpc.receipt(version.hash)
            if receipt is None:
                continue
            self._forget(tx)
            if to_int(receipt.get("status")) == 1:
                await self._ledger.settle(tx.address, tx.tokens)
                self._stats.debit_tokens_confirmed += tx.tokens
                log.info("useCredits(%s, %d) mined in %s", tx.address, tx.tokens, version.hash)
            else:
                await self._ledger.abandon(tx.address, tx.tokens)
                self._stats.debit_reverted += 1
                self._defer(tx.address, f"useCredits reverted in {version.hash}")
            return True
        return False

    async def _replace(self, tx: InFlight) -> None:
        """A version with higher fees and the same nonce: whichever mines first, the debit happens once."""
        data = self._payment.use_credits_data(tx.address, tx.tokens)
        try:
            gas = await self._signer.estimate_gas(self._payment.address, data)
        except RpcError:
            await self._rebroadcast(tx.versions[-1])
            return
        fees = (await self._signer.fees()).outbid(tx.versions[-1])
        signed = self._signer.sign(to=self._payment.address, data=data, nonce=tx.nonce, gas=gas, fees=fees)
        await self._ledger.add_version(dataclasses.replace(tx, versions=(*tx.versions, signed), sent_at=self._clock()))
        try:
            await self._rpc.send_raw_transaction(bytes.fromhex(signed.raw[2:]))
        except RpcError as exc:
            log.warning("replacement of useCredits(%s) nonce %d refused: %s", tx.address, tx.nonce, exc.message)
            return
        self._stats.debit_transactions_sent += 1
        self._broadcast_at[signed.hash] = self._clock()
        log.info("useCredits(%s) nonce %d stuck: replaced by %s with max fee %d", tx.address, tx.nonce,
                 signed.hash, fees.max_fee)

    async def _rebroadcast(self, signed: Signed) -> None:
        last = self._broadcast_at.get(signed.hash)
        if last is not None and self._clock() - last < self._stuck_after:
            return
        self._broadcast_at[signed.hash] = self._clock()
        with contextlib.suppress(RpcError):  # "already known" and the like: the pool has it, or it is dead
            await self._rpc.send_raw_transaction(bytes.fromhex(signed.raw[2:]))

    def _forget(self, tx: InFlight) -> None:
        for version in tx.versions:
            self._broadcast_at.pop(version.hash, None)

    # --- retries ----------------------------------------------------------------------------------

    def _due(self, address: str) -> bool:
        not_before, _ = self._retry_at.get(address, (0.0, 0))
        return self._clock() >= not_before

    def _defer(self, address: str, reason: str) -> None:
        _, failures = self._retry_at.get(address, (0.0, 0))
        delay = min(MAX_DEFER, self._interval * 2**failures)
        self._retry_at[address] = (self._clock() + delay, failures + 1)
        log.warning("debit of %s deferred %.1f s: %s", address, delay, reason)

    def _failed(self, exc: Exception) -> None:
        self._failing += 1
        self._stats.debit_round_failures += 1
        if self._failing == 1:
            log.warning("credit sender cannot reach the chain or the store (will retry): %s", exc)

    def _recovered(self) -> None:
        if self._failing:
            log.info("credit sender works again after %d failed rounds", self._failing)
        self._failing = 0
