"""The task-class scorer: a linear model over sparse binary features, trained offline.

Features (``feature_keys``) are the scan window's word unigrams, word bigrams at the
start and end of the window, and ``#``-prefixed signal features (token-count bucket,
code markers, structured output, script, lexicon cues). ``#`` never survives
tokenisation, so signal keys cannot collide with words. Text features are scaled by
1/sqrt(n) (n = number of text features), signal features count 1.

Inference is a sparse dot product done in C loops: each feature's five class weights are
quantised to integers and packed into one Python int (one 40-bit lane per class), so
``sum(map(weights.get, features))`` adds all five classes at once; the lanes are
unpacked once per request. That is ~5x faster than five float sums over five dicts.
The shipped model keeps only features seen at least twice in training: a feature never
seen carries no weight, so inference looks features up by their (cached) ``str`` hash
instead of calling a stable hash function per n-gram, which would cost more than the
lookup.
"""

from __future__ import annotations

import functools
import math
import sys
import zlib
from array import array
from collections.abc import Iterable
from importlib import resources
from itertools import pairwise, repeat
from pathlib import Path
from typing import Any, NamedTuple, Union

import msgspec

from router.context import Signals, TextView
from subjects.messages import SafetyCategory, Script, Structured, TaskClass

FORMAT_VERSION = 1
CLASSES: tuple[TaskClass, ...] = tuple(TaskClass)  # lane order = TaskClass values
BIGRAM_HEAD_WORDS = 16
BIGRAM_TAIL_WORDS = 8
# Quantised weight = round(weight * WEIGHT_SCALE), clipped to +-MAX_WEIGHT, so a lane's sum
# over the most features a request can have (the window's words, bigrams and signals:
# under 2,048) stays inside LANE_BITS. Narrow lanes keep the packed ints at five 30-bit
# digits: adding them is what the scorer's time goes on.
LANE_BITS = 28
WEIGHT_SCALE = 1024
MAX_WEIGHT = (1 << (LANE_BITS - 1)) // 2048 - 1
DEFAULT_MODEL = "scorer.msgpack.z"  # in router/data/

Key = Union[str, tuple[str, str]]  # a word, a bigram, or a "#signal"

_ZEROS = repeat(0)  # an endless default argument for dict.get in map()

# Lexicon cues for the safety boundary. A linear model over words cannot express "a harm
# verb *aimed at a person*", so these conjunctions are given to it as features; the word
# lists are general vocabulary, not copied from any test prompt.
_HARM_VERBS = frozenset(
    "kill kills killing killed murder murdering shoot shooting stab stabbing strangle choke "
    "poison poisoning drown hang attack attacking assault beat beating hit punch kick hurt "
    "harm harming injure torture abuse kidnap kidnapping abduct rape molest execute eliminate "
    "annihilate exterminate eradicate wipe obliterate destroy destroying crush break butcher "
    "behead decapitate dismember slaughter massacre bomb bombing blow explode detonate "
    "terminate liquidate overpower tackle suffocate slit slash cut steal stealing rob hack "
    "scam defraud launder counterfeit traffic trafficking smuggle burn arson hostage "
    "assassinate genocide".split()
)
_HUMAN_TARGETS = frozenset(
    "someone somebody person persons people human humans man men woman women girl girls boy "
    "boys child children kid kids baby toddler teen teenager wife husband spouse girlfriend "
    "boyfriend partner ex date neighbour neighbor neighbours neighbors boss coworker colleague "
    "classmate classmates teacher student students friend friends family parents mother "
    "father mom dad brother sister president politician police officer cop stranger victim "
    "population village crowd myself yourself himself herself them".split()
)
_FICTION = frozenset(
    "game games minecraft fortnite video film films movie movies show tv series novel novels "
    "story stories book books character characters fictional fiction play scene episode judo "
    "boxing karate wrestling chess tennis football sport sports theatre theater".split()
)
_TECH = frozenset(
    "python process program programs linux windows computer server app browser file files "
    "terminal code script database download downloads internet software system".split()
)
_PRIVATE = frozenset(
    "address phone email password passwords social security bank account accounts details "
    "records history status birthday birth license passport pin salary earn login credit card "
    "medical criminal".split()
)
_DEFINITION_STARTS = frozenset({("what", "is"), ("what", "are"), ("what", "does"), ("what", "was"),
                                ("what", "were"), ("what", "constitutes"), ("what", "kind")})
