"""Offline training of the scorer: labelled JSONL → a small model file, plus metrics.

Pure Python on purpose (no numpy in the router, and no extra for training): a
multinomial logistic regression fitted by AdaGrad over the same sparse features the
router computes (router.scorer.text_keys / signal_keys on router.context's TextView),
then quantised into the shipped ScorerFile. Deterministic for a seed: the vocabulary and
every example's features are sorted, and the shuffle uses ``random.Random(seed)``.

Held-out rows (a fixed, seeded split stratified by source) are never seen by training or
threshold calibration; calibration uses out-of-fold scores on the training rows.
Metrics are of the whole model choice the router makes (context + scorer + rules).
"""

from __future__ import annotations

import math
import random
import sys
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from router.context import build_context, read_request, read_signals
from router.rules import RuleSet, decide_model, load_rules
from router.scorer import (
    CLASSES,
    FORMAT_VERSION,
    MAX_WEIGHT,
    WEIGHT_SCALE,
    Key,
    Scorer,
    ScorerFile,
    encode_key,
    signal_keys,
    text_keys,
)
from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import ChatMessage, ChatRequest, TaskClass

SYNTHETIC = "synthetic:"  # source prefix of the templated rows added to training


class DataError(ValueError):
    """Raised when a labelled JSONL file has a bad line; names the file and line number."""


class _Row(msgspec.Struct):
    id: str
    request: msgspec.Raw
    label: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    source: str
    label: TaskClass
    request: ChatRequest


@dataclass(frozen=True, slots=True)
class Featurized:
    text: tuple[Key, ...]  # sorted by encoded key: a fixed summation order
    signals: tuple[str, ...]
    label: int
    weight: float


@dataclass(slots=True)
class TrainSettings:
    seed: int = 7
    epochs: int = 12
    # 0.2, not 0.4: on the cross-validated figures (seeds 7, 11, 13) the smaller step sent
    # fewer harmless-but-alarming prompts to the safety model at the same SAFETY recall.
    learning_rate: float = 0.2
    l2: float = 1e-5
    min_count: int = 2
    folds: int = 4
    safety_recall: float = 0.96  # calibration target for the safety threshold (0.95 + margin)
    # Features kept in the shipped model, by largest weight: a small table stays in the CPU
    # cache, and a lookup that misses cache costs more than the rest of the dot product.
    max_features: int = 6000
    source_weights: dict[str, float] = field(default_factory=dict)


_row_decoder = msgspec.json.Decoder(_Row)


def read_examples(path: Path | str) -> list[Example]:
    """Read labelled requests (``{"id","label","source","request"}`` a line)."""
    examples = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = _row_decoder.decode(line)
                request = codec.decode_request(bytes(row.request), f"{path}:{number}")
                label = TaskClass[row.label.upper()]
            except (msgspec.DecodeError, msgspec.ValidationError, BadMessage) as exc:
                raise DataError(f"{path}:{number}: {exc}") from exc
            except KeyError:
                raise DataError(f"{path}:{number}: label {row.label!r} is not a task class") from None
            examples.append(Example(row.id, row.source, label, request))
    return examples


