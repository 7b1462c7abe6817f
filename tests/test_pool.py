"""Routing and failover over real devnodes: weights, cooldown, retry before the first byte, continuation after it,
dead pools, and a client that leaves mid-stream."""

from __future__ import annotations

import json
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, NamedTuple

import aiohttp
import httpx
import pytest

from openai_proxy.app import node_http_client
from openai_proxy.devnode import DevnodeConfig, create_devnode_app, generate_tokens
from openai_proxy.errors import BadUpstreamResponse, NoHealthyNode
from openai_proxy.nodes.base import FinishReason, GenerationParams, NodeRequest
from openai_proxy.nodes.clients import client_for_url
from openai_proxy.nodes.clients.http import node_session
from openai_proxy.nodes.node import MIN_WEIGHT, Node, choose, weight
from openai_proxy.nodes.pool import GenerationStats, NodePool
from openai_proxy.templates import ChatMessage, get_template
from openai_proxy.tokens import TokenCounter

from .conftest import eventually, make_settings, serve_app, sse_payloads
from .fake_oracle import running_oracle

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROMPT = "Tell me about failover"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class NodeHttp(NamedTuple):
    """The gateway's two node clients: httpx (health probes, one-shot APIs) and aiohttp (streamed answers)."""

    http: httpx.AsyncClient
    session: aiohttp.ClientSession


@pytest.fixture
async def node_http() -> AsyncIterator[NodeHttp]:
    async with node_http_client(make_settings()) as client, node_session(2) as session:
        yield NodeHttp(client, session)


def new_pool(clients: NodeHttp, urls: list[str], *, seed: int = 1, clock: Clock | None = None,
             **overrides: Any) -> NodePool:
    pool = NodePool(make_settings(**overrides), TokenCounter(), rng=random.Random(seed),
                    clock=clock or time.monotonic)
    for url in urls:
        pool.add(client_for_url(url, clients.http, timeout=2, session=clients.session))
    return pool


def request(max_tokens: int = 8, messages: tuple[ChatMessage, ...] | None = None, prompt: str = PROMPT
            ) -> NodeRequest:
    params = GenerationParams(max_new_tokens=max_tokens, temperature=0.0, top_p=1.0)
    return NodeRequest(model=MODEL, prompt=prompt, prompt_tokens=5, params=params, messages=messages)


async def run(pool: NodePool, req: NodeRequest) -> tuple[str, GenerationStats, FinishReason | None]:
    stats = GenerationStats()
    pieces: list[str] = []
    finish: FinishReason | None = None
    async with aclosing(pool.generate(MODEL, req, stats)) as chunks:
        async for chunk in chunks:
            pieces.append(chunk.text)
            finish = chunk.finish_reason or finish
    return "".join(pieces), stats, finish


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- the weight rule ---------------------------------------------------------------------------------------


def test_weight_is_capacity_squared_over_one_plus_in_flight() -> None:
    assert weight(10, 0) == 100
    assert weight(10, 1) == 50
    assert weight(3, 2) == 3
    assert weight(None, 0) == weight(0, 0) == 1.0  # unknown capacity counts as 1.0
    assert weight(0.01, 5) == MIN_WEIGHT


def test_choice_follows_the_weights_with_a_seeded_rng() -> None:
    nodes = [Node(key="a", capacity=1), Node(key="b", capacity=2), Node(key="c", capacity=3, in_flight=1)]
    rng = random.Random(7)
    picks = Counter(choose(nodes, rng).key for _ in range(30_000))
    total = 1 + 4 + 4.5  # 1², 2², 3²/(1+1)
    for key, expected in (("a", 1 / total), ("b", 4 / total), ("c", 4.5 / total)):
        assert abs(picks[key] / 30_000 - expected) < 0.02, picks
    first, second = random.Random(3), random.Random(3)
    assert [choose(nodes, first).key for _ in range(100)] == [choose(nodes, second).key for _ in range(100)]


# --- cooldown ----------------------------------------------------------------------------------------------


