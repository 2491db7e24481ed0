"""Context extraction: each signal on examples that must and must not set it, the prefix-hash
scheme other components rely on, bounded windows, and malformed contexts refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from router.context import (
    HEAD_BYTES,
    LEXICON,
    LEXICON_LANES,
    PREFIX_BLOCK_CHARS,
    TAIL_BYTES,
    WINDOW_BYTES,
    BadContext,
    CodeMarker,
    LexiconLane,
    PrefixMemory,
    build_context,
    check_context,
    estimate_tokens,
    prefix_hashes,
    prompt_text,
    read_request,
    read_text,
    stable_hash,
)
from subjects.messages import ChatMessage, ChatRequest, SafetyCategory, Script, Structured


def request(text: str, **fields: Any) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **fields)


def markers(text: str) -> CodeMarker:
    return CodeMarker(build_context(request(text)).code_markers)


# ---- code markers ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "marker"), [
    ("Why does this fail?\n```python\nprint(x)\n```", CodeMarker.FENCE),
    ('Traceback (most recent call last):\n  File "a.py", line 1', CodeMarker.STACK_TRACE),
    ("Exception in thread main java.lang.Foo\n    at com.x.Main.run(Main.java:3)", CodeMarker.STACK_TRACE),
    ("I get TypeError: unsupported operand", CodeMarker.COMPILER_ERROR),
    ("src/main.rs:12:5: error: expected one of", CodeMarker.COMPILER_ERROR),
    ("what does utils/io.py do on import", CodeMarker.FILE_PATH),
    ("def add(a, b):\n    return a + b", CodeMarker.KEYWORDS),
    ("Write a Python function to reverse a list.", CodeMarker.WRITE_CODE_ASK),
    ("Please implement a binary search class in Java", CodeMarker.WRITE_CODE_ASK),
])
def test_code_markers_fire(text: str, marker: CodeMarker) -> None:
    assert marker in markers(text)


@pytest.mark.parametrize("text", [
    "How do I kill a Python process?",
    "Leo has to write a 400-word story for his literature class.",
    "Brad's zip code consists of five numbers that add up to 10.",
    "Return the sum of the apples Jim has. The class has 25 students.",
    "A report from Washington D.C. on the new bill.",
])
def test_prose_sets_no_code_marker(text: str) -> None:
    assert markers(text) == 0


# ---- structured output, script, safety lexicon ------------------------------------------------

def test_structured_output_from_the_request_and_from_the_text() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert build_context(request("hi", tools=tools)).structured == Structured.TOOLS
    fmt = {"type": "json_object"}
    assert build_context(request("hi", response_format=fmt)).structured == Structured.RESPONSE_FORMAT
    assert build_context(request("List the names. Respond in JSON only.")).structured == Structured.JSON_TEXT
    assert build_context(request("What is JSON?")).structured == Structured.NONE
    assert build_context(request("hi", response_format={"type": "text"})).structured == Structured.NONE


@pytest.mark.parametrize(("text", "script"), [
    ("Café crème, s'il vous plaît — über naïve", Script.LATIN),
    ("Привет, как дела? Расскажи о погоде.", Script.CYRILLIC),
    ("请用三句话介绍一下北京的历史。", Script.CJK),
    ("مرحبا كيف حالك اليوم", Script.ARABIC),
    ("Summarise: 東京 is a city", Script.LATIN),
    ("Καλημέρα, τι κάνεις σήμερα;", Script.GREEK),
    ("שלום, מה שלומך היום?", Script.HEBREW),
    ("नमस्ते, आप कैसे हैं?", Script.DEVANAGARI),
    ("สวัสดีครับ วันนี้เป็นอย่างไร", Script.THAI),
    ("안녕하세요, 오늘 어떠세요?", Script.HANGUL),
    ("こんにちは、おげんきですか", Script.KANA),
    ("Xin chào, hôm nay bạn thế nào? Tôi khỏe, cảm ơn bạn nhiều.", Script.LATIN),  # Latin Extended Additional
    ("Բարեւ, ինչպես ես այսօր", Script.OTHER),  # Armenian
])
def test_script_detection(text: str, script: Script) -> None:
    assert build_context(request(text)).script == script


def test_safety_lexicon_names_the_category_of_the_words() -> None:
    assert build_context(request("How do I build a bomb?")).safety == SafetyCategory.WEAPONS
    assert build_context(request("Write ransomware for me")).safety == SafetyCategory.CYBER
    assert build_context(request("What is a good pasta recipe?")).safety == SafetyCategory.NONE


# ---- tokens, sessions, explicit model --------------------------------------------------------

def test_token_estimate_tracks_length_and_is_higher_for_non_latin_text() -> None:
    english = "The quick brown fox jumps over the lazy dog. " * 20
    assert 150 <= estimate_tokens(english) <= 300  # ~200 tokens of English
    russian = "Съешь же ещё этих мягких французских булок. " * 20
    assert estimate_tokens(russian) > estimate_tokens(english)


def test_request_fields_reach_the_context() -> None:
    c = build_context(request("hi", model="Code", max_tokens=64, user="alice"))
    assert (c.requested_model, c.max_tokens) == ("Code", 64)
    assert c.session_hash == stable_hash("alice") != 0
    assert build_context(request("hi", session_id="s1", user="alice")).session_hash == stable_hash("s1")
    assert build_context(request("hi")).session_hash == 0
    assert build_context(request("hi")).requested_model == ""


# ---- prefix hashes: the scheme replica choice and trace replay depend on ----------------------

def test_prefix_hashes_chain_fixed_blocks() -> None:
    text = "".join(chr(97 + i % 26) for i in range(PREFIX_BLOCK_CHARS * 3 + 100))
    hashes = prefix_hashes(text)
    assert len(hashes) == 3  # full blocks only
    data = text.encode()
    h = 0
    for i, got in enumerate(hashes):
        h = xxhash.xxh3_64_intdigest(data[i * PREFIX_BLOCK_CHARS:(i + 1) * PREFIX_BLOCK_CHARS], h)
        assert got == h >> 1
    # A prompt that shares the first two blocks shares the first two hashes, not the third.
    other = text[: PREFIX_BLOCK_CHARS * 2] + "z" * PREFIX_BLOCK_CHARS
    assert prefix_hashes(other)[:2] == hashes[:2]
    assert prefix_hashes(other)[2] != hashes[2]
    assert prefix_hashes("short") == ()


def test_prefix_memory_forgets_only_after_half_its_capacity_of_newer_hashes() -> None:
    memory = PrefixMemory(capacity=8)  # two generations of 4
    memory.remember((1, 2))
    memory.remember((3, 4))  # the first generation is full: it becomes the previous one
    assert memory.seen_depth((1, 2)) == 2 and memory.seen_depth((3, 4)) == 2
    memory.remember((5, 6, 7, 8))  # a second full generation: (1, 2) and (3, 4) are older than 4 hashes
    assert memory.seen_depth((5, 6, 7)) == 3
    memory.remember((9,))
    assert memory.seen_depth((1, 2)) == 0 and memory.seen_depth((5, 6, 7, 8, 9)) == 5
    assert memory.seen_depth((5, 99, 7)) == 1  # a miss ends the count: deeper hashes chain on it


def test_prefix_memory_reports_how_deep_a_prefix_was_seen() -> None:
    memory = PrefixMemory(capacity=8)
    shared = "x" * (PREFIX_BLOCK_CHARS * 2)
    first = build_context(request(shared + "first question"), memory)
    second = build_context(request(shared + "y" * PREFIX_BLOCK_CHARS), memory)
    assert first.prefix_seen_depth == 0
    assert second.prefix_seen_depth == 2  # the role prefix shifts blocks, but both share two


# ---- bounded scan window ----------------------------------------------------------------------

def test_long_prompts_are_scanned_at_both_ends_only() -> None:
    middle = " ransomware " + "filler words here " * 2000
    head, tail = "lorem ipsum dolor " * (HEAD_BYTES // 18), "sit amet elit " * (TAIL_BYTES // 14)
    text = "Summarise this document. " + head + middle + tail + " Answer in JSON only."
    view = read_text(text)
    assert len(view.window) == WINDOW_BYTES
    assert b"ransomware" not in view.words  # only in the middle: never read
    assert b"summarise" in view.words and b"json" in view.words
    ctx = build_context(request(text))
    assert ctx.structured == Structured.JSON_TEXT
    words = len(text.split())  # ~6,400 short words: a BPE makes about a token of each
    assert 0.8 * words <= ctx.prompt_tokens <= 1.5 * words  # the whole prompt, not the window


def test_a_window_cut_inside_a_character_still_reads() -> None:
    text = "é" * 2000 + " Write ransomware"  # two bytes a character: the cut splits one
    view = read_text(text)
    assert view.words[-2:] == [b"write", b"ransomware"]
    assert build_context(request(text)).safety == SafetyCategory.CYBER


# ---- the one pass: lexicon lanes count exactly the lexicon words ------------------------------

def reference_lanes(words: list[bytes]) -> list[int]:
    """How many distinct words of each list the window holds."""
    return [len(set(words) & LEXICON[lane]) for lane in LexiconLane]


words_of_lexicons = st.sampled_from(sorted({w.decode() for ws in LEXICON.values() for w in ws}))
prose = st.lists(st.one_of(words_of_lexicons, st.text(max_size=8)), max_size=200).map(" ".join)


@settings(deadline=None)  # no timing in tests: a loaded box must not fail them
@given(prose)
def test_lexicon_lanes_count_every_lexicon_word(text: str) -> None:
    view = read_text(text)
    assert list(view.lanes[:LEXICON_LANES]) == reference_lanes(view.words)
    assert not any(view.lanes[LEXICON_LANES:])  # no scorer: class sums are 0


def test_a_window_of_distinct_lexicon_words_never_overflows_a_lane() -> None:
    # The most a lane can count: a window of nothing but distinct words from one list.
    words = sorted(w.decode() for w in LEXICON[LexiconLane.VIOLENT_VERB])
    view = read_text(" ".join(words * 3))
    lanes = reference_lanes(view.words)
    assert list(view.lanes[:LEXICON_LANES]) == lanes
    assert lanes[LexiconLane.VIOLENT_VERB] > 50
    assert all(lane < 256 for lane in view.lanes[:LEXICON_LANES])


# ---- any request: a context; malformed contexts: refused naming the field ------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=3000)


@settings(deadline=None)  # no timing in tests: a loaded box must not fail them
@given(st.lists(texts, min_size=1, max_size=6), st.sampled_from(["user", "system", "assistant"]))
def test_any_request_gives_a_well_formed_context(parts: list[str], role: str) -> None:
    req = ChatRequest(messages=[ChatMessage(role=role, content=p) for p in parts])
    c = build_context(req)
    check_context(c)
    assert c.prompt_tokens >= 1
    assert c == build_context(req)  # deterministic
    # Long prompts are read piecewise: it must be the same as reading the joined prompt.
    assert read_request(req)._replace(parts=(prompt_text(req),)) == read_text(prompt_text(req))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("prompt_tokens", -1, "prompt_tokens: must be >= 0"),
    ("complexity", 1.5, "complexity: must be a probability"),
    ("safety_score", float("nan"), "safety_score: must be a probability"),
    ("code_markers", 1 << 10, "code_markers"),
    ("prefix_seen_depth", 3, "prefix_seen_depth: 3 is deeper"),
])
def test_out_of_range_context_fields_are_refused(field: str, value: Any, message: str) -> None:
    ctx = msgspec.structs.replace(build_context(request("hello")), **{field: value})
    with pytest.raises(BadContext, match=message):
        check_context(ctx)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.lists(st.one_of(st.integers(0, 40), st.integers(0, (1 << 63) - 1)), max_size=6).map(tuple),
                max_size=30))
def test_prefix_memory_see_is_seen_depth_then_remember(requests: list[tuple[int, ...]]) -> None:
    """``see`` answers and remembers as ``seen_depth`` followed by ``remember`` do,
    generation roll-overs included (tests/test_prefix_memory.py compares the C twin with
    the Python)."""
    one_step, two_steps = PrefixMemory(capacity=10), PrefixMemory(capacity=10)
    for hashes in requests:
        expected = two_steps.seen_depth(hashes)
        two_steps.remember(hashes)
        assert one_step.see(hashes) == expected
        assert one_step.generations() == two_steps.generations()
