"""Helpers for the sign-in, limit and replica tests: real signatures, hand-built SIWE text, Redis db 12, a relay.

Nothing here imports the gateway's own signing code: the client side of every test signs with eth-account
directly and writes SIWE messages line by line, so a bug in the gateway cannot hide behind a shared helper.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from .redis_db import flushed_db, redis_url

REDIS_DB = 12  # this file's users own db 12 only
REDIS_URL = redis_url(REDIS_DB)
PUBLIC_URL = "https://gateway.example.test:8443"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
OPENAI_DURATION = r"^(?:\d+h)?(?:\d+m)?\d+s$|^\d+ms$"  # 6m0s, 59m58s, 1h0m0s, 1s, 950ms


def flushed_redis() -> AbstractAsyncContextManager[str]:
    """Redis db 12, empty before and after the test; yields its URL."""
    return flushed_db(REDIS_DB)


def new_account() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


def hex_signature(signed: Any) -> str:
    return "0x" + bytes(signed.signature).hex()


def sign_text(account: LocalAccount, text: str) -> str:
    """EIP-191 personal_sign, as a wallet does it."""
    return hex_signature(account.sign_message(encode_defunct(text=text)))


def sign_typed(account: LocalAccount, typed_data: dict[str, Any]) -> str:
    """eth_signTypedData_v4 over the whole document, as a wallet does it."""
    return hex_signature(account.sign_typed_data(full_message=typed_data))


def high_s_twin(signature: str) -> str:
    """The malleable twin (r, n - s, v ^ 1): a different byte string that recovers the same signer."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    twin_v = {27: 28, 28: 27, 0: 1, 1: 0}[v]
    return "0x" + (r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([twin_v])).hex()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hand_siwe(
    *,
    domain: str,
    address: str,
    uri: str,
    chain_id: int,
    nonce: str,
    issued_at: datetime,
    statement: str | None = "Sign in to use the gateway from my script.",
    expiration_time: datetime | None = None,
    not_before: datetime | None = None,
    scheme: str | None = None,
    resources: tuple[str, ...] = (),
) -> str:
    """An EIP-4361 message written line by line to the ERC-4361 ABNF (not with the gateway's renderer)."""
    lines = [f"{scheme}://{domain}" if scheme else domain]
    lines[0] += " wants you to sign in with your Ethereum account:"
    lines += [address, ""]
    if statement is not None:
        lines += [statement, ""]
    else:
        lines += [""]
    lines += [f"URI: {uri}", "Version: 1", f"Chain ID: {chain_id}", f"Nonce: {nonce}",
              f"Issued At: {rfc3339(issued_at)}"]
    if expiration_time is not None:
        lines.append(f"Expiration Time: {rfc3339(expiration_time)}")
    if not_before is not None:
        lines.append(f"Not Before: {rfc3339(not_before)}")
    if resources:
        lines += ["Resources:", *(f"- {resource}" for resource in resources)]
    return "\n".join(lines)


async def request_nonce(http: httpx.AsyncClient, base_url: str, address: str) -> dict[str, Any]:
    response = await http.post(f"{base_url}/api/v1/auth/nonce", json={"address": address})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def verify(http: httpx.AsyncClient, base_url: str, body: dict[str, Any]) -> httpx.Response:
    return await http.post(f"{base_url}/api/v1/auth/verify", json=body)


async def wallet_token(http: httpx.AsyncClient, base_url: str, account: LocalAccount, form: str = "plain") -> str:
    """Sign in through the gateway's own endpoints with one of the issued forms; returns the JWT."""
    issued = await request_nonce(http, base_url, account.address)
    if form == "siwe":
        body = {"message": issued["siwe_message"], "signature": sign_text(account, issued["siwe_message"])}
    elif form == "typed":
        body = {"address": account.address, "signature": sign_typed(account, issued["typed_data"])}
    else:
        body = {"address": account.address, "signature": sign_text(account, issued["message"])}
    response = await verify(http, base_url, body)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def assert_envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope with `status` (and `code`, when given); returns the inner error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error
