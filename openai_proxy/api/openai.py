"""The OpenAI surface: /v1/chat/completions, /v1/completions, /v1/models.

Each handler is three steps: parse the body into a wire model, ask the service for a plan, render the plan's
result as an OpenAI response or SSE stream. Errors before the first byte are raised (and rendered with their
status by the app's one handler); errors after it become one in-band `data: {"error": ...}` event and the
stream ends without `[DONE]`, so no client mistakes a broken answer for a complete one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..auth.principal import Principal
from ..errors import GatewayError, ModelNotFound, ServerError, ServiceUnavailable
from ..limits import Admission, limit_headers
from ..protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from ..protocol import Usage as WireUsage
from ..service import Delta, Finished, Plan, Usage
from .body import parse_json_body
from .context import Gateway, gateway
from .docs import Operation
from .sse import DONE, EventStreamResponse, frame

log = logging.getLogger("openai_proxy.api")

SETTLE_SECONDS = 5.0
INFERENCE_ERRORS = (400, 403, 404, 413, 429, 502, 503, 504)
SYSTEM_FINGERPRINT = f"fp_openai_proxy_{__version__.replace('.', '_')}"


def json_response(body: str, headers: dict[str, str] | None = None) -> Response:
    return Response(body, media_type="application/json", headers=headers)


async def chat_completions(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    async with _limit_headers_on_errors(gw, principal):
        body = await parse_json_body(request, ChatCompletionRequest, gw.settings.max_body_bytes)
        plan = await gw.service.plan_chat(body, principal)
        return await _answer(gw, request, principal, plan, body, chat=True)


async def completions(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    async with _limit_headers_on_errors(gw, principal):
        body = await parse_json_body(request, CompletionRequest, gw.settings.max_body_bytes)
        plan = await gw.service.plan_completion(body, principal)
        return await _answer(gw, request, principal, plan, body, chat=False)


async def _answer(
    gw: Gateway, request: Request, principal: Principal, plan: Plan,
    body: ChatCompletionRequest | CompletionRequest, *, chat: bool,
) -> Response:
    """Admit the plan, then stream it as SSE or answer it as one JSON object."""
    async with gw.admit(principal, plan) as admission:
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.stream:
            encoder = ChunkEncoder(ident, body.model, chat=chat)
            return EventStreamResponse(
                _events(gw, plan, encoder, admission), keepalive=gw.settings.sse_keepalive_seconds,
                headers=admission.headers,
            )
        results, usage = await gw.complete(request, plan, admission)
        common = {"id": ident, "created": int(time.time()), "model": body.model,
                  "system_fingerprint": SYSTEM_FINGERPRINT, "usage": _wire_usage(usage)}
        response: ChatCompletion | Completion
        if chat:
            response = ChatCompletion(**common, choices=[
                ChatChoice(index=r.index, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason)
                for r in results
            ])
        else:
            response = Completion(**common, choices=[
                CompletionChoice(text=r.text, index=r.index, finish_reason=r.finish_reason) for r in results
            ])
        return json_response(response.model_dump_json(), admission.headers)


async def list_models(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    cards = [_card(gw, spec.id) for spec in gw.catalog]
    cards.sort(key=lambda card: not card.available)  # tools often take data[0]: make it one that works
    return json_response(ModelList(data=cards).model_dump_json(), await _current_limit_headers(gw, principal))


async def retrieve_model(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    async with _limit_headers_on_errors(gw, principal):
        model_id = request.path_params["model_id"]
        if gw.catalog.get(model_id) is None:
            raise ModelNotFound(model_id)
        return json_response(_card(gw, model_id).model_dump_json(), await _current_limit_headers(gw, principal))


async def _current_limit_headers(gw: Gateway, principal: Principal) -> dict[str, str]:
    """The x-ratelimit-* headers as they stand, without taking a slot. Every authenticated answer carries them
    (as OpenAI's do), so a client can pace itself from any response. With the state store down they are left
    out rather than failing a request that does not need the store."""
    try:
        return limit_headers(await gw.limiter.peek(principal))
    except ServiceUnavailable:
        return {}


@asynccontextmanager
async def _limit_headers_on_errors(gw: Gateway, principal: Principal) -> AsyncIterator[None]:
    """Errors raised after authentication (a bad body, an unknown model, no node) carry the limit headers too."""
    try:
        yield
    except GatewayError as exc:
        if "x-ratelimit-limit-requests" not in exc.headers:
            exc.headers.update(await _current_limit_headers(gw, principal))
        raise


def _card(gw: Gateway, model_id: str) -> ModelCard:
    spec = gw.catalog.get(model_id)
    assert spec is not None
    return ModelCard(
        id=spec.id,
        created=spec.created,
        owned_by=spec.owned_by,
        context_length=spec.context_length,
        max_output_tokens=spec.max_output_tokens,
        tier=spec.tier,
        available=bool(gw.pool.candidates(spec.id)),
    )


def _wire_usage(usage: Usage) -> WireUsage:
    return WireUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


class ChunkEncoder:
    """Renders stream events as OpenAI chunks. The constant head of every chunk is serialised once."""

    def __init__(self, ident: str, model: str, *, chat: bool) -> None:
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = {"id": ident, "object": kind, "created": int(time.time()), "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT}
        self._head = json.dumps(head, separators=(",", ":"))[:-1]  # without the closing brace
        self.chat = chat

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        tail = json.dumps({"choices": choices, "usage": usage}, separators=(",", ":"))[1:]
        return frame(f"{self._head},{tail}")

    def role(self, index: int) -> bytes:
        return self._chunk([_choice(index, {"role": "assistant", "content": ""}, None)])

    def text(self, event: Delta) -> bytes:
        # The per-token hot path: only the text needs JSON escaping, so it is spliced into the fixed shape
        # (the same JSON `_chunk` would write; tests/test_openai_api.py checks it with hostile text).
        content = json.dumps(event.text)
        if self.chat:
            choice = f'{{"index":{event.index},"delta":{{"content":{content}}},"logprobs":null,"finish_reason":null}}'
        else:
            choice = f'{{"text":{content},"index":{event.index},"logprobs":null,"finish_reason":null}}'
        return frame(f'{self._head},"choices":[{choice}],"usage":null}}')

    def finished(self, event: Finished) -> bytes:
        if self.chat:
            return self._chunk([_choice(event.index, {}, event.finish_reason)])
        return self._chunk([{"text": "", "index": event.index, "logprobs": None,
                             "finish_reason": event.finish_reason}])

    def usage(self, usage: Usage) -> bytes:
        return self._chunk([], {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                "total_tokens": usage.total_tokens})


def _choice(index: int, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


async def _events(gw: Gateway, plan: Plan, encoder: ChunkEncoder, admission: Admission) -> AsyncGenerator[bytes, None]:
    """The SSE body. Usage is recorded even when the client leaves mid-answer: it paid for those tokens."""
    started: set[int] = set()
    results = gw.service.new_results(plan)
    try:
        async for event in gw.service.stream(plan, results):
            if isinstance(event, Usage):
                if plan.include_usage:
                    yield encoder.usage(event)
                continue
            body = encoder.text(event) if isinstance(event, Delta) else encoder.finished(event)
            if encoder.chat and event.index not in started:
                started.add(event.index)
                body = encoder.role(event.index) + body  # one write for both
            yield body
    except GatewayError as exc:
        log.warning("stream failed after the first byte: %s", exc.message)
        if isinstance(exc, ServerError):
            await admission.refund()
        yield frame(exc.body_json())
        return
    finally:
        with anyio.move_on_after(SETTLE_SECONDS, shield=True):  # runs even while the stream is cancelled
            await admission.record(gw.service.usage(plan, results))
    yield DONE


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
]
operations = [
    Operation("POST", "/v1/chat/completions", "Create a chat completion", "OpenAI", request=ChatCompletionRequest,
              response=ChatCompletion, streams=True, errors=INFERENCE_ERRORS, example={
                  "model": "meta-llama/Llama-3.1-8B-Instruct", "max_tokens": 32,
                  "messages": [{"role": "user", "content": "Hello!"}]},
              description="As OpenAI's. With `\"stream\": true` the answer is server-sent `chat.completion.chunk` "
              "events ending with `data: [DONE]`; `stream_options.include_usage` adds a final usage chunk."),
    Operation("POST", "/v1/completions", "Create a text completion", "OpenAI", request=CompletionRequest,
              response=Completion, streams=True, errors=INFERENCE_ERRORS, example={
                  "model": "meta-llama/Llama-3.1-8B-Instruct", "max_tokens": 32, "prompt": "Once upon a time"},
              description="As OpenAI's legacy completions. With `\"stream\": true`, server-sent `text_completion` "
              "chunks ending with `data: [DONE]`."),
    Operation("GET", "/v1/models", "List the models", "OpenAI", response=ModelList,
              description="Models that have a healthy node right now come first (`available: true`)."),
    Operation("GET", "/v1/models/{model_id}", "Retrieve a model", "OpenAI", response=ModelCard, errors=(404,),
              path_params={"model_id": "A model id; ids contain `/` (e.g. `meta-llama/Llama-3.1-8B-Instruct`)."}),
]
