"""A table of attacks against a real `openai-proxy serve` process over a real devnode, one test per attack.

Every refusal must be the OpenAI error envelope with the right status, must come back fast (a hang guard, not a
timing assertion), must not reach a node when the request is bad, and must leave the process serving.
Covered in depth elsewhere and only referenced here: SIWE / sign-in forgeries of every form
(tests/test_siwe.py, tests/test_signin.py), SSRF through Oracle URLs (tests/test_ssrf.py,
tests/test_discovery.py), relay agents impersonating another address (tests/test_relay.py, close code 4005),
and CORS in full (tests/test_cors.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ..reliability.hostile import FAST_MODEL, MAX_BODY, ORACLE_KEY, ORIGIN, Hostile
from ..reliability.processes import JWT_SECRET, mint, wallet

LLAMA = FAST_MODEL
USER = wallet()


class Target:
    """The gateway under attack (the session's hostile gateway) and the node its LLAMA requests reach."""

    def __init__(self, hostile: Hostile) -> None:
        self.gateway, self.node = hostile.gateway, hostile.fast
        self.url = hostile.url
        self.auth = {"Authorization": f"Bearer {mint(USER)}"}

    async def node_requests(self) -> int:
        async with httpx.AsyncClient() as http:
            count: int = (await http.get(f"{self.node.url}/control")).json()["requests"]
            return count


@pytest.fixture
def target(hostile: Hostile) -> Target:
    return Target(hostile)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


@pytest.fixture(autouse=True)
async def still_serving(target: Target, http: httpx.AsyncClient) -> AsyncIterator[None]:
    """After every attack the same process still answers a real request."""
    yield
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 2}
    response = await http.post(f"{target.url}/v1/chat/completions", json=body, headers=target.auth)
    assert response.status_code == 200, response.text
    assert target.gateway.alive()


def envelope(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


async def raw(target: Target, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client-side normalisation) and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", target.gateway.port)
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    writer.close()
    return int(lines[0].split()[1]), headers, body


# --- sizes -------------------------------------------------------------------------------------------------


async def test_oversized_body_declared_is_413_before_it_is_read(target, http) -> None:  # type: ignore[no-untyped-def]
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {target.auth['Authorization']}\r\nContent-Length: {MAX_BODY * 50}\r\n\r\n").encode()
    status, headers, body = await raw(target, head)  # not one byte of the 400 MB is sent
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


async def test_oversized_body_streamed_without_length_is_413(target, http) -> None:  # type: ignore[no-untyped-def]
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 65536 + 16):
            yield b" " * 65536  # 9 MB of chunked body, no Content-Length

    response = await http.post(f"{target.url}/v1/chat/completions", content=chunks(), headers=target.auth)
    envelope(response, 413, "payload_too_large")


async def test_oversized_header_block_is_431(target, http) -> None:  # type: ignore[no-untyped-def]
    headers = {f"x-filler-{i}": "v" * 1000 for i in range(20)}
    envelope(await http.get(f"{target.url}/v1/models", headers={**headers, **target.auth}), 431)


@pytest.mark.parametrize("smuggle", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
], ids=["CL+TE", "two lengths", "bad TE"])
async def test_request_smuggling_heads_are_refused(target, smuggle) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await raw(target, b"POST /v1/models HTTP/1.1\r\nHost: x\r\n" + smuggle + b"\r\nhello")
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


# --- hostile JSON ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"model": "x", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"model": "x", "messages": [{"role": "user", "content": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}]}",
], ids=["nested array", "nested messages", "nested objects"])
async def test_deeply_nested_json_is_400_and_the_process_survives(target, http, raw_body) -> None:  # type: ignore[no-untyped-def]
    response = await http.post(f"{target.url}/v1/chat/completions", content=raw_body,
                               headers={**target.auth, "content-type": "application/json"})
    envelope(response, 400, "invalid_json")


async def test_invalid_utf8_is_400(target, http) -> None:  # type: ignore[no-untyped-def]
    body = b'{"model": "' + LLAMA.encode() + b'", "messages": [{"role": "user", "content": "\xff\xfe\xc0"}]}'
    envelope(await http.post(f"{target.url}/v1/chat/completions", content=body,
                             headers={**target.auth, "content-type": "application/json"}), 400)


@pytest.mark.parametrize(("literal", "param"), [
    (b'"temperature": NaN', "temperature"), (b'"top_p": Infinity', "top_p"), (b'"temperature": -Infinity',
     "temperature"), (b'"temperature": 1e999', "temperature"), (b'"max_tokens": -1', "max_tokens"),
    (b'"max_tokens": 0', "max_tokens"), (b'"temperature": -0.5', "temperature"), (b'"n": -3', "n"),
    (b'"max_tokens": 1000000000000', "max_tokens"), (b'"max_tokens": 123456789012345678901234567890', "max_tokens"),
    (b'"n": 1000000', "n"), (b'"presence_penalty": NaN', "presence_penalty"), (b'"seed": 1e400', "seed"),
])
async def test_negative_nan_infinite_and_huge_numbers_are_400(target, http, literal, param) -> None:  # type: ignore[no-untyped-def]
    before = await target.node_requests()
    body = b'{"model": "' + LLAMA.encode() + b'", "messages": [{"role": "user", "content": "hi"}], ' + literal + b"}"
    error = envelope(await http.post(f"{target.url}/v1/chat/completions", content=body,
                                     headers={**target.auth, "content-type": "application/json"}), 400)
    assert error["param"] == param
    assert await target.node_requests() == before


