"""Traces in the Mooncake format, and their expansion into real chat requests.

A record is one JSON object a line: ``timestamp`` (ms from the trace start),
``input_length`` and ``output_length`` (tokens) and ``hash_ids`` (one id per 512-token
block of the prompt; equal ids = equal block content, and since Mooncake chains its
block hashes, equal ids at position i mean equal prompts up to block i). Two optional
keys this project adds for its own generated workloads: ``session_id`` (the request names
a session) and ``system_blocks`` (the first n blocks are a system message).

Expansion turns every block id into exactly ``PREFIX_BLOCK_CHARS`` characters of
deterministic ASCII (equal ids → equal text, different ids differ in their first
characters), so the router's chained block hashes (router.context) line up one to one
with the trace's blocks: router hash i names exactly the ids ``hash_ids[: i + 1]``.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec

from router.context import PREFIX_BLOCK_CHARS
from subjects.messages import ChatMessage, ChatRequest

TRACE_BLOCK_TOKENS = 512


class TraceError(ValueError):
    """Raised when a trace file cannot be read as Mooncake-format records; names the line."""


class TraceRecord(msgspec.Struct, frozen=True, kw_only=True):
    timestamp: int  # ms from the start of the trace
    input_length: int
    output_length: int
    hash_ids: list[int]
    session_id: str | None = None
    system_blocks: int = 0


_decoder = msgspec.json.Decoder(TraceRecord)


def read_trace(path: str | Path, limit: int | None = None) -> list[TraceRecord]:
    """Records in file order (the trace's time order); ``limit`` keeps the first n."""
    records: list[TraceRecord] = []
    try:
        handle = open(path, "rb")  # closed by the with below; the error names the path
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = _decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise TraceError(f"{path}:{number}: not a trace record: {exc}") from exc
            if record.input_length < 1 or record.output_length < 0 or not record.hash_ids:
                raise TraceError(f"{path}:{number}: needs input_length ≥ 1, output_length ≥ 0 "
                                 "and at least one hash id")
            records.append(record)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise TraceError(f"{path}: no records")
    return records


def arrival_seconds(records: list[TraceRecord], spread: bool = True) -> list[float]:
    """Arrival time of each record in trace seconds.

    Some traces quantise time: the Mooncake conversation trace stamps requests in 3 s
    buckets, so about ten requests share every timestamp. Replayed literally, each
    bucket becomes one instantaneous burst, which no client population produces (and
    which no set of routers can split well, since none sees the others' choices inside
    one instant). With ``spread``, the requests sharing a timestamp are spaced evenly,
    in file order, over the trace's tick (its most common gap between timestamps).
    """
    stamps = [r.timestamp for r in records]
    if not spread or len(stamps) < 2:
        return [t / 1000.0 for t in stamps]
    distinct = sorted(set(stamps))
    gaps = Counter(b - a for a, b in itertools.pairwise(distinct))
    if not gaps:
        return [t / 1000.0 for t in stamps]
    tick = gaps.most_common(1)[0][0]
    if tick <= 1:
        return [t / 1000.0 for t in stamps]
    sharing = Counter(stamps)
    seen: Counter[int] = Counter()
    out = []
    for t in stamps:
        out.append((t + tick * seen[t] / sharing[t]) / 1000.0)
        seen[t] += 1
    return out


def write_trace(records: list[TraceRecord], path: str | Path) -> None:
    encoder = msgspec.json.Encoder()
    with open(path, "wb") as out:
        for record in records:
            out.write(encoder.encode(record) + b"\n")


class BlockText:
    """Deterministic text for block ids: ``PREFIX_BLOCK_CHARS`` ASCII characters each.

    The id leads the block (so different ids differ at once); the rest is a slice of a
    fixed pseudo-random word stream at an offset derived from the id, so blocks do not
    look alike to the context scanners and cost a slice, not a generation, per block.
    """

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        words = ["fleet", "cache", "block", "token", "replica", "prefix", "model", "queue",
                 "answer", "reason", "context", "window", "stream", "router", "worker", "batch",
                 "prompt", "session", "warm", "cold", "shard", "spill", "bound", "load"]
        text = []
        size = 0
        while size < 3 * PREFIX_BLOCK_CHARS:
            word = rng.choice(words)
            text.append(word)
            size += len(word) + 1
        self._stream = " ".join(text)

    def block(self, block_id: int) -> str:
        head = f"<{block_id:x}>"
        offset = (block_id * 2654435761) % PREFIX_BLOCK_CHARS
        body = self._stream[offset : offset + PREFIX_BLOCK_CHARS - len(head)]
        return head + body

    def text(self, block_ids: list[int]) -> str:
        return "".join(self.block(b) for b in block_ids)


def chat_request(record: TraceRecord, blocks: BlockText, model: str = "auto",
                 request_id: str | None = None) -> ChatRequest:
    """The request a client would send for this record."""
    ids = record.hash_ids
    split = min(record.system_blocks, len(ids))
    messages = []
    if split:
        messages.append(ChatMessage(role="system", content=blocks.text(ids[:split])))
    messages.append(ChatMessage(role="user", content=blocks.text(ids[split:]) or "?"))
    return ChatRequest(messages=messages, model=model, max_tokens=max(record.output_length, 1),
                       session_id=record.session_id, id=request_id)


# ---- the hot-tenant workload ----------------------------------------------------------------
class HotTenant(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's shared system prompt carries most of the traffic; sessions grow.

    Sessions arrive as a Poisson process; each has a number of turns (geometric), a think
    time between turns (exponential), and a prompt that grows by the previous answer and
    a new question every turn. A share of the sessions belong to the hot tenant and start
    with its system prompt; the rest start with a system prompt of their own.
    """

    seconds: float = 600.0
    # Sessions start this long before the trace does, so it opens in a steady state (an
    # excerpt of a running service) rather than with an empty fleet; their earlier turns
    # are not in the trace.
    warmup_seconds: float = 120.0
    sessions_per_second: float = 1.2
    tenant_share: float = 0.75
    system_blocks: int = 8  # the shared system prompt: 8 × 512 = 4,096 tokens
    mean_turns: float = 5.0
    mean_think_seconds: float = 20.0
    first_question_blocks: tuple[int, int] = (1, 3)
    turn_growth_blocks: tuple[int, int] = (1, 2)  # previous answer + new question
    output_tokens: tuple[int, int] = (64, 512)
    seed: int = 7


def hot_tenant_trace(spec: HotTenant | None = None) -> list[TraceRecord]:
    spec = spec or HotTenant()
    rng = random.Random(spec.seed)
    system = list(range(spec.system_blocks))
    next_id = spec.system_blocks
    records: list[tuple[float, int, TraceRecord]] = []
    t = -spec.warmup_seconds
    session = 0
    while True:
        t += rng.expovariate(spec.sessions_per_second)
        if t >= spec.seconds:
            break
        session += 1
        if rng.random() < spec.tenant_share:
            ids = list(system)
            sys_blocks = spec.system_blocks
        else:
            own = rng.randint(1, spec.system_blocks)
            ids = list(range(next_id, next_id + own))
            next_id += own
            sys_blocks = own
        grow = rng.randint(*spec.first_question_blocks)
        turns = 1
        while rng.random() > 1.0 / spec.mean_turns:
            turns += 1
        at = t
        for _turn in range(turns):
            ids = ids + list(range(next_id, next_id + grow))
            next_id += grow
            output = rng.randint(*spec.output_tokens)
            records.append((at, len(records), TraceRecord(
                timestamp=round(at * 1000), input_length=len(ids) * TRACE_BLOCK_TOKENS - rng.randint(0, 255),
                output_length=output, hash_ids=ids, session_id=f"s{session}",
                system_blocks=sys_blocks)))
            at += rng.expovariate(1.0 / spec.mean_think_seconds)
            grow = rng.randint(*spec.turn_growth_blocks)
    records.sort(key=lambda r: (r[0], r[1]))
    return [r for at, _, r in records if 0 <= at < spec.seconds]


def iter_blocks(records: list[TraceRecord]) -> Iterator[int]:
    for record in records:
        yield from record.hash_ids
