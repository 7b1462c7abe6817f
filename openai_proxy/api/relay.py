"""`/ws/agent-relay`: nodes behind NAT dial in over a WebSocket (upstream-protocols.md §5.4).

Handshake: within RELAY_AUTH_TIMEOUT seconds the agent sends
`{"type":"auth","address","model","timestamp","signature"}`, the signature being EIP-191 over the compact JSON
`{"address","model","timestamp"}` (that key order, values as sent). Close codes: 4001 no auth in time,
4002 first message not `auth`, 4003 missing or malformed fields, 4004 timestamp more than 300 s off,
4005 bad signature, 4010 replaced by a newer connection for the same address. Then `auth_ok`, and the agent
is a routing candidate until its socket closes.

After auth, one reader (this handler) routes the agent's `response` / `chunk` / `done` / `error` messages to
the pending requests and answers application `ping` with `pong`; one writer task drains the connection's
outbox. Protocol-level pings are uvicorn's (`ws_ping_interval`), which also drops agents that stop answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import jsonsafe
from ..auth.wallet import InvalidSignature, recover_personal_sign
from ..nodes.relay import AgentConnection
from ..settings import Settings
from .context import gateway

log = logging.getLogger("openai_proxy.relay")

MAX_DRIFT_SECONDS = 300
MAX_MODEL_LENGTH = 200
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class Refused(Exception):
    """The handshake failed: close with `code`; `message` also goes to the agent as `auth_error`."""

    def __init__(self, code: int, reason: str, message: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.message = code, reason, message


def auth_message(address: str, model: str, timestamp: int) -> str:
    """What the agent signs: JS `JSON.stringify({address, model, timestamp})` of the values it sent."""
    return json.dumps({"address": address, "model": model, "timestamp": timestamp},
                      separators=(",", ":"), ensure_ascii=False)


async def agent_relay(websocket: WebSocket) -> None:
    gw = gateway(websocket)
    await websocket.accept()
    try:
        conn = await authenticate(websocket, gw.settings)
    except Refused as refusal:
        await _refuse(websocket, refusal)
        return
    except WebSocketDisconnect:
        return
    gw.pool.connect_agent(conn)  # closes a connection this one replaces, with 4010
    conn.post({"type": "auth_ok"})
    log.info("relay agent %s connected (model %s)", conn.address, conn.model)
    try:
        async with asyncio.TaskGroup() as group:
            writer = group.create_task(_write(websocket, conn))
            await _read(websocket, conn)
            writer.cancel()
    finally:
        gw.pool.disconnect_agent(conn)  # pending requests fail now and go elsewhere
        log.info("relay agent %s disconnected", conn.address)


async def authenticate(websocket: WebSocket, settings: Settings) -> AgentConnection:
    try:
        async with asyncio.timeout(settings.relay_auth_timeout):
            message = await websocket.receive()
    except TimeoutError:
        raise Refused(4001, "Auth timeout") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    data = _parse(message)
    if data is None or data.get("type") != "auth":
        raise Refused(4002, "Expected auth message")
    address, model, signature = data.get("address"), data.get("model"), data.get("signature")
    timestamp = _integer(data.get("timestamp"))
    if not (address and model and timestamp and signature and isinstance(address, str)
            and isinstance(model, str) and isinstance(signature, str)):
        raise Refused(4003, "Missing auth fields", "Missing auth fields")
    if not _ADDRESS.fullmatch(address) or len(model) > MAX_MODEL_LENGTH:
        raise Refused(4003, "Invalid auth fields", "Invalid address or model")
    if abs(time.time() - timestamp) > MAX_DRIFT_SECONDS:
        raise Refused(4004, "Timestamp drift", "Timestamp too old or too far in future")
    if not await _signed_by(address, auth_message(address, model, timestamp), signature):
        raise Refused(4005, "Invalid signature", "Invalid signature")
    return AgentConnection(address, model)


async def _signed_by(address: str, message: str, signature: str) -> bool:
    try:
        # Recovery is ~10 ms of pure Python: off the event loop.
        signer = await asyncio.to_thread(recover_personal_sign, message, signature)
    except (InvalidSignature, UnicodeEncodeError):  # a lone surrogate in `model` cannot even be signed
        return False
    return signer.lower() == address.lower()


async def _refuse(websocket: WebSocket, refusal: Refused) -> None:
    log.info("relay handshake refused: %s", refusal.reason)
    try:
        if refusal.message is not None:
            await websocket.send_text(json.dumps({"type": "auth_error", "message": refusal.message}))
        await websocket.close(refusal.code, refusal.reason)
    except WebSocketDisconnect:
        pass  # the agent is already gone


async def _read(websocket: WebSocket, conn: AgentConnection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = _parse(message)
        if data is None:
            log.debug("relay agent %s sent a frame that is not a JSON object", conn.address)
            continue
        kind = data.get("type")
        if kind == "ping":
            conn.post({"type": "pong"})
        elif kind in ("response", "chunk", "done", "error"):
            conn.deliver(data)
        # other types: ignored, as the protocol says


async def _write(websocket: WebSocket, conn: AgentConnection) -> None:
    try:
        while True:
            item = await conn.outbox.get()
            if isinstance(item, tuple):
                await websocket.close(*item)
                return
            await websocket.send_text(item)
    except WebSocketDisconnect:
        pass  # the reader sees the disconnect and ends the connection


def _parse(message: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = message.get("text")
    if raw is None:
        raw = message.get("bytes") or b""
    try:
        data = jsonsafe.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _integer(value: Any) -> int | None:
    """A JSON number that JS would print as an integer (1.7e9 and 1700000000.0 included), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


routes = [WebSocketRoute("/ws/agent-relay", agent_relay)]