@pytest.mark.parametrize(("patch", "param"), [
    ({"messages": "hello"}, "messages"), ({"messages": {}}, "messages"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "root", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"model": 7}, "model"), ({"model": ["a"]}, "model"), ({"model": "x" * 10_000}, "model"),
    ({"stream": [1]}, "stream"), ({"max_tokens": "ten"}, "max_tokens"), ({"stop": {"a": 1}}, "stop"),
    ({"stop": ["a"] * 100}, "stop"), ({"temperature": "hot"}, "temperature"), ({"n": True and 1.5}, "n"),
])
async def test_wrong_types_are_400_naming_the_param(target, http, patch, param) -> None:  # type: ignore[no-untyped-def]
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **patch}
    error = envelope(await http.post(f"{target.url}/v1/chat/completions", json=body, headers=target.auth), 400)
    assert error["param"] == param


@pytest.mark.parametrize("prompt", [["hello"] * 10_000, [[1, 2, 3]] * 10_000, list(range(10_000))],
                         ids=["10k strings", "10k token lists", "10k token ids"])
async def test_a_prompt_array_of_10000_items_is_400_without_a_node_call(target, http, prompt) -> None:  # type: ignore[no-untyped-def]
    before = await target.node_requests()
    started = time.monotonic()
    response = await http.post(f"{target.url}/v1/completions", json={"model": LLAMA, "prompt": prompt, "max_tokens": 1},
                               headers=target.auth)
    error = envelope(response, 400)
    assert error["param"] == "prompt"
    assert await target.node_requests() == before
    print(f"\n10,000-item prompt refused in {time.monotonic() - started:.3f} s")


# --- names that try to become headers or paths ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["x\r\nSet-Cookie: a=b", "x\nSet-Cookie: a=b", "x\r\n\r\nHTTP/1.1 200 OK"])
async def test_a_model_name_is_never_reflected_as_a_header(target, http, model) -> None:  # type: ignore[no-untyped-def]
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"}), ("/api/v1/inference", {"prompt": "hi"})):
        for stream in (False, True):
            response = await http.post(f"{target.url}{path}", json={"model": model, "stream": stream, **body},
                                       headers=target.auth)
            assert response.status_code in (400, 404), response.text
            assert "set-cookie" not in response.headers
            assert all("\n" not in value and "\r" not in value for value in response.headers.values())


@pytest.mark.parametrize("path", [
    "/v1/models/../../etc/passwd", "/v1/models/%2e%2e/%2e%2e/etc/passwd", "/v1/models/..%2f..%2fetc%2fpasswd",
    "/v1/models/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/v1/models/../../../etc/passwd",
    "/api/docs/assets/../../../../etc/passwd", "/api/docs/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/api/docs/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2fsettings.py", "/v1/models/x%0d%0aSet-Cookie:%20a=b",
    "/api/docs/assets/%00", "//etc/passwd",
])
async def test_path_traversal_finds_nothing(target, path) -> None:  # type: ignore[no-untyped-def]
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {target.auth['Authorization']}\r\n\r\n"
    status, headers, body = await raw(target, request.encode())
    assert status in (400, 404), (status, body[:300])
    assert b"root:" not in body and b"BaseSettings" not in body
    assert "set-cookie" not in headers
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


# --- JWT tampering ---------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    head, payload, signature = token.split(".")
    return json.loads(_unb64(head)), json.loads(_unb64(payload)), signature


def _join(head: dict[str, Any], payload: dict[str, Any], signature: str) -> str:
    return ".".join([_b64(json.dumps(head).encode()), _b64(json.dumps(payload).encode()), signature])


def _tampered(kind: str) -> str:
    import hashlib
    import hmac

    token = mint(USER)
    head, payload, signature = _parts(token)
    other = wallet()
    if kind == "payload edited":
        return _join(head, {**payload, "sub": other, "address": other.lower()}, signature)
    if kind == "expiry extended":
        return _join(head, {**payload, "exp": payload["exp"] + 10**6}, signature)
    if kind == "signature stripped":
        return token.rsplit(".", 1)[0] + "."
    if kind == "signature truncated":
        return token[:-4]
    if kind == "alg none":
        return _join({"alg": "none", "typ": "JWT"}, payload, "")
    if kind == "alg None":
        return _join({"alg": "None", "typ": "JWT"}, payload, "")
    if kind in ("alg RS256", "alg ES256", "alg HS512"):
        return _join({**head, "alg": kind.split()[1]}, payload, signature)
    if kind == "HS512 with the right key":
        import jwt as pyjwt

        return pyjwt.encode(payload, JWT_SECRET, algorithm="HS512")
    if kind in ("HS256 with a wrong key", "HS256 with an empty key"):
        key = b"" if "empty" in kind else b"not-the-gateway-secret-0123456789abcdef"
        signing = f"{token.split('.')[0]}.{token.split('.')[1]}".encode()
        return f"{signing.decode()}.{_b64(hmac.new(key, signing, hashlib.sha256).digest())}"
    if kind == "kid and jku injected":
        return _join({**head, "kid": "../../dev/null", "jku": "http://127.0.0.1:1/keys"}, payload, signature)
    if kind == "two tokens glued":
        return token + "." + token
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "payload edited", "expiry extended", "signature stripped", "signature truncated", "alg none", "alg None",
    "alg RS256", "alg ES256", "alg HS512", "HS512 with the right key", "HS256 with a wrong key",
    "HS256 with an empty key", "kid and jku injected", "two tokens glued",
])
async def test_tampered_tokens_are_401(target, http, kind) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {_tampered(kind)}"}
    envelope(await http.get(f"{target.url}/v1/models", headers=headers), 401)
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    envelope(await http.post(f"{target.url}/v1/chat/completions", json=body, headers=headers), 401)


