"""What one request did, gathered while it runs and read once when it ends (access log and metrics).

The request middleware opens a `RequestInfo` and binds it to a context variable; the code on the request path
(authentication, admission, each choice run on the pool) adds what it learns through the `note_*` functions.
Tasks copy the context, so a choice running in its own task still writes to the same object. Outside an HTTP
request (Socket.IO events, unit tests calling the service directly) nothing is bound and the calls do nothing.

This module is a leaf: it imports nothing from the gateway, so every layer can report into it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

UNMATCHED = "<unmatched>"  # route label of requests no route matched: never the raw path (label cardinality)


class ChoiceStats(Protocol):
    """What the node pool reports about one generated choice (nodes.pool.GenerationStats)."""

    completion_tokens: int
    nodes: list[str]
    failovers: int
    continuations: int


@dataclass(slots=True)
class RequestInfo:
    request_id: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    route: str = UNMATCHED
    status: int = 500
    model: str | None = None
    tier: str | None = None
    wallet: str | None = None  # shortened (Principal.short): enough to correlate, not to identify
    nodes: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None  # seconds from arrival to the first generated text
    failovers: int = 0
    continuations: int = 0
    prompt: str | None = None  # only with LOG_PROMPTS (a debug setting)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log_fields(self, duration: float) -> dict[str, object]:
        """The access-log entry: no headers, no tokens, no prompt text unless LOG_PROMPTS put it here."""
        fields: dict[str, object] = {
            "method": self.method, "path": self.path, "route": self.route, "status": self.status,
            "latency_ms": round(duration * 1000, 2), "model": self.model, "tier": self.tier,
            "wallet": self.wallet, "nodes": self.nodes, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": None if self.first_token is None else round(self.first_token * 1000, 2),
            "failovers": self.failovers, "continuations": self.continuations,
        }
        if self.prompt is not None:
            fields["prompt"] = self.prompt
        return fields


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("request_info", default=None)


@contextmanager
def tracking(info: RequestInfo) -> Iterator[RequestInfo]:
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


def current() -> RequestInfo | None:
    return _current.get()


def note_principal(tier: str, wallet: str) -> None:
    if (info := _current.get()) is not None:
        info.tier = tier
        info.wallet = wallet


def note_model(model: str) -> None:
    """The catalogue id of the requested model, once it is known to exist (so labels stay bounded)."""
    if (info := _current.get()) is not None:
        info.model = model


def note_admitted(prompt_tokens: Sequence[int], prompts: Sequence[str] | None) -> None:
    """The request passed its limits and will run: its prompt tokens count (and, when asked, its text)."""
    if (info := _current.get()) is not None:
        info.prompt_tokens = sum(prompt_tokens)
        if prompts is not None:
            info.prompt = "\n---\n".join(prompts)


def note_first_token() -> None:
    if (info := _current.get()) is not None and info.first_token is None:
        info.first_token = info.elapsed()


def note_choice(stats: ChoiceStats) -> None:
    if (info := _current.get()) is not None:
        info.completion_tokens += stats.completion_tokens
        for node in map(node_label, stats.nodes):
            if node not in info.nodes:
                info.nodes.append(node)
        info.failovers += stats.failovers
        info.continuations += stats.continuations


def node_label(node: str) -> str:
    """A node's address or URL without user info, query or fragment: safe for logs and metric labels."""
    if "://" not in node:
        return node
    parts = urlsplit(node)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:  # not a number: keep the host alone
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
