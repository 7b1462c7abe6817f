"""The agent relay (/ws/agent-relay) with real agents: websockets clients signing with real eth-account keys."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from openai_proxy.devnode import generate_tokens
from openai_proxy.templates import ChatMessage, get_template

from .conftest import eventually, sse_payloads
from .fake_oracle import FakeOracle, running_oracle

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "qwen/qwen3-32b"
HELLO = [{"role": "user", "content": "Hello there"}]

Behaviour = Callable[["Agent", dict[str, Any]], Awaitable[None]]


def llama_prompt(messages: list[dict[str, str]]) -> str:
    return get_template("llama3").render([ChatMessage(m["role"], m["content"]) for m in messages])


def agent_prompt(messages: list[dict[str, str]]) -> str:
    """What a llama-server agent continues: a final assistant message is continued in place."""
    if messages and messages[-1]["role"] == "assistant":
        return llama_prompt(messages[:-1]) + messages[-1]["content"]
    return llama_prompt(messages)


def signed_auth(account: LocalAccount, signed_model: str, timestamp: int | None = None, **changes: Any) -> str:
    """The auth message, signed over `model`; `changes` then alter what is sent (not what was signed)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    text = json.dumps({"address": account.address, "model": signed_model, "timestamp": timestamp},
                      separators=(",", ":"))
    signature = "0x" + bytes(Account.sign_message(encode_defunct(text=text), account.key).signature).hex()
    message = {"type": "auth", "address": account.address, "model": signed_model, "timestamp": timestamp,
               "signature": signature}
    return json.dumps({**message, **changes})


@dataclass
class Agent:
    ws: ClientConnection
    behaviour: Behaviour
    requests: list[dict[str, Any]] = field(default_factory=list)
    pongs: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "request":
                    self.requests.append(message)
                    task = asyncio.create_task(self.behaviour(self, message))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif message["type"] == "pong":
                    self.pongs += 1
        except ConnectionClosed:
            pass

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))


async def answer(agent: Agent, request: dict[str, Any], *, first_delay: float = 0.0, delay: float = 0.0,
                 die_after: int | None = None, stall_after: int | None = None) -> None:
    tokens = generate_tokens(agent_prompt(request["messages"]), request["maxTokens"])
    for i, token in enumerate(tokens):
        if i == die_after:
            await agent.ws.close()
            return
        if i == stall_after:
            await asyncio.Event().wait()
        await asyncio.sleep(first_delay if i == 0 else delay)
        await agent.send({"type": "chunk", "id": request["id"], "content": token})
    await agent.send({"type": "done", "id": request["id"], "usage": {"completion_tokens": len(tokens)}})


async def fail(agent: Agent, request: dict[str, Any]) -> None:
    await agent.send({"type": "error", "id": request["id"], "message": "llama-server error 500: boom"})


async def leave(agent: Agent, request: dict[str, Any]) -> None:
    await agent.ws.close()


@pytest.fixture
async def oracle() -> AsyncIterator[FakeOracle]:
    async with running_oracle() as fake:
        yield fake


@pytest.fixture
async def agents() -> AsyncIterator[Callable[..., Awaitable[Agent]]]:
    opened: list[Agent] = []
    readers: list[asyncio.Task[None]] = []

    async def start(gw: Any, account: LocalAccount, model: str = LLAMA, behaviour: Behaviour = answer) -> Agent:
        ws = await connect(f"{gw.url.replace('http://', 'ws://')}/ws/agent-relay")
        await ws.send(signed_auth(account, model))
        assert json.loads(await ws.recv()) == {"type": "auth_ok"}
        agent = Agent(ws, behaviour)
        opened.append(agent)
        readers.append(asyncio.create_task(agent.read()))
        return agent

    yield start
    for agent in opened:
        await agent.ws.close()
        for task in list(agent.tasks):
            task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


