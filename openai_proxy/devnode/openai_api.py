"""An OpenAI-type node (llama-server style): `POST /v1/completions` and `POST /v1/chat/completions`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .runtime import (
    ClientGone,
    answer_whole,
    cut_connection,
    forever,
    node_of,
    paced,
    unless,
    wait_disconnect,
)
from .state import DevnodeConfig, NodeState, Tally
from .text import count_words, iter_tokens


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` changes what the node sends."""

    include_usage: bool = False


class TextPart(BaseModel):
    """One part of a multi-part message `content`; only text parts reach the prompt."""

    model_config = ConfigDict(extra="allow")
    type: str = "text"
    text: str = ""


class ChatMessage(BaseModel):
    """A chat message; the prompt uses only its text content."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content if part.type == "text")


class _Common(BaseModel):
    """Fields both endpoints read; everything else an OpenAI client may send is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_Common):
    """`POST /v1/completions`: one string prompt."""

    prompt: str


class ChatRequest(_Common):
    """`POST /v1/chat/completions`: the prompt is the message texts joined by newlines, plus one."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)


def openai_error(message: str, kind: str, status_code: int, code: str | None = None) -> JSONResponse:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status_code)


@dataclass
class _Job:
    """One parsed request: what to generate and how the answer must be shaped."""

    chat: bool
    model: str
    prompt: str
    max_tokens: int
    stream: bool
    include_usage: bool
    id: str
    created: int

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = count_words(self.prompt)
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    def finish_reason(self, produced: int) -> str:
        return "length" if produced >= self.max_tokens else "stop"


def _job(body: _Common, cfg: DevnodeConfig) -> _Job:
    if isinstance(body, ChatRequest):
        prompt = "\n".join(message.text() for message in body.messages) + "\n"
        limit = body.max_completion_tokens if body.max_tokens is None else body.max_tokens
    else:
        assert isinstance(body, CompletionRequest)
        prompt, limit = body.prompt, body.max_tokens
    return _Job(
        chat=isinstance(body, ChatRequest),
        model=body.model or cfg.model or "devnode",
        prompt=prompt,
        max_tokens=16 if limit is None else limit,
        stream=body.stream,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        id=("chatcmpl-" if isinstance(body, ChatRequest) else "cmpl-") + uuid.uuid4().hex,
        created=int(time.time()),
    )


async def completions(request: Request) -> Response:
    return await _serve(request, CompletionRequest)


async def chat_completions(request: Request) -> Response:
    return await _serve(request, ChatRequest)


async def _serve(request: Request, schema: type[_Common]) -> Response:
    try:
        body = schema.model_validate_json(await request.body())
    except ValidationError as exc:
        return openai_error(str(exc), "invalid_request_error", 400)
    node = node_of(request)
    cfg = node.snapshot()
    problem = cfg.model_error(body.model)
    if problem is not None:
        return openai_error(problem, "invalid_request_error", 404, "model_not_found")
    if cfg.loading:
        return openai_error("Loading model", "unavailable_error", 503)
    if cfg.fault == "fail":
        node.tally().close("failed")
        return openai_error("simulated failure", "server_error", 500)
    job = _job(body, cfg)
    if job.stream:
        return await _stream(request, node, cfg, job)
    tokens = await answer_whole(request, node, cfg, job.prompt, job.max_tokens)
    if tokens is None:
        return Response()  # the client is gone or the connection was cut: nobody will read this
    return JSONResponse(_whole_answer(job, tokens))


def _whole_answer(job: _Job, tokens: list[str]) -> dict[str, Any]:
    text = "".join(tokens)
    choice: dict[str, Any] = {"index": 0}
    if job.chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice.update(logprobs=None, finish_reason=job.finish_reason(len(tokens)))
    return {
        "id": job.id,
        "object": "chat.completion" if job.chat else "text_completion",
        "created": job.created,
        "model": job.model,
        "choices": [choice],
        "usage": job.usage(len(tokens)),
    }


# --- streaming ----------------------------------------------------------------------------------------


class _TalliedStream(StreamingResponse):
    """A StreamingResponse that owns a generation's tally. Starlette cancels the body iterator when the
    client disconnects, possibly before it ever started; whatever the body did not close counts as
    cancelled."""

    def __init__(self, content: AsyncIterator[str], tally: Tally) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"cache-control": "no-cache"})
        self.tally = tally

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.tally.close("cancelled")


async def _stream(request: Request, node: NodeState, cfg: DevnodeConfig, job: _Job) -> Response:
    tally = node.tally()
    if cfg.fault == "hang":
        # Never send even the headers; the wait ends only when the client gives up.
        with tally, suppress(ClientGone):
            await unless(wait_disconnect(request.receive), forever())
        return Response()
    return _TalliedStream(_events(request.receive, cfg, job, tally), tally)


async def _events(receive: Receive, cfg: DevnodeConfig, job: _Job, tally: Tally) -> AsyncIterator[str]:
    """The SSE body. Runs inside the response, so a disconnect cancels it at its next await."""
    chunk = _Chunker(job)
    if job.chat:
        yield chunk.event(delta={"role": "assistant", "content": ""})
    count = cfg.answer_length(job.max_tokens)
    if cfg.fault == "die":
        count = min(count, cfg.die_after)
    produced = 0
    async for token in paced(cfg, islice(iter_tokens(job.prompt), count)):
        produced += 1
        yield chunk.event(delta={"content": token}, text=token)
    if cfg.fault == "die":
        tally.close("failed")
        cut_connection(receive)
        return
    yield chunk.event(delta={}, text="", finish_reason=job.finish_reason(produced))
    if job.include_usage:
        yield chunk.usage_event(job.usage(produced))
    yield "data: [DONE]\n\n"
    tally.close("completed")


class _Chunker:
    """Renders `data:` events in OpenAI's chunk shapes for one streamed answer."""

    def __init__(self, job: _Job) -> None:
        self.job = job

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        job = self.job
        body: dict[str, Any] = {
            "id": job.id,
            "object": "chat.completion.chunk" if job.chat else "text_completion",
            "created": job.created,
            "model": job.model,
            "choices": choices,
        }
        if job.include_usage:
            body["usage"] = None  # as OpenAI: usage is null on every chunk but the last when asked for
        body.update(extra)
        return f"data: {json.dumps(body)}\n\n"

    def event(
        self,
        *,
        delta: dict[str, str] | None = None,
        text: str | None = None,
        finish_reason: str | None = None,
    ) -> str:
        choice: dict[str, Any] = {"index": 0}
        if self.job.chat:
            choice["delta"] = delta or {}
        else:
            choice["text"] = text or ""
        choice.update(logprobs=None, finish_reason=finish_reason)
        return self._frame([choice])

    def usage_event(self, usage: dict[str, int]) -> str:
        return self._frame([], usage=usage)
