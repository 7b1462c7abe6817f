"""petals-node's incremental decoding: deltas that add up to the whole text, broken characters held back."""

from __future__ import annotations

from collections.abc import Sequence

from openai_proxy.petals_node.decoding import HOLD_BACK_CHARS, Piece, TextStream, ends_with_any


def byte_decode(ids: Sequence[int]) -> str:
    """A byte-level tokenizer's decode: one token per byte, invalid UTF-8 shown as U+FFFD."""
    return bytes(ids).decode("utf-8", errors="replace")


VOCAB = ["▁Hello", "▁world", "!"]


def sentencepiece_decode(ids: Sequence[int]) -> str:
    """SentencePiece's habit: the leading space of the first token decoded is dropped."""
    return "".join(VOCAB[i] for i in ids).replace("▁", " ").removeprefix(" ")


def test_ascii_tokens_come_out_one_piece_each() -> None:
    stream = TextStream(byte_decode)
    pieces = []
    for token in b"Hi there":
        stream.add([token])
        pieces.append(stream.take())
    assert pieces == [Piece(chr(t), 1) for t in b"Hi there"]
    assert stream.sent == stream.text() == "Hi there"


def test_a_character_split_over_tokens_is_held_until_it_is_whole() -> None:
    stream = TextStream(byte_decode)
    first, second, third = "€".encode()
    stream.add([first])
    assert stream.take() is None
    stream.add([second])
    assert stream.take() is None
    stream.add([third])
    assert stream.take() == Piece("€", 3)  # one message, token_count 3


def test_garbage_is_released_once_it_is_hold_back_chars_behind() -> None:
    stream = TextStream(byte_decode)
    stream.add([0xFF])  # never valid UTF-8
    assert stream.take() is None
    for token in b"abcdefghi"[: HOLD_BACK_CHARS - 1]:
        stream.add([token])
        assert stream.take() is None
    stream.add([ord("j")])
    assert stream.take() == Piece("\ufffdabcdefghij", HOLD_BACK_CHARS + 1)


def test_the_last_piece_sends_whatever_is_held() -> None:
    stream = TextStream(byte_decode)
    stream.add([ord("a"), 0xE2, 0x82])  # "a" and two thirds of "€"
    assert stream.take() is None
    assert stream.take(final=True) == Piece("a\ufffd", 3)
    assert stream.take(final=True) is None  # nothing new


def test_context_keeps_the_space_a_token_has_in_the_sentence() -> None:
    alone = TextStream(sentencepiece_decode)
    alone.add([1])
    assert alone.take() == Piece("world", 1)
    in_context = TextStream(sentencepiece_decode, context=[0])
    in_context.add([1])
    in_context.add([2])
    assert in_context.take() == Piece(" world!", 2)
    assert in_context.text() == " world!"


def test_silent_tokens_are_counted_without_text() -> None:
    stream = TextStream(byte_decode)
    stream.add(b"ok")
    stream.add([], silent=1)  # an end-of-sequence token
    assert stream.take(final=True) == Piece("ok", 3)


def test_text_includes_what_is_held() -> None:
    stream = TextStream(byte_decode)
    stream.add(b"ab" + bytes([0xC3]))
    assert stream.take() is None
    assert stream.text() == "ab\ufffd" and stream.sent == ""
    assert ends_with_any("abc###", ["x", "###"]) and not ends_with_any("abc", ["", "b"])
