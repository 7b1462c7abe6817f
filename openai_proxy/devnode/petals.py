"""The public Petals API (upstream-protocols.md §12): HTTP `/api/v1/generate` and WS `/api/v2/generate`."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from itertools import islice
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from .runtime import ClientGone, answer_whole, cut_connection, forever, node_of, paced, unless
from .state import DevnodeConfig, NodeState, Outcome
from .text import count_words, iter_tokens

# An answer that is not bounded by EOS or death runs until the session's max_length.
_UNBOUNDED = 1 << 62


class PetalsHttpRequest(BaseModel):
    """The form fields / query parameters of the HTTP API; sampling fields are checked, then ignored."""

    model: str
    inputs: str = ""
    max_length: int | None = Field(default=None, ge=0)
    max_new_tokens: int | None = Field(default=None, ge=0)
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float = Field(default=1.0, ge=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)


class OpenSession(BaseModel):
    """The first message on a socket: which model, and the token budget of the whole session."""

    type: Literal["open_inference_session"]
    model: str
    max_length: int = Field(ge=1)


class GenerateStep(BaseModel):
    """One `generate` message; sampling fields and `extra_stop_sequences` are accepted and ignored."""

    type: Literal["generate"]
    inputs: str | None = None
    max_new_tokens: int = Field(ge=1)
    stop_sequence: str | None = None
    extra_stop_sequences: list[str] | None = None


def petals_failure(message: str) -> dict[str, Any]:
    return {"ok": False, "traceback": f"Traceback (most recent call last):\n  (devnode)\n{message}\n"}


# --- HTTP ---------------------------------------------------------------------------------------------


async def _form_values(request: Request) -> dict[str, str]:
    """Flask's `request.values`: the query string first, then an urlencoded form body."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if body and not content_type.startswith("application/x-www-form-urlencoded"):
        raise ValueError(f"unsupported content type {content_type!r}: send form fields or a query string")
    values = dict(parse_qsl(body.decode(), keep_blank_values=True))
    values.update(request.query_params)
    return values


def _new_token_count(fields: PetalsHttpRequest) -> int:
    if fields.max_new_tokens is not None:
        return fields.max_new_tokens
    if fields.max_length is None:
        raise ValueError("ValueError: either max_length or max_new_tokens is required")
    room = fields.max_length - count_words(fields.inputs)
    if room < 0:
        raise ValueError("ValueError: max_length is smaller than the prompt (max_length exceeded)")
    return room


def _parse_http(values: dict[str, str], cfg: DevnodeConfig) -> tuple[PetalsHttpRequest, int]:
    """The request and its number of new tokens; ValueError (incl. ValidationError) if it cannot run."""
    fields = PetalsHttpRequest.model_validate(values)
    if cfg.loading:
        raise ValueError("RuntimeError: Model is still loading")
    problem = cfg.model_error(fields.model)
    if problem is not None:
        raise ValueError(f"ValueError: {problem}")
    return fields, _new_token_count(fields)


async def petals_http_generate(request: Request) -> Response:
    """Always HTTP 200: success and failure are told apart by `ok`, as on chat.petals.dev."""
    node = node_of(request)
    cfg = node.snapshot()
    try:
        fields, count = _parse_http(await _form_values(request), cfg)
    except (ValueError, UnicodeDecodeError) as exc:
        return JSONResponse(petals_failure(str(exc)))
    if cfg.fault == "fail":
        node.tally().close("failed")
        return JSONResponse(petals_failure("RuntimeError: simulated failure"))
    tokens = await answer_whole(request, node, cfg, fields.inputs, count)
    if tokens is None:
        return Response()  # the client is gone or the connection was cut: nobody will read this
    return JSONResponse({"ok": True, "outputs": "".join(tokens)})


# --- WebSocket ----------------------------------------------------------------------------------------


class _Session:
    """One inference session: the text so far (every input and every output) and its token count."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.context = ""
        self.used = 0

    def feed(self, text: str, tokens: int) -> None:
        self.context += text
        self.used += tokens

    def overflow(self) -> str:
        return f"ValueError: max_length exceeded: this session holds at most {self.max_length} tokens"


class _Conversation:
    """One socket: a reader task keeps receiving, so a close is noticed even while a generation runs."""

    def __init__(self, websocket: WebSocket, receive: Receive) -> None:
        self.ws = websocket
        self.raw_receive = receive
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.gone = asyncio.Event()

    async def read_all(self) -> None:
        while True:
            message = await self.ws.receive()
            await self.inbox.put(message)
            if message["type"] == "websocket.disconnect":
                self.gone.set()
                return

    async def next_request(self) -> dict[str, Any] | None:
        """The next JSON message, or None once the client has closed the socket."""
        message = await self.inbox.get()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text") or (message.get("bytes") or b"").decode()
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError("each message must be a JSON object")
        return parsed

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(message))

    async def fail(self, problem: str) -> None:
        """Petals' error path: one `ok: false` message, then the server closes the socket."""
        await self.send(petals_failure(problem))
        await self.ws.close()


