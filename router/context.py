"""Feature extraction: a ChatRequest becomes a compact RoutingContext.

The budget is a few microseconds per request in pure Python, so the prompt is read once:
a bounded window (the head and the tail of the conversation) is lowercased and split into
word tokens by one ``bytes.translate`` + ``split`` (both C loops). Every text signal —
code markers, JSON-only asks, the safety lexicon, the scorer's features — is then a set
membership test on those tokens, whose ``str`` hashes CPython computes once and caches.
Regexes are avoided on purpose: an alternation costs ~50 ns per character scanned, which
is the whole budget for a 1 KB prompt. One xxhash pass over the full prompt gives the
prefix hashes; the token estimate comes from lengths only (no tokenizer).
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

import xxhash

from subjects.messages import (
    ChatRequest,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
    TaskClass,
)

if TYPE_CHECKING:
    from router.scorer import Scorer

# Prompt text is hashed in fixed-size blocks; hashes are chained, so hash i names the
# whole prompt up to the end of block i. 2,048 characters is about 512 tokens of English.
# Replica choice and the trace replay depend on exactly this scheme: change it only
# together with them.
PREFIX_BLOCK_CHARS = 2048
MAX_PREFIX_BLOCKS = 64

# The scan window: the ask is usually at the start or the end of a prompt, and the cost
# must not grow with a 32 KB paste. Each word of window costs ~0.3 µs on this project's
# 2-core box (split, hash, one weight lookup), so the window is 768 characters (~130
# words). Held-out macro-F1 was the same with 1,536 and with 512 characters.
HEAD_CHARS = 512
TAIL_CHARS = 256

# The rough conversion other components use (2,048 characters ≈ 512 tokens).
CHARS_PER_TOKEN = 4.0
# Token estimate (no tokenizer at run time): a linear function of the scan window's
# letters-and-digits, words, digits and punctuation, scaled to the whole prompt, plus one
# token per EXTRA_BYTES_PER_TOKEN UTF-8 bytes beyond one a character (non-Latin scripts
# cost more tokens a character). A BPE spends about a token a word, a token a digit
# (SmolLM2 splits numbers into digits) and a token a punctuation mark. Coefficients fitted
# (least relative error) against SmolLM2's tokenizer on dev.jsonl; bench/token_estimate.py
# measures the error and the README quotes it.
TOKENS_PER_ALNUM = 0.0374
TOKENS_PER_WORD = 0.9188
TOKENS_PER_DIGIT = 0.8053
TOKENS_PER_PUNCT = 1.1996
EXTRA_BYTES_PER_TOKEN = 2.0
MAX_CHARS_PER_TOKEN = 8  # no real text packs more characters into a token than this

# bytes.translate table: ASCII letters lowercased, digits kept, every other ASCII byte a
# space; bytes >= 0x80 (UTF-8 of non-ASCII letters) pass through so words stay whole.
_WORD_BYTES = bytes(
    c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122 or c >= 128) else 32
    for c in range(256)
)


class CodeMarker(enum.IntFlag):
    FENCE = 1
    STACK_TRACE = 2
    COMPILER_ERROR = 4
    FILE_PATH = 8
    KEYWORDS = 16
    WRITE_CODE_ASK = 32


# Words that name a program construct and hardly ever appear in prose. Words that prose
# uses too ("return", "import", "class", "function") are left to the scorer.
_CODE_KEYWORDS = frozenset(
    "def elif lambda printf println nullptr struct namespace void func fn kwargs isinstance "
    "ifdef endif iostream cout malloc typedef impl boolean bool".split()
)
# Exception names and compiler words: any one of them marks a compiler/runtime error.
_ERROR_WORDS = frozenset(
    "syntaxerror typeerror valueerror nameerror indexerror keyerror attributeerror "
    "importerror modulenotfounderror zerodivisionerror runtimeerror nullpointerexception "
    "segfault stacktrace".split()
)
_STACK_TRACE_TEXT = ("traceback (most recent call last)", "\n    at ", "exception in thread")
_ERROR_TEXT = ("error:", "error[", "undefined reference", "segmentation fault")
# No one-letter suffixes: ".c" and ".h" match abbreviations like "D.C.".
_SOURCE_SUFFIXES = (".py", ".js", ".ts", ".rs", ".cpp", ".hpp", ".java", ".rb", ".go", ".sh")
_SUFFIX_WORDS = frozenset(suffix[1:] for suffix in _SOURCE_SUFFIXES)
_ASK_VERBS = frozenset("write implement create develop build generate fix debug refactor complete".split())
_ASK_OBJECTS = frozenset(
    "function functions program script class method code regex query sql python javascript "
    "java typescript rust golang algorithm api snippet".split()
)
_ASK_WORDS = 24  # the ask verb and its object must sit in the first words of the prompt
_ASK_REACH = 4  # ... and the object within this many words after the verb
_JSON_ASK = frozenset("only valid format respond reply return output schema strictly".split())

# The safety lexicon: which kind of harm a prompt *talks about*. Words alone cannot tell
# "kill a Python process" from "kill a person" (the XSTest contrast set), so the default
# rules send a request to the policy model on the scorer's safety score, which uses these
# words as features among many; the category is a label for logs and custom rules.
_SAFETY_WORDS: tuple[tuple[SafetyCategory, frozenset[str]], ...] = (
    (SafetyCategory.SELF_HARM, frozenset("suicide suicidal selfharm myself overdose".split())),
    (SafetyCategory.WEAPONS, frozenset(
        "bomb bombs explosive explosives firearm firearms gun guns weapon weapons rifle "
        "grenade ammunition detonate detonator".split())),
    (SafetyCategory.CYBER, frozenset(
        "malware ransomware virus keylogger phishing exploit exploits hack hacking botnet "
        "ddos spyware trojan rootkit".split())),
    (SafetyCategory.VIOLENCE, frozenset(
        "kill killing murder murdering assault poison poisoning kidnap kidnapping torture "
        "stab strangle shoot shooting massacre assassinate assassination attack hostage "
        "behead execute".split())),
    (SafetyCategory.DRUGS, frozenset(
        "meth methamphetamine cocaine coke crack heroin fentanyl lsd marijuana marihuana "
        "mdma opioids drugs".split())),
    (SafetyCategory.FRAUD, frozenset(
        "counterfeit launder laundering scam scams fraud steal stealing theft identity "
        "forge forged embezzle insider".split())),
    (SafetyCategory.HATE, frozenset(
        "racist racism genocide supremacy supremacist slur slurs discriminate "
        "discrimination".split())),
    (SafetyCategory.SEXUAL, frozenset("rape pedophilia porn pornography explicit molest".split())),
)

# (first code point, last code point, script), for non-Latin script detection.
_SCRIPT_RANGES: tuple[tuple[int, int, Script], ...] = (
    (0x0370, 0x03FF, Script.GREEK),
    (0x0400, 0x04FF, Script.CYRILLIC),
    (0x0590, 0x05FF, Script.HEBREW),
    (0x0600, 0x06FF, Script.ARABIC),
    (0x0900, 0x097F, Script.DEVANAGARI),
    (0x0E00, 0x0E7F, Script.THAI),
    (0x3040, 0x30FF, Script.KANA),
    (0x4E00, 0x9FFF, Script.CJK),
    (0xAC00, 0xD7AF, Script.HANGUL),
)
_NON_LATIN = re.compile("[^\x00-\u036f\u1e00-\u1eff\u2000-\u206f]")  # one class: a C loop
_SCRIPT_SAMPLE_CHARS = 512
_SCRIPT_VOTES = 32


class TextView(NamedTuple):
    """The prompt as the policy reads it, computed once per request.

    ``words`` are the lowercased word tokens of the scan window in order; ``word_set`` the
    same as a set (the scorer and every lexicon test share it); ``window`` the lowercased
    window text for the few substring tests that need punctuation.
    """

    chars: int  # characters in the whole prompt
    utf8: bytes  # the whole prompt, UTF-8 (prefix hashes are taken over these bytes)
    window: str
    words: list[str]
    word_set: frozenset[str]
    # Character counts of the window, taken with bytes methods (C loops) for the estimate.
    window_bytes: int
    alnum_bytes: int  # letters and digits (and non-ASCII bytes)
    digit_bytes: int
    space_bytes: int  # spaces and newlines


class Signals(NamedTuple):
    """The context's request-level signals, before scoring."""

    prompt_tokens: int
    code_markers: int
    structured: Structured
    script: Script
    safety: SafetyCategory
    question: bool  # the window holds a question mark
    digits: int  # digits in the window (word problems are full of them)