@pytest.fixture
async def relay_gateway(oracle, start_devnode, start_gateway):  # type: ignore[no-untyped-def]
    """A gateway with one static Petals node for every model (the fallback) and the fake Oracle, whose
    benchmarks make any agent with a registered benchmark the first choice."""
    fallback = await start_devnode()

    async def start(**overrides: Any) -> Any:
        gw = await start_gateway([f"petals+ws://{fallback.hostport}"], oracle_api_url=oracle.url,
                                 allow_loopback_nodes=True, oracle_poll_interval=0.05, **overrides)
        gw.fallback = fallback
        return gw

    return start


async def nodes_of(http: Any, gw: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = (await http.get(f"{gw.url}/api/v1/nodes")).json()
    return list(body["nodes"])


async def relay_node(http: Any, gw: Any, address: str) -> dict[str, Any] | None:
    body = (await http.get(f"{gw.url}/api/v1/nodes/{address}/stats")).json()
    return body.get("node") if body["found"] else None


async def chat(http: Any, gw: Any, max_tokens: int = 6, stream: bool = False, **extra: Any) -> Any:
    body = {"model": LLAMA, "messages": HELLO, "max_tokens": max_tokens, "stream": stream, **extra}
    return await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())


def streamed_text(response: Any) -> str:
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]", payloads[-1]
    chunks = [json.loads(p) for p in payloads[:-1]]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


# --- handshake -------------------------------------------------------------------------------------------


