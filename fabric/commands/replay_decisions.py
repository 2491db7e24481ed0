"""Re-run the model choice on every context in a decision log and report differences.

The router writes the log when SLM_DECISION_LOG names a file. Each record holds the
RoutingContext and the session's warm model, so the pure model choice replays exactly;
with the rules that made the log, every decision must come out the same. With other
rules (--rules) the mismatches show what those rules would change. Exit codes: 0 every
decision replayed the same, 1 mismatches, 2 the log, rules or scorer cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from router.config import RouterConfig
from router.decision_log import LogError, replay
from router.rules import RulesError, load_rules
from router.scorer import Scorer, ScorerError
from subjects.env import read_config

_SHOWN = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", type=Path, help="a decision log file")
    parser.add_argument("--rules", help="rules TOML (default: SLM_RULES_PATH, else the shipped rules)")
    parser.add_argument("--scorer", help="scorer model whose calibrated thresholds the rules use "
                                         "(default: SLM_SCORER_PATH, else the shipped model)")


def run(args: argparse.Namespace) -> int:
    config = read_config(RouterConfig, os.environ)
    try:
        scorer = Scorer.load(args.scorer or config.scorer_path or None)
        rules = load_rules(args.rules or config.rules_path or None, scorer.thresholds)
        result = replay(args.log, rules)
    except (OSError, LogError, RulesError, ScorerError) as exc:
        print(f"replay-decisions: {exc}", file=sys.stderr)
        return 2
    for header in result.headers:
        if header.rules_digest != rules.digest:
            print(f"note: part of the log was decided by other rules ({header.rules_source}, "
                  f"digest {header.rules_digest}; replaying with {rules.source}, digest {rules.digest})")
    for m in result.mismatches[:_SHOWN]:
        logged = f"{m.logged.model}/{m.logged.task_class.name.lower()}/{m.logged.path.name.lower()}"
        print(f"record {m.index}: logged {logged}, replayed {m.replayed}")
    if len(result.mismatches) > _SHOWN:
        print(f"... and {len(result.mismatches) - _SHOWN} more")
    print(f"{result.records} decisions replayed, {len(result.mismatches)} mismatches")
    return 1 if result.mismatches else 0
