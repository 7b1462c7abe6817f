"""Health, `/control`, and the Plumise node's `POST /api/v1/generate` (upstream-protocols.md §5.1, §5.2)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .petals import petals_http_generate
from .runtime import answer_whole, node_of
from .state import ControlUpdate


class PlumiseParameters(BaseModel):
    """Sampling parameters; accepted and range-checked like the real node, but the simulator is greedy."""

    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.9, ge=0, le=1)
    repetition_penalty: float = Field(default=1.2, ge=1, le=2)
    do_sample: bool = True


class PlumiseRequest(BaseModel):
    """The real node ignores unknown fields (e.g. `messages`), and so does this model."""

    inputs: str
    parameters: PlumiseParameters | None = None
    stream: bool = False  # accepted and ignored, like the real node: the reply is always one JSON object


def _validation_failure(exc: ValidationError, status_code: int) -> JSONResponse:
    errors = exc.errors(include_url=False, include_context=False)
    return JSONResponse({"detail": errors}, status_code=status_code)


async def health(request: Request) -> Response:
    cfg = node_of(request).config
    body: dict[str, Any] = {"status": "loading" if cfg.loading else "ok"}
    if cfg.model is not None:
        body["model"] = cfg.model
    body["address"] = cfg.address
    return JSONResponse(body)


async def control(request: Request) -> Response:
    """GET: the configuration plus counters. POST: change some settings, answer the new configuration."""
    node = node_of(request)
    if request.method == "GET":
        return JSONResponse(node.describe(with_counters=True))
    try:
        update = ControlUpdate.model_validate_json(await request.body())
    except ValidationError as exc:
        return _validation_failure(exc, 400)
    node.apply(update)
    return JSONResponse(node.describe(with_counters=False))


async def generate(request: Request) -> Response:
    """One path, two protocols: a JSON body is the Plumise node API, anything else the public Petals API."""
    if "json" in request.headers.get("content-type", "").lower():
        return await plumise_generate(request)
    return await petals_http_generate(request)


async def plumise_generate(request: Request) -> Response:
    try:
        body = PlumiseRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return _validation_failure(exc, 422)
    node = node_of(request)
    cfg = node.snapshot()
    if cfg.loading:
        return JSONResponse({"detail": "Model is still loading"}, status_code=503)
    if cfg.fault == "fail":
        node.tally().close("failed")
        return JSONResponse({"detail": "Inference error: simulated failure"}, status_code=500)
    parameters = body.parameters or PlumiseParameters()
    tokens = await answer_whole(request, node, cfg, body.inputs, parameters.max_new_tokens)
    if tokens is None:
        return Response()  # the client is gone or the connection was cut: nobody will read this
    return JSONResponse({"generated_text": "".join(tokens), "num_tokens": len(tokens)})
