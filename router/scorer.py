"""The task-class scorer: a linear model over sparse features, trained offline.

Features (``text_keys`` and ``signal_keys``) are the scan window's distinct words, word bigrams at the start and the end of the window, and ``#``-prefixed signal
features (token-count bucket, code markers, structured output, script, the safety
lexicon, and cues for the safety boundary such as what a harm verb is aimed at). ``#``
never survives tokenisation, so signal keys cannot collide with words. Word and bigram
features are scaled by 1/sqrt(n) (n = how many there are), signal features count 1.

Inference is a sparse dot product done in C loops. Each word's five class weights are
quantised to integers and packed into one Python int (one 32-bit lane per class) above
the word's lexicon lanes (router/context.py), so the context's one
``sum(map(table.get, words))`` adds all five classes *and* counts every lexicon at once;
the sum is split into lanes by one ``struct`` unpack. Signal features are summed the
same way from their own table. Features are looked up by the words themselves (CPython
caches a bytes object's hash): a stable hash function per n-gram would cost more than
the lookup, and an n-gram never seen in training carries no weight either way.
"""

from __future__ import annotations

import functools
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable
from functools import reduce
from importlib import resources
from itertools import compress, repeat
from math import exp, sqrt
from operator import itemgetter, or_
from pathlib import Path
from typing import Any, NamedTuple, Union

import msgspec

from router.context import (
    BIGRAM_HEAD_WORDS,
    BIGRAM_TAIL_WORDS,
    CLASS_LANE_BITS,
    LEXICON,
    LEXICON_BITS,
    LEXICON_LANES,
    LEXICON_TABLE,
    PURE_PYTHON,
    LexiconLane,
    Signals,
    TextView,
    WordTable,
    bigram_keys,
)
from subjects.messages import SafetyCategory, Script, Structured, TaskClass

try:  # the optional C twin of the last step (router/_scan.c; see router.context.PURE_PYTHON)
    if PURE_PYTHON:
        raise ImportError("SLM_PURE_PYTHON=1")
    from router._scan import ClassModel as _ClassModel
    from router._scan import class_scores as _class_scores
except ImportError:  # no C compiler at install time, or SLM_PURE_PYTHON=1
    _ClassModel = _class_scores = None

FORMAT_VERSION = 2  # 2: words are read from the UTF-8 window; signal cues from lexicon lanes
CLASSES: tuple[TaskClass, ...] = tuple(TaskClass)  # lane order = TaskClass values
# Quantised weight = round(weight * WEIGHT_SCALE), clipped to +-MAX_WEIGHT, so a class
# lane's sum over the most features a request can have (the window's words, its bigrams
# and the signals: under 512) stays inside a signed 32-bit lane.
WEIGHT_SCALE = 4096
MAX_WEIGHT = (1 << (CLASS_LANE_BITS - 1)) // 512 - 1
DEFAULT_MODEL = "scorer.msgpack.z"  # in router/data/

Key = Union[bytes, tuple[bytes, bytes], str]  # a word, a bigram, or a "#signal"

_ZEROS = repeat(0)  # an endless default argument for dict.get in map()
_SPELLINGS = ((b"ize", b"ise"), (b"yze", b"yse"), (b"ization", b"isation"), (b"ior", b"iour"))
_CLASS_LANES = struct.Struct(f"<{len(CLASSES)}i")
_CLASS_BIAS = sum(1 << (CLASS_LANE_BITS * k + CLASS_LANE_BITS - 1) for k in range(len(CLASSES)))


class ScorerError(ValueError):
    """Raised when a scorer model file cannot be read or does not fit this code; the
    router refuses to start with it (not recoverable without another file)."""


class ScorerFile(msgspec.Struct, frozen=True):
    """The shipped model file (msgpack, zlib-compressed)."""

    format: int
    classes: list[str]
    scale: int
    bias: list[int]
    keys: list[str]  # words, "a b" bigrams, "#signal" features (words: UTF-8, surrogateescape)
    weights: bytes  # int32 little-endian, len(keys) * len(classes), row-major
    thresholds: dict[str, float]  # "safety", "complexity": calibrated by train-scorer
    bigram_head: int = BIGRAM_HEAD_WORDS
    bigram_tail: int = BIGRAM_TAIL_WORDS
    meta: dict[str, Any] = {}


