"""Wallet sign-in: single-use nonces offered in three signable forms, verified into an API token.

A nonce is server-generated, lives NONCE_TTL seconds in the shared store, and is consumed atomically on the
first successful verification only, so a failed attempt cannot burn a victim's pending sign-in and a
replayed signature (including its high-s twin) finds the nonce gone. The three forms bound to a nonce are
the original plain message (EIP-191), an EIP-4361 SIWE message for this gateway's origin and chain, and
EIP-712 typed data; all three are rebuilt from the stored record at verification.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ..errors import AuthError, InvalidRequest, RateLimited
from ..limits import store_down
from ..protocol import NonceResponse, TokenResponse, VerifyRequest
from ..settings import Settings
from ..store import StateStore, StoreUnavailable
from .jwt import TokenService
from .siwe import SiweError, build_siwe, parse_siwe, verify_siwe
from .tiers import TierResolver
from .wallet import InvalidSignature, checksum, plain_message, recover_personal_sign, recover_typed_data, typed_data

NONCE_TTL = 300
STATEMENT = "Sign in to the Plumise Inference API."
# Per minute: enough for a person retrying, too few to flood the store with nonces.
NONCE_LIMIT_PER_ADDRESS = 10
NONCE_LIMIT_PER_IP = 30
VERIFY_LIMIT_PER_IP = 60


@dataclass(frozen=True, slots=True)
class NonceRecord:
    nonce: str
    address: str  # checksummed
    issued_at: int
    expires_at: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> NonceRecord:
        return cls(**json.loads(raw))


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class SignInService:
    def __init__(
        self,
        store: StateStore,
        tokens: TokenService,
        tiers: TierResolver,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.tiers = tiers
        self.origin = settings.origin
        self.domain = urlsplit(settings.origin).netloc
        self.chain_id = settings.chain_id
        self.clock = clock

    # --- forms ------------------------------------------------------------------------------------------

    def siwe_text(self, record: NonceRecord) -> str:
        message = build_siwe(
            origin=self.origin,
            address=record.address,
            chain_id=self.chain_id,
            nonce=record.nonce,
            issued_at=datetime.fromtimestamp(record.issued_at, UTC),
            expiration_time=datetime.fromtimestamp(record.expires_at, UTC),
            statement=STATEMENT,
        )
        return message.to_text()

    def typed(self, record: NonceRecord) -> dict[str, Any]:
        return typed_data(address=record.address, nonce=record.nonce, issued_at=record.issued_at,
                          chain_id=self.chain_id)

    # --- issuing ------------------------------------------------------------------------------------------

    async def issue(self, address: str, client_ip: str) -> NonceResponse:
        address = _checksummed(address)
        try:
            await self._throttle(f"nonce-addr:{address.lower()}", NONCE_LIMIT_PER_ADDRESS)
            await self._throttle(f"nonce-ip:{client_ip}", NONCE_LIMIT_PER_IP)
            now = int(self.clock())
            record = NonceRecord(secrets.token_hex(32), address, now, now + NONCE_TTL)
            await self.store.put(f"nonce:{record.nonce}", record.to_json(), NONCE_TTL)
            await self.store.put(f"nonce-for:{address.lower()}", record.nonce, NONCE_TTL)
        except StoreUnavailable as exc:
            raise store_down(exc) from exc
        return NonceResponse(
            nonce=record.nonce,
            message=plain_message(record.nonce),
            siwe_message=self.siwe_text(record),
            typed_data=self.typed(record),
            expires_at=iso(record.expires_at),
        )

    async def _throttle(self, key: str, limit: int) -> None:
        decision = await self.store.acquire_slot(f"throttle:{key}", limit=limit, window=60,
                                                 member=secrets.token_hex(8))
        if not decision.allowed:
            raise RateLimited("Too many sign-in attempts; wait a minute and retry.", retry_after=decision.retry_after)

    # --- verifying ----------------------------------------------------------------------------------------

    async def verify(self, request: VerifyRequest, client_ip: str) -> TokenResponse:
        try:
            await self._throttle(f"verify-ip:{client_ip}", VERIFY_LIMIT_PER_IP)
            if request.message is not None:
                record = await self._check_siwe(request.message, request.signature)
            elif request.address is not None:
                record = await self._check_address(request.address, request.signature, request.nonce)
            else:
                raise InvalidRequest("Send either 'address' or a SIWE 'message' with the signature.", param="address")
            if await self.store.take(f"nonce:{record.nonce}") is None:
                raise AuthError("This sign-in nonce was already used; request a new one.", code="nonce_used")
            tier = await self.tiers.tier(record.address)
        except StoreUnavailable as exc:
            raise store_down(exc) from exc
        issued = self.tokens.mint(record.address)
        return TokenResponse(token=issued.token, expires_at=iso(issued.expires_at), address=issued.address, tier=tier)

    async def _record(self, nonce: str | None) -> NonceRecord:
        raw = await self.store.get(f"nonce:{nonce}") if nonce else None
        if raw is None:
            raise AuthError("Nonce not found or expired: request a new one from POST /api/v1/auth/nonce.",
                            code="invalid_nonce")
        record = NonceRecord.from_json(raw)
        if record.expires_at <= self.clock():
            raise AuthError("Nonce expired: request a new one from POST /api/v1/auth/nonce.", code="invalid_nonce")
        return record

    async def _check_address(self, address: str, signature: str, nonce: str | None) -> NonceRecord:
        address = _checksummed(address)
        # Without a named nonce, the latest one issued to the address (the original API's flow).
        record = await self._record(nonce or await self.store.get(f"nonce-for:{address.lower()}"))
        if record.address != address:
            raise AuthError("This nonce was issued to another address.", code="invalid_nonce")
        try:
            signers = {
                recover_personal_sign(plain_message(record.nonce), signature),
                recover_personal_sign(self.siwe_text(record), signature),
                recover_typed_data(self.typed(record), signature),
            }
        except InvalidSignature as exc:
            raise AuthError(f"Signature check failed: {exc.reason}.", code="invalid_signature") from exc
        if address not in signers:
            raise AuthError("The signature was not made by this address over the issued message.",
                            code="invalid_signature")
        return record

    async def _check_siwe(self, text: str, signature: str) -> NonceRecord:
        try:
            nonce = parse_siwe(text).nonce
        except SiweError as exc:
            raise AuthError(f"Invalid SIWE message: {exc}", code="invalid_siwe_message") from exc
        record = await self._record(nonce)
        try:
            now = datetime.fromtimestamp(self.clock(), UTC)
            message = verify_siwe(text, signature, domain=self.domain, uri_prefix=self.origin,
                                  chain_id=self.chain_id, nonce=record.nonce, now=now)
        except SiweError as exc:
            raise AuthError(f"Invalid SIWE message: {exc}", code="invalid_siwe_message") from exc
        except InvalidSignature as exc:
            raise AuthError(f"Signature check failed: {exc.reason}.", code="invalid_signature") from exc
        if checksum(message.address) != record.address:  # EIP-4361 allows an all-lower-case address line
            raise AuthError("This nonce was issued to another address.", code="invalid_nonce")
        return record


def _checksummed(address: str) -> str:
    try:
        return checksum(address)
    except ValueError as exc:
        raise InvalidRequest(f"Invalid wallet address: {exc}", param="address") from exc
