"""Feature extraction: a ChatRequest becomes a compact RoutingContext.

The budget is a few microseconds per request in pure Python, so every step that touches
the prompt's characters is one C-level call, and no Python-level loop runs per word:

1. The conversation is laid out as one str; only its two ends are encoded to UTF-8
   (CPython encodes a str holding any non-ASCII character at ~1 ns a character here, so a
   whole 32 KB prompt would cost ~50 us just to encode).
2. The scan window (the first ``HEAD_BYTES`` and last ``TAIL_BYTES`` of the prompt's
   UTF-8: the ask is usually at the start or the end, and a 32 KB paste must cost no more
   than a short prompt) is lowercased and cut into words by one ``bytes.translate`` +
   ``split``.
3. One ``sum(map(table.get, words))`` reads every lexicon *and* the scorer's word weights
   at once: each word's table entry is an int holding a count lane per lexicon (code
   keywords, the harm lexicon, ...) in its low bits and, when a scorer supplied the
   table, the word's five class weights above them (see ``LexiconLane`` and
   router/scorer.py). The sum is split into lanes by one ``int.to_bytes`` + ``struct``
   unpack. A signal is then a lane count, and the few signals that need word order
   (an ask verb followed by a program noun) look at the words only when their lanes fired.
4. One xxhash pass over the prompt's blocks gives the prefix hashes; the token estimate
   comes from byte counts of the window (no tokenizer).

Steps 2-4 have a C twin, router/_scan.c (built at install when a C compiler is there):
the same counts, sums and hashes with no Python object per word or block. A table sealed
with ``WordTable.seal`` carries the C copy; the Python code stays as the reference and
the fallback, and tests/test_scan.py checks the two agree.

Regexes are avoided on purpose: an alternation costs ~50 ns per character scanned here,
which is the whole budget for a 1 KB prompt.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from collections.abc import Iterable
from itertools import chain, pairwise, repeat
from typing import TYPE_CHECKING, Any, NamedTuple, Union

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

# The optional C twin (router/_scan.c, built by setup.py when a C compiler is there).
# SLM_PURE_PYTHON=1 runs without it: the same decisions, slower (benchmarks compare them).
PURE_PYTHON = os.environ.get("SLM_PURE_PYTHON", "") == "1"
try:
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._scan import ScanTable as _ScanTable
    from router._scan import block_hashes as _native_block_hashes
    from router._scan import context_of as _native_context_of
    from router._scan import read_prompt as _native_read_prompt
    from router._scan import script_census as _native_script_census
    from router._scan import utf8_length as _native_utf8_length
except ImportError:  # no C compiler at install time, or SLM_PURE_PYTHON=1
    _ScanTable = _native_block_hashes = _native_read_prompt = _native_context_of = None
    _native_script_census = _native_utf8_length = None
try:  # the repeatedPrefix memory's C twin (router/_prefix.c), the same way
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._prefix import PrefixMemory as _NativePrefixMemory
except ImportError:
    _NativePrefixMemory = None

# Prompt text is hashed in fixed-size blocks of characters; hashes are chained, so hash i
# names the whole prompt up to the end of block i. 2,048 characters is about 512 tokens of
# English. A block is hashed as its characters at the narrowest fixed width that holds
# them all (Latin-1; else UTF-16-LE; else UTF-32-LE): how CPython would store the block as
# a str of its own, so a function of its characters alone, and for ASCII the same bytes
# as UTF-8. The C twin hashes the prompt's own memory in place, where UTF-8 would need
# an encode of the whole prompt (~1 ns a character for non-ASCII text here).
# Replica choice and the trace replay depend on exactly this scheme: change it only
# together with them.
PREFIX_BLOCK_CHARS = 2048
MAX_PREFIX_BLOCKS = 64

# The scan window, in UTF-8 bytes. Each window word costs ~0.15 µs on this project's
# 2-core box (split, hash, one table lookup that often misses the CPU cache, one add), so
# the window is ~85 words. Out-of-fold macro-F1 on the training rows was the same or
# better at 382 + 126 bytes than at 510 + 254 (0.985 against 0.983) and at 254 + 126.
# A lexicon word has at least two letters, so takes at least three bytes of the window:
# a lexicon lane's count stays under 256 while WINDOW_BYTES < 768.
HEAD_BYTES = 382
TAIL_BYTES = 126
WINDOW_BYTES = HEAD_BYTES + 1 + TAIL_BYTES
# Word bigrams (scorer features) come from the window's first and last words; 8 + 4 did
# as well out of fold as 16 + 8, and without bigrams macro-F1 dropped to 0.980.
BIGRAM_HEAD_WORDS = 8
BIGRAM_TAIL_WORDS = 4

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

# bytes.translate table: ASCII letters lowercased, every digit a "0" (numbers become
# shapes: "0", "00", "0000" for a year, which generalise where 1,000 distinct numbers
# would not; it also lets one C-level count tally the digits), every other ASCII byte a
# space; bytes >= 0x80 (UTF-8 of non-ASCII letters) pass through so words stay whole.
_WORD_BYTES = bytes(
    c + 32 if 65 <= c <= 90 else 48 if 48 <= c <= 57 else c if (97 <= c <= 122 or c >= 128) else 32
    for c in range(256)
)


class CodeMarker(enum.IntFlag):
    FENCE = 1
    STACK_TRACE = 2
    COMPILER_ERROR = 4
    FILE_PATH = 8
    KEYWORDS = 16
    WRITE_CODE_ASK = 32


class LexiconLane(enum.IntEnum):
    """The word lists read in the one pass over the window; each has a count lane."""

    CODE_KEYWORD = 0
    ERROR = 1
    SOURCE_SUFFIX = 2
    JSON = 3
    JSON_ASK = 4
    ASK_VERB = 5
    ASK_OBJECT = 6
    # The safety lexicon, one lane per category, in the order categories are reported.
    SELF_HARM = 7
    WEAPONS = 8
    CYBER = 9
    VIOLENCE = 10
    DRUGS = 11
    FRAUD = 12
    HATE = 13
    SEXUAL = 14
    # Cues for the safety boundary (router/scorer.py turns them into features).
    VIOLENT_VERB = 15  # "kill", "shoot", "crush": harmful or not by what they are aimed at
    PERSON = 16
    FICTION = 17  # games, films, books, sport
    TECH = 18
    PRIVATE_INFO = 19
    MY = 20
    PEST = 21  # animals and plants people get rid of
    FOOD = 22
    THING = 23  # objects and buildings nobody lives in
    ABSTRACT = 24  # "kill the lights", "smash the exam", "eradicate poverty"
    PAST = 25  # history questions
    GROUP = 26  # groups of people by origin, faith, body or status
    CRIME_VERB = 27  # "steal", "hack", "smuggle": harmful aimed at nearly anything


LANE_BITS_LEXICON = 8  # a lexicon lane counts a list's distinct words: under 256 (both bounds below)
LEXICON_LANES = len(LexiconLane)
LEXICON_BITS = LANE_BITS_LEXICON * LEXICON_LANES
if WINDOW_BYTES // 3 + 1 >= 1 << LANE_BITS_LEXICON:
    raise ImportError(f"WINDOW_BYTES {WINDOW_BYTES}: a lexicon lane could count past its {LANE_BITS_LEXICON} bits")

# Words that name a program construct and hardly ever appear in prose. Words that prose
# uses too ("return", "import", "class", "function") are left to the scorer.
_CODE_KEYWORDS = (
    "def elif lambda printf println nullptr struct namespace void func fn kwargs isinstance "
    "ifdef endif iostream cout malloc typedef impl boolean bool"
)
# Exception names and compiler words: any one of them marks a compiler/runtime error. The
# lane also fires on the words of the error texts below, which are then looked for.
_ERROR_WORDS = frozenset(
    "syntaxerror typeerror valueerror nameerror indexerror keyerror attributeerror "
    "importerror modulenotfounderror zerodivisionerror runtimeerror nullpointerexception "
    "segfault stacktrace".split()
)
_ERROR_CUES = "traceback exception error undefined segmentation"
_STACK_TRACE_TEXT = (b"traceback (most recent call last)", b"\n    at ", b"exception in thread")
_ERROR_TEXT = (b"error:", b"error[", b"undefined reference", b"segmentation fault")
# No one-letter suffixes: ".c" and ".h" match abbreviations like "D.C.".
_SOURCE_SUFFIXES = (b".py", b".js", b".ts", b".rs", b".cpp", b".hpp", b".java", b".rb", b".go", b".sh")
_ASK_VERBS = "write implement create develop build generate fix debug refactor complete"
_ASK_OBJECTS = (
    "function functions program script class method code regex query sql python javascript "
    "java typescript rust golang algorithm api snippet"
)
_ASK_WORDS = 24  # the ask verb and its object must sit in the first words of the prompt
_ASK_REACH = 4  # ... and the object within this many words after the verb
_JSON_ASK = "only valid format respond reply return output schema strictly"

# The safety lexicon: which kind of harm a prompt *talks about*. Words alone cannot tell
# "kill a Python process" from "kill a person" (the XSTest contrast set), so the default
# rules send a request to the policy model on the scorer's safety score, which uses these
# words as features among many; the category is a label for logs and custom rules.
_SAFETY_WORDS: dict[LexiconLane, tuple[SafetyCategory, str]] = {
    LexiconLane.SELF_HARM: (SafetyCategory.SELF_HARM, "suicide suicidal selfharm myself overdose"),
    LexiconLane.WEAPONS: (SafetyCategory.WEAPONS,
                          "bomb bombs explosive explosives firearm firearms gun guns weapon weapons "
                          "rifle grenade ammunition detonate detonator"),
    LexiconLane.CYBER: (SafetyCategory.CYBER,
                        "malware ransomware virus keylogger phishing exploit exploits hack hacking "
                        "botnet ddos spyware trojan rootkit"),
    LexiconLane.VIOLENCE: (SafetyCategory.VIOLENCE,
                           "kill killing murder murdering assault poison poisoning kidnap kidnapping "
                           "torture stab strangle shoot shooting massacre assassinate assassination "
                           "attack hostage behead execute"),
    LexiconLane.DRUGS: (SafetyCategory.DRUGS,
                        "meth methamphetamine cocaine coke crack heroin fentanyl lsd marijuana "
                        "marihuana mdma opioids drugs"),
    LexiconLane.FRAUD: (SafetyCategory.FRAUD,
                        "counterfeit launder laundering scam scams fraud steal stealing theft "
                        "identity forge forged embezzle insider"),
    LexiconLane.HATE: (SafetyCategory.HATE,
                       "racist racism genocide supremacy supremacist slur slurs discriminate "
                       "discrimination"),
    LexiconLane.SEXUAL: (SafetyCategory.SEXUAL, "rape pedophilia porn pornography explicit molest"),
}

# Cue lexicons for the safety boundary: general vocabulary (who or what a harm verb is
# aimed at, and the setting it is asked in), not copied from any test prompt.
_CUE_WORDS: dict[LexiconLane, str] = {
    LexiconLane.VIOLENT_VERB: (
        "kill kills killing killed murder murdering shoot shooting stab stabbing strangle choke "
        "poison poisoning drown hang attack attacking assault beat beating hit punch kick hurt "
        "harm harming injure torture abuse rape molest execute eliminate annihilate exterminate "
        "eradicate wipe obliterate destroy destroying crush smash shatter break butcher behead "
        "decapitate dismember slaughter slay massacre bomb bombing blow explode detonate "
        "terminate liquidate overpower tackle suffocate slit slash cut burn arson assassinate "
        "genocide gut chop shoots stabs stabbed strangled strangling choked choking poisoned "
        "drowned drowning attacked assaulted beaten punched punching kicked kicking hurting harmed "
        "injured tortured torturing abused abusing executed executing eliminating exterminating "
        "eradicating destroyed crushed crushing smashed smashing breaking butchered beheaded "
        "slaughtered slaughtering massacred bombed blowing exploded terminating terminated suffocated "
        "slashed cutting burned burning assassinated crack cracking throttle throttling sever "
        "severing snipe sniping maim mutilate bludgeon ambush"),
    LexiconLane.CRIME_VERB: (
        "steal stealing stole rob robbing hack hacking scam defraud launder counterfeit traffic "
        "trafficking smuggle kidnap kidnapping abduct hostage blackmail extort bribe forge stalk "
        "spy poach"),
    LexiconLane.PERSON: (
        "someone somebody person persons people human humans man men woman women girl girls boy "
        "boys child children kid kids baby toddler teen teenager wife husband spouse girlfriend "
        "boyfriend partner ex date neighbour neighbor neighbours neighbors boss coworker colleague "
        "classmate classmates teacher student students friend friends family parents mother "
        "father mom dad brother sister president politician police officer cop stranger victim "
        "population village crowd myself yourself himself herself them soldier soldiers civilian "
        "civilians troops prisoner prisoners groups"),
    LexiconLane.FICTION: (
        "game games minecraft fortnite video film films movie movies show tv series novel novels "
        "story stories book books character characters fictional fiction play scene episode judo "
        "boxing karate wrestling chess tennis football sport sports theatre theater"),
    LexiconLane.TECH: (
        "python process program programs linux windows computer server app browser file files "
        "terminal code script database download downloads internet software system"),
    LexiconLane.PRIVATE_INFO: (
        "address phone email password passwords social security bank account accounts details "
        "records history status birthday birth license passport pin salary earn login credit card "
        "medical criminal"),
    LexiconLane.MY: "my",
    LexiconLane.PEST: (
        "mosquito mosquitoes mosquitos fly flies bug bugs insect insects ant ants cockroach "
        "cockroaches roach roaches rat rats mouse mice termite termites wasp wasps hornet hornets "
        "pest pests vermin weed weeds moth moths flea fleas tick ticks lice bedbug bedbugs slug "
        "slugs snail snails spider spiders aphid aphids mole moles pigeon pigeons germ germs "
        "bacteria mold mould fungus algae"),
    LexiconLane.FOOD: (
        "fish meat chicken beef pork steak lamb turkey salmon tuna shrimp prawns lobster crab onion "
        "onions garlic potato potatoes vegetable vegetables veggies fruit fruits apple apples carrot "
        "carrots tomato tomatoes egg eggs bread dough cake pie pizza sandwich cheese sauce soup "
        "salad pasta rice noodles coconut pumpkin melon watermelon nuts herbs meal meals dinner "
        "lunch breakfast recipe cook cooking kitchen"),
    LexiconLane.THING: (
        "balloon balloons can cans bottle bottles box boxes shed wall walls drywall log logs wood "
        "tree trees stump rock rocks ice glass jar lid piñata pinata beer wine paper cardboard "
        "furniture table chair toy toys ball fence lawn grass brick tile tiles pipe pipes drain "
        "nail nails screw screws knot clay metal plastic stain stains rust photo photos picture "
        "pictures photograph portrait"),
    LexiconLane.ABSTRACT: (
        "time lights light mood silence tension exam exams test tests interview presentation "
        "performance record deadline deals deal price prices cost costs budget spending debt "
        "poverty hunger disease diseases cancer unemployment inequality pollution competition "
        "fear fears anxiety stress habit habits procrastination boredom doubt doubts idea ideas "
        "problem problems issue issues odds expectations goal goals jobs job plan plans project "
        "career business market scene competitor competitors weight employment contract contracts "
        "relationship relationships ties connection membership subscription lease agreement "
        "partnership speed traffic noise"),
    LexiconLane.PAST: (
        "did was were happened history historical during century centuries era ancient medieval "
        "empire regime dynasty revolution war wars"),
    LexiconLane.GROUP: (
        "muslims muslim jews jewish christians christian hindus hindu buddhists buddhist sikhs "
        "atheists immigrants immigrant refugees refugee migrants black blacks white whites asian "
        "asians latino latinos hispanic hispanics arab arabs indigenous native natives roma gypsies "
        "gay gays lesbian lesbians bisexual transgender trans queer lgbt lgbtq nonbinary binary "
        "asexual women men disabled elderly homeless pregnant divorced minorities minority "
        "ethnic religious"),
}


def _lexicon_words() -> dict[LexiconLane, frozenset[bytes]]:
    lists: dict[LexiconLane, str] = {
        LexiconLane.CODE_KEYWORD: _CODE_KEYWORDS,
        LexiconLane.ERROR: " ".join(sorted(_ERROR_WORDS)) + " " + _ERROR_CUES,
        LexiconLane.SOURCE_SUFFIX: " ".join(s[1:].decode() for s in _SOURCE_SUFFIXES),
        LexiconLane.JSON: "json",
        LexiconLane.JSON_ASK: _JSON_ASK,
        LexiconLane.ASK_VERB: _ASK_VERBS,
        LexiconLane.ASK_OBJECT: _ASK_OBJECTS,
        **{lane: words for lane, (_, words) in _SAFETY_WORDS.items()},
        **_CUE_WORDS,
    }
    return {lane: frozenset(w.encode() for w in lists[lane].split()) for lane in LexiconLane}


LEXICON: dict[LexiconLane, frozenset[bytes]] = _lexicon_words()


_log = logging.getLogger("slm.router.context")


class WordTable(dict[Union[bytes, tuple[bytes, bytes]], int]):
    """Word or bigram → packed lanes (see ``lexicon_table`` and router/scorer.py).

    A dict, so the Python pass reads it with ``dict.get``; ``seal`` adds ``native``, the
    C copy router/_scan.c reads (None when the module is not built). Any change after
    sealing drops the C copy, so a stale copy can never be read.
    """

    native: Any = None

    def seal(self) -> WordTable:
        """Build the C copy of the table now that it is complete; returns self."""
        if _ScanTable is None:
            return self
        entries: dict[bytes, tuple[int, tuple[int, ...]]] = {}
        for key, value in self.items():
            lanes = split_lanes(value)
            counts = lanes[:LEXICON_LANES]
            if max(counts, default=0) > 1:  # C keeps one bit a lane: a word is on a list once
                raise ValueError(f"table entry {key!r} counts a lexicon lane more than once")
            mask = sum(1 << lane for lane, count in enumerate(counts) if count)
            text = key if isinstance(key, bytes) else key[0] + b" " + key[1]
            entries[text] = (mask, lanes[LEXICON_LANES:])
        try:
            self.native = _ScanTable(_WORD_BYTES, entries, LEXICON_LANES, CLASS_LANES,
                                     BIGRAM_HEAD_WORDS, BIGRAM_TAIL_WORDS)
        except OverflowError as error:  # weights wider than the C table's 16 bits
            _log.warning("the C twin is off for this table (%s): the context runs in Python", error)
            return self
        self.native.set_markers(*marker_settings())
        self.native.set_signals(*signal_settings())
        self.native.set_blocks(_NATIVE_DIGEST, PREFIX_BLOCK_CHARS, MAX_PREFIX_BLOCKS)
        return self

    def __setitem__(self, key: bytes | tuple[bytes, bytes], value: int) -> None:
        self.native = None
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes | tuple[bytes, bytes]) -> None:
        self.native = None
        super().__delitem__(key)

    def setdefault(self, key: bytes | tuple[bytes, bytes], default: int = 0) -> int:
        self.native = None
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.native = None
        super().update(*args, **kwargs)

    def pop(self, *args: Any) -> Any:
        self.native = None
        return super().pop(*args)

    def popitem(self) -> tuple[bytes | tuple[bytes, bytes], int]:
        self.native = None
        return super().popitem()

    def clear(self) -> None:
        self.native = None
        super().clear()


def lexicon_table() -> WordTable:
    """Word → its lexicon lanes as one int (a 1 in the count lane of every list it is on)."""
    table = WordTable()
    for lane, words in LEXICON.items():
        if len(words) >= 1 << LANE_BITS_LEXICON:  # a lane counts distinct words of its list
            raise ValueError(f"lexicon {lane.name} has {len(words)} words; a lane holds at most 255")
        for word in words:
            if len(word) < 2:  # see WINDOW_BYTES: a lane must not count past 255
                raise ValueError(f"lexicon word {word!r} is shorter than two letters")
            table[word] = table.get(word, 0) + (1 << (LANE_BITS_LEXICON * lane))
    return table


# The table used without a scorer: lexicon lanes only. A scorer's table adds its weights.
LEXICON_TABLE: WordTable = lexicon_table()

# Class lanes of a table's entries (router/scorer.py packs weights into them): signed
# 32-bit, above the lexicon lanes. Adding _BIAS makes every class lane non-negative and
# XOR-ing it back turns each into its 32-bit two's complement, so one to_bytes + one
# struct unpack reads every lane of the sum.
CLASS_LANES = len(TaskClass)
CLASS_LANE_BITS = 32
_BIAS = sum(1 << (LEXICON_BITS + CLASS_LANE_BITS * k + CLASS_LANE_BITS - 1) for k in range(CLASS_LANES))
_LANES = struct.Struct(f"<{LEXICON_LANES}B{CLASS_LANES}i")
_ZEROS = repeat(0)  # an endless default argument for dict.get in map()


def split_lanes(total: int) -> tuple[int, ...]:
    """The lexicon counts, then the class sums, of a sum of table entries."""
    return _LANES.unpack(((total + _BIAS) ^ _BIAS).to_bytes(_LANES.size, "little"))


class TextView(NamedTuple):
    """The prompt as the policy reads it, computed once per request.

    ``lanes`` are the lexicon counts (of distinct words) and then the class sums of the
    window's distinct words and its bigrams, read with the table the view was made with
    (class sums are 0 without a scorer). ``words`` (a property: the C pass makes no word
    objects, and only the rare checks need them) are the window's word tokens in order.
    """

    parts: tuple[str, ...]  # the whole prompt, as strings read as one (prefix hashes cover it)
    chars: int  # characters in the whole prompt
    utf8_bytes: int  # the whole prompt's length in UTF-8 (the token estimate scales by it)
    window: bytes  # the scan window: UTF-8, as in the prompt (not lowercased)
    word_count: int  # words in the window
    text_features: int  # how many word and bigram features the lanes include
    lanes: tuple[int, ...]
    # Byte counts of the window, taken with bytes methods (C loops) for the estimate.
    alnum_bytes: int  # letters and digits (and non-ASCII bytes)
    digit_bytes: int
    space_bytes: int  # spaces and newlines
    # The word facts router.scorer.safety_cues reads, from the C pass for an alarming
    # window of a table set up for them (Scorer): see scorer.cue_facts. None otherwise.
    cue_facts: Any
    # The window's CodeMarker bits (python_code_markers; the C pass computes the same).
    code_markers: int
    # The request-level signals the window alone gives (python_view reads them with
    # estimate_from_counts, window_script and safety_category; the C pass computes the
    # same): the token estimate, the dominant script, the first harm category named,
    # whether it asks a question.
    prompt_tokens: int
    script: Script
    safety: SafetyCategory
    question: bool
    # The whole prompt's chained prefix-block hashes (prefix_hashes; () below one block).
    # The C pass hashes the blocks as it counts the prompt's UTF-8 length, reading its
    # memory once for both; the Python pass joins the parts and calls python_prefix_hashes.
    prefix_hashes: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """The whole prompt as one string (made on each call)."""
        return "".join(self.parts)

    @property
    def words(self) -> list[bytes]:
        """The lowercased words of the window, in order (bytes; a word cut by the
        window's edge may hold part of a UTF-8 character). Made on each call."""
        return self.window.translate(_WORD_BYTES).split()


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
    return "".join(prompt_parts(request))


def prompt_parts(request: ChatRequest) -> tuple[str, ...]:
    """``prompt_text`` as the strings it is made of, not joined: a long prompt is never
    copied (each message's role marker, its text, its end marker)."""
    messages = request.messages
    if len(messages) == 1:  # the common case, without the loop
        m = messages[0]
        return (m.role + "\x1f", m.text(), "\x1e")
    parts: list[str] = []
    for m in messages:
        parts += (m.role + "\x1f", m.text(), "\x1e")
    return tuple(parts)


def utf8_length(text: str) -> int:
    """``len(text.encode("utf-8", "surrogatepass"))``, without encoding when C can count."""
    if text.isascii():
        return len(text)
    if _native_utf8_length is not None:
        return _native_utf8_length(text)  # type: ignore[no-any-return]
    return len(text.encode("utf-8", "surrogatepass"))


def estimate_tokens(text: str) -> int:
    """Tokens a typical SLM tokenizer makes of ``text`` (no tokenizer call)."""
    return read_text(text).prompt_tokens


def estimate_view_tokens(view: TextView) -> int:
    """The token estimate of a view's prompt (the view carries it as ``prompt_tokens``)."""
    return estimate_from_counts(view.chars, view.utf8_bytes, len(view.window), view.word_count,
                                view.alnum_bytes, view.digit_bytes, view.space_bytes)


def estimate_from_counts(chars: int, utf8_bytes: int, size: int, words: int, alnum: int, digits: int,
                         spaces: int) -> int:
    """The token estimate from the prompt's lengths and its window's counts (the reference
    for router/_scan.c's estimate_tokens: the same float operations in the same order)."""
    punct = size - alnum - spaces
    in_window = (TOKENS_PER_ALNUM * alnum + TOKENS_PER_WORD * words
                 + TOKENS_PER_DIGIT * digits + TOKENS_PER_PUNCT * (punct if punct > 0 else 0))
    scale = utf8_bytes / size if size else 0.0
    extra = (utf8_bytes - chars) / EXTRA_BYTES_PER_TOKEN
    # The floor guards windows unlike the rest of the prompt (one 1 KB "word" of padding).
    return max(int(in_window * scale + extra + 0.5), chars // MAX_CHARS_PER_TOKEN, 1)


def read_request(request: ChatRequest, table: dict[bytes | tuple[bytes, bytes], int] = LEXICON_TABLE) -> TextView:
    """The request's TextView; ``table`` is LEXICON_TABLE or a scorer's ``table``."""
    return read_parts(prompt_parts(request), table)


def read_text(text: str, table: dict[bytes | tuple[bytes, bytes], int] = LEXICON_TABLE) -> TextView:
    """The TextView of a prompt given as one string (``prompt_text``)."""
    return read_parts((text,), table)


def read_parts(parts: tuple[str, ...], table: dict[bytes | tuple[bytes, bytes], int] = LEXICON_TABLE) -> TextView:
    """The TextView of a prompt given as strings read as one; the C pass when ``table`` is
    sealed.

    The window is the first HEAD_BYTES and the last TAIL_BYTES of the prompt's UTF-8, cut
    from the encodings of its first and last characters only: n characters encode to at
    least n bytes, so these are the same bytes as the whole encoding's ends.
    """
    native = getattr(table, "native", None)
    if native is not None:  # the whole read in one C call (router/_scan.c read_prompt)
        return _new_tuple(TextView, _native_read_prompt(parts, native, HEAD_BYTES, TAIL_BYTES))
    chars = sum(map(len, parts))
    if len(parts) > 1 and chars < JOIN_BELOW:  # short: one copy costs less than reading parts
        parts = ("".join(parts),)
    if chars > WINDOW_BYTES:  # so its UTF-8 is longer still: a cut window
        if len(parts) == 1:
            text = parts[0]
            raw = (text[:HEAD_BYTES].encode("utf-8", "surrogatepass")[:HEAD_BYTES] + b"\n"
                   + text[-TAIL_BYTES:].encode("utf-8", "surrogatepass")[-TAIL_BYTES:])
            utf8_bytes = utf8_length(text)
        else:
            raw = (_first_chars(parts, HEAD_BYTES).encode("utf-8", "surrogatepass")[:HEAD_BYTES] + b"\n"
                   + _last_chars(parts, TAIL_BYTES).encode("utf-8", "surrogatepass")[-TAIL_BYTES:])
            utf8_bytes = sum(map(utf8_length, parts))
    else:
        raw = "".join(parts).encode("utf-8", "surrogatepass")
        utf8_bytes = len(raw)
        if utf8_bytes > WINDOW_BYTES:
            raw = raw[:HEAD_BYTES] + b"\n" + raw[-TAIL_BYTES:]
    return python_view(parts, chars, utf8_bytes, raw, table)


# Prompts shorter than this (characters) are joined into one string before reading: the
# copy is cheaper than the per-part loops. Longer ones are read in parts, never copied.
JOIN_BELOW = 8192


def _first_chars(parts: tuple[str, ...], n: int) -> str:
    """The first ``n`` characters of ``parts`` read as one string, without joining them all."""
    taken: list[str] = []
    for part in parts:
        taken.append(part[:n])
        n -= len(taken[-1])
        if n <= 0:
            break
    return "".join(taken)


def _last_chars(parts: tuple[str, ...], n: int) -> str:
    """The last ``n`` characters of ``parts`` read as one string (n > 0)."""
    taken: list[str] = []
    for part in reversed(parts):
        taken.append(part[-n:] if n < len(part) else part)
        n -= len(taken[-1])
        if n <= 0:
            break
    return "".join(reversed(taken))


def python_view(parts: tuple[str, ...], chars: int, utf8_bytes: int, raw: bytes,
                table: dict[bytes | tuple[bytes, bytes], int]) -> TextView:
    """``read_parts``' Python pass over the window ``raw`` (the reference for router/_scan.c)."""
    spaced = raw.translate(_WORD_BYTES)
    words = spaced.split()
    # Each distinct word counts once: a passage that repeats itself must not outweigh the
    # ask ("Summarise this: ..." followed by the same sentence forty times).
    distinct = set(words)
    keys: Iterable[bytes | tuple[bytes, bytes]]
    if len(words) > BIGRAM_HEAD_WORDS:
        keys = chain(distinct, pairwise(words[:BIGRAM_HEAD_WORDS]), pairwise(words[-BIGRAM_TAIL_WORDS:]))
        features = len(distinct) + _MOST_BIGRAMS
    else:
        keys = chain(distinct, pairwise(words))
        features = len(distinct) + len(words) - 1 if words else 0
    total = sum(map(table.get, keys, _ZEROS))  # every lexicon and class weight at once
    size = len(raw)
    lanes = _LANES.unpack(((total + _BIAS) ^ _BIAS).to_bytes(_LANES.size, "little"))  # split_lanes
    alnum, digits = size - spaced.count(b" "), spaced.count(b"0")
    spaces = raw.count(b" ") + raw.count(b"\n")
    return _new_tuple(TextView, (  # TextView(...) would add a Python-level call
        parts, chars, utf8_bytes, raw, len(words), features, lanes, alnum, digits, spaces,
        None,  # cue_facts: router.scorer reads the words instead
        python_code_markers(raw, words, lanes),
        estimate_from_counts(chars, utf8_bytes, size, len(words), alnum, digits, spaces),
        window_script(raw, spaces),
        safety_category(lanes),
        b"?" in raw,  # question
        python_prefix_hashes("".join(parts)) if chars >= PREFIX_BLOCK_CHARS else (),
    ))


_MOST_BIGRAMS = BIGRAM_HEAD_WORDS - 1 + BIGRAM_TAIL_WORDS - 1
_new_tuple = tuple.__new__


def bigram_keys(words: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The bigrams a view's lanes include: of the first and of the last words."""
    keys = list(pairwise(words[:BIGRAM_HEAD_WORDS]))
    if len(words) > BIGRAM_HEAD_WORDS:
        keys += pairwise(words[-BIGRAM_TAIL_WORDS:])
    return keys


# Enum members cost ~100 ns an attribute read here (a plain global ~10 ns): the hot path
# reads these copies.
_FENCE, _STACK_TRACE, _COMPILER_ERROR, _FILE_PATH, _KEYWORDS, _WRITE_CODE_ASK = (int(m) for m in CodeMarker)
_ERROR, _SOURCE_SUFFIX, _CODE_KEYWORD = int(LexiconLane.ERROR), int(LexiconLane.SOURCE_SUFFIX), int(LexiconLane.CODE_KEYWORD)
_ASK_VERB, _ASK_OBJECT = int(LexiconLane.ASK_VERB), int(LexiconLane.ASK_OBJECT)
_JSON_LANE, _JSON_ASK_LANE = int(LexiconLane.JSON), int(LexiconLane.JSON_ASK)
_SAFETY_LANES = slice(int(LexiconLane.SELF_HARM), int(LexiconLane.SEXUAL) + 1)
_TOOLS, _RESPONSE_FORMAT, _JSON_TEXT, _NO_STRUCTURE = (
    Structured.TOOLS, Structured.RESPONSE_FORMAT, Structured.JSON_TEXT, Structured.NONE)
_LATIN, _NO_HARM = Script.LATIN, SafetyCategory.NONE
_JSON_FORMATS = frozenset({"json_object", "json_schema"})


def marker_settings() -> tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...],
                                tuple[bytes, ...], tuple[int, ...], tuple[int, ...], int, int]:
    """``ScanTable.set_markers``' arguments: what ``python_code_markers`` looks for.

    (stack-trace texts, error texts, source suffixes, error words, the lanes (error,
    source suffix, code keyword, ask verb, ask object), the marker bits (fence, stack
    trace, compiler error, file path, keywords, code ask), ask words, ask reach)."""
    return (_STACK_TRACE_TEXT, _ERROR_TEXT, _SOURCE_SUFFIXES, tuple(sorted(_ERROR_BYTES)),
            (_ERROR, _SOURCE_SUFFIX, _CODE_KEYWORD, _ASK_VERB, _ASK_OBJECT),
            (_FENCE, _STACK_TRACE, _COMPILER_ERROR, _FILE_PATH, _KEYWORDS, _WRITE_CODE_ASK),
            _ASK_WORDS, _ASK_REACH)


def python_code_markers(window: bytes, words: list[bytes], lanes: tuple[int, ...]) -> int:
    """The window's CodeMarker bits, from its bytes, its words (``TextView.words``) and
    its lexicon lanes; each check that needs more than a lane runs only when its lane
    fired. The reference for router/_scan.c's code_markers (which reads the words'
    lexicon masks instead of the word lists)."""
    markers = _FENCE if b"```" in window else 0
    if lanes[_ERROR]:
        lowered = window.lower()
        if any(marker in lowered for marker in _STACK_TRACE_TEXT):
            markers |= _STACK_TRACE
        if not _ERROR_BYTES.isdisjoint(words) or any(marker in lowered for marker in _ERROR_TEXT):
            markers |= _COMPILER_ERROR
    if lanes[_SOURCE_SUFFIX] and _has_source_path(window.lower()):
        markers |= _FILE_PATH
    if lanes[_CODE_KEYWORD]:
        markers |= _KEYWORDS
    if lanes[_ASK_VERB] and lanes[_ASK_OBJECT] and _has_code_ask(words[:_ASK_WORDS]):
        markers |= _WRITE_CODE_ASK
    return markers


_ERROR_BYTES = frozenset(w.encode() for w in _ERROR_WORDS)


def _has_code_ask(head: list[bytes]) -> bool:
    """An ask verb followed closely by a program noun: "write a python function"."""
    verbs, objects = LEXICON[LexiconLane.ASK_VERB], LEXICON[LexiconLane.ASK_OBJECT]
    for i, word in enumerate(head):
        if word in verbs and not objects.isdisjoint(head[i + 1 : i + 1 + _ASK_REACH]):
            return True
    return False


def _has_source_path(window: bytes) -> bool:
    """A word followed by a source-file suffix, e.g. ``utils/io.py`` or ``main.rs:12``."""
    for suffix in _SOURCE_SUFFIXES:
        at = window.find(suffix)
        while at > 0:
            end = at + len(suffix)
            if window[at - 1 : at].isalnum() and (end == len(window) or not window[end : end + 1].isalnum()):
                return True
            at = window.find(suffix, end)
    return False


# Script detection reads UTF-8 lead bytes: every non-ASCII character has exactly one, and
# for the scripts told apart here the lead byte (with the next byte for two of them) names
# the script. One translate maps each lead byte to its script's code and one count per
# script tallies them: no per-character Python work, and nothing at all for ASCII.
_CONTINUATION = 0x80  # marks continuation bytes 0x80-0xBF in the coded window
_NOT_A_LETTER = 0  # ASCII, punctuation and symbols (U+2000-2FFF, fullwidth forms, emoji)
_LATIN_LEAD = 0x81  # U+0080-036F: Latin-1, Latin Extended, IPA, combining marks
_E0_LEAD, _E1_LEAD = 0x82, 0x83  # need the next byte
_LEAD_SCRIPT: dict[range, int] = {
    range(0xC2, 0xCE): _LATIN_LEAD,
    range(0xCE, 0xD0): Script.GREEK,  # U+0380-03FF
    range(0xD0, 0xD5): Script.CYRILLIC,  # U+0400-053F
    range(0xD5, 0xD6): Script.OTHER,  # Armenian
    range(0xD6, 0xD8): Script.HEBREW,  # U+0580-05FF
    range(0xD8, 0xDC): Script.ARABIC,  # U+0600-06FF
    range(0xDC, 0xE0): Script.OTHER,  # Syriac, Thaana, N'Ko, ...
    range(0xE0, 0xE1): _E0_LEAD,  # U+0800-0FFF: Indic scripts, Thai, ...
    range(0xE1, 0xE2): _E1_LEAD,  # U+1000-1FFF: Georgian, Jamo, Latin and Greek Extended, ...
    range(0xE3, 0xE4): Script.KANA,  # U+3000-3FFF: kana and CJK punctuation
    range(0xE4, 0xEA): Script.CJK,  # U+4000-9FFF
    range(0xEA, 0xEE): Script.HANGUL,  # U+A000-DFFF (syllables from U+AC00)
}
_SCRIPT_CODES = bytes(
    _CONTINUATION if 0x80 <= b < 0xC0
    else next((code for span, code in _LEAD_SCRIPT.items() if b in span), _NOT_A_LETTER)
    for b in range(256)
)
_LETTER_SCRIPTS = (*(s for s in Script if s not in (Script.LATIN, Script.OTHER)), Script.OTHER)
_E0_SCRIPTS = ((Script.DEVANAGARI, (b"\xe0\xa4", b"\xe0\xa5")), (Script.THAI, (b"\xe0\xb8", b"\xe0\xb9")))
_E1_LATIN = (b"\xe1\xb8", b"\xe1\xb9", b"\xe1\xba", b"\xe1\xbb")  # U+1E00-1EFF
_E1_GREEK = (b"\xe1\xbc", b"\xe1\xbd", b"\xe1\xbe", b"\xe1\xbf")  # U+1F00-1FFF


def window_script(window: bytes, space_bytes: int) -> Script:
    """The dominant writing system of ``window``: Latin unless other letters dominate (a
    third or more of its non-space characters). The reference for router/_scan.c's
    window_script."""
    if window.isascii():
        return _LATIN
    counts: tuple[int, ...]
    if _native_script_census is not None:
        counts, continuation = _native_script_census(window, _SCRIPT_CODES, _E0_NEXT, _E1_NEXT, _LETTER_CODES,
                                                     _E0_LEAD, _E1_LEAD)
    else:
        counts, continuation = python_script_census(window)
    characters = len(window) - continuation - space_bytes
    if 3 * sum(counts) < characters:
        return _LATIN
    return _LETTER_SCRIPTS[counts.index(max(counts))]  # the first of the most


def python_script_census(window: bytes) -> tuple[tuple[int, ...], int]:
    """Characters of each of _LETTER_SCRIPTS in ``window``, in that order, and its UTF-8
    continuation bytes (the reference for router/_scan.c's script_census)."""
    coded = window.translate(_SCRIPT_CODES)
    counts = {script: coded.count(script) for script in _LETTER_SCRIPTS}
    e0, e1 = coded.count(_E0_LEAD), coded.count(_E1_LEAD)
    if e0:
        for script, pairs in _E0_SCRIPTS:
            found = sum(map(window.count, pairs))
            counts[script] += found
            e0 -= found
        counts[Script.OTHER] += e0
    if e1:
        greek = sum(map(window.count, _E1_GREEK))
        counts[Script.GREEK] += greek
        counts[Script.OTHER] += e1 - greek - sum(map(window.count, _E1_LATIN))
    return tuple(counts.values()), coded.count(_CONTINUATION)


def _next_byte_codes(default: int, pairs: Iterable[tuple[int, tuple[bytes, ...]]]) -> bytes:
    """For an E0/E1 lead: the code its next byte names (script_census's lookup table)."""
    codes = [default] * 256
    for code, leads in pairs:
        for pair in leads:
            codes[pair[1]] = code
    return bytes(codes)


_E0_NEXT = _next_byte_codes(Script.OTHER, _E0_SCRIPTS)
_E1_NEXT = _next_byte_codes(Script.OTHER, ((Script.GREEK, _E1_GREEK), (_NOT_A_LETTER, _E1_LATIN)))
_LETTER_CODES = bytes(_LETTER_SCRIPTS)


def signal_settings() -> tuple[Any, ...]:
    """``ScanTable.set_signals``' arguments: what ``python_view``'s signals read."""
    return ((TOKENS_PER_ALNUM, TOKENS_PER_WORD, TOKENS_PER_DIGIT, TOKENS_PER_PUNCT, EXTRA_BYTES_PER_TOKEN),
            MAX_CHARS_PER_TOKEN, _SCRIPT_CODES, _E0_NEXT, _E1_NEXT, _LETTER_CODES, _E0_LEAD, _E1_LEAD,
            Script.LATIN, _LETTER_SCRIPTS, tuple(int(lane) for lane in _SAFETY_WORDS),
            (*(category for category, _ in _SAFETY_WORDS.values()), SafetyCategory.NONE))


def safety_category(lanes: tuple[int, ...]) -> SafetyCategory:
    """The first harm category whose words the prompt uses (NONE when it uses none)."""
    if any(lanes[_SAFETY_LANES]):
        for lane, (category, _) in _SAFETY_WORDS.items():
            if lanes[lane]:
                return category
    return _NO_HARM


def read_signals(request: ChatRequest, view: TextView) -> Signals:
    """The request's signals: the view's, and what the request's own fields say."""
    lanes = view.lanes
    if request.tools:
        structured = _TOOLS
    elif request.response_format and request.response_format.get("type") in _JSON_FORMATS:
        structured = _RESPONSE_FORMAT
    elif lanes[_JSON_LANE] and lanes[_JSON_ASK_LANE]:
        structured = _JSON_TEXT
    else:
        structured = _NO_STRUCTURE
    _, _, _, _, _, _, _, _, digits, _, _, markers, tokens, script, safety, question, _ = view  # one unpack
    return _new_tuple(Signals, (tokens, markers, structured, script, safety, question, digits))


def stable_hash(text: str) -> int:
    """A 63-bit hash that is equal on every router (Python's hash() is salted)."""
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass")) >> 1


def prefix_hashes(text: str) -> tuple[int, ...]:
    """Chained hashes at every full block boundary (block i's hash covers blocks 0..i)."""
    return part_hashes((text,))


def part_hashes(parts: tuple[str, ...]) -> tuple[int, ...]:
    """``prefix_hashes`` of ``parts`` read as one string (the C twin never joins them)."""
    if _native_block_hashes is not None:
        return _native_block_hashes(parts, _NATIVE_DIGEST, PREFIX_BLOCK_CHARS, MAX_PREFIX_BLOCKS)  # type: ignore[no-any-return]
    return python_prefix_hashes("".join(parts))


def python_prefix_hashes(text: str) -> tuple[int, ...]:
    """``prefix_hashes`` in Python (the reference for router/_scan.c's block_hashes)."""
    step = PREFIX_BLOCK_CHARS
    hashes: list[int] = []
    h = 0
    for start in range(0, min(len(text), step * MAX_PREFIX_BLOCKS) - step + 1, step):
        block = text[start : start + step]
        try:
            data = block.encode("latin-1")
        except UnicodeEncodeError:
            data = block.encode("utf-16-le", "surrogatepass")
            if len(data) != 2 * len(block):  # a character past U+FFFF took two code units
                data = block.encode("utf-32-le", "surrogatepass")
        h = _DIGEST(data, h)
        hashes.append(h >> 1)
    return tuple(hashes)


_DIGEST = xxhash.xxh3_64_intdigest


def xxh3_address() -> int | None:
    """The address of the C function ``xxhash.xxh3_64_intdigest`` calls, for the C twin
    to call directly: a Python call per block (arguments parsed, a buffer taken, an int
    made) cost ~0.5 us, 8x the hashing of the block itself. None when the xxhash build
    does not export it or it does not give the digest's hashes on test inputs; the C twin
    then calls the digest."""
    try:
        import ctypes
        import importlib
        import random

        library = ctypes.CDLL(importlib.import_module("xxhash._xxhash").__file__)
        for name in ("XXH3_64bits_withSeed_dispatch", "XXH3_64bits_withSeed"):  # the digest's own, then the plain
            function = getattr(library, name, None)
            if function is not None:
                break
        else:
            return None
        function.restype = ctypes.c_uint64
        function.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint64)
        rng = random.Random(2048)
        for length in (0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 2048, 4096, 8192):
            data, seed = rng.randbytes(length), rng.getrandbits(64)
            if function(data, length, seed) != _DIGEST(data, seed):
                return None
        address: int | None = ctypes.cast(function, ctypes.c_void_p).value
        return address
    except (AttributeError, ImportError, OSError, TypeError):
        return None