def split_holdout(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A fixed split, stratified by source: ``fraction`` of each source is held out."""
    by_source: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_source[ex.source].append(ex)
    rng = random.Random(seed)
    train, held = [], []
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda e: e.id)
        rng.shuffle(group)
        k = round(len(group) * fraction) if fraction > 0 else 0
        held += group[:k]
        train += group[k:]
    return train, held


def fold_of(examples: Sequence[Example], folds: int, seed: int) -> list[int]:
    """Fold number per example, stratified by source."""
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_source[ex.source].append(i)
    rng = random.Random(seed + 1)
    fold = [0] * len(examples)
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda i: examples[i].id)
        rng.shuffle(group)
        for n, i in enumerate(group):
            fold[i] = n % folds
    return fold


def featurize(ex: Example, weights: dict[str, float]) -> Featurized:
    view = read_request(ex.request)
    signals = read_signals(ex.request, view)
    return Featurized(
        text=tuple(sorted(text_keys(view), key=encode_key)),  # repeats kept: a word counts each time
        signals=tuple(sorted(signal_keys(view, signals))),
        label=int(ex.label),
        weight=weights.get(ex.source, 1.0),
    )


@dataclass(slots=True)
class FloatModel:
    keys: list[Key]
    weights: list[list[float]]  # per class, per key
    bias: list[float]


def fit(data: Sequence[Featurized], settings: TrainSettings) -> FloatModel:
    """Multinomial logistic regression by AdaGrad; the same result for the same seed."""
    counts: Counter[Key] = Counter()
    for ex in data:
        counts.update(ex.text)
        counts.update(ex.signals)
    keys = sorted((k for k, n in counts.items() if n >= settings.min_count), key=encode_key)
    index = {k: i for i, k in enumerate(keys)}
    rows = []
    for ex in data:
        text = [index[k] for k in ex.text if k in index]
        rows.append((text, 1.0 / math.sqrt(max(len(ex.text), 1)),
                     [index[k] for k in ex.signals if k in index], ex.label, ex.weight))
    n_classes, n_keys = len(CLASSES), len(keys)
    w = [[0.0] * n_keys for _ in range(n_classes)]
    g2 = [[1e-6] * n_keys for _ in range(n_classes)]
    bias, bias_g2 = [0.0] * n_classes, [1e-6] * n_classes
    lr, l2 = settings.learning_rate, settings.l2
    order = list(range(len(rows)))
    rng = random.Random(settings.seed)
    for _ in range(settings.epochs):
        rng.shuffle(order)
        for r in order:
            text, scale, sig, label, weight = rows[r]
            logits = [bias[c] + scale * sum(map(w[c].__getitem__, text)) + sum(map(w[c].__getitem__, sig))
                      for c in range(n_classes)]
            top = max(logits)
            exps = [math.exp(z - top) for z in logits]
            total = sum(exps)
            for c in range(n_classes):
                g = (exps[c] / total - (1.0 if c == label else 0.0)) * weight
                if -1e-4 < g < 1e-4:
                    continue  # already right for this class: skip the update
                wc, gc = w[c], g2[c]
                gx = g * scale
                for i in text:
                    grad = gx + l2 * wc[i]
                    gc[i] += grad * grad
                    wc[i] -= lr * grad / math.sqrt(gc[i])
                for i in sig:
                    grad = g + l2 * wc[i]
                    gc[i] += grad * grad
                    wc[i] -= lr * grad / math.sqrt(gc[i])
                bias_g2[c] += g * g
                bias[c] -= lr * g / math.sqrt(bias_g2[c])
    return FloatModel(keys, w, bias)


def quantise(model: FloatModel, thresholds: dict[str, float], meta: dict[str, Any],
             max_features: int = 0) -> ScorerFile:
    """The shipped form: integer weights of the ``max_features`` keys with the largest
    weights (0: all); keys whose weights all round to 0 are dropped."""
    n = len(CLASSES)
    rows = []
    for i, key in enumerate(model.keys):
        row = [max(-MAX_WEIGHT, min(MAX_WEIGHT, round(model.weights[c][i] * WEIGHT_SCALE))) for c in range(n)]
        if any(row):
            rows.append((max(map(abs, row)), encode_key(key), row))
    if max_features:
        rows.sort(key=lambda r: (-r[0], r[1]))
        rows = sorted(rows[:max_features], key=lambda r: r[1])
    keys: list[str] = []
    flat = array("i")
    for _, key_text, row in rows:
        keys.append(key_text)
        flat.extend(row)
    if sys.byteorder == "big":
        flat.byteswap()
    return ScorerFile(
        format=FORMAT_VERSION, classes=[c.name for c in CLASSES], scale=WEIGHT_SCALE,
        bias=[round(b * WEIGHT_SCALE) for b in model.bias], keys=keys, weights=flat.tobytes(),
        thresholds=dict(thresholds), meta=meta,
    )


def train_scorer(examples: Sequence[Example], settings: TrainSettings,
                 thresholds: dict[str, float], meta: dict[str, Any]) -> Scorer:
    data = [featurize(ex, settings.source_weights) for ex in examples]
    return Scorer(quantise(fit(data, settings), thresholds, meta, settings.max_features))


# ---- calibration -------------------------------------------------------------------


@dataclass(slots=True)
class OutOfFold:
    """Every training example scored by a model fitted on the other folds."""

    fold: list[int]  # the fold of each example
    scorers: list[Scorer]  # the model of each fold (trained without it)
    probs: list[tuple[float, ...]]  # class probabilities of each example


def out_of_fold(examples: Sequence[Example], settings: TrainSettings,
                log: Callable[[str], None] = lambda _: None) -> OutOfFold:
    """Fit one model per fold on the other folds and score the fold's examples with it."""
    fold = fold_of(examples, settings.folds, settings.seed)
    data = [featurize(ex, settings.source_weights) for ex in examples]
    probs: list[tuple[float, ...]] = [()] * len(examples)
    scorers = []
    for k in range(settings.folds):
        log(f"calibration fold {k + 1}/{settings.folds}")
        train = [d for d, f in zip(data, fold, strict=True) if f != k]
        scorer = Scorer(quantise(fit(train, settings), {}, {}, settings.max_features))
        scorers.append(scorer)
        for i, ex in enumerate(examples):
            if fold[i] == k:
                view = read_request(ex.request, scorer.table)
                probs[i] = scorer.score(view, read_signals(ex.request, view)).probabilities
    return OutOfFold(fold, scorers, probs)


def out_of_fold_scores(examples: Sequence[Example], settings: TrainSettings,
                       log: Callable[[str], None] = lambda _: None) -> list[tuple[float, ...]]:
    """Class probabilities for every example from a model that did not train on it."""
    return out_of_fold(examples, settings, log).probs


def evaluate_out_of_fold(examples: Sequence[Example], oof: OutOfFold, thresholds: dict[str, float],
                         contrast_source: str = "xstest") -> Evaluation:
    """The router's whole model choice on every real training row, each decided by its
    fold's model with ``thresholds`` (cross-validated figures: ~4x the held-out rows)."""
    n = len(CLASSES)
    confusion = [[0] * n for _ in range(n)]
    paths: Counter[str] = Counter()
    contrast_total = contrast_hits = 0
    for k, scorer in enumerate(oof.scorers):
        calibrated = Scorer(msgspec.structs.replace(scorer.model, thresholds=dict(thresholds)))
        rows = [ex for ex, f in zip(examples, oof.fold, strict=True) if f == k and not is_synthetic(ex)]
        part = evaluate(rows, calibrated, rules_for(calibrated), contrast_source)
        for true_class in range(n):
            for chosen in range(n):
                confusion[true_class][chosen] += part.confusion[true_class][chosen]
        paths.update(part.paths)
        contrast_total += part.contrast_total
        contrast_hits += part.contrast_to_safety
    return Evaluation(confusion, paths, contrast_total, contrast_hits)


def safety_tradeoff(examples: Sequence[Example], probs: Sequence[tuple[float, ...]],
                    thresholds: Iterable[float], contrast_source: str = "xstest") -> str:
    """A markdown table: SAFETY recall and the contrast set's false alarms, out of fold,
    at each safety threshold."""
    lines = [f"| safety_score threshold | SAFETY recall | {contrast_source} harmless sent to safety |",
             "| --- | --- | --- |"]
    examples, probs = real_rows(examples, probs)
    unsafe = [p[TaskClass.SAFETY] for ex, p in zip(examples, probs, strict=True) if ex.label == TaskClass.SAFETY]
    harmless = [p[TaskClass.SAFETY] for ex, p in zip(examples, probs, strict=True)
                if ex.source == contrast_source and ex.label != TaskClass.SAFETY]
    for t in thresholds:
        hits = sum(p >= t for p in unsafe)
        alarms = sum(p >= t for p in harmless)
        lines.append(f"| {t:.2f} | {hits / max(len(unsafe), 1):.3f} ({hits}/{len(unsafe)}) | "
                     f"{100 * alarms / max(len(harmless), 1):.0f}% ({alarms}/{len(harmless)}) |")
    return "\n".join(lines)


def is_synthetic(ex: Example) -> bool:
    """A templated training row (see the end of this module): trained on, never measured."""
    return ex.source.startswith(SYNTHETIC)


def real_rows(examples: Sequence[Example], probs: Sequence[tuple[float, ...]]
              ) -> tuple[list[Example], list[tuple[float, ...]]]:
    kept = [(ex, p) for ex, p in zip(examples, probs, strict=True) if not is_synthetic(ex)]
    return [ex for ex, _ in kept], [p for _, p in kept]


def calibrate(examples: Sequence[Example], probs: Sequence[tuple[float, ...]],
              safety_recall: float) -> dict[str, float]:
    """Thresholds: the highest safety threshold that keeps SAFETY recall >= the target,
    and the complexity threshold with the best REASONING F1 (on real rows only: the
    synthetic ones are easy by construction and would flatter both)."""
    examples, probs = real_rows(examples, probs)
    safety = sorted(p[TaskClass.SAFETY] for ex, p in zip(examples, probs, strict=True) if ex.label == TaskClass.SAFETY)
    if safety:
        allowed_misses = int(len(safety) * (1.0 - safety_recall))
        safety_threshold = safety[allowed_misses]
    else:
        safety_threshold = 0.5
    best_f1, complexity_threshold = -1.0, 0.5
    for t in [i / 100 for i in range(5, 96)]:
        tp = fp = fn = 0
        for ex, p in zip(examples, probs, strict=True):
            hit = p[TaskClass.REASONING] >= t
            truth = ex.label == TaskClass.REASONING
            tp += hit and truth
            fp += hit and not truth
            fn += truth and not hit
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        if f1 > best_f1:
            best_f1, complexity_threshold = f1, t
    return {"safety": round(safety_threshold, 4), "complexity": complexity_threshold}


def out_of_fold_safety(examples: Sequence[Example], probs: Sequence[tuple[float, ...]],
                       threshold: float, contrast_source: str) -> str:
    """SAFETY recall and the contrast set's false alarms at ``threshold``, out of fold
    (more rows than the held-out split has, so a steadier figure; real rows only)."""
    examples, probs = real_rows(examples, probs)
    unsafe = [p[TaskClass.SAFETY] >= threshold for ex, p in zip(examples, probs, strict=True)
              if ex.label == TaskClass.SAFETY]
    contrast = [p[TaskClass.SAFETY] >= threshold for ex, p in zip(examples, probs, strict=True)
                if ex.source == contrast_source and ex.label != TaskClass.SAFETY]
    return (f"out of fold on the training rows, safety_score >= {threshold}: SAFETY recall "
            f"{sum(unsafe) / max(len(unsafe), 1):.3f} ({sum(unsafe)}/{len(unsafe)}); harmless-but-alarming "
            f"flagged {sum(contrast)}/{len(contrast)} ({100 * sum(contrast) / max(len(contrast), 1):.1f}%)")


# ---- evaluation --------------------------------------------------------------------


@dataclass(slots=True)
class Evaluation:
    confusion: list[list[int]]  # [true class][chosen class], TaskClass order
    paths: Counter[str]
    contrast_total: int  # harmless-but-alarming requests (contrast source, not SAFETY)
    contrast_to_safety: int

    def precision(self, c: int) -> float:
        col = sum(row[c] for row in self.confusion)
        return self.confusion[c][c] / col if col else 0.0

    def recall(self, c: int) -> float:
        row = sum(self.confusion[c])
        return self.confusion[c][c] / row if row else 0.0

    def f1(self, c: int) -> float:
        p, r = self.precision(c), self.recall(c)
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def macro_f1(self) -> float:
        return sum(self.f1(c) for c in range(len(CLASSES))) / len(CLASSES)

    @property
    def contrast_rate(self) -> float:
        return self.contrast_to_safety / self.contrast_total if self.contrast_total else 0.0

    def report(self) -> str:
        names = [c.name.lower() for c in CLASSES]
        lines = ["| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
        for c, name in enumerate(names):
            lines.append(f"| {name} | {self.precision(c):.3f} | {self.recall(c):.3f} | "
                         f"{self.f1(c):.3f} | {sum(self.confusion[c])} |")
        lines += ["", f"macro-F1 {self.macro_f1:.4f}; SAFETY recall {self.recall(TaskClass.SAFETY):.3f}; "
                  f"harmless-but-alarming sent to safety: {self.contrast_to_safety}/{self.contrast_total} "
                  f"({100 * self.contrast_rate:.1f}%)", "",
                  "Confusion matrix (rows: true class, columns: chosen class):", "",
                  "| true \\ chosen | " + " | ".join(names) + " |",
                  "| --- |" + " --- |" * len(names)]
        for c, name in enumerate(names):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in self.confusion[c]) + " |")
        total = sum(self.paths.values())
        lines += ["", "Decision paths: " + ", ".join(
            f"{p} {n} ({100 * n / total:.1f}%)" for p, n in sorted(self.paths.items()))]
        return "\n".join(lines)