_CUE_WORDS = 60  # lexicon cues look at the first words only (short asks)
_TARGET_REACH = 4  # a harm verb's object is within this many words after it


class ScorerError(ValueError):
    """Raised when a scorer model file cannot be read or does not fit this code; the
    router refuses to start with it (not recoverable without another file)."""


class ScorerFile(msgspec.Struct, frozen=True):
    """The shipped model file (msgpack, zlib-compressed)."""

    format: int
    classes: list[str]
    scale: int
    bias: list[int]
    keys: list[str]  # words, "a b" bigrams, "#signal" features
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


def bigram_keys(view: TextView, head: int = BIGRAM_HEAD_WORDS, tail: int = BIGRAM_TAIL_WORDS) -> set[Key]:
    """Word bigrams of the window's first ``head`` and last ``tail`` words."""
    words = view.words
    keys: set[Key] = set(pairwise(words[:head]))
    if len(words) > head:
        keys.update(pairwise(words[-tail:]))
    return keys


def text_keys(view: TextView, head: int = BIGRAM_HEAD_WORDS, tail: int = BIGRAM_TAIL_WORDS) -> set[Key]:
    """Word unigrams of the window plus its bigram keys (the scorer's text features)."""
    return bigram_keys(view, head, tail) | view.word_set


_TOKENS_KEYS = tuple(f"#tok{i}" for i in range(17))
_STRUCT_KEYS = tuple(f"#struct{int(s)}" for s in Structured)
_SCRIPT_KEYS = tuple(f"#script{int(s)}" for s in Script)
_SAFETY_KEYS = tuple(f"#safety{int(s)}" for s in SafetyCategory)
_DIGITS_KEYS = tuple(f"#digits{i}" for i in range(6))
_CODE_KEYS = tuple(tuple(f"#code{1 << b}" for b in range(6) if m & (1 << b)) for m in range(64))


def signal_keys(view: TextView, signals: Signals) -> list[str]:
    """The context's numeric signals as binary features, plus the lexicon cues."""
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
    cue = view.words[:_CUE_WORDS]
    harm = not _HARM_VERBS.isdisjoint(cue)
    human = not _HUMAN_TARGETS.isdisjoint(cue)
    if harm:
        keys.append("#harm")
        keys.append("#harm+human" if human else "#harm-human")
        keys.append("#harm>human" if _harm_aimed_at_person(cue) else "#harm>thing")
        if not _FICTION.isdisjoint(cue):
            keys.append("#harm+fiction")
        if not _TECH.isdisjoint(cue):
            keys.append("#harm+tech")
    if len(cue) > 1 and (cue[0], cue[1]) in _DEFINITION_STARTS:
        keys.append("#definition")
    if not _PRIVATE.isdisjoint(cue):
        keys.append("#private+my" if "my" in view.word_set else "#private")
    return keys


def _harm_aimed_at_person(words: list[str]) -> bool:
    """A harm verb whose next few words name a person ("shoot someone", "beat my wife"),
    as against a thing ("kill a Python process", "shoot a good photo")."""
    for i, word in enumerate(words):
        if word in _HARM_VERBS and not _HUMAN_TARGETS.isdisjoint(words[i + 1 : i + 1 + _TARGET_REACH]):
            return True
    return False


def encode_key(key: Key) -> str:
    return key if isinstance(key, str) else f"{key[0]} {key[1]}"


def decode_key(key: str) -> Key:
    if " " in key:
        first, second = key.split(" ", 1)
        return (first, second)
    return key


def pack(weights: Iterable[int]) -> int:
    """One feature's class weights (signed ints) as one int, a LANE_BITS lane each."""
    total = 0
    for lane, w in enumerate(weights):
        total += w << (LANE_BITS * lane)
    return total


