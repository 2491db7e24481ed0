"""Decision time per request by stage, and the sticky-session bounce rate.

Stages, timed as router.service times them, with the shipped scorer and rules:
  context  request → RoutingContext (tokenise the window, signals, scorer, prefix hashes)
  model    RoutingContext → model (rules, explicit model, sticky sessions)
  replica  model → ordered replicas (router.replicas, whichever version is on the tree)
  claim    the chosen replica's placement claim (Policy.placed: the prefix map and its load),
           which the router makes right after the choice, before the publish; reported
           beside the whole decision (context + model + replica), and with it
over every dev prompt (../shared/data/prompts/dev.jsonl), at 4, 64 and 1,024 live
replicas per model, and over synthetic long prompts (a dev prompt's ask after a document
made of other dev prompts) of 8 KB, ~8k tokens and 32 KB, and ~8k tokens of ASCII-only
dev prompts (CPython encodes a str holding any non-ASCII character to UTF-8 ~30x slower
than an ASCII one, and the prefix hashes need those bytes). The baseline, timed side by
side in the same run on the same prompts, is the first-cut context extraction this
replaced (a dozen regex scans over 1 KB at each end of the prompt, no scorer).

Each request is decoded from its wire bytes (msgspec, untimed) right before its decision,
as the router decodes a message right before deciding it, so a prompt is in the CPU caches
as it is in a router, not wherever a bench's list of a few hundred long prompts left it.

Each pass starts from a fresh router state that has decided 120 other requests, untimed
(WARMUP_REQUESTS and 100 short dev prompts, warmup_requests): a running router is past its
first requests and has the common words' table lines in its caches.

Replica choice runs in a steady state: after each placement the replica's own queue is
sampled at half its capacity (as a worker draining it would leave it), so the fleet never
saturates and every request takes the normal path rather than the ``.any`` spill.

The box is shared with other jobs, so wall time is noisy: the report gives the load
average before and after, and ``--instructions`` adds a noise-free companion figure,
instructions per request counted by valgrind (cachegrind) for the model choice (context +
rules) and for the whole decision (+ replica choice, its placement claim and the bench's
queue sample).

Bounce rate: synthetic multi-turn sessions from dev prompts (each turn appends a user
message to the conversation; 70% of follow-ups come from the first turn's source, 30%
from anywhere), routed with and without the sticky-session table. A bounce is a turn
that goes to a different model than the turn before it in the same session.

Cold caches: the dev, 8 KB and ~8k-token prompts again with the CPU caches emptied before
each request's decode (an 8 MiB buffer walked between requests, outside the timing), as a
live router meets its code and tables when other work runs between its requests.

After idle: every 8th dev prompt and the ~8k-token prompts at 64 replicas again, the
process sleeping 0.5 or 3 ms before each request's decode (IDLE_GAPS), as a router with
sparse requests waits between them, beside the fixed-work loop's first run after the
same sleep.

Turned-over placement memory: the rows above start from an empty placement memory. A
router's fills: each generation holds up to half its capacity, and from its second turn
over on, every insert also frees two entries of the retired generation (half the time in
a steady state). The dev prompts and ~8k-token prompts again at 64 replicas, each model's
memory first given synthetic claims until it has turned over twice and freed a quarter of
its retired generation (turn_over).

The C twin (router/_scan.c) against the Python code it mirrors: the context stage again,
in a child process started with SLM_PURE_PYTHON=1, and (with --instructions) the
instruction counts both ways.

Neighbours: with --neighbour cpu|memory, a process pinned to the other CPU(s) keeps them
busy throughout (arithmetic, or copying 32 MiB over and over), as nats-server, workers and
clients would beside a router on this 2-core machine.

Run: make bench-decision  (or python -m bench.decision [--data PATH] [--quick] [--cpu N] [--instructions]
     [--no-save] [--neighbour cpu|memory])
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import inspect
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from bench.results import machine, percentile, write_section
from router.context import PREFIX_BLOCK_CHARS, PrefixMemory, estimate_tokens
from router.placement import DEFAULT_CAPACITY, PlacementMemory, record
from router.policy import Policy
from router.registry import ReplicaTable
from router.rules import load_rules
from router.scorer import shared_scorer
from router.sessions import SessionTable
from subjects import codec
from subjects.messages import ChatMessage, ChatRequest, Heartbeat

REPO = Path(__file__).resolve().parents[1]
DEV = REPO.parent / "shared" / "data" / "prompts" / "dev.jsonl"
MODELS = ("extraction", "code", "reasoning", "safety", "general")
REPLICA_COUNTS = (4, 64, 1024)
LONG_SIZES = (("8 KB", 8 * 1024, False), ("~8k tokens", 31_500, False), ("32 KB", 32 * 1024, False),
              ("~8k tokens, ASCII", 31_500, True))
PASSES = 3
CAPACITY = 16  # each replica's heartbeat capacity


# ---- the baseline: the first-cut context extraction (regex scans), kept here to compare ----

_FIRST_CUT_PATTERNS = [re.compile(p, f) for p, f in [
    (r"```", 0),
    (r"Traceback \(most recent call last\)|^\s+at [\w.$]+\(", re.M),
    (r"\b(?:error|warning)(?:\[\w+\])?: |\bSyntaxError\b|\bTypeError\b|undefined reference", 0),
    (r"\b[\w./-]+\.(?:py|js|ts|go|rs|java|cpp|c|h|rb|sh)\b", 0),
    (r"\b(?:def|class|import|return|function|const|fn|public static|#include)\b", 0),
    (r"\b(?:write|implement|create|fix|debug)\b.{0,40}\b(?:function|program|script|class|method|code|regex|query)\b", re.I),
    (r"\b(?:json only|only json|respond in json|return json|as json|in json format|valid json)\b", re.I),
    (r"\b(?:bomb|explosive|firearm|weapon|gun)s?\b", re.I),
    (r"\b(?:malware|ransomware|hack into|exploit|keylogger|phishing)\b", re.I),
    (r"\b(?:suicide|self-harm|kill myself)\b", re.I),
    (r"\b(?:murder|assault|poison|kidnap)\b", re.I),
    (r"\b(?:meth|cocaine|heroin|fentanyl)\b", re.I),
    (r"\b(?:counterfeit|launder|scam|steal)\w*\b", re.I),
    (r"\b(?:racist|genocide|ethnic cleansing)\b", re.I),
]]


def first_cut_context(request: ChatRequest) -> tuple[Any, ...]:
    text = "".join(f"{m.role}\x1f{m.text()}\x1e" for m in request.messages)
    window = text if len(text) <= 2048 else text[:1024] + "\n" + text[-1024:]
    found = tuple(bool(p.search(window)) for p in _FIRST_CUT_PATTERNS)
    data = text.encode("utf-8", "surrogatepass")
    h, hashes = 0, []
    for start in range(0, min(len(data), 2048 * 64) - 2048 + 1, 2048):
        h = xxhash.xxh3_64_intdigest(data[start:start + 2048], h)
        hashes.append(h >> 1)
    return found, tuple(hashes), len(text) // 4


# ---- workloads ----------------------------------------------------------------------------

def load_prompts(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:  # not splitlines(): prompts hold U+2028
        return [json.loads(line) for line in lines if line.strip()]


def as_request(row: dict[str, Any], **fields: Any) -> ChatRequest:
    messages = [ChatMessage(role=m["role"], content=m["content"]) for m in row["request"]["messages"]]
    return ChatRequest(messages=messages, tools=row["request"].get("tools"), **fields)


def long_requests(rows: list[dict[str, Any]], size: int, count: int, rng: random.Random,
                  ascii_only: bool = False) -> list[ChatRequest]:
    """A document of other dev prompts, then one dev prompt's ask, ``size`` characters in all."""
    if ascii_only:
        rows = [r for r in rows if r["request"]["messages"][-1]["content"].isascii()]
    out = []
    for _ in range(count):
        ask = rng.choice(rows)["request"]["messages"][-1]["content"]
        parts: list[str] = []
        total = 0
        while total < size - len(ask):
            part = rng.choice(rows)["request"]["messages"][-1]["content"]
            parts.append(part)
            total += len(part) + 2
        document = "\n\n".join(parts)[: max(size - len(ask) - 2, 0)]
        out.append(ChatRequest(messages=[ChatMessage(role="user", content=document + "\n\n" + ask)]))
    return out


