"""`/api/v2/generate`: one Petals inference session per WebSocket (upstream-protocols.md §12.2).

The session is opened by the first message and closed when the socket closes, however it closes. Its model
calls run on a worker thread of its own, one call after another, so the close always comes after the last
step and never overlaps it. A background reader watches the socket while a generation runs: a client that
has enough tokens simply closes the socket, and generation stops at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .engine import EngineSession, PetalsEngine, RequestError
from .generation import Generation
from .protocol import GenerateStep, OpenSession
from .runtime import NodeRuntime

log = logging.getLogger("openai_proxy.petals_node")

RECEIVE_TIMEOUT = 300.0  # seconds a client may take to send its next message
T = TypeVar("T")


class Inbox:
    """Reads the socket in the background; `disconnected` is set as soon as the client goes away."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        self._messages: asyncio.Queue[str | None] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                message = await self._websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode("utf-8", errors="replace")
                self._messages.put_nowait(text)
        finally:
            self.disconnected.set()
            self._messages.put_nowait(None)

    async def next(self) -> dict[str, Any] | None:
        """The next JSON message; None once the client is gone."""
        try:
            async with asyncio.timeout(RECEIVE_TIMEOUT):
                text = await self._messages.get()
        except TimeoutError:
            raise RequestError(f"no message for {RECEIVE_TIMEOUT:g} s") from None
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise RequestError("messages must be JSON objects") from None
        if not isinstance(data, dict):
            raise RequestError("messages must be JSON objects")
        return data

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class SessionWorker:
    """The one thread that runs every model call of a socket, in order."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="petals-session")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args))

    def finish(self, session: EngineSession | None, on_closed: Callable[[], None]) -> None:
        """Close `session` after whatever step is still running, without waiting for it here."""
        def close() -> None:
            try:
                if session is not None:
                    session.close()
            finally:
                on_closed()

        self._executor.submit(close)
        self._executor.shutdown(wait=False)


async def generate_socket(websocket: WebSocket) -> None:
    runtime: NodeRuntime = websocket.app.state.runtime
    await websocket.accept()
    inbox = Inbox(websocket)
    worker = SessionWorker()
    session: EngineSession | None = None
    try:
        engine, session = await _open(runtime, inbox, worker)
        if session is not None:
            await _send(websocket, {"ok": True})
            while not inbox.disconnected.is_set() and (message := await inbox.next()) is not None:
                step = _parse(GenerateStep, message)
                await _generate(websocket, runtime, inbox, worker, engine, session, step)
    except (WebSocketDisconnect, OSError):
        pass  # the client went away: nothing to tell it
    except RequestError as exc:
        await _fail(websocket, f"{type(exc).__name__}: {exc}\n")
    # Boundary: the public API reports any failure of the model stack as {ok: false, traceback} and closes.
    except Exception:
        log.warning("generation failed", exc_info=True)
        await _fail(websocket, traceback.format_exc())
    finally:
        await inbox.close()
        worker.finish(session, runtime.session_closed if session is not None else (lambda: None))
        if websocket.application_state == WebSocketState.CONNECTED:
            await _quietly_close(websocket)


async def _open(
    runtime: NodeRuntime, inbox: Inbox, worker: SessionWorker
) -> tuple[PetalsEngine, EngineSession | None]:
    message = await inbox.next()
    if message is None:
        raise WebSocketDisconnect()
    request = _parse(OpenSession, message)
    engine = runtime.engine_for(request.model)
    session = await worker.run(engine.open_session, request.max_length)
    runtime.session_opened()
    return engine, session


async def _generate(
    websocket: WebSocket, runtime: NodeRuntime, inbox: Inbox, worker: SessionWorker, engine: PetalsEngine,
    session: EngineSession, step: GenerateStep,
) -> None:
    with runtime.model_call():
        generation = await worker.run(Generation, engine, session, step)
    while True:
        with runtime.model_call():
            result = await worker.run(generation.advance)
        if result.piece is not None or result.finished:
            text, count = (result.piece.text, result.piece.tokens) if result.piece else ("", 0)
            await _send(websocket, {"ok": True, "outputs": text, "stop": result.finished, "token_count": count})
        if result.finished or inbox.disconnected.is_set():
            return


def _parse(model: type[OpenSession] | type[GenerateStep], message: dict[str, Any]) -> Any:
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
        raise RequestError(f"bad {model.__name__} message: {problems}") from None


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(json.dumps(message, ensure_ascii=False))


async def _fail(websocket: WebSocket, trace: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):  # already gone
        await _send(websocket, {"ok": False, "traceback": trace})


async def _quietly_close(websocket: WebSocket) -> None:
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
        await websocket.close()
