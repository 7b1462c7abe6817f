"""The devnode's deterministic "model": a word-level text generator that supports exact continuation.

Tokens are words from a fixed lorem-ipsum vocabulary. A fresh answer starts at a word picked by a stable
hash of the whole prompt and walks the vocabulary in order; a prompt that already ends with a vocabulary
word is continued from that word. So if `t = generate_tokens(p, n)`, then for every `k`
`generate_tokens(p + "".join(t[:k]), n - k) == t[k:]`: a second node handed the text produced so far
finishes the answer exactly as the first node would have, which is what the gateway's mid-stream failover
relies on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import islice

# 97 distinct words: a prime length, so no short cycle lines up with anything a test might count.
VOCAB: tuple[str, ...] = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim",
    "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi", "aliquip",
    "ex", "ea", "commodo", "consequat", "duis", "aute", "irure", "in", "reprehenderit", "voluptate",
    "velit", "esse", "cillum", "fugiat", "nulla", "pariatur", "excepteur", "sint", "occaecat", "cupidatat",
    "non", "proident", "sunt", "culpa", "qui", "officia", "deserunt", "mollit", "anim", "id",
    "est", "laborum", "curabitur", "pretium", "tincidunt", "lacus", "nunc", "vitae", "augue", "integer",
    "morbi", "nibh", "porta", "risus", "vivamus", "donec", "felis", "mauris", "turpis", "viverra",
    "etiam", "justo", "semper", "quam", "tellus", "fusce", "varius", "neque", "massa", "lectus",
    "orci", "nisl", "ligula", "sapien", "urna", "purus", "libero",
)  # fmt: skip

_INDEX: dict[str, int] = {word: i for i, word in enumerate(VOCAB)}


def count_words(text: str) -> int:
    """The simulator's token count for a prompt: its whitespace-separated words."""
    return len(text.split())


def _start(prompt: str) -> tuple[int, bool]:
    """Index of the first answer word, and whether the first token needs a leading space."""
    words = prompt.rsplit(None, 1)  # only the last word matters: 0.005 ms on a 50k-word prompt, split() 1 ms
    ends_with_space = prompt[-1:].isspace()
    if words and not ends_with_space and words[-1] in _INDEX:
        return (_INDEX[words[-1]] + 1) % len(VOCAB), True
    # sha256, not hash(): str hashes are salted per process, and answers must agree across processes.
    digest = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest, 16) % len(VOCAB), bool(prompt) and not ends_with_space


def iter_tokens(prompt: str) -> Iterator[str]:
    """The endless answer to `prompt`, one word-token at a time."""
    index, space = _start(prompt)
    yield (" " if space else "") + VOCAB[index]
    while True:
        index = (index + 1) % len(VOCAB)
        yield " " + VOCAB[index]


def generate_tokens(prompt: str, count: int) -> list[str]:
    """The first `count` tokens of the answer to `prompt` (the reference text tests compare against)."""
    return list(islice(iter_tokens(prompt), max(count, 0)))