class Scores(NamedTuple):
    best: TaskClass
    confidence: float  # probability of ``best``
    complexity: float  # probability of REASONING
    safety: float  # probability of SAFETY
    probabilities: tuple[float, ...]  # in TaskClass order


def text_keys(view: TextView) -> list[Key]:
    """The scorer's text features: the window's distinct words, then its bigrams."""
    return [*set(view.words), *bigram_keys(view.words)]


# ---- signal features ----------------------------------------------------------------

_TOKENS_KEYS = tuple(f"#tok{i}" for i in range(17))
_STRUCT_KEYS = tuple(f"#struct{int(s)}" for s in Structured)
_SCRIPT_KEYS = tuple(f"#script{int(s)}" for s in Script)
_SAFETY_KEYS = tuple(f"#safety{int(s)}" for s in SafetyCategory)
_DIGITS_KEYS = tuple(f"#digits{i}" for i in range(6))
_CODE_KEYS = tuple(tuple(f"#code{1 << b}" for b in range(6) if m & (1 << b)) for m in range(64))

_DEFINITION_STARTS = frozenset({(b"what", b"is"), (b"what", b"are"), (b"what", b"does"), (b"what", b"was"),
                                (b"what", b"were"), (b"what", b"constitutes"), (b"what", b"kind")})
_CUE_WORDS = 60  # a harm verb's object is looked for in the first words only (short asks)
_TARGET_REACH = 4  # ... within this many words after the verb
# What a harm verb can be aimed at, and the settings that make alarming words harmless.
_TARGET_LANES = (LexiconLane.PERSON, LexiconLane.TECH, LexiconLane.PEST, LexiconLane.FOOD,
                 LexiconLane.THING, LexiconLane.ABSTRACT, LexiconLane.FICTION)
_TARGETS: tuple[tuple[str, frozenset[bytes]], ...] = tuple((lane.name.lower(), LEXICON[lane]) for lane in _TARGET_LANES)
_SETTINGS: tuple[tuple[str, int], ...] = tuple(
    (lane.name.lower(), int(lane)) for lane in (
        LexiconLane.PERSON, LexiconLane.FICTION, LexiconLane.TECH, LexiconLane.PEST, LexiconLane.FOOD,
        LexiconLane.THING, LexiconLane.ABSTRACT, LexiconLane.PAST))
_SAFETY_LANES = slice(LexiconLane.SELF_HARM, LexiconLane.SEXUAL + 1)


def signal_keys(view: TextView, signals: Signals) -> list[str]:
    """The context's numeric signals as binary features, plus the safety cues."""
    keys = [
        _TOKENS_KEYS[min(signals.prompt_tokens.bit_length(), 16)],
        _STRUCT_KEYS[signals.structured],
        _SCRIPT_KEYS[signals.script],
        _SAFETY_KEYS[signals.safety],
        _DIGITS_KEYS[min(signals.digits, 16).bit_length()],
        *_CODE_KEYS[signals.code_markers & 63],
    ]
    if signals.question:
        keys.append("#question")
    if alarming(view.lanes):
        keys += safety_cues(view)
    return keys


_VIOLENT, _CRIME = int(LexiconLane.VIOLENT_VERB), int(LexiconLane.CRIME_VERB)
_GROUP, _PRIVATE = int(LexiconLane.GROUP), int(LexiconLane.PRIVATE_INFO)


def alarming(lanes: tuple[int, ...]) -> bool:
    """Does the prompt use a word that ``safety_cues`` reads (most prompts do not)?"""
    return bool(lanes[_VIOLENT] or lanes[_CRIME] or lanes[_GROUP] or lanes[_PRIVATE] or any(lanes[_SAFETY_LANES]))


