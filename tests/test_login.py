"""`openai_proxy.login.sign_in` and `openai-proxy login`, against a real gateway.

The gateway runs in this test's event loop, so the synchronous `sign_in` runs in a thread and the CLI as
an asyncio subprocess: neither may block the loop that serves it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openai_proxy.login import LoginError, gateway_base, load_account, sign_in
from openai_proxy.settings import Settings

from .auth_support import PUBLIC_URL, new_account
from .conftest import REPO, serve_app

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
async def gw(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"http://{node.hostport}"], public_url=PUBLIC_URL)


async def account_of(http: httpx.AsyncClient, gw: Any, token: str) -> dict[str, Any]:
    response = await http.get(f"{gw.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "openai_proxy", *args, env=env, cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def cli_env(**extra: str) -> dict[str, str]:
    ours = {name.upper() for name in Settings.model_fields} | {"PLUMISE_PRIVATE_KEY"}
    env = {key: value for key, value in os.environ.items() if key.upper() not in ours}
    env.update(extra)
    return env


@pytest.mark.parametrize("form", ["siwe", "plain", "typed"])
async def test_sign_in_returns_a_working_token_for_every_form(gw, http, form) -> None:  # type: ignore[no-untyped-def]
    account = new_account()
    token = await asyncio.to_thread(sign_in, gw.v1, account, form=form)  # the /v1 base works too
    assert (await account_of(http, gw, token))["address"] == account.address
    models = await http.get(f"{gw.v1}/models", headers={"Authorization": f"Bearer {token}"})
    assert LLAMA in [m["id"] for m in models.json()["data"]]


async def test_sign_in_with_a_caller_supplied_client(gw, http) -> None:  # type: ignore[no-untyped-def]
    def signed_in() -> str:
        with httpx.Client(timeout=10) as client:
            return sign_in(gw.url + "/", new_account(), http=client)

    token = await asyncio.to_thread(signed_in)
    assert (await account_of(http, gw, token))["tier"] == "free"


async def test_sign_in_reports_the_gateways_refusal(start_devnode, start_gateway) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"http://{node.hostport}"], redis_url="redis://127.0.0.1:9/12")  # store down
    with pytest.raises(LoginError, match="503"):
        await asyncio.to_thread(sign_in, gw.url, new_account())
    with pytest.raises(ValueError, match="form"):
        sign_in(gw.url, new_account(), form="eip-1271")


async def test_sign_in_refuses_to_sign_what_is_not_a_login_for_this_account() -> None:
    """A hostile or broken server offering someone else's message gets no signature at all."""
    victim, other = new_account(), new_account()
    signed: list[Any] = []

    async def nonce(request: Request) -> JSONResponse:
        nonce = "a" * 64
        typed = {"types": {}, "primaryType": "Login", "domain": {}, "message": {"address": other.address,
                                                                               "nonce": nonce}}
        siwe = (f"evil.test wants you to sign in with your Ethereum account:\n{other.address}\n\n\n"
                f"URI: https://evil.test\nVersion: 1\nChain ID: 1\nNonce: {nonce}\nIssued At: 2030-01-01T00:00:00Z")
        return JSONResponse({"nonce": nonce, "message": "Send 1 ETH", "siwe_message": siwe, "typed_data": typed})

    async def verify(request: Request) -> JSONResponse:
        signed.append(await request.json())
        return JSONResponse({"token": "stolen"})

    app = Starlette(routes=[Route("/api/v1/auth/nonce", nonce, methods=["POST"]),
                            Route("/api/v1/auth/verify", verify, methods=["POST"])])
    async with serve_app(app, lifespan="off") as url:
        for form in ("siwe", "plain", "typed"):
            with pytest.raises(LoginError, match="not"):
                await asyncio.to_thread(sign_in, url, victim, form=form)
    assert signed == []


def test_gateway_base_accepts_root_or_v1() -> None:
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"):
        assert gateway_base(url) == "http://h:1"


def test_load_account_never_echoes_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "0x" + "zz" * 32
    monkeypatch.setenv("MY_KEY", secret)
    with pytest.raises(LoginError) as refused:
        load_account(key_env="MY_KEY")
    assert "zz" not in str(refused.value) and "MY_KEY" in str(refused.value)
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(LoginError, match="MY_KEY"):
        load_account(key_env="MY_KEY")
    with pytest.raises(LoginError, match="cannot read"):
        load_account(key_file=str(tmp_path / "missing"))


# --- the command ----------------------------------------------------------------------------------------


async def test_login_command_prints_a_token(gw, http, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    accounts = [new_account() for _ in range(4)]
    private, shared = tmp_path / "private.key", tmp_path / "shared.key"
    private.write_text(accounts[2].key.hex() + "\n")
    private.chmod(0o600)
    shared.write_text(accounts[3].key.hex())
    shared.chmod(0o644)
    runs = await asyncio.gather(
        run_cli("login", "--url", gw.v1, env=cli_env(PLUMISE_PRIVATE_KEY=accounts[0].key.hex())),
        run_cli("login", "--url", gw.url, "--key-env", "OTHER_KEY", "--form", "plain",
                env=cli_env(OTHER_KEY="0x" + accounts[1].key.hex().removeprefix("0x"))),
        run_cli("login", "--url", gw.url, "--key-file", str(private), "--form", "typed", env=cli_env()),
        run_cli("login", "--url", gw.url + "/", "--key-file", str(shared), env=cli_env()),
    )
    for account, (code, out, err) in zip(accounts, runs, strict=True):
        assert code == 0, err
        token = out.strip()
        assert "\n" not in token and account.address in err  # stdout is only the token: `$(openai-proxy login)`
        assert (await account_of(http, gw, token))["address"] == account.address
    assert all("warning" not in err for _, _, err in runs[:3])
    assert "chmod 600" in runs[3][2]  # a key file others can read is used, with a warning


async def test_login_command_failures_are_one_line_without_the_key(gw) -> None:  # type: ignore[no-untyped-def]
    bad, key = "0x" + "g1" * 32, new_account().key.hex()
    (no_key, bad_key, unreachable) = await asyncio.gather(
        run_cli("login", "--url", gw.url, env=cli_env()),
        run_cli("login", "--url", gw.url, env=cli_env(PLUMISE_PRIVATE_KEY=bad)),
        run_cli("login", "--url", "http://127.0.0.1:9", env=cli_env(PLUMISE_PRIVATE_KEY=key)),
    )
    for code, out, err in (no_key, bad_key, unreachable):
        assert code == 1 and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "PLUMISE_PRIVATE_KEY" in no_key[2]
    assert "g1g1" not in bad_key[2] and "private key" in bad_key[2]
    assert "cannot reach" in unreachable[2] and key.removeprefix("0x")[:16] not in unreachable[2]


async def test_login_command_takes_no_key_on_the_command_line() -> None:
    key = new_account().key.hex()
    option, positional, misplaced = await asyncio.gather(
        run_cli("login", "--key", key, env=cli_env()),
        run_cli("login", key, env=cli_env()),
        run_cli("login", "--key-env", key, env=cli_env()),  # the key pasted where a variable name goes
    )
    assert option[0] == 2 and "ambiguous option" in option[2]
    assert positional[0] == 2 and "unrecognized arguments" in positional[2]
    assert misplaced[0] == 1 and "NAME of an environment variable" in misplaced[2]
    assert key.removeprefix("0x")[:16] not in misplaced[2]
