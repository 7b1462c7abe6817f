"""What the pool asks of a node, whatever protocol it speaks.

Every node client turns one `NodeRequest` into an async stream of `NodeChunk`s and raises `NodeFailure` for
anything that should send the request elsewhere (connect error, HTTP 5xx, Petals `ok: false`, garbage). Clients
close their upstream (HTTP response, WebSocket) in `finally`, so closing the stream cancels the node's work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Literal

from ..templates import ChatMessage

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_new_tokens: int
    temperature: float  # 0 means greedy; nodes get do_sample=False then
    top_p: float
    seed: int | None = None

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True, slots=True)
class NodeRequest:
    model: str  # the name the node knows the model by
    prompt: str  # the whole rendered prompt, including text already generated when continuing
    prompt_tokens: int  # tiktoken estimate, to size Petals sessions
    params: GenerationParams
    stops: tuple[str, ...] = ()  # hints only: the gateway enforces stop strings itself
    # The original chat turns, for nodes that apply their own template (OpenAI-type nodes, relay agents).
    # None for text completions.
    messages: tuple[ChatMessage, ...] | None = None
    # Text of this same assistant turn already produced by earlier nodes (continuations only). `prompt`
    # already ends with it; chat-only nodes (relay agents) get it as a final, partial assistant message.
    assistant_prefix: str = ""

    def continued(self, produced: str, produced_tokens: int) -> NodeRequest:
        """The request that makes another node carry on the same answer after `produced`, with
        `max_new_tokens` reduced by the `produced_tokens` already counted. Call it on the original request."""
        remaining = self.params.max_new_tokens - produced_tokens
        return replace(
            self,
            prompt=self.prompt + produced,
            prompt_tokens=self.prompt_tokens + produced_tokens,
            params=replace(self.params, max_new_tokens=max(1, remaining)),
            assistant_prefix=self.assistant_prefix + produced,
        )


@dataclass(slots=True)
class NodeChunk:
    text: str = ""
    tokens: int | None = None  # tokens in this chunk, when the node says
    total_tokens: int | None = None  # the node's own count for its whole answer, when it says
    finish_reason: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class NodeHealth:
    ready: bool
    model: str | None = None
    address: str | None = None


class NodeFailure(Exception):
    """The node could not serve this request; another node may.

    `unreachable` means the node could not even be contacted (connection refused, agent not connected):
    the pool takes it out of rotation until its next good health check, and a request whose every attempt
    failed that way gets 503 (nobody could serve it) rather than 502 (a node answered badly)."""

    def __init__(self, message: str, *, timeout: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.unreachable = unreachable


class NodeClient(ABC):
    kind: str
    # False for nodes that answer in one piece: they get a longer first-token deadline.
    streams: bool = True

    def __init__(self, url: str) -> None:
        self.url = url

    @abstractmethod
    def generate(self, request: NodeRequest) -> AsyncGenerator[NodeChunk, None]:
        """Stream the answer. Must be an async generator that closes its upstream in `finally`."""

    @abstractmethod
    async def health(self) -> NodeHealth:
        """Probe the node; raise NodeFailure when it cannot be reached."""