# --- sign-in ---------------------------------------------------------------------------------------------------


async def test_a_replayed_sign_in_and_a_forged_one_are_401(target, http) -> None:  # type: ignore[no-untyped-def]
    """End to end against the process; every form and every SIWE forgery is in tests/test_siwe.py and
    tests/test_signin.py."""
    account, impostor = Account.create(), Account.create()
    nonce = (await http.post(f"{target.url}/api/v1/auth/nonce", json={"address": account.address})).json()
    forged = "0x" + bytes(impostor.sign_message(encode_defunct(text=nonce["message"])).signature).hex()
    verify = f"{target.url}/api/v1/auth/verify"
    envelope(await http.post(verify, json={"address": account.address, "signature": forged}), 401)
    signature = "0x" + bytes(account.sign_message(encode_defunct(text=nonce["message"])).signature).hex()
    first = await http.post(verify, json={"address": account.address, "signature": signature})
    assert first.status_code == 200, first.text
    envelope(await http.post(verify, json={"address": account.address, "signature": signature}), 401)


# --- the Oracle report key ---------------------------------------------------------------------------------


async def test_report_key_guesses_are_401_and_checked_before_the_body(target, http) -> None:  # type: ignore[no-untyped-def]
    url = f"{target.url}/api/v1/report"
    for guess in ("", "a", ORACLE_KEY[:-1], ORACLE_KEY + "0", ORACLE_KEY.upper()):
        envelope(await http.post(url, content=b"{not json", headers={"x-api-key": guess}), 401)


async def test_report_key_brute_force_is_rate_limited(target, http) -> None:  # type: ignore[no-untyped-def]
    from openai_proxy.api.report import KEY_GUESSES_PER_WINDOW

    url = f"{target.url}/api/v1/report"
    statuses = [(await http.post(url, json={}, headers={"x-api-key": f"guess-{i}"})).status_code for i in range(100)]
    # Earlier tests against this shared process made a few wrong guesses of their own from this address.
    first_refusal = statuses.index(429)
    assert 0 < first_refusal <= KEY_GUESSES_PER_WINDOW and set(statuses[:first_refusal]) == {401}
    assert set(statuses[first_refusal:]) == {429}
    refused = await http.get(f"{url}/agents", headers={"x-api-key": ORACLE_KEY})
    envelope(refused, 429)  # even the right key, from the guessing address, until the window frees
    assert int(refused.headers["retry-after"]) > 0


# --- relay agents -----------------------------------------------------------------------------------------------


async def test_relay_garbage_and_oversized_frames_do_not_hurt_the_gateway(target) -> None:  # type: ignore[no-untyped-def]
    url = target.url.replace("http://", "ws://") + "/ws/agent-relay"
    for frame in ("", "\x00" * 1000, "[" * 100_000, json.dumps({"type": "auth", "address": ["x"], "model": {}}),
                  json.dumps({"type": "auth", "address": "0x" + "1" * 40, "model": "m", "timestamp": 1e308,
                              "signature": "0x" + "00" * 65})):
        async with connect(url) as ws:
            await ws.send(frame)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            assert closed.value.rcvd is not None and 4000 <= closed.value.rcvd.code < 4100
    async with connect(url, max_size=None) as ws:  # a frame over the gateway's WebSocket size limit
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send("x" * (20 * 1024 * 1024))
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


# --- CORS ------------------------------------------------------------------------------------------------------


async def test_a_preflight_from_an_origin_not_configured_is_not_allowed(target, http) -> None:  # type: ignore[no-untyped-def]
    request = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    response = await http.options(f"{target.url}/v1/chat/completions", headers=request)
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    allowed = await http.options(f"{target.url}/v1/chat/completions", headers={**request, "Origin": ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN


def test_the_log_never_echoes_attack_payloads_as_separate_lines(target) -> None:  # type: ignore[no-untyped-def]
    """Every line of the gateway's log is one JSON object: a CR/LF in a model name or path cannot forge lines."""
    for line in Path(target.gateway.log_path).read_text().splitlines():
        if line.strip():
            json.loads(line)
