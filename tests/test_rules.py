"""The rule stage: the default rules one by one, their order, explicit models, stickiness,
and rules files that must be refused with an error naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.rules import (
    DEFAULT_RULES,
    RulesError,
    UnknownModel,
    decide_model,
    default_rules_text,
    load_rules,
    parse_rules,
)
from subjects.messages import (
    DecisionPath,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
    TaskClass,
)

THRESHOLDS = {"safety": 0.6, "complexity": 0.7}
RULES = parse_rules(default_rules_text(), "defaults", THRESHOLDS)


def ctx(**fields: Any) -> RoutingContext:
    base: dict[str, Any] = dict(
        prompt_tokens=100, code_markers=0, structured=Structured.NONE, script=Script.LATIN,
        safety=SafetyCategory.NONE, session_hash=0, prefix_hashes=(), prefix_seen_depth=0,
        complexity=0.0, requested_model="", max_tokens=0, scorer_class=TaskClass.GENERAL,
        scorer_confidence=0.0, safety_score=0.0,
    )
    base.update(fields)
    return RoutingContext(**base)


# ---- each default rule, and the fallback -------------------------------------------------

@pytest.mark.parametrize(("fields", "task_class", "path"), [
    ({"safety_score": 0.6}, TaskClass.SAFETY, DecisionPath.SCORER),
    ({"structured": Structured.TOOLS, "prompt_tokens": 800}, TaskClass.EXTRACTION, DecisionPath.RULE),
    ({"structured": Structured.JSON_TEXT, "prompt_tokens": 10}, TaskClass.EXTRACTION, DecisionPath.RULE),
    ({"code_markers": 1}, TaskClass.CODE, DecisionPath.RULE),
    ({"complexity": 0.7}, TaskClass.REASONING, DecisionPath.SCORER),
    ({"scorer_class": TaskClass.EXTRACTION}, TaskClass.EXTRACTION, DecisionPath.SCORER),
    ({"scorer_class": TaskClass.CODE}, TaskClass.CODE, DecisionPath.SCORER),
    ({"scorer_class": TaskClass.GENERAL}, TaskClass.GENERAL, DecisionPath.SCORER),
    # The scorer leans to reasoning or safety but under the calibrated thresholds: fallback.
    ({"scorer_class": TaskClass.REASONING, "complexity": 0.69}, TaskClass.GENERAL, DecisionPath.FALLBACK),
    ({"scorer_class": TaskClass.SAFETY, "safety_score": 0.59}, TaskClass.GENERAL, DecisionPath.FALLBACK),
])
def test_each_default_rule(fields: dict[str, Any], task_class: TaskClass, path: DecisionPath) -> None:
    choice = decide_model(RULES, ctx(**fields))
    assert (choice.task_class, choice.path) == (task_class, path)
    assert choice.model == RULES.models[task_class]


def test_structured_output_over_the_token_limit_is_not_extraction() -> None:
    choice = decide_model(RULES, ctx(structured=Structured.RESPONSE_FORMAT, prompt_tokens=801))
    assert choice.task_class == TaskClass.GENERAL


def test_default_rules_are_checked_in_order() -> None:
    everything = dict(safety_score=0.9, structured=Structured.TOOLS, code_markers=1, complexity=0.9,
                      scorer_class=TaskClass.EXTRACTION)
    order = [TaskClass.SAFETY, TaskClass.EXTRACTION, TaskClass.CODE, TaskClass.REASONING, TaskClass.EXTRACTION]
    seen = []
    # Switch off the winning condition each time: the next rule in file order must win.
    switch_off = [{"safety_score": 0.0}, {"structured": Structured.NONE}, {"code_markers": 0},
                  {"complexity": 0.0}, {"scorer_class": TaskClass.GENERAL}]
    for off in switch_off:
        seen.append(decide_model(RULES, ctx(**everything)).task_class)
        everything.update(off)
    assert seen == order


def test_calibrated_means_the_scorer_threshold() -> None:
    lower = parse_rules(default_rules_text(), "defaults", {"safety": 0.2, "complexity": 0.7})
    c = ctx(safety_score=0.3)
    assert decide_model(RULES, c).task_class == TaskClass.GENERAL
    assert decide_model(lower, c).task_class == TaskClass.SAFETY


# ---- explicit model and sticky sessions ---------------------------------------------------

def test_explicit_served_model_wins_over_every_rule() -> None:
    choice = decide_model(RULES, ctx(requested_model="Code", safety_score=1.0), warm_model="general")
    assert (choice.model, choice.task_class, choice.path) == ("code", TaskClass.CODE, DecisionPath.EXPLICIT)


@pytest.mark.parametrize("name", ["gpt-9", "!!!", "reasoning-large"])
def test_unknown_explicit_model_is_refused_naming_the_served_ones(name: str) -> None:
    with pytest.raises(UnknownModel, match=r"not served here.*'code'"):
        decide_model(RULES, ctx(requested_model=name))


def test_a_warm_session_stays_on_its_model() -> None:
    choice = decide_model(RULES, ctx(complexity=0.9), warm_model="general")
    assert (choice.model, choice.task_class, choice.path) == ("general", TaskClass.GENERAL, DecisionPath.STICKY)
    assert choice.warm_model == "general"


def test_stickiness_yields_to_safety_and_to_models_no_longer_served() -> None:
    assert decide_model(RULES, ctx(safety_score=0.9), warm_model="general").path == DecisionPath.SCORER
    gone = decide_model(RULES, ctx(complexity=0.9), warm_model="retired-model")
    assert (gone.model, gone.path) == ("reasoning", DecisionPath.SCORER)


# ---- rules files ----------------------------------------------------------------------------

def test_shipped_file_and_built_in_defaults_agree() -> None:
    assert [r.name for r in DEFAULT_RULES.rules] == [r.name for r in RULES.rules]
    assert DEFAULT_RULES.served_models() == {"extraction", "code", "reasoning", "safety", "general"}
    assert DEFAULT_RULES.sticky_yields_to == {TaskClass.SAFETY}


def test_a_custom_file_with_its_own_order_and_models(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("""
default = "reasoning"
[models]
extraction = "small"
code = "coder"
reasoning = "big"
safety = "guard"
general = "small"
[[rule]]
name = "long prompts"
when = "prompt_tokens > 4000"
class = "general"
[[rule]]
name = "cyrillic"
when = "script == cyrillic and max_tokens <= 64"
class = "extraction"
""")
    rules = load_rules(path)
    assert decide_model(rules, ctx(prompt_tokens=5000)).model == "small"
    cyr = decide_model(rules, ctx(script=Script.CYRILLIC, max_tokens=10))
    assert (cyr.model, cyr.rule) == ("small", "cyrillic")
    assert decide_model(rules, ctx()).path == DecisionPath.FALLBACK
    assert decide_model(rules, ctx()).model == "big"


def _rules_with(rule_lines: str, top: str = "") -> str:
    models = "[models]\n" + "".join(f'{c.name.lower()} = "{c.name.lower()}"\n' for c in TaskClass)
    return f"{top}\n{models}\n[[rule]]\n{rule_lines}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("not = [toml", "not valid TOML"),
    (_rules_with('when = "prompt_token > 5"\nclass = "code"'), "unknown field 'prompt_token'"),
    (_rules_with('when = "prompt_tokens ~ 5"\nclass = "code"'), "cannot read condition"),
    (_rules_with('when = "structured == yaml"\nclass = "code"'), "structured is one of"),
    (_rules_with('when = "prompt_tokens >= calibrated"\nclass = "code"'), "calibrated threshold"),
    (_rules_with('when = "prompt_tokens >= lots"\nclass = "code"'), "compares with a number"),
    (_rules_with('when = "always"\nclass = "poetry"'), "unknown task class 'poetry'"),
    (_rules_with('when = "always"'), "no class"),
    (_rules_with('when = "always"\nclass = "code"\nweight = 3'), "unknown key"),
    (_rules_with('when = "always"\nclass = "code"', top="[sticky]\nttl_seconds = -1"), "ttl_seconds"),
    ('[models]\ncode = "code"', "no model for"),
    ('[models]\nextraction = "Has Spaces"', "model name"),
])
def test_bad_rules_files_are_refused_with_the_problem_named(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message) as caught:
        parse_rules(text, "my-rules.toml")
    assert "my-rules.toml" in str(caught.value)


def test_missing_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")


# ---- properties -----------------------------------------------------------------------------

contexts = st.builds(
    RoutingContext,
    prompt_tokens=st.integers(0, 1 << 20), code_markers=st.integers(0, 63),
    structured=st.sampled_from(Structured), script=st.sampled_from(Script),
    safety=st.sampled_from(SafetyCategory), session_hash=st.integers(0, (1 << 63) - 1),
    prefix_hashes=st.tuples(), prefix_seen_depth=st.just(0),
    complexity=st.floats(0, 1), requested_model=st.just(""), max_tokens=st.integers(0, 1 << 16),
    scorer_class=st.sampled_from(TaskClass), scorer_confidence=st.floats(0, 1),
    safety_score=st.floats(0, 1),
)


@given(contexts, st.sampled_from(["", "general", "code", "retired"]))
def test_every_context_gets_exactly_one_served_model(c: RoutingContext, warm: str) -> None:
    for rules in (RULES, DEFAULT_RULES):
        choice = decide_model(rules, c, warm)
        assert choice.model in rules.served_models()
        assert rules.models[choice.task_class] == choice.model
        assert choice.path in DecisionPath
        assert choice == decide_model(rules, c, warm)  # pure: the same answer again



# ---- the compiled rule list is the rule list -----------------------------------------------

conditions = st.tuples(
    st.sampled_from(["prompt_tokens", "code_markers", "max_tokens", "complexity", "safety_score",
                     "scorer_confidence", "structured", "scorer_class", "safety"]),
    st.sampled_from(["==", "!=", "<", "<=", ">", ">="]))


def condition_text(field: str, op: str, draw_value: int) -> str:
    enums = {"structured": Structured, "scorer_class": TaskClass, "safety": SafetyCategory}
    if field in enums:
        members = list(enums[field])
        return f"{field} {op} {members[draw_value % len(members)].name.lower()}"
    return f"{field} {op} {draw_value / 10 if field in ('complexity', 'safety_score', 'scorer_confidence') else draw_value * 100}"


rule_lists = st.lists(st.lists(st.tuples(conditions, st.integers(0, 10)), min_size=0, max_size=3),
                      min_size=0, max_size=6)


@given(rule_lists, contexts)
def test_compiled_rules_choose_what_walking_the_rules_chooses(raw_rules: list, context: RoutingContext) -> None:
    # Random rule files: any fields, operators and values, "always" rules, no rules at all.
    text = default_rules_text().split("[[rule]]")[0]
    for number, conds in enumerate(raw_rules):
        when = " and ".join(condition_text(f, op, v) for (f, op), v in conds) or "always"
        task_class = list(TaskClass)[number % len(TaskClass)].name.lower()
        text += f'\n[[rule]]\nname = "r{number}"\nwhen = "{when}"\nclass = "{task_class}"\n'
    rules = parse_rules(text, "generated", THRESHOLDS)
    assert rules.task_class(context) == rules.task_class_interpreted(context)
