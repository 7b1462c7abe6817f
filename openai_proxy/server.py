"""The uvicorn server `serve` runs: uvicorn's httptools protocol plus the connection limits a public gateway needs.

httptools (llhttp, Node's parser) rather than h11: measured with bench/ (issue 6), parsing and writing through
h11 was about a quarter of the gateway's CPU per request; on httptools the gateway adds about 0.7 ms less per
request at one connection. llhttp refuses smuggling heads itself (Content-Length with Transfer-Encoding, two
lengths, a Transfer-Encoding that does not end in chunked). uvicorn on its own never cuts a client that
trickles its request head byte by byte (its keep-alive timer stops at the first byte) and sets no limit on a
head's size, so `GatewayProtocol` adds three limits:

* a head deadline: from the connection's start (so a silent half-open connection is cut too), and on a
  keep-alive connection from the first byte of each further request, the request line and headers must be
  complete within HEADER_TIMEOUT_SECONDS, or the connection is closed;
* a head size limit: a head over MAX_HEADER_BYTES, complete or not, gets 431 in the OpenAI error envelope
  with `Connection: close` (other malformed heads get 400, in the same envelope);
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

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .app import ConfigurationError, create_app
from .errors import ClientError, InvalidRequest
from .logs import configure_logging
from .settings import Settings
from .workers import HEALTHCHECK_SECONDS, Supervisor, metrics_directory

log = logging.getLogger("openai_proxy.server")

# The request line's method, spaces, " HTTP/1.1" and the CRLFs around the headers: what a head holds besides
# the target and the header fields (the longest method we serve, OPTIONS, counted).
_HEAD_FRAMING = len(b"OPTIONS  HTTP/1.1\r\n\r\n")
LINGER_SECONDS = 2.0  # after refusing a head: how long the rest of it is read and dropped before closing


class HeaderTooLarge(ClientError):
    status_code = 431
    default_code = "request_header_fields_too_large"


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a head that is over the limit."""


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


class GatewayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head deadline, head size limit and stalled-reader limit above."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits: ConnectionLimits = getattr(config, "limits", ConnectionLimits())
        self._awaiting_head = True
        self._head_bytes = 0  # target and header fields of the head being parsed
        self._unparsed_head_bytes = 0  # bytes received while the head being parsed is incomplete
        self._refusal = 400
        self._head_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # --- the head deadline and size -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a refused request: read and dropped
        super().data_received(data)
        if self._awaiting_head and not self._lingering:
            # A head still incomplete after this read: llhttp buffers a header until it ends, so bound the
            # bytes here (a head that ends within the read was measured field by field in the callbacks).
            self._unparsed_head_bytes += len(data)
            if self._unparsed_head_bytes > self.limits.max_header_bytes:
                self._refusal = 431
                self.send_400_response("request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True
        self._head_bytes = self._unparsed_head_bytes = 0
        if self._head_timer is None:
            self._start_head_timer()  # the first byte of a further request on a keep-alive connection

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF

    def on_headers_complete(self) -> None:
        self._head_received()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes + _HEAD_FRAMING > self.limits.max_header_bytes:
            self._refusal = 431
            raise _HeadTooLarge  # httptools turns it into HttpParserCallbackError: uvicorn's 400 path, below

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

    # --- refusing a head --------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for any head the parser refuses; answer with the right status, in the envelope."""
        error: ClientError
        if self._refusal == 431:
            status, error = 431, HeaderTooLarge(
                f"The request head (request line and headers) exceeds {self.limits.max_header_bytes} bytes."
            )
        else:
            status, error = 400, InvalidRequest("The request is not valid HTTP/1.1.", code="invalid_http")
        body = error.body_json().encode()
        self.transport.write(b"".join([
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]))
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
