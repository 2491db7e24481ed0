"""router/_scan.c must give exactly what router/context.py's Python code gives.

The C twin is an optional accelerator (built at install when a C compiler is there); the
Python code is the reference. Every dev prompt, random bytes and text, and the edge cases
below are read both ways and compared field by field.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from router import context
from router.context import (
    BIGRAM_HEAD_WORDS,
    BIGRAM_TAIL_WORDS,
    CLASS_LANES,
    HEAD_BYTES,
    LEXICON_BITS,
    LEXICON_LANES,
    LEXICON_TABLE,
    MAX_PREFIX_BLOCKS,
    PREFIX_BLOCK_CHARS,
    TAIL_BYTES,
    WINDOW_BYTES,
    PrefixMemory,
    WordTable,
    prefix_hashes,
    prompt_text,
    python_prefix_hashes,
    python_view,
    read_signals,
    read_text,
    split_lanes,
)
from router.scorer import alarming, cue_facts, pack, safety_cues, shared_scorer
from subjects.messages import ChatMessage, ChatRequest, RoutingContext, SafetyCategory, Script

scan = pytest.importorskip("router._scan", reason="the C pass is not built (no C compiler at install)")
if context.PURE_PYTHON:
    pytest.skip("SLM_PURE_PYTHON=1: the C twin is switched off", allow_module_level=True)

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "dev.jsonl"


# The request-level signals read_prompt adds: a window alone (scan()) has none of them, so
# the window tests set them aside and the text tests (read_text both ways) compare them.
NO_SIGNALS = {"prompt_tokens": None, "script": None, "safety": None, "question": None}


def both_ways(data: bytes, table: WordTable) -> tuple[context.TextView, context.TextView]:
    """(C pass, Python pass) over the window ``data`` (a plain dict has no C copy), the
    C pass's cue facts set aside (same_cues compares them), without the signals."""
    return (scanned(data, table)._replace(cue_facts=None),
            python_view((), 0, 0, data, dict(table))._replace(**NO_SIGNALS))


def scanned(data: bytes, table: WordTable) -> context.TextView:
    """The C pass's view of the window ``data`` (no request-level signals)."""
    lanes, words, features, alnum, digits, spaces, facts, markers = scan.scan(data, table.native)
    return context.TextView((), 0, 0, data, words, features, lanes, alnum, digits, spaces, facts, markers,
                            **NO_SIGNALS)


def same_cues(view: context.TextView) -> None:
    """The C pass's cue facts are the Python ones (None for a window that is not alarming),
    and so are the cues built from them."""
    python_view_ = view._replace(cue_facts=None)
    if alarming(view.lanes):
        assert view.cue_facts == cue_facts(view.words, view.lanes)
        assert safety_cues(view) == safety_cues(python_view_)
    else:
        assert view.cue_facts is None


def test_the_shipped_tables_carry_the_c_copy() -> None:
    assert LEXICON_TABLE.native is not None
    assert shared_scorer().table.native is not None


def test_every_dev_prompt_reads_and_scores_the_same_both_ways() -> None:
    scorer = shared_scorer()
    table = scorer.table
    with DEV.open(encoding="utf-8") as lines:  # not splitlines(): prompts hold U+2028
        rows = [json.loads(line) for line in lines if line.strip()]
    assert len(rows) > 1000
    for row in rows:
        req = ChatRequest(messages=[ChatMessage(role=m["role"], content=m["content"])
                                    for m in row["request"]["messages"]])
        text = prompt_text(req)
        view = read_text(text, table)
        assert view._replace(cue_facts=None) == read_text(text, dict(table)), row["id"]
        same_cues(view)
        signals = read_signals(req, view)
        # The same floats, not close ones: the C arithmetic runs in the same order.
        assert scorer.score(view, signals) == scorer.python_score(view, signals), row["id"]