def safety_cues(view: TextView) -> list[str]:
    """Features that tell a harmful ask from a harmless one that uses alarming words.

    A linear model over words cannot express "a violent verb *aimed at a person*" or "a
    harm word in a definition question", so these conjunctions are given to it: what each
    violent or criminal verb is aimed at (the words just after it: a person, a program, a
    pest, food, a thing, an abstraction, a game or film; "none" when none of these), the
    settings an alarming prompt names (fiction, history, ...), a definition question, a
    group of people and how the question about it opens ("why should" against "why
    can"), and private details asked about "my" someone.

    router/_scan.c's cue_sums adds up these keys' weights from the cue facts without
    building them (Scorer._cue_weights): a new key here needs its weight there too, or
    tests/test_scan.py's C-against-Python scores fail.
    """
    lanes = view.lanes
    facts = view.cue_facts
    if facts is None:  # no C pass: read them from the words
        facts = cue_facts(view.words, lanes)
    violent, crime, first, second, people = facts
    keys: list[str] = []
    if lanes[_VIOLENT]:
        keys.append("#violent")
        keys += _VIOLENT_KEYS[violent]
    if lanes[_CRIME]:
        keys.append("#crime")
        keys += _CRIME_KEYS[crime]
    definition = second is not None and (first, second) in _DEFINITION_STARTS  # words[0]: the role
    if keys or any(lanes[_SAFETY_LANES]):
        keys += compress(_SETTING_KEYS, _setting_counts(lanes))
        if definition:
            keys.append("#alarm+definition")
    if definition:
        keys.append("#definition")
    if lanes[_GROUP] or lanes[_PRIVATE]:
        opening_words = b"" if first is None else first if second is None else first + b" " + second
        opening = "@" + opening_words.decode("utf-8", "surrogateescape")  # words 1 and 2: after the role
        if lanes[_GROUP]:
            keys += ("#group", "#group" + opening, "#group>" + ("people" if people else "other"))
        if lanes[_PRIVATE]:
            private = "#private+my" if lanes[_MY] else "#private"
            keys += (private, private + opening)
    return keys


CueFacts = tuple[int, int, Union[bytes, None], Union[bytes, None], bool]


def cue_facts(words: list[bytes], lanes: tuple[int, ...]) -> CueFacts:
    """What ``safety_cues`` reads from the words: each verb lane's targets (0 when the
    lane is not in the window), words 1 and 2 (None past the end), whether a group word
    names people (False when there is none). router/_scan.c computes the same from the
    words' lexicon masks (ScanTable.set_cues); tests/test_scan.py checks they agree."""
    head = words[:_CUE_WORDS]
    return (harm_targets(head, _VIOLENT_WORDS) if lanes[_VIOLENT] else 0,
            harm_targets(head, _CRIME_WORDS) if lanes[_CRIME] else 0,
            words[1] if len(words) > 1 else None,
            words[2] if len(words) > 2 else None,
            lanes[_GROUP] > 0 and group_target(words) == "people")


# Target lists as bits: a word's bits say which lists it is on.
_TARGET_BITS: dict[bytes, int] = {}
for _bit, (_, _targets) in enumerate(_TARGETS):
    for _word in _targets:
        _TARGET_BITS[_word] = _TARGET_BITS.get(_word, 0) | (1 << _bit)
_NO_TARGET = 1 << len(_TARGETS)  # "none"
_TARGET_NAMES = (*(name for name, _ in _TARGETS), "none")
_SETTING_KEYS = tuple("#alarm+" + name for name, _ in _SETTINGS)
_setting_counts = itemgetter(*(lane for _, lane in _SETTINGS))
_MY = int(LexiconLane.MY)


def harm_targets(words: list[bytes], verbs: frozenset[bytes]) -> int:
    """What each of ``verbs`` in ``words`` is aimed at, as bits of the target lists (and
    "none") named in the few words after each: see ``target_names``."""
    found = 0
    bits = _TARGET_BITS.get
    for verb in verbs.intersection(words):  # C-level: no Python work per word
        at = -1
        for _ in range(words.count(verb)):  # no ValueError to end on: raising one costs ~1 us
            at = words.index(verb, at + 1)
            hit = reduce(or_, map(bits, words[at + 1 : at + 1 + _TARGET_REACH], _ZEROS), 0)
            found |= hit or _NO_TARGET
    return found


_GROUPS = LEXICON[LexiconLane.GROUP]
_PEOPLE = LEXICON[LexiconLane.PERSON]


def group_target(words: list[bytes]) -> str:
    """"people" when a group word names people ("Muslims", "Asian people", "gay men"),
    "other" when it only describes something else ("Asian pears", "white clouds")."""
    for i, word in enumerate(words[:_CUE_WORDS]):
        if word in _GROUPS and (word in _PEOPLE or word.endswith(b"s") or words[i + 1 : i + 2] == []
                                or not _PEOPLE.isdisjoint(words[i + 1 : i + 3])):
            return "people"
    return "other"


def target_names(found: int) -> list[str]:
    return [name for bit, name in enumerate(_TARGET_NAMES) if found >> bit & 1]


