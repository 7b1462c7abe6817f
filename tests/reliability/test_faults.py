"""Faults around a real `openai-proxy serve` process: every node gone or hung, a hostile Oracle, SIGTERM under
load, and slow or broken clients (a reader that stops, half-open connections, slowloris, huge heads).

Times the tests measure (how fast a request fails with no node, how long the gateway takes to serve again once
nodes return) are printed for the README's Reliability table, never asserted; bounds in the tests are hang
guards only. Covered elsewhere, not repeated here: one stream finishing across SIGTERM and a stream outliving
the grace period (tests/test_shutdown.py); the Redis outage policy for free, pro and sign-in
(tests/test_redis_outage.py); an Oracle answering 503 (tests/test_discovery.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from ..conftest import eventually, sse_payloads
from ..fake_oracle import ORACLE_KEY, FakeOracle, running_oracle
from .hostile import PRO, SLOW_MODEL, WHOLE_MODEL, Hostile
from .processes import Proc, ProcessSet, bearer, wallet

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
FAST_FAILURE = {"first_token_timeout": 1, "token_idle_timeout": 1, "node_connect_timeout": 1,
                "health_check_interval": 0.2, "node_cooldown_seconds": 0.5, "pro_addresses": [PRO]}


def chat(stream: bool, tokens: int = 5, content: str = "Hello") -> dict[str, Any]:
    return {"model": LLAMA, "messages": [{"role": "user", "content": content}], "max_tokens": tokens,
            "stream": stream}


async def outcome(http: httpx.AsyncClient, gateway: Proc, stream: bool) -> tuple[str, float]:
    """'ok', or how the request failed: 'HTTP <status>' or 'in-band <code>' (a stream cut without [DONE])."""
    started = time.monotonic()
    response = await http.post(f"{gateway.url}/v1/chat/completions", json=chat(stream), headers=bearer(PRO))
    took = time.monotonic() - started
    if response.status_code != 200:
        assert set(response.json()) == {"error"}, response.text  # the OpenAI envelope, whatever the status
        return f"HTTP {response.status_code}", took
    if not stream:
        return "ok", took
    payloads = sse_payloads(response.text)
    if payloads[-1] == "[DONE]":
        return "ok", took
    return f"in-band {json.loads(payloads[-1])['error']['code']}", took


async def two_nodes_and_a_gateway(procs: ProcessSet) -> tuple[list[Proc], Proc]:
    nodes = [procs.devnode("--token-delay", "0.005"), procs.devnode("--token-delay", "0.005")]
    gateway = procs.gateway([f"petals+ws://127.0.0.1:{nodes[0].port}", f"openai+http://127.0.0.1:{nodes[1].port}"],
                            **FAST_FAILURE)
    await asyncio.gather(*(node.wait_ready() for node in nodes))
    await gateway.wait_ready("/ready")
    return nodes, gateway


async def recovered(http: httpx.AsyncClient, gateway: Proc) -> float:
    """Seconds from now until a streamed and a whole request both succeed again (bounded by `eventually`)."""
    started = time.monotonic()

    async def serving() -> bool:
        results = [await outcome(http, gateway, stream) for stream in (False, True)]
        return all(result == "ok" for result, _ in results)

    await eventually(serving, within=20)
    return time.monotonic() - started


async def test_with_every_node_dead_requests_fail_fast_and_service_returns_by_itself(procs, http) -> None:  # type: ignore[no-untyped-def]
    nodes, gateway = await two_nodes_and_a_gateway(procs)
    assert (await outcome(http, gateway, stream=True))[0] == "ok"
    for node in nodes:
        node.kill()
    async with asyncio.timeout(15):  # a hang guard: nothing may wait for a node that is gone
        results = await asyncio.gather(*(outcome(http, gateway, stream=i % 2 == 0) for i in range(8)))
    kinds = {kind for kind, _ in results}
    assert kinds <= {"HTTP 503", "in-band no_healthy_node"}, results
    for node in nodes:
        node.spawn()
    await asyncio.gather(*(node.wait_ready() for node in nodes))
    recovery = await recovered(http, gateway)
    print(f"\nall nodes dead: {len(results)} requests failed with {sorted(kinds)}, slowest in "
          f"{max(t for _, t in results):.2f} s; service back {recovery:.2f} s after the nodes were up again")


async def test_with_every_node_hung_requests_time_out_and_service_returns_by_itself(procs, http) -> None:  # type: ignore[no-untyped-def]
    nodes, gateway = await two_nodes_and_a_gateway(procs)
    for node in nodes:
        await http.post(f"{node.url}/control", json={"fault": "hang"})
    async with asyncio.timeout(20):  # two attempts of FIRST_TOKEN_TIMEOUT each, then the error: never a hang
        results = await asyncio.gather(*(outcome(http, gateway, stream=i % 2 == 0) for i in range(6)))
    kinds = {kind for kind, _ in results}
    assert kinds <= {"HTTP 504", "HTTP 503", "in-band node_timeout", "in-band no_healthy_node"}, results
    for node in nodes:
        await http.post(f"{node.url}/control", json={"fault": "none"})
    recovery = await recovered(http, gateway)

    async def nothing_in_flight() -> bool:
        counts = [(await http.get(f"{n.url}/control")).json()["in_flight"] for n in nodes]
        return not any(counts)

    await eventually(nothing_in_flight)  # the hung node requests were cancelled, not left running
    print(f"\nall nodes hung: {len(results)} requests failed with {sorted(kinds)}, slowest in "
          f"{max(t for _, t in results):.2f} s; service back {recovery:.2f} s after the nodes recovered")


# --- a hostile Oracle ------------------------------------------------------------------------------------------


class HostileOracle(FakeOracle):
    """The fake Oracle whose node list can go slow or turn to garbage (`mode`)."""

    mode: str = "ok"

    async def _nodes(self, request: Request) -> Response:
        self.polls += 1
        if self.mode == "slow":
            await asyncio.sleep(2)  # longer than the gateway's ORACLE_TIMEOUT: a simulated slow Oracle
        garbage = {
            "not json": b"<html>502 Bad Gateway</html>",
            "not an object": b"[1, 2, 3]",
            "nodes not a list": b'{"nodes": "everything"}',
            "entries not nodes": b'{"nodes": [1, "x", null, {"address": "nope"}]}',
            "deeply nested": b'{"nodes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "truncated": b'{"nodes": [{"address": "0x',
        }.get(self.mode)
        if garbage is not None:
            return Response(garbage, media_type="application/json")
        return await super()._nodes(request)


@pytest.fixture
async def hostile_oracle() -> AsyncIterator[HostileOracle]:
    async with running_oracle(HostileOracle()) as oracle:
        assert isinstance(oracle, HostileOracle)
        yield oracle


@pytest.mark.parametrize("mode", ["slow", "not json", "not an object", "nodes not a list", "entries not nodes",
                                  "deeply nested", "truncated"])
async def test_a_slow_or_garbage_oracle_keeps_the_last_good_node_list(  # type: ignore[no-untyped-def]
    mode, hostile_oracle, start_devnode, start_gateway, http
) -> None:
    address = wallet().lower()
    node = await start_devnode(address=address)
    hostile_oracle.add_node(address, node.url, [LLAMA])
    gw = await start_gateway([], oracle_api_url=hostile_oracle.url, allow_loopback_nodes=True,
                             oracle_poll_interval=0.05, oracle_timeout=0.3)

    async def listed_online() -> bool:
        nodes = (await http.get(f"{gw.url}/api/v1/nodes")).json()["nodes"]
        return [(n["address"], n["status"]) for n in nodes] == [(address, "online")]

    await eventually(listed_online)
    hostile_oracle.mode = mode
    polls = hostile_oracle.polls
    await eventually(lambda: _at_least(hostile_oracle, polls + 3))  # three polls in the bad mode
    assert await listed_online()
    answer = await http.post(f"{gw.v1}/chat/completions", json=chat(False), headers=gw.headers())
    assert answer.status_code == 200, answer.text


async def _at_least(oracle: FakeOracle, polls: int) -> bool:
    return oracle.polls >= polls


# --- SIGTERM under load ----------------------------------------------------------------------------------------


async def test_sigterm_under_load_finishes_every_stream_and_sends_the_final_report(procs, http) -> None:  # type: ignore[no-untyped-def]
    """tests/test_shutdown.py covers one stream (and the refused new connections); this is twenty at once."""
    async with running_oracle() as oracle:
        address = wallet().lower()
        node = procs.devnode("--token-delay", "0.02", address=address)
        gateway = procs.gateway([f"petals+ws://127.0.0.1:{node.port}"], pro_addresses=[PRO],
                                oracle_api_url=oracle.url, oracle_api_key=ORACLE_KEY, usage_report_interval=3600,
                                shutdown_grace_seconds=20)
        await node.wait_ready()
        await gateway.wait_ready("/ready")
        first_bytes = asyncio.Queue[None]()

        async def stream(i: int) -> str:
            body = chat(True, tokens=40, content=f"story {i}")
            async with httpx.AsyncClient(timeout=30) as own, \
                    own.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=bearer(PRO)) as r:
                chunks = []
                async for chunk in r.aiter_text():
                    if not chunks:
                        first_bytes.put_nowait(None)
                    chunks.append(chunk)
                return "".join(chunks)

        streams = [asyncio.create_task(stream(i)) for i in range(20)]
        for _ in streams:
            await first_bytes.get()  # every stream is running
        gateway.signal(signal.SIGTERM)
        bodies = await asyncio.gather(*streams)
        assert all(sse_payloads(body)[-1] == "[DONE]" for body in bodies)
        assert gateway.popen is not None
        # uvicorn re-raises the SIGTERM it caught once it has shut down: "terminated" is the clean status.
        assert await asyncio.to_thread(gateway.popen.wait, 30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete." in gateway.log()
        reports = oracle.reports_for(address)
        assert reports, "no usage report was sent at shutdown"
        assert reports[-1]["tokensProcessed"] == 20 * 40  # every stream's tokens, in the final report
        assert reports[-1]["requestCount"] == 20


# --- slow and broken clients -----------------------------------------------------------------------------------


def stalled_reader(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    """Send one request, then never read: a client that stopped reading (tiny receive buffer)."""
    raw = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {bearer(PRO)['Authorization']}\r\nContent-Length: {len(raw)}\r\n\r\n")
    sock.sendall(head.encode() + raw)
    return sock


async def counters(node: Proc) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        data: dict[str, Any] = (await http.get(f"{node.url}/control")).json()
        return data


async def test_a_reader_that_stops_is_dropped_and_its_node_request_cancelled(hostile: Hostile, http) -> None:  # type: ignore[no-untyped-def]
    """A 6 MB echoed prompt fills every buffer between the gateway and a client that does not read, just as the
    node starts answering: the gateway's `send` then waits (backpressure), and after SSE_SEND_TIMEOUT (1 s)
    the connection is dropped and the node request, still generating, is cancelled."""
    before = await counters(hostile.slow)
    prompt = ("lorem" + " " * 59) * (6 * 1024 * 1024 // 64)  # 32 characters per tiktoken token: fast to count
    body = {"model": SLOW_MODEL, "prompt": prompt, "echo": True, "max_tokens": 200, "stream": True}
    sock = await asyncio.to_thread(stalled_reader, hostile.gateway.port, "/v1/completions", body)
    try:
        async def cancelled() -> bool:
            now = await counters(hostile.slow)
            return now["cancelled"] == before["cancelled"] + 1 and now["in_flight"] == 0

        await eventually(cancelled, within=20)  # 200 tokens x 50 ms = 10 s if nobody cancelled it
        assert (await counters(hostile.slow))["completed"] == before["completed"]
        assert "the client stopped reading for 1 s" in hostile.gateway.log()
    finally:
        sock.close()


async def test_a_stalled_reader_holds_the_node_back_and_memory_stays_bounded(hostile: Hostile, http) -> None:  # type: ignore[no-untyped-def]
    """128 choices, each a 30 KB echoed prompt plus 4,096 tokens (about 8 MB of events), for a client that reads
    nothing: the gateway stops asking the node for more once the buffers (about 3 MB on loopback) are full,
    instead of buffering the answer itself."""
    before, rss = (await counters(hostile.whole))["requests"], hostile.gateway.rss_bytes()
    drops = hostile.gateway.log().count("the client stopped reading")
    prompt = ("lorem" + " " * 59) * 480  # 30 KB, about 1,000 tokens
    body = {"model": WHOLE_MODEL, "prompt": [prompt] * 128, "echo": True, "max_tokens": 4096, "stream": True}
    sock = await asyncio.to_thread(stalled_reader, hostile.gateway.port, "/v1/completions", body)
    try:
        async def dropped() -> bool:
            return hostile.gateway.log().count("the client stopped reading") > drops

        await eventually(dropped, within=20)
        growth = hostile.gateway.rss_bytes() - rss
        asked = (await counters(hostile.whole))["requests"] - before
    finally:
        sock.close()
    print(f"\nstalled reader: the node was asked for {asked} of 128 choices; gateway RSS grew {growth / 2**20:.1f} MB")
    assert asked < 128
    assert growth < 64 * 2**20


async def test_half_open_and_slowloris_connections_are_cut(hostile: Hostile, http) -> None:  # type: ignore[no-untyped-def]
    port = hostile.gateway.port

    async def cut(trickle: bytes, at_once: bytes = b"") -> float:
        """Seconds until the gateway closes a connection that sends `at_once`, then `trickle` one byte per 100 ms."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(at_once)
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):  # the hang guard: uvicorn alone would never cut these
                for byte in trickle:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if await _closed_within(reader, 0.1):
                        return time.monotonic() - started
                while await reader.read(65536):
                    pass  # a response to a complete request, then the close
                return time.monotonic() - started
        finally:
            writer.close()

    silent, slowloris = await asyncio.gather(
        cut(b""), cut(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200))
    crowd, _ = await asyncio.gather(
        asyncio.gather(*(cut(b"") for _ in range(50))),  # fifty at once: none is kept
        http.get(f"{hostile.url}/health"),  # and meanwhile normal clients are served
    )
    idle = await cut(b"", at_once=b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then idle: keep-alive
    print(f"\nheader timeout 1 s: silent connection cut after {silent:.2f} s, slowloris after {slowloris:.2f} s, "
          f"50 half-open connections after at most {max(crowd):.2f} s; idle keep-alive (2 s) closed after {idle:.2f} s")


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(1) == b""
    except TimeoutError:
        return False


@pytest.mark.parametrize("pieces", [1, 8], ids=["one read", "eight reads"])
async def test_a_100_kb_header_block_gets_431_and_the_gateway_carries_on(pieces, hostile: Hostile, http) -> None:  # type: ignore[no-untyped-def]
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", hostile.gateway.port)
    size = len(head) // pieces + 1
    for start in range(0, len(head), size):
        writer.write(head[start:start + size])
        await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.read()  # the gateway answers and closes (Connection: close)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert b"connection: close" in headers.lower()
    assert json.loads(body)["error"]["code"] == "request_header_fields_too_large"
    assert (await http.get(f"{hostile.url}/health")).status_code == 200