async def close_code(gw: Any, *frames: str) -> tuple[int, list[dict[str, Any]]]:
    """Send `frames`, then read until the gateway closes; the close code and what it sent before."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(10), connect(f"{gw.url.replace('http://', 'ws://')}/ws/agent-relay") as ws:
        for frame in frames:
            await ws.send(frame)
        try:
            while True:
                received.append(json.loads(await ws.recv()))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, received


async def test_handshake_failures_close_with_their_codes(relay_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = await relay_gateway(relay_auth_timeout=0.3)
    key, other = Account.create(), Account.create()
    assert await close_code(gw) == (4001, [])
    assert await close_code(gw, json.dumps({"type": "ping"})) == (4002, [])
    assert await close_code(gw, "not json") == (4002, [])
    missing = {"type": "auth_error", "message": "Missing auth fields"}
    assert await close_code(gw, json.dumps({"type": "auth", "address": key.address})) == (4003, [missing])
    assert await close_code(gw, signed_auth(key, LLAMA, timestamp=0)) == (4003, [missing])
    assert (await close_code(gw, signed_auth(key, LLAMA, address="0x1234")))[0] == 4003
    drift = {"type": "auth_error", "message": "Timestamp too old or too far in future"}
    assert await close_code(gw, signed_auth(key, LLAMA, timestamp=int(time.time()) - 301)) == (4004, [drift])
    # 302, not 301: int() drops up to a second, and signing and sending take time before the gateway looks
    assert await close_code(gw, signed_auth(key, LLAMA, timestamp=int(time.time()) + 302)) == (4004, [drift])
    invalid = {"type": "auth_error", "message": "Invalid signature"}
    assert await close_code(gw, signed_auth(key, LLAMA, address=other.address)) == (4005, [invalid])
    assert await close_code(gw, signed_auth(key, LLAMA, model=QWEN)) == (4005, [invalid])  # signed over another
    assert await close_code(gw, signed_auth(key, LLAMA, signature="0x" + "ab" * 65)) == (4005, [invalid])


# --- serving ---------------------------------------------------------------------------------------------


async def test_an_agent_serves_requests_with_the_original_messages(relay_gateway, agents, oracle, http) -> None:  # type: ignore[no-untyped-def]
    account = Account.create()
    oracle.set_benchmark(account.address, 1000)
    gw = await relay_gateway()
    agent = await agents(gw, account)
    await eventually(lambda: _capacity(http, gw, account.address, 1000))
    response = await chat(http, gw, max_tokens=5, temperature=0, top_p=0.5)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "".join(generate_tokens(llama_prompt(HELLO), 5))
    (request,) = agent.requests
    assert request["id"].startswith("req-")
    assert {k: v for k, v in request.items() if k != "id"} == {
        "type": "request", "messages": HELLO, "maxTokens": 5, "temperature": 0.0, "topP": 0.5, "stream": True}
    node = await relay_node(http, gw, account.address.lower())
    assert node is not None
    assert (node["kind"], node["source"], node["relayConnected"], node["status"]) == ("relay", "relay", True,
                                                                                       "online")
    assert node["models"] == [LLAMA] and node["requests"] == 1
    await agent.send({"type": "ping"})
    await eventually(lambda: _true(agent.pongs == 1))
    await agent.send({"type": "chunk", "id": "req-unknown", "content": "ignored"})  # unknown id: ignored
    await agent.ws.send("not json")  # ignored too
    assert (await chat(http, gw, max_tokens=2)).status_code == 200


async def _true(value: bool) -> bool:
    return value


async def _capacity(http: Any, gw: Any, address: str, capacity: float) -> bool:
    node = await relay_node(http, gw, address)
    return node is not None and node["capacity"] == capacity


async def test_an_agent_dying_mid_stream_is_continued_on_another_node(relay_gateway, agents, oracle, http) -> None:  # type: ignore[no-untyped-def]
    account = Account.create()
    oracle.set_benchmark(account.address, 1000)
    gw = await relay_gateway()
    await agents(gw, account, behaviour=functools.partial(answer, die_after=3))
    await eventually(lambda: _capacity(http, gw, account.address, 1000))
    response = await chat(http, gw, max_tokens=10, stream=True, stream_options={"include_usage": True})
    assert streamed_text(response) == "".join(generate_tokens(llama_prompt(HELLO), 10))
    assert json.loads(sse_payloads(response.text)[-2])["usage"]["completion_tokens"] == 10
    node = await relay_node(http, gw, account.address)
    assert node is not None and not node["relayConnected"] and node["status"] == "offline"
    assert (await gw.fallback.counters())["requests"] == 1  # the fallback finished the answer


async def test_pending_requests_fail_at_once_when_their_agent_leaves(relay_gateway, agents, oracle, http) -> None:  # type: ignore[no-untyped-def]
    account = Account.create()
    oracle.set_benchmark(account.address, 1000)
    gw = await relay_gateway(first_token_timeout=60)  # a hang until a deadline would exceed the client's 30 s
    agent = await agents(gw, account, behaviour=lambda agent, request: asyncio.sleep(3600))
    await eventually(lambda: _capacity(http, gw, account.address, 1000))
    calls = [asyncio.create_task(chat(http, gw, max_tokens=4)) for _ in range(3)]
    await eventually(lambda: _true(len(agent.requests) == 3))
    await agent.ws.close()
    answers = await asyncio.gather(*calls)
    expected = "".join(generate_tokens(llama_prompt(HELLO), 4))
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == [expected] * 3


async def test_a_new_connection_replaces_the_old_one_without_being_unregistered(relay_gateway, agents, oracle,  # type: ignore[no-untyped-def]
                                                                               http) -> None:
    account = Account.create()
    oracle.set_benchmark(account.address, 1000)
    gw = await relay_gateway()
    first = await agents(gw, account)
    second = await agents(gw, account)
    async with asyncio.timeout(10):
        await first.ws.wait_closed()
    assert first.ws.close_code == 4010 and first.ws.close_reason == "Replaced by new connection"
    await eventually(lambda: _capacity(http, gw, account.address, 1000))
    node = await relay_node(http, gw, account.address)
    assert node is not None and node["relayConnected"]  # the old socket's close did not unregister the new
    assert (await chat(http, gw, max_tokens=3)).status_code == 200
    assert (len(first.requests), len(second.requests)) == (0, 1)
    assert [n["address"] for n in await nodes_of(http, gw)].count(account.address.lower()) == 1


async def test_one_first_token_deadline_then_a_fresh_idle_deadline_per_chunk(relay_gateway, agents, oracle,  # type: ignore[no-untyped-def]
                                                                             http) -> None:
    steady, stalling = Account.create(), Account.create()
    oracle.set_benchmark(steady.address, 1000)
    gw = await relay_gateway(first_token_timeout=0.4, token_idle_timeout=0.4)
    # 0.2 s to the first chunk, then one every 0.2 s: the whole answer takes far longer than either deadline.
    steady_agent = await agents(gw, steady, behaviour=functools.partial(answer, first_delay=0.2, delay=0.2))
    await eventually(lambda: _capacity(http, gw, steady.address, 1000))
    response = await chat(http, gw, max_tokens=5, stream=True)
    assert streamed_text(response) == "".join(generate_tokens(llama_prompt(HELLO), 5))
    steady_node = await relay_node(http, gw, steady.address)
    assert steady_node is not None and steady_node["failures"] == 0
    oracle.set_benchmark(stalling.address, 1_000_000)
    await agents(gw, stalling, behaviour=functools.partial(answer, stall_after=2))
    await eventually(lambda: _capacity(http, gw, stalling.address, 1_000_000))
    response = await chat(http, gw, max_tokens=6, stream=True)
    assert streamed_text(response) == "".join(generate_tokens(llama_prompt(HELLO), 6))  # continued elsewhere
    # ... by the steady agent (the next weight): the same turns plus the partial answer as an assistant turn
    continuation = steady_agent.requests[-1]
    assert continuation["messages"] == [*HELLO, {"role": "assistant",
                                                 "content": "".join(generate_tokens(llama_prompt(HELLO), 2))}]
    assert continuation["maxTokens"] == 4
    stalled = await relay_node(http, gw, stalling.address)
    assert stalled is not None and stalled["failures"] == 1


async def test_an_agent_and_an_http_node_of_one_address_are_one_node(relay_gateway, agents, oracle, http,  # type: ignore[no-untyped-def]
                                                                    start_devnode) -> None:
    account = Account.create()
    address = account.address.lower()
    http_node = await start_devnode(model=QWEN, address=address)
    oracle.add_node(account.address, http_node.url, [QWEN])
    oracle.set_benchmark(account.address, 1000)  # over the fallback, whichever way it is reached
    gw = await relay_gateway()
    await eventually(lambda: _kind(http, gw, address, "plumise", True))
    agent = await agents(gw, account, model=QWEN)
    await eventually(lambda: _kind(http, gw, address, "relay", True))
    assert [n["address"] for n in await nodes_of(http, gw)].count(address) == 1
    body = {"model": QWEN, "messages": HELLO, "max_tokens": 3}
    assert (await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())).status_code == 200
    assert len(agent.requests) == 1 and (await http_node.counters())["requests"] == 0  # the relay is preferred
    await agent.ws.close()
    await eventually(lambda: _kind(http, gw, address, "plumise", True))
    assert (await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())).status_code == 200
    assert (await http_node.counters())["completed"] == 1


async def _kind(http: Any, gw: Any, address: str, kind: str, online: bool) -> bool:
    node = await relay_node(http, gw, address)
    return node is not None and node["kind"] == kind and (node["status"] == "online") == online


async def test_agent_failure_counters_persist_across_requests_and_reconnections(relay_gateway, agents, http) -> None:  # type: ignore[no-untyped-def]
    account = Account.create()
    gw = await relay_gateway(node_max_failures=2, node_cooldown_seconds=600)
    await http.post(f"{gw.fallback.url}/control", json={"model": QWEN})  # the agent is the only Llama node
    await eventually(lambda: _true(True))
    agent = await agents(gw, account, behaviour=fail)
    for _ in range(2):
        assert (await chat(http, gw)).status_code == 502
    node = await relay_node(http, gw, account.address)
    assert node is not None and node["coolingDown"] and node["failures"] == 2
    assert (await chat(http, gw)).status_code == 503 and len(agent.requests) == 2
    await agent.ws.close()
    again = await agents(gw, account, behaviour=fail)
    node = await relay_node(http, gw, account.address)
    assert node is not None and node["coolingDown"] and node["failures"] == 2
    assert (await chat(http, gw)).status_code == 503 and again.requests == []
