"""The command line as a user runs it: real OS processes, an embedded nats-server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fabric.cli import build_parser, main


def test_up_with_demo_answers_every_request_and_prints_the_summary():
    result = subprocess.run(
        [sys.executable, "-m", "fabric", "up", "--demo", "30", "--sim-time-scale", "0.05"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "embedded nats-server at nats://127.0.0.1:" in out
    for model in ("extraction", "code", "reasoning", "safety", "general"):
        assert f"worker {model}/r0" in out
    assert "TTFT p50" in out and "TTFT p99" in out
    assert "30/30 answered" in out


def test_every_command_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("up", "ask", "router", "worker"):
        assert name in commands
        assert commands[name].description


def test_a_bad_setting_exits_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("SLM_QUEUE_BOUND", "lots")
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["router", "--nats-url", "nats://127.0.0.1:1"]))
    assert info.value.code == 2
    assert "queue_bound" in capsys.readouterr().err
