"""One `generate` request on an open session, advanced step by step (upstream-protocols.md §12.2).

* Without `stop_sequence`: one step of `max_new_tokens` tokens, then `stop: true`.
* With it: steps of `max_new_tokens` tokens each until the request's text ends with `stop_sequence` (or with
  one of `extra_stop_sequences`, which count only when `stop_sequence` is a single token). The only other
  bound is the session's max_length: the client counts `token_count` and closes the socket when it has enough.
* An end-of-sequence token always ends the request.

All of it blocks (it steps the model): it runs on the socket's worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from .decoding import Piece, TextStream, ends_with_any
from .engine import EngineSession, PetalsEngine
from .protocol import GenerateStep


@dataclass(frozen=True, slots=True)
class StepResult:
    piece: Piece | None  # None: nothing to send this step (a broken character is held back)
    finished: bool


class Generation:
    def __init__(self, engine: PetalsEngine, session: EngineSession, request: GenerateStep) -> None:
        self._engine = engine
        self._session = session
        self._request = request
        self._inputs = engine.encode(request.inputs) if request.inputs else None
        self._stream = TextStream(engine.decode, [*session.tokens, *(self._inputs or ())])
        self._stops = self._stop_sequences(request)

    def _stop_sequences(self, request: GenerateStep) -> tuple[str, ...]:
        if request.stop_sequence is None:
            return ()
        extra = request.extra_stop_sequences or []
        if extra and len(self._engine.encode(request.stop_sequence)) == 1:
            return (request.stop_sequence, *extra)
        return (request.stop_sequence,)

    def advance(self) -> StepResult:
        request = self._request
        tokens = self._session.step(self._inputs, request.max_new_tokens, request.sampling())
        self._inputs = None
        ended = bool(tokens) and tokens[-1] in self._engine.eos_ids
        self._stream.add(tokens[:-1] if ended else tokens, silent=1 if ended else 0)
        finished = ended or request.stop_sequence is None or ends_with_any(self._stream.text(), self._stops)
        return StepResult(self._stream.take(final=finished), finished)
