"""Feature extraction: a ChatRequest becomes a compact RoutingContext.

Pure and cheap: a few regex scans over a bounded window of the prompt, one xxhash pass
for the prefix hashes, no tokenizer and no model call.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict

import xxhash

from subjects.messages import (
    ChatRequest,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
)

# Prompt text is hashed in fixed-size blocks; hashes are chained, so hash i names the
# whole prompt up to the end of block i. 2,048 characters is about 512 tokens of English.
PREFIX_BLOCK_CHARS = 2048
MAX_PREFIX_BLOCKS = 64
# Pattern scans look at the start and the end of long prompts only: the ask is usually
# at one end, and the cost must not grow with a 32 KB paste.
SCAN_WINDOW_CHARS = 1024
CHARS_PER_TOKEN = 4.0


class CodeMarker(enum.IntFlag):
    FENCE = 1
    STACK_TRACE = 2
    COMPILER_ERROR = 4
    FILE_PATH = 8
    KEYWORDS = 16
    WRITE_CODE_ASK = 32


_CODE_PATTERNS: tuple[tuple[CodeMarker, re.Pattern[str]], ...] = (
    (CodeMarker.FENCE, re.compile(r"```")),
    (CodeMarker.STACK_TRACE, re.compile(r"Traceback \(most recent call last\)|^\s+at [\w.$]+\(", re.M)),
    (CodeMarker.COMPILER_ERROR, re.compile(r"\b(?:error|warning)(?:\[\w+\])?: |\bSyntaxError\b|\bTypeError\b|undefined reference")),
    (CodeMarker.FILE_PATH, re.compile(r"\b[\w./-]+\.(?:py|js|ts|go|rs|java|cpp|c|h|rb|sh)\b")),
    (CodeMarker.KEYWORDS, re.compile(r"\b(?:def|class|import|return|function|const|fn|public static|#include)\b")),
    (CodeMarker.WRITE_CODE_ASK, re.compile(r"\b(?:write|implement|create|fix|debug)\b.{0,40}\b(?:function|program|script|class|method|code|regex|query)\b", re.I)),
)
_JSON_ONLY = re.compile(r"\b(?:json only|only json|respond in json|return json|as json|in json format|valid json)\b", re.I)

_SAFETY_PATTERNS: tuple[tuple[SafetyCategory, re.Pattern[str]], ...] = (
    (SafetyCategory.WEAPONS, re.compile(r"\b(?:bomb|explosive|firearm|weapon|gun)s?\b", re.I)),
    (SafetyCategory.CYBER, re.compile(r"\b(?:malware|ransomware|hack into|exploit|keylogger|phishing)\b", re.I)),
    (SafetyCategory.SELF_HARM, re.compile(r"\b(?:suicide|self-harm|kill myself)\b", re.I)),
    (SafetyCategory.VIOLENCE, re.compile(r"\b(?:murder|assault|poison|kidnap)\b", re.I)),
    (SafetyCategory.DRUGS, re.compile(r"\b(?:meth|cocaine|heroin|fentanyl)\b", re.I)),
    (SafetyCategory.FRAUD, re.compile(r"\b(?:counterfeit|launder|scam|steal)\w*\b", re.I)),
    (SafetyCategory.HATE, re.compile(r"\b(?:racist|genocide|ethnic cleansing)\b", re.I)),
)

# (first code point, last code point, script); checked in order on a sample of characters.
_SCRIPT_RANGES: tuple[tuple[int, int, Script], ...] = (
    (0x0400, 0x04FF, Script.CYRILLIC),
    (0x0370, 0x03FF, Script.GREEK),
    (0x0590, 0x05FF, Script.HEBREW),
    (0x0600, 0x06FF, Script.ARABIC),
    (0x0900, 0x097F, Script.DEVANAGARI),
    (0x0E00, 0x0E7F, Script.THAI),
    (0x3040, 0x30FF, Script.KANA),
    (0x4E00, 0x9FFF, Script.CJK),
    (0xAC00, 0xD7AF, Script.HANGUL),
)


def prompt_text(request: ChatRequest) -> str:
    """The conversation as one string, in the order a chat template would lay it out."""
    return "".join(f"{m.role}\x1f{m.text()}\x1e" for m in request.messages)


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN) + 1


def scan_window(text: str) -> str:
    if len(text) <= 2 * SCAN_WINDOW_CHARS:
        return text
    return text[:SCAN_WINDOW_CHARS] + "\n" + text[-SCAN_WINDOW_CHARS:]


def code_markers(window: str) -> int:
    markers = 0
    for marker, pattern in _CODE_PATTERNS:
        if pattern.search(window):
            markers |= marker
    return markers


def structured_kind(request: ChatRequest, window: str) -> Structured:
    if request.tools:
        return Structured.TOOLS
    if request.response_format and request.response_format.get("type") in ("json_object", "json_schema"):
        return Structured.RESPONSE_FORMAT
    if _JSON_ONLY.search(window):
        return Structured.JSON_TEXT
    return Structured.NONE


def detect_script(window: str, sample: int = 256) -> Script:
    counts: dict[Script, int] = {}
    letters = 0
    for ch in window[:sample]:
        code = ord(ch)
        if code < 0x0370:
            if ch.isalpha():
                letters += 1
            continue
        for low, high, script in _SCRIPT_RANGES:
            if low <= code <= high:
                counts[script] = counts.get(script, 0) + 1
                break
    if not counts:
        return Script.LATIN
    best, n = max(counts.items(), key=lambda kv: kv[1])
    return best if n >= letters else Script.LATIN


def safety_category(window: str) -> SafetyCategory:
    for category, pattern in _SAFETY_PATTERNS:
        if pattern.search(window):
            return category
    return SafetyCategory.NONE


def stable_hash(text: str) -> int:
    """A 63-bit hash that is equal on every router (Python's hash() is salted)."""
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass")) >> 1


def prefix_hashes(text: str) -> tuple[int, ...]:
    """Chained hashes at every full block boundary, and one for the whole prompt."""
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
    complexity: float = 0.0,
) -> RoutingContext:
    text = prompt_text(request)
    window = scan_window(text)
    hashes = prefix_hashes(text)
    session = request.session
    seen = 0
    if memory is not None:
        seen = memory.seen_depth(hashes)
        memory.remember(hashes)
    return RoutingContext(
        prompt_tokens=estimate_tokens(text),
        code_markers=code_markers(window),
        structured=structured_kind(request, window),
        script=detect_script(window),
        safety=safety_category(window),
        session_hash=stable_hash(session) if session else 0,
        prefix_hashes=hashes,
        prefix_seen_depth=seen,
        complexity=complexity,
        requested_model="" if request.model == "auto" else request.model,
        max_tokens=request.max_tokens or 0,
    )
