"""Start a local fabric: embedded nats-server, a router and simulated workers.

Each component is its own OS process. With --demo N it sends N mixed requests, prints a
summary per model and exits (1 if any request failed); without it, it runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

import uvloop

from fabric.client import Client, chat
from fabric.demo import run_demo, summary_table
from fabric.local import NatsServer, ProcessGroup, component_command
from router.rules import DEFAULT_MODELS
from subjects.names import Names

MODELS = tuple(DEFAULT_MODELS.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats-url", help="use this NATS instead of an embedded server")
    parser.add_argument("--demo", type=int, metavar="N", help="send N demo requests, then exit")
    parser.add_argument("--replicas", type=int, default=1, help="workers per model (default 1)")
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    parser.add_argument("--sim-time-scale", type=float, default=1.0,
                        help="shrink the simulated engine's delays (default 1.0)")
    parser.add_argument("--concurrency", type=int, default=16, help="demo requests in flight")
    parser.add_argument("--verbose", action="store_true", help="show component logs")


def run(args: argparse.Namespace) -> int:
    server = None
    url = args.nats_url
    if url is None:
        server = NatsServer().start()
        url = server.url
    group = ProcessGroup()
    try:
        common = ["--nats-url", url]
        for i in range(args.routers):
            group.spawn(f"router-{i}", component_command("router", *common), quiet=not args.verbose)
        if args.engine == "vllm":
            _spawn_vllm_worker(group, common, args.verbose)
        else:
            for model in MODELS:
                for r in range(args.replicas):
                    group.spawn(f"worker {model}/r{r}", component_command(
                        "worker", *common, "--model", model, "--replica", f"r{r}",
                        "--engine", args.engine, "--sim-time-scale", str(args.sim_time_scale),
                    ), quiet=not args.verbose)
        return int(uvloop.run(_serve(args, url, server, group)))
    finally:
        group.stop()
        if server is not None:
            server.stop()


VLLM_CHOICE = (
    "vLLM on CPU: one SmolLM2-135M-Instruct engine serves all {n} model names ({names}) "
    "from one worker process. A small machine cannot run an engine per model (each takes "
    "~1-4 GiB and a core); routing, queues and acks are exactly as in production, only the "
    "five names share one model."
)


def _spawn_vllm_worker(group: ProcessGroup, common: list[str], verbose: bool) -> None:
    """SmolLM2-135M (converted once, cached) behind every model name, in one process."""
    from fabric.models import ModelUnavailable, smollm2_folder

    try:
        folder = smollm2_folder()
    except ModelUnavailable as exc:
        raise SystemExit(f"slm-fabric up --engine vllm: {exc}") from exc
    print(VLLM_CHOICE.format(n=len(MODELS), names=", ".join(MODELS)))
    print("  starting vLLM (about a minute on 2 cores)…", flush=True)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    group.spawn("worker (vLLM, all models)", component_command(
        "worker", *common, "--engine", "vllm", "--model", MODELS[0], "--replica", "r0",
        "--also-serve", ",".join(MODELS[1:]), "--model-path", str(folder), "--dtype", "float32",
        "--enforce-eager", "--kv-cache-gib", "1", "--max-num-seqs", "8", "--max-inflight", "8",
    ), env=env, quiet=not verbose)


async def _serve(args: argparse.Namespace, url: str, server: NatsServer | None,
                 group: ProcessGroup) -> int:
    client = await Client.connect(url)
    try:
        expected = len(MODELS) * (1 if args.engine == "vllm" else args.replicas)
        if not await _wait_for_replicas(client, expected, group, timeout=60 if args.engine == "sim" else 900):
            return 1
        await client.wait_until_served()
        where = f"embedded nats-server at {url}" if server else f"NATS at {url}"
        if server and server.monitor_port:
            where += f" (monitoring http://127.0.0.1:{server.monitor_port})"
        print(f"slm-fabric up: {where}")
        for label, proc in group.processes:
            print(f"  {label:<22} pid {proc.pid}")
        if args.engine == "vllm":  # real text from the real model, before any demo load
            question = "What is the capital of France?"
            answer = await client.complete(chat(question, model=MODELS[-1], max_tokens=32), timeout=300)
            print(f"  {question} → {answer.text.strip()!r}  (SmolLM2-135M via vLLM, "
                  f"{answer.completion_tokens} tokens)")
        if args.demo:
            result = await run_demo(client, args.demo, args.concurrency)
            print(summary_table(result))
            return 0 if result.all_answered else 1
        print(f"ready: publish chat requests to '{client.names.ingress}' "
              f"(try: slm-fabric ask 'hello' --nats-url {url}); Ctrl-C stops")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and not group.failed():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
        return 1 if group.failed() else 0
    finally:
        await client.close()


async def _wait_for_replicas(client: Client, expected: int, group: ProcessGroup,
                             timeout: float) -> bool:
    """Wait until every worker has heartbeated; fail fast if a component exits."""
    names: Names = client.names
    js = client.nc.jetstream()
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if failed := group.failed():
            print(f"slm-fabric up: component(s) exited: {failed}", file=sys.stderr)
            return False
        try:
            kv = await js.key_value(names.replica_bucket)
            seen = len(await kv.keys())
        except Exception:  # bucket not created yet, or empty
            seen = 0
        if seen >= expected:
            return True
        await asyncio.sleep(0.2)
    print(f"slm-fabric up: only {seen}/{expected} workers came up within {timeout:.0f}s",
          file=sys.stderr)
    return False


