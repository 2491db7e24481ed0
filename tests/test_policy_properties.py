"""Properties of the whole model choice on generated requests and contexts: exactly one
served model for any well-formed request; malformed context fields refused, named."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.context import BadContext, PrefixMemory, check_context
from router.decision_log import DecisionRecord, LogError, frame, read_log
from router.policy import Policy
from router.rules import load_rules
from router.scorer import shared_scorer
from router.sessions import SessionTable
from subjects.messages import ChatMessage, ChatRequest, DecisionPath, RoutingContext, TaskClass

SCORER = shared_scorer()
RULES = load_rules(None, SCORER.thresholds)
SERVED = sorted(RULES.served_models())

words = st.sampled_from([
    "write", "a", "python", "function", "kill", "process", "how", "many", "apples", "json",
    "only", "summarize", "the", "dialogue", "bomb", "poem", "```", "def", "f(x):", "42", "?",
    "Привет", "東京", "traceback", "error:", "classify", "sentiment", "\n",
])
text = st.one_of(st.lists(words, max_size=80).map(" ".join),
                 st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
messages = st.lists(
    st.builds(ChatMessage, role=st.sampled_from(["system", "user", "assistant"]), content=text),
    min_size=1, max_size=5)
requests = st.builds(
    ChatRequest,
    messages=messages,
    model=st.sampled_from(["auto", *SERVED, "Code", "GENERAL"]),
    max_tokens=st.one_of(st.none(), st.integers(1, 4096)),
    tools=st.one_of(st.none(), st.just([{"type": "function", "function": {"name": "f"}}])),
    response_format=st.one_of(st.none(), st.just({"type": "json_object"})),
    session_id=st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3"])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6))
def test_every_well_formed_request_gets_exactly_one_served_model(batch: list[ChatRequest]) -> None:
    policy = Policy(RULES, PrefixMemory(), scorer=SCORER, sessions=SessionTable())
    for now, request in enumerate(batch):
        ctx = policy.context(request)
        check_context(ctx)
        choice = policy.choose_model(ctx, float(now))
        assert choice.model in SERVED
        assert RULES.models[choice.task_class] == choice.model
        if request.model != "auto":
            assert choice.path == DecisionPath.EXPLICIT and choice.model == request.model.lower()


# Each field with values of the right type the router could never have built, and values
# of the wrong type; both must be refused naming the field.
BAD_VALUES: dict[str, list[Any]] = {
    "prompt_tokens": [-1, "many", 1.5],
    "code_markers": [1 << 12, -3, "fence"],
    "structured": [9, "tools"],
    "script": [99, None],
    "safety": [42, "violence"],
    "session_hash": [-5, 1 << 64, "alice"],
    "prefix_hashes": [[1, "x"], "abc"],
    "complexity": [1.01, -0.2, float("inf"), "high"],
    "requested_model": [7, None],
    "scorer_class": [17, "code"],
    "scorer_confidence": [2.0, "sure"],
    "safety_score": [-0.5, float("nan")],
}
FIELDS = RoutingContext.__struct_fields__


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(sorted(BAD_VALUES)).flatmap(lambda f: st.tuples(st.just(f), st.sampled_from(BAD_VALUES[f]))))
def test_malformed_context_fields_are_refused_naming_the_field(tmp_path_factory: pytest.TempPathFactory,
                                                               case: tuple[str, Any]) -> None:
    field, value = case
    ctx = Policy(RULES, PrefixMemory(), scorer=SCORER).context(
        ChatRequest(messages=[ChatMessage(role="user", content="hello there")]))
    record = DecisionRecord(0.0, ctx, "", "general", TaskClass.GENERAL, DecisionPath.RULE)
    as_list = msgspec.msgpack.decode(msgspec.msgpack.encode(record))
    as_list[1][FIELDS.index(field)] = value
    path = tmp_path_factory.mktemp("log") / "bad.log"
    try:
        path.write_bytes(frame(msgspec.msgpack.encode(as_list)))
    except OverflowError:  # msgpack has no integers this wide: it cannot even be written
        return
    with pytest.raises(LogError) as caught:
        list(read_log(path))
    assert field in str(caught.value)


def test_check_context_names_the_field() -> None:
    ctx = Policy(RULES, PrefixMemory()).context(ChatRequest(messages=[ChatMessage(role="user", content="hi")]))
    with pytest.raises(BadContext, match="safety_score"):
        check_context(msgspec.structs.replace(ctx, safety_score=3.0))
