"""The boundary to the HTTP clients: every transport error becomes a NodeFailure here and nowhere else.

Two clients: httpx for the control plane (health probes, and the one-shot Plumise and Petals HTTP APIs, whose
answers take seconds of generation), aiohttp for the streaming data plane (OpenAI-compatible nodes), where
the client's own per-request cost is most of what the gateway adds: measured in bench/ (issue 6), the same
30-line relay moved about 7x more requests with aiohttp than with httpx.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx

from ... import jsonsafe
from ..base import NodeFailure, NodeHealth

MAX_LOGGED_BODY = 300


@contextmanager
def node_errors(url: str) -> Iterator[None]:
    """Map httpx's exceptions to NodeFailure, the way httpx maps httpcore's."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise NodeFailure(f"{url}: connect timed out", timeout=True, unreachable=True) from exc
    except httpx.TimeoutException as exc:
        raise NodeFailure(f"{url}: timed out ({type(exc).__name__})", timeout=True) from exc
    except httpx.ConnectError as exc:
        raise NodeFailure(f"{url}: cannot connect: {exc}", unreachable=True) from exc
    except httpx.HTTPError as exc:
        raise NodeFailure(f"{url}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def stream_errors(url: str) -> Iterator[None]:
    """Map aiohttp's exceptions to NodeFailure, as `node_errors` does httpx's."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise NodeFailure(f"{url}: connect timed out", timeout=True, unreachable=True) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise NodeFailure(f"{url}: timed out ({type(exc).__name__})", timeout=True) from exc
    except aiohttp.ClientConnectorError as exc:
        raise NodeFailure(f"{url}: cannot connect: {exc}", unreachable=True) from exc
    except aiohttp.ClientError as exc:
        raise NodeFailure(f"{url}: {type(exc).__name__}: {exc}") from exc


def node_session(connect_timeout: float) -> aiohttp.ClientSession:
    """The data-plane client, one per process (the app's lifespan owns and closes it). No read timeout: the
    pool enforces first-token and idle deadlines around every node alike. No connection limit (as many as
    streams run), no cookies shared between nodes, and redirects are refused per request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, connect=connect_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )


def check_status(response: httpx.Response, body: bytes | None = None) -> None:
    if response.status_code >= 400:
        text = (body if body is not None else response.content)[:MAX_LOGGED_BODY]
        raise NodeFailure(f"{response.request.url}: HTTP {response.status_code}: {text!r}")


def parse_json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = jsonsafe.loads(response.content)
    except ValueError as exc:  # bad JSON, bad UTF-8, or nested deep enough to crash the C decoder
        raise NodeFailure(f"{response.request.url}: answer is not JSON") from exc
    if not isinstance(data, dict):
        raise NodeFailure(f"{response.request.url}: answer is not a JSON object")
    return data


async def probe_health(http: httpx.AsyncClient, url: str, limit: float) -> NodeHealth:
    """GET /health. `{"status": "loading"}` (HTTP 200 from a node still loading its model) is not ready."""
    with node_errors(url):
        response = await http.get(f"{url}/health", timeout=limit)
    if response.status_code == 404:
        return NodeHealth(ready=True)  # the public Petals API has no health route: reachable is all we learn
    check_status(response)
    data = parse_json(response)
    status = str(data.get("status", "ok")).lower()
    model = data.get("model")
    address = data.get("address")
    return NodeHealth(
        ready=status in ("ok", "healthy", "ready"),
        model=model if isinstance(model, str) and model else None,
        address=address if isinstance(address, str) and address else None,
    )


MAX_SSE_LINE = 1 << 20  # bytes without a line break before a node's stream counts as broken
MAX_DRAIN = 1 << 16  # bytes read after [DONE] to keep the connection; past that it is closed instead


async def sse_batches(url: str, response: aiohttp.ClientResponse) -> AsyncGenerator[list[bytes], None]:
    """The `data:` payloads of an SSE body, one list per network read: every event a read completed, parsed
    without another trip through the event loop. A zero-delay node's whole answer often arrives in one read,
    and handing it on as one batch (rather than event by event through every generator above) was most of
    the gateway's per-token cost (bench/). Bytes: they go to the JSON decoder as they are."""
    pending = b""
    data_lines: list[bytes] = []
    async for block in response.content.iter_any():
        *lines, pending = (pending + block).split(b"\n")
        if len(pending) > MAX_SSE_LINE:
            raise NodeFailure(f"{url}: SSE line longer than {MAX_SSE_LINE} bytes")
        batch: list[bytes] = []
        for line in lines:
            if line.startswith(b"data:"):
                data_lines.append(_field_value(line))
            elif (not line or line == b"\r") and data_lines:
                batch.append(b"\n".join(data_lines))
                data_lines = []
        if batch:
            yield batch
    if pending.startswith(b"data:"):
        data_lines.append(_field_value(pending))
    if data_lines:
        yield [b"\n".join(data_lines)]


def _field_value(line: bytes) -> bytes:
    value = line[5:].removesuffix(b"\r")
    return value[1:] if value.startswith(b" ") else value


async def drain(response: aiohttp.ClientResponse) -> None:
    """Read the rest of a finished answer (normally just the end of the chunked body), so its connection
    goes back to the pool for the next request; a node that keeps sending gets its connection closed."""
    left = MAX_DRAIN
    while left > 0 and not response.content.at_eof():
        block = await response.content.readany()
        if not block:
            return
        left -= len(block)
    if not response.content.at_eof():
        response.close()
