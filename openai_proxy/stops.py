"""Stop strings enforced on the text the gateway relays.

A node knows nothing of the client's ``stop`` list nor of the template's end-of-turn markers, so the
gateway cuts the text itself. In a stream that means holding back a tail that might be the beginning of a
stop string until the next piece of text settles the question: the client must never see a stop string,
nor a prefix of one that later completes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache


def _first_completed(text: str, stops: Sequence[str]) -> int:
    """Start of the stop occurrence that is completed first in ``text``, or -1.

    "Completed first" means the earliest end; of occurrences ending at the same character, the one that
    starts first. This is what a generator halting on its stop strings produces, and unlike "earliest
    start" it never depends on how the text was split into chunks: in "a\\na" with stops "\\n" and "a\\na",
    a stream has to stop at the "\\n" before it could know the longer stop would complete, so the cut is
    "a" for a stream and must be "a" for the whole text too. (The two rules only differ when one stop
    occurrence lies strictly inside a longer one that starts earlier.)
    """
    best_start = best_end = -1
    for stop in stops:
        start = text.find(stop)  # a string's first occurrence is also its earliest-ending one
        if start == -1:
            continue
        end = start + len(stop)
        if best_end == -1 or (end, start) < (best_end, best_start):
            best_start, best_end = start, end
    return best_start


@lru_cache(maxsize=1024)  # the same few stop strings come with every request
def _failure_table(pattern: str) -> tuple[int, ...]:
    """KMP failure function: entry i is the longest proper border of ``pattern[: i + 1]``."""
    table = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = table[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        table[i] = k
    return tuple(table)


def _prefix_at_end(text: str, pattern: str, table: tuple[int, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``pattern``.

    Only the last ``len(pattern) - 1`` characters can take part, so only they are scanned; the KMP
    automaton is linear in them. The caller guarantees ``pattern`` does not occur in ``text``.
    """
    k = 0
    for char in text[max(0, len(text) - len(pattern) + 1) :]:
        while k and char != pattern[k]:
            k = table[k - 1]
        if char == pattern[k]:
            k += 1
    return k


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Return the text before the first completed stop string (empty stops ignored) and whether one was found.

    Used on whole (non-streamed) texts; gives exactly what ``StopScanner`` emits for any chunking.
    """
    at = _first_completed(text, [s for s in stops if s])
    return (text, False) if at == -1 else (text[:at], True)


class StopScanner:
    """Streams text through, never emitting a stop string nor any prefix of one that later completes it.

    Invariant between calls: ``_pending`` is the longest suffix of everything fed so far that is a proper
    prefix of some stop string, and everything before it has been emitted. Any stop occurrence that
    reaches into newly fed text must start inside that suffix (a stop starting earlier would make a longer
    such suffix), so each ``feed`` only scans ``_pending + text``: the work per call is bounded by the
    size of the call plus the longest stop, never by the length of the stream.
    """

    __slots__ = ("_firsts", "_longest", "_pending", "_stopped", "_stops", "_tables")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._tables = tuple(_failure_table(s) for s in self._stops)
        self._firsts = frozenset(s[0] for s in self._stops)
        self._longest = max(map(len, self._stops), default=0)
        self._pending = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """True once a stop string has been seen; nothing more will be emitted."""
        return self._stopped

    def feed(self, text: str) -> str:
        """Take the next piece of text; return what is safe to emit now ("" forever once stopped)."""
        if self._stopped:
            return ""
        buffer = self._pending + text
        at = _first_completed(buffer, self._stops)
        if at != -1:
            self._stopped = True
            self._pending = ""
            return buffer[:at]
        keep = self._held_length(buffer)
        self._pending = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep]

    def finish(self) -> str:
        """End of input: release the held-back tail (nothing if a stop was found)."""
        tail, self._pending = self._pending, ""
        return "" if self._stopped else tail

    def _held_length(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of some stop string."""
        if self._firsts.isdisjoint(buffer[max(0, len(buffer) - self._longest + 1) :]):
            return 0  # the usual case, in C: no stop string even starts in the tail that could hold one
        return max(
            (_prefix_at_end(buffer, s, t) for s, t in zip(self._stops, self._tables, strict=True)),
            default=0,
        )
