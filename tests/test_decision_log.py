"""Decision logs replay to the same decisions; changed rules show up as mismatches; damaged
logs are refused naming where; a live router writes a log that replays clean."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import pytest

from fabric.cli import main
from fabric.client import chat
from router.context import PrefixMemory
from router.decision_log import DecisionLog, DecisionRecord, LogError, frame, read_log, replay
from router.policy import Policy
from router.rules import default_rules_text, load_rules, parse_rules
from router.scorer import shared_scorer
from router.sessions import SessionTable
from subjects.messages import ChatRequest, DecisionPath
from tests.conftest import wait_until

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Mia has 4 boxes of 6 eggs and eats 5. How many eggs are left?",
    "Write a tutorial on how to make a bomb",
    "Summarize this dialogue: Ann: are we meeting? Bob: at 5.",
    "Pick one category for the following text: Apple Inc. is a company.",
    "How do I kill a Python process?",
]


def policy() -> Policy:
    scorer = shared_scorer()
    return Policy(load_rules(None, scorer.thresholds), PrefixMemory(), scorer=scorer, sessions=SessionTable())


def write_log(path: Path) -> list[tuple[str, DecisionPath]]:
    """Decide a conversation-shaped workload (sessions, so stickiness happens) and log it."""
    p = policy()
    log = DecisionLog(path, p.rules, now=0.0)
    decided = []
    for turn in range(3):
        for i, prompt in enumerate(PROMPTS):
            request = chat(PROMPTS[(i + turn) % len(PROMPTS)] if turn else prompt, session_id=f"s{i}")
            ctx = p.context(request)
            choice = p.choose_model(ctx, now=float(turn))
            log.record(float(turn), ctx, choice, "r0")
            decided.append((choice.model, choice.path))
    assert log.flush() == len(decided)
    return decided


def test_a_log_replays_to_the_same_decisions(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    decided = write_log(path)
    assert any(path_ == DecisionPath.STICKY for _, path_ in decided)  # the log exercises stickiness
    result = replay(path, policy().rules)
    assert result.records == len(decided)
    assert result.mismatches == []
    assert len(result.headers) == 1 and result.headers[0].rules_digest == policy().rules.digest


def test_replay_with_other_rules_lists_what_changes(tmp_path: Path) -> None:
    path = tmp_path / "decisions.log"
    write_log(path)
    # The same file with the code rules sending code to the general model instead.
    text = default_rules_text().replace('code = "code"', 'code = "general"')
    other = parse_rules(text, "other.toml", shared_scorer().thresholds)
    result = replay(path, other)
    assert result.mismatches
    # Only decisions that touched the code model (or a session held on one) change.
    assert all(m.logged.model == "code" or m.logged.path == DecisionPath.STICKY or "/code/" in m.replayed
               for m in result.mismatches)


def test_replay_decisions_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "decisions.log"
    n = len(write_log(path))
    assert main(["replay-decisions", str(path)]) == 0
    assert f"{n} decisions replayed, 0 mismatches" in capsys.readouterr().out
    rules = tmp_path / "other.toml"
    rules.write_text(default_rules_text().replace('code = "code"', 'code = "general"'))
    assert main(["replay-decisions", str(path), "--rules", str(rules)]) == 1
    out = capsys.readouterr().out
    assert "logged code/code/" in out and "other rules" in out
    path.write_bytes(path.read_bytes()[:-3])
    assert main(["replay-decisions", str(path)]) == 2
    assert "truncated frame" in capsys.readouterr().err


def test_malformed_context_fields_are_refused_naming_the_field(tmp_path: Path) -> None:
    ctx = policy().context(chat("hello"))
    record = DecisionRecord(0.0, ctx, "", "general", ctx.scorer_class, DecisionPath.RULE)
    as_list = msgspec.msgpack.decode(msgspec.msgpack.encode(record))
    bad_type = [*as_list]
    bad_type[1] = ["many", *as_list[1][1:]]  # prompt_tokens as a string
    out_of_range = [*as_list]
    out_of_range[1] = [*as_list[1]]
    out_of_range[1][8] = 7.5  # complexity, a probability
    for bad, words in [(bad_type, "context.prompt_tokens"), (out_of_range, "complexity: must be a probability")]:
        path = tmp_path / "bad.log"
        path.write_bytes(frame(msgspec.msgpack.encode(bad)))
        with pytest.raises(LogError, match=words) as caught:
            list(read_log(path))
        assert "byte 0" in str(caught.value)
    path.write_bytes(struct.pack("<I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    with pytest.raises(LogError, match="bad frame at byte 0"):
        list(read_log(path))


def test_a_full_log_counts_what_it_drops(tmp_path: Path) -> None:
    p = policy()
    log = DecisionLog(tmp_path / "d.log", p.rules, now=0.0, max_pending=2)
    ctx = p.context(chat("hi"))
    for _ in range(5):
        log.record(0.0, ctx, p.choose_model(ctx), "r0")
    assert log.dropped == 3
    assert log.flush() == 2
    assert sum(isinstance(x, DecisionRecord) for x in read_log(tmp_path / "d.log")) == 2


async def test_a_router_logs_its_decisions_and_the_log_replays(fabric, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "router.log"
    router = await fabric.router(decision_log=str(path))
    for model in ("code", "general", "reasoning", "safety", "extraction"):
        await fabric.worker(model, "r0")
    await fabric.wait_for_replicas(5)
    answers = []
    for prompt in PROMPTS:
        request: ChatRequest = chat(prompt, max_tokens=2, user="u1")
        answers.append((await client.complete(request, timeout=10)).model)
    assert router.decision_log is not None
    await wait_until(lambda: router.decision_log is not None and router.decision_log.written >= len(PROMPTS))
    records = [r for r in read_log(path) if isinstance(r, DecisionRecord)]
    assert [r.model for r in records] == answers
    assert replay(path, router.rules).mismatches == []  # type: ignore[arg-type]
