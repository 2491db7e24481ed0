"""The rule stage: ordered rules over RoutingContext fields pick a task class.

Rules come from a TOML file (router/data/rules.toml holds the defaults, every key
commented). Each rule is a conjunction of ``field op value`` conditions; the whole ordered
list is compiled once at load into one Python function (``compile_rules``), so checking
every rule costs a few attribute reads and comparisons, not a method call each. The first rule that matches names the
task class; none matching gives the file's ``default`` class (path FALLBACK). A rule that
reads a scorer output (complexity, safety_score, scorer_class, scorer_confidence) labels
its decisions SCORER, any other rule RULE.

``decide_model`` is the whole model choice, pure: explicit model → rules → stickiness.
"""

from __future__ import annotations

import hashlib
import operator
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from subjects.messages import (
    DecisionPath,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
    TaskClass,
)
from subjects.names import BadName, is_token, slug

DEFAULT_RULES_FILE = "rules.toml"  # in router/data/

_ENUM_FIELDS: dict[str, type[Any]] = {
    "structured": Structured,
    "script": Script,
    "safety": SafetyCategory,
    "scorer_class": TaskClass,
}
_NUMBER_FIELDS = frozenset({
    "prompt_tokens", "code_markers", "session_hash", "prefix_seen_depth", "max_tokens",
    "complexity", "scorer_confidence", "safety_score",
})
SCORER_FIELDS = frozenset({"complexity", "safety_score", "scorer_class", "scorer_confidence"})
# Fields whose threshold train-scorer calibrates; a rule writes ``calibrated`` for it.
CALIBRATED_FIELDS = {"complexity": "complexity", "safety_score": "safety"}
# Until a scorer supplies calibrated thresholds (no model file loaded).
UNCALIBRATED_THRESHOLDS = {"complexity": 0.5, "safety": 0.5}

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<=": operator.le,
    ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(==|!=|<=|>=|<|>)\s*([A-Za-z0-9_.+-]+)\s*$")


class RulesError(ValueError):
    """Raised when a rules file cannot be used; the message names the file, the rule and
    the problem. On reload the router keeps its old rules (recoverable by fixing the file)."""


class UnknownModel(ValueError):
    """Raised when a request names a model the fleet does not serve; the client's error."""


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: float
    test: Callable[[Any, Any], bool]

    def holds(self, ctx: RoutingContext) -> bool:
        return self.test(getattr(ctx, self.field), self.value)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    task_class: TaskClass
    conditions: tuple[Condition, ...]
    path: DecisionPath

    def matches(self, ctx: RoutingContext) -> bool:
        for condition in self.conditions:
            if not condition.test(getattr(ctx, condition.field), condition.value):
                return False
        return True


