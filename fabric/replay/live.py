"""Live replay: a trace sent to a running fabric (routers + simulated workers) in trace time.

Each record becomes the chat request ``fabric.replay.trace.chat_request`` builds (the
same text the offline replay hashes), sent through the ingress at ``arrival / speed``.
What comes back is measured from the client's side: time to the first chunk, the replica
that answered, and the prompt and cached tokens the worker's engine reports in the final
chunk's usage — so the hit rate here is the simulated engine's own (its blocks are 16
tokens, the trace's 512), not the offline model's.

``start_fabric`` runs one locally for the replay (embedded nats-server, routers and
simulated workers, each its own process), sized like the offline replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TextIO

import msgspec

from fabric.client import Client, FabricError
from fabric.local import NatsServer, ProcessGroup, component_command
from fabric.replay.trace import BlockText, TraceRecord, arrival_seconds, chat_request
from fabric.stats import percentile
from router.context import PREFIX_BLOCK_CHARS

# The simulated engine's prefix blocks are 16 tokens of 4 characters: one trace block
# (PREFIX_BLOCK_CHARS characters) is this many of them.
SIM_BLOCK_CHARS = 64


class LiveResult(msgspec.Struct, kw_only=True):
    requests: int
    answered: int
    errors: dict[str, int]
    prompt_tokens: int
    cached_tokens: int
    hit_rate: float  # cached / prompt tokens, as the workers' engines report them
    ttft_mean: float
    ttft_p50: float
    ttft_p99: float
    assigned_max_over_mean: float  # worst 10 s window of tokens sent to each replica
    replicas_used: int
    seconds: float


@dataclass
class _Tally:
    ttft: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    prompt: int = 0
    cached: int = 0
    assigned: dict[tuple[int, str], int] = field(default_factory=dict)  # (window, replica)
    done: int = 0


async def drive(records: list[TraceRecord], client: Client, *, speed: float, model: str = "general",
                window_seconds: float = 10.0, timeout: float = 300.0, run_id: str = "",
                progress: TextIO | None = None) -> LiveResult:
    """Send every record at its (sped-up) arrival time and wait for every answer."""
    blocks = BlockText()
    arrivals = [a / speed for a in arrival_seconds(records)]
    run_id = run_id or f"{int(time.time()) % 100000:05d}"
    tally = _Tally()
    total = len(records)
    step = max(total // 20, 1)
    start = time.perf_counter()

    async def one(i: int, record: TraceRecord) -> None:
        request = chat_request(record, blocks, model=model, request_id=f"rp{run_id}-{i}")
        sent = time.perf_counter()
        first = None
        try:
            async for chunk in client.stream(request, timeout=timeout):
                if first is None:
                    first = time.perf_counter() - sent
                if chunk.final:
                    usage = chunk.usage
                    tally.prompt += usage.prompt_tokens if usage else 0
                    tally.cached += usage.cached_tokens if usage else 0
                    key = (int((sent - start) // window_seconds), chunk.replica)
                    tally.assigned[key] = tally.assigned.get(key, 0) + record.input_length + record.output_length
            tally.ttft.append(first if first is not None else float("nan"))
        except FabricError as exc:
            tally.errors[exc.code] = tally.errors.get(exc.code, 0) + 1
        tally.done += 1
        if progress is not None and (tally.done % step == 0 or tally.done == total):
            print(f"\r  live replay: {tally.done}/{total} answered or failed", end="",
                  file=progress, flush=True)

    tasks = []
    for i, (at, record) in enumerate(zip(arrivals, records, strict=True)):
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, record)))
    await asyncio.gather(*tasks)
    if progress is not None:
        print(file=progress)
    ttft = [t for t in tally.ttft if t == t]
    replicas = sorted({r for _, r in tally.assigned})
    windows = sorted({w for w, _ in tally.assigned})
    ratios = []
    for w in windows[:-1] if len(windows) > 1 else windows:  # the last window is partial
        loads = [tally.assigned.get((w, r), 0) for r in replicas]
        if sum(loads):
            ratios.append(max(loads) / (sum(loads) / len(loads)))
    return LiveResult(
        requests=total, answered=len(ttft), errors=tally.errors,
        prompt_tokens=tally.prompt, cached_tokens=tally.cached,
        hit_rate=tally.cached / tally.prompt if tally.prompt else 0.0,
        ttft_mean=sum(ttft) / len(ttft) if ttft else float("nan"),
        ttft_p50=percentile(ttft, 50), ttft_p99=percentile(ttft, 99),
        assigned_max_over_mean=max(ratios, default=float("nan")),
        replicas_used=len(replicas), seconds=time.perf_counter() - start,
    )


@contextlib.asynccontextmanager
async def start_fabric(*, replicas: int, routers: int, cache_blocks: int, model: str = "general",
                       capacity: int = 8, verbose: bool = False) -> AsyncIterator[Client]:
    """An embedded nats-server, ``routers`` routers and ``replicas`` simulated workers."""
    server = NatsServer().start()
    group = ProcessGroup()
    sim_blocks = cache_blocks * (PREFIX_BLOCK_CHARS // SIM_BLOCK_CHARS)
    env = {"SLM_SIM_CACHE_BLOCKS": str(sim_blocks), "SLM_MAX_INFLIGHT": str(capacity),
           "SLM_MODELS": model}
    client = None
    try:
        for i in range(routers):
            group.spawn(f"router-{i}", component_command("router", "--nats-url", server.url),
                        env=env, quiet=not verbose)
        for r in range(replicas):
            group.spawn(f"worker-{r}", component_command(
                "worker", "--nats-url", server.url, "--model", model, "--replica", f"r{r}",
                "--engine", "sim"), env=env, quiet=not verbose)
        client = await Client.connect(server.url)
        await _wait_for_workers(client, replicas, group)
        await client.wait_until_served(60)
        yield client
    finally:
        if client is not None:
            await client.close()
        group.stop()
        server.stop()


async def _wait_for_workers(client: Client, count: int, group: ProcessGroup,
                            timeout: float = 60.0) -> None:
    js = client.nc.jetstream()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failed := group.failed():
            raise RuntimeError(f"fabric components exited: {failed}")
        with contextlib.suppress(Exception):
            kv = await js.key_value(client.names.replica_bucket)
            if len(await kv.keys()) >= count:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"fewer than {count} workers came up within {timeout:.0f}s")


def describe_live(result: LiveResult, label: str = "live") -> str:
    errors = f" errors {result.errors}" if result.errors else ""
    return (f"{label:<13} answered {result.answered}/{result.requests}  engine hit "
            f"{result.hit_rate:6.2%}  TTFT mean {result.ttft_mean:7.3f}s p50 {result.ttft_p50:7.3f}s "
            f"p99 {result.ttft_p99:7.3f}s  assigned max/mean {result.assigned_max_over_mean:5.2f}  "
            f"[{result.seconds:.0f}s]{errors}")
