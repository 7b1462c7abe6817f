"""The original Plumise Inference API: /api/v1/inference, /inference/chat, /inference/stream and /models.

Requests keep the original's fields and answers keep its shape (upstream-protocols.md §1.3-§1.6), behind the
same auth, tiers and limits as /v1: each handler translates the body to the /v1 wire model and runs the
same plan. The original's latent bugs are fixed: an unknown model is a 404 (not a 400 or 500),
`finish_reason` is "length" when `max_tokens` cut the answer, an explicit `temperature: 0` is honoured, and
the stream carries usage, an end marker and in-band errors.

`/api/v1/inference/stream` (POST with the JSON body, or GET with the same fields as query parameters and
`messages` as a JSON string) answers server-sent events in the original's framing, raw text in `data:`:

    id: 1
    data: <a raw text chunk>        one event per chunk; a chunk with line breaks is sent as several
                                    `data:` lines, which every SSE parser joins back with "\\n"
    ...                             (so "\\r\\n" and "\\r" inside a chunk arrive as "\\n")
    id: 7
    event: complete
    data: {"status":"done","id":"req_…","model":"…","finish_reason":"stop","usage":{…}}   (one line)

`complete` is the end marker: a stream that stops without it was cut short. A failure after the stream
started ends it with, instead, `event: error` whose data is the JSON error envelope `{"error": {"message",
"type", "param", "code"}}`. Named events never reach an EventSource's `onmessage`, so a client that joins
all unnamed data gets exactly the answer text. `: keep-alive` comments flow while a node is silent. Errors
before the stream starts (auth, validation, unknown model, rate limit, no node) are ordinary JSON error
responses with their HTTP status, not SSE. Successes are 200 (the original's NestJS answered POSTs with 201;
no client of it could rely on 200, and every HTTP client treats both as success).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any, Literal

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import jsonsafe
from ..auth.principal import Principal
from ..catalog import ModelSpec
from ..errors import GatewayError, InvalidRequest, ModelNotFound, ServerError
from ..limits import Admission
from ..protocol import (
    ChatCompletionRequest,
    LegacyAnswer,
    LegacyChoice,
    LegacyInferenceRequest,
    LegacyInferenceResponse,
    LegacyModelInfo,
    LegacyModelList,
    Usage,
)
from ..service import ChoiceResult, Delta, Finished, Plan, StreamEvent
from ..service import Usage as ServiceUsage
from .body import parse_json_body, validate
from .context import Gateway, gateway
from .docs import Operation
from .sse import EventStreamResponse

SETTLE_SECONDS = 5.0
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # exactly the line ends of the SSE grammar

ModelStatus = Literal["available", "degraded", "offline"]


def new_id() -> str:
    return f"req_{int(time.time() * 1000)}_{secrets.token_hex(8)}"


# --- shared with the Socket.IO namespace -------------------------------------------------------------------


async def plan_legacy(gw: Gateway, body: LegacyInferenceRequest, principal: Principal) -> Plan:
    if body.prompt is None and body.messages is None:
        raise InvalidRequest("Either prompt or messages must be provided.", param="prompt")
    request = body.to_openai()
    if isinstance(request, ChatCompletionRequest):
        return await gw.service.plan_chat(request, principal)
    return await gw.service.plan_completion(request, principal)


def legacy_response(
    ident: str, body: LegacyInferenceRequest, results: Sequence[ChoiceResult], usage: ServiceUsage
) -> LegacyInferenceResponse:
    choices = [
        LegacyChoice(
            text=r.text if body.prompt is not None else None,
            message=LegacyAnswer(content=r.text) if body.messages is not None else None,
            finish_reason=r.finish_reason,
        )
        for r in results
    ]
    return LegacyInferenceResponse(id=ident, model=body.model, choices=choices, usage=wire_usage(usage))


def wire_usage(usage: ServiceUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def completion_payload(ident: str, model: str, finish_reason: str, usage: ServiceUsage) -> dict[str, Any]:
    """The end of a stream: `event: complete` on SSE, `inference_complete` on Socket.IO."""
    return {"status": "done", "id": ident, "model": model, "finish_reason": finish_reason,
            "usage": wire_usage(usage).model_dump()}


async def accounted_stream(gw: Gateway, plan: Plan, admission: Admission) -> AsyncGenerator[StreamEvent, None]:
    """The plan's stream events, with the admission settled: usage recorded however the stream ends (the
    caller paid for the tokens a node produced, even if it left), the slot refunded if we failed it."""
    results = gw.service.new_results(plan)
    try:
        async for event in gw.service.stream(plan, results):
            yield event
    except ServerError:
        await admission.refund()
        raise
    finally:
        with anyio.move_on_after(SETTLE_SECONDS, shield=True):  # runs even while the stream is cancelled
            await admission.record(gw.service.usage(plan, results))


# --- inference routes --------------------------------------------------------------------------------------


async def inference(request: Request) -> Response:
    """POST /api/v1/inference and /api/v1/inference/chat (one handler, as in the original)."""
    gw = gateway(request)
    principal = await gw.authenticate(request)
    body = await parse_json_body(request, LegacyInferenceRequest, gw.settings.max_body_bytes)
    plan = await plan_legacy(gw, body, principal)
    async with gw.admit(principal, plan) as admission:
        results, usage = await gw.complete(request, plan, admission)
    answer = legacy_response(new_id(), body, results, usage)
    return Response(answer.model_dump_json(exclude_none=True), media_type="application/json",
                    headers=admission.headers)


async def inference_stream(request: Request) -> Response:
    gw = gateway(request)
    principal = await gw.authenticate(request)
    body = await _stream_request(request, gw)
    plan = await plan_legacy(gw, body, principal)
    async with gw.admit(principal, plan) as admission:
        events = _sse_events(gw, plan, admission, new_id(), body.model)
        return EventStreamResponse(events, keepalive=gw.settings.sse_keepalive_seconds, headers=admission.headers)


async def _stream_request(request: Request, gw: Gateway) -> LegacyInferenceRequest:
    if request.method == "POST":
        return await parse_json_body(request, LegacyInferenceRequest, gw.settings.max_body_bytes)
    query: dict[str, Any] = dict(request.query_params)
    if "messages" in query:
        try:
            query["messages"] = jsonsafe.loads(query["messages"])
        except ValueError as exc:
            raise InvalidRequest("The messages query parameter must be a JSON array.", param="messages") from exc
    return validate(LegacyInferenceRequest, query)


def sse_event(data: str, *, ident: int, event: str | None = None) -> bytes:
    lines = [f"id: {ident}"]
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


async def _sse_events(
    gw: Gateway, plan: Plan, admission: Admission, ident: str, model: str
) -> AsyncGenerator[bytes, None]:
    serial = itertools.count(1)
    finish_reason = "stop"
    usage = ServiceUsage(sum(plan.prompt_tokens), 0)
    try:
        async with aclosing(accounted_stream(gw, plan, admission)) as events:
            async for event in events:
                if isinstance(event, Delta):
                    if event.text:
                        yield sse_event(event.text, ident=next(serial))
                elif isinstance(event, Finished):
                    finish_reason = event.finish_reason
                else:
                    usage = event
    except GatewayError as exc:
        yield sse_event(exc.body_json(), ident=next(serial), event="error")
        return
    payload = completion_payload(ident, model, finish_reason, usage)
    yield sse_event(json.dumps(payload, separators=(",", ":")), ident=next(serial), event="complete")


# --- models ------------------------------------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    """Public, like the original: every model, including those no node serves right now."""
    gw = gateway(request)
    reported = reported_addresses(gw)
    body = LegacyModelList(models=[model_info(gw, spec, reported) for spec in gw.catalog])
    return Response(body.model_dump_json(), media_type="application/json")


async def get_model(request: Request) -> Response:
    gw = gateway(request)
    await gw.authenticate(request)
    model_id = request.path_params["model_id"]
    spec = gw.catalog.get(model_id)
    if spec is None:
        raise ModelNotFound(model_id)
    return Response(model_info(gw, spec, reported_addresses(gw)).model_dump_json(), media_type="application/json")


def model_info(gw: Gateway, spec: ModelSpec, reported: dict[str, set[str]]) -> LegacyModelInfo:
    """`nodes`: healthy pool nodes for the model, plus agents whose live /api/v1/report lists it and that are
    not among those nodes. `status`: offline without any; degraded while some of its pool nodes are down."""
    candidates = gw.pool.candidates(spec.id)
    in_pool = {node.address.lower() for node in candidates if node.address}
    nodes = len(candidates) + len(reported.get(spec.id, set()) - in_pool)
    serving = sum(1 for node in gw.pool.nodes.values() if _may_serve(node.models(), spec.id))
    status: ModelStatus = "offline" if nodes == 0 else "degraded" if len(candidates) < serving else "available"
    # Built-in descriptions read "Name: what it is"; a catalogue entry without one is named by its id.
    name = spec.description.split(": ", 1)[0] if ": " in spec.description else spec.id
    return LegacyModelInfo(
        id=spec.id, name=name, description=spec.description,
        max_tokens=spec.max_output_tokens, context_length=spec.context_length, tier=spec.tier,
        nodes=nodes, status=status,
    )


def _may_serve(models: frozenset[str] | None, model_id: str) -> bool:
    return models is None or model_id in models  # None: the node did not say, so it serves any


def reported_addresses(gw: Gateway) -> dict[str, set[str]]:
    """Model id → lower-case addresses of the agents whose live report (/api/v1/report) lists it."""
    by_model: dict[str, set[str]] = {}
    for report in gw.reports.reports():
        for model_id in report.models:
            by_model.setdefault(model_id, set()).add(report.address.lower())
    return by_model


routes = [
    Route("/api/v1/inference", inference, methods=["POST"]),
    Route("/api/v1/inference/chat", inference, methods=["POST"]),
    Route("/api/v1/inference/stream", inference_stream, methods=["GET", "POST"]),
    Route("/api/v1/models", list_models, methods=["GET"]),
    Route("/api/v1/models/{model_id:path}", get_model, methods=["GET"]),
]

_ANSWER = ("The original request and answer shapes: `choices[0].text` when `prompt` was given, "
           "`choices[0].message` when `messages` was (which then wins). Same tiers and limits as /v1.")
_STREAM = {"type": "string", "description": "Server-sent events: `id: n` + `data: <raw text chunk>` per chunk, "
           "then `event: complete` with `{status, id, model, finish_reason, usage}`; a failure after the start "
           "ends with `event: error` carrying the error envelope instead (see api/legacy.py)."}
_ERRORS = (400, 403, 404, 413, 429, 502, 503, 504)
_MODEL_ID = {"model_id": "A model id; ids contain `/` (raw or encoded as %2F)."}
operations = [
    Operation("POST", "/api/v1/inference", "Run a completion (the original route)", "Inference",
              request=LegacyInferenceRequest, response=LegacyInferenceResponse, errors=_ERRORS, description=_ANSWER),
    Operation("POST", "/api/v1/inference/chat", "Run a chat completion (the original route)", "Inference",
              request=LegacyInferenceRequest, response=LegacyInferenceResponse, errors=_ERRORS, description=_ANSWER),
    Operation("POST", "/api/v1/inference/stream", "Stream a completion as server-sent events", "Inference",
              request=LegacyInferenceRequest, response=_STREAM, media_type="text/event-stream", errors=_ERRORS),
    Operation("GET", "/api/v1/inference/stream", "Stream a completion (query parameters)", "Inference",
              query=LegacyInferenceRequest, response=_STREAM, media_type="text/event-stream", errors=_ERRORS,
              description="The POST body's fields as query parameters; `messages` as a JSON-encoded array."),
    Operation("GET", "/api/v1/models", "List every model with its nodes and status", "Models",
              response=LegacyModelList, auth=False),
    Operation("GET", "/api/v1/models/{model_id}", "Get one model", "Models", response=LegacyModelInfo,
              errors=(404,), path_params=_MODEL_ID),
]
