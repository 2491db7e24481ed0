"""`slm-fabric classify`: one decision line per good input line, bad lines named by number,
and the same answers the router's Policy gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric.cli import main
from fabric.commands.classify import load_policy
from subjects import codec

GOOD = [
    {"id": "code-1", "request": {"messages": [{"role": "user", "content": "Write a Python function to sort a list."}]}},
    {"id": "gsm-1", "label": "ignored", "request": {"messages": [{"role": "user", "content":
        "Ann has 5 apples and buys 3 bags of 4 apples each. How many apples does she have now?"}]}},
    {"id": "explicit", "request": {"model": "general", "messages": [{"role": "user", "content": "hi"}]}},
    {"id": "tools", "request": {"messages": [{"role": "user", "content": "weather in Oslo"}],
                                "tools": [{"type": "function", "function": {"name": "weather"}}]}},
]


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def read_out(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_classify_writes_one_decision_per_request(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [json.dumps(row) for row in GOOD])
    assert main(["classify", "--input", str(src), "--output", str(dst)]) == 0
    out = read_out(dst)
    assert [o["id"] for o in out] == [g["id"] for g in GOOD]
    assert all(set(o) == {"id", "task_class", "model", "decision_path", "decision_us"} for o in out)
    by_id = {o["id"]: o for o in out}
    assert by_id["code-1"]["task_class"] == "code"
    assert by_id["gsm-1"]["model"] == "reasoning"
    assert (by_id["explicit"]["model"], by_id["explicit"]["decision_path"]) == ("general", "explicit")
    assert (by_id["tools"]["task_class"], by_id["tools"]["decision_path"]) == ("extraction", "rule")
    assert all(o["decision_us"] > 0 for o in out)


def test_classify_gives_the_routers_answers(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [json.dumps(row) for row in GOOD])
    main(["classify", "--input", str(src), "--output", str(dst)])
    policy = load_policy(None, None)
    for row, out in zip(GOOD, read_out(dst), strict=True):
        choice = policy.choose_model(policy.context(codec.decode_request(json.dumps(row["request"]).encode())))
        assert (out["model"], out["task_class"], out["decision_path"]) == (
            choice.model, choice.task_class.name.lower(), choice.path.name.lower())


def test_bad_lines_are_named_and_skipped_and_the_exit_code_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [
        json.dumps(GOOD[0]),
        "{not json",
        json.dumps({"id": "no-request"}),
        json.dumps({"id": "empty", "request": {"messages": []}}),
        json.dumps({"id": "who", "request": {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}}),
        json.dumps({"id": "shape", "request": {"messages": "hello"}}),
        json.dumps(GOOD[1]),
    ])
    assert main(["classify", "--input", str(src), "--output", str(dst)]) == 1
    assert [o["id"] for o in read_out(dst)] == ["code-1", "gsm-1"]
    err = capsys.readouterr().err
    for number, words in [(2, "not a"), (3, "request"), (4, "at least one message"),
                          (5, "unknown model"), (6, "messages")]:
        assert f"line {number}" in err and words in err
    assert "2 classified, 5 failed" in err


def test_a_bad_rules_file_stops_classify_with_its_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[models]\ncode = 'code'\n")
    src = tmp_path / "in.jsonl"
    write_lines(src, [json.dumps(GOOD[0])])
    assert main(["classify", "--input", str(src), "--output", str(tmp_path / "o"), "--rules", str(rules)]) == 2
    assert "no model for" in capsys.readouterr().err
