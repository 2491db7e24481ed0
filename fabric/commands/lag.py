"""Show stream and consumer lag: pending, in flight, redelivered, oldest pending age, trend.

Reads JetStream's own stream and consumer state, on an interval, never per request. By
default a table per model and replica, refreshed every --interval seconds until Ctrl-C.
--once prints one snapshot and exits; with --json it is every stream and consumer of the
fabric as one JSON document, for scripts (without --once: one JSON line per poll).
--serve runs headless as the lag monitor, exporting the same numbers as Prometheus gauges
at /metrics on --metrics-port. Exit codes: 0 ok, 1 NATS unreachable or the poll failed,
2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import msgspec
import nats
import uvloop
from nats.aio.client import Client as NATS

from fabric.lag import LagConfig, LagMonitor, LagSnapshot, take_snapshot
from fabric.lag_view import LagView
from fabric.serve import serve_lag_monitor, setup_logging
from subjects.env import read_config
from subjects.names import Names

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: redraw the table in place


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", help="NATS server URL (SLM_NATS_URL)")
    parser.add_argument("--prefix", help="subject prefix (SLM_PREFIX)")
    parser.add_argument("--interval", type=float, help="seconds between polls (SLM_LAG_INTERVAL, default 2)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--count", type=int, default=0, help="stop after N polls (default: until Ctrl-C)")
    parser.add_argument("--serve", action="store_true",
                        help="headless lag monitor: export gauges at /metrics (needs --metrics-port)")
    parser.add_argument("--metrics-port", type=int, help="with --serve: /metrics port (SLM_METRICS_PORT)")
    parser.add_argument("--metrics-host", help="with --serve: listen address (SLM_METRICS_HOST)")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    config = read_config(LagConfig, os.environ, nats_url=args.nats_url, prefix=args.prefix,
                         lag_interval=args.interval, metrics_port=args.metrics_port,
                         metrics_host=args.metrics_host)
    if args.serve:
        if not config.metrics_port:
            print("slm-fabric lag: --serve needs --metrics-port (or SLM_METRICS_PORT)", file=sys.stderr)
            return 2
        setup_logging(args.log_level)
        return serve_lag_monitor(config)
    return int(uvloop.run(_show(config, args)))


async def _show(config: LagConfig, args: argparse.Namespace) -> int:
    try:
        nc = await nats.connect(config.nats_url, name="slm-lag", connect_timeout=5,
                                allow_reconnect=False, max_reconnect_attempts=1, error_cb=_quiet)
    except Exception as exc:
        print(f"slm-fabric lag: cannot reach NATS at {config.nats_url}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    try:
        if args.once:
            return await _once(nc, Names(config.prefix), args.json)
        return await _live(nc, config, args)
    finally:
        await nc.close()


async def _quiet(_exc: Exception) -> None:
    """nats-py logs a traceback per failed attempt by default; the one-line error suffices."""


async def _once(nc: NATS, names: Names, as_json: bool) -> int:
    try:
        snapshot = await take_snapshot(nc, names)
    except Exception as exc:
        print(f"slm-fabric lag: could not read stream state: {exc!r}", file=sys.stderr)
        return 1
    if as_json:
        print(msgspec.json.format(msgspec.json.encode(snapshot), indent=2).decode())
    else:
        print(LagView().render(snapshot))
    return 0


async def _live(nc: NATS, config: LagConfig, args: argparse.Namespace) -> int:
    view = LagView()
    redraw = sys.stdout.isatty() and not args.json
    failures: list[BaseException] = []

    def show(snapshot: LagSnapshot) -> None:
        failures.clear()
        view.update(snapshot)
        if args.json:
            print(msgspec.json.encode(snapshot).decode(), flush=True)
            return
        text = view.render(snapshot)
        print(f"{_CLEAR}{text}" if redraw else f"{text}\n", flush=True)

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        print(f"slm-fabric lag: poll failed: {exc!r}", file=sys.stderr, flush=True)

    monitor = LagMonitor(nc, Names(config.prefix), config.lag_interval, on_snapshot=show, on_error=failed)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, monitor.stop)
    await monitor.run(count=args.count)
    return 1 if failures else 0
