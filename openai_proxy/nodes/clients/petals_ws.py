"""The public Petals WebSocket API (`petals+ws://`, `/api/v2/generate`): true token streaming.

One inference session per socket. The session's `max_length` bounds prompt plus generated tokens on the
node's own tokenizer, which we cannot run, so it is sized generously from the tiktoken estimate. Generation
runs one token per step with a `stop_sequence`; the node has no other bound, so we count `token_count` and
close the socket once we have `max_new_tokens` (upstream-protocols.md §12.2).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from ... import jsonsafe
from ..base import FinishReason, NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest
from .http import probe_health

DEFAULT_PATH = "/api/v2/generate"
FALLBACK_STOP = "</s>"
# A node keeps streaming after we have enough tokens; its close frame queues behind unread steps, so waiting
# for a clean close handshake would hold the request (and the node) for the library default of 10 s.
CLOSE_TIMEOUT = 0.5


def session_length(request: NodeRequest) -> int:
    # Llama/Mistral tokenizers yield up to about 2x cl100k's count on non-English text.
    return 2 * request.prompt_tokens + request.params.max_new_tokens + 16


class PetalsWsClient(NodeClient):
    kind = "petals-ws"

    def __init__(self, url: str, http: httpx.AsyncClient, health_timeout: float, open_timeout: float) -> None:
        parts = urlsplit(url)
        self.socket_url = urlunsplit((parts.scheme, parts.netloc, parts.path or DEFAULT_PATH, "", ""))
        http_scheme = "https" if parts.scheme == "wss" else "http"
        super().__init__(urlunsplit((http_scheme, parts.netloc, "", "", "")))
        self._http = http
        self._health_timeout = health_timeout
        self._open_timeout = open_timeout

    async def health(self) -> NodeHealth:
        return await probe_health(self._http, self.url, self._health_timeout)

    async def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        try:
            async with connect(self.socket_url, open_timeout=self._open_timeout, close_timeout=CLOSE_TIMEOUT,
                               max_size=2**22) as socket:
                await _call(socket, {"type": "open_inference_session", "model": request.model,
                                     "max_length": session_length(request)})
                await socket.send(json.dumps(_generate_message(request)))
                async for chunk in _steps(socket, request.params.max_new_tokens):
                    yield chunk
        except OSError as exc:  # refused, unreachable, or the opening handshake timed out (TimeoutError)
            raise NodeFailure(f"{self.socket_url}: cannot connect: {type(exc).__name__}: {exc}",
                              timeout=isinstance(exc, TimeoutError), unreachable=True) from exc
        except WebSocketException as exc:
            raise NodeFailure(f"{self.socket_url}: {type(exc).__name__}: {exc}") from exc


def _generate_message(request: NodeRequest) -> dict[str, Any]:
    params = request.params
    stops = request.stops or (FALLBACK_STOP,)
    message: dict[str, Any] = {
        "type": "generate",
        "inputs": request.prompt,
        "max_new_tokens": 1,
        "do_sample": 1 if params.do_sample else 0,
        "stop_sequence": stops[0],
        "extra_stop_sequences": list(stops[1:]),
    }
    if params.do_sample:
        message |= {"temperature": params.temperature, "top_p": params.top_p}
    return message


async def _call(socket: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await socket.send(json.dumps(message))
    return _reply(socket, await socket.recv())


def _reply(socket: ClientConnection, raw: str | bytes) -> dict[str, Any]:
    try:
        reply = jsonsafe.loads(raw)
    except ValueError as exc:
        raise NodeFailure("petals node sent a non-JSON message") from exc
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        trace = str(reply.get("traceback", "")) if isinstance(reply, dict) else ""
        raise NodeFailure(f"petals node answered ok=false: {trace[-300:]}")
    return reply


async def _steps(socket: ClientConnection, max_new_tokens: int) -> AsyncGenerator[NodeChunk, None]:
    produced = 0
    while True:
        reply = _reply(socket, await socket.recv())
        text = reply.get("outputs")
        count = reply.get("token_count")
        step_tokens = count if isinstance(count, int) and count >= 0 else 1
        produced += step_tokens
        stopped = reply.get("stop") is True
        finish: FinishReason | None = "stop" if stopped else ("length" if produced >= max_new_tokens else None)
        yield NodeChunk(text=text if isinstance(text, str) else "", tokens=step_tokens, finish_reason=finish)
        if finish is not None:
            return