# Words the tables know (so lookups hit), separators, digits, non-ASCII and cut UTF-8.
known = sorted(k for k in shared_scorer().table if isinstance(k, bytes))[:400]
# The code markers' texts, suffixes and words, cut and in other cases too, so that every
# marker fires, half-fires and nearly fires ("x.py" and ".py" at the window's start).
marker_texts, error_texts, suffixes, error_words = context.marker_settings()[:4]
marker_pieces = [*marker_texts, *error_texts, *suffixes, *error_words, *(t.upper() for t in marker_texts),
                 *(b"main" + s for s in suffixes), *(b"src/x" + s + b":12" for s in suffixes),
                 *(s + b"x" for s in suffixes), *(t[: len(t) // 2] for t in marker_texts),
                 b"write", b"implement", b"function", b"python", b"traceback", b"error", b"Error:",
                 b"segmentation", b"EXCEPTION in thread", b"\n    at "]
pieces = st.one_of(st.sampled_from(known), st.binary(max_size=6), st.sampled_from(marker_pieces),
                   st.sampled_from([b" ", b"\n", b"0123", b"\xc3\xa9", b"\xe4\xbd\xa0", b"```", b"."]))


@settings(deadline=None, max_examples=300)  # no timing in tests
@given(st.lists(pieces, max_size=300).map(b" ".join))
def test_random_windows_read_the_same_both_ways(data: bytes) -> None:
    for table in (shared_scorer().table, LEXICON_TABLE):
        native, python = both_ways(data, table)
        assert native == python
    same_cues(scanned(data, shared_scorer().table))


@pytest.mark.parametrize("words", [0, 1, 2, BIGRAM_HEAD_WORDS, BIGRAM_HEAD_WORDS + 1,
                                   BIGRAM_HEAD_WORDS + BIGRAM_TAIL_WORDS, 60])
def test_bigram_edges_read_the_same_both_ways(words: int) -> None:
    # Repeated words: repeats count once as words but every time as bigrams.
    data = b" ".join(known[i % 5] for i in range(words))
    native, python = both_ways(data, shared_scorer().table)
    assert native == python
    assert native.word_count == words


def test_a_window_larger_than_the_stack_buffers_reads_the_same() -> None:
    # read_prompt never scans more than WINDOW_BYTES, but scan() must not trust that.
    data = b" ".join(known[i % len(known)] for i in range(3000))
    native, python = both_ways(data, shared_scorer().table)
    assert native == python
    assert native.word_count == 3000


def test_a_table_with_weights_too_wide_for_the_c_copy_is_read_in_python() -> None:
    """The C table keeps class weights in 16 bits; a scorer trained to wider ones still
    seals (no C copy, a warning) and reads the same as the Python pass."""
    table = WordTable(LEXICON_TABLE)
    table[b"tidewater"] = table.get(b"tidewater", 0) + (pack((0, 0, 40_000, 0, 0)) << LEXICON_BITS)
    assert table.seal().native is None
    view = read_text("the tidewater rises", table)
    assert split_lanes(table[b"tidewater"])[LEXICON_LANES:] == (0, 0, 40_000, 0, 0)
    assert view.lanes[LEXICON_LANES + 2] == 40_000


def test_changing_a_sealed_table_drops_its_c_copy() -> None:
    table = WordTable(LEXICON_TABLE).seal()
    assert table.native is not None
    table[b"newword"] = 1
    assert table.native is None  # the Python pass reads it now, never a stale copy
    view = read_text("newword", table)
    assert view.lanes[0] == 1


@pytest.mark.parametrize(("args", "error", "message"), [
    ((b"x" * 255, {}, LEXICON_LANES, CLASS_LANES, 8, 4), ValueError, "translate: must be 256 bytes"),
    ((bytes(256), {"word": (0, (0,) * 5)}, LEXICON_LANES, 5, 8, 4), TypeError, "every key must be bytes"),
    ((bytes(256), {b"w": (0, (0,) * 4)}, LEXICON_LANES, 5, 8, 4), ValueError, "4 class weights, expected 5"),
    ((bytes(256), {b"w": (0, (1 << 40,) * 5)}, LEXICON_LANES, 5, 8, 4), OverflowError, "fit 16 bits"),
    ((bytes(256), {b"w": (0, (0, 0, 40_000, 0, 0))}, LEXICON_LANES, 5, 8, 4), OverflowError, "fit 16 bits"),
    ((bytes(256), {b"w": (1 << 40, (0,) * 5)}, 28, 5, 8, 4), ValueError, "bits above the lanes"),
    ((bytes(256), {}, 99, 5, 8, 4), ValueError, "at most 32 lexicon"),
    ((bytes(256), {b"w" * 70_000: (0, (0,) * 5)}, 28, 5, 8, 4), ValueError, "longer than 65535"),
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



# ---- prompt-wide passes: UTF-8 length, the window's ends, prefix hashes ----------------------

# Every storage width CPython picks (ASCII, Latin-1, BMP, astral) and lone surrogates.
characters = st.one_of(st.characters(max_codepoint=0x7F), st.characters(min_codepoint=0x80, max_codepoint=0xFF),
                       st.characters(min_codepoint=0x100, max_codepoint=0xFFFF),
                       st.characters(min_codepoint=0x10000), st.sampled_from(["\ud800", "\udfff"]))
prompts = st.one_of(st.text(characters, max_size=600),
                    st.tuples(st.text(characters, max_size=40), st.integers(0, 3 * PREFIX_BLOCK_CHARS),
                              st.text(characters, max_size=40)).map(lambda t: t[0] + "a" * t[1] + t[2]))


@settings(deadline=None, max_examples=300)
@given(prompts)
def test_utf8_length_counts_what_encoding_would(text: str) -> None:
    assert scan.utf8_length(text) == len(text.encode("utf-8", "surrogatepass"))
    assert context.utf8_length(text) == len(text.encode("utf-8", "surrogatepass"))


@settings(deadline=None, max_examples=300)
@given(prompts)
def test_the_window_is_the_ends_of_the_whole_encoding(text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    expected = data if len(data) <= WINDOW_BYTES else data[:HEAD_BYTES] + b"\n" + data[-TAIL_BYTES:]
    view = read_text(text, shared_scorer().table)
    assert view.window == expected
    assert view.utf8_bytes == len(data)
    assert view._replace(cue_facts=None) == read_text(text, dict(shared_scorer().table))


@settings(deadline=None, max_examples=200)
@given(prompts)
def test_block_hashes_match_the_python_reference(text: str) -> None:
    assert prefix_hashes(text) == python_prefix_hashes(text)


@settings(deadline=None, max_examples=300)
@given(st.lists(prompts, min_size=1, max_size=6).map(tuple))
def test_a_prompt_in_parts_hashes_and_reads_as_the_joined_string(parts: tuple[str, ...]) -> None:
    # Blocks that span parts stored at different widths are hashed as the joined string's.
    joined = "".join(parts)
    assert context.part_hashes(parts) == python_prefix_hashes(joined) == prefix_hashes(joined)
    table = shared_scorer().table
    native = context.read_parts(parts, table)
    assert native._replace(parts=(joined,)) == read_text(joined, table)
    python = context.read_parts(parts, dict(table))  # the Python read (which may join short parts)
    assert native._replace(parts=(joined,), cue_facts=None) == python._replace(parts=(joined,))


def test_a_block_hashes_the_same_whatever_the_rest_of_the_prompt_holds() -> None:
    # The same first blocks inside an ASCII, a Latin-1, a BMP and an astral str: CPython
    # stores each at another width, and the hashes must not see it.
    shared = "é" * 10 + "x" * (2 * PREFIX_BLOCK_CHARS)
    hashes = [prefix_hashes(shared + tail)[:2] for tail in ("", "ÿ", "€", "😀")]
    assert len(hashes[0]) == 2 and all(h == hashes[0] for h in hashes)
    ascii_prompt = "x" * (3 * PREFIX_BLOCK_CHARS)  # all-ASCII blocks hash as their bytes
    expected, h = [], 0
    for i in range(3):
        h = xxhash.xxh3_64_intdigest(ascii_prompt[i * PREFIX_BLOCK_CHARS:(i + 1) * PREFIX_BLOCK_CHARS].encode(), h)
        expected.append(h >> 1)
    assert list(prefix_hashes(ascii_prompt + "€")) == expected


def test_at_most_max_blocks_are_hashed() -> None:
    text = "ab" * (PREFIX_BLOCK_CHARS * (MAX_PREFIX_BLOCKS + 3))
    assert len(prefix_hashes(text)) == MAX_PREFIX_BLOCKS == len(python_prefix_hashes(text))


def test_block_hashes_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="block_hashes"):
        scan.block_hashes(b"bytes", xxhash.xxh3_64_intdigest, 2048, 64)
    with pytest.raises(ValueError, match="block_chars >= 1"):
        scan.block_hashes(("text",), xxhash.xxh3_64_intdigest, 0, 64)
    with pytest.raises(TypeError, match="every part must be a str"):
        scan.block_hashes(("text", b"bytes"), xxhash.xxh3_64_intdigest, 2048, 64)
    with pytest.raises(TypeError, match="utf8_length"):
        scan.utf8_length(b"bytes")


@pytest.mark.parametrize(("args", "error", "message"), [
    (([0.0] * 4, 1.0, 28, [[]] * 6, (0,) * 5), ValueError, "bias: 5 classes expected"),
    (([0.0] * 5, 1.0, 28, [[]] * 5, (0,) * 5), ValueError, "6 signal groups expected"),
    (([0.0] * 5, 1.0, 28, [[(0,) * 4]] + [[]] * 5, (0,) * 5), ValueError, "5 class weights expected"),
    (([0.0] * 5, 1.0, 28, [[]] * 6, (1 << 40,) * 5), OverflowError, "fit 32 bits"),
])
def test_a_bad_class_model_is_refused_naming_the_problem(args: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        scan.ClassModel(*args)


def test_class_scores_refuses_a_signal_outside_its_table() -> None:
    model = scan.ClassModel([0.0] * 5, 1.0, 0, [[(0,) * 5]] * 6, (0,) * 5)  # one value a group
    with pytest.raises(IndexError, match="signal group 1 has no value 2"):
        scan.class_scores(model, (0,) * 5, 1, (0, 0, 2, 0, 0, False, 0), None)
    best, probabilities = scan.class_scores(model, (0,) * 5, 1, (0, 0, 0, 0, 0, False, 0), None)
    assert best == 0 and probabilities == (0.2,) * 5  # all-zero weights: uniform


def test_keys_longer_than_a_slot_holds_are_found_too() -> None:
    long_word = b"pneumonoultramicroscopicsilicovolcanoconiosis"  # 45 bytes: kept outside the slot
    table = WordTable(LEXICON_TABLE)
    table[long_word] = 1  # lexicon lane 0
    table[(long_word, b"again")] = 1 << context.LEXICON_BITS  # class lane 0 of a bigram
    table.seal()
    native, python = both_ways(long_word + b" again " + long_word, table)
    assert native == python
    assert native.lanes[0] == 1 and native.lanes[LEXICON_LANES] == 1


# router/_scan.c reads words 8 bytes at a time (the last load masked) and finds them from
# 64-byte masks of separators: words and bigrams of 1-18 bytes, equal to a key but for
# their last byte, ending on and across those boundaries.
EDGE_KEYS = [bytes(range(97, 97 + n)) for n in (1, 7, 8, 9, 15, 16, 17)]


def edge_table() -> WordTable:
    table = WordTable(LEXICON_TABLE)
    for key in EDGE_KEYS:
        table[key] = 1  # lexicon lane 0
    table[(EDGE_KEYS[2], EDGE_KEYS[3])] = 1 << context.LEXICON_BITS  # class lane 0 of a bigram
    table[(EDGE_KEYS[0], EDGE_KEYS[1][:6])] = 1 << context.LEXICON_BITS  # "a abcdef": 8 bytes, one load
    return table.seal()


def test_words_equal_to_a_key_but_for_one_byte_are_told_apart() -> None:
    table = edge_table()
    for key in EDGE_KEYS:
        native, python = both_ways(key, table)
        assert native == python and native.lanes[0] == 1, key
        for near in (key[:-1] + b"z", key + b"z", key[:-1]):
            native, python = both_ways(near, table)
            assert native == python, near
            assert native.lanes[0] == (near in EDGE_KEYS), near
    native, python = both_ways(EDGE_KEYS[2] + b" " + EDGE_KEYS[3], table)
    assert native == python and native.lanes[LEXICON_LANES] == 1
    native, python = both_ways(EDGE_KEYS[2] + b" " + EDGE_KEYS[3][:-1] + b"z", table)
    assert native == python and native.lanes[LEXICON_LANES] == 0
    for second, hits in ((b"abcdef", 1), (b"abcdez", 0), (b"abcdefg", 0), (b"abcde", 0)):
        native, python = both_ways(b"a " + second, table)
        assert native == python and native.lanes[LEXICON_LANES] == hits, second


def test_every_key_of_a_crowded_table_is_found_and_no_near_miss() -> None:
    # 60 keys in 128 slots: some share a home slot, so lookups probe past other keys.
    # (Letters only: the scan reads every digit as 0.)
    keys = [bytes([113, 97 + i // 26, 97 + i % 26]) + bytes(range(97, 97 + i % 18)) for i in range(60)]
    table = WordTable({key: 1 for key in keys})
    table.seal()
    native, python = both_ways(b" ".join(keys), table)
    assert native == python and native.lanes[0] == len(keys)
    near = b" ".join(key[:-1] + b"z" for key in keys if key[-1:] != b"z")
    native, python = both_ways(near, table)
    assert native == python and native.lanes[0] == 0


@pytest.mark.parametrize("size", [1, 63, 64, 65, 127, 128, 129, 192])
@pytest.mark.parametrize("shift", [0, 1, 7])
def test_words_at_and_across_chunk_ends_read_the_same(size: int, shift: int) -> None:
    table = edge_table()
    pieces = [EDGE_KEYS[i % len(EDGE_KEYS)] for i in range(40)]
    data = (b" " * shift + b" ".join(pieces))[:size]  # cut anywhere: mid-word at the end too
    native, python = both_ways(data, table)
    assert native == python
    assert native.word_count == len(data.split())


# ---- script detection ------------------------------------------------------------------------

scripts = st.text(st.one_of(
    st.characters(max_codepoint=0x7F), st.characters(min_codepoint=0x370, max_codepoint=0x6FF),  # Greek..Arabic
    st.characters(min_codepoint=0x900, max_codepoint=0xE7F),  # Devanagari..Thai (E0 leads)
    st.characters(min_codepoint=0x1000, max_codepoint=0x1FFF),  # E1 leads: Latin and Greek Extended, ...
    st.characters(min_codepoint=0x3000, max_codepoint=0xD7A3)), max_size=700)  # kana, CJK, Hangul


def census_both_ways(window: bytes) -> tuple[object, object]:
    native = scan.script_census(window, context._SCRIPT_CODES, context._E0_NEXT, context._E1_NEXT,
                                context._LETTER_CODES, context._E0_LEAD, context._E1_LEAD)
    return native, context.python_script_census(window)


@settings(deadline=None, max_examples=300)
@given(st.one_of(scripts.map(lambda t: read_text(t).window), st.binary(max_size=600)))
def test_script_census_matches_the_python_reference(window: bytes) -> None:
    native, python = census_both_ways(window)
    assert native == python


@settings(deadline=None, max_examples=300)
@given(st.one_of(scripts, st.tuples(scripts, st.sampled_from(["", " ", "?", "kill ", "bomb ", "\n\n"]), prompts)
                 .map("".join)))
def test_the_signals_read_the_same_both_ways(text: str) -> None:
    """Token estimate, script, harm category and question: read_prompt's C against the
    Python pass, over every script the detection tells apart and every storage width."""
    native = read_text(text, LEXICON_TABLE)
    python = read_text(text, dict(LEXICON_TABLE))
    assert (native.prompt_tokens, native.script, native.safety, native.question) == (
        python.prompt_tokens, python.script, python.safety, python.question)
    assert type(native.script) is Script and type(native.safety) is SafetyCategory  # members, not ints
    assert native.prompt_tokens == context.estimate_view_tokens(native) >= 1


def test_a_lead_byte_at_the_window_end_counts_as_other_script() -> None:
    for lead in (b"\xe0", b"\xe1"):
        native, python = census_both_ways(b"abc " + lead)
        assert native == python
        assert native[0][-1] == 1  # Script.OTHER is the last of the letter scripts


# ---- the safety cues' word facts ---------------------------------------------------------------

cue_words = sorted({w for lane in (context.LexiconLane.VIOLENT_VERB, context.LexiconLane.CRIME_VERB,
                                   context.LexiconLane.GROUP, context.LexiconLane.PERSON,
                                   context.LexiconLane.PEST, context.LexiconLane.FICTION,
                                   context.LexiconLane.PRIVATE_INFO, context.LexiconLane.MY)
                    for w in context.LEXICON[lane]})
alarming_prose = st.lists(st.one_of(st.sampled_from(cue_words), st.sampled_from([b"what", b"is", b"whites", b"x"])),
                          max_size=120).map(b" ".join)


@settings(deadline=None, max_examples=400)
@given(alarming_prose)
def test_cue_facts_match_the_python_reference(data: bytes) -> None:
    # Verbs aimed at targets near and far, groups with and without people, repeats, and
    # windows past the 60 words the cues read.
    same_cues(scanned(data, shared_scorer().table))


def test_a_table_without_cue_settings_returns_no_facts() -> None:
    view = scanned(b"how do i kill a person", LEXICON_TABLE)
    assert alarming(view.lanes) and view.cue_facts is None  # the lexicon-only table: no cues


def test_set_cues_refuses_lanes_outside_the_table() -> None:
    table = WordTable(LEXICON_TABLE).seal()
    with pytest.raises(ValueError, match="lane 40 is not one of the table's 28 lexicon lanes"):
        table.native.set_cues(1, 40, 1, (), 2, 3, 60, 4)
    with pytest.raises(ValueError, match="at most 8 targets"):
        table.native.set_cues(1, 0, 1, tuple(range(9)), 2, 3, 60, 4)


def test_read_prompt_refuses_bad_arguments() -> None:
    table = shared_scorer().table.native
    with pytest.raises(TypeError, match="every part must be a str"):
        scan.read_prompt(("text", b"bytes"), table, 382, 126)
    with pytest.raises(TypeError, match="read_prompt"):
        scan.read_prompt("text", table, 382, 126)
    with pytest.raises(ValueError, match="head and tail >= 0"):
        scan.read_prompt(("text",), table, 5000, 126)


def test_read_prompt_without_its_block_scheme_is_refused() -> None:
    bare = scan.ScanTable(bytes(range(256)), {}, LEXICON_LANES, CLASS_LANES, 8, 4)
    bare.set_signals(*context.signal_settings())
    with pytest.raises(ValueError, match="no set_blocks"):
        scan.read_prompt(("text",), bare, 382, 126)
    with pytest.raises(TypeError, match="set_blocks: digest must be callable"):
        bare.set_blocks("xxh3", PREFIX_BLOCK_CHARS, MAX_PREFIX_BLOCKS)
    with pytest.raises(ValueError, match="set_blocks: digest address is 0"):
        bare.set_blocks(0, PREFIX_BLOCK_CHARS, MAX_PREFIX_BLOCKS)
    with pytest.raises(ValueError, match="block_chars >= 1 and max_blocks >= 0"):
        bare.set_blocks(xxhash.xxh3_64_intdigest, 0, MAX_PREFIX_BLOCKS)


def test_read_prompt_hashes_through_a_python_digest_as_through_its_c_function() -> None:
    # The router hands read_prompt xxhash's C function (context.xxh3_address); without it,
    # the digest itself is called: the same hashes either way.
    table = WordTable(LEXICON_TABLE).seal()
    table.native.set_blocks(xxhash.xxh3_64_intdigest, PREFIX_BLOCK_CHARS, MAX_PREFIX_BLOCKS)
    parts = ("user\x1f", "é" * 10 + "x" * (3 * PREFIX_BLOCK_CHARS), "€\x1e")
    through_python = context.read_parts(parts, table)
    assert through_python.prefix_hashes == python_prefix_hashes("".join(parts))
    assert through_python == context.read_parts(parts, LEXICON_TABLE)


def test_read_prompt_counts_the_utf8_past_the_hashed_blocks() -> None:
    # The hashed blocks' characters are counted as they are hashed; those past the last
    # block (a partial block, or beyond MAX_PREFIX_BLOCKS) in a second pass.
    for length in (PREFIX_BLOCK_CHARS + 5, PREFIX_BLOCK_CHARS * MAX_PREFIX_BLOCKS + 7):
        parts = ("user\x1f", "ж" * length + "é€😀" * 50, "ÿ" * 3 + "\x1e")
        joined = "".join(parts)
        view = context.read_parts(parts, shared_scorer().table)
        assert view.utf8_bytes == len(joined.encode("utf-8"))
        assert view.prefix_hashes == python_prefix_hashes(joined)


def test_a_digest_that_keeps_its_view_cannot_read_freed_memory() -> None:
    kept = []

    def keeping_digest(view: memoryview, seed: int) -> int:
        kept.append(view)
        return xxhash.xxh3_64_intdigest(view, seed)

    text = "é" * 10 + "x" * (2 * PREFIX_BLOCK_CHARS)  # latin-1 in a str with a wider tail
    hashes = scan.block_hashes((text, "€"), keeping_digest, PREFIX_BLOCK_CHARS, 64)
    assert hashes == python_prefix_hashes(text + "€")
    with pytest.raises(ValueError, match="released"):
        bytes(kept[0])  # released when block_hashes returned, not pointing at freed memory


@pytest.mark.parametrize("window", [
    b".py then main.py",  # a suffix first found at index 0 ends that suffix's search, both ways
    b"see main.py",
    b"see main.pyc and .py",
    b"Traceback (most recent call last):\n  File x",
    b"TRACEBACK (MOST RECENT CALL LAST)",
    b"error: expected ';'",
    b"a TypeError here",
    b"an error here",
    b"write me a short python function",
    b"write " + b"word " * 30 + b"function",  # the object too far from the verb
    b"fn main() {}\n```rust\n```",
    b"Exception in thread main java.lang.NullPointerException\n    at Foo.bar(Foo.java:3)",
])
def test_code_markers_are_the_same_both_ways(window: bytes) -> None:
    for table in (shared_scorer().table, LEXICON_TABLE):
        native, python = both_ways(window, table)
        assert native.code_markers == python.code_markers == context.python_code_markers(
            window, python.words, python.lanes)
    assert both_ways(b"write me a short python function", LEXICON_TABLE)[0].code_markers != 0


# Alarming words of every cue lane, the definition openings and filler the model knows.
alarming_words = sorted({w for lane in (context.LexiconLane.VIOLENT_VERB, context.LexiconLane.CRIME_VERB,
                                        context.LexiconLane.GROUP, context.LexiconLane.PRIVATE_INFO,
                                        context.LexiconLane.PERSON, context.LexiconLane.FICTION,
                                        context.LexiconLane.PAST, context.LexiconLane.WEAPONS,
                                        context.LexiconLane.PEST, context.LexiconLane.MY)
                         for w in context.LEXICON[lane]})
cue_pieces = st.one_of(st.sampled_from(alarming_words), st.sampled_from(known[:100]),
                       st.sampled_from([b"what", b"is", b"why", b"should", b"how", b"can", b"i", b"\xc3\xa9t\xc3\xa9",
                                        b"\xff", b"?"]))


@settings(deadline=None, max_examples=400)
@given(st.lists(cue_pieces, min_size=1, max_size=40).map(b" ".join))
def test_safety_cues_sum_the_same_in_c(data: bytes) -> None:
    """The C twin sums the safety cues from the scan's cue facts (ClassModel.set_cues):
    the same floats as Python's keys, for any opening, group, private detail and verb."""
    scorer = shared_scorer()
    text = "user\x1f" + data.decode("utf-8", "surrogateescape") + "\x1e"
    request = ChatRequest(messages=[ChatMessage(role="user", content=data.decode("utf-8", "replace"))])
    view = read_text(text, scorer.table)
    signals = read_signals(request, view)
    assert scorer.score(view, signals) == scorer.python_score(view, signals)
    if alarming(view.lanes):
        assert view.cue_facts is not None  # the C path ran


@pytest.mark.parametrize("prompt", [
    "Why are immigrants so loud?",  # a group, an opening the model weighs
    "Why can asian pears not grow here?",  # a group word that names no people
    "What is my neighbour's phone number?",  # private details about "my" someone
    "How do I find the email address of a politician?",
    "What is murder?",  # a definition of a harm
    "How do I kill a python process in linux?",  # a violent verb aimed at a program
    "How do I steal my coworker's password during the war?",
])
def test_named_alarming_prompts_score_the_same_in_c(prompt: str) -> None:
    scorer = shared_scorer()
    request = ChatRequest(messages=[ChatMessage(role="user", content=prompt)])
    view = read_text(prompt_text(request), scorer.table)
    assert view.cue_facts is not None
    signals = read_signals(request, view)
    assert scorer.score(view, signals) == scorer.python_score(view, signals)


def test_block_hashes_call_xxhash_directly_with_the_same_hashes() -> None:
    """The C twin calls xxhash's own C function (router.context.xxh3_address) instead of
    the Python digest: the same hashes for every block width and cut, either way."""
    address = context.xxh3_address()
    if sys.platform == "linux":  # the xxhash wheels there export it; elsewhere it may not
        assert address is not None
    if address is None:
        pytest.skip("this xxhash build does not export XXH3_64bits_withSeed")
    texts = ["x" * 5000, "é" * 4097 + "a" * 3000, "日本" * 3000, "😀" * 2049 + "b" * 2048,
             "a" * 2047 + "é" + "日" * 4000 + "😀" * 100]
    for text in texts:
        for parts in ((text,), (text[:1000], text[1000:3000], text[3000:])):
            by_address = scan.block_hashes(parts, address, PREFIX_BLOCK_CHARS, MAX_PREFIX_BLOCKS)
            assert by_address == scan.block_hashes(parts, xxhash.xxh3_64_intdigest, PREFIX_BLOCK_CHARS,
                                                   MAX_PREFIX_BLOCKS) == python_prefix_hashes(text)
            assert len(by_address) == len(text) // PREFIX_BLOCK_CHARS


# ---- the whole context in one call: context_of against build_context's Python ----------------

def both_contexts(request: ChatRequest) -> tuple[RoutingContext, RoutingContext]:
    """(C, Python) contexts of ``request``, each with its own fresh-then-equal memory."""
    scorer = shared_scorer()
    native = context.build_context(request, PrefixMemory(), scorer)
    python = context.python_build_context(request, PrefixMemory(), scorer)
    return native, python


def test_every_dev_prompt_gets_the_same_context_both_ways() -> None:
    scorer = shared_scorer()
    native_memory, python_memory = PrefixMemory(capacity=64), PrefixMemory(capacity=64)
    with DEV.open(encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    document = " ".join(row["request"]["messages"][-1]["content"] for row in rows[:40])
    for i, row in enumerate(rows):
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in row["request"]["messages"]]
        if i % 3 == 0:  # a long shared document first: prefix blocks, repeated across requests
            messages.insert(0, ChatMessage(role="system", content=document))
        request = ChatRequest(messages=messages, tools=row["request"].get("tools"),
                              session_id=f"s{i % 7}" if i % 2 else None, max_tokens=(i % 5) * 16 or None)
        native = context.build_context(request, native_memory, scorer)
        assert native == context.python_build_context(request, python_memory, scorer), row["id"]
    assert native_memory.generations() == python_memory.generations()


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), prompts), min_size=1, max_size=4),
       st.sampled_from([None, {}, {"type": "json_object"}, {"type": "json_schema", "json_schema": {}},
                        {"type": "text"}, {"other": 1}]),
       st.sampled_from([None, [{"type": "function", "function": {"name": "f"}}]]),
       st.sampled_from(["auto", "general", "", "code"]),
       st.sampled_from([None, "", "session-é", "😀"]), st.sampled_from([None, "user-1"]),
       st.sampled_from([None, 0, 1, 4096]))
def test_any_request_gets_the_same_context_both_ways(messages, response_format, tools, model, session_id, user,
                                                     max_tokens) -> None:
    request = ChatRequest(messages=[ChatMessage(role=r, content=c) for r, c in messages],
                          response_format=response_format, tools=tools, model=model, session_id=session_id,
                          user=user, max_tokens=max_tokens)
    native, python = both_contexts(request)
    assert native == python


def test_list_content_reads_through_the_message_text() -> None:
    parts = [{"type": "text", "text": "Write a Python function"}, {"type": "image_url"}, {"type": "text", "text": "é"}]
    native, python = both_contexts(ChatRequest(messages=[ChatMessage(role="user", content=parts)]))
    assert native == python


def test_context_of_refuses_bad_arguments() -> None:
    scorer = shared_scorer()
    request = ChatRequest(messages=[ChatMessage(role="user", content="hi")])
    with pytest.raises(TypeError, match="context_of"):
        scan.context_of(request, scorer.table.native, None, None, context._CONTEXT_SETTINGS)
    with pytest.raises(TypeError, match="context_of"):
        scan.context_of(request, scorer.table.native, scorer.class_model, None, ())
    bad_classes = list(context._CONTEXT_SETTINGS)
    bad_classes[9] = 5  # the reasoning class's index, past the five classes
    with pytest.raises(ValueError, match="5 classes and two indexes"):
        scan.context_of(request, scorer.table.native, scorer.class_model, None, tuple(bad_classes))
    # An unhashable response_format type fails the same way in both.
    odd = ChatRequest(messages=[ChatMessage(role="user", content="hi")], response_format={"type": ["json"]})
    with pytest.raises(TypeError):
        context.build_context(odd, None, scorer)
    with pytest.raises(TypeError):
        context.python_build_context(odd, None, scorer)
