"""Fabric vs direct engine: what the fabric costs a real engine, side by side in one run.

The same engine object is driven two ways, alternating phase by phase in one process:

* **direct** — ``engine.generate()`` called in-process, no NATS at all;
* **fabric** — client → ingress → router (its own process) → JetStream work queue →
  worker (in this process, on the same engine) → reply chunks → client.

Two measurements per engine:

* **TTFT, one request at a time** (short answers): the fabric's added time to first token;
* **throughput, 8 streams at once**: completion tokens per second over the phase.

Every request has its own random first word, so no phase profits from a prefix cached by
another. Engines: ``sim`` (the simulated engine at its default, GPU-calibrated constants)
and ``vllm`` (vLLM on this CPU with a tiny random Llama built at start — run it in the
``.venv-vllm`` venv). Targets (issue 5): fabric ≥ 95% of direct throughput, ≤ 2 ms added TTFT.

Run: ``make bench-engine`` or ``python -m bench.engine --engine sim|vllm``. Each run rewrites
its engine's row in ``bench/engine_results.json`` and the ``engine`` section of results.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import uvloop

from bench.results import machine, percentile, write_section
from fabric.client import Client, FabricError, chat
from fabric.local import NatsServer, ProcessGroup, component_command
from subjects.messages import ChatRequest
from workers.config import WorkerConfig
from workers.worker import Worker

RAW = Path(__file__).with_name("engine_results.json")
WORDS = "amber basil cedar delta ember fjord garnet harbor iris juniper kelp lumen".split()


@dataclass
class Phase:
    ttft: list[float]
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def request(i: int, max_tokens: int) -> ChatRequest:
    head = f"{WORDS[i % len(WORDS)]}-{uuid.uuid4().hex[:8]}"  # a fresh prefix every time
    return chat(f"{head}: tell me about the harbour, the boats and the weather this week.",
                model="general", max_tokens=max_tokens, temperature=0.0)


async def run_phase(stream: Callable[[int], AsyncIterator[Any]], completion_tokens: Callable[[Any], int],
                    count: int, concurrency: int) -> Phase:
    """``count`` requests, ``concurrency`` at a time: each one's TTFT (first item of its
    ``stream``) and the completion tokens ``completion_tokens`` reads from its items."""
    gate = asyncio.Semaphore(concurrency)
    ttft: list[float] = []
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        async with gate:
            started = time.perf_counter()
            first = None
            async for item in stream(i):
                if first is None:
                    first = time.perf_counter() - started
                tokens += completion_tokens(item)
            ttft.append(first or 0.0)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return Phase(ttft, tokens, time.perf_counter() - started)


async def direct_phase(engine: Any, count: int, concurrency: int, max_tokens: int) -> Phase:
    return await run_phase(
        lambda i: engine.generate(f"direct-{uuid.uuid4().hex}", request(i, max_tokens)),
        lambda delta: delta.completion_tokens if delta.finish_reason is not None else 0,
        count, concurrency)


async def fabric_phase(client: Client, count: int, concurrency: int, max_tokens: int) -> Phase:
    return await run_phase(
        lambda i: client.stream(request(i, max_tokens), timeout=120),
        lambda chunk: chunk.usage.completion_tokens if chunk.final and chunk.usage is not None else 0,
        count, concurrency)


async def served(client: Client, timeout: float = 60.0) -> None:
    """Until the router knows the worker (its heartbeat reached the registry)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await client.complete(chat("ping", model="general", max_tokens=1), timeout=5)
            return
        except FabricError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def build_engine(kind: str, workdir: Path) -> tuple[Any, str]:
    if kind == "sim":
        from workers.sim_engine import SimEngine, SimParams

        params = SimParams(capacity=8)
        return SimEngine(params), (f"simulated engine, default constants (decode "
                                   f"{params.decode_seconds_per_token * 1000:.1f} ms/token, batch +"
                                   f"{params.batch_slowdown:.0%}/sequence, capacity 8)")
    from fabric.models import build_tiny_llama
    from workers.vllm_engine import VllmEngine, VllmOptions

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model = build_tiny_llama(workdir / "tiny-llama")
    engine = VllmEngine(VllmOptions(model_path=str(model), dtype="float32", max_num_seqs=8,
                                    block_size=32, enforce_eager=True, kv_cache_gib=1,
                                    max_model_len=2048))
    return engine, (f"vLLM {_vllm_version()} on CPU, tiny random Llama (2 layers, hidden 64), "
                    "float32, enforce_eager, max_num_seqs 8")