# What the C twin's block_hashes and read_prompt call: xxhash's C function when found, else the digest.
_NATIVE_DIGEST: Any = (xxh3_address() if _native_block_hashes is not None else None) or _DIGEST

LEXICON_TABLE.seal()  # here, below what sealing hands the C copy: marker_settings(), signal_settings(), _NATIVE_DIGEST


# A generation is split over this many dicts by a hash's low bits. One dict of up to 32k
# hashes grows by doubling, and each doubling copies every entry at once: ~50 us at 5k
# entries and more above, paid by whichever request crossed the size (one long prompt in
# a few hundred). A shard's doublings copy 1/64 of that.
PREFIX_MEMORY_SHARDS = 64
_SHARD_MASK = PREFIX_MEMORY_SHARDS - 1
# The C twin allocates its generations up front, so a capacity has a bound (two arrays
# of 32 GiB at this one); the Python refuses the same capacities, so both take the same.
PREFIX_MEMORY_MAX_CAPACITY = 1 << 32
_HASH_LIMIT = 1 << 63  # a prefix hash is 63 bits (prefix_hashes)
_INTS = repeat(int)  # an endless second argument for isinstance in map()


def _generation() -> tuple[dict[int, None], ...]:
    return tuple({} for _ in range(PREFIX_MEMORY_SHARDS))


