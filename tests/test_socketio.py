"""Socket.IO `/ws/inference` with python-socketio's real client against a real gateway over real devnodes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import socketio

from openai_proxy.devnode import generate_tokens
from openai_proxy.tokens import TokenCounter

from .conftest import FREE_WALLET, eventually

NS = "/ws/inference"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
PRO_MODEL = "meta-llama/Llama-3.1-70B-Instruct"
PROMPT = "Write a story about AI."
EVENTS = ("inference_response", "inference_chunk", "inference_complete", "inference_error", "connect_error")
WAIT = 10.0  # a hang guard, not a timing assertion


@dataclass
class Session:
    client: socketio.AsyncClient
    events: asyncio.Queue[tuple[str, Any]]

    async def next(self) -> tuple[str, Any]:
        return await asyncio.wait_for(self.events.get(), WAIT)

    async def ask(self, event: str, payload: Any) -> tuple[str, Any]:
        await self.client.emit(event, payload, namespace=NS)
        return await self.next()

    async def stream(self, payload: Any) -> tuple[list[str], tuple[str, Any]]:
        """The chunks of one `inference_stream`, and the event that ended it."""
        await self.client.emit("inference_stream", payload, namespace=NS)
        chunks = []
        while (received := await self.next())[0] == "inference_chunk":
            chunks.append(received[1]["data"])
        return chunks, received


@asynccontextmanager
async def session(url: str, **connect: Any) -> AsyncIterator[Session]:
    client = socketio.AsyncClient(reconnection=False)
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    for name in EVENTS:
        client.on(name, lambda data=None, name=name: events.put_nowait((name, data)), namespace=NS)
    connect.setdefault("transports", ["websocket"])
    await client.connect(url, namespaces=[NS], wait_timeout=WAIT, **connect)
    try:
        yield Session(client, events)
    finally:
        # Bounded: left to python-engineio, a polling client's disconnect waits for its pending poll to time
        # out on the server (45 s); the gateway answers that poll at once (`_Server` in api/socketio.py).
        await asyncio.wait_for(client.disconnect(), WAIT)


@pytest.fixture
async def gateway(start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    node = await start_devnode()
    return await start_gateway([f"petals+ws://{node.hostport}"])


def answer(prompt: str, tokens: int) -> str:
    return "".join(generate_tokens(prompt, tokens))


async def test_inference_answers_the_legacy_shape(gateway) -> None:  # type: ignore[no-untyped-def]
    async with session(gateway.url, auth={"token": gateway.token()}) as s:
        name, body = await s.ask("inference", {"model": LLAMA, "prompt": PROMPT, "max_tokens": 4})
    assert name == "inference_response"
    prompt_tokens = TokenCounter().count(PROMPT)
    assert body == {
        "id": body["id"], "model": LLAMA, "choices": [{"text": answer(PROMPT, 4), "finish_reason": "length"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 4, "total_tokens": prompt_tokens + 4},
    }
    assert body["id"].startswith("req_")


async def test_stream_over_polling_with_an_authorization_header(gateway) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {gateway.token()}"}
    async with session(gateway.url, headers=headers, transports=["polling"]) as s:
        chunks, (name, done) = await s.stream({"model": LLAMA, "prompt": PROMPT, "max_tokens": 6})
    assert "".join(chunks) == answer(PROMPT, 6) and len(chunks) == 6
    assert name == "inference_complete"
    prompt_tokens = TokenCounter().count(PROMPT)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 6, "total_tokens": prompt_tokens + 6}
    assert done == {"status": "done", "id": done["id"], "model": LLAMA, "finish_reason": "length", "usage": usage}


@pytest.mark.parametrize(
    ("connect", "reason"),
    [
        ({}, "Authentication required"),
        ({"auth": {"token": "not-a-jwt"}}, ""),
        ({"headers": {"Authorization": "Basic abc"}}, "Bearer"),
    ],
)
async def test_refused_connections_get_connect_error_with_a_reason(gateway, connect, reason) -> None:  # type: ignore[no-untyped-def]
    client = socketio.AsyncClient(reconnection=False)
    refusals: asyncio.Queue[Any] = asyncio.Queue()
    client.on("connect_error", refusals.put_nowait, namespace=NS)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(gateway.url, namespaces=[NS], transports=["websocket"], wait_timeout=WAIT, **connect)
    refusal = await asyncio.wait_for(refusals.get(), WAIT)
    assert reason in refusal["message"] and refusal["message"]
    assert refusal["data"] == {"code": 401}
    await client.disconnect()


@pytest.mark.parametrize(
    ("payload", "code", "param"),
    [
        ({"model": "nobody/nothing", "prompt": "x"}, 404, "model"),
        ({"model": PRO_MODEL, "prompt": "x"}, 403, "model"),
        ({"model": LLAMA}, 400, "prompt"),
        ({"model": LLAMA, "prompt": "x", "n": 2}, 400, "n"),
        ("just a string", 400, None),
    ],
)
async def test_failures_are_inference_error_with_a_status(gateway, payload, code, param) -> None:  # type: ignore[no-untyped-def]
    async with session(gateway.url, auth={"token": gateway.token()}) as s:
        for event in ("inference", "inference_stream"):
            name, error = await s.ask(event, payload)
            assert name == "inference_error"
            assert (error["code"], error["statusCode"], error["param"]) == (code, code, param)
            assert error["message"]


async def test_each_message_is_rate_limited_like_http(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"petals+ws://{node.hostport}"], free_tier_limit=2)
    http_call = await http.post(f"{gw.url}/api/v1/inference", json={"model": LLAMA, "prompt": "x", "max_tokens": 1},
                                headers=gw.headers())
    assert http_call.status_code == 200
    async with session(gw.url, auth={"token": gw.token()}) as s:
        name, _ = await s.ask("inference", {"model": LLAMA, "prompt": "x", "max_tokens": 1})
        assert name == "inference_response"
        name, error = await s.ask("inference_stream", {"model": LLAMA, "prompt": "x", "max_tokens": 1})
    assert name == "inference_error"
    assert error["code"] == 429 and error["error_code"] == "rate_limit_exceeded" and error["retry_after"] >= 1


async def test_a_revoked_token_stops_working_on_an_open_connection(gateway, http) -> None:  # type: ignore[no-untyped-def]
    token = gateway.token()
    async with session(gateway.url, auth={"token": token}) as s:
        logout = await http.post(f"{gateway.url}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"})
        assert logout.status_code == 200
        name, error = await s.ask("inference", {"model": LLAMA, "prompt": "x", "max_tokens": 1})
    assert name == "inference_error" and error["code"] == 401 and error["error_code"] == "token_revoked"


async def test_disconnect_cancels_the_node_request(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(token_delay=0.05)
    gw = await start_gateway([f"petals+ws://{node.hostport}"])
    async with session(gw.url, auth={"token": gw.token()}) as s:
        await s.client.emit("inference_stream", {"model": LLAMA, "prompt": PROMPT, "max_tokens": 500}, namespace=NS)
        assert (await s.next())[0] == "inference_chunk"  # the node is generating: hang up

    async def cancelled() -> bool:
        counters = await node.counters()
        return counters["cancelled"] == 1 and counters["in_flight"] == 0

    await eventually(cancelled)
    assert (await node.counters())["completed"] == 0

    async def usage_recorded() -> bool:  # the tokens produced before the hang-up are accounted for
        me = (await http.get(f"{gw.url}/api/v1/auth/me", headers=gw.headers())).json()
        return bool(me["usage_today"]["requests"] == 1 and me["usage_today"]["completion_tokens"] > 0)

    await eventually(usage_recorded)


async def test_http_routes_and_the_socketio_path_live_side_by_side(gateway, http) -> None:  # type: ignore[no-untyped-def]
    handshake = await http.get(f"{gateway.url}/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert handshake.status_code == 200 and handshake.text.startswith("0{")
    assert (await http.get(f"{gateway.url}/health")).json()["status"] == "ok"
    missing = await http.get(f"{gateway.url}/socket.iox")
    assert missing.status_code == 404 and "error" in missing.json()
    assert "x-request-id" not in handshake.headers and "x-request-id" in missing.headers


async def test_cors_allows_configured_origins_only(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode()
    gw = await start_gateway([f"petals+ws://{node.hostport}"], cors_origins=["https://app.example", "*"])
    url, params = f"{gw.url}/socket.io/", {"EIO": "4", "transport": "polling"}
    allowed = await http.get(url, params=params, headers={"Origin": "https://app.example"})
    assert allowed.status_code == 200
    assert allowed.headers.get_list("access-control-allow-origin") == ["https://app.example"]
    refused = await http.get(url, params=params, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 400  # "*" is dropped for Socket.IO, as in the original


async def test_deeply_nested_packets_do_not_take_the_gateway_down(gateway, http) -> None:  # type: ignore[no-untyped-def]
    url = f"{gateway.url}/socket.io/"
    handshake = await http.get(url, params={"EIO": "4", "transport": "polling"})
    sid = json.loads(handshake.text[1:])["sid"]
    params = {"EIO": "4", "transport": "polling", "sid": sid}
    await http.post(url, params=params, content=f'40{NS},{{"token":"{gateway.token(FREE_WALLET)}"}}')
    deep = "[" * 100_000 + "]" * 100_000
    for packet in (f"4{deep}", f'42{NS},["inference",{deep}]'):
        await http.post(url, params=params, content=packet)  # unguarded, the JSON decoder overflows the C stack
    assert (await http.get(f"{gateway.url}/health")).status_code == 200
    async with httpx.AsyncClient() as other:
        assert (await other.get(f"{gateway.url}/api/v1/models")).status_code == 200

