"""Node text as proper code points: a UTF-16 surrogate pair split across two chunks is joined again.

A node written in JavaScript that slices its output by UTF-16 index can send the two halves of one astral
character (an emoji) in two JSON messages ("\\ud83d" then "\\ude00"). Python keeps them as two lone surrogates,
which no UTF-8 encoder accepts: a whole answer then failed to serialise (a 500) and a stream carried unpaired
halves that strict JSON clients reject. Found by tests/security/test_fuzz.py.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")


class SurrogateJoiner:
    """Holds a trailing high surrogate back until the next piece, joins pairs, and turns halves that never
    find their partner into U+FFFD. Text without surrogates (all text from Python nodes) passes untouched."""

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text, self._held = self._held + text, ""
        if not _SURROGATE.search(text):
            return text
        if "\ud800" <= text[-1] <= "\udbff":
            text, self._held = text[:-1], text[-1]
        return _repair(text)

    def finish(self) -> str:
        held, self._held = self._held, ""
        return _repair(held)


def _repair(text: str) -> str:
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