def replica_table(replicas: int) -> ReplicaTable:
    table = ReplicaTable(ttl=1e9)
    for model in MODELS:
        for i in range(replicas):
            table.apply(Heartbeat(model=model, replica=f"r{i}", capacity=CAPACITY), now=0.0)
    # The router's periodic upkeep has run since the replicas joined (router.service calls
    # ReplicaTable.refresh off the request path): each model's hash ring is built and its
    # lookup table filled, as in a running router, rather than on the first timed request.
    refresh = getattr(table, "refresh", None)
    if refresh is not None:
        refresh()
    return table


def new_policy() -> Policy:
    scorer = shared_scorer()
    return Policy(load_rules(None, scorer.thresholds), PrefixMemory(), scorer=scorer, sessions=SessionTable())


# ---- timing -----------------------------------------------------------------------------------

def _takes_now(method: Any) -> bool:
    """Replica choice is another component's and its signature moves: pass the clock if it
    takes one."""
    return "now" in inspect.signature(method).parameters


def replica_stage(policy: Policy, table: ReplicaTable) -> tuple[Any, Any, Any]:
    """Replica choice, its placement claim (the router's bookkeeping right after the
    choice: timed as its own stage), and what the bench runs after both (untimed): a sample
    that leaves the replica's queue at half its capacity, as the router's load sampler
    would see a worker draining it."""
    placed = getattr(policy, "placed", None)  # replica choice's own bookkeeping, if it has any
    choose_replicas: Any = policy.choose_replicas  # its signature moves (another component's)
    if _takes_now(choose_replicas):
        choose_replicas = functools.partial(choose_replicas, now=0.0)
    if placed is not None and _takes_now(placed):
        placed = functools.partial(placed, now=0.0)

    def claim(ctx: Any, model: str, candidates: list[Any]) -> None:
        if candidates and placed is not None:
            placed(ctx, model, candidates[0][0], table)

    def after(ctx: Any, model: str, candidates: list[Any]) -> None:
        if not candidates:
            return
        replica = candidates[0][0]
        fleet = table.fleet(model) if hasattr(table, "fleet") else None
        sample = getattr(fleet, "sample", None)
        if sample is not None and fleet is not None and replica in getattr(fleet, "members", ()):
            sample(replica, CAPACITY // 2)

    return choose_replicas, claim, after


# Cold caches: a live router decides between other work (nats-py, asyncio, the client
# and nats-server on the same cores), which evicts its code and tables from the CPU
# caches; back to back, the bench keeps them warm. Walking this buffer (a byte in every
# 64-byte line: 8 MiB, more than the caches here) between requests, outside the timing,
# stands in for that other work.
_EVICTION_BUFFER = bytearray(8 << 20)
_EVICTION_LINES = bytes(len(range(0, len(_EVICTION_BUFFER), 64)))


def evict_caches() -> None:
    _EVICTION_BUFFER[::64] = _EVICTION_LINES


# Untimed requests through each fresh router state before its timed pass: a running
# router is past its first requests (their first dict allocations, first calls through
# each path), and a pass of 400 long prompts has only four requests above its p99, two of
# which were the pass's first two. Short and ~8k-token prompts of their own text, so no
# timed prompt finds its prefix already seen. The long ones end in a character of each
# storage width (a str is stored 1, 2 or 4 bytes a character), so each width's code has
# run before the first timed prompt of that width.
WARMUP_REQUESTS = [
    ChatRequest(messages=[ChatMessage(role="user", content=f"warm-up {i}: " + "ocean tide harbour " * (
        1800 if i % 2 else 4) + ("", "é", "—", "🙂")[i // 2 % 4])]) for i in range(20)]


def warmup_requests(rows: list[dict[str, Any]], count: int = 100) -> list[ChatRequest]:
    """WARMUP_REQUESTS and ``count`` short dev prompts: a running router has read real
    prompts, so the lexicon table's lines for common words are in its caches; after the
    synthetic ones alone, the first few timed prompts met them all cold (~1.5x their peers,
    enough to be a long workload's p99). Short ones only (well under a prefix block), so
    no timed prompt's prefix is seen early."""
    short = [as_request(row) for row in rows
             if sum(len(m["content"]) for m in row["request"]["messages"]) < PREFIX_BLOCK_CHARS // 2]
    return WARMUP_REQUESTS + short[:count]


# The machine's own tail, measured beside the decisions: the same pure-Python loop (~15 µs
# here) timed after every decision, in the same passes, its median of 3 taken the same way.
# On this shared virtual machine a fixed piece of work has a tail of its own (preemption,
# other jobs, the host); this column says how much of a row's p99 over its p50 that is.
FIXED_WORK_STEPS = 400


def fixed_work() -> int:
    total = 0
    for step in range(FIXED_WORK_STEPS):
        total += step
    return total


# Synthetic claims that turn a placement memory over: distinct prefixes (16 a claim, as an
# ~8k-token prompt has) until the newer generation has filled twice (the first turn over
# retires an empty generation) and a quarter of the retired one is freed, two entries an
# insert: the middle of the half of a steady state in which claims free entries.
TURN_OVER_KEYS = 2 * (DEFAULT_CAPACITY // 2) + DEFAULT_CAPACITY // 8


def turn_over(memory: PlacementMemory, replicas: list[str], rng: random.Random) -> None:
    bits = rng.getrandbits
    for at in range(0, TURN_OVER_KEYS, 16):
        record(memory, replicas[at // 16 % len(replicas)], [bits(63) for _ in range(16)], 0)


def time_stages(requests: list[ChatRequest], replicas: int, cold: bool = False,
                warmup: list[ChatRequest] = WARMUP_REQUESTS, turned_over: bool = False,
                idle: float = 0.0) -> dict[str, list[float]]:
    """Each request is decoded from its wire bytes right before its decision (untimed), as
    the router decodes a message right before deciding it: the prompt's memory is as warm
    (or, long ones cycling through a bench's megabytes, as cold) as it is in a router.
    With ``turned_over``, each model's placement memory is turned over first (turn_over).
    With ``idle``, the process sleeps that many seconds before each request's decode, as a
    router waits between requests when they are sparse (see IDLE_GAPS)."""
    policy, table = new_policy(), replica_table(replicas)
    if turned_over:
        names = [f"r{i}" for i in range(replicas)]
        for model in MODELS:
            turn_over(table.fleet(model).placements, names, random.Random(model))
        gc.collect()  # the collections the fill's allocations are due, before the timing
    choose_replicas, claim, after = replica_stage(policy, table)
    # Encoded before the warm-up: encoding a pass's requests writes up to ~50 MB, which
    # would leave the first timed request to meet every table and all the code cold (the
    # first request of every pass took ~100 µs, 3x its peers, for that alone). Cold caches
    # are measured on purpose, with cold=True.
    payloads = on_the_wire(requests)
    for request in warmup:  # untimed: see WARMUP_REQUESTS and warmup_requests
        ctx = policy.context(request)
        choice = policy.choose_model(ctx, 0.0)
        candidates = choose_replicas(ctx, choice.model, table)
        claim(ctx, choice.model, candidates)
        after(ctx, choice.model, candidates)
    clock = time.perf_counter_ns
    out: dict[str, list[float]] = {"context": [], "model": [], "replica": [], "total": [], "claim": [],
                                   "with_claim": [], "fixed": []}
    for i, payload in enumerate(payloads):
        if cold:
            evict_caches()
        if idle:
            time.sleep(idle)
        request = codec.decode_request(payload)
        t0 = clock()
        ctx = policy.context(request)
        t1 = clock()
        choice = policy.choose_model(ctx, float(i))
        t2 = clock()
        candidates = choose_replicas(ctx, choice.model, table)
        t3 = clock()
        claim(ctx, choice.model, candidates)
        t4 = clock()
        after(ctx, choice.model, candidates)
        t5 = clock()
        fixed_work()
        t6 = clock()
        out["context"].append((t1 - t0) / 1e3)
        out["model"].append((t2 - t1) / 1e3)
        out["replica"].append((t3 - t2) / 1e3)
        out["total"].append((t3 - t0) / 1e3)
        out["claim"].append((t4 - t3) / 1e3)
        out["with_claim"].append((t4 - t0) / 1e3)
        out["fixed"].append((t6 - t5) / 1e3)
    return out


# After idle: the rows above decide back to back. A router whose requests are sparse
# sleeps in its event loop between them, and on this virtual machine an idle vCPU comes
# back to caches (and branch predictors) that other work on the host has refilled: every
# line a decision touches is fetched again. The gaps: 0.5 ms (~2,000 requests/s) and
# 3 ms (~300/s, about one request at a time through the fabric's ~3.5 ms TTFT).
IDLE_GAPS = (0.0005, 0.003)


def fixed_work_after_idle(idle: float, count: int) -> list[float]:
    """The fixed loop's first run after each of ``count`` sleeps of ``idle`` seconds: what
    the same idle costs work with almost no footprint (a few lines of the interpreter)."""
    clock, out = time.perf_counter_ns, []
    for _ in range(count):
        time.sleep(idle)
        t0 = clock()
        fixed_work()
        out.append((clock() - t0) / 1e3)
    return out


def on_the_wire(requests: list[ChatRequest]) -> list[bytes]:
    return [codec.encode_request(request) for request in requests]


def time_baseline(requests: list[ChatRequest]) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for payload in on_the_wire(requests):
        request = codec.decode_request(payload)  # as time_stages: decoded just before
        t0 = clock()
        first_cut_context(request)
        out.append((clock() - t0) / 1e3)
    return out


def median_of_passes(run: Any, passes: int) -> Any:
    """Each request's median time over ``passes`` full passes (fresh state each pass).

    The box is shared (other jobs run while this does); the median of three per request
    keeps one-off preemptions out of the tail without hiding costs every pass pays.
    """
    results = [run() for _ in range(passes)]
    if isinstance(results[0], dict):
        return {k: [sorted(v)[len(v) // 2] for v in zip(*(r[k] for r in results), strict=True)]
                for k in results[0]}
    return [sorted(v)[len(v) // 2] for v in zip(*results, strict=True)]


def p(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.1f}"


# ---- bounce rate ----------------------------------------------------------------------------

def sessions(rows: list[dict[str, Any]], count: int, rng: random.Random) -> list[list[ChatRequest]]:
    by_source: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    out = []
    for s in range(count):
        first = rng.choice(rows)
        turns = [first]
        for _ in range(rng.randint(2, 7)):
            pool = by_source[first["source"]] if rng.random() < 0.7 else rows
            turns.append(rng.choice(pool))
        history: list[ChatMessage] = []
        requests = []
        for turn in turns:
            history = [*history, ChatMessage(role="user", content=turn["request"]["messages"][-1]["content"])]
            requests.append(ChatRequest(messages=list(history), session_id=f"session-{s}"))
            history.append(ChatMessage(role="assistant", content="(the answer)"))
        out.append(requests)
    return out


def bounce_rate(conversations: list[list[ChatRequest]], sticky: bool) -> tuple[float, Counter[str], int]:
    policy = new_policy()
    if not sticky:  # a zero TTL: every session is cold by its next turn (30 s later)
        policy.rules = dataclasses.replace(policy.rules, sticky_ttl=0.0)
    bounces = follow_ups = 0
    paths: Counter[str] = Counter()
    now = 0.0
    for conversation in conversations:
        previous = ""
        for request in conversation:
            now += 30.0
            choice = policy.choose_model(policy.context(request), now)
            paths[choice.path.name.lower()] += 1
            if previous:
                follow_ups += 1
                bounces += choice.model != previous
            previous = choice.model
    return bounces / max(follow_ups, 1), paths, follow_ups


# ---- report ---------------------------------------------------------------------------------

def build_workloads(rows: list[dict[str, Any]], quick: bool, rng: random.Random) -> list[tuple[str, list[ChatRequest]]]:
    dev = [as_request(r) for r in rows]
    if quick:
        dev = dev[::10]
    long_count = 60 if quick else 400
    workloads = [("dev prompts", dev)]
    for name, size, ascii_only in LONG_SIZES:
        # The ASCII set draws from its own generator, so the others (and the sessions
        # below) are the same prompts as in runs before it was added.
        source = random.Random(13) if ascii_only else rng
        workloads.append((name, long_requests(rows, size, long_count, source, ascii_only)))
    return workloads


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# ---- instruction counts (valgrind) -------------------------------------------------------------

COUNTED = ("dev prompts", "~8k tokens", "~8k tokens, ASCII")


def run_context_worker(data: Path, quick: bool, workload: str) -> None:
    """What the pure-Python comparison runs (in a process started with SLM_PURE_PYTHON=1):
    the workload's context times, each request's median of PASSES passes, as JSON."""
    rows = load_prompts(data)
    requests = dict(build_workloads(rows, quick, random.Random(11)))[workload]
    warmup = warmup_requests(rows)
    time_stages(requests[:200], 4, warmup=warmup)  # warm up as the main run does
    stages = median_of_passes(functools.partial(time_stages, requests, 4, warmup=warmup), PASSES)
    print(json.dumps(stages["context"]))


def pure_python_context(data: Path, quick: bool, workload: str, cpu: int | None) -> list[float]:
    """``workload``'s context times with the C twin switched off, from a child process."""
    command = [sys.executable, "-m", "bench.decision", "--data", str(data), "--context-worker", workload]
    if quick:
        command.append("--quick")
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1], env={**os.environ, "SLM_PURE_PYTHON": "1"})
    return [float(v) for v in json.loads(done.stdout.splitlines()[-1])]


def run_counted(data: Path, workload: str, stages: str, passes: int) -> None:
    """The worker valgrind runs: one warm-up pass, then ``passes`` more, untimed."""
    rows = load_prompts(data)
    requests = dict(build_workloads(rows, False, random.Random(11)))[workload]
    if workload == "dev prompts":
        requests = requests[::8]  # valgrind runs ~50x slower: every 8th prompt is plenty
    policy, table = new_policy(), replica_table(4)
    choose_replicas, claim, after = replica_stage(policy, table)
    for _ in range(1 + passes):
        for i, request in enumerate(requests):
            ctx = policy.context(request)
            choice = policy.choose_model(ctx, float(i))
            if stages == "all":
                candidates = choose_replicas(ctx, choice.model, table)
                claim(ctx, choice.model, candidates)
                after(ctx, choice.model, candidates)
    print(f"requests={len(requests)}", file=sys.stderr)


def count_instructions(data: Path, workload: str, stages: str, pure_python: bool = False) -> float:
    """Instructions per request: (2 passes - 0 passes) / (2 x requests), by cachegrind."""
    counts, requests = [], 0
    # One hash seed for both runs: their difference is the figure, and with a random seed
    # each the two start-ups (imports, workloads, dict layouts) differ by enough to move it
    # ~±5% (~8k tokens: 87.9k to 96.5k over four runs of the same code; 93.4k twice with 0).
    env = {**os.environ, "SLM_PURE_PYTHON": "1" if pure_python else "0", "PYTHONHASHSEED": "0"}
    for passes in (0, 2):
        done = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, "-m", "bench.decision", "--data", str(data),
             "--count-worker", workload, stages, str(passes)],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1], env=env)
        refs = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        found = re.search(r"requests=(\d+)", done.stderr)
        if refs is None or found is None:
            raise RuntimeError(f"valgrind printed no count: {done.stderr[-500:]}")
        counts.append(int(refs.group(1).replace(",", "")))
        requests = int(found.group(1))
    return (counts[1] - counts[0]) / (2 * requests)


def instruction_lines(data: Path) -> list[str]:
    if shutil.which("valgrind") is None:
        return ["", "(valgrind not installed: no instruction counts; `apt-get install valgrind`.)"]
    lines = ["", "### Instructions per request (valgrind, noise-free)", "",
             "Counted by `valgrind --tool=cachegrind` (`python -m bench.decision --instructions`): "
             "a run with two untimed passes minus a run with none (PYTHONHASHSEED=0 for both), over 4 "
             "replicas per model. "
             "Model choice = context + rules; whole decision = + replica choice, its placement claim, "
             "and the bench's queue sample (a load sample per request keeps the fleet from saturating; "
             "the router samples each replica's queue periodically, not per request). Pure Python: the same run with SLM_PURE_PYTHON=1 "
             "(router/_scan.c, the C twin, switched off).", "",
             "| prompts | model choice | model choice, pure Python | whole decision | "
             "whole decision, pure Python | whole decision: pure Python / C twin |",
             "| --- | --- | --- | --- | --- | --- |"]
    for workload in COUNTED:
        model = count_instructions(data, workload, "model")
        model_pure = count_instructions(data, workload, "model", pure_python=True)
        whole = count_instructions(data, workload, "all")
        whole_pure = count_instructions(data, workload, "all", pure_python=True)
        lines.append(f"| {workload} | {model:,.0f} | {model_pure:,.0f} | {whole:,.0f} | {whole_pure:,.0f} | "
                     f"{whole_pure / whole:.2f}x |")
    return lines


# What the other core runs with --neighbour: a router shares its 2-core machine with
# nats-server, workers and clients. "cpu" is arithmetic (contends for the core's share of
# the host, not for memory); "memory" copies 32 MiB over and over (contends for the shared
# L3 cache and memory bandwidth, the harder neighbour for a memory-bound long prompt).
NEIGHBOURS = {
    "cpu": "x = 0\nwhile True:\n    x = (x + 1) & 0xFFFF",
    "memory": "a = bytes(32 << 20)\nwhile True:\n    b = bytes(bytearray(a))",
}


@contextlib.contextmanager
def neighbour(kind: str | None, cpu: int | None) -> Iterator[str]:
    """Runs NEIGHBOURS[kind] pinned to every CPU but ``cpu`` while the block runs; yields a
    phrase for the results header ('' with no neighbour)."""
    if kind is None:
        yield ""
        return
    others = [] if cpu is None else sorted(set(range(os.cpu_count() or 1)) - {cpu})  # we are pinned to cpu
    if not others:
        raise SystemExit("--neighbour needs --cpu N and another CPU to put the neighbour on")
    child = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[kind]],
                             preexec_fn=lambda: os.sched_setaffinity(0, set(others)))
    try:
        yield f"; a {kind}-bound neighbour process busy on CPU {','.join(map(str, others))} throughout"
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--no-save", action="store_true",
                        help="print the tables only; leave bench/results.md as it is")
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU (fewer migrations)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions per request with valgrind (a few minutes)")
    parser.add_argument("--neighbour", choices=sorted(NEIGHBOURS),
                        help="keep the other CPU(s) busy while timing (needs --cpu): cpu-bound or "
                             "memory-bound work beside the router, as on a shared 2-core machine")
    parser.add_argument("--count-worker", nargs=3, metavar=("WORKLOAD", "STAGES", "PASSES"),
                        help=argparse.SUPPRESS)  # what --instructions runs under valgrind
    parser.add_argument("--context-worker", metavar="WORKLOAD",
                        help=argparse.SUPPRESS)  # the pure-Python side of the comparison
    args = parser.parse_args()
    if args.count_worker:
        workload, stages, passes = args.count_worker
        run_counted(args.data, workload, stages, int(passes))
        return
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.context_worker:
        run_context_worker(args.data, args.quick, args.context_worker)
        return
    with neighbour(args.neighbour, args.cpu) as beside:
        report(args, beside)


def report(args: argparse.Namespace, beside: str) -> None:
    """Times every section and writes (unless --no-save) and prints the results."""
    rows = load_prompts(args.data)
    rng = random.Random(11)
    workloads = build_workloads(rows, args.quick, rng)
    warmup = warmup_requests(rows)
    gc.collect()
    for _, requests in workloads:  # warm caches and the scorer before timing
        time_stages(requests[:200], 4, warmup=warmup)

    load_before = load()
    lines = [
        "## Model choice: decision time by stage", "",
        f"Machine: {machine()}.  ",
        "Command: `make bench-decision` (`python -m bench.decision"
        + (f" --cpu {args.cpu}" if args.cpu is not None else "")
        + (" --instructions" if args.instructions else "")
        + (f" --neighbour {args.neighbour}" if args.neighbour else "") + "`). Shipped scorer and default rules; "
        f"per-request wall time in µs (time.perf_counter_ns), each request's median of {PASSES} passes, "
        "each request decoded from its wire bytes just before its decision (untimed, as in the router), "
        "GC on; the box is shared with other jobs, which were not stopped "
        f"(load average 1/5/15 min: {load_before} before, LOAD_AFTER after){beside}. Fixed work: the same "
        f"pure-Python loop ({FIXED_WORK_STEPS} additions) timed after every decision in the same passes, "
        "its median of 3 the same way: identical work, so its p99 over its p50 is the machine's own tail "
        "in that row.", "",
        "| prompts | n | chars (mean) | est. tokens (mean) | replicas/model | context p50 / p99 | "
        "model p50 / p99 | replica p50 / p99 | **whole decision p50 / p99** | placement claim p50 / p99 | "
        "decision + claim p50 / p99 | fixed work p50 / p99 (the machine's own tail) | "
        "first-cut context p50 / p99 | context speed-up (p50) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    summary = []
    native_context: dict[str, list[float]] = {}
    warm_total: dict[str, list[float]] = {}
    fresh_claim: dict[str, list[float]] = {}
    for name, requests in workloads:
        chars = sum(len(m.text()) for r in requests for m in r.messages) / len(requests)
        tokens = sum(estimate_tokens("".join(m.text() for m in r.messages)) for r in requests) / len(requests)
        baseline = median_of_passes(functools.partial(time_baseline, requests), PASSES)
        for replicas in REPLICA_COUNTS:
            stages = median_of_passes(functools.partial(time_stages, requests, replicas, warmup=warmup), PASSES)
            speedup = percentile(baseline, 50) / percentile(stages["context"], 50)
            lines.append(
                f"| {name} | {len(requests)} | {chars:,.0f} | {tokens:,.0f} | {replicas} | "
                f"{p(stages['context'], 50)} / {p(stages['context'], 99)} | "
                f"{p(stages['model'], 50)} / {p(stages['model'], 99)} | "
                f"{p(stages['replica'], 50)} / {p(stages['replica'], 99)} | "
                f"**{p(stages['total'], 50)} / {p(stages['total'], 99)}** | "
                f"{p(stages['claim'], 50)} / {p(stages['claim'], 99)} | "
                f"{p(stages['with_claim'], 50)} / {p(stages['with_claim'], 99)} | "
                f"{p(stages['fixed'], 50)} / {p(stages['fixed'], 99)} | "
                f"{p(baseline, 50)} / {p(baseline, 99)} | {speedup:.1f}x |")
            summary.append((name, replicas, percentile(stages["total"], 99)))
            if replicas == REPLICA_COUNTS[0]:
                native_context[name] = stages["context"]
            if replicas == 64:
                warm_total[name] = stages["total"]
                fresh_claim[name] = stages["claim"]
    lines += ["", "### Cold caches", "",
              "The same decisions with the CPU caches emptied before each request's decode (an 8 MiB "
              "buffer walked between requests, outside the timing), as a live router meets its code and "
              "tables when other work runs between its requests; 64 replicas per model.", "",
              "| prompts | context p50 / p99 | model p50 / p99 | replica p50 / p99 | "
              "**whole decision p50 / p99** | warm whole decision p50 / p99 (above) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, requests in workloads[:3]:  # dev prompts, 8 KB and ~8k tokens (the target's longest)
        cold = median_of_passes(functools.partial(time_stages, requests, 64, True, warmup), PASSES)
        warm = warm_total[name]
        lines.append(
            f"| {name} | {p(cold['context'], 50)} / {p(cold['context'], 99)} | "
            f"{p(cold['model'], 50)} / {p(cold['model'], 99)} | {p(cold['replica'], 50)} / {p(cold['replica'], 99)} | "
            f"**{p(cold['total'], 50)} / {p(cold['total'], 99)}** | {p(warm, 50)} / {p(warm, 99)} |")
    lines += ["", "### After idle", "",
              "The rows above decide back to back. Here the process sleeps before each request's "
              "decode, as a router with sparse requests waits in its event loop: "
              + " and ".join(f"{gap * 1e3:g} ms" for gap in IDLE_GAPS) + " (about "
              + " and ".join(f"{1 / gap:,.0f}" for gap in IDLE_GAPS) + " requests/s). On this virtual "
              "machine an idle vCPU comes back to caches the host's other work has refilled, so every "
              "line a decision touches is fetched again. Beside it, the fixed-work loop's first run "
              "after the same sleep: the idle's cost to work with almost no footprint. Every 8th dev "
              "prompt and the ~8k-token prompts, 64 replicas per model.", "",
              "| prompts | idle before each | context p50 / p99 | model p50 / p99 | replica p50 / p99 | "
              "**whole decision p50 / p99** | fixed work, first run after the idle p50 / p99 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, requests in workloads[:3:2]:  # dev prompts and ~8k tokens
        sample = requests[::8] if name == "dev prompts" else requests
        for gap in (0.0, *IDLE_GAPS):
            idle = median_of_passes(functools.partial(time_stages, sample, 64, warmup=warmup, idle=gap), PASSES)
            fixed = fixed_work_after_idle(gap, len(sample)) if gap else idle["fixed"]
            lines.append(
                f"| {name} | {'none' if not gap else f'{gap * 1e3:g} ms'} | "
                f"{p(idle['context'], 50)} / {p(idle['context'], 99)} | "
                f"{p(idle['model'], 50)} / {p(idle['model'], 99)} | {p(idle['replica'], 50)} / {p(idle['replica'], 99)} | "
                f"**{p(idle['total'], 50)} / {p(idle['total'], 99)}** | {p(fixed, 50)} / {p(fixed, 99)} |")
    lines += ["", "### Placement claim once the placement memory has turned over", "",
              "The rows above start from an empty placement memory. A router's fills: each of its two "
              f"generations holds up to {DEFAULT_CAPACITY // 2:,} prefixes, and from the second turn over "
              "on every insert also frees two entries of the retired generation (half the time in a "
              f"steady state). Here each model's memory was first given {TURN_OVER_KEYS:,} synthetic "
              "prefixes (16 a claim): turned over twice, a quarter of the retired generation freed. "
              "64 replicas per model.", "",
              "| prompts | replica p50 / p99 | whole decision p50 / p99 | **placement claim p50 / p99** | "
              "decision + claim p50 / p99 | empty memory (above): whole decision, claim p50 / p99 |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, requests in workloads:
        if name not in ("dev prompts", "~8k tokens"):
            continue
        aged = median_of_passes(functools.partial(time_stages, requests, 64, warmup=warmup, turned_over=True),
                                PASSES)
        fresh, fresh_total = fresh_claim[name], warm_total[name]
        lines.append(
            f"| {name} | {p(aged['replica'], 50)} / {p(aged['replica'], 99)} | "
            f"{p(aged['total'], 50)} / {p(aged['total'], 99)} | "
            f"**{p(aged['claim'], 50)} / {p(aged['claim'], 99)}** | "
            f"{p(aged['with_claim'], 50)} / {p(aged['with_claim'], 99)} | "
            f"{p(fresh_total, 50)} / {p(fresh_total, 99)}; {p(fresh, 50)} / {p(fresh, 99)} |")
    lines += ["", "### The C twin against the Python code", "",
              "Context stage (4 replicas per model), this run against a child process of the same run "
              "with SLM_PURE_PYTHON=1 (router/_scan.c switched off: the same contexts, tests/test_scan.py "
              "checks it), one after the other.", "",
              "| prompts | context p50 / p99, C twin | context p50 / p99, pure Python | speed-up p50 / p99 |",
              "| --- | --- | --- | --- |"]
    for name, _ in workloads:
        native, pure = native_context[name], pure_python_context(args.data, args.quick, name, args.cpu)
        lines.append(f"| {name} | {p(native, 50)} / {p(native, 99)} | {p(pure, 50)} / {p(pure, 99)} | "
                     f"{percentile(pure, 50) / percentile(native, 50):.1f}x / "
                     f"{percentile(pure, 99) / percentile(native, 99):.1f}x |")
    lines = [line.replace("LOAD_AFTER", load()) for line in lines]
    conversations = sessions(rows, 150 if args.quick else 1000, rng)
    free_rate, free_paths, follow = bounce_rate(conversations, sticky=False)
    sticky_rate, sticky_paths, _ = bounce_rate(conversations, sticky=True)
    lines += [
        "", "### Sticky sessions: bounce rate", "",
        f"{len(conversations)} synthetic sessions of 3–8 turns from dev prompts ({follow} follow-up turns). "
        "A bounce is a turn sent to another model than the turn before it.", "",
        "| sticky sessions | bounce rate | decision paths |", "| --- | --- | --- |",
        f"| off | {100 * free_rate:.1f}% | {dict(sorted(free_paths.items()))} |",
        f"| on (default rules: TTL 900 s, safety always wins) | {100 * sticky_rate:.1f}% | "
        f"{dict(sorted(sticky_paths.items()))} |",
    ]
    if args.instructions:
        lines += instruction_lines(args.data)
    if not args.no_save:
        write_section("decision", "\n".join(lines))
    print("\n".join(lines))
    worst = max((v for n, r, v in summary if n != "32 KB"), default=float("nan"))
    print(f"\nworst whole-decision p99 up to ~8k tokens: {worst:.1f} µs")


if __name__ == "__main__":
    main()
