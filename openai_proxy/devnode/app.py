"""The devnode's composition root: the route table and the uvicorn runner."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from .http_api import control, generate, health
from .openai_api import chat_completions, completions
from .petals import PetalsWebSocket
from .state import DevnodeConfig, NodeState

# Seconds uvicorn waits for open connections (a hung request, a live WebSocket session) before it
# cancels them on shutdown; a simulator has nothing worth waiting for.
_SHUTDOWN_GRACE = 1


def create_devnode_app(config: DevnodeConfig) -> Starlette:
    """One ASGI app speaking all four node protocols.

    The app keeps `config` itself: `POST /control` changes that object, and changes made to it directly
    apply to the next request.
    """
    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/control", control, methods=["GET", "POST"]),
            Route("/api/v1/generate", generate, methods=["POST"]),
            WebSocketRoute("/api/v2/generate", PetalsWebSocket()),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )
    app.state.node = NodeState(config)
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, plus an event set once it listens (so callers learn the port chosen for port 0)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()

    def bound_port(self) -> int:
        port: int = self.servers[0].sockets[0].getsockname()[1]
        return port


async def serve_devnode(config: DevnodeConfig, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the devnode until cancelled (or until uvicorn exits on SIGINT/SIGTERM).

    `on_ready` is called with the bound port once the socket listens, which is how a caller that asked for
    port 0 learns the real one.
    """
    app = create_devnode_app(config)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=_SHUTDOWN_GRACE,
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        await _announce(server, serving, on_ready)
        # Shielded: our cancellation must become a graceful shutdown, not a cancelled uvicorn.
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


async def _announce(server: _Server, serving: asyncio.Task[None], on_ready: Callable[[int], None] | None) -> None:
    listening = asyncio.create_task(server.listening.wait())
    await asyncio.wait((listening, serving), return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if server.listening.is_set() and on_ready is not None:
        on_ready(server.bound_port())
