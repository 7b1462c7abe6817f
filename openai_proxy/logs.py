"""Structured JSON logs, one object per line, with the request id of the request being served.

Every request ends with one access line (api/middleware.py): request id, route, model, nodes, status,
latency, tokens and a shortened wallet address. Secrets never belong in a log line: no code logs headers,
tokens or signatures, and as a last line of defence the formatter masks anything shaped like a JWT, a bearer
credential or a 65-byte signature. Prompt text appears only with LOG_PROMPTS=true (a debug setting).
"""

from __future__ import annotations

import logging
import re
import sys
import time

from . import jsonsafe
from .api.middleware import request_id_var
from .settings import Settings

# Attributes every LogRecord has; anything else was passed through `extra=` and belongs in the JSON.
# uvicorn adds `color_message` (the message with terminal colour codes) to some records: not for JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}
# One pattern per kind of secret, each tried only where it could match: the three as one alternation
# scanned every position of every line case-insensitively (7 us of the 25 an access line cost, bench/).
_BEARER = re.compile(r"(?i:bearer)\s+[\w.~+/=-]+")  # an Authorization value
_JWT = re.compile(r"eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*")  # a JWT (its header always starts with {" -> eyJ)
_SIGNATURE = re.compile(r"(?i:0x)[0-9a-fA-F]{130}")  # an EIP-191 / EIP-712 signature (a literal prefix: fast)


def redact(text: str) -> str:
    if "bearer" in text.lower():
        text = _BEARER.sub("[redacted]", text)
    if "eyJ" in text:
        text = _JWT.sub("[redacted]", text)
    return _SIGNATURE.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
            "pid": record.process,  # tells workers apart under `serve --workers N`
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Through pydantic-core: a fifth of the json module's time for an access line.
        return redact(jsonsafe.dumps(entry, default=str).decode())


def configure_logging(settings: Settings) -> None:
    # The logging HOWTO's "Optimization" settings: no stack walk per record for the caller's file and line,
    # no thread or multiprocessing names. The JSON lines carry none of them (the pid stays).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log has the request id
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per node call is noise at info
    logging.Formatter.converter = time.gmtime
