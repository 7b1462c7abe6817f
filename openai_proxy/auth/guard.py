"""Turning the API-key slot into a Principal: a wallet JWT, or a static service key."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..errors import AuthError
from .jwt import TokenService
from .principal import Principal, Tier


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
    def __init__(self, tokens: TokenService, service_keys: list[ServiceKey], pro_addresses: list[str]) -> None:
        self.tokens = tokens
        self._service_keys = service_keys
        self._pro = {address.lower() for address in pro_addresses}

    def service_key(self, token: str) -> ServiceKey | None:
        found = None
        for candidate in self._service_keys:
            # Compare against every key, in constant time, so timing says nothing about which one matched.
            if hmac.compare_digest(candidate.key.encode(), token.encode()):
                found = candidate
        return found

    def static_tier(self, address: str) -> Tier:
        return "pro" if address.lower() in self._pro else "free"

    def principal(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        key = self.service_key(token)
        if key is not None:
            return Principal(subject=f"key:{key.label}", tier=key.tier, kind="service_key")
        claims = self.tokens.verify(token)
        return Principal(
            subject=claims.address,
            tier=self.static_tier(claims.address),
            token_id=claims.token_id,
            expires_at=claims.expires_at,
        )
