"""Token counting with tiktoken.

The Petals models use their own tokenizers; cl100k_base is an estimate that is close enough for usage
reports and context-length checks, and it needs no model download. tiktoken fetches the encoding file on
first use and caches it in ``TIKTOKEN_CACHE_DIR``; on an offline host that folder must already hold it.
"""

from __future__ import annotations

import asyncio

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
