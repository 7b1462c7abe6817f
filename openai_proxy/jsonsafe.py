"""JSON parsing that a hostile body cannot crash.

eth-account imports py_ecc, which raises Python's recursion limit to 100000 at import time; the C JSON
decoder then recurses that deep on a body like `[[[[...` and overflows the C stack (a segfault, not an
exception). So nesting depth is checked before decoding, on every JSON input from the network.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 100
_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


class JSONTooDeep(ValueError):
    pass


def nesting_depth_exceeds(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the common case costs two C-level scans
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURE.finditer(raw):
        position, char = match.start(), match.group()
        if position == escaped_at:
            continue
        if in_string:
            if char == b"\\":
                escaped_at = position + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def loads(raw: bytes | str) -> Any:
    """json.loads, refusing input nested deeper than MAX_DEPTH. Raises ValueError for any bad input."""
    data = raw.encode() if isinstance(raw, str) else raw
    if nesting_depth_exceeds(data):
        raise JSONTooDeep(f"JSON nested deeper than {MAX_DEPTH} levels")
    return json.loads(data)
