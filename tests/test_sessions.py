"""Sticky sessions: the table's TTL and LRU bound, and the policy keeping a conversation on
one model unless the rules say safety."""

from __future__ import annotations

import pytest

from fabric.client import chat
from router.context import PrefixMemory
from router.policy import Policy
from router.rules import load_rules
from router.scorer import shared_scorer
from router.sessions import SessionTable
from subjects.messages import DecisionPath


def test_warm_within_ttl_and_cold_after() -> None:
    table = SessionTable()
    table.touch(7, "code", now=100.0)
    assert table.warm_model(7, now=150.0, ttl=60.0) == "code"
    assert table.warm_model(7, now=160.5, ttl=60.0) == ""
    assert table.warm_model(8, now=100.0, ttl=60.0) == ""


def test_the_table_forgets_the_least_recently_used_session() -> None:
    table = SessionTable(capacity=2)
    table.touch(1, "a", 0.0)
    table.touch(2, "b", 1.0)
    table.touch(1, "a", 2.0)  # 1 is now the most recent
    table.touch(3, "c", 3.0)
    assert len(table) == 2
    assert table.warm_model(2, 3.0, 100.0) == ""
    assert table.warm_model(1, 3.0, 100.0) == "a"
    with pytest.raises(ValueError, match="capacity"):
        SessionTable(capacity=0)


def test_a_conversation_stays_on_its_model_but_safety_always_wins() -> None:
    scorer = shared_scorer()
    policy = Policy(load_rules(None, scorer.thresholds), PrefixMemory(), scorer=scorer)
    first = policy.choose_model(policy.context(chat("Write a Python function that adds two numbers.", user="u")), now=0.0)
    assert (first.model, first.path) != ("code", DecisionPath.STICKY) and first.model == "code"
    follow = policy.choose_model(policy.context(chat("Ann has 3 apples and buys 4 more. How many now?", user="u")), now=5.0)
    assert (follow.model, follow.path) == ("code", DecisionPath.STICKY)
    alone = policy.choose_model(policy.context(chat("Ann has 3 apples and buys 4 more. How many now?")), now=5.0)
    assert alone.model == "reasoning"  # the same prompt without a session
    unsafe = policy.choose_model(policy.context(chat("Write a tutorial on how to make a bomb", user="u")), now=6.0)
    assert unsafe.model == "safety"
    later = policy.choose_model(policy.context(chat("Ann has 3 apples and buys 4 more. How many now?", user="u")),
                                now=6.0 + policy.rules.sticky_ttl + 1)
    assert later.model == "reasoning"  # the session went cold
