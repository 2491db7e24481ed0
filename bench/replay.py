"""Replica choice on a real trace: every policy side by side, one router and three.

1. Mooncake conversation trace (../shared/data/traces/mooncake_conversation.jsonl, 12,031
   requests), 8 replicas × 4,096 prefix-cache blocks, replayed offline through the real
   router code (router.context, router.replicas, placement records, load samples) onto
   the simulated replicas of fabric.replay.engine. The speed is calibrated first: the
   highest at which round-robin never has to spill (fabric.replay.simulate.saturation_speed),
   so the fleet runs near saturation under round-robin. Every policy runs at that speed;
   affinity also runs with three routers, each with its own state, sharing only what NATS
   would carry (placement records after 2 ms, load samples every 0.5 s).
2. The hot-tenant workload (fabric.replay.trace.HotTenant), the same way.
3. Replica choice time at 4, 64 and 1,024 replicas: a router's state after replaying
   8,000 Mooncake requests at the same per-replica load, then ``choose_affinity`` timed on
   the next 2,000 requests' contexts (five passes; the pass with the median p99 is shown),
   the C twin (router/_choice.c) and the Python reference side by side, pass for pass.
   Written to its own section of bench/results.md, which ``--choice-only`` rewrites alone.
4. With --live: a slice of the trace through a real local fabric (embedded nats-server,
   simulated workers in their own processes), one router and then three.

Run: make bench-replay  (or python -m bench.replay [--live] [--no-save] [--choice-only])
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from bench.results import machine, percentile, write_section
from fabric.replay import simulate
from fabric.replay.live import LiveResult, drive, start_fabric
from fabric.replay.simulate import POLICIES, ReplayConfig, ReplayResult, replay, saturation_speed
from fabric.replay.trace import BlockText, HotTenant, TraceRecord, chat_request, hot_tenant_trace, read_trace
from router.replicas import NATIVE_CHOICE, choose_affinity, choose_affinity_python

TRACE = Path(__file__).resolve().parents[1].parent / "shared/data/traces/mooncake_conversation.jsonl"
COMMAND = "python -m bench.replay"
CHOICE_PASSES = 5


def run_workload(name: str, records: list[TraceRecord], base: ReplayConfig) -> tuple[float, dict[str, ReplayResult]]:
    print(f"{name}: {len(records)} requests; calibrating the speed …", file=sys.stderr, flush=True)
    speed = saturation_speed(records, base)
    print(f"{name}: speed {speed:.3f} (round-robin's highest without spilling)", file=sys.stderr)
    config = msgspec.structs.replace(base, speed=speed)
    results = {}
    for policy in POLICIES:
        results[policy] = replay(records, msgspec.structs.replace(config, policy=policy),
                                 progress=sys.stderr, label=f"{name} {policy}")
        print(simulate.describe(results[policy]), file=sys.stderr)
    results["affinity ×3 routers"] = replay(records, msgspec.structs.replace(config, routers=3),
                                            progress=sys.stderr, label=f"{name} affinity ×3")
    print(simulate.describe(results["affinity ×3 routers"]), file=sys.stderr)
    return speed, results


def table(results: dict[str, ReplayResult]) -> str:
    rows = ["| policy | block hit rate | of ceiling | TTFT mean | TTFT p50 | TTFT p99 | "
            "load max/mean (worst 10 s window) | requests spilled / shed |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r.hit_rate:.2%} | {r.of_ceiling:.1%} | {r.ttft_mean:.3f} s | "
                    f"{r.ttft_p50:.3f} s | {r.ttft_p99:.3f} s | {r.load_max_over_mean:.2f} | "
                    f"{r.via_any} / {r.shed} |")
    return "\n".join(rows)


def ratios(results: dict[str, ReplayResult]) -> str:
    ours = results["affinity"]
    lines = []
    for baseline in ("round-robin", "least-loaded", "random"):
        b = results[baseline]
        lines.append(f"affinity / {baseline}: TTFT mean {ours.ttft_mean / b.ttft_mean:.2f}×, "
                     f"p99 {ours.ttft_p99 / b.ttft_p99:.2f}×")
    three = results["affinity ×3 routers"]
    lines.append(f"three routers vs one: hit rate {three.hit_rate:.2%} vs {ours.hit_rate:.2%} "
                 f"({(three.hit_rate - ours.hit_rate) * 100:+.2f} percentage points)")
    return "; ".join(lines[:2]) + ". " + lines[2] + ". " + lines[3] + "."


def nearby(records: list[TraceRecord], speed: float) -> list[ReplayResult]:
    """Affinity at speeds 2% and 1% below and above the calibrated one: near saturation a
    small change of timing moves single results by about a percentage point."""
    out = []
    for factor in (0.98, 0.99, 1.01, 1.02):
        result = replay(records, ReplayConfig(speed=speed * factor))
        print(f"mooncake affinity at speed {speed * factor:.3f}: {simulate.describe(result)}", file=sys.stderr)
        out.append(result)
    return out


def hot_seeds(speed: float, seeds: tuple[int, ...]) -> list[tuple[int, ReplayResult, ReplayResult]]:
    """The hot tenant drawn with other seeds: is the worst window a fluke of one draw?"""
    out = []
    for seed in seeds:
        records = hot_tenant_trace(HotTenant(seed=seed))
        ours = replay(records, ReplayConfig(speed=speed))
        least = replay(records, ReplayConfig(speed=speed, policy="least-loaded"))
        print(f"hot tenant seed {seed}: affinity {simulate.describe(ours)}", file=sys.stderr)
        out.append((seed, ours, least))
    return out


class ChoiceTime(msgspec.Struct, frozen=True):
    """One implementation's choice time at one fleet size (µs)."""

    p50: float  # of the pass with the median p99
    p99: float
    p99_passes: tuple[float, ...]  # every pass's p99, lowest first (the box's noise)


