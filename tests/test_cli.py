"""The command line as a user runs it: real OS processes, an embedded nats-server."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

import fabric.serve as serve
from fabric.cli import build_parser, main
from router.config import RouterConfig


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


@pytest.mark.parametrize("capacity", ["1", str(2**32 + 1)])
def test_a_placement_capacity_the_memory_cannot_hold_exits_2_naming_it(monkeypatch, capsys, capacity):
    """Refused at start, not at a model's first heartbeat inside the running router (the
    C placement map takes at most 2**32 prefixes, and below 2 means nothing)."""
    monkeypatch.setenv("SLM_PLACEMENT_CAPACITY", capacity)
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["router", "--nats-url", "nats://127.0.0.1:1"]))
    assert info.value.code == 2
    assert "placement_capacity" in capsys.readouterr().err


def test_the_router_process_freezes_its_startup_objects_before_it_serves(monkeypatch):
    """serve_router hides the router's startup objects from the garbage collector before
    serving (a full collection walked them all: ~20 ms with no request moving)."""
    frozen_when_serving: list[int] = []

    class ServesNothing(serve.Router):
        async def run(self) -> None:
            frozen_when_serving.append(gc.get_freeze_count())

    monkeypatch.setattr(serve, "Router", ServesNothing)
    monkeypatch.setattr(serve, "_on_signals", lambda stop: None)
    assert gc.get_freeze_count() == 0
    try:
        assert serve.serve_router(RouterConfig(nats_url="nats://127.0.0.1:1", metrics_port=0)) == 0
    finally:
        gc.unfreeze()
    assert frozen_when_serving and frozen_when_serving[0] > 10_000
