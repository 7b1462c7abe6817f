"""The model side of petals-node: a tokenizer and the Petals client, behind blocking methods.

Everything here blocks (tokenizing, network round trips through the swarm): the web layer calls it from
worker threads, never on the event loop. torch, transformers and petals are imported in `PetalsEngine.load`,
so importing this module costs nothing.

Prompts are encoded without special tokens: the gateway's chat templates write BOS and every other marker
themselves. Output is decoded with special tokens kept (so a template's end-of-turn marker reaches the gateway
as text) and without "clean-up" of spaces, which would rewrite text already sent. An end-of-sequence token
ends a generation and has no text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .options import NodeOptions

log = logging.getLogger("openai_proxy.petals_node")


class RequestError(Exception):
    """A request this node refuses (bad message, unknown model, not loaded yet); the message is for the client."""


class SessionError(RequestError):
    """A request the session cannot serve (over its max_length, nothing to continue from)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding parameters of one generate call; greedy unless `do_sample`."""

    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if not self.do_sample or self.temperature == 0:
            # Sampling fields are ignored when greedy (transformers warns if they are passed).
            return kwargs | {"do_sample": False}
        extra = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        return kwargs | {"do_sample": True} | {key: value for key, value in extra.items() if value is not None}


class PetalsEngine:
    """One model: its tokenizer and an `AutoDistributedModelForCausalLM` connected to the swarm.

    One per process: the Petals client runs a single background event loop (RemoteExpertWorker) that every
    session shares.
    """

    def __init__(self, tokenizer: Any, model: Any, torch: Any) -> None:
        self._tokenizer = tokenizer
        self._model = model
        self._torch = torch
        # Fast tokenizers raise "Already borrowed" when two threads use one at the same moment.
        self._tokenizer_lock = threading.Lock()
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = frozenset(i for i in [*eos_ids, tokenizer.eos_token_id] if i is not None)
        self.bos_id: int | None = tokenizer.bos_token_id
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)

    @classmethod
    def load(cls, options: NodeOptions) -> PetalsEngine:
        import torch
        from petals import AutoDistributedModelForCausalLM
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(options.model)
        kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, options.torch_dtype, options.torch_dtype)}
        if options.initial_peers:
            kwargs["initial_peers"] = list(options.initial_peers)
        if options.dht_prefix:
            kwargs["dht_prefix"] = options.dht_prefix
        model = AutoDistributedModelForCausalLM.from_pretrained(options.model, **kwargs)
        return cls(tokenizer, model, torch)

    def encode(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            text: str = self._tokenizer.decode(
                list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        return text

    def open_session(self, max_length: int) -> EngineSession:
        from petals.client.inference_session import InferenceSession

        session = InferenceSession(self._model.transformer.h.sequence_manager, max_length=max_length)
        return EngineSession(self, session.__enter__(), max_length)

    def generate_into(self, session: Any, inputs: list[int] | None, max_new_tokens: int, sampling: Sampling) -> None:
        torch = self._torch
        tensor = torch.tensor([inputs], dtype=torch.long) if inputs else None
        with torch.no_grad():
            self._model.generate(
                tensor,
                session=session,
                max_new_tokens=max_new_tokens,
                pad_token_id=self._pad_id,
                **sampling.generate_kwargs(),
            )


class EngineSession:
    """One Petals inference session: the servers keep its attention caches between steps.

    Not thread-safe: the web layer drives each session from one worker thread.
    """

    def __init__(self, engine: PetalsEngine, session: Any, max_length: int) -> None:
        self._engine = engine
        self._session = session
        self.max_length = max_length
        self.tokens: list[int] = []  # prompt and output so far

    def step(self, inputs: list[int] | None, max_new_tokens: int, sampling: Sampling) -> list[int]:
        """Feed `inputs` (None: continue) and generate up to `max_new_tokens`; return the new tokens.

        Stops early after an end-of-sequence token, which is the last token returned then."""
        if not inputs and not self.tokens:
            raise SessionError("the first generate step of a session needs inputs")
        needed = len(self.tokens) + len(inputs or ()) + max_new_tokens
        if needed > self.max_length:
            raise SessionError(
                f"the session's max_length is {self.max_length} tokens; this step needs {needed} "
                f"({len(self.tokens)} so far, {len(inputs or ())} new, max_new_tokens={max_new_tokens})"
            )
        self._engine.generate_into(self._session, inputs, max_new_tokens, sampling)
        output: list[int] = self._session.output_ids[0].tolist()
        start = len(self.tokens) + len(inputs or ())
        self.tokens = output
        return output[start:]

    def close(self) -> None:
        """Close without ever leaving a half-closed server session behind.

        In the pinned stack, closing often raises BrokenPipeError and leaves the server session marked open;
        the garbage collector then closes it again on the Petals client's own event-loop thread, which
        deadlocks every later request (petals-local-swarm.md, error 11). So each server session is marked
        closed whatever its close raised."""
        for server_session in list(getattr(self._session, "_server_sessions", ())):
            try:
                server_session.close()
            # Boundary: anything the Petals/libp2p stack raises while closing is logged, never propagated.
            except Exception as exc:
                log.debug("closing a server session failed: %s: %s", type(exc).__name__, exc)
            finally:
                server_session._outputs_stream = server_session._inputs_queue = None
                server_session.closed = True
        try:
            self._session.close()
        except Exception as exc:  # same boundary as above
            log.debug("closing an inference session failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._session._closed = True


def generate_text(engine: PetalsEngine, prompt: str, max_new_tokens: int | None, max_length: int | None,
                  sampling: Sampling) -> str:
    """The HTTP API: one generation in a session of its own; the generated text only."""
    from .decoding import TextStream

    inputs = engine.encode(prompt) or ([engine.bos_id] if engine.bos_id is not None else [])
    if max_new_tokens is None:
        if max_length is None:
            raise SessionError("either max_length or max_new_tokens is required")
        max_new_tokens = max_length - len(inputs)
    if max_new_tokens <= 0:
        raise SessionError(f"nothing to generate: the prompt is {len(inputs)} tokens, max_length {max_length}")
    session = engine.open_session(len(inputs) + max_new_tokens)
    try:
        tokens = session.step(inputs, max_new_tokens, sampling)
    finally:
        session.close()
    stream = TextStream(engine.decode, inputs)
    text_tokens = tokens[:-1] if tokens and tokens[-1] in engine.eos_ids else tokens
    stream.add(text_tokens)
    piece = stream.take(final=True)
    return piece.text if piece else ""
