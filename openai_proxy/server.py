"""The uvicorn server `serve` runs: uvicorn's h11 protocol plus the connection limits a public gateway needs.

Measured on uvicorn 0.54 (h11; httptools is not installed): it never cuts a client that trickles its request
head byte by byte (its keep-alive timer stops at the first byte), and it accepts a 100 KB head that arrives
in one read (h11 bounds only *incomplete* heads). `GatewayProtocol` adds three limits:

* a head deadline: from the connection's start (so a silent half-open connection is cut too), and on a
  keep-alive connection from the first byte of each further request, the request line and headers must be
  complete within HEADER_TIMEOUT_SECONDS, or the connection is closed;
* a head size limit: a head over MAX_HEADER_BYTES, complete or not, gets 431 in the OpenAI error envelope
  with `Connection: close` (other malformed heads get uvicorn's 400, in the same envelope);
* a stalled-reader limit: when a client stops reading, the transport's buffer fills and uvicorn's flow
  control makes the app's `send` wait (backpressure: a stream stops pulling from its node, so memory stays
  bounded). If writing stays paused for SSE_SEND_TIMEOUT seconds the connection is aborted; the app then
  sees `http.disconnect` and cancels the node request, as for any client that leaves.

Idle keep-alive connections close after KEEP_ALIVE_SECONDS (uvicorn's own timer).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from .app import ConfigurationError, create_app
from .errors import ClientError, InvalidRequest
from .logs import configure_logging
from .settings import Settings
from .workers import HEALTHCHECK_SECONDS, Supervisor, metrics_directory

log = logging.getLogger("openai_proxy.server")

_HTTP_VERSION_AND_CRLFS = len(b" HTTP/1.1\r\n\r\n")
LINGER_SECONDS = 2.0  # after refusing a head: how long the rest of it is read and dropped before closing


class HeaderTooLarge(ClientError):
    status_code = 431
    default_code = "request_header_fields_too_large"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    send_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout_seconds, settings.max_header_bytes, settings.sse_send_timeout)


class ServerConfig(uvicorn.Config):
    """uvicorn's Config plus the gateway's `ConnectionLimits` (a plain attribute: it pickles to workers)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits


def head_size(request: h11.Request) -> int:
    """Bytes of the request line and headers as sent, up to optional whitespace h11 has stripped."""
    fields = sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())  # ": " and CRLF
    return len(request.method) + 1 + len(request.target) + _HTTP_VERSION_AND_CRLFS + fields


class _BoundedConnection(h11.Connection):
    """h11's server connection, refusing heads over `max_head` bytes even when they arrive complete, and
    remembering which status a refused head deserves (uvicorn's handler only knows how to send a 400)."""

    def __init__(self, max_head: int, on_head: Any) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head)
        self.max_head = max_head
        self.on_head = on_head
        self.refusal = 400

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.refusal = exc.error_status_hint  # 431 for h11's own "Receive buffer too long"
            raise
        if isinstance(event, h11.Request):
            self.on_head()
            if head_size(event) > self.max_head:
                self.refusal = 431
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                # RFC 9112 §6.1 allows refusing this; a proxy in front that trusts the other header would let a
                # second request be smuggled inside this one's body.
                self.refusal = 400
                raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding", error_status_hint=400)
        return event


class GatewayProtocol(H11Protocol):
    """uvicorn's h11 protocol with the head deadline, head size limit and stalled-reader limit above."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "limits", ConnectionLimits())
        self.conn = _BoundedConnection(self.limits.max_header_bytes, self._head_received)
        self._awaiting_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # --- the head deadline ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused request: read and dropped
        if self._awaiting_head and self._head_timer is None:
            self._start_head_timer()  # the first byte of a further request on a keep-alive connection
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._awaiting_head = True  # before uvicorn parses a pipelined request, which calls _head_received
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _start_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _head_received(self) -> None:
        self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            log.info("closed a connection from %s: no complete request head within %g s",
                     _peer(self.client), self.limits.header_timeout)
            self.transport.close()

    # --- the head size limit --------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for any head h11 refuses; answer with the right status, in the envelope."""
        status = self.conn.refusal if isinstance(self.conn, _BoundedConnection) else 400
        if status == 431:
            error: ClientError = HeaderTooLarge(
                f"The request head (request line and headers) exceeds {self.limits.max_header_bytes} bytes."
            )
        else:
            status, error = 400, InvalidRequest("The request is not valid HTTP/1.1.", code="invalid_http")
        body = error.body_json().encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            output = self.conn.send(h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]))
            output = (output or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            output += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # h11 cannot answer in this state (e.g. a response already began)
            output = b""
        self.transport.write(output)
        self._linger()

    def _linger(self) -> None:
        """Half-close, then discard what the client still sends for a moment before closing: a close with
        unread data makes the kernel answer with RST, which can destroy the error before the client reads it
        (the rest of a 100 KB head is still arriving when the 431 goes out)."""
        self._lingering = True
        self._head_received()
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # --- the stalled-reader limit -----------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.send_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing() or self.flow.write_paused:
            log.warning("dropped a connection from %s: the client stopped reading for %g s",
                        _peer(self.client), self.limits.send_timeout)
            # abort, not close: close would wait to flush a buffer the client is not reading.
            self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._write_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._write_timer = self._linger_timer = None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> ServerConfig:
    """The uvicorn configuration for the gateway `app` (an ASGI app, or an import string with `factory`)."""
    values: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": GatewayProtocol,
        "log_config": None,  # logs.configure_logging owns the handlers
        "timeout_keep_alive": settings.keep_alive_seconds,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace_seconds),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_worker_healthcheck": HEALTHCHECK_SECONDS,
    }
    values.update(overrides)
    return ServerConfig(app, limits=ConnectionLimits.from_settings(settings), **values)


def run(config: uvicorn.Config) -> None:
    """Serve until stopped, like `uvicorn.run`, with our config: one process, or `config.workers` of them
    (several workers need the app as an import string, so each process builds its own)."""
    if config.workers > 1:
        Supervisor(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()


def serve(settings: Settings, *, workers: int = 1) -> None:
    """`openai-proxy serve`: the gateway in this process, or in `workers` processes sharing one socket.

    Several workers need REDIS_URL (the memory store would give each its own limits and nonces); each builds
    its app from the environment through `openai_proxy.asgi:create_app`, and their metrics meet in a fresh
    PROMETHEUS_MULTIPROC_DIR made here before they start."""
    if workers < 1:
        raise ConfigurationError("--workers must be at least 1.")
    if workers > 1 and not settings.redis_url:
        raise ConfigurationError(
            "Several workers need REDIS_URL: with the in-memory store each worker would keep its own rate "
            "limits, nonces and revoked tokens. Set REDIS_URL or run one worker."
        )
    configure_logging(settings)
    if workers == 1:
        run(uvicorn_config(create_app(settings), settings))
        return
    with metrics_directory():  # before the workers start: prometheus-client reads it at import
        run(uvicorn_config("openai_proxy.asgi:create_app", settings, factory=True, workers=workers))
