"""Graceful shutdown of a real `openai-proxy serve`: on SIGTERM new connections are refused at once, a
running stream still ends with [DONE], and the process exits after its lifespan shut down; a stream that
outlives SHUTDOWN_GRACE_SECONDS is cut."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import httpx

from .conftest import PRO_WALLET, eventually, sse_payloads
from .fake_oracle import ORACLE_KEY, running_oracle
from .serve_support import ServedGateway, flushed_redis, serve_gateway

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def stream_body(max_tokens: int) -> dict[str, Any]:
    return {"model": LLAMA, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "Tell me a long story"}]}


async def refuses_connections(gw: ServedGateway) -> bool:
    try:
        async with httpx.AsyncClient() as fresh:
            await fresh.get(f"{gw.url}/health")
    except httpx.ConnectError:
        return True
    except httpx.TransportError:  # accepted into the backlog just before the socket closed, then reset
        return False
    return False


async def stream_through_sigterm(gw: ServedGateway, max_tokens: int) -> str:
    """Start a stream, wait for its first text, send SIGTERM, check new connections are refused, and return
    the whole body the client received (cut short or not)."""
    received: list[str] = []
    async with httpx.AsyncClient(timeout=60) as http, http.stream(
        "POST", f"{gw.url}/v1/chat/completions", json=stream_body(max_tokens), headers=gw.headers(PRO_WALLET)
    ) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        while '"content":"' not in (line := await anext(lines)):
            received.append(line)
        received.append(line)
        gw.terminate()
        await eventually(lambda: refuses_connections(gw), within=10)
        with contextlib.suppress(httpx.TransportError):  # the server may close the connection mid-body
            received += [line async for line in lines]
    return "\n".join(received) + "\n"


async def test_sigterm_lets_a_running_stream_finish_then_flushes_the_usage_report(  # type: ignore[no-untyped-def]
    start_devnode, tmp_path: Path
) -> None:
    node = await start_devnode(token_delay=0.05)  # 40 tokens: about two seconds
    # Reports every hour: the only report the Oracle can get is the one the shutdown flushes.
    async with running_oracle() as oracle, serve_gateway(
        tmp_path, [f"petals+ws://{node.hostport}"], ORACLE_API_URL=oracle.url, ORACLE_API_KEY=ORACLE_KEY,
        USAGE_REPORT_INTERVAL="3600",
    ) as gw:
        body = await stream_through_sigterm(gw, max_tokens=40)
        assert await gw.stopped_cleanly()
    payloads = sse_payloads(body)
    assert payloads[-1] == "[DONE]"
    assert '"finish_reason":"length"' in payloads[-2]  # the whole answer, not a truncated one
    log = gw.log_text()
    assert log.index("Shutting down") < log.index("Waiting for application shutdown")
    (report,) = oracle.reports_for(node.config.address)
    assert report["tokensProcessed"] == 40 and report["requestCount"] == 1  # the stream that finished


async def test_a_stream_longer_than_the_grace_period_is_cut(start_devnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(token_delay=0.2)  # 200 tokens: forty seconds, far beyond the grace period
    async with serve_gateway(tmp_path, [f"petals+ws://{node.hostport}"], SHUTDOWN_GRACE_SECONDS="1") as gw:
        body = await stream_through_sigterm(gw, max_tokens=200)
        assert await gw.stopped_cleanly()
    assert "[DONE]" not in body
    assert "timeout graceful shutdown exceeded" in gw.log_text()


async def test_several_workers_shut_down_the_same_way(start_devnode, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await start_devnode(token_delay=0.05)
    async with flushed_redis() as redis_url, serve_gateway(tmp_path, [f"petals+ws://{node.hostport}"], workers=2,
                                                           REDIS_URL=redis_url) as gw:
        body = await stream_through_sigterm(gw, max_tokens=40)
        assert await gw.exited() == 0  # the supervisor, once every worker has finished
    assert sse_payloads(body)[-1] == "[DONE]"
    assert gw.log_text().count("Application shutdown complete.") == 2
