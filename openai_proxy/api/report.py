"""The agent metrics inbox: `POST /api/v1/report` and `GET /api/v1/report/agents` (upstream §1.7, §6.3).

Both require `x-api-key` equal to ORACLE_API_KEY, compared in constant time and checked before the body is
read (the original validated the body first, so a stranger could probe the schema). With the key unset, the
routes answer 401 to everyone. Wrong keys are counted per client address in the state store (so across
replicas): past KEY_GUESSES_PER_WINDOW in KEY_GUESS_WINDOW seconds every attempt from that address is 429
until the window frees, so the key cannot be guessed at network speed. Reports expire after five minutes
(the original never expired them).
"""

from __future__ import annotations

import contextlib
import hmac
import uuid
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import AuthError, RateLimited
from ..protocol import AgentReport
from ..store import StoreUnavailable
from .body import parse_json_body
from .context import gateway
from .docs import Operation

MAX_REPORT_BYTES = 64 * 1024
KEY_GUESSES_PER_WINDOW = 20  # an agent with a mistyped key fails a handful of times, not hundreds
KEY_GUESS_WINDOW = 600.0


async def require_oracle_key(request: Request) -> None:
    gw = gateway(request)
    configured = gw.settings.oracle_api_key
    if configured is None or not configured.get_secret_value():
        raise AuthError("The Oracle API key is not configured on this gateway.")
    guesses = f"report-key-guesses:{request.client.host if request.client else 'unknown'}"
    # Without the store the guesses cannot be counted; the key itself is still checked.
    with contextlib.suppress(StoreUnavailable):
        window = await gw.store.peek_window(guesses, limit=KEY_GUESSES_PER_WINDOW, window=KEY_GUESS_WINDOW)
        if not window.allowed:  # refused before the comparison: a right key does not get through either
            raise RateLimited("Too many wrong x-api-key attempts from this address; wait and retry.",
                              retry_after=window.retry_after)
    given = request.headers.get("x-api-key", "")
    if hmac.compare_digest(given.encode(), configured.get_secret_value().encode()):
        return
    with contextlib.suppress(StoreUnavailable):
        await gw.store.acquire_slot(guesses, limit=KEY_GUESSES_PER_WINDOW, window=KEY_GUESS_WINDOW,
                                    member=uuid.uuid4().hex)
    raise AuthError("Invalid API key.")


async def post_report(request: Request) -> Response:
    await require_oracle_key(request)
    report = await parse_json_body(request, AgentReport, MAX_REPORT_BYTES)
    gateway(request).reports.add(report)
    return JSONResponse({"status": "ok"}, status_code=201)


async def list_agent_reports(request: Request) -> Response:
    await require_oracle_key(request)
    reports = [_describe(report) for report in gateway(request).reports.reports()]
    return JSONResponse({"reports": reports})


def _describe(report: AgentReport) -> dict[str, object]:
    body = report.model_dump()
    try:
        when = datetime.fromtimestamp(report.timestamp / 1000, UTC)
        body["timestamp"] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        body["timestamp"] = None  # a timestamp no calendar can show
    return body


routes = [
    Route("/api/v1/report", post_report, methods=["POST"]),
    Route("/api/v1/report/agents", list_agent_reports, methods=["GET"]),
]

_KEY = ("Requires the `x-api-key` header equal to ORACLE_API_KEY (401 otherwise, and always when it is unset). "
        f"After {KEY_GUESSES_PER_WINDOW} wrong keys from one address in {int(KEY_GUESS_WINDOW)} s, 429 with "
        "Retry-After.")
operations = [
    Operation("POST", "/api/v1/report", "Store an agent's metrics report (answers 201)", "Reports",
              request=AgentReport, auth=False, errors=(400, 401, 413, 429), description=_KEY,
              response={"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}),
    Operation("GET", "/api/v1/report/agents", "Agent reports received in the last five minutes", "Reports",
              auth=False, errors=(401, 429), description=_KEY,
              response={"type": "object", "required": ["reports"], "properties": {
                  "reports": {"type": "array", "items": {"type": "object"}}}}),
]