class PetalsWebSocket:
    """ASGI endpoint for `/api/v2/generate` (a class, so it keeps the raw `receive` for the "die" fault)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        talk = _Conversation(websocket, receive)
        reader = asyncio.create_task(talk.read_all())
        try:
            await _converse(talk, node_of(websocket))
        except (WebSocketDisconnect, ClientGone):
            pass  # the client went away: the session simply ends
        except (ValueError, UnicodeDecodeError) as exc:  # ValidationError is a ValueError
            with suppress(WebSocketDisconnect):
                await talk.fail(f"ValueError: {exc}")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _open(talk: _Conversation, node: NodeState) -> _Session | None:
    request = await talk.next_request()
    if request is None:
        return None
    opening = OpenSession.model_validate(request)
    cfg = node.snapshot()
    problem = "RuntimeError: Model is still loading" if cfg.loading else cfg.model_error(opening.model)
    if problem is not None:
        await talk.fail(problem)
        return None
    await talk.send({"ok": True})
    return _Session(opening.max_length)


async def _converse(talk: _Conversation, node: NodeState) -> None:
    session = await _open(talk, node)
    if session is None:
        return
    while (request := await talk.next_request()) is not None:
        step = GenerateStep.model_validate(request)
        inputs = step.inputs or ""
        session.feed(inputs, count_words(inputs))
        cfg = node.snapshot()
        with node.tally() as tally:
            outcome = await unless(talk.gone.wait(), _generate(talk, cfg, session, step))
            tally.close(outcome)
        if outcome != "completed":
            return


async def _generate(talk: _Conversation, cfg: DevnodeConfig, session: _Session, step: GenerateStep) -> Outcome:
    if cfg.fault == "fail":
        await talk.fail("RuntimeError: simulated failure")
        return "failed"
    if cfg.fault == "hang":
        await forever()
    if step.stop_sequence is None:
        return await _generate_once(talk, cfg, session, step.max_new_tokens)
    return await _generate_steps(talk, cfg, session, step.max_new_tokens, step.stop_sequence)


async def _generate_once(talk: _Conversation, cfg: DevnodeConfig, session: _Session, requested: int) -> Outcome:
    """Without a stop sequence: one answer of (up to) `requested` tokens in one message."""
    count = cfg.answer_length(requested)
    if cfg.fault == "die":
        count = min(count, cfg.die_after)
    room = session.max_length - session.used
    tokens = [t async for t in paced(cfg, islice(iter_tokens(session.context), max(min(count, room), 0)))]
    session.feed("".join(tokens), len(tokens))
    if cfg.fault == "die":
        cut_connection(talk.raw_receive)
        return "failed"
    if count > room:
        await talk.fail(session.overflow())
        return "failed"
    await talk.send({"ok": True, "outputs": "".join(tokens), "stop": True, "token_count": len(tokens)})
    return "completed"


async def _generate_steps(
    talk: _Conversation, cfg: DevnodeConfig, session: _Session, per_step: int, stop_sequence: str
) -> Outcome:
    """With a stop sequence: `per_step` tokens per message until EOS (sent as the stop sequence), death,
    or the session's max_length."""
    limit = _UNBOUNDED if cfg.eos_after is None else cfg.eos_after
    if cfg.fault == "die":
        limit = min(limit, cfg.die_after)
    room = session.max_length - session.used
    pending: list[str] = []
    async for token in paced(cfg, islice(iter_tokens(session.context), max(min(limit, room), 0))):
        pending.append(token)
        if len(pending) == per_step:
            await _send_step(talk, session, pending)
            pending = []
    if pending:
        await _send_step(talk, session, pending)
    if cfg.fault == "die":
        cut_connection(talk.raw_receive)
        return "failed"
    if limit > room:
        await talk.fail(session.overflow())
        return "failed"
    # The "model" emitted its end marker: Petals reports it as a final step holding the stop sequence.
    session.feed(stop_sequence, 0)
    await talk.send({"ok": True, "outputs": stop_sequence, "stop": True, "token_count": 1})
    return "completed"


async def _send_step(talk: _Conversation, session: _Session, tokens: list[str]) -> None:
    text = "".join(tokens)
    session.feed(text, len(tokens))
    await talk.send({"ok": True, "outputs": text, "stop": False, "token_count": len(tokens)})
