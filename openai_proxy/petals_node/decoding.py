"""Tokens to text deltas, the way the public Petals API sends them (upstream-protocols.md §12.2).

Decoding token by token is wrong twice over: SentencePiece drops the leading space of a token decoded alone,
and a character split over several byte tokens decodes as U+FFFD until its last byte arrives. So each delta
is the difference between two decodes of a small window that starts a few tokens back, in the previous
delta (the incremental scheme of Hugging Face's text-generation-inference), and a delta whose last
`HOLD_BACK_CHARS` characters contain U+FFFD is held back until more tokens repair it: one message may then
cover several tokens, and its `token_count` says how many. At the end of a generation everything held is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

HOLD_BACK_CHARS = 10
REPLACEMENT_CHAR = "\ufffd"
CONTEXT_TOKENS = 5  # tokens before the generation that the first window starts with

Decode = Callable[[Sequence[int]], str]


@dataclass(frozen=True, slots=True)
class Piece:
    """One message's worth of output: its text and the tokens it covers."""

    text: str
    tokens: int


class TextStream:
    """The text of one `generate` request, released in pieces.

    `context` is the session's tokens before this request (the prompt, earlier answers); only its last few
    are used, so a reply's first token decodes with the spacing it has in context.
    """

    def __init__(self, decode: Decode, context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._tokens = list(context)[-CONTEXT_TOKENS:]
        self._prefix = 0  # window start: the tokens of the last piece sent, decoded again for context
        self._read = len(self._tokens)  # everything before this index has been sent
        self._unsent_tokens = 0
        self.sent = ""  # all the text sent so far

    def add(self, tokens: Iterable[int], *, silent: int = 0) -> None:
        """Append generated tokens; `silent` more tokens were generated but have no text (an end marker)."""
        for token in tokens:
            self._tokens.append(token)
            self._unsent_tokens += 1
        self._unsent_tokens += silent

    def pending(self) -> str:
        """Text generated but not sent yet."""
        before = self._decode(self._tokens[self._prefix : self._read])
        return self._decode(self._tokens[self._prefix :])[len(before) :]

    def text(self) -> str:
        """All the text of this request so far, sent or not (what stop sequences are matched against)."""
        return self.sent + self.pending()

    def take(self, *, final: bool = False) -> Piece | None:
        """The piece to send now, or None when nothing is due (no new tokens, or a broken character held)."""
        if self._unsent_tokens == 0:
            return None
        text = self.pending()
        if not final and REPLACEMENT_CHAR in text[-HOLD_BACK_CHARS:]:
            return None
        self._prefix, self._read = self._read, len(self._tokens)
        count, self._unsent_tokens = self._unsent_tokens, 0
        self.sent += text
        return Piece(text, count)


def ends_with_any(text: str, suffixes: Iterable[str]) -> bool:
    return any(suffix and text.endswith(suffix) for suffix in suffixes)