async def test_consecutive_failures_cool_a_node_down_and_a_success_resets_them(start_devnode, node_http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(fault="fail")
    clock = Clock()
    pool = new_pool(node_http, [f"http://{node.hostport}"], clock=clock, node_max_failures=3,
                    node_cooldown_seconds=30)
    await pool.check_health()
    (entry,) = pool.nodes.values()
    for _ in range(2):
        with pytest.raises(BadUpstreamResponse):
            await run(pool, request())
    await node_http.http.post(f"{node.url}/control", json={"fault": "none"})
    assert (await run(pool, request()))[0] == "".join(generate_tokens(PROMPT, 8))
    assert entry.consecutive_failures == 0  # the success reset the streak: two more failures do not cool it
    await node_http.http.post(f"{node.url}/control", json={"fault": "fail"})
    for _ in range(3):
        assert pool.candidates(MODEL) == [entry]
        with pytest.raises(BadUpstreamResponse):
            await run(pool, request())
    assert pool.candidates(MODEL) == [] and pool.is_cooling(entry)
    with pytest.raises(NoHealthyNode):
        await run(pool, request())
    assert (await node.counters())["requests"] == 6  # the cooling node was not contacted
    await node_http.http.post(f"{node.url}/control", json={"fault": "none"})
    clock.now += 31
    assert pool.candidates(MODEL) == [entry]
    await run(pool, request())
    assert entry.consecutive_failures == 0 and entry.failures == 5 and entry.requests == 7


# --- before the first byte --------------------------------------------------------------------------------


async def test_every_kind_of_failure_before_the_first_byte_is_retried_invisibly(start_devnode, node_http) -> None:  # type: ignore[no-untyped-def]
    failing = await start_devnode(fault="fail")
    hanging = await start_devnode(fault="hang")
    empty = await start_devnode(eos_after=0)
    good = await start_devnode()
    urls = {
        "http 500": f"http://{failing.hostport}",
        "petals ok:false": f"petals+http://{failing.hostport}",
        "timeout": f"petals+ws://{hanging.hostport}",
        "empty answer": f"openai+http://{empty.hostport}",
        "connection refused": f"http://127.0.0.1:{closed_port()}",
        "good": f"petals+ws://{good.hostport}",
    }
    pool = new_pool(node_http, list(urls.values()), seed=5, node_max_attempts=6, node_max_failures=100,
                    first_token_timeout=0.3)
    for entry in pool.nodes.values():
        entry.health_ok = True  # as if each had passed a health check a moment before failing
    by_url = dict(zip(urls.values(), pool.nodes.values(), strict=True))
    expected = "".join(generate_tokens(PROMPT, 8))
    for _ in range(40):
        text, stats, finish = await run(pool, request())
        assert (text, finish) == (expected, "length")
        assert stats.nodes == [by_url[urls["good"]].url] and stats.continuations == 0
        if all(by_url[url].failures for kind, url in urls.items() if kind != "good"):
            break
    failed = {kind for kind, url in urls.items() if by_url[url].failures}
    assert failed == set(urls) - {"good"}
    assert not by_url[urls["connection refused"]].health_ok  # unreachable: out until a health check passes


async def test_a_request_never_tries_a_node_twice_nor_more_than_max_attempts(start_devnode, node_http) -> None:  # type: ignore[no-untyped-def]
    nodes = [await start_devnode(fault="fail") for _ in range(5)]
    pool = new_pool(node_http, [f"http://{n.hostport}" for n in nodes], node_max_attempts=3)
    await pool.check_health()
    with pytest.raises(BadUpstreamResponse):
        await run(pool, request())
    counts = sorted([(await n.counters())["requests"] for n in nodes])
    assert counts == [0, 0, 1, 1, 1]
    assert pool.failovers == 3


async def test_when_every_node_is_unreachable_the_answer_is_a_quick_503(node_http) -> None:  # type: ignore[no-untyped-def]
    pool = new_pool(node_http, [f"http://127.0.0.1:{closed_port()}", f"petals+ws://127.0.0.1:{closed_port()}"])
    for entry in pool.nodes.values():
        entry.health_ok = True
    with pytest.raises(NoHealthyNode):
        await run(pool, request())
    assert pool.candidates(MODEL) == []  # both are out of rotation now: the next request fails without trying
    with pytest.raises(NoHealthyNode):
        pool.require_candidates(MODEL)


# --- after the first byte ----------------------------------------------------------------------------------


async def test_a_node_dying_mid_stream_is_continued_exactly_on_others(start_devnode, node_http) -> None:  # type: ignore[no-untyped-def]
    first = await start_devnode(fault="die", die_after=3, address="0x" + "11" * 20)
    second = await start_devnode(fault="die", die_after=2, address="0x" + "22" * 20)
    third = await start_devnode(address="0x" + "33" * 20)
    pool = new_pool(node_http, [f"petals+ws://{n.hostport}" for n in (first, second, third)])
    await pool.check_health()
    entries = list(pool.nodes.values())
    for entry, capacity in zip(entries, (1000, 100, 1), strict=True):
        entry.capacity = capacity  # weights make the order first, second, third (all but certain)
    text, stats, finish = await run(pool, request(max_tokens=12))
    assert text == "".join(generate_tokens(PROMPT, 12))  # nothing repeated, nothing lost
    assert finish == "length"
    assert stats.completion_tokens == 12  # max_tokens counted the tokens already sent
    assert stats.nodes == [n.config.address for n in (first, second, third)] and stats.continuations == 2
    assert [(await n.counters())["failed"] for n in (first, second, third)] == [1, 1, 0]


async def test_a_chat_answer_is_continued_on_an_openai_node_as_raw_text(start_devnode, node_http) -> None:  # type: ignore[no-untyped-def]
    dying = await start_devnode(fault="die", die_after=4)
    openai_node = await start_devnode()
    pool = new_pool(node_http, [f"petals+ws://{dying.hostport}", f"openai+http://{openai_node.hostport}"])
    await pool.check_health()
    pool.nodes[f"http://{dying.hostport}"].capacity = 1000  # the Petals WS client is keyed by its http URL
    messages = (ChatMessage("user", "Hello there"),)
    prompt = get_template("llama3").render(messages)
    text, stats, finish = await run(pool, request(max_tokens=10, messages=messages, prompt=prompt))
    assert text == "".join(generate_tokens(prompt, 10)) and finish == "length"
    assert stats.completion_tokens == 10 and stats.continuations == 1


async def test_a_stream_cut_after_its_last_token_needs_no_continuation(start_devnode, node_http) -> None:  # type: ignore[no-untyped-def]
    dying = await start_devnode(fault="die", die_after=8)  # sends all 8 tokens, then drops without [DONE]
    spare = await start_devnode()
    pool = new_pool(node_http, [f"openai+http://{dying.hostport}", f"petals+ws://{spare.hostport}"])
    await pool.check_health()
    pool.nodes[f"http://{dying.hostport}"].capacity = 1000
    text, stats, finish = await run(pool, request(max_tokens=8))
    assert text == "".join(generate_tokens(PROMPT, 8)) and finish == "length"
    assert (await spare.counters())["requests"] == 0


# --- through the gateway -------------------------------------------------------------------------------------


async def test_the_client_sees_one_seamless_stream_across_a_node_death(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    dying = await start_devnode(fault="die", die_after=3, address="0x" + "a1" * 20)
    spare = await start_devnode(address="0x" + "b2" * 20)
    async with running_oracle() as oracle:
        oracle.add_node(dying.config.address, f"ws://{dying.hostport}")
        oracle.add_node(spare.config.address, f"ws://{spare.hostport}")
        oracle.set_benchmark(dying.config.address, 1000)  # chosen first: weight 10^6 against 1
        gw = await start_gateway([], oracle_api_url=oracle.url, allow_loopback_nodes=True,
                                 oracle_poll_interval=0.1)
        await eventually(lambda: _online(http, gw.url, 2))
        messages = [{"role": "user", "content": "Hello there"}]
        body = {"model": MODEL, "messages": messages, "max_tokens": 9, "stream": True,
                "stream_options": {"include_usage": True}}
        response = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    prompt = get_template("llama3").render([ChatMessage("user", "Hello there")])
    assert text == "".join(generate_tokens(prompt, 9))
    assert chunks[-1]["usage"]["completion_tokens"] == 9
    assert [(await n.counters())["failed"] for n in (dying, spare)] == [1, 0]


async def _online(http: httpx.AsyncClient, url: str, count: int) -> bool:
    nodes = (await http.get(f"{url}/api/v1/nodes")).json()["nodes"]
    return sum(node["status"] == "online" for node in nodes) == count


async def test_nodes_dying_under_a_running_gateway_give_503s_not_hangs(start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    configs = [DevnodeConfig(), DevnodeConfig()]
    async with serve_app(create_devnode_app(configs[0]), lifespan="off") as one, \
            serve_app(create_devnode_app(configs[1]), lifespan="off") as two:
        gw = await start_gateway([one, two], health_check_interval=60)
        await eventually(lambda: _online(http, gw.url, 2))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    streamed = await http.post(f"{gw.v1}/chat/completions", json={**body, "stream": True}, headers=gw.headers())
    payloads = sse_payloads(streamed.text)  # the stream had started: the error is in-band, with no [DONE]
    assert payloads[-1] != "[DONE]" and json.loads(payloads[-1])["error"]["code"] == "no_healthy_node"
    response = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_healthy_node"
    ready = await http.get(f"{gw.url}/ready")  # a load balancer takes this replica out until a node returns
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert set(ready.json()["healthy_nodes"].values()) == {0}


async def test_a_client_leaving_mid_stream_cancels_the_node_request(start_devnode, start_gateway, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(token_delay=0.05)
    gw = await start_gateway([f"openai+http://{node.hostport}"])
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True}
    async with http.stream("POST", f"{gw.v1}/chat/completions", json=body, headers=gw.headers()) as response:
        lines = response.aiter_lines()
        while "content" not in await anext(lines):
            pass
        assert (await node.counters())["in_flight"] == 1
    # The client is gone: within a second the node's request is cancelled and nothing is in flight.
    await eventually(lambda: _cancelled(node), within=1.0)
    nodes = (await http.get(f"{gw.url}/api/v1/nodes")).json()["nodes"]
    assert nodes[0]["inFlight"] == 0


async def _cancelled(node: Any) -> bool:
    counters = await node.counters()
    return bool(counters["cancelled"] == 1 and counters["in_flight"] == 0)


async def test_a_catalogue_alias_routes_to_nodes_that_report_its_node_model(  # type: ignore[no-untyped-def]
    start_devnode, start_gateway, http, tmp_path
) -> None:
    # The catalogue's public id differs from the name the node reports in its /health (`node_model`): routing
    # must match either, and a node serving something else must not be picked.
    aliased = await start_devnode(model="tiny/llama-local")
    other = await start_devnode(model="someone/else")
    catalogue = {"models": [{"id": "plumise/tiny", "node_model": "tiny/llama-local", "template": "plain",
                             "context_length": 2048, "tier": "free", "max_output_tokens": 64, "created": 0}]}
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps(catalogue))
    gw = await start_gateway([f"http://{aliased.hostport}", f"http://{other.hostport}"],
                             models_file=str(models_file), health_check_interval=0.1)

    async def both_checked() -> bool:
        nodes = (await http.get(f"{gw.url}/api/v1/nodes")).json()["nodes"]
        return sum(node["status"] == "online" for node in nodes) == 2

    await eventually(both_checked)
    models = (await http.get(f"{gw.v1}/models", headers=gw.headers())).json()["data"]
    assert [(m["id"], m["available"]) for m in models] == [("plumise/tiny", True)]
    for _ in range(4):
        body = {"model": "plumise/tiny", "prompt": "Hi", "max_tokens": 3}
        response = await http.post(f"{gw.v1}/completions", json=body, headers=gw.headers())
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "plumise/tiny"
    assert (await aliased.counters())["requests"] == 4
    assert (await other.counters())["requests"] == 0
