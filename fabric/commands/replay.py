"""Replay a request trace (Mooncake format) offline through the real router policy, or live.

Offline (the default): the trace's requests are expanded into chat requests, routed by N
simulated routers running the real router code (context, replica choice, placement
records, load samples) onto M simulated replicas, each an LRU block cache with a
step-based service-time model, in trace time divided by --speed. Prints the block hit
rate and its ceiling (one LRU as large as the whole fleet), TTFT mean/p50/p99, and the
worst max/mean replica load over 10 s windows, per policy.

--live sends the same requests to a running fabric (--nats-url; or --up to start one
here, with simulated workers) and measures from the client's side.

Exit codes: 0 done, 1 requests failed (live), 2 bad trace or settings.
"""

from __future__ import annotations

import argparse
import os
import sys

import msgspec
import uvloop

from fabric.client import Client
from fabric.replay.engine import ServiceModel
from fabric.replay.live import describe_live, drive, start_fabric
from fabric.replay.simulate import (
    POLICIES,
    ReplayConfig,
    ReplayError,
    describe,
    replay,
    saturation_speed,
)
from fabric.replay.trace import HotTenant, TraceError, TraceRecord, hot_tenant_trace, read_trace, write_trace
from router.replicas import ReplicaSettings
from subjects.names import DEFAULT_PREFIX


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("trace", nargs="?", help="trace file (JSON lines: timestamp ms, input_length, "
                        "output_length, hash_ids); omit with --hot-tenant")
    parser.add_argument("--hot-tenant", action="store_true",
                        help="generate the hot-tenant workload instead of reading a trace")
    parser.add_argument("--hot-seconds", type=float, default=600.0, help="hot tenant: trace length")
    parser.add_argument("--write-trace", metavar="FILE", help="write the (generated) trace and exit")
    parser.add_argument("--limit", type=int, help="replay only the first N requests")
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--cache-blocks", type=int, default=4096,
                        help="prefix-cache blocks (512 tokens) per replica (default 4096)")
    parser.add_argument("--capacity", type=int, default=ServiceModel().capacity,
                        help="sequences a replica runs at once")
    parser.add_argument("--speed", default="1",
                        help="trace time / replay time, or 'auto': as fast as round-robin "
                             "runs without spilling (near saturation)")
    parser.add_argument("--policy", default="affinity", choices=(*POLICIES, "all"))
    parser.add_argument("--routers", type=int, default=1, help="routers, each with its own state")
    parser.add_argument("--epsilon", type=float, help="affinity: load bound (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    live = parser.add_argument_group("live replay (drives a fabric with simulated workers)")
    live.add_argument("--live", action="store_true", help="send the requests to a running fabric")
    live.add_argument("--up", action="store_true", help="with --live: start a local fabric for it "
                      "(embedded NATS, --routers routers, --replicas simulated workers)")
    live.add_argument("--nats-url", default=os.environ.get("SLM_NATS_URL", "nats://127.0.0.1:4222"))
    live.add_argument("--prefix", default=os.environ.get("SLM_PREFIX", DEFAULT_PREFIX))
    live.add_argument("--model", default="general", help="the model every request asks for")


def run(args: argparse.Namespace) -> int:
    progress = None if args.quiet else sys.stderr
    try:
        records = _records(args)
        if args.write_trace:
            write_trace(records, args.write_trace)
            print(f"wrote {len(records)} requests to {args.write_trace}", file=sys.stderr)
            return 0
        config = _config(args)
        speed = _speed(args, records, config, progress)
        config = msgspec.structs.replace(config, speed=speed)
    except (TraceError, ReplayError, ValueError) as exc:
        print(f"slm-fabric replay: {exc}", file=sys.stderr)
        return 2
    if args.live:
        return int(uvloop.run(_live(args, records, speed, progress)))
    policies = POLICIES if args.policy == "all" else (args.policy,)
    results = [replay(records, msgspec.structs.replace(config, policy=p), progress=progress)
               for p in policies]
    if args.json:
        print(msgspec.json.encode([msgspec.structs.asdict(r) | {"of_ceiling": r.of_ceiling}
                                   for r in results]).decode())
    else:
        print(f"{len(records)} requests, {config.replicas} replicas × {config.cache_blocks} blocks, "
              f"speed {speed:.3f}, {config.routers} router(s)")
        for result in results:
            print(describe(result))
    return 0


def _records(args: argparse.Namespace) -> list[TraceRecord]:
    if args.hot_tenant:
        records = hot_tenant_trace(HotTenant(seconds=args.hot_seconds))
        return records[: args.limit] if args.limit else records
    if not args.trace:
        raise ValueError("give a trace file, or --hot-tenant")
    return read_trace(args.trace, args.limit)


def _config(args: argparse.Namespace) -> ReplayConfig:
    settings = ReplicaSettings() if args.epsilon is None else ReplicaSettings(load_epsilon=args.epsilon)
    config = ReplayConfig(replicas=args.replicas, cache_blocks=args.cache_blocks, routers=args.routers,
                          service=ServiceModel(capacity=args.capacity), settings=settings,
                          policy="affinity" if args.policy == "all" else args.policy)
    config.check()
    return config


def _speed(args: argparse.Namespace, records: list[TraceRecord], config: ReplayConfig,
           progress: object) -> float:
    if args.speed == "auto":
        return saturation_speed(records, config, progress=progress)  # type: ignore[arg-type]
    try:
        speed = float(args.speed)
    except ValueError:
        raise ValueError(f"--speed: {args.speed!r} is neither a number nor 'auto'") from None
    if speed <= 0:
        raise ValueError("--speed: must be positive")
    return speed


async def _live(args: argparse.Namespace, records: list[TraceRecord], speed: float,
                progress: object) -> int:
    if args.up:
        async with start_fabric(replicas=args.replicas, routers=args.routers,
                                cache_blocks=args.cache_blocks, model=args.model,
                                capacity=args.capacity) as client:
            result = await drive(records, client, speed=speed, model=args.model,
                                 progress=progress)  # type: ignore[arg-type]
    else:
        client = await Client.connect(args.nats_url, args.prefix)
        try:
            result = await drive(records, client, speed=speed, model=args.model,
                                 progress=progress)  # type: ignore[arg-type]
        finally:
            await client.close()
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        print(describe_live(result))
    return 0 if not result.errors else 1