def evaluate(examples: Iterable[Example], scorer: Scorer | None, rules: RuleSet,
             contrast_source: str = "xstest") -> Evaluation:
    """Run the router's model choice (context, scorer, rules; no sessions) on each example."""
    n = len(CLASSES)
    confusion = [[0] * n for _ in range(n)]
    paths: Counter[str] = Counter()
    contrast_total = contrast_hits = 0
    for ex in examples:
        choice = decide_model(rules, build_context(ex.request, None, scorer))
        confusion[ex.label][choice.task_class] += 1
        paths[choice.path.name.lower()] += 1
        if ex.source == contrast_source and ex.label != TaskClass.SAFETY:
            contrast_total += 1
            contrast_hits += choice.task_class == TaskClass.SAFETY
    return Evaluation(confusion, paths, contrast_total, contrast_hits)


def rules_for(scorer: Scorer, rules_path: Path | str | None = None) -> RuleSet:
    return load_rules(rules_path, scorer.thresholds)


# ---- counter-examples for a known bias of the dev data ------------------------------------

# Every SAFETY prompt in dev.jsonl from AdvBench is a short imperative ("Write a tutorial
# on how to ..."), and almost no harmless prompt is, so a model fitted on it alone learns
# "short imperative = unsafe" and sends "Write a poem about rain." to the policy model.
# These harmless imperatives, built from the templates below, are added to the training
# rows (never to the held-out rows the metrics are computed on) to unlearn that shortcut.
_ASKS = ("Write", "Create", "Develop", "Design", "Generate", "Compose", "Draft", "Produce",
         "Explain", "Describe", "Teach me", "Provide", "Suggest", "Outline", "Give me", "Plan")
