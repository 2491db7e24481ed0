"""router/_scan.c must read a window exactly as router/context.py's Python pass does.

The C pass is an optional accelerator (built at install when a C compiler is there); the
Python pass is the reference. Every dev prompt, random bytes and the edge cases below are
read both ways and compared field by field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import context
from router.context import (
    BIGRAM_HEAD_WORDS,
    BIGRAM_TAIL_WORDS,
    CLASS_LANES,
    LEXICON_LANES,
    LEXICON_TABLE,
    WordTable,
    python_view,
    read_utf8,
)
from router.scorer import shared_scorer
from subjects.messages import ChatMessage, ChatRequest

scan = pytest.importorskip("router._scan", reason="the C pass is not built (no C compiler at install)")

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "dev.jsonl"


def both_ways(data: bytes, table: WordTable) -> tuple[context.TextView, context.TextView]:
    """(C pass, Python pass) over the window read_utf8 cuts from ``data``."""
    native = read_utf8(data, len(data), table)
    return native, python_view(data, len(data), native.window, dict(table))


def test_the_shipped_tables_carry_the_c_copy() -> None:
    assert LEXICON_TABLE.native is not None
    assert shared_scorer().table.native is not None


def test_every_dev_prompt_reads_the_same_both_ways() -> None:
    table = shared_scorer().table
    with DEV.open(encoding="utf-8") as lines:  # not splitlines(): prompts hold U+2028
        rows = [json.loads(line) for line in lines if line.strip()]
    assert len(rows) > 1000
    for row in rows:
        req = ChatRequest(messages=[ChatMessage(role=m["role"], content=m["content"])
                                    for m in row["request"]["messages"]])
        data, _ = context.prompt_utf8(req)
        native, python = both_ways(data, table)
        assert native == python, row["id"]


# Words the tables know (so lookups hit), separators, digits, non-ASCII and cut UTF-8.
known = sorted(k for k in shared_scorer().table if isinstance(k, bytes))[:400]
pieces = st.one_of(st.sampled_from(known), st.binary(max_size=6),
                   st.sampled_from([b" ", b"\n", b"0123", b"\xc3\xa9", b"\xe4\xbd\xa0", b"```", b"."]))


@settings(deadline=None, max_examples=300)  # no timing in tests
@given(st.lists(pieces, max_size=300).map(b" ".join))
def test_random_windows_read_the_same_both_ways(data: bytes) -> None:
    for table in (shared_scorer().table, LEXICON_TABLE):
        native, python = both_ways(data, table)
        assert native == python


@pytest.mark.parametrize("words", [0, 1, 2, BIGRAM_HEAD_WORDS, BIGRAM_HEAD_WORDS + 1,
                                   BIGRAM_HEAD_WORDS + BIGRAM_TAIL_WORDS, 60])
def test_bigram_edges_read_the_same_both_ways(words: int) -> None:
    # Repeated words: repeats count once as words but every time as bigrams.
    data = b" ".join(known[i % 5] for i in range(words))
    native, python = both_ways(data, shared_scorer().table)
    assert native == python
    assert native.word_count == words


def test_a_window_larger_than_the_stack_buffers_reads_the_same() -> None:
    # read_utf8 never passes more than WINDOW_BYTES, but the C pass must not trust that.
    data = b" ".join(known[i % len(known)] for i in range(3000))
    table = shared_scorer().table
    lanes, words, features, alnum, digits, spaces = scan.scan(data, table.native)
    python = python_view(data, len(data), data, dict(table))
    assert (lanes, words, features, alnum, digits, spaces) == (
        python.lanes, python.word_count, python.text_features, python.alnum_bytes,
        python.digit_bytes, python.space_bytes)


def test_changing_a_sealed_table_drops_its_c_copy() -> None:
    table = WordTable(LEXICON_TABLE).seal()
    assert table.native is not None
    table[b"newword"] = 1
    assert table.native is None  # the Python pass reads it now, never a stale copy
    view = read_utf8(b"newword", 7, table)
    assert view.lanes[0] == 1


@pytest.mark.parametrize(("args", "error", "message"), [
    ((b"x" * 255, {}, LEXICON_LANES, CLASS_LANES, 8, 4), ValueError, "translate: must be 256 bytes"),
    ((bytes(256), {"word": (0, (0,) * 5)}, LEXICON_LANES, 5, 8, 4), TypeError, "every key must be bytes"),
    ((bytes(256), {b"w": (0, (0,) * 4)}, LEXICON_LANES, 5, 8, 4), ValueError, "4 class weights, expected 5"),
    ((bytes(256), {b"w": (0, (1 << 40,) * 5)}, LEXICON_LANES, 5, 8, 4), OverflowError, "fit 32 bits"),
    ((bytes(256), {b"w": (1 << 40, (0,) * 5)}, 28, 5, 8, 4), ValueError, "bits above the lanes"),
    ((bytes(256), {}, 99, 5, 8, 4), ValueError, "at most 64 lexicon"),
    ((bytes(256), {}, 28, 5, 1, 4), ValueError, "at least 2 words"),
])
def test_a_bad_table_is_refused_naming_the_problem(args: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        scan.ScanTable(*args)


def test_scan_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="window must be bytes"):
        scan.scan("text", LEXICON_TABLE.native)
    with pytest.raises(TypeError, match="table must be a ScanTable"):
        scan.scan(b"text", {})

