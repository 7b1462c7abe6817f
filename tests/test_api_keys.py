"""What the gateway accepts as an API key: its own JWTs (every forged, stale or revoked one gets 401 in the
OpenAI envelope) and static service keys from API_KEYS."""

from __future__ import annotations

import base64
import json
import secrets
import time
import warnings
from typing import Any

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from openai import AsyncOpenAI, AuthenticationError

from .auth_support import PUBLIC_URL, assert_envelope, new_account, wallet_token
from .conftest import FREE_WALLET, JWT_SECRET

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
CHECKSUMMED = "0x52908400098527886E0F7030069857D2E4169EE7"
CLAIMS = ("sub", "address", "iat", "nbf", "exp", "jti", "iss", "aud")


@pytest.fixture
async def gw(store_url, start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"http://{node.hostport}"], public_url=PUBLIC_URL, redis_url=store_url,
                               api_keys=["k1:pro:backend", "k2-free-key:free:tester"])


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": CHECKSUMMED, "address": CHECKSUMMED.lower(), "iat": now, "nbf": now, "exp": now + 3600,
        "jti": secrets.token_hex(16), "iss": "openai-proxy", "aud": "openai-proxy",
    }
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def forge(payload: dict[str, Any], *, secret: str = JWT_SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():  # HS384/HS512 with our 49-byte test secret: PyJWT warns, we forge anyway
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, secret, algorithm=algorithm)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def models_status(http: httpx.AsyncClient, gw: Any, token: str) -> httpx.Response:
    return await http.get(f"{gw.v1}/models", headers={"Authorization": f"Bearer {token}"})


async def assert_all_refused(http: httpx.AsyncClient, gw: Any, tokens: dict[str, str], code: str) -> None:
    """Each named token gets 401 with `code` in the envelope (the name says which case failed)."""
    for name, token in tokens.items():
        response = await models_status(http, gw, token)
        assert response.status_code == 401, f"{name}: {response.status_code} {response.text}"
        assert_envelope(response, 401, code)


# Forged and stale tokens never reach the state store, so these run over the memory store only.


@pytest.fixture
async def memory_gw(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"http://{node.hostport}"])