def unpack(total: int, lanes: int) -> list[int]:
    """Inverse of ``pack`` for a sum of packed values (each lane's sum must fit)."""
    mask = (1 << LANE_BITS) - 1
    half = 1 << (LANE_BITS - 1)
    out = []
    for _ in range(lanes):
        low = total & mask
        if low >= half:
            low -= 1 << LANE_BITS
        out.append(low)
        total = (total - low) >> LANE_BITS
    return out


class Scorer:
    """Scores a request's features into class probabilities. Immutable after load."""

    def __init__(self, model: ScorerFile) -> None:
        if model.format != FORMAT_VERSION:
            raise ScorerError(f"scorer file format {model.format}; this router reads {FORMAT_VERSION}")
        if model.classes != [c.name for c in CLASSES]:
            raise ScorerError(f"scorer classes {model.classes} do not match {[c.name for c in CLASSES]}")
        n = len(CLASSES)
        weights = array("i")
        weights.frombytes(model.weights)
        if sys.byteorder == "big":  # the file is little-endian
            weights.byteswap()
        if len(weights) != len(model.keys) * n:
            raise ScorerError(f"scorer has {len(weights)} weights for {len(model.keys)} keys x {n} classes")
        self.model = model
        self.thresholds = dict(model.thresholds)
        self._lanes = n
        self._scale = float(model.scale)
        self._bias = [b / self._scale for b in model.bias]
        self._head, self._tail = model.bigram_head, model.bigram_tail
        self._packed: dict[Key, int] = {
            decode_key(key): pack(weights[i * n : (i + 1) * n]) for i, key in enumerate(model.keys)
        }

    @classmethod
    def load(cls, path: Path | str | None = None) -> Scorer:
        """Load a model file; ``None`` loads the one shipped in router/data/."""
        try:
            if path is None:
                blob = resources.files("router").joinpath("data", DEFAULT_MODEL).read_bytes()
                where = f"router/data/{DEFAULT_MODEL}"
            else:
                blob = Path(path).read_bytes()
                where = str(path)
            return cls(msgspec.msgpack.decode(zlib.decompress(blob), type=ScorerFile))
        except (OSError, zlib.error, msgspec.DecodeError) as exc:
            raise ScorerError(f"cannot read scorer model {where if path is None else path}: {exc}") from exc

    def __len__(self) -> int:
        return len(self._packed)

    def score(self, view: TextView, signals: Signals) -> Scores:
        # Unigrams and bigrams are summed apart (no union set to build); they never collide.
        bigrams = bigram_keys(view, self._head, self._tail)
        words = view.word_set
        get = self._packed.get
        text_sum = unpack(sum(map(get, words, _ZEROS)) + sum(map(get, bigrams, _ZEROS)), self._lanes)
        signal_sum = unpack(sum(map(get, signal_keys(view, signals), _ZEROS)), self._lanes)
        norm = 1.0 / (self._scale * math.sqrt(max(len(words) + len(bigrams), 1)))
        inv_scale = 1.0 / self._scale
        logits = [b + t * norm + s * inv_scale for b, t, s in zip(self._bias, text_sum, signal_sum, strict=True)]
        return scores_from_logits(logits)


@functools.lru_cache(maxsize=4)
def shared_scorer(path: str = "") -> Scorer:
    """A model loaded once per process and shared (a Scorer is immutable); "" = shipped."""
    return Scorer.load(path or None)


def scores_from_logits(logits: list[float]) -> Scores:
    top = max(logits)
    exps = [math.exp(z - top) for z in logits]
    inv_total = 1.0 / sum(exps)
    probs = tuple([e * inv_total for e in exps])
    best = logits.index(top)
    return Scores(CLASSES[best], probs[best], probs[_REASONING], probs[_SAFETY], probs)


_REASONING, _SAFETY = int(TaskClass.REASONING), int(TaskClass.SAFETY)


def write_model(model: ScorerFile, path: Path) -> int:
    """Write ``model`` compressed; returns the file size in bytes."""
    blob = zlib.compress(msgspec.msgpack.encode(model), 9)
    path.write_bytes(blob)
    return len(blob)
