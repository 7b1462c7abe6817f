"""Token counting: tiktoken by default, a model's own tokenizer where the catalogue names one.

The Petals models use their own tokenizers; cl100k_base is an estimate that is close enough for usage
reports and context-length checks, and it needs no model download. tiktoken fetches the encoding file on
first use and caches it in ``TIKTOKEN_CACHE_DIR``; on an offline host that folder must already hold it.

A catalogue entry's ``tokenizer`` makes prompt counts exact for that model: a path to a Hugging Face
``tokenizer.json`` (or to the model folder holding one), read with the light ``tokenizers`` package (the
``tokenizers`` extra; no torch), or the name of another tiktoken encoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import tiktoken

# Above this many characters a count is moved to a worker thread: encoding ~32 KB takes a few
# milliseconds, and a 50k-token prompt counted inline would stall every other request on the loop.
INLINE_LIMIT_CHARS = 32_768


class TokenizerUnavailable(RuntimeError):
    """The tiktoken encoding could not be loaded (unknown name, missing cache on an offline host, ...)."""


def _unavailable_message(encoding_name: str, exc: BaseException) -> str:
    return (
        f"cannot load the tiktoken encoding {encoding_name!r} ({type(exc).__name__}: {exc}). "
        f"Set TIKTOKEN_CACHE_DIR to a folder holding the {encoding_name} encoding "
        "(e.g. ../shared/tiktoken-cache), or allow network access once so tiktoken can download it."
    )


class TokenCounter:
    """Counts tokens with one tiktoken encoding, loaded once when the counter is built."""

    __slots__ = ("_encoding", "encoding_name", "inline_limit")

    def __init__(self, encoding_name: str = "cl100k_base", *, inline_limit: int = INLINE_LIMIT_CHARS) -> None:
        self.encoding_name = encoding_name
        self.inline_limit = inline_limit
        try:
            self._encoding = tiktoken.get_encoding(encoding_name)
        # What a failed load raises: ValueError for an unknown name or a hash mismatch; OSError for an
        # unreadable cache and for requests' errors (RequestException is an OSError) when the download
        # fails; ImportError if tiktoken's optional download dependency is missing.
        except (ValueError, OSError, ImportError) as exc:
            raise TokenizerUnavailable(_unavailable_message(encoding_name, exc)) from exc

    def count(self, text: str) -> int:
        """Number of tokens in ``text``; special-token strings such as ``<|endoftext|>`` count as text."""
        # encode_ordinary never raises on special-token text (encode() would) and repairs lone surrogates.
        return len(self._encoding.encode_ordinary(text))

    async def count_async(self, text: str) -> int:
        """Like ``count``, but large texts are counted in a worker thread so the event loop stays free."""
        if len(text) <= self.inline_limit:
            return self.count(text)
        return await asyncio.to_thread(self.count, text)


class Counter(Protocol):
    def count(self, text: str) -> int: ...

    async def count_async(self, text: str) -> int: ...


class TokenizerFileCounter:
    """Counts with a Hugging Face ``tokenizer.json``: the model's own tokens, as its Petals node counts them
    (special-token strings such as ``<s>`` in the text count as the one token they are; no BOS is added,
    because the chat templates write it)."""

    __slots__ = ("_tokenizer", "inline_limit", "path")

    def __init__(self, path: Path, *, inline_limit: int = INLINE_LIMIT_CHARS) -> None:
        try:
            from tokenizers import Tokenizer  # optional: the `tokenizers` extra
        except ImportError as exc:
            raise TokenizerUnavailable(
                f"cannot read {path}: the 'tokenizers' package is missing (pip install 'openai-proxy[tokenizers]')"
            ) from exc
        self.path = path
        self.inline_limit = inline_limit
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise TokenizerUnavailable(f"cannot read the tokenizer file {path}: {exc}") from exc

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    async def count_async(self, text: str) -> int:
        if len(text) <= self.inline_limit:
            return self.count(text)
        return await asyncio.to_thread(self.count, text)


def tokenizer_counter(tokenizer: str) -> Counter:
    """The counter a catalogue ``tokenizer`` value names; TokenizerUnavailable when it names nothing usable."""
    path = Path(tokenizer).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return TokenizerFileCounter(path)
    if path.suffix == ".json" or "/" in tokenizer:
        raise TokenizerUnavailable(f"tokenizer {tokenizer!r}: no such tokenizer.json (a file, or a folder holding one)")
    return TokenCounter(tokenizer)


def model_counters(models: Iterable[tuple[str, str | None]]) -> Mapping[str, Counter]:
    """Per-model counters for the ``(model id, tokenizer)`` pairs that name a tokenizer, loaded once, at start."""
    loaded: dict[str, Counter] = {}
    counters: dict[str, Counter] = {}
    for model_id, tokenizer in models:
        if tokenizer:
            counters[model_id] = loaded.get(tokenizer) or loaded.setdefault(tokenizer, tokenizer_counter(tokenizer))
    return counters