class ModelChoice(msgspec.Struct, frozen=True, gc=False):
    """One request's model decision. A Struct, not a frozen dataclass: built on every
    request, and a frozen dataclass's __init__ sets each field through object.__setattr__
    (~1.4 us against ~0.5 us)."""

    model: str
    task_class: TaskClass
    path: DecisionPath
    rule: str = ""  # the rule that matched ("" for explicit / sticky / fallback)
    warm_model: str = ""  # the session's warm model the choice saw (an input: logged for replay)


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    models: dict[TaskClass, str]
    default_class: TaskClass = TaskClass.GENERAL
    # A session warm on a model stays on it for sticky_ttl seconds after its last request,
    # unless the rules pick one of these classes for the new request.
    sticky_ttl: float = 900.0
    sticky_yields_to: frozenset[TaskClass] = frozenset({TaskClass.SAFETY})
    source: str = "<built in>"
    digest: str = ""  # of the file text and thresholds: a decision log names the rules it ran
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(UNCALIBRATED_THRESHOLDS))
    _by_model: dict[str, TaskClass] = field(init=False, repr=False, compare=False, default_factory=dict)
    _first_match: Callable[[RoutingContext], int] = field(init=False, repr=False, compare=False)
    _outcomes: tuple[tuple[TaskClass, DecisionPath, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_model.update({m: c for c, m in self.models.items()})
        object.__setattr__(self, "_first_match", compile_rules(self.rules))  # frozen: set once
        object.__setattr__(self, "_outcomes", (*((r.task_class, r.path, r.name) for r in self.rules),
                                               (self.default_class, DecisionPath.FALLBACK, "")))

    def task_class(self, ctx: RoutingContext) -> tuple[TaskClass, DecisionPath, str]:
        """The first matching rule's class, path and name; else the default (FALLBACK)."""
        return self._outcomes[self._first_match(ctx)]

    def task_class_interpreted(self, ctx: RoutingContext) -> tuple[TaskClass, DecisionPath, str]:
        """``task_class`` by walking the rules (the reference the compiled form is tested against)."""
        for rule in self.rules:
            if rule.matches(ctx):
                return rule.task_class, rule.path, rule.name
        return self.default_class, DecisionPath.FALLBACK, ""

    def served_models(self) -> frozenset[str]:
        return frozenset(self.models.values())

    def class_of(self, model: str) -> TaskClass | None:
        return self._by_model.get(model)


def compile_rules(rules: tuple[Rule, ...]) -> Callable[[RoutingContext], int]:
    """One function: the index of the first rule whose conditions all hold, else
    ``len(rules)``. Walking the rules costs a method call a rule and one a condition
    (~2 us a request on this project's box); the compiled form is one call.

    Safe to build from a rules file: a field is one of the RoutingContext names the
    parser allows, an operator one of ``_OPS``, and values are never written into the
    source (each is a default argument).
    """
    values: dict[str, float] = {}
    lines = []
    for i, rule in enumerate(rules):
        tests = []
        for condition in rule.conditions:
            if condition.field not in _NUMBER_FIELDS and condition.field not in _ENUM_FIELDS:
                raise RulesError(f"cannot compile a condition on {condition.field!r}")
            if condition.op not in _OPS:
                raise RulesError(f"cannot compile the operator {condition.op!r}")
            name = f"_v{len(values)}"
            values[name] = condition.value
            tests.append(f"ctx.{condition.field} {condition.op} {name}")
        lines.append(f"    if {' and '.join(tests) or 'True'}: return {i}")
    arguments = "".join(f", {name}={name}" for name in values)
    source = f"def first_match(ctx{arguments}):\n" + "\n".join(lines) + f"\n    return {len(rules)}\n"
    namespace: dict[str, Any] = dict(values)
    exec(compile(source, "<router.rules.compile_rules>", "exec"), namespace)
    return namespace["first_match"]  # type: ignore[no-any-return]


def decide_model(rules: RuleSet, ctx: RoutingContext, warm_model: str = "") -> ModelChoice:
    """The model for ``ctx``: explicit model, else the rules, else stay warm.

    ``warm_model`` is the model the request's session last used (from the session table;
    "" when none): the session stays on it unless the rules now pick a class the file says
    stickiness yields to (by default safety), or that model is no longer served, or it is
    the model of such a class.
    """
    if ctx.requested_model:
        try:
            wanted = slug(ctx.requested_model)
        except BadName:
            wanted = ""
        task_class = rules.class_of(wanted)
        if task_class is None:
            raise UnknownModel(
                f"model {ctx.requested_model!r} is not served here; "
                f"use 'auto' or one of {sorted(rules.served_models())}"
            )
        return ModelChoice(wanted, task_class, DecisionPath.EXPLICIT, warm_model=warm_model)
    task_class, path, name = rules.task_class(ctx)
    model = rules.models[task_class]
    if warm_model and warm_model != model and task_class not in rules.sticky_yields_to:
        warm_class = rules.class_of(warm_model)
        # Never *held* on a yield_to model either: after an unsafe turn, the next benign
        # one goes where the rules say, not to the policy model.
        if warm_class is not None and warm_class not in rules.sticky_yields_to:
            return ModelChoice(warm_model, warm_class, DecisionPath.STICKY, name, warm_model)
    return ModelChoice(model, task_class, path, name, warm_model)


# ---- loading -----------------------------------------------------------------------


def default_rules_text() -> str:
    return resources.files("router").joinpath("data", DEFAULT_RULES_FILE).read_text("utf-8")


def load_rules(path: Path | str | None = None, thresholds: Mapping[str, float] | None = None) -> RuleSet:
    """Read a rules file (``None``: the shipped defaults); raises RulesError naming the problem.

    ``thresholds`` are the scorer's calibrated thresholds, used where a rule says
    ``calibrated``.
    """
    if path is None:
        return parse_rules(default_rules_text(), f"router/data/{DEFAULT_RULES_FILE}", thresholds)
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{path}: cannot read: {exc}") from exc
    return parse_rules(text, str(path), thresholds)


def parse_rules(text: str, source: str, thresholds: Mapping[str, float] | None = None) -> RuleSet:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from exc
    calibrated = dict(UNCALIBRATED_THRESHOLDS)
    calibrated.update(thresholds or {})
    known = {"default", "models", "sticky", "rule"}
    if extra := sorted(set(doc) - known):
        raise RulesError(f"{source}: unknown top-level key(s) {extra}; expected {sorted(known)}")
    models = _parse_models(doc.get("models"), source)
    default_class = _task_class(doc.get("default", "general"), f"{source}: default")
    sticky = doc.get("sticky", {})
    if not isinstance(sticky, dict):
        raise RulesError(f"{source}: [sticky] must be a table")
    ttl = sticky.get("ttl_seconds", 900.0)
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl < 0:
        raise RulesError(f"{source}: sticky.ttl_seconds must be a number >= 0, not {ttl!r}")
    yields = sticky.get("yield_to", ["safety"])
    if not isinstance(yields, list):
        raise RulesError(f"{source}: sticky.yield_to must be a list of task classes")
    yield_to = frozenset(_task_class(c, f"{source}: sticky.yield_to") for c in yields)
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{source}: rules are [[rule]] tables")
    rules = tuple(_parse_rule(i + 1, raw, source, calibrated) for i, raw in enumerate(raw_rules))
    digest = hashlib.sha256((text + repr(sorted(calibrated.items()))).encode()).hexdigest()[:16]
    return RuleSet(
        rules=rules, models=models, default_class=default_class, sticky_ttl=float(ttl),
        sticky_yields_to=yield_to, source=source, digest=digest, thresholds=calibrated,
    )


def _parse_models(raw: Any, source: str) -> dict[TaskClass, str]:
    if not isinstance(raw, dict):
        raise RulesError(f"{source}: [models] table missing (task class = model name)")
    models: dict[TaskClass, str] = {}
    for key, model in raw.items():
        task_class = _task_class(key, f"{source}: [models]")
        if not isinstance(model, str) or not is_token(model):
            raise RulesError(
                f"{source}: [models] {key} = {model!r}: a model name must be 1-64 of a-z, 0-9, '-', '_'")
        models[task_class] = model
    if missing := [c.name.lower() for c in TaskClass if c not in models]:
        raise RulesError(f"{source}: [models] has no model for {missing}")
    return models


def _task_class(name: Any, where: str) -> TaskClass:
    try:
        return TaskClass[str(name).upper()]
    except KeyError:
        raise RulesError(
            f"{where}: unknown task class {name!r}; one of {[c.name.lower() for c in TaskClass]}"
        ) from None


def _parse_rule(number: int, raw: Any, source: str, calibrated: Mapping[str, float]) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"{source}: rule {number} must be a table")
    name = str(raw.get("name", f"rule {number}"))
    where = f"{source}: rule {number} ({name!r})"
    if extra := sorted(set(raw) - {"name", "when", "class"}):
        raise RulesError(f"{where}: unknown key(s) {extra}; a rule has name, when, class")
    if "class" not in raw:
        raise RulesError(f"{where}: no class")
    task_class = _task_class(raw["class"], where)
    when = raw.get("when", "always")
    if not isinstance(when, str):
        raise RulesError(f"{where}: when must be a string like 'prompt_tokens <= 800'")
    conditions: tuple[Condition, ...] = ()
    if when.strip() != "always":
        conditions = tuple(_parse_condition(part, where, calibrated) for part in when.split(" and "))
    reads_scorer = any(c.field in SCORER_FIELDS for c in conditions)
    return Rule(name, task_class, conditions, DecisionPath.SCORER if reads_scorer else DecisionPath.RULE)


def _parse_condition(text: str, where: str, calibrated: Mapping[str, float]) -> Condition:
    match = _CONDITION.match(text)
    if not match:
        raise RulesError(f"{where}: cannot read condition {text.strip()!r}; write <field> <op> <value>, "
                         f"op one of {list(_OPS)}")
    name, op, raw = match.groups()
    if name in _ENUM_FIELDS:
        kind = _ENUM_FIELDS[name]
        try:
            value: float = int(kind[raw.upper()])
        except KeyError:
            raise RulesError(f"{where}: {name} is one of {[m.name.lower() for m in kind]}, not {raw!r}") from None
    elif name in _NUMBER_FIELDS:
        if raw == "calibrated":
            if name not in CALIBRATED_FIELDS:
                raise RulesError(f"{where}: only {sorted(CALIBRATED_FIELDS)} have a calibrated threshold")
            value = calibrated[CALIBRATED_FIELDS[name]]
        else:
            try:
                value = float(raw)
            except ValueError:
                raise RulesError(f"{where}: {name} compares with a number, not {raw!r}") from None
    else:
        raise RulesError(f"{where}: unknown field {name!r}; fields: {sorted(_NUMBER_FIELDS | set(_ENUM_FIELDS))}")
    return Condition(name, op, value, _OPS[op])


DEFAULT_RULES = load_rules()
DEFAULT_MODELS: dict[TaskClass, str] = dict(DEFAULT_RULES.models)