def choice_times(records: list[TraceRecord], sizes: tuple[int, ...],
                 per_replica_speed: float) -> dict[int, dict[str, ChoiceTime]]:
    """p50/p99 (µs) of choose_affinity at each fleet size, on a realistic router state:
    the C twin (when built) and the Python reference, timed pass for pass in one run so
    both see the same moment of the machine, their answers checked equal."""
    captured: dict[str, simulate._SimRouter] = {}
    original = simulate._SimRouter.__init__

    def keep(self: simulate._SimRouter, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        captured["router"] = self

    implementations: dict[str, Callable[..., object]] = {"python": choose_affinity_python}
    if NATIVE_CHOICE:
        implementations = {"C": choose_affinity, "python": choose_affinity_python}
    blocks = BlockText()
    out: dict[int, dict[str, ChoiceTime]] = {}
    simulate._SimRouter.__init__ = keep  # type: ignore[method-assign]
    try:
        for size in sizes:
            warm, timed = records[:8000], records[8000:10000]
            replay(warm, ReplayConfig(replicas=size, speed=per_replica_speed * size / 8))
            router = captured["router"]
            fleet = router.fleet
            settings = router.config.settings
            fleet.ring.fill(settings.max_walk)
            contexts = [router.policy.context(chat_request(r, blocks)) for r in timed]
            differ = sum(choose_affinity(c, fleet, settings) != choose_affinity_python(c, fleet, settings)
                         for c in contexts)
            if differ:
                raise AssertionError(f"{differ} of {len(contexts)} choices differ between C and Python")
            passes: dict[str, list[tuple[float, float]]] = {name: [] for name in implementations}
            for _ in range(CHOICE_PASSES):
                for name, choose in implementations.items():
                    times = []
                    for ctx in contexts:
                        t0 = time.perf_counter_ns()
                        choose(ctx, fleet, settings)
                        times.append((time.perf_counter_ns() - t0) / 1e3)
                    passes[name].append((percentile(times, 50), percentile(times, 99)))
            out[size] = {}
            for name, runs in passes.items():
                runs.sort(key=lambda p: p[1])
                p50, p99 = runs[len(runs) // 2]
                out[size][name] = ChoiceTime(p50, p99, tuple(p for _, p in runs))
                print(f"replica choice at {size} replicas, {name}: p50 {p50:.1f} µs, p99 {p99:.1f} µs "
                      f"(pass p99s {', '.join(f'{p:.1f}' for _, p in runs)})", file=sys.stderr)
    finally:
        simulate._SimRouter.__init__ = original  # type: ignore[method-assign]
    return out


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def choice_markdown(times: dict[int, dict[str, ChoiceTime]], command: str, load_before: str,
                    seconds: float) -> str:
    """The replica choice time section of bench/results.md."""
    native = NATIVE_CHOICE
    head = "| replicas | " + ("C p50 | C p99 | C p99 of each pass | " if native else "") + \
        "Python p50 | Python p99 | Python p99 of each pass |" + (" Python / C (p50, p99) |" if native else "")
    rows = [head, "|" + "---|" * head.count(" |")]
    for n, by in times.items():
        py = by["python"]
        cells = [f"{n:,}"]
        if native:
            c = by["C"]
            cells += [f"{c.p50:.1f} µs", f"{c.p99:.1f} µs", ", ".join(f"{p:.1f}" for p in c.p99_passes)]
        cells += [f"{py.p50:.1f} µs", f"{py.p99:.1f} µs", ", ".join(f"{p:.1f}" for p in py.p99_passes)]
        if native:
            cells.append(f"{py.p50 / c.p50:.1f}×, {py.p99 / c.p99:.1f}×")
        rows.append("| " + " | ".join(cells) + " |")
    twin = ("C: `router._choice.choose_affinity` (router/_choice.c), what the router calls; "
            "Python: `router.replicas.choose_affinity_python`, the reference (what "
            "`SLM_PURE_PYTHON=1` runs, there over the placement memory's dict generations; here "
            "both read the same memory, its C map). Both gave the same answer for every timed "
            "context."
            if native else "router/_choice.c is not built here (or SLM_PURE_PYTHON=1): Python only.")
    return "\n".join([
        "## Replica choice time (`router.replicas.choose_affinity`)",
        "",
        f"Machine: {machine()}; load average (1 / 5 / 15 min) {load_before} at the start, "
        f"{load_average()} at the end (other jobs share the 2 cores, and the timings feel it). "
        f"Command: `{command}` ({seconds:.0f} s).",
        "",
        *rows,
        "",
        f"{twin} A router's state after 8,000 Mooncake requests at the same load per replica; "
        f"the next 2,000 requests' contexts (built beforehand, so cold in the CPU caches) timed "
        f"one call each, {CHOICE_PASSES} passes of each implementation taken in turn, the pass "
        "with the median p99 shown and every pass's p99 listed. Nothing per request grows "
        "with the fleet or the records kept: one binary search over the prompt's prefix depths "
        "(one probe for a new prompt), a lookup table of the hash ring (kept current on joins "
        "and leaves, filled in the router's upkeep), at most a dozen candidates, and a heap "
        "read when none of them fits.",
    ])


async def live_runs(records: list[TraceRecord], speed: float, replicas: int, cache_blocks: int) -> dict[str, LiveResult]:
    out = {}
    for routers in (1, 3):
        async with start_fabric(replicas=replicas, routers=routers, cache_blocks=cache_blocks) as client:
            out[f"{routers} router{'s' if routers > 1 else ''}"] = await drive(
                records, client, speed=speed, progress=sys.stderr, run_id=f"b{routers}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="replay only the first N Mooncake requests")
    parser.add_argument("--live", action="store_true", help="also replay a slice through a local fabric")
    parser.add_argument("--live-requests", type=int, default=600)
    parser.add_argument("--no-save", action="store_true",
                        help="print the results only; leave bench/results.md as it is")
    parser.add_argument("--choice-only", action="store_true",
                        help="only the replica choice times (C and Python); rewrites only their "
                             "section of bench/results.md (unless --no-save)")
    args = parser.parse_args()
    started = time.perf_counter()
    load_before = load_average()
    if args.choice_only:
        speed = saturation_speed(read_trace(TRACE), ReplayConfig(replicas=8, cache_blocks=4096))
        times = choice_times(read_trace(TRACE), (4, 64, 1024), speed)
        text = choice_markdown(times, f"{COMMAND} --choice-only", load_before,
                               time.perf_counter() - started)
        if not args.no_save:
            write_section("replay-choice", text)
        print(text)
        return
    mooncake = read_trace(TRACE, args.limit)
    base = ReplayConfig(replicas=8, cache_blocks=4096)
    speed_m, moon = run_workload("mooncake", mooncake, base)
    around = nearby(mooncake, speed_m)
    hot_trace = hot_tenant_trace(HotTenant())
    speed_h, hot = run_workload("hot tenant", hot_trace, base)
    seeds = hot_seeds(speed_h, (1, 2, 3, 4, 5))
    per_replica_speed = speed_m
    choice_started, choice_load = time.perf_counter(), load_average()
    times = choice_times(read_trace(TRACE), (4, 64, 1024), per_replica_speed)
    choice_text = choice_markdown(times, COMMAND, choice_load, time.perf_counter() - choice_started)
    live = asyncio.run(live_runs(mooncake[: args.live_requests], speed_m, 8, 4096)) if args.live else {}
    hot_spec = HotTenant()
    md = [
        "## Replica choice (trace replay)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end (other jobs shared "
        f"the 2 cores, which the timings below feel). Command: `{COMMAND}{' --live' if args.live else ''}` "
        f"({time.perf_counter() - started:.0f} s). Offline replay (fabric/replay): the real router "
        "code on simulated replicas (a step-based engine model with the defaults of "
        "workers/sim_engine.py: prefill 25 µs per uncached token, decode 5.5 ms per step "
        "+5% per extra sequence, 8 sequences at once; an LRU of 4,096 blocks of 512 tokens "
        "per replica). Hit rate: prompt blocks found in the serving replica's cache; "
        "ceiling: one LRU as large as the whole fleet (8 × 4,096 blocks), in arrival order. "
        "Load: a replica's outstanding work (queued + running) in token weight — prompt "
        "tokens it must prefill + 32 × output tokens — averaged over each 10 s window; the "
        "figure is the worst window's max/mean over the replicas. Speed: the highest at "
        "which round-robin never spills (bisection), i.e. round-robin near saturation. "
        "Three routers: each its own state; placement records reach the others after 2 ms, "
        "load samples (per-subject queue counts) every 0.5 s; requests spread at random.",
        "",
        f"### Mooncake conversation trace — {len(mooncake)} requests, 8 replicas × 4,096 blocks, "
        f"speed {speed_m:.2f}",
        "",
        table(moon),
        "",
        ratios(moon),
        "",
        "Affinity at nearby speeds (one router): "
        + ", ".join(f"×{r.speed / speed_m:.2f}: {r.of_ceiling:.1%} of ceiling, TTFT mean {r.ttft_mean:.3f} s"
                    for r in around)
        + f" — over these and the calibrated run, {min([moon['affinity'], *around], key=lambda r: r.of_ceiling).of_ceiling:.1%} "
        f"to {max([moon['affinity'], *around], key=lambda r: r.of_ceiling).of_ceiling:.1%} of the ceiling.",
        "",
        f"### Hot tenant — {len(hot_trace)} requests, speed {speed_h:.2f}",
        "",
        f"One tenant's {hot_spec.system_blocks}-block system prompt opens "
        f"{hot_spec.tenant_share:.0%} of the sessions; sessions ({hot_spec.sessions_per_second}/s, "
        f"{hot_spec.mean_turns:.0f} turns on average, {hot_spec.mean_think_seconds:.0f} s apart) grow "
        f"by the last answer and a new question every turn; {hot_spec.seconds:.0f} s of trace, "
        "starting in a steady state.",
        "",
        table(hot),
        "",
        ratios(hot),
        "",
        f"The same workload drawn with other seeds (speed {speed_h:.2f}, one router):",
        "",
        "| seed | requests | affinity: worst window max/mean | affinity: of ceiling | affinity TTFT mean / p99 "
        "| least-loaded: worst window | least-loaded: of ceiling | least-loaded TTFT mean / p99 |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {seed} | {a.requests} | {a.load_max_over_mean:.2f} | {a.of_ceiling:.1%} | "
          f"{a.ttft_mean:.3f} / {a.ttft_p99:.3f} s | {b.load_max_over_mean:.2f} | {b.of_ceiling:.1%} | "
          f"{b.ttft_mean:.3f} / {b.ttft_p99:.3f} s |" for seed, a, b in seeds],
        "",
        "Replica choice time: the next section (written by this run, or alone by `--choice-only`).",
    ]
    if live:
        md += ["", f"### Live fabric — first {args.live_requests} Mooncake requests, speed {speed_m:.2f}",
               "", "Embedded nats-server, 8 simulated workers (workers/sim_engine.py, real time) "
               "and the router(s) each in their own process on this machine; measured at the "
               "client. Hit rate: cached / prompt tokens as the workers' engines report them.",
               "", "| routers | answered | engine hit rate | TTFT mean | TTFT p50 | TTFT p99 | "
               "assigned max/mean (10 s) |", "|---|---|---|---|---|---|---|"]
        for name, r in live.items():
            md.append(f"| {name} | {r.answered}/{r.requests} | {r.hit_rate:.2%} | {r.ttft_mean:.3f} s | "
                      f"{r.ttft_p50:.3f} s | {r.ttft_p99:.3f} s | {r.assigned_max_over_mean:.2f} |")
    text = "\n".join(md)
    if not args.no_save:
        write_section("replay", text)
        write_section("replay-choice", choice_text)
    print(text)
    print(choice_text)


if __name__ == "__main__":
    main()