def _target_keys(prefix: str) -> tuple[tuple[str, ...], ...]:
    """``prefix>target`` keys for every bit set of ``harm_targets``, precomputed."""
    return tuple(tuple(f"{prefix}>{name}" for name in target_names(found)) for found in range(2 * _NO_TARGET))


_VIOLENT_WORDS, _CRIME_WORDS = LEXICON[LexiconLane.VIOLENT_VERB], LEXICON[LexiconLane.CRIME_VERB]
_VIOLENT_KEYS, _CRIME_KEYS = _target_keys("#violent"), _target_keys("#crime")


def cue_settings() -> tuple[int, int, int, tuple[int, ...], int, int, int, int]:
    """``ScanTable.set_cues``'s arguments: the lanes that make a window alarming (as
    ``alarming`` reads them), the verb, target, group and person lanes, and the reach."""
    lanes = (_VIOLENT, _CRIME, _GROUP, _PRIVATE, *range(_SAFETY_LANES.start, _SAFETY_LANES.stop))
    mask = sum(1 << lane for lane in set(lanes))
    targets = tuple(int(lane) for lane in _TARGET_LANES)
    return (mask, _VIOLENT, _CRIME, targets, _GROUP, int(LexiconLane.PERSON), _CUE_WORDS, _TARGET_REACH)


# ---- keys in the model file -----------------------------------------------------------


def encode_key(key: Key) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "surrogateescape")
    return f"{key[0].decode('utf-8', 'surrogateescape')} {key[1].decode('utf-8', 'surrogateescape')}"


def decode_key(key: str) -> Key:
    if key.startswith("#"):
        return key
    if " " in key:
        first, second = key.split(" ", 1)
        return (first.encode("utf-8", "surrogateescape"), second.encode("utf-8", "surrogateescape"))
    return key.encode("utf-8", "surrogateescape")


def pack(weights: Iterable[int]) -> int:
    """One feature's class weights (signed ints) as one int, a 32-bit lane each."""
    total = 0
    for lane, w in enumerate(weights):
        total += w << (CLASS_LANE_BITS * lane)
    return total


def unpack(total: int, lanes: int = len(CLASSES)) -> tuple[int, ...]:
    """Inverse of ``pack`` for a sum of packed values (each lane's sum must fit)."""
    if lanes != len(CLASSES):
        raise ValueError(f"lanes: a packed sum has {len(CLASSES)} class lanes")
    return _CLASS_LANES.unpack(((total + _CLASS_BIAS) ^ _CLASS_BIAS).to_bytes(_CLASS_LANES.size, "little"))


