"""The boundary to httpx: every transport error becomes a NodeFailure here and nowhere else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from ..base import NodeFailure, NodeHealth

MAX_LOGGED_BODY = 300


@contextmanager
def node_errors(url: str) -> Iterator[None]:
    """Map httpx's exceptions to NodeFailure, the way httpx maps httpcore's."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise NodeFailure(f"{url}: timed out ({type(exc).__name__})", timeout=True) from exc
    except httpx.HTTPError as exc:
        raise NodeFailure(f"{url}: {type(exc).__name__}: {exc}") from exc


def check_status(response: httpx.Response, body: bytes | None = None) -> None:
    if response.status_code >= 400:
        text = (body if body is not None else response.content)[:MAX_LOGGED_BODY]
        raise NodeFailure(f"{response.request.url}: HTTP {response.status_code}: {text!r}")


def parse_json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of an SSE body; aiter_lines buffers partial lines across network reads."""
    data_lines: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            data_lines.append(line[5:].removeprefix(" "))
        elif not line and data_lines:
            yield "\n".join(data_lines)
            data_lines = []
    if data_lines:
        yield "\n".join(data_lines)
