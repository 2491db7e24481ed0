"""``slm-fabric``: one entry point, one module per subcommand.

Each module in COMMANDS has ``add_arguments(parser)`` and ``run(args) -> int``; its
docstring's first line is the command's help. Exit codes: 0 ok, 1 the work failed
(requests errored, a component died), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from subjects.env import BadConfig

COMMANDS: dict[str, str] = {
    "up": "fabric.commands.up",
    "ask": "fabric.commands.ask",
    "router": "fabric.commands.router",
    "worker": "fabric.commands.worker",
    "nats-config": "fabric.commands.nats_config",
    "replay": "fabric.commands.replay",
    "train-scorer": "fabric.commands.train_scorer",
    "classify": "fabric.commands.classify",
    "replay-decisions": "fabric.commands.replay_decisions",
    "lag": "fabric.commands.lag",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm-fabric", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or name).strip().splitlines()[0]
        cmd = sub.add_parser(name, help=doc, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args))
    except BadConfig as exc:
        print(f"slm-fabric {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