async def test_a_well_formed_token_is_accepted(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    """The baseline the refusals below are measured against: the same claims, correctly signed."""
    response = await models_status(http, memory_gw, forge(claims()))
    assert response.status_code == 200, response.text


async def test_alg_none_is_refused(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    payload = claims()
    none_header = b64({"alg": "none", "typ": "JWT"})
    signature = forge(payload).rsplit(".", 1)[1]
    await assert_all_refused(http, memory_gw, {
        "none": f"{none_header}.{b64(payload)}.",
        "None": f"{b64({'alg': 'None', 'typ': 'JWT'})}.{b64(payload)}.",
        "none-with-a-real-signature": f"{none_header}.{b64(payload)}.{signature}",
        "pyjwt-none": jwt.encode(payload, None, algorithm="none"),
    }, "invalid_api_key")


async def test_other_algorithms_are_refused_even_with_the_right_secret(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    tokens = {algorithm: forge(claims(), algorithm=algorithm) for algorithm in ("HS384", "HS512")}
    await assert_all_refused(http, memory_gw, tokens, "invalid_api_key")


async def test_token_signed_with_another_secret_is_refused(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    token = forge(claims(), secret="another-secret-of-sufficient-length-0123456789")
    await assert_all_refused(http, memory_gw, {"other-secret": token}, "invalid_api_key")


async def test_expired_token_says_token_expired(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    now = int(time.time())
    token = forge(claims(iat=now - 7200, nbf=now - 7200, exp=now - 1))
    await assert_all_refused(http, memory_gw, {"expired": token}, "token_expired")
    async with AsyncOpenAI(base_url=memory_gw.v1, api_key=token, max_retries=0) as client:
        with pytest.raises(AuthenticationError) as refused:
            await client.models.list()
    assert refused.value.code == "token_expired"


async def test_not_yet_valid_token_is_refused(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    tokens = {"nbf+10min": forge(claims(nbf=int(time.time()) + 600)),
              "nbf+2min": forge(claims(nbf=int(time.time()) + 120))}
    await assert_all_refused(http, memory_gw, tokens, "invalid_api_key")


async def test_a_replica_whose_clock_trails_a_little_accepts_a_fresh_token(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    """Minted on a replica a few seconds ahead: `nbf` is forgiven that much (and no more, see above)."""
    now = int(time.time())
    token = forge(claims(iat=now + 5, nbf=now + 5))
    assert (await models_status(http, memory_gw, token)).status_code == 200


async def test_wrong_audience_or_issuer_is_refused(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    tokens = {
        "audience": forge(claims(aud="another-service")),
        "audience-list": forge(claims(aud=["another-service"])),
        "issuer": forge(claims(iss="someone-else")),
    }
    await assert_all_refused(http, memory_gw, tokens, "invalid_api_key")


async def test_each_missing_claim_is_refused(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    tokens = {f"without-{name}": forge(claims(**{name: None})) for name in CLAIMS}
    await assert_all_refused(http, memory_gw, tokens, "invalid_api_key")


async def test_subject_must_be_the_checksummed_address(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    tokens = {
        "sub-not-checksummed": forge(claims(sub=CHECKSUMMED.lower())),
        "address-mismatch": forge(claims(address=FREE_WALLET)),
        "sub-not-address": forge(claims(sub="alice")),
        "sub-not-string": forge(claims(sub=12345)),
    }
    await assert_all_refused(http, memory_gw, tokens, "invalid_api_key")


async def test_time_claims_that_are_not_numbers_are_401_not_500(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    tokens = {f"{name}={value!r}": forge(claims(**{name: value}))
              for name, value in (("exp", "tomorrow"), ("nbf", "now"), ("iat", [1]), ("exp", True))}
    await assert_all_refused(http, memory_gw, tokens, "invalid_api_key")


async def test_garbage_keys_are_401(memory_gw, http) -> None:  # type: ignore[no-untyped-def]
    for token in ("x", "a.b.c", "Bearer", "é" * 10, forge(claims()) + "x"):
        response = await http.get(f"{memory_gw.v1}/models", headers={"Authorization": f"Bearer {token}".encode()})
        assert_envelope(response, 401, "invalid_api_key")


# Revocation and service keys touch the state store: over both stores.


async def test_logout_revokes_the_token_and_only_that_token(gw, http) -> None:  # type: ignore[no-untyped-def]
    wallet = new_account()
    token = await wallet_token(http, gw.url, wallet)
    other = await wallet_token(http, gw.url, wallet, form="typed")
    auth = {"Authorization": f"Bearer {token}"}
    assert (await http.get(f"{gw.v1}/models", headers=auth)).status_code == 200
    response = await http.post(f"{gw.url}/api/v1/auth/logout", headers=auth)
    assert response.status_code == 200, response.text
    assert response.json()["revoked"] == jwt.decode(token, options={"verify_signature": False})["jti"]
    for path in ("/v1/models", "/api/v1/auth/me"):
        assert_envelope(await http.get(f"{gw.url}{path}", headers=auth), 401, "token_revoked")
    assert_envelope(await http.post(f"{gw.url}/api/v1/auth/logout", headers=auth), 401, "token_revoked")
    assert (await models_status(http, gw, other)).status_code == 200  # the other session is untouched


async def test_pro_service_key_works_on_v1_without_a_wallet(gw, http) -> None:  # type: ignore[no-untyped-def]
    async with AsyncOpenAI(base_url=gw.v1, api_key="k1", max_retries=0) as client:
        assert LLAMA in [model.id async for model in client.models.list()]
        reply = await client.chat.completions.with_raw_response.create(
            model=PRO_MODEL, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert reply.headers["x-ratelimit-limit-requests"] == "unlimited"
    assert reply.parse().usage is not None and reply.parse().usage.completion_tokens == 3
    account = (await http.get(f"{gw.url}/api/v1/auth/me", headers={"Authorization": "Bearer k1"})).json()
    assert account["address"] == "key:backend" and account["tier"] == "pro"
    assert account["usage_today"]["requests"] == 1


async def test_free_service_key_gets_the_free_tier(gw, http) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": "Bearer k2-free-key"}
    body = {"model": PRO_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    assert_envelope(await http.post(f"{gw.v1}/chat/completions", json=body, headers=headers), 403)
    reply = await http.post(f"{gw.v1}/chat/completions", json={**body, "model": LLAMA}, headers=headers)
    assert reply.status_code == 200 and reply.headers["x-ratelimit-remaining-requests"] == "9"


async def test_wrong_service_keys_are_401(gw, http) -> None:  # type: ignore[no-untyped-def]
    wrong = {key: key for key in ("k", "k1x", "K1", "k1:pro:backend", "backend", "key:backend", "k2-free-ke")}
    await assert_all_refused(http, gw, wrong, "invalid_api_key")


def test_service_key_entries_are_validated() -> None:
    from openai_proxy.auth.guard import parse_service_keys

    assert [k.label for k in parse_service_keys(["a:pro:ops", "b:free"])] == ["ops", "b"]
    for bad in (":pro:x", "a:gold:x", "a"):
        with pytest.raises(ValueError, match="key:tier:label"):
            parse_service_keys([bad])
