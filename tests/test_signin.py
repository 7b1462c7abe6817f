"""Wallet sign-in through a real gateway, with real eth-account signatures, over the memory store and Redis.

Every form the issue names (plain EIP-191, the issued SIWE message, EIP-712 typed data, a SIWE message the
client writes itself), then the attacks: replays, the high-s twin, wrong signers, swapped address lines,
wrong domain/chain/time, malformed signatures, nonce burning and reuse, and nonce-endpoint flooding.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from openai import AsyncOpenAI

from openai_proxy.auth.jwt import TokenService
from openai_proxy.auth.signin import NONCE_TTL, SignInService
from openai_proxy.auth.tiers import TierResolver
from openai_proxy.errors import AuthError
from openai_proxy.protocol import VerifyRequest
from openai_proxy.store import MemoryStore

from .auth_support import (
    PUBLIC_URL,
    assert_envelope,
    hand_siwe,
    high_s_twin,
    new_account,
    request_nonce,
    sign_text,
    sign_typed,
    verify,
    wallet_token,
)
from .conftest import JWT_SECRET, make_settings

CHAIN_ID = 41956
DOMAIN = urlsplit(PUBLIC_URL).netloc  # gateway.example.test:8443
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"


@pytest.fixture
async def gw(store_url, start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"http://{node.hostport}"], public_url=PUBLIC_URL, chain_id=CHAIN_ID,
                               redis_url=store_url)


@pytest.fixture
def wallet() -> LocalAccount:
    return new_account()


def client_siwe(account: LocalAccount, nonce: str, **changes: Any) -> str:
    """A SIWE message as a client library would write it for this gateway, with `changes` applied."""
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "domain": DOMAIN, "address": account.address, "uri": f"{PUBLIC_URL}/login", "chain_id": CHAIN_ID,
        "nonce": nonce, "issued_at": now, "expiration_time": now + timedelta(minutes=10),
    }
    fields.update(changes)
    return hand_siwe(**fields)


async def models_with(token: str, gw: Any) -> list[str]:
    async with AsyncOpenAI(base_url=gw.v1, api_key=token, max_retries=0) as client:
        return [model.id async for model in client.models.list()]


async def me(http: httpx.AsyncClient, gw: Any, token: str) -> dict[str, Any]:
    response = await http.get(f"{gw.url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def assert_still_signs_in(
    http: httpx.AsyncClient, gw: Any, account: LocalAccount, issued: dict[str, Any]
) -> None:
    """The nonce survived the failed attempts: the right signature over it is still accepted."""
    response = await verify(http, gw.url, {"address": account.address,
                                           "signature": sign_text(account, issued["message"])})
    assert response.status_code == 200, response.text


# --- the forms ----------------------------------------------------------------------------------------------


async def test_nonce_offers_three_forms_bound_to_one_fresh_nonce(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address.lower())
    nonce = issued["nonce"]
    assert re.fullmatch(r"[0-9a-f]{64}", nonce)  # 256 bits, and SIWE-legal (alphanumeric)
    assert issued["message"] == f"Sign this message to authenticate with Plumise Inference API.\n\nNonce: {nonce}"
    lines = issued["siwe_message"].split("\n")
    assert lines[0] == f"https://{DOMAIN} wants you to sign in with your Ethereum account:"
    assert lines[1] == wallet.address  # checksummed although we sent lower case
    assert f"URI: {PUBLIC_URL}" in lines and f"Chain ID: {CHAIN_ID}" in lines and f"Nonce: {nonce}" in lines
    typed = issued["typed_data"]
    assert set(typed) == {"types", "primaryType", "domain", "message"}
    assert typed["domain"] == {"name": "Plumise Inference API", "version": "1", "chainId": CHAIN_ID}
    assert typed["message"]["address"] == wallet.address and typed["message"]["nonce"] == nonce
    expires = datetime.fromisoformat(issued["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=4) < expires - datetime.now(UTC) <= timedelta(minutes=5, seconds=1)
    assert (await request_nonce(http, gw.url, wallet.address))["nonce"] != nonce


async def test_plain_message_sign_in_gives_an_openai_api_key(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    response = await verify(http, gw.url, {"address": wallet.address,
                                           "signature": sign_text(wallet, issued["message"])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["address"] == wallet.address and body["tier"] == "free"
    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24, seconds=1)
    assert LLAMA in await models_with(body["token"], gw)
    account = await me(http, gw, body["token"])
    assert account["address"] == wallet.address and account["tier"] == "free"
    limits = account["limits"]
    assert limits["requests_per_window"] == 10 and limits["remaining"] == 10 and limits["window_seconds"] == 3600
    assert limits["max_tokens"] == 2048
    assert LLAMA in limits["allowed_models"] and PRO_MODEL not in limits["allowed_models"]
    assert account["usage_today"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


@pytest.mark.parametrize("shape", ["message", "address"])
async def test_issued_siwe_message_signs_in(gw, http, wallet, shape) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    signature = sign_text(wallet, issued["siwe_message"])
    body = {"message": issued["siwe_message"]} if shape == "message" else {"address": wallet.address}
    response = await verify(http, gw.url, {**body, "signature": signature})
    assert response.status_code == 200, response.text
    assert response.json()["address"] == wallet.address
    assert LLAMA in await models_with(response.json()["token"], gw)


async def test_issued_typed_data_signs_in_as_eth_sign_typed_data_v4(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    response = await verify(http, gw.url, {"address": wallet.address,
                                           "signature": sign_typed(wallet, issued["typed_data"])})
    assert response.status_code == 200, response.text
    assert response.json()["tier"] == "free"
    assert (await me(http, gw, response.json()["token"]))["address"] == wallet.address


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"statement": None},
        {"scheme": "https", "resources": ("https://gateway.example.test:8443/v1", "ipfs://bafybeiemxf5abjwjbikoz4mc")},
        {"uri": PUBLIC_URL, "expiration_time": None},
        {"not_before": datetime.now(UTC) - timedelta(seconds=5)},
        {"address": "lower-case"},
    ],
    ids=["statement", "no-statement", "scheme-and-resources", "bare-uri-no-expiry", "not-before-past",
         "lower-case-address"],
)
async def test_siwe_message_built_by_the_client_signs_in(gw, http, wallet, variant) -> None:  # type: ignore[no-untyped-def]
    nonce = (await request_nonce(http, gw.url, wallet.address))["nonce"]
    if variant.get("address") == "lower-case":  # EIP-55 is a SHOULD in EIP-4361; all-lower-case is legal
        variant = {"address": wallet.address.lower()}
    text = client_siwe(wallet, nonce, **variant)
    response = await verify(http, gw.url, {"message": text, "signature": sign_text(wallet, text)})
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    assert LLAMA in await models_with(token, gw)
    assert (await me(http, gw, token))["address"] == wallet.address


async def test_pro_wallet_signs_in_as_pro_with_pro_limits(store_url, start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    pro = new_account()
    gw = await start_gateway([f"http://{node.hostport}"], public_url=PUBLIC_URL, redis_url=store_url,
                             pro_addresses=[pro.address.lower()])
    token = await wallet_token(http, gw.url, pro, form="typed")
    account = await me(http, gw, token)
    assert account["tier"] == "pro" and account["limits"]["max_tokens"] == 4096
    assert account["limits"]["requests_per_window"] is None  # unlimited
    assert PRO_MODEL in account["limits"]["allowed_models"]
    body = {"model": PRO_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    reply = await http.post(f"{gw.v1}/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    assert (await me(http, gw, token))["usage_today"]["requests"] == 1


# --- replays and the nonce --------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["plain", "siwe-message", "typed"])
async def test_an_accepted_signature_cannot_be_replayed(gw, http, wallet, form) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    if form == "plain":
        body = {"address": wallet.address, "signature": sign_text(wallet, issued["message"])}
    elif form == "typed":
        body = {"address": wallet.address, "signature": sign_typed(wallet, issued["typed_data"])}
    else:
        body = {"message": issued["siwe_message"], "signature": sign_text(wallet, issued["siwe_message"])}
    assert (await verify(http, gw.url, body)).status_code == 200
    assert_envelope(await verify(http, gw.url, body), 401)


async def test_high_s_twin_of_an_accepted_signature_is_refused_because_the_nonce_is_gone(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    signature = sign_text(wallet, issued["message"])
    twin = high_s_twin(signature)
    assert twin != signature
    assert (await verify(http, gw.url, {"address": wallet.address, "signature": signature})).status_code == 200
    assert_envelope(await verify(http, gw.url, {"address": wallet.address, "signature": twin}), 401)
    # The SIWE path too: twin of the accepted signature over the issued SIWE text.
    issued = await request_nonce(http, gw.url, wallet.address)
    signature = sign_text(wallet, issued["siwe_message"])
    assert (await verify(http, gw.url, {"message": issued["siwe_message"], "signature": signature})).status_code == 200
    twin_body = {"message": issued["siwe_message"], "signature": high_s_twin(signature)}
    assert_envelope(await verify(http, gw.url, twin_body), 401)


async def test_high_s_twin_over_a_live_nonce_is_a_valid_proof(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    """The refusal above is the nonce's doing, not a high-s rule: over an unused nonce the twin signs in."""
    issued = await request_nonce(http, gw.url, wallet.address)
    twin = high_s_twin(sign_text(wallet, issued["message"]))
    assert (await verify(http, gw.url, {"address": wallet.address, "signature": twin})).status_code == 200