class Scorer:
    """Scores a request's features into class probabilities. Immutable after load.

    ``table`` is the lookup table the context reads a request's words with (its lexicon
    lanes plus this model's word and bigram weights); ``score`` reads the class sums from
    a view made with it.
    """

    def __init__(self, model: ScorerFile) -> None:
        if model.format != FORMAT_VERSION:
            raise ScorerError(f"scorer file format {model.format}; this router reads {FORMAT_VERSION}")
        if model.classes != [c.name for c in CLASSES]:
            raise ScorerError(f"scorer classes {model.classes} do not match {[c.name for c in CLASSES]}")
        if (model.bigram_head, model.bigram_tail) != (BIGRAM_HEAD_WORDS, BIGRAM_TAIL_WORDS):
            raise ScorerError(f"scorer bigrams of {model.bigram_head}/{model.bigram_tail} words; "
                              f"this router reads {BIGRAM_HEAD_WORDS}/{BIGRAM_TAIL_WORDS}")
        n = len(CLASSES)
        weights = array("i")
        weights.frombytes(model.weights)
        if sys.byteorder == "big":  # the file is little-endian
            weights.byteswap()
        if len(weights) != len(model.keys) * n:
            raise ScorerError(f"scorer has {len(weights)} weights for {len(model.keys)} keys x {n} classes")
        self.model = model
        self.thresholds = dict(model.thresholds)
        self._scale = float(model.scale)
        self._bias = [b / self._scale for b in model.bias]
        self.table = WordTable(LEXICON_TABLE)
        self._signals: dict[str, int] = {}
        for i, text in enumerate(model.keys):
            key = decode_key(text)
            packed = pack(weights[i * n : (i + 1) * n])
            if isinstance(key, str):
                self._signals[key] = packed
            else:
                self.table[key] = self.table.get(key, 0) + (packed << LEXICON_BITS)
        self._features = len(model.keys)
        self._add_british_spellings()
        self.table.seal()  # complete: build the C pass's copy
        if self.table.native is not None:  # ... which then reads the safety cues' word facts too
            self.table.native.set_cues(*cue_settings())
        self._inv_scale = 1.0 / self._scale
        self._signal_tables()
        self.class_model: Any = None  # the C twin of score's arithmetic (router/_scan.c ClassModel), when built
        if _ClassModel is not None:
            groups = (self._by_tokens, self._by_struct, self._by_script, self._by_safety,
                      self._by_digits, self._by_code)  # class_scores reads them in this order
            self.class_model = _ClassModel(self._bias, self._inv_scale, LEXICON_LANES,
                                             [[unpack(p) for p in group] for group in groups], unpack(self._question))
            self.class_model.set_cues(*self._cue_weights())

    def _cue_weights(self) -> tuple[Any, ...]:
        """``ClassModel.set_cues``' arguments: the weight of every key ``safety_cues`` can
        name, by what names it (a lane, a target bit, a setting, a question's opening), so
        the C twin sums the cues from the scan's cue facts without building the keys."""
        get = self._signals.get

        def weights(key: str) -> tuple[int, ...]:
            return unpack(get(key, 0))

        def openings(prefix: str) -> dict[bytes, tuple[int, ...]]:
            # The opening's words are bytes in the scan; a key holds them decoded with
            # surrogateescape, which encodes back to the same bytes.
            return {key[len(prefix):].encode("utf-8", "surrogateescape"): unpack(packed)
                    for key, packed in self._signals.items() if key.startswith(prefix)}

        return (
            (_VIOLENT, _CRIME, _GROUP, _PRIVATE, _MY),
            tuple(range(_SAFETY_LANES.start, _SAFETY_LANES.stop)),
            tuple(lane for _, lane in _SETTINGS),
            (weights("#violent"), [weights(f"#violent>{name}") for name in _TARGET_NAMES]),
            (weights("#crime"), [weights(f"#crime>{name}") for name in _TARGET_NAMES]),
            [weights(key) for key in _SETTING_KEYS],
            [weights(key) for key in ("#alarm+definition", "#definition", "#group", "#group>people",
                                      "#group>other", "#private", "#private+my")],
            frozenset(first + b" " + second for first, second in _DEFINITION_STARTS),
            openings("#group@"), openings("#private@"), openings("#private+my@"),
        )

    def _add_british_spellings(self) -> None:
        """Give "summarise" the weights of "summarize": dev.jsonl is spelled the American
        way, and a British ask must not read as an unknown word."""
        for key in list(self.table):
            if isinstance(key, bytes) and key not in LEXICON_TABLE:
                for american, british in _SPELLINGS:
                    if american in key:
                        self.table.setdefault(key.replace(american, british), self.table[key])

    @classmethod
    def load(cls, path: Path | str | None = None) -> Scorer:
        """Load a model file; ``None`` loads the one shipped in router/data/."""
        where = f"router/data/{DEFAULT_MODEL}" if path is None else str(path)
        try:
            if path is None:
                blob = resources.files("router").joinpath("data", DEFAULT_MODEL).read_bytes()
            else:
                blob = Path(path).read_bytes()
            return cls(msgspec.msgpack.decode(zlib.decompress(blob), type=ScorerFile))
        except (OSError, zlib.error, msgspec.DecodeError) as exc:
            raise ScorerError(f"cannot read scorer model {where}: {exc}") from exc

    def __len__(self) -> int:
        return self._features

    def _signal_tables(self) -> None:
        """Each base signal's packed weights by value, so ``signal_sum`` indexes lists
        instead of building the keys ``signal_keys`` names (the same features)."""
        get = self._signals.get
        self._by_tokens = [get(k, 0) for k in _TOKENS_KEYS]
        self._by_struct = [get(k, 0) for k in _STRUCT_KEYS]
        self._by_script = [get(k, 0) for k in _SCRIPT_KEYS]
        self._by_safety = [get(k, 0) for k in _SAFETY_KEYS]
        self._by_digits = [get(k, 0) for k in _DIGITS_KEYS]
        self._by_code = [sum(get(k, 0) for k in keys) for keys in _CODE_KEYS]
        self._question = get("#question", 0)

    def signal_sum(self, view: TextView, signals: Signals) -> int:
        """The packed sum of the weights of ``signal_keys(view, signals)``."""
        tokens, markers, structured, script, safety, question, digits = signals
        total = (self._by_tokens[min(tokens.bit_length(), 16)] + self._by_struct[structured]
                 + self._by_script[script] + self._by_safety[safety]
                 + self._by_digits[min(digits, 16).bit_length()] + self._by_code[markers & 63])
        if question:
            total += self._question
        if alarming(view.lanes):
            total += sum(map(self._signals.get, safety_cues(view), _ZEROS))
        return total

    def score(self, view: TextView, signals: Signals) -> Scores:
        """Class probabilities of a request whose view was read with ``self.table``.

        The arithmetic runs in C (router/_scan.c's class_scores: the same operations in
        the same order, so the same floats) when it is built, and so does the sum of the
        safety cues when the C pass read the window (its cue facts; ``_cue_weights``).
        """
        native = self.class_model
        if native is None:
            return self.python_score(view, signals)
        lanes = view.lanes
        facts = view.cue_facts
        if facts is not None:  # an alarming window read by the C pass: C sums its cues too
            best, probs = _class_scores(native, lanes, view.text_features, signals, None, facts)
        else:
            cues = unpack(sum(map(self._signals.get, safety_cues(view), _ZEROS))) if alarming(lanes) else None
            best, probs = _class_scores(native, lanes, view.text_features, signals, cues)
        return _new_tuple(Scores, (CLASSES[best], probs[best], probs[_REASONING], probs[_SAFETY], probs))

    def python_score(self, view: TextView, signals: Signals) -> Scores:
        """``score`` in Python (the reference for the C twin).

        The five classes are written out rather than looped over: in CPython 3.11 each
        comprehension is a function call.
        """
        packed = self.signal_sum(view, signals)
        s0, s1, s2, s3, s4 = _CLASS_LANES.unpack(
            ((packed + _CLASS_BIAS) ^ _CLASS_BIAS).to_bytes(_CLASS_LANES.size, "little"))
        t0, t1, t2, t3, t4 = view.lanes[LEXICON_LANES:]
        b0, b1, b2, b3, b4 = self._bias
        inv = self._inv_scale
        norm = inv / sqrt(max(view.text_features, 1))
        z0, z1, z2, z3, z4 = (b0 + t0 * norm + s0 * inv, b1 + t1 * norm + s1 * inv, b2 + t2 * norm + s2 * inv,
                              b3 + t3 * norm + s3 * inv, b4 + t4 * norm + s4 * inv)
        top = max(z0, z1, z2, z3, z4)
        e0, e1, e2, e3, e4 = exp(z0 - top), exp(z1 - top), exp(z2 - top), exp(z3 - top), exp(z4 - top)
        inv_total = 1.0 / (e0 + e1 + e2 + e3 + e4)
        probs = (e0 * inv_total, e1 * inv_total, e2 * inv_total, e3 * inv_total, e4 * inv_total)
        best = (z0, z1, z2, z3, z4).index(top)
        return _new_tuple(Scores, (CLASSES[best], probs[best], probs[_REASONING], probs[_SAFETY], probs))


if len(CLASSES) != 5:  # Scorer.score writes the classes out
    raise ImportError(f"Scorer.score is written for 5 task classes, not {len(CLASSES)}")


@functools.lru_cache(maxsize=4)
def shared_scorer(path: str = "") -> Scorer:
    """A model loaded once per process and shared (a Scorer is immutable); "" = shipped."""
    return Scorer.load(path or None)


def scores_from_logits(logits: list[float]) -> Scores:
    top = max(logits)
    exps = [exp(z - top) for z in logits]
    inv_total = 1.0 / sum(exps)
    probs = tuple([e * inv_total for e in exps])
    best = logits.index(top)
    return _new_tuple(Scores, (CLASSES[best], probs[best], probs[_REASONING], probs[_SAFETY], probs))


_new_tuple = tuple.__new__  # Scores(...) would add a Python-level call
_REASONING, _SAFETY = int(TaskClass.REASONING), int(TaskClass.SAFETY)


def write_model(model: ScorerFile, path: Path) -> int:
    """Write ``model`` compressed; returns the file size in bytes."""
    blob = zlib.compress(msgspec.msgpack.encode(model), 9)
    path.write_bytes(blob)
    return len(blob)
