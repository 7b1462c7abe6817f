"""Socket.IO namespace `/ws/inference`: the original service's WebSocket API (upstream-protocols.md §8).

Connect (default path `/socket.io/`) with the JWT, or a service key, in `auth.token` or in an
`Authorization: Bearer` header. A refused connection gets `connect_error` with `{message, data: {code}}`,
`code` being the HTTP-like status (401 bad token, 503 state store down). Then, client → server → client:

    inference          {model, prompt | messages, max_tokens?, temperature?, top_p?}   (as /api/v1/inference)
                       → inference_response   {id, model, choices: [{text? | message?, finish_reason}], usage}
    inference_stream   the same payload
                       → inference_chunk      {data: "<text>"}, one per chunk
                       → inference_complete   {status: "done", id, model, finish_reason, usage}
    any failure        → inference_error      {message, code, statusCode, type, param, error_code[, retry_after]}
                                              (`code` and `statusCode`: the HTTP-like status, e.g. 400, 401,
                                              404, 429, 503; `error_code`: the /v1 envelope's string code)

Every message is a request of its own for auth and limits: the token is checked again (expiry, logout) and a
slot is taken from the same window as /v1 and /api/v1. A disconnect cancels the connection's running
requests, which closes their node requests. Payloads are validated like the HTTP body (unknown fields 400).
Several uvicorn workers need sticky sessions for the polling transport; the websocket transport is fine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import socketio
from socketio.exceptions import ConnectionRefusedError
from starlette.types import ASGIApp

from .. import jsonsafe
from ..errors import GatewayError
from ..limits import Admission
from ..protocol import LegacyInferenceRequest
from ..service import Delta, Finished, Plan
from ..service import Usage as ServiceUsage
from ..settings import Settings
from .body import validate
from .context import Gateway
from .legacy import accounted_stream, completion_payload, legacy_response, new_id, plan_legacy
from .middleware import request_id_var

log = logging.getLogger("openai_proxy.socketio")

NAMESPACE = "/ws/inference"
SOCKETIO_PATH = "socket.io"


class SafeJSON:
    """The JSON codec of Engine.IO and Socket.IO packets: `jsonsafe`'s depth guard on everything a client
    sends (a deeply nested packet would otherwise crash the process, see jsonsafe), stdlib `dumps` out."""

    @staticmethod
    def loads(raw: str | bytes, **_: Any) -> Any:
        return jsonsafe.loads(raw)

    @staticmethod
    def dumps(data: Any, **kwargs: Any) -> str:
        return json.dumps(data, **kwargs)


@dataclass
class _Client:
    gateway: Gateway
    authorization: str
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def error_payload(exc: GatewayError) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "message": exc.message, "code": exc.status_code, "statusCode": exc.status_code,  # the original's name
        "type": exc.error_type, "param": exc.param, "error_code": exc.code,
    }
    retry_after = exc.headers.get("Retry-After")
    if retry_after is not None:
        payload["retry_after"] = int(retry_after)
    return payload


INTERNAL_ERROR = "The gateway hit an internal error. Please retry; it has been logged."


class InferenceNamespace(socketio.AsyncNamespace):  # type: ignore[misc]  # python-socketio has no type hints
    """One per app. Connections are kept by sid with the gateway of the app that accepted them (read from
    the ASGI scope's lifespan state, like Starlette's `request.state`) and the tasks running for them."""

    def __init__(self) -> None:
        super().__init__(NAMESPACE)
        self._clients: dict[str, _Client] = {}

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        gw = environ["asgi.scope"]["state"]["gateway"]
        assert isinstance(gw, Gateway)
        authorization = _authorization(environ, auth)
        if authorization is None:
            raise ConnectionRefusedError(
                "Authentication required: connect with auth: {token: <JWT>} or an 'Authorization: Bearer <JWT>' "
                "header.", {"code": 401},
            )
        try:
            await gw.auth.principal(authorization)
        except GatewayError as exc:
            raise ConnectionRefusedError(exc.message, {"code": exc.status_code}) from None
        self._clients[sid] = _Client(gw, authorization)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        client = self._clients.pop(sid, None)
        if client is not None:
            for task in client.tasks:
                task.cancel()  # closes the node request through the generators' `finally`

    async def on_inference(self, sid: str, data: Any = None, *_: Any) -> None:
        await self._handle(sid, data, stream=False)

    async def on_inference_stream(self, sid: str, data: Any = None, *_: Any) -> None:
        await self._handle(sid, data, stream=True)

    async def _handle(self, sid: str, data: Any, *, stream: bool) -> None:
        # python-socketio runs each event in a task of its own (async_handlers=True) and treats its
        # cancellation as a normal end, so the disconnect handler may cancel exactly this request.
        client = self._clients.get(sid)
        task = asyncio.current_task()
        if client is None or task is None:
            return
        client.tasks.add(task)
        request_id_var.set(f"req_{secrets.token_hex(12)}")  # this task's own context: keys its limit slot
        try:
            await self._serve(sid, client, data, stream=stream)
        except GatewayError as exc:
            await self.emit("inference_error", error_payload(exc), to=sid)
        except Exception:  # the event boundary (like render_crash): without an answer the client waits forever
            log.exception("Socket.IO %s failed", "inference_stream" if stream else "inference")
            await self.emit("inference_error", error_payload(GatewayError(INTERNAL_ERROR)), to=sid)
        finally:
            client.tasks.discard(task)

    async def _serve(self, sid: str, client: _Client, data: Any, *, stream: bool) -> None:
        gw = client.gateway
        principal = await gw.auth.principal(client.authorization)
        body = validate(LegacyInferenceRequest, data)
        plan = await plan_legacy(gw, body, principal)
        ident = new_id()
        async with gw.admit(principal, plan) as admission:
            if stream:
                await self._stream(sid, gw, plan, admission, ident, body.model)
                return
            results, usage = await gw.service.complete(plan)
            await admission.record(usage)
        answer = legacy_response(ident, body, results, usage)
        await self.emit("inference_response", answer.model_dump(exclude_none=True), to=sid)

    async def _stream(self, sid: str, gw: Gateway, plan: Plan, admission: Admission, ident: str, model: str) -> None:
        finish_reason = "stop"
        usage = ServiceUsage(sum(plan.prompt_tokens), 0)
        async with aclosing(accounted_stream(gw, plan, admission)) as events:
            async for event in events:
                if isinstance(event, Delta):
                    if event.text:
                        await self.emit("inference_chunk", {"data": event.text}, to=sid)
                elif isinstance(event, Finished):
                    finish_reason = event.finish_reason
                else:
                    usage = event
        await self.emit("inference_complete", completion_payload(ident, model, finish_reason, usage), to=sid)


def _authorization(environ: dict[str, Any], auth: Any) -> str | None:
    """`auth.token` (with or without "Bearer "), else the Authorization header as sent."""
    token = auth.get("token") if isinstance(auth, dict) else None
    if isinstance(token, str) and token.strip():
        token = token.strip()
        return token if token.lower().startswith("bearer ") else f"Bearer {token}"
    header = environ.get("HTTP_AUTHORIZATION")
    return header if isinstance(header, str) and header else None


class _Server(socketio.AsyncServer):  # type: ignore[misc]  # python-socketio has no type hints
    """Ends a closed connection's pending long-poll at once. python-engineio closes a polling socket on the
    client's CLOSE without answering the GET that is still waiting, which then holds its HTTP connection
    (and delays a graceful shutdown) for up to ping_interval + ping_timeout, 45 s. Node's engine.io fixed
    the same in socketio/engine.io#291; this does it from the one hook Socket.IO exposes."""

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and not socket.upgraded:
            socket.queue.put_nowait(None)  # the poll returns no packets; the socket is already closed


class InferenceSockets:
    """The Socket.IO server of one app: created in `create_app`, wrapped around the Starlette app's
    middleware stack by `wrap` (so `/socket.io/` never reaches Starlette's routes or CORS middleware,
    and lifespan events pass through to Starlette), stopped by `close` in the lifespan."""

    def __init__(self, settings: Settings) -> None:
        origins = [origin for origin in settings.cors_origins if origin != "*"]
        self.server = _Server(
            async_mode="asgi",
            # Engine.IO reads [] as "no origin check at all"; None means same-origin only.
            cors_allowed_origins=origins or None,
            json=SafeJSON,  # sets the codec on the Engine.IO and Socket.IO packet classes
            max_http_buffer_size=settings.max_body_bytes,
            async_handlers=True,
            namespaces=[NAMESPACE],
        )
        self.server.register_namespace(InferenceNamespace())

    def wrap(self, app: ASGIApp) -> ASGIApp:
        wrapped: ASGIApp = socketio.ASGIApp(self.server, other_asgi_app=app, socketio_path=SOCKETIO_PATH)
        return wrapped

    async def close(self) -> None:
        await self.server.shutdown()
