"""Oracle discovery against a fake Oracle and real devnodes: promotion after health, SSRF refusals, merging with
static nodes by address, capacities, topology, and an Oracle outage that keeps the pool."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from openai_proxy.app import node_http_client
from openai_proxy.catalog import builtin_catalog
from openai_proxy.nodes.clients import client_for_url
from openai_proxy.nodes.discovery import OracleDiscovery
from openai_proxy.nodes.pool import NodePool
from openai_proxy.tokens import TokenCounter

from .conftest import eventually, make_settings
from .fake_oracle import FakeOracle, running_oracle

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "qwen/qwen3-32b"
ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20
CAROL = "0x" + "c3" * 20


@pytest.fixture
async def oracle() -> AsyncIterator[FakeOracle]:
    async with running_oracle() as fake:
        yield fake


@pytest.fixture
async def node_http() -> AsyncIterator[httpx.AsyncClient]:
    async with node_http_client(make_settings()) as client:
        yield client


def discovery(oracle: FakeOracle, http: httpx.AsyncClient, static: list[str] = (), **overrides: Any  # type: ignore[assignment]
              ) -> tuple[NodePool, OracleDiscovery]:
    settings = make_settings(oracle_api_url=oracle.url, **{"allow_loopback_nodes": True, **overrides})
    pool = NodePool(settings, TokenCounter(), rng=random.Random(1))
    for url in static:
        pool.add(client_for_url(url, http, timeout=2))
    return pool, OracleDiscovery(settings, http, pool, builtin_catalog().ids)


async def test_discovered_nodes_serve_only_once_their_own_health_says_ok(oracle, node_http, start_devnode) -> None:  # type: ignore[no-untyped-def]
    ready = await start_devnode(address=ALICE)
    loading = await start_devnode(address=BOB, loading=True)
    oracle.add_node(ALICE, ready.url, [LLAMA])
    oracle.add_node(BOB, loading.url, [LLAMA])
    pool, finder = discovery(oracle, node_http)
    assert await finder.poll()
    alice, bob = pool.by_address(ALICE), pool.by_address(BOB)
    assert alice is not None and bob is not None
    assert alice.source == bob.source == "oracle" and alice.kind == "plumise"
    assert alice.healthy and not bob.healthy  # {"status": "loading"} is not healthy
    assert pool.candidates(LLAMA) == [alice]
    assert pool.candidates(QWEN) == []  # the Oracle says they serve Llama only
    await node_http.post(f"{loading.url}/control", json={"loading": False})
    await pool.check_health()
    assert set(pool.candidates(LLAMA)) == {alice, bob}


async def test_new_nodes_wait_for_a_health_check_before_joining(oracle, node_http, start_devnode) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=ALICE)
    pool, finder = discovery(oracle, node_http)
    assert await finder.poll() and pool.nodes == {}
    oracle.add_node(ALICE, node.url)
    await node_http.post(f"{node.url}/control", json={"loading": True, "address": ALICE})
    assert await finder.poll()
    (entry,) = pool.nodes.values()
    assert not entry.healthy and entry.last_health_check is not None  # checked at once, and refused
    await node_http.post(f"{node.url}/control", json={"loading": False, "address": ALICE})
    assert await finder.poll() and not entry.healthy  # polling alone does not promote: health checks do
    await pool.check_health()
    assert entry.healthy and pool.candidates(LLAMA) == [entry]


async def test_unsafe_oracle_urls_never_join(oracle, node_http, start_devnode) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=ALICE)
    oracle.add_node(ALICE, node.url)  # loopback: refused unless ALLOW_LOOPBACK_NODES
    oracle.add_node(BOB, "http://169.254.169.254/latest")
    oracle.add_node(CAROL, "http://0x7f.1:1/")
    oracle.add_node("0x" + "d4" * 20, "ftp://8.8.8.8/")
    pool, finder = discovery(oracle, node_http, allow_loopback_nodes=False)
    assert await finder.poll()
    assert pool.nodes == {}
    pool, finder = discovery(oracle, node_http, allow_loopback_nodes=True)
    assert await finder.poll()
    assert {n.address for n in pool.nodes.values()} == {ALICE, CAROL}  # metadata and ftp: refused anyway


async def test_an_oracle_outage_keeps_the_last_known_pool(oracle, node_http, start_devnode) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=ALICE)
    oracle.add_node(ALICE, node.url)
    oracle.set_benchmark(ALICE, 40)
    pool, finder = discovery(oracle, node_http)
    assert await finder.poll()
    (entry,) = pool.nodes.values()
    oracle.down = True
    assert not await finder.poll()
    assert list(pool.nodes.values()) == [entry] and entry.healthy and entry.capacity == 40
    oracle.down = False
    oracle.nodes.clear()  # back, and the node has left the Oracle's list: it leaves the pool
    assert await finder.poll()
    assert pool.nodes == {}


async def test_static_and_oracle_entries_of_one_node_merge_by_url_and_address(oracle, node_http, start_devnode) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(address=ALICE)
    moving = await start_devnode(address=BOB)
    elsewhere = await start_devnode(address=BOB)
    oracle.add_node(ALICE, f"{node.url}/", [LLAMA])
    oracle.add_node(BOB, moving.url)
    oracle.set_benchmark(ALICE, 25)
    pool, finder = discovery(oracle, node_http, static=[node.url])
    await pool.check_health()
    static = pool.nodes[node.url]
    static.requests = 7
    assert await finder.poll()
    assert len(pool.nodes) == 2
    assert pool.by_address(ALICE) is static and static.source == "static"  # one entry, its counters kept
    assert static.address_verified and static.capacity == 25 and static.models() == {LLAMA}
    bob = pool.by_address(BOB)
    assert bob is not None and bob.healthy
    bob.requests = 3
    oracle.nodes[1]["endpoint"] = elsewhere.url  # the node moved: same entry, new URL, checked again
    assert await finder.poll()
    assert pool.by_address(BOB) is bob and bob.url == elsewhere.url and bob.requests == 3 and bob.healthy


async def test_topology_adds_standalone_nodes_and_pipeline_heads_only(oracle, node_http, start_devnode) -> None:  # type: ignore[no-untyped-def]
    standalone = await start_devnode(address=ALICE)
    head = await start_devnode(address=BOB)
    middle = await start_devnode(address=CAROL)
    oracle.topology[QWEN] = [
        {"nodeAddress": BOB, "httpEndpoint": head.url, "grpcEndpoint": "g:1", "pipelineOrder": 0, "ready": True,
         "layerStart": 0, "layerEnd": 32, "benchmarkTokPerSec": 12},
        {"nodeAddress": CAROL, "httpEndpoint": middle.url, "grpcEndpoint": "g:2", "pipelineOrder": 1,
         "ready": True, "layerStart": 32, "layerEnd": 64},
        {"nodeAddress": ALICE, "httpEndpoint": standalone.url, "grpcEndpoint": f"standalone://{ALICE}",
         "pipelineOrder": 999, "ready": True, "layerStart": 0, "layerEnd": 64},
        {"nodeAddress": "0x" + "d4" * 20, "httpEndpoint": standalone.url, "pipelineOrder": 999, "ready": False},
    ]
    pool, finder = discovery(oracle, node_http)
    assert await finder.poll()
    assert {n.address for n in pool.candidates(QWEN)} == {ALICE, BOB}
    assert pool.candidates(LLAMA) == []
    head_node = pool.by_address(BOB)
    assert head_node is not None and head_node.capacity == 12


async def test_a_gateway_discovers_promotes_and_serves_through_oracle_nodes(oracle, start_devnode, start_gateway,  # type: ignore[no-untyped-def]
                                                                           http) -> None:
    node = await start_devnode(address=ALICE, loading=True)
    oracle.add_node(ALICE, node.url, [LLAMA])
    gw = await start_gateway([], oracle_api_url=oracle.url, allow_loopback_nodes=True, oracle_poll_interval=0.05)

    async def listed(status: str) -> bool:
        nodes = (await http.get(f"{gw.url}/api/v1/nodes")).json()["nodes"]
        return [(n["address"], n["status"]) for n in nodes] == [(ALICE, status)]

    await eventually(lambda: listed("offline"))
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    refused = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())
    assert refused.status_code == 503  # discovered, but loading: out of rotation
    await http.post(f"{node.url}/control", json={"loading": False, "address": ALICE})
    await eventually(lambda: listed("online"))
    answered = await http.post(f"{gw.v1}/chat/completions", json=body, headers=gw.headers())
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 3