def _vllm_version() -> str:
    """The installed vLLM's version, read from package metadata: only the engine module imports vLLM."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


async def run(kind: str, rounds: int, ttft_requests: int, load_requests: int, concurrency: int,
              max_tokens: int, stream_interval: float = WorkerConfig().stream_interval) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="slm-bench-engine-") as tmp, NatsServer() as server:
        engine, label = build_engine(kind, Path(tmp))
        group = ProcessGroup()
        group.spawn("router", component_command("router", "--nats-url", server.url))
        worker = Worker(WorkerConfig(nats_url=server.url, model="general", replica="r0",
                                     engine=kind, max_inflight=concurrency,
                                     fetch_batch=concurrency, max_queue_delay=0.0,
                                     stream_interval=stream_interval), engine)
        task = asyncio.ensure_future(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 300)
            client = await Client.connect(server.url)
            await served(client)
            # Warm both paths once (imports, first-step costs), then measure.
            await direct_phase(engine, 2, 1, 4)
            await fabric_phase(client, 2, 1, 4)
            direct_ttft: list[float] = []
            fabric_ttft: list[float] = []
            direct_tps: list[float] = []
            fabric_tps: list[float] = []
            for _ in range(rounds):  # alternate, so drift hits both paths alike
                direct_ttft += (await direct_phase(engine, ttft_requests, 1, 2)).ttft
                fabric_ttft += (await fabric_phase(client, ttft_requests, 1, 2)).ttft
                direct_tps.append((await direct_phase(engine, load_requests, concurrency, max_tokens)).tokens_per_second)
                fabric_tps.append((await fabric_phase(client, load_requests, concurrency, max_tokens)).tokens_per_second)
            await client.close()
        finally:
            worker.stop()
            await asyncio.wait_for(task, 120)
            group.stop()
    d50, f50 = percentile(direct_ttft, 50), percentile(fabric_ttft, 50)
    d_tps, f_tps = statistics.median(direct_tps), statistics.median(fabric_tps)
    flag = f" --stream-interval {stream_interval:g}" if stream_interval else ""
    return {
        "engine": kind, "label": label, "machine": machine(),
        "command": f"python -m bench.engine --engine {kind}{flag}",
        "stream_interval": stream_interval,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "ttft_requests": ttft_requests * rounds, "load_requests": load_requests * rounds,
        "concurrency": concurrency, "max_tokens": max_tokens, "rounds": rounds,
        "direct_ttft_p50_ms": d50 * 1000, "fabric_ttft_p50_ms": f50 * 1000,
        "direct_ttft_p90_ms": percentile(direct_ttft, 90) * 1000,
        "fabric_ttft_p90_ms": percentile(fabric_ttft, 90) * 1000,
        "added_ttft_p50_ms": (f50 - d50) * 1000,
        "direct_tokens_per_s": d_tps, "fabric_tokens_per_s": f_tps,
        "throughput_ratio": f_tps / d_tps if d_tps else 0.0,
    }


def row_key(kind: str, stream_interval: float) -> str:
    return kind if not stream_interval else f"{kind}@{stream_interval:g}"


def _ordered(rows: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """sim before vllm; per-delta chunks before coalesced ones."""
    order = {"sim": 0, "vllm": 1}
    return sorted(rows.items(), key=lambda kv: (order.get(kv[1]["engine"], 2),
                                                kv[1].get("stream_interval", 0.0)))


def chunking(row: dict[str, Any]) -> str:
    interval = row.get("stream_interval", 0.0)
    return f"{interval * 1000:g} ms" if interval else "every delta"


def render(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["## Workers: fabric vs direct engine", "",
             "The same engine object driven directly (in-process `engine.generate()`) and through "
             "the fabric (client → router process → JetStream → worker → reply chunks), phases "
             "alternating in one run, on uvloop as a worker process runs. TTFT: one request at a "
             "time, 2-token answers. Throughput: completion tokens/s with 8 streams at once. "
             "Chunks: the worker's `SLM_STREAM_INTERVAL` (every engine delta its own chunk, or "
             "deltas gathered per interval after the first chunk). Targets: ≥ 95% of direct "
             "throughput, ≤ 2 ms added TTFT.", ""]
    lines += ["| engine | chunks | TTFT p50 direct | TTFT p50 fabric | added | tokens/s direct | tokens/s fabric | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for _, r in _ordered(rows):
        lines.append(f"| {r['label']} | {chunking(r)} | {r['direct_ttft_p50_ms']:.2f} ms "
                     f"| {r['fabric_ttft_p50_ms']:.2f} ms | **{r['added_ttft_p50_ms']:+.2f} ms** "
                     f"| {r['direct_tokens_per_s']:.0f} | {r['fabric_tokens_per_s']:.0f} "
                     f"| **{r['throughput_ratio']:.1%}** |")
    lines.append("")
    for key, r in _ordered(rows):
        load = r.get("load_average")
        during = f"; load average {load[0]:.2f} at start, {load[1]:.2f} at end" if load else ""
        lines.append(f"- {key}: {r['machine']}; command `{r['command']}`; {r['ttft_requests']} TTFT "
                     f"requests and {r['load_requests']} load requests per path ({r['rounds']} rounds, "
                     f"max_tokens {r['max_tokens']}); TTFT p90 direct {r['direct_ttft_p90_ms']:.2f} ms, "
                     f"fabric {r['fabric_ttft_p90_ms']:.2f} ms{during}.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("sim", "vllm"), default="sim")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttft-requests", type=int, default=20, help="per round and path")
    parser.add_argument("--load-requests", type=int, default=32, help="per round and path")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stream-interval", type=float, default=WorkerConfig().stream_interval,
                        help="the worker's SLM_STREAM_INTERVAL (default: the worker's default)")
    parser.add_argument("--no-save", action="store_true",
                        help="print the result only (while iterating): results.md stays as it is")
    args = parser.parse_args()
    # uvloop, as a worker process runs (fabric/serve.py); the direct path shares the loop.
    result = uvloop.run(run(args.engine, args.rounds, args.ttft_requests, args.load_requests,
                            args.concurrency, args.max_tokens, args.stream_interval))
    if args.no_save:
        print(json.dumps(result, indent=2))
        return 0
    rows = json.loads(RAW.read_text()) if RAW.exists() else {}
    rows[row_key(args.engine, args.stream_interval)] = result
    RAW.write_text(json.dumps(rows, indent=2) + "\n")
    write_section("engine", render(rows))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

