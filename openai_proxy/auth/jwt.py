"""API tokens: HS256 JWTs that carry a wallet address and ride in the OpenAI API-key slot.

Verification pins the algorithm (never `none`, never the token's own choice) and requires every claim we
issue: `sub` (checksummed address), `address` (lower-case, as the original service issued), `iat`, `nbf`,
`exp`, `jti`, `iss`, `aud` (openai-compat.md §5.3).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from eth_utils.address import is_checksum_address, to_checksum_address

from ..errors import AuthError

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "address", "iat", "nbf", "exp", "jti", "iss", "aud"]
# A token minted by one replica is used at once on another whose clock may trail by a little: forgive that
# much on `nbf`. Expiry gets no leeway, since that would only lengthen a token's life.
NBF_LEEWAY = 30.0
# Verified tokens are remembered (bounded, least recently used out) so a client's every request does not
# pay HS256 plus the claim checks again; the time claims are still checked on every use.
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    token_id: str
    address: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class TokenClaims:
    address: str  # checksummed
    token_id: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class _Verified:
    claims: TokenClaims
    expires: float  # the `exp` and `nbf` claims as signed (floats allowed), checked on every use
    not_before: float


class TokenService:
    def __init__(
        self,
        secret: str,
        *,
        lifetime: float,
        issuer: str,
        audience: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("JWT_SECRET must not be empty")
        self._secret = secret
        self._lifetime = lifetime
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        self._verified: OrderedDict[str, _Verified] = OrderedDict()

    def mint(self, address: str) -> IssuedToken:
        checksummed = to_checksum_address(address)
        now = int(self._clock())
        expires = now + int(self._lifetime)
        token_id = secrets.token_hex(16)
        claims: dict[str, Any] = {
            "sub": checksummed,
            "address": checksummed.lower(),
            "iat": now,
            "nbf": now,
            "exp": expires,
            "jti": token_id,
            "iss": self._issuer,
            "aud": self._audience,
        }
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM)
        return IssuedToken(token=token, token_id=token_id, address=checksummed, expires_at=expires)

    def verify(self, token: str) -> TokenClaims:
        cached = self._verified.get(token)
        if cached is not None:
            try:
                self._check_times(cached.expires, cached.not_before)
            except jwt.PyJWTError:
                del self._verified[token]
            else:
                self._verified.move_to_end(token)
                return cached.claims
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("The API token has expired; sign in again for a new one.", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthError(f"The API token is invalid ({exc}).") from exc
        verified = self._claims(claims)
        self._verified[token] = _Verified(verified, claims["exp"], claims["nbf"])
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return verified

    def _check_times(self, expires: float, not_before: float) -> None:
        now = self._clock()
        if now >= expires:
            raise jwt.ExpiredSignatureError("Signature has expired")
        if now + NBF_LEEWAY < not_before:
            raise jwt.ImmatureSignatureError("The token is not yet valid (nbf)")

    def _decode(self, token: str) -> dict[str, Any]:
        # Time claims are checked against our injectable clock rather than PyJWT's wall clock, so tests can
        # move time instead of sleeping; everything else (signature, algorithm, iss, aud) is PyJWT's check.
        claims: dict[str, Any] = jwt.decode(
            token,
            self._secret,
            algorithms=[ALGORITHM],
            audience=self._audience,
            issuer=self._issuer,
            options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
        if not all(_is_number(claims[name]) for name in ("iat", "nbf", "exp")):
            raise jwt.InvalidTokenError("iat, nbf and exp must be numbers")
        self._check_times(claims["exp"], claims["nbf"])
        return claims

    @staticmethod
    def _claims(claims: dict[str, Any]) -> TokenClaims:
        subject, address = claims["sub"], claims["address"]
        if not (isinstance(subject, str) and is_checksum_address(subject) and address == subject.lower()):
            raise AuthError("The API token is invalid (subject is not a checksummed wallet address).")
        return TokenClaims(address=subject, token_id=str(claims["jti"]), expires_at=int(claims["exp"]))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
