"""Stop-string enforcement: the streaming scanner must agree with the one-shot cut for every chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_proxy.stops import StopScanner, cut_at_stop

# A tiny alphabet makes overlapping and self-overlapping stops ("aa", "aba") and near misses common;
# the extra characters keep unicode (including astral code points) in play.
_ALPHABET = st.sampled_from("ab\n#ü😀")
_texts = st.text(_ALPHABET, max_size=60)
_stops = st.lists(st.text(_ALPHABET, max_size=5), max_size=5)


@st.composite
def _chunked(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(_texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@given(_chunked(), _stops)
def test_stream_matches_one_shot_cut_for_any_chunking(chunked: tuple[str, list[str]], stops: list[str]) -> None:
    text, chunks = chunked
    expected, found = cut_at_stop(text, stops)
    scanner = StopScanner(stops)
    emitted = ""
    for chunk in chunks:
        emitted += scanner.feed(chunk)
        # Whatever has gone out must already be final: a prefix of the right answer.
        assert expected.startswith(emitted)
    emitted += scanner.finish()
    assert emitted == expected
    assert scanner.stopped == found


@given(_chunked(), _stops)
def test_holds_back_only_a_live_prefix_of_a_stop(chunked: tuple[str, list[str]], stops: list[str]) -> None:
    _, chunks = chunked
    scanner = StopScanner(stops)
    fed = emitted = ""
    for chunk in chunks:
        fed += chunk
        emitted += scanner.feed(chunk)
        if scanner.stopped:
            break
        held = fed[len(emitted) :]
        assert fed.startswith(emitted)
        # The held tail is exactly the longest suffix that could still grow into a stop.
        live = [n for n in range(1, len(fed) + 1) if any(s.startswith(fed[-n:]) for s in stops if s)]
        assert len(held) == max(live, default=0)


@st.composite
def _unicode_case(draw: st.DrawFn) -> tuple[str, list[str], list[str]]:
    # Arbitrary unicode, with stops cut out of the text itself so that they actually occur.
    text = draw(st.text(min_size=1, max_size=80))
    spans = draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(1, 6)), max_size=4))
    stops = [text[a : a + n] for a, n in spans]
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=10)))
    bounds = [0, *cuts, len(text)]
    return text, stops, [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@given(_unicode_case())
def test_stream_matches_cut_on_arbitrary_unicode(case: tuple[str, list[str], list[str]]) -> None:
    text, stops, chunks = case
    scanner = StopScanner(stops)
    emitted = "".join(scanner.feed(c) for c in chunks) + scanner.finish()
    assert (emitted, scanner.stopped) == cut_at_stop(text, stops)


def test_without_stops_nothing_is_held_back() -> None:
    scanner = StopScanner([])
    assert scanner.feed("abc") == "abc"
    assert scanner.feed("") == ""
    assert scanner.feed("###") == "###"
    assert scanner.finish() == ""
    assert not scanner.stopped


def test_empty_stop_strings_are_ignored() -> None:
    scanner = StopScanner(["", ""])
    assert scanner.feed("hello") == "hello"
    assert cut_at_stop("hello", [""]) == ("hello", False)


def test_stop_split_across_chunks_is_never_emitted() -> None:
    scanner = StopScanner(["<|eot_id|>"])
    assert scanner.feed("Hello <|eo") == "Hello "
    assert scanner.feed("t_i") == ""
    assert scanner.feed("d|> trailing") == ""
    assert scanner.stopped
    assert scanner.feed("more") == ""
    assert scanner.finish() == ""


def test_false_alarm_is_released() -> None:
    scanner = StopScanner(["<|eot_id|>"])
    assert scanner.feed("a <|eo") == "a "
    assert scanner.feed("x") == "<|eox"
    assert scanner.feed("<") == ""
    assert scanner.finish() == "<"
    assert not scanner.stopped


def test_self_overlapping_stop() -> None:
    # "aab" inside "aaab": the hold-back must keep "aa", not restart after a mismatch.
    scanner = StopScanner(["aab"])
    assert scanner.feed("xa") == "x"
    assert scanner.feed("a") == ""
    assert scanner.feed("a") == "a"
    assert scanner.feed("b!") == ""
    assert scanner.stopped


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("abcdef", ["cd", "bcx"], ("ab", True)),
        ("abcdef", ["ef", "b"], ("a", True)),  # earliest wins, not first in the list
        ("abcdef", ["cd", "c"], ("ab", True)),  # same start: cut there
        ("abcdef", ["cd", "bcd"], ("a", True)),  # same end: the earlier start
        # One stop inside a longer one that starts earlier: the first to complete wins, as in a stream,
        # which must halt at "de" before it could see "cdef" complete.
        ("abcdef", ["de", "cdef"], ("abc", True)),
        ("abc", ["x"], ("abc", False)),
        ("", ["x"], ("", False)),
        ("stop", ["stop"], ("", True)),
    ],
)
def test_cut_at_stop(text: str, stops: list[str], expected: tuple[str, bool]) -> None:
    assert cut_at_stop(text, stops) == expected


def test_stream_halts_at_first_completed_stop() -> None:
    scanner = StopScanner(["de", "cdef"])
    assert scanner.feed("abcde") == "abc"
    assert scanner.stopped
    assert scanner.feed("f") == ""


def test_long_stream_keeps_only_a_bounded_tail() -> None:
    # One character at a time over a long stream: the held tail never exceeds the longest stop - 1,
    # which is what keeps each feed independent of how much has already been relayed.
    stops = ["<|im_end|>", "aaaa"]
    scanner = StopScanner(stops)
    fed = emitted = ""
    for char in ("aaa<|im_end" + "b") * 500:
        fed += char
        emitted += scanner.feed(char)
        assert len(fed) - len(emitted) <= max(map(len, stops)) - 1
    assert emitted + scanner.finish() == fed