async def test_nonce_cannot_be_reused_in_another_form_after_success(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    assert (await verify(http, gw.url, {"address": wallet.address,
                                        "signature": sign_text(wallet, issued["message"])})).status_code == 200
    others = [
        {"message": issued["siwe_message"], "signature": sign_text(wallet, issued["siwe_message"])},
        {"address": wallet.address, "signature": sign_typed(wallet, issued["typed_data"])},
    ]
    text = client_siwe(wallet, issued["nonce"])
    others.append({"message": text, "signature": sign_text(wallet, text)})
    for body in others:
        assert_envelope(await verify(http, gw.url, body), 401)


async def test_failed_attempts_do_not_burn_the_nonce(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    attacker = new_account()
    tampered = issued["siwe_message"].replace("Sign in to", "Transfer all funds via")
    attempts = [
        {"address": wallet.address, "signature": sign_text(attacker, issued["message"])},
        {"address": wallet.address, "signature": "0x" + "00" * 65},
        {"message": tampered, "signature": sign_text(wallet, issued["siwe_message"])},
        {"message": issued["siwe_message"], "signature": sign_text(attacker, issued["siwe_message"])},
    ]
    for body in attempts:
        assert_envelope(await verify(http, gw.url, body), 401)
    await assert_still_signs_in(http, gw, wallet, issued)


async def test_a_signature_by_another_key_is_refused(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    attacker = new_account()
    for signature in (sign_text(attacker, issued["message"]), sign_typed(attacker, issued["typed_data"]),
                      sign_text(attacker, issued["siwe_message"])):
        error = assert_envelope(await verify(http, gw.url, {"address": wallet.address, "signature": signature}), 401)
        assert error["code"] == "invalid_signature" and error["type"] == "invalid_request_error"
    await assert_still_signs_in(http, gw, wallet, issued)


async def test_signature_over_some_other_text_is_refused(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    for text in (f"Nonce: {issued['nonce']}", issued["message"] + "\n", issued["nonce"]):
        body = {"address": wallet.address, "signature": sign_text(wallet, text)}
        assert_envelope(await verify(http, gw.url, body), 401, "invalid_signature")
    await assert_still_signs_in(http, gw, wallet, issued)


async def test_swapped_address_line_is_refused(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    victim_nonce = await request_nonce(http, gw.url, wallet.address)
    attacker = new_account()
    # 1. The victim's signed message with the attacker's address put in: the signature no longer matches.
    swapped = victim_nonce["siwe_message"].replace(wallet.address, attacker.address)
    assert swapped != victim_nonce["siwe_message"]
    body = {"message": swapped, "signature": sign_text(wallet, victim_nonce["siwe_message"])}
    assert_envelope(await verify(http, gw.url, body), 401)
    # 2. The attacker signs the victim's nonce with their own address line: the nonce belongs to the victim.
    signed_by_attacker = {"message": swapped, "signature": sign_text(attacker, swapped)}
    assert_envelope(await verify(http, gw.url, signed_by_attacker), 401)
    # 3. And the other way round: the victim's message claiming the attacker's nonce.
    attacker_nonce = await request_nonce(http, gw.url, attacker.address)
    text = client_siwe(wallet, attacker_nonce["nonce"])
    assert_envelope(await verify(http, gw.url, {"message": text, "signature": sign_text(wallet, text)}), 401)
    await assert_still_signs_in(http, gw, wallet, victim_nonce)
    await assert_still_signs_in(http, gw, attacker, attacker_nonce)


@pytest.mark.parametrize(
    "change",
    [
        {"domain": "evil.example.test:8443"},
        {"domain": "gateway.example.test"},  # port dropped
        {"domain": "gateway.example.test:8443", "scheme": "http"},
        {"uri": "https://evil.example.test/login"},
        {"uri": "https://gateway.example.test:84430/login"},
        {"chain_id": 1},
        {"expiration_time": datetime.now(UTC) - timedelta(seconds=1)},
        {"not_before": datetime.now(UTC) + timedelta(minutes=30)},
        {"issued_at": datetime.now(UTC) + timedelta(minutes=30)},
        {"nonce": "abcdefgh12345678"},
    ],
    ids=["domain", "port", "scheme", "uri", "uri-port", "chain", "expired", "not-yet-valid", "issued-in-future",
         "foreign-nonce"],
)
async def test_client_siwe_that_does_not_match_this_gateway_is_refused(gw, http, wallet, change) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    fields = {"nonce": issued["nonce"], **change}
    text = client_siwe(wallet, **fields)
    error = assert_envelope(await verify(http, gw.url, {"message": text, "signature": sign_text(wallet, text)}), 401)
    assert error["code"] in ("invalid_siwe_message", "invalid_nonce")
    await assert_still_signs_in(http, gw, wallet, issued)


async def test_malformed_siwe_is_refused(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    good = client_siwe(wallet, issued["nonce"])
    for text in (good.replace("\n", "\r\n"), good + "\n", good.replace("Version: 1", "Version: 2"),
                 good.replace("URI: ", "URI:"), "hello " + issued["nonce"]):
        body = {"message": text, "signature": sign_text(wallet, text)}
        assert_envelope(await verify(http, gw.url, body), 401, "invalid_siwe_message")
    await assert_still_signs_in(http, gw, wallet, issued)


BAD_SIGNATURES = [
    "0x",
    "0x1234",
    "0x" + "ab" * 64 + "a",  # odd length
    "0x" + "ab" * 66,  # 66 bytes
    "0x" + "zz" * 65,  # not hex
    "ab" * 65,  # no 0x
    "0x" + "ab" * 64 + "1d",  # v = 29
    "0x" + "00" * 65,  # r = s = 0
    "0x" + "ff" * 64 + "1b",  # r, s >= n
]


async def test_wrong_length_or_non_hex_signatures_are_401(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    issued = await request_nonce(http, gw.url, wallet.address)
    for signature in BAD_SIGNATURES:
        for body in ({"address": wallet.address}, {"message": issued["siwe_message"]}):
            response = await verify(http, gw.url, {**body, "signature": signature})
            assert response.status_code == 401, (signature, body, response.text)
            assert_envelope(response, 401, "invalid_signature")
    await assert_still_signs_in(http, gw, wallet, issued)


async def test_nonce_issued_for_one_address_does_not_sign_in_another(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    other = new_account()
    issued = await request_nonce(http, gw.url, wallet.address)
    # `other` never asked for a nonce: there is nothing pending for it, whatever it signs.
    body = {"address": other.address, "signature": sign_text(other, issued["message"])}
    assert_envelope(await verify(http, gw.url, body), 401, "invalid_nonce")
    await assert_still_signs_in(http, gw, wallet, issued)


async def test_bad_requests_are_400_not_401(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    response = await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": "0x123"})
    assert_envelope(response, 400)
    assert response.json()["error"]["param"] == "address"
    letter = next(i for i, c in enumerate(wallet.address) if i > 1 and c.isalpha())
    wrong_checksum = wallet.address[:letter] + wallet.address[letter].swapcase() + wallet.address[letter + 1:]
    assert wrong_checksum not in (wallet.address, wallet.address.lower(), "0x" + wallet.address[2:].upper())
    assert_envelope(await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": wrong_checksum}), 400)
    assert_envelope(await verify(http, gw.url, {"signature": "0x" + "ab" * 65}), 400)


async def test_expired_nonce_is_refused() -> None:
    """Time moved, not waited for: the service and its store run on one injected clock."""
    now = [1_700_000_000.0]
    settings = make_settings(node_urls=["http://127.0.0.1:9"], public_url=PUBLIC_URL)
    store = MemoryStore(clock=lambda: now[0])
    tokens = TokenService(JWT_SECRET, lifetime=3600, issuer="openai-proxy", audience="openai-proxy",
                          clock=lambda: now[0])
    service = SignInService(store, tokens, TierResolver([]), settings, clock=lambda: now[0])
    wallet = new_account()
    issued = await service.issue(wallet.address, "127.0.0.1")
    request = VerifyRequest(address=wallet.address, signature=sign_text(wallet, issued.message))
    now[0] += NONCE_TTL + 1
    with pytest.raises(AuthError) as refused:
        await service.verify(request, "127.0.0.1")
    assert refused.value.code == "invalid_nonce"
    # A nonce still within its life is fine (the same clock, a fresh nonce).
    issued = await service.issue(wallet.address, "127.0.0.1")
    now[0] += NONCE_TTL - 1
    accepted = await service.verify(VerifyRequest(address=wallet.address, signature=sign_text(wallet, issued.message)),
                                    "127.0.0.1")
    assert accepted.address == wallet.address


# --- the nonce endpoint is rate-limited ---------------------------------------------------------------------


async def test_nonce_endpoint_is_limited_per_address(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    for _ in range(10):
        await request_nonce(http, gw.url, wallet.address)
    response = await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": wallet.address})
    assert_envelope(response, 429, "rate_limit_exceeded")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    await request_nonce(http, gw.url, new_account().address)  # another address is not affected


async def test_nonce_endpoint_is_limited_per_client_ip(gw, http) -> None:  # type: ignore[no-untyped-def]
    for _ in range(30):
        await request_nonce(http, gw.url, new_account().address)
    response = await http.post(f"{gw.url}/api/v1/auth/nonce", json={"address": new_account().address})
    assert_envelope(response, 429, "rate_limit_exceeded")
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_newer_nonces_do_not_invalidate_a_pending_sign_in_that_names_its_nonce(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    """Anyone may ask for nonces for any address. A sign-in that names its nonce (the SIWE message does, the
    address form may with `nonce`) is not disturbed by that; only the bare address form uses the latest."""
    first = await request_nonce(http, gw.url, wallet.address)
    second = await request_nonce(http, gw.url, wallet.address)
    for _ in range(3):  # someone else floods the endpoint for this address
        await request_nonce(http, gw.url, wallet.address)
    bare = {"address": wallet.address, "signature": sign_text(wallet, second["message"])}
    assert_envelope(await verify(http, gw.url, bare), 401)
    named = {**bare, "nonce": second["nonce"]}
    assert (await verify(http, gw.url, named)).status_code == 200
    typed = {"address": wallet.address, "nonce": first["nonce"], "signature": sign_typed(wallet, first["typed_data"])}
    assert (await verify(http, gw.url, typed)).status_code == 200
    assert_envelope(await verify(http, gw.url, typed), 401, "invalid_nonce")  # and still only once


async def test_a_named_nonce_must_belong_to_the_address_and_match_the_signature(gw, http, wallet) -> None:  # type: ignore[no-untyped-def]
    other = new_account()
    theirs = await request_nonce(http, gw.url, other.address)
    mine = await request_nonce(http, gw.url, wallet.address)
    stolen = {"address": wallet.address, "nonce": theirs["nonce"], "signature": sign_text(wallet, theirs["message"])}
    assert_envelope(await verify(http, gw.url, stolen), 401, "invalid_nonce")
    crossed = {"address": wallet.address, "nonce": mine["nonce"], "signature": sign_text(wallet, theirs["message"])}
    assert_envelope(await verify(http, gw.url, crossed), 401, "invalid_signature")
    made_up = {"address": wallet.address, "nonce": "0" * 64, "signature": sign_text(wallet, mine["message"])}
    assert_envelope(await verify(http, gw.url, made_up), 401, "invalid_nonce")
    await assert_still_signs_in(http, gw, other, theirs)
    await assert_still_signs_in(http, gw, wallet, mine)
