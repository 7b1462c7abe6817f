"""The petals-node web app: `/health`, the HTTP API and the WebSocket API (upstream-protocols.md §12)."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from .engine import RequestError, generate_text
from .protocol import HttpGenerate
from .runtime import NodeRuntime
from .websocket import generate_socket

log = logging.getLogger("openai_proxy.petals_node")


async def health(request: Request) -> JSONResponse:
    """Always HTTP 200 while the process is up; `status` says whether the model is ready."""
    runtime: NodeRuntime = request.app.state.runtime
    return JSONResponse(runtime.health())


async def http_generate(request: Request) -> JSONResponse:
    """`POST /api/v1/generate`: form fields or query parameters in, `{ok, outputs}` out, HTTP 200 even on failure
    (the public API's contract: clients look at `ok`)."""
    runtime: NodeRuntime = request.app.state.runtime
    try:
        fields = HttpGenerate.model_validate(await _values(request))
        engine = runtime.engine_for(fields.model)
        with runtime.model_call():
            text = await asyncio.to_thread(
                generate_text, engine, fields.inputs, fields.max_new_tokens, fields.max_length, fields.sampling()
            )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        return _failure(f"ValueError: {problems}\n")
    except RequestError as exc:
        return _failure(f"{type(exc).__name__}: {exc}\n")
    # Boundary: the public API reports any failure of the model stack as {ok: false, traceback}.
    except Exception:
        log.warning("generation failed", exc_info=True)
        return _failure(traceback.format_exc())
    return JSONResponse({"ok": True, "outputs": text})


async def _values(request: Request) -> dict[str, str]:
    """Flask's `request.values`: form fields (urlencoded or multipart), then the query string, which wins."""
    values: dict[str, str] = {}
    if request.method == "POST" and request.headers.get("content-type"):
        async with request.form() as form:
            values.update({key: value for key, value in form.items() if isinstance(value, str)})
    values.update(request.query_params)
    return values


def _failure(trace: str) -> JSONResponse:
    return JSONResponse({"ok": False, "traceback": trace})


def create_app(runtime: NodeRuntime) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.runtime = runtime
        loading = asyncio.create_task(runtime.load(), name="load-model")
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/api/v1/generate", http_generate, methods=["POST"]),
        WebSocketRoute("/api/v2/generate", generate_socket),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
