"""Run one worker (a model replica) against an existing NATS."""

from __future__ import annotations

import argparse
import os
import socket

from fabric.serve import serve_worker, setup_logging
from subjects.env import env_name, read_config
from subjects.names import check_token, slug
from workers.config import WorkerConfig, replica_from_hostname


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model this replica serves (SLM_MODEL)")
    parser.add_argument("--replica", help="replica id, one subject token (SLM_REPLICA)")
    parser.add_argument("--engine", choices=("sim", "vllm"), help="engine (SLM_ENGINE)")
    parser.add_argument("--nats-url", help="NATS server URL (SLM_NATS_URL)")
    parser.add_argument("--prefix", help="subject prefix (SLM_PREFIX)")
    parser.add_argument("--max-inflight", type=int, help="concurrent requests (SLM_MAX_INFLIGHT)")
    parser.add_argument("--metrics-port", type=int, help="serve /metrics here (SLM_METRICS_PORT)")
    parser.add_argument("--sim-time-scale", type=float, help="shrink simulated delays (SLM_SIM_TIME_SCALE)")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    replica = check_token("replica", args.replica) if args.replica else _default_replica()
    config = read_config(
        WorkerConfig, os.environ, model=args.model and slug(args.model),
        replica=replica, engine=args.engine,
        nats_url=args.nats_url, prefix=args.prefix, max_inflight=args.max_inflight,
        metrics_port=args.metrics_port, sim_time_scale=args.sim_time_scale,
    )
    return serve_worker(config)


def _default_replica() -> str | None:
    """Without --replica or SLM_REPLICA, name the replica after its host (compose --scale)."""
    return None if os.environ.get(env_name("replica")) else replica_from_hostname(socket.gethostname())
