"""Ethereum wallet signatures: EIP-191 `personal_sign` and EIP-712 (`eth_signTypedData_v4`).

Signature policy (see `normalize_signature`):

* Accepted encodings: 65 bytes `r || s || v` with `v` in {0, 1, 27, 28}, and the EIP-2098 compact
  64-byte form `r || yParityAndS`, each as `0x` + hex. Anything else raises `InvalidSignature`.
* High-s: for every valid `(r, s, v)` the twin `(r, n - s, v ^ 1)` recovers the same key (ECDSA
  malleability). eth-keys 0.8 (native backend) does **not** reject high-s, and neither do we: wallets emit
  low-s, but nothing is gained by refusing a twin that proves control of the same key, because replay
  protection is the server's single-use nonce, never the signature bytes. We do, however, canonicalize to
  low-s before recovery, so the outcome does not depend on the eth-keys backend and both twins normalize
  to identical bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data
from eth_utils.address import is_checksum_address, to_checksum_address

PLAIN_MESSAGE_TEMPLATE: Final = (
    "Sign this message to authenticate with Plumise Inference API.\n\nNonce: {nonce}"
)
TYPED_DATA_DOMAIN_NAME: Final = "Plumise Inference API"

# Order of the secp256k1 group: s and n - s are the two valid s values for one (r, message).
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N: Final = SECP256K1_N // 2

_ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_SIGNATURE_RE: Final = re.compile(r"0x(?:[0-9a-fA-F]{128}|[0-9a-fA-F]{130})")


class InvalidSignature(ValueError):
    """The signature is malformed, cannot be recovered, or was made over different data."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid signature: {reason}")
        self.reason = reason


def plain_message(nonce: str) -> str:
    """The original service's `personal_sign` login text for `nonce`."""
    return PLAIN_MESSAGE_TEMPLATE.format(nonce=nonce)


def checksum(address: str) -> str:
    """The EIP-55 form of `address`; ValueError if malformed or mixed-case with a wrong checksum.

    All-lowercase and all-uppercase hex carry no checksum and are accepted; mixed case is a checksum
    claim, and a wrong one usually means a typo, so it is refused.
    """
    if not _ADDRESS_RE.fullmatch(address):
        raise ValueError(f"not an Ethereum address (want 0x + 40 hex digits): {address!r}")
    body = address[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(address):
        raise ValueError(f"address has an invalid EIP-55 checksum: {address!r}")
    return str(to_checksum_address(address))


def typed_data(*, address: str, nonce: str, issued_at: int, chain_id: int) -> dict[str, Any]:
    """The whole EIP-712 login document, ready for `eth_signTypedData_v4`."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "Login": [
                {"name": "address", "type": "address"},
                {"name": "nonce", "type": "string"},
                {"name": "issuedAt", "type": "uint256"},
            ],
        },
        "primaryType": "Login",
        "domain": {"name": TYPED_DATA_DOMAIN_NAME, "version": "1", "chainId": chain_id},
        "message": {"address": checksum(address), "nonce": nonce, "issuedAt": issued_at},
    }


def normalize_signature(signature: str) -> bytes:
    """Canonical 65 bytes `r || s || v` (low-s, v in {27, 28}) from any accepted encoding."""
    if not isinstance(signature, str) or not _SIGNATURE_RE.fullmatch(signature):
        raise InvalidSignature("expected 0x followed by 130 (or EIP-2098 compact: 128) hex digits")
    raw = bytes.fromhex(signature[2:])
    r = int.from_bytes(raw[:32], "big")
    if len(raw) == 64:
        # EIP-2098: the top bit of the second word is the y parity, the other 255 bits are s.
        y_and_s = int.from_bytes(raw[32:], "big")
        s, parity = y_and_s & ((1 << 255) - 1), y_and_s >> 255
    else:
        s, v = int.from_bytes(raw[32:64], "big"), raw[64]
        if v not in (0, 1, 27, 28):
            raise InvalidSignature(f"recovery id v must be 0, 1, 27 or 28, got {v}")
        parity = v % 27
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise InvalidSignature("r and s must lie in [1, n - 1]")
    if s > _HALF_N:
        s, parity = SECP256K1_N - s, parity ^ 1
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + parity])


def _recover(signable: SignableMessage, signature: str) -> str:
    canonical = normalize_signature(signature)
    try:
        return str(Account.recover_message(signable, signature=canonical))
    except Exception as exc:  # boundary: any eth-keys decoding/recovery failure is our InvalidSignature
        raise InvalidSignature(f"public key recovery failed ({exc})") from exc


def recover_personal_sign(message: str, signature: str) -> str:
    """Checksummed address that signed `message` with EIP-191 `personal_sign`."""
    return _recover(encode_defunct(text=message), signature)


def _encode_typed(data: Mapping[str, Any]) -> SignableMessage:
    try:
        return encode_typed_data(full_message=dict(data))
    except Exception as exc:  # boundary: eth-account raises many types for malformed typed data
        raise InvalidSignature(f"typed data cannot be encoded ({exc})") from exc


def recover_typed_data(data: Mapping[str, Any], signature: str) -> str:
    """Checksummed address that signed the EIP-712 document `data` (`eth_signTypedData_v4`)."""
    return _recover(_encode_typed(data), signature)


def _sign(signable: SignableMessage, private_key: str | bytes) -> str:
    signed = Account.sign_message(signable, private_key)
    # HexBytes.hex() gained and lost its 0x prefix across versions; build the string ourselves.
    return "0x" + bytes(signed.signature).hex()


def sign_personal(message: str, private_key: str | bytes) -> str:
    """EIP-191 `personal_sign` of `message`, as `0x` + 130 hex digits."""
    return _sign(encode_defunct(text=message), private_key)


def sign_typed(data: Mapping[str, Any], private_key: str | bytes) -> str:
    """EIP-712 v4 signature of the full typed-data document, as `0x` + 130 hex digits."""
    return _sign(encode_typed_data(full_message=dict(data)), private_key)