_ARTEFACTS = ("a poem", "a short story", "a blog post", "an essay", "a tutorial", "a guide",
              "a plan", "a recipe", "a speech", "a song", "a letter", "a review", "a lesson plan",
              "a workout plan", "a marketing plan", "a social media post", "a product description",
              "step-by-step instructions", "a checklist", "a summary", "a list of ideas", "a script for a video")
_TOPICS = ("about the ocean", "on baking sourdough bread", "for a child's birthday party",
           "about autumn leaves", "for learning to play the guitar", "about a friendly dragon",
           "on saving money for a holiday", "for a small bakery", "about the history of Rome",
           "on growing tomatoes on a balcony", "for a team offsite", "about my grandmother's garden",
           "on staying focused while studying", "for a community clean-up day", "about climate change",
           "on training for a first 10k run", "for welcoming new employees", "about a trip to Japan",
           "on caring for a rescue cat", "for a wedding toast", "on how to make a paper airplane",
           "about the night sky", "for a local library fundraiser", "on how to fix a flat bicycle tire")


# dev.jsonl holds no small talk and no bare short asks either, and the contrast requests
# below are short, so without these "hello" and "Write a haiku." went to the policy model.
_SHORT_ASKS = ("Write a haiku", "Write a story", "Write a limerick", "Tell me a joke", "Tell me a fun fact",
               "Say hello", "Say something nice", "Give me a riddle", "Compose a short song",
               "Suggest a name for my cat", "Recommend a book", "Describe a sunset", "Write a toast",
               "Draft a thank-you note", "Give me a motivational quote", "Name three colours",
               "Write a tweet about coffee", "Translate good night to Spanish", "Count to five",
               "Write a slogan for a bakery")
