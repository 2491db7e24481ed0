"""Run one router against an existing NATS (settings: SLM_* variables, flags win)."""

from __future__ import annotations

import argparse
import os

from fabric.serve import serve_router, setup_logging
from router.config import RouterConfig
from subjects.env import read_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", help="NATS server URL (SLM_NATS_URL)")
    parser.add_argument("--prefix", help="subject prefix (SLM_PREFIX)")
    parser.add_argument("--queue-bound", type=int, help="messages per replica queue (SLM_QUEUE_BOUND)")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics here (SLM_METRICS_PORT)")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    config = read_config(RouterConfig, os.environ, nats_url=args.nats_url, prefix=args.prefix,
                         queue_bound=args.queue_bound, metrics_port=args.metrics_port)
    return serve_router(config)