def check_prefix_hashes(hashes: tuple[int, ...]) -> None:
    """Raises TypeError or ValueError naming the first hash that is not an int in
    [0, 2**63), before the memory changes: placement records from other routers bring
    hashes from the wire. The same errors, word for word, as router/_prefix.c."""
    if not isinstance(hashes, (tuple, list)):
        raise TypeError(f"prefix hashes must be a tuple or list of ints, not a {type(hashes).__name__}")
    # The common case in three C-level passes (~11k instructions for 16 hashes, a third
    # more on see(): the price of the C's errors in the Python); the loop names the culprit.
    if all(map(isinstance, hashes, _INTS)) and (
            not hashes or (min(hashes) >= 0 and max(hashes) < _HASH_LIMIT)):
        return
    for i, h in enumerate(hashes):
        if not isinstance(h, int):
            raise TypeError(f"prefix hash {i} is a {type(h).__name__}, not an int")
        if not 0 <= h < _HASH_LIMIT:
            raise ValueError(f"prefix hash {i} is {h!r}, outside [0, 2**63)")


class PythonPrefixMemory:
    """Recently seen prefix hashes: the ``repeatedPrefix`` signal (the reference; what
    ``PrefixMemory`` is when router/_prefix.c, its C twin, is not built).

    Two generations of dicts instead of an LRU list: a hash is remembered in the current
    generation; when that holds ``capacity / 2`` hashes it becomes the previous one and
    the one before is dropped. So any hash seen within the last ``capacity / 2`` distinct
    hashes is remembered. Each generation is PREFIX_MEMORY_SHARDS dicts (see there).
    Every method raises TypeError or ValueError for a bad hash (check_prefix_hashes)
    before it changes anything.
    """

    def __init__(self, capacity: int = 65536) -> None:
        if not isinstance(capacity, int):
            raise TypeError(f"capacity is a {type(capacity).__name__}, not an int")
        if capacity > PREFIX_MEMORY_MAX_CAPACITY:
            raise ValueError(f"capacity {capacity!r}: at most 2**32 hashes")
        self._current = _generation()
        self._previous = _generation()
        self._size = 0  # hashes in the current generation
        self._half = max(capacity // 2, 1)

    def seen_depth(self, hashes: tuple[int, ...]) -> int:
        """How many leading hashes were seen before.

        A request's hashes are remembered together, so a deeper hash is only remembered
        with every shallower one: the first miss ends the count.
        """
        check_prefix_hashes(hashes)
        return self._seen_depth(hashes)

    def remember(self, hashes: tuple[int, ...]) -> None:
        """Puts the hashes in the current generation, then rolls over when it is full."""
        check_prefix_hashes(hashes)
        self._remember(hashes)

    def see(self, hashes: tuple[int, ...]) -> int:
        """``seen_depth``, then ``remember``: the context's step (the hashes checked once)."""
        check_prefix_hashes(hashes)
        depth = self._seen_depth(hashes)
        self._remember(hashes)
        return depth

    def generations(self) -> tuple[frozenset[int], frozenset[int]]:
        """The hashes the current and the previous generation hold (for tests)."""
        return (frozenset(chain.from_iterable(self._current)),
                frozenset(chain.from_iterable(self._previous)))

    def _seen_depth(self, hashes: tuple[int, ...]) -> int:
        current, previous = self._current, self._previous
        depth = 0
        for h in hashes:
            shard = h & _SHARD_MASK
            if h not in current[shard] and h not in previous[shard]:
                break
            depth += 1
        return depth

    def _remember(self, hashes: tuple[int, ...]) -> None:
        if not hashes:  # no roll-over check either (router/_prefix.c does the same)
            return
        current = self._current
        for h in hashes:
            shard = current[h & _SHARD_MASK]
            if h not in shard:
                shard[h] = None
                self._size += 1
        self._roll_over()

    def _roll_over(self) -> None:
        if self._size >= self._half:
            self._previous, self._current, self._size = self._current, _generation(), 0


# What the router uses: the C twin when built (the same answers, tests/test_prefix_memory.py
# compares them; a tenth of the instructions for a long prompt's 16 hashes, ~1 us where
# the dicts took ~5), else the reference above. mypy reads the reference's signatures.
if TYPE_CHECKING or _NativePrefixMemory is None:
    PrefixMemory = PythonPrefixMemory
else:
    PrefixMemory = _NativePrefixMemory


_GENERAL = TaskClass.GENERAL


# What router/_scan.c's context_of reads build_context's constants from, in its order.
_CONTEXT_SETTINGS = (RoutingContext, _TOOLS, _RESPONSE_FORMAT, _JSON_TEXT, _NO_STRUCTURE, _JSON_FORMATS,
                     _JSON_LANE, _JSON_ASK_LANE, tuple(TaskClass), int(TaskClass.REASONING),
                     int(TaskClass.SAFETY), HEAD_BYTES, TAIL_BYTES)


def build_context(
    request: ChatRequest,
    memory: PrefixMemory | None = None,
    scorer: Scorer | None = None,
) -> RoutingContext:
    """The request's RoutingContext; scorer fields stay neutral when no scorer is given.

    With a scorer and the C twin, the whole of it is one C call (router/_scan.c's
    context_of: ~15k instructions of Python between the C steps were a third of a short
    prompt's context); ``python_build_context`` is the reference it must equal.
    """
    if scorer is not None and _native_context_of is not None:
        model, table = scorer.class_model, scorer.table.native
        if model is not None and table is not None:
            return _native_context_of(request, table, model, memory, _CONTEXT_SETTINGS)  # type: ignore[no-any-return]
    return python_build_context(request, memory, scorer)


def python_build_context(
    request: ChatRequest,
    memory: PrefixMemory | None = None,
    scorer: Scorer | None = None,
) -> RoutingContext:
    """``build_context`` in Python around the C read (the reference for context_of)."""
    view = read_request(request, LEXICON_TABLE if scorer is None else scorer.table)
    signals = read_signals(request, view)
    hashes = view.prefix_hashes
    seen = 0
    if memory is not None and hashes:
        seen = memory.see(hashes)
    session = request.session
    if scorer is not None:
        scores = scorer.score(view, signals)
        scorer_class, confidence = scores.best, scores.confidence
        complexity, safety_score = scores.complexity, scores.safety
    else:
        scorer_class, confidence, complexity, safety_score = _GENERAL, 0.0, 0.0, 0.0
    return RoutingContext(  # positional, in field order: keywords cost ~50 ns each here
        signals.prompt_tokens,
        signals.code_markers,
        signals.structured,
        signals.script,
        signals.safety,
        stable_hash(session) if session else 0,  # session_hash
        hashes,  # prefix_hashes
        seen,  # prefix_seen_depth
        complexity,
        "" if request.model == "auto" else request.model,  # requested_model
        request.max_tokens or 0,  # max_tokens
        scorer_class,
        confidence,  # scorer_confidence
        safety_score,
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