_SMALL_TALK = ("hello", "hi", "hey", "hi there", "good morning", "good evening", "thanks", "thank you",
               "ok", "okay", "test", "testing", "how are you?", "what's up?", "who are you?",
               "what can you do?", "nice to meet you", "bye", "see you later", "yes", "no", "sure",
               "cool", "great, thanks!", "can you help me?", "are you there?")


def benign_imperatives(count: int, seed: int) -> list[Example]:
    """``count`` harmless requests labelled GENERAL (see the comments above): half
    templated imperatives with a topic, a quarter bare short asks, a quarter small talk."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 4
        if kind < 2:
            text = f"{rng.choice(_ASKS)} {rng.choice(_ARTEFACTS)} {rng.choice(_TOPICS)}."
        elif kind == 2:
            text = rng.choice(_SHORT_ASKS) + rng.choice((".", "", "!", " please."))
        else:
            text = rng.choice(_SMALL_TALK)
            text = text.capitalize() if rng.random() < 0.5 else text
        request = ChatRequest(messages=[ChatMessage(role="user", content=text)])
        out.append(Example(f"synthetic-imperative-{i}", SYNTHETIC + "imperative", TaskClass.GENERAL, request))
    return out


# Counterfactual pairs for the safety boundary. In dev.jsonl nearly every prompt with a
# violent verb is unsafe (AdvBench's asks, XSTest's unsafe half), so a model fitted on it
# alone learns "violent verb = unsafe" and sends "How do I kill a Python process?" to the
# policy model; the cue features (router.scorer.safety_cues) can only help if training
# shows them both ways. These requests pair the same violent verbs with a harmless
# target (a pest, food, a thing, an abstraction, a program: GENERAL), with a person
# (SAFETY), or with a person inside a game, film or story (GENERAL). The word lists are
# general vocabulary from router.context's lexicons, not taken from any test prompt; like
# the imperatives above they are added to the training rows only.
_CONTRAST_OPENINGS = ("How do I", "How can I", "What's the best way to", "What is the easiest way to",
                      "Tell me how to", "Explain how to", "I want to", "Is there a way to", "Help me")
_CONTRAST_VERBS = ("kill", "shoot", "stab", "strangle", "choke", "poison", "drown", "hang", "beat", "punch",
                   "hurt", "torture", "execute", "eliminate", "exterminate", "wipe out", "destroy", "crush",
                   "smash", "break", "butcher", "slaughter", "blow up", "terminate", "burn", "cut up", "attack")
_HARMLESS_TARGETS = (
    "a mosquito", "the rats in my basement", "the weeds in my garden", "the ants in my kitchen", "a wasp nest",
    "the bugs on my roses", "a cockroach", "the mold in my shower", "a fish", "a chicken for dinner",
    "an onion", "a watermelon", "the dough", "a steak", "a coconut", "a lobster", "some garlic",
    "an old shed", "an empty can", "a cardboard box", "a log", "a balloon", "a glass bottle", "a piñata",
    "an old chair", "a tree stump", "a rock", "the ice on my windshield", "some clay",
    "my procrastination", "my fear of flying", "the competition", "my exam", "my personal record",
    "the tension in the room", "a bad habit", "my debt", "my stress", "the lights", "time",
    "a python process", "a frozen program", "a linux process", "a server job", "a browser tab",
    "a background task", "a stuck download", "a database query", "a file", "the app")
_PEOPLE_TARGETS = (
    "someone", "a person", "my neighbour", "my boss", "a child", "my wife", "my husband", "a stranger",
    "my coworker", "a teenager", "my brother", "a woman", "a man", "people", "a politician", "my teacher",
    "my ex", "a police officer", "my classmate", "a baby", "my family", "my roommate")
_FICTION_SETTINGS = ("in a video game", "in Minecraft", "in my novel", "in a movie scene", "in a chess game",
                     "in my short story", "in a board game", "in the film", "in Fortnite", "in a play")


# Questions *about* harm (what a word means, what happened in history) are harmless too.
_HARM_TOPICS = ("murder", "assault", "poisoning", "kidnapping", "torture", "a massacre", "genocide", "fraud",
                "identity theft", "a scam", "money laundering", "counterfeiting", "racism", "discrimination",
                "cocaine", "heroin", "meth", "an overdose", "suicide", "self-harm", "malware", "ransomware",
                "phishing", "terrorism", "arson", "human trafficking", "child abuse", "domestic violence",
                "a hate crime", "stalking", "blackmail", "bribery", "a bomb", "an assassination", "hacking")
_DEFINITIONS = ("What is {}?", "What does {} mean?", "What is the definition of {}?", "What constitutes {}?",
                "Explain what {} is.", "What kind of crime is {}?", "Why is {} illegal?")
_HISTORY = ("How many people were killed in {}?", "What weapons were used in {}?", "Why did {} happen?",
            "What caused {}?", "How did people survive {}?", "What happened during {}?",
            "Who was responsible for {}?")
_EVENTS = ("the First World War", "the Second World War", "the Vietnam War", "the French Revolution",
           "the Battle of the Somme", "the fall of Rome", "the Spanish Civil War", "the Crusades",
           "the Napoleonic Wars", "the Cold War", "the American Civil War", "the siege of Leningrad")


def contrast_questions(count: int, seed: int) -> list[Example]:
    """``count`` requests pairing violent verbs with harmless and with human targets (see
    the comment above), in eighths: 3 harmless targets, 2 people, 1 people in fiction,
    1 definition of a harm, 1 history question."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = i % 8
        opening, verb = rng.choice(_CONTRAST_OPENINGS), rng.choice(_CONTRAST_VERBS)
        label = TaskClass.GENERAL
        if kind < 3:
            text = f"{opening} {verb} {rng.choice(_HARMLESS_TARGETS)}?"
        elif kind < 5:
            text, label = f"{opening} {verb} {rng.choice(_PEOPLE_TARGETS)}?", TaskClass.SAFETY
        elif kind == 5:
            text = f"{opening} {verb} {rng.choice(_PEOPLE_TARGETS)} {rng.choice(_FICTION_SETTINGS)}?"
        elif kind == 6:
            text = rng.choice(_DEFINITIONS).format(rng.choice(_HARM_TOPICS))
        else:
            text = rng.choice(_HISTORY).format(rng.choice(_EVENTS))
        request = ChatRequest(messages=[ChatMessage(role="user", content=text)])
        out.append(Example(f"synthetic-contrast-{i}", SYNTHETIC + "contrast", label, request))
    return out
