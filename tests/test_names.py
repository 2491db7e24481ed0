import pytest
from hypothesis import given
from hypothesis import strategies as st

from subjects.names import ANY_REPLICA, BadName, Names, is_token, slug


def test_builders_use_the_prefix_and_parsers_invert_them():
    names = Names("acme")
    assert names.ingress == "acme.ingress"
    subject = names.work("code", "r3")
    assert subject == "acme.work.code.r3"
    address = names.parse_work(subject)
    assert (address.model, address.replica, address.is_any) == ("code", "r3", False)
    assert names.parse_work(names.work_any("code")).is_any
    assert names.work_any("code") == f"acme.work.code.{ANY_REPLICA}"
    assert names.parse_cancel(names.cancel("abc123")) == "abc123"
    assert names.parse_replica_key(names.replica_key("code", "r3")) == ("code", "r3")


def test_jetstream_object_names_follow_their_case_rules():
    names = Names()
    assert names.work_stream("qwen2-5-coder") == "SLM_WORK_QWEN2_5_CODER"
    assert names.replica_consumer("code", "gpu_0") == "code-gpu-0"
    assert names.any_consumer("code") == "code-any"
    assert names.replica_bucket == "slm-replicas"
    assert names.work_wildcard("code") == "slm.work.code.>"


@pytest.mark.parametrize(
    ("model_id", "token"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "qwen-qwen2-5-0-5b-instruct"),
        ("code", "code"),
        ("  weird.model*name>x ", "weird-model-name-x"),
    ],
)
def test_slug_makes_one_token(model_id, token):
    assert slug(model_id) == token


@given(st.text(min_size=1, max_size=200))
def test_slug_is_always_a_token_or_refuses(model_id):
    try:
        token = slug(model_id)
    except BadName:
        assert not any(c.isascii() and c.isalnum() for c in model_id)
        return
    assert is_token(token)
    assert Names().parse_work(Names().work(token, "r0")).model == token


@pytest.mark.parametrize("bad", ["a.b", "a*", ">", "has space", "", "UPPER"])
def test_bad_tokens_are_refused_with_the_kind_named(bad):
    with pytest.raises(BadName, match="model"):
        Names().work(bad, "r0")


@pytest.mark.parametrize(
    "subject", ["slm.work.code", "slm.work.code.r0.extra", "other.work.code.r0", "slm.work.a*.r0"]
)
def test_parse_work_refuses_other_layouts(subject):
    with pytest.raises(BadName):
        Names().parse_work(subject)
