"""Agents behind NAT that dial in over `/ws/agent-relay` (upstream-protocols.md §5.4): registry and client.

`RelayHub` maps a lower-case address to the one live `AgentConnection`. A second connection for the same
address replaces the first; the old socket's own close can never unregister its successor, because
`unregister` checks identity, not the address (a latent bug of the original). When a connection goes, every
request pending on it fails at once, so the pool retries or continues it elsewhere without waiting for a
deadline.

Each connection has an outbox drained by one writer task (api/relay.py): the request path only ever
enqueues, so it never blocks on a slow agent, and messages keep their order. Deadlines (first token, idle
between chunks) are not here: the pool enforces the same ones around every node alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from typing import Any

from .base import NodeChunk, NodeClient, NodeFailure, NodeHealth, NodeRequest

log = logging.getLogger("openai_proxy.relay")

DEFAULT_MAX_TOKENS = 4096
REPLACED = (4010, "Replaced by new connection")
Outgoing = str | tuple[int, str]  # a JSON text frame, or a close (code, reason)


def _request_id() -> str:
    return f"req-{int(time.time() * 1000)}-{secrets.token_hex(3)}"


class AgentConnection:
    """One authenticated agent socket: its outbox and the requests waiting for its answers."""

    def __init__(self, address: str, model: str) -> None:
        self.address = address.lower()
        self.model = model
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.pending: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self.closed = False

    def post(self, message: dict[str, Any]) -> None:
        if not self.closed:
            self.outbox.put_nowait(json.dumps(message, separators=(",", ":")))

    def close(self, code: int, reason: str) -> None:
        """Fail everything pending and have the writer close the socket with `code`."""
        self.fail_all()
        self.outbox.put_nowait((code, reason))

    def open_request(self) -> tuple[str, asyncio.Queue[dict[str, Any] | None]]:
        if self.closed:
            raise NodeFailure(f"relay agent {self.address} disconnected", unreachable=True)
        ident = _request_id()
        inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.pending[ident] = inbox
        return ident, inbox

    def end_request(self, ident: str, *, finished: bool) -> None:
        self.pending.pop(ident, None)
        if not finished:
            # Not in the original protocol: agents that know it stop generating; others ignore unknown types.
            self.post({"type": "cancel", "id": ident})

    def deliver(self, message: dict[str, Any]) -> None:
        """Route a response/chunk/done/error message to its request; unknown ids are ignored."""
        ident = message.get("id")
        inbox = self.pending.get(ident) if isinstance(ident, str) else None
        if inbox is not None:
            inbox.put_nowait(message)

    def fail_all(self) -> None:
        self.closed = True
        for inbox in self.pending.values():
            inbox.put_nowait(None)
        self.pending.clear()


class RelayHub:
    """The live agent connections, by lower-case address."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentConnection] = {}

    def get(self, address: str) -> AgentConnection | None:
        return self.agents.get(address.lower())

    def register(self, conn: AgentConnection) -> AgentConnection | None:
        """Make `conn` the agent for its address; the connection it replaces (if any) is closed with 4010."""
        old = self.agents.get(conn.address)
        self.agents[conn.address] = conn
        if old is not None and old is not conn:
            old.close(*REPLACED)
            return old
        return None

    def unregister(self, conn: AgentConnection) -> bool:
        """Forget `conn` if it is still the registered one; its pending requests fail either way."""
        conn.fail_all()
        if self.agents.get(conn.address) is conn:
            del self.agents[conn.address]
            return True
        return False


class RelayClient(NodeClient):
    """Sends a request to whichever connection is live for `address` when the request starts."""

    kind = "relay"

    def __init__(self, hub: RelayHub, address: str) -> None:
        super().__init__(f"relay://{address.lower()}")
        self.hub = hub
        self.address = address.lower()

    async def health(self) -> NodeHealth:
        conn = self.hub.get(self.address)
        return NodeHealth(ready=conn is not None, model=conn.model if conn else None, address=self.address)

    async def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        conn = self.hub.get(self.address)
        if conn is None:
            raise NodeFailure(f"relay agent {self.address} is not connected", unreachable=True)
        ident, inbox = conn.open_request()
        finished = False
        try:
            conn.post(request_message(ident, request))
            while True:
                message = await inbox.get()
                if message is None:
                    raise NodeFailure(f"relay agent {self.address} disconnected")
                chunk, finished = _read(self.address, message)
                if chunk is not None:
                    yield chunk
                if finished:
                    return
        finally:
            conn.end_request(ident, finished=finished)


def request_message(ident: str, request: NodeRequest) -> dict[str, Any]:
    """§5.4's request. Agents speak chat only: a continuation is the original turns plus the partial
    assistant turn, which llama-server continues in place; a text completion is one user turn."""
    if request.messages is None:
        messages = [{"role": "user", "content": request.prompt}]
    else:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.assistant_prefix:
            messages.append({"role": "assistant", "content": request.assistant_prefix})
    params = request.params
    return {
        "type": "request",
        "id": ident,
        "messages": messages,
        "maxTokens": params.max_new_tokens,
        "temperature": params.temperature,  # an explicit 0 stays 0 (greedy), unlike the original
        "topP": params.top_p,
        "stream": True,
    }


def _read(address: str, message: dict[str, Any]) -> tuple[NodeChunk | None, bool]:
    """One agent message for a request → (chunk to yield, whether the answer is complete)."""
    kind = message.get("type")
    if kind == "chunk":
        # Agents relay llama-server's stream, one token per delta: a chunk counts as one token unless `done`
        # brings the agent's own total. It decides `max_tokens` for a continuation if the agent dies.
        content = message.get("content")
        return (NodeChunk(text=content, tokens=1) if isinstance(content, str) and content else None), False
    if kind == "done":
        total = _completion_tokens(message)
        return (NodeChunk(total_tokens=total) if total is not None else None), True
    if kind == "response":  # an agent that answered in one piece although we asked for a stream
        choices = message.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        body = first.get("message")
        content = body.get("content") if isinstance(body, dict) else None
        text = content if isinstance(content, str) else ""
        return NodeChunk(text=text, total_tokens=_completion_tokens(message)), True
    if kind == "error":
        raise NodeFailure(f"relay agent {address} error: {str(message.get('message', ''))[:300]}")
    return None, False


def _completion_tokens(message: dict[str, Any]) -> int | None:
    usage = message.get("usage")
    count = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None
