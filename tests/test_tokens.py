"""Token counting with tiktoken's cl100k_base, from the offline cache in ../shared/tiktoken-cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openai_proxy.tokens import INLINE_LIMIT_CHARS, TokenCounter, TokenizerUnavailable

REPO = Path(__file__).resolve().parents[1]
SHARED_CACHE = REPO.parent / "shared" / "tiktoken-cache"


@pytest.fixture(autouse=True)
def _offline_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(SHARED_CACHE))


@pytest.fixture
def counter() -> TokenCounter:
    return TokenCounter()


def test_known_counts(counter: TokenCounter) -> None:
    assert counter.count("hello world") == 2
    assert counter.count("") == 0
    assert counter.encoding_name == "cl100k_base"


@pytest.mark.parametrize("special", ["<|endoftext|>", "<|eot_id|>", "<|im_start|>", "<|fim_prefix|>"])
def test_special_token_strings_count_as_plain_text(counter: TokenCounter, special: str) -> None:
    # As text each of these is several tokens; as a special token it would be exactly one.
    assert counter.count(special) > 1
    assert counter.count(f"a {special} b") > 3


def test_lone_surrogates_do_not_raise(counter: TokenCounter) -> None:
    assert counter.count("abc\ud800def") > 0


async def test_count_async_matches_count(counter: TokenCounter) -> None:
    large = "The quick brown fox jumps over the lazy dog. <|endoftext|> " * 4000
    assert len(large) > INLINE_LIMIT_CHARS  # goes through the worker thread
    assert await counter.count_async(large) == counter.count(large)
    assert await counter.count_async("hello world") == 2


async def test_inline_limit_is_configurable() -> None:
    threaded = TokenCounter(inline_limit=0)
    assert await threaded.count_async("hello world") == 2


def test_unknown_encoding_is_unavailable() -> None:
    with pytest.raises(TokenizerUnavailable, match="TIKTOKEN_CACHE_DIR") as info:
        TokenCounter("no_such_encoding")
    assert "no_such_encoding" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_empty_cache_dir_is_unavailable_without_touching_the_network(tmp_path: Path) -> None:
    # tiktoken downloads on a cache miss, and it caches loaded encodings per process, so this runs in a
    # fresh interpreter. Every proxy variable points at a closed local port: the download attempt fails
    # at once with a connection error instead of reaching (or hanging on) the network. The timeout is
    # only a backstop.
    script = (
        "from openai_proxy.tokens import TokenCounter, TokenizerUnavailable\n"
        "try:\n"
        "    TokenCounter()\n"
        "except TokenizerUnavailable as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "all_proxy"}}
    dead = "http://127.0.0.1:9"
    env |= {"TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": dead, "HTTP_PROXY": dead}
    env |= {"https_proxy": dead, "http_proxy": dead, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3, result.stderr
    message = result.stdout
    assert "set tiktoken_cache_dir to a folder holding the cl100k_base encoding" in message.lower()
    assert "../shared/tiktoken-cache" in message
    assert "allow network access once" in message
    assert list(tmp_path.iterdir()) == []