def prompt_text(request: ChatRequest) -> str:
    """The conversation as one string, in the order a chat template would lay it out."""
    return "".join(f"{m.role}\x1f{m.text()}\x1e" for m in request.messages)


def estimate_tokens(text: str) -> int:
    """Tokens a typical SLM tokenizer makes of ``text`` (no tokenizer call)."""
    return estimate_view_tokens(read_text(text))


def estimate_view_tokens(view: TextView) -> int:
    punct = view.window_bytes - view.alnum_bytes - view.space_bytes
    in_window = (TOKENS_PER_ALNUM * view.alnum_bytes + TOKENS_PER_WORD * len(view.words)
                 + TOKENS_PER_DIGIT * view.digit_bytes + TOKENS_PER_PUNCT * max(punct, 0))
    scale = len(view.utf8) / view.window_bytes if view.window_bytes else 0.0
    extra = (len(view.utf8) - view.chars) / EXTRA_BYTES_PER_TOKEN
    # The floor guards windows unlike the rest of the prompt (one 1 KB "word" of padding).
    return max(int(in_window * scale + extra + 0.5), view.chars // MAX_CHARS_PER_TOKEN, 1)


def scan_window(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def read_text(text: str) -> TextView:
    """Tokenise the scan window of ``text`` (one translate, one split)."""
    utf8 = text.encode("utf-8", "surrogatepass")
    window = scan_window(text)
    return _view(len(text), utf8, window, utf8 if window is text else None)


def read_request(request: ChatRequest) -> TextView:
    """The request's TextView, without building the whole prompt as one string.

    A long prompt is only encoded (message by message, for the prefix hashes) and its
    window cut from the first and last pieces: joining a 32 KB conversation into one str
    first would cost as much again (~3 ns a character for non-Latin-1 text here).
    """
    pieces = [piece for m in request.messages for piece in (m.role, "\x1f", m.text(), "\x1e")]
    chars = sum(map(len, pieces))
    if chars <= HEAD_CHARS + TAIL_CHARS:
        return read_text("".join(pieces))
    utf8 = b"".join([piece.encode("utf-8", "surrogatepass") for piece in pieces])
    return _view(chars, utf8, _head(pieces, HEAD_CHARS) + "\n" + _tail(pieces, TAIL_CHARS), None)


def _head(pieces: list[str], size: int) -> str:
    taken: list[str] = []
    for piece in pieces:
        taken.append(piece[:size])
        size -= len(taken[-1])
        if size <= 0:
            break
    return "".join(taken)


def _tail(pieces: list[str], size: int) -> str:
    taken: list[str] = []
    for piece in reversed(pieces):
        taken.append(piece[-size:])
        size -= len(taken[-1])
        if size <= 0:
            break
    return "".join(reversed(taken))


def _view(chars: int, utf8: bytes, window: str, raw: bytes | None) -> TextView:
    if raw is None:
        raw = window.encode("utf-8", "surrogatepass")
    spaced = raw.translate(_WORD_BYTES)
    words = spaced.decode("utf-8", "surrogatepass").split()
    return TextView(
        chars, utf8, window.lower(), words, frozenset(words),
        len(raw),  # window_bytes
        len(raw) - spaced.count(b" "),  # alnum_bytes
        len(spaced) - len(spaced.translate(None, b"0123456789")),  # digit_bytes
        raw.count(b" ") + raw.count(b"\n"),  # space_bytes
    )


def code_markers(view: TextView) -> int:
    words, window = view.word_set, view.window
    markers = 0
    if "```" in window:
        markers |= CodeMarker.FENCE
    if any(marker in window for marker in _STACK_TRACE_TEXT):
        markers |= CodeMarker.STACK_TRACE
    if not words.isdisjoint(_ERROR_WORDS) or any(marker in window for marker in _ERROR_TEXT):
        markers |= CodeMarker.COMPILER_ERROR
    if _has_source_path(words, window):
        markers |= CodeMarker.FILE_PATH
    if not words.isdisjoint(_CODE_KEYWORDS):
        markers |= CodeMarker.KEYWORDS
    if _has_code_ask(view.words[:_ASK_WORDS]):
        markers |= CodeMarker.WRITE_CODE_ASK
    return markers


def _has_code_ask(head: list[str]) -> bool:
    """An ask verb followed closely by a program noun: "write a python function"."""
    if _ASK_VERBS.isdisjoint(head) or _ASK_OBJECTS.isdisjoint(head):
        return False  # the common case, decided by two C-level set scans
    for i, word in enumerate(head):
        if word in _ASK_VERBS and not _ASK_OBJECTS.isdisjoint(head[i + 1 : i + 1 + _ASK_REACH]):
            return True
    return False


def _has_source_path(words: frozenset[str], window: str) -> bool:
    """A word followed by a source-file suffix, e.g. ``utils/io.py`` or ``main.rs:12``."""
    if _SUFFIX_WORDS.isdisjoint(words):
        return False  # tokenising split "io.py" into "io", "py": no suffix word, no path
    for suffix in _SOURCE_SUFFIXES:
        at = window.find(suffix)
        while at > 0:
            end = at + len(suffix)
            if window[at - 1].isalnum() and (end == len(window) or not window[end].isalnum()):
                return True
            at = window.find(suffix, end)
    return False


def structured_kind(request: ChatRequest, view: TextView) -> Structured:
    if request.tools:
        return Structured.TOOLS
    if request.response_format and request.response_format.get("type") in ("json_object", "json_schema"):
        return Structured.RESPONSE_FORMAT
    if "json" in view.word_set and not view.word_set.isdisjoint(_JSON_ASK):
        return Structured.JSON_TEXT
    return Structured.NONE


def detect_script(window: str) -> Script:
    """The dominant writing system of the window: Latin unless other letters dominate."""
    if window.isascii():  # O(1) in CPython: the string knows it is ASCII
        return Script.LATIN
    sample = window[:_SCRIPT_SAMPLE_CHARS]
    others = _NON_LATIN.findall(sample)
    if 3 * len(others) < len(sample) - sample.count(" "):
        return Script.LATIN
    votes: dict[Script, int] = {}
    for ch in others[:_SCRIPT_VOTES]:
        script = _script_of(ord(ch))
        votes[script] = votes.get(script, 0) + 1
    return max(votes.items(), key=lambda kv: kv[1])[0]


def _script_of(code: int) -> Script:
    for low, high, script in _SCRIPT_RANGES:
        if low <= code <= high:
            return script
    return Script.OTHER


def safety_category(words: frozenset[str]) -> SafetyCategory:
    """The first harm category whose words the prompt uses (NONE when it uses none)."""
    for category, lexicon in _SAFETY_WORDS:
        if not words.isdisjoint(lexicon):
            return category
    return SafetyCategory.NONE


def read_signals(request: ChatRequest, view: TextView) -> Signals:
    return Signals(
        estimate_view_tokens(view),  # prompt_tokens
        code_markers(view),
        structured_kind(request, view),
        detect_script(view.window),
        safety_category(view.word_set),
        "?" in view.window,  # question
        view.digit_bytes,  # digits
    )


def stable_hash(text: str) -> int:
    """A 63-bit hash that is equal on every router (Python's hash() is salted)."""
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass")) >> 1


def prefix_hashes(text: str, data: bytes | None = None) -> tuple[int, ...]:
    """Chained hashes at every full block boundary (block i's hash covers blocks 0..i).

    ``data`` is ``text`` as UTF-8 when the caller has it already (``text`` is then unused).
    """
    if data is None:
        data = text.encode("utf-8", "surrogatepass")
    step = PREFIX_BLOCK_CHARS
    hashes: list[int] = []
    h = 0
    end = min(len(data), step * MAX_PREFIX_BLOCKS)
    for start in range(0, end - step + 1, step):
        h = xxhash.xxh3_64_intdigest(data[start : start + step], h)
        hashes.append(h >> 1)
    return tuple(hashes)


class PrefixMemory:
    """Recently seen prefix hashes (an LRU set): the ``repeatedPrefix`` signal."""

    def __init__(self, capacity: int = 65536) -> None:
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity

    def seen_depth(self, hashes: tuple[int, ...]) -> int:
        """How many leading hashes were seen before; deepest first, so it stops early."""
        for depth in range(len(hashes), 0, -1):
            if hashes[depth - 1] in self._seen:
                return depth
        return 0

    def remember(self, hashes: tuple[int, ...]) -> None:
        for h in hashes:
            self._seen[h] = None
            self._seen.move_to_end(h)
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


def build_context(
    request: ChatRequest,
    memory: PrefixMemory | None = None,
    scorer: Scorer | None = None,
) -> RoutingContext:
    """The request's RoutingContext; scorer fields stay neutral when no scorer is given."""
    view = read_request(request)
    signals = read_signals(request, view)
    hashes = prefix_hashes("", view.utf8)
    seen = 0
    if memory is not None:
        seen = memory.seen_depth(hashes)
        memory.remember(hashes)
    session = request.session
    if scorer is not None:
        scores = scorer.score(view, signals)
        scorer_class, confidence = scores.best, scores.confidence
        complexity, safety_score = scores.complexity, scores.safety
    else:
        scorer_class, confidence, complexity, safety_score = TaskClass.GENERAL, 0.0, 0.0, 0.0
    return RoutingContext(
        prompt_tokens=signals.prompt_tokens,
        code_markers=signals.code_markers,
        structured=signals.structured,
        script=signals.script,
        safety=signals.safety,
        session_hash=stable_hash(session) if session else 0,
        prefix_hashes=hashes,
        prefix_seen_depth=seen,
        complexity=complexity,
        requested_model="" if request.model == "auto" else request.model,
        max_tokens=request.max_tokens or 0,
        scorer_class=scorer_class,
        scorer_confidence=confidence,
        safety_score=safety_score,
    )


class BadContext(ValueError):
    """Raised when a RoutingContext read back from a log or another process holds a value
    the router could never have built; names the field. Not recoverable for that record."""


_CODE_MARKER_MASK = sum(CodeMarker)
_UNIT_FIELDS = ("complexity", "scorer_confidence", "safety_score")
_COUNT_FIELDS = ("prompt_tokens", "prefix_seen_depth", "max_tokens")


def check_context(ctx: RoutingContext) -> None:
    """Range checks the wire types cannot express (msgspec already checks the types)."""
    for name in _COUNT_FIELDS:
        if getattr(ctx, name) < 0:
            raise BadContext(f"{name}: must be >= 0, not {getattr(ctx, name)!r}")
    for name in _UNIT_FIELDS:
        value = getattr(ctx, name)
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise BadContext(f"{name}: must be a probability in [0, 1], not {value!r}")
    if ctx.code_markers & ~_CODE_MARKER_MASK or ctx.code_markers < 0:
        raise BadContext(f"code_markers: {ctx.code_markers!r} has bits outside {_CODE_MARKER_MASK}")
    if not 0 <= ctx.session_hash < 1 << 63:
        raise BadContext(f"session_hash: must be a 63-bit hash, not {ctx.session_hash!r}")
    if len(ctx.prefix_hashes) > MAX_PREFIX_BLOCKS:
        raise BadContext(f"prefix_hashes: {len(ctx.prefix_hashes)} hashes; at most {MAX_PREFIX_BLOCKS}")
    if ctx.prefix_seen_depth > len(ctx.prefix_hashes):
        raise BadContext(f"prefix_seen_depth: {ctx.prefix_seen_depth} is deeper than the "
                         f"{len(ctx.prefix_hashes)} prefix hashes")
