"""Turning the API-key slot into a Principal: a wallet JWT, or a static service key."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from ..errors import AuthError
from ..limits import store_down
from ..store import StateStore, StoreUnavailable
from .jwt import TokenService
from .principal import Principal, Tier
from .tiers import TierResolver


@dataclass(frozen=True, slots=True)
class ServiceKey:
    key: str
    tier: Tier
    label: str


def parse_service_keys(entries: list[str]) -> list[ServiceKey]:
    """API_KEYS entries look like `key:tier:label`."""
    keys: list[ServiceKey] = []
    for entry in entries:
        key, _, rest = entry.partition(":")
        tier, _, label = rest.partition(":")
        if not key or tier not in ("free", "pro"):
            raise ValueError("API_KEYS entries must look like key:tier:label with tier free or pro")
        keys.append(ServiceKey(key=key, tier=tier, label=label or key[:4]))  # type: ignore[arg-type]
    return keys


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("Missing API key. Send 'Authorization: Bearer <token>' with a token from sign-in.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("The Authorization header must be 'Bearer <token>'.")
    return token


class Authenticator:
    def __init__(
        self, tokens: TokenService, service_keys: list[ServiceKey], tiers: TierResolver, store: StateStore
    ) -> None:
        self.tokens = tokens
        self.tiers = tiers
        self._service_keys = service_keys
        self._store = store

    def service_key(self, token: str) -> ServiceKey | None:
        found = None
        for candidate in self._service_keys:
            # Compare against every key, in constant time, so timing says nothing about which one matched.
            if hmac.compare_digest(candidate.key.encode(), token.encode()):
                found = candidate
        return found

    async def principal(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        key = self.service_key(token)
        if key is not None:
            return Principal(subject=f"key:{key.label}", tier=key.tier, kind="service_key")
        claims = self.tokens.verify(token)
        tier = await self.tiers.tier(claims.address)
        await self._check_not_revoked(claims.token_id, tier)
        return Principal(subject=claims.address, tier=tier, token_id=claims.token_id, expires_at=claims.expires_at)

    async def _check_not_revoked(self, token_id: str, tier: Tier) -> None:
        try:
            revoked = await self._store.exists(revoked_key(token_id))
        except StoreUnavailable as exc:
            if tier == "pro":
                return  # pro traffic keeps flowing through a store outage; free traffic fails closed
            raise store_down(exc) from exc
        if revoked:
            raise AuthError("This API token was revoked (logged out); sign in again.", code="token_revoked")

    async def revoke(self, principal: Principal) -> None:
        if principal.token_id is None or principal.expires_at is None:
            return
        remaining = principal.expires_at - time.time()
        if remaining > 0:
            try:
                await self._store.put(revoked_key(principal.token_id), "1", remaining)
            except StoreUnavailable as exc:  # the client must know its token is still live
                raise store_down(exc) from exc


def revoked_key(token_id: str) -> str:
    return f"revoked:{token_id}"
