"""Classify requests offline with the router's own model choice (what-if analysis).

Reads JSONL of ``{"id", "request": {...}}`` (other keys ignored) and writes one line per
request: ``{"id", "task_class", "model", "decision_path", "decision_us"}``. The code path
is the router's: the same context extraction, scorer, rules file and sticky-session
table (requests naming a session stick as they would in the router, in file order).
A bad line is reported on stderr with its line number and skipped; the exit code is 1
when any line failed, 0 otherwise, 2 when the rules or scorer cannot be loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import IO

import msgspec

from router.config import RouterConfig
from router.context import PrefixMemory
from router.policy import Policy, UnknownModel
from router.rules import RulesError, load_rules
from router.scorer import Scorer, ScorerError
from router.sessions import SessionTable
from subjects import codec
from subjects.codec import BadMessage
from subjects.env import read_config


class _Line(msgspec.Struct):
    id: str
    request: msgspec.Raw


class _Out(msgspec.Struct):
    id: str
    task_class: str
    model: str
    decision_path: str
    decision_us: float


_line_decoder = msgspec.json.Decoder(_Line)
_encoder = msgspec.json.Encoder()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, required=True, help="JSONL requests ('-' for stdin)")
    parser.add_argument("--output", type=Path, required=True, help="JSONL decisions ('-' for stdout)")
    parser.add_argument("--rules", help="rules TOML (default: SLM_RULES_PATH, else the shipped rules)")
    parser.add_argument("--scorer", help="scorer model (default: SLM_SCORER_PATH, else the shipped model)")


def load_policy(rules_path: str | None, scorer_path: str | None) -> Policy:
    """The router's Policy from the same settings the router reads."""
    config = read_config(RouterConfig, os.environ)
    scorer = Scorer.load(scorer_path or config.scorer_path or None)
    rules = load_rules(rules_path or config.rules_path or None, scorer.thresholds)
    return Policy(rules, PrefixMemory(), scorer=scorer, sessions=SessionTable(config.session_capacity))


def classify_lines(policy: Policy, lines: IO[bytes], out: IO[bytes], errors: IO[str]) -> tuple[int, int]:
    """Classify every line; returns (classified, failed)."""
    done = failed = 0
    clock = time.perf_counter
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = _line_decoder.decode(line)
            request = codec.decode_request(bytes(row.request), f"line {number}")
            if not request.messages:
                raise ValueError("request.messages: must hold at least one message")
            started = clock()
            ctx = policy.context(request)
            choice = policy.choose_model(ctx, time.monotonic())
            took = clock() - started
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            failed += 1
            print(f"line {number}: not a {{\"id\", \"request\"}} object: {exc}", file=errors)
            continue
        except (BadMessage, ValueError) as exc:  # ValueError covers UnknownModel
            failed += 1
            reason = exc.reason if isinstance(exc, BadMessage) else str(exc)
            kind = "unknown model" if isinstance(exc, UnknownModel) else "bad request"
            print(f"line {number} (id {row.id!r}): {kind}: {reason}", file=errors)
            continue
        out.write(_encoder.encode(_Out(
            row.id, choice.task_class.name.lower(), choice.model, choice.path.name.lower(),
            round(took * 1e6, 1))) + b"\n")
        done += 1
    return done, failed


def run(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.rules, args.scorer)
    except (RulesError, ScorerError) as exc:
        print(f"classify: {exc}", file=sys.stderr)
        return 2
    source = sys.stdin.buffer if str(args.input) == "-" else None
    sink = sys.stdout.buffer if str(args.output) == "-" else None
    try:
        with (source or args.input.open("rb")) as lines, (sink or args.output.open("wb")) as out:
            done, failed = classify_lines(policy, lines, out, sys.stderr)
    except OSError as exc:
        print(f"classify: {exc}", file=sys.stderr)
        return 2
    print(f"classify: {done} classified, {failed} failed", file=sys.stderr)
    return 1 if failed else 0
