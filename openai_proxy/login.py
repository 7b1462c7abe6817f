"""Signing in from a script or a shell: `sign_in(base_url, account)` and the `openai-proxy login` command.

The private key never travels and never appears on a command line (where `ps` and shell history would
show it): the command reads it from an environment variable or a file. Before signing, the client checks
that what the gateway asks it to sign is a login for this address and this nonce, so a hostile server
cannot get an arbitrary message signed with the user's key.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Final

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from . import jsonsafe
from .auth.siwe import SiweError, parse_siwe
from .auth.wallet import TYPED_DATA_DOMAIN_NAME, plain_message

FORMS: Final = ("siwe", "plain", "typed")
DEFAULT_KEY_ENV: Final = "PLUMISE_PRIVATE_KEY"
DEFAULT_URL: Final = "http://127.0.0.1:3200"
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEX_KEY: Final = re.compile(r"(?:0x)?[0-9a-fA-F]{64}")


class LoginError(RuntimeError):
    """Sign-in failed: the key could not be read, the gateway could not be reached or it said no."""


def gateway_base(url: str) -> str:
    """The gateway's root from either its root or its OpenAI base URL (`.../v1`)."""
    return url.rstrip("/").removesuffix("/v1").rstrip("/")


def sign_in(base_url: str, account: LocalAccount, *, form: str = "siwe", http: httpx.Client | None = None) -> str:
    """Sign in to the gateway at `base_url` with `account` and return the API token (a JWT).

    `form` picks what the wallet signs: "siwe" (EIP-4361, the default), "plain" (the original EIP-191
    message) or "typed" (EIP-712). Raises LoginError with the gateway's reason when it refuses.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, not {form!r}")
    base = gateway_base(base_url)
    client = http if http is not None else httpx.Client(timeout=30)
    try:
        issued = _post(client, f"{base}/api/v1/auth/nonce", {"address": account.address})
        answer = _post(client, f"{base}/api/v1/auth/verify", _signed(issued, account, form))
    finally:
        if http is None:
            client.close()
    token = answer.get("token")
    if not isinstance(token, str):
        raise LoginError("the gateway's answer holds no token")
    return token


def _post(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = client.post(url, json=body)
    except httpx.TransportError as exc:
        raise LoginError(f"cannot reach {url}: {exc}") from exc
    try:
        data = jsonsafe.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise LoginError(f"{url} answered {response.status_code} without a JSON object")
    if response.status_code != 200:
        error = data.get("error")
        reason = error.get("message") if isinstance(error, dict) else None
        raise LoginError(f"{url} answered {response.status_code}: {reason or response.text[:200]}")
    return data


def _signed(issued: dict[str, Any], account: LocalAccount, form: str) -> dict[str, str]:
    """The verify body for `form`, after checking the offered message is a login for us and this nonce."""
    nonce = issued.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise LoginError("the gateway sent no nonce")
    if form == "typed":
        return {"address": account.address, "nonce": nonce, "signature": _sign_typed(issued, account, nonce)}
    if form == "plain":
        if issued.get("message") != plain_message(nonce):
            raise LoginError("the gateway's plain message is not the login message for this nonce")
        return {"address": account.address, "nonce": nonce, "signature": _personal_sign(account, plain_message(nonce))}
    text = issued.get("siwe_message")
    try:
        siwe = parse_siwe(text) if isinstance(text, str) else None
    except SiweError as exc:
        raise LoginError(f"the gateway's SIWE message is malformed: {exc}") from exc
    if siwe is None or siwe.address.lower() != account.address.lower() or siwe.nonce != nonce:
        raise LoginError("the gateway's SIWE message is not a login for this address and nonce")
    assert isinstance(text, str)
    return {"message": text, "signature": _personal_sign(account, text)}


def _sign_typed(issued: dict[str, Any], account: LocalAccount, nonce: str) -> str:
    typed = issued.get("typed_data")
    if not isinstance(typed, dict):
        raise LoginError("the gateway sent no typed data")
    message, domain = typed.get("message"), typed.get("domain")
    if not (isinstance(message, dict) and isinstance(domain, dict) and typed.get("primaryType") == "Login"
            and domain.get("name") == TYPED_DATA_DOMAIN_NAME and message.get("address") == account.address
            and message.get("nonce") == nonce):
        raise LoginError("the gateway's typed data is not a login for this address and nonce")
    try:
        return _hex(account.sign_typed_data(full_message=typed).signature)
    except (ValueError, TypeError, KeyError) as exc:  # eth-account's ways of refusing malformed typed data
        raise LoginError(f"the gateway's typed data cannot be signed: {exc}") from exc


def _personal_sign(account: LocalAccount, text: str) -> str:
    return _hex(account.sign_message(encode_defunct(text=text)).signature)


def _hex(signature: bytes) -> str:
    return "0x" + bytes(signature).hex()


# --- the command ----------------------------------------------------------------------------------------


def load_account(*, key_env: str = DEFAULT_KEY_ENV, key_file: str | None = None) -> LocalAccount:
    """The account whose hex private key is in the file `key_file`, else in the variable `key_env`."""
    if key_file is not None:
        path = Path(key_file)
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LoginError(f"cannot read the key file {key_file}: {exc.strerror}") from None
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"warning: {key_file} is readable by other users; chmod 600 it", file=sys.stderr)
        source = f"the key file {key_file}"
    else:
        if not _ENV_NAME.fullmatch(key_env) or _HEX_KEY.fullmatch(key_env):  # a key pasted here: never echo it
            raise LoginError("--key-env takes the NAME of an environment variable (e.g. PLUMISE_PRIVATE_KEY)")
        secret = os.environ.get(key_env, "").strip()
        if not secret:
            raise LoginError(f"no private key: set {key_env} (or pass --key-env VAR / --key-file PATH)")
        source = f"${key_env}"
    try:
        account: LocalAccount = Account.from_key(secret)
    except (ValueError, TypeError):
        # Never echo the value: it is (almost) a private key.
        raise LoginError(f"{source} does not hold a private key (64 hex digits, 0x optional)") from None
    return account


def run_login(args: argparse.Namespace) -> None:
    """`openai-proxy login`: print the token on stdout (for `$(...)`), the account on stderr."""
    try:
        account = load_account(key_env=args.key_env, key_file=args.key_file)
        token = sign_in(args.url, account, form=args.form)
    except LoginError as exc:
        raise SystemExit(f"openai-proxy login: {exc}") from None
    print(f"signed in as {account.address}", file=sys.stderr)
    print(token)
