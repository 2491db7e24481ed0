"""A simulated engine, named as one everywhere it reports: no model, no GPU.

It models what routing and admission can change, the way vLLM's scheduler behaves:

* **continuous batching** — one scheduler loop runs engine *steps*; each step decodes one
  token for every running sequence and prefills the sequences admitted in that step;
* **prefill** costs ``prefill_seconds_per_token`` for every prompt token *not* already in
  this replica's prefix cache, so a prefix hit lowers time-to-first-token exactly as on
  vLLM (the first token comes out at the end of the prefill step);
* **decode** costs ``decode_seconds_per_token × (1 + batch_slowdown × (batch − 1))`` per
  step: a bigger batch makes every running sequence a little slower;
* a **concurrency limit** (``capacity``, vLLM's ``max_num_seqs``): more requests wait;
* a per-replica **LRU prefix cache** of prompt blocks: chained hashes of fixed-size text
  chunks (``block_tokens × chars_per_token`` characters), so a block only hits when every
  block before it matched, as in vLLM's hash-chained KV blocks.

Default constants (one replica of a 0.5–3B instruct model on one datacentre GPU):

| constant | default | where it comes from |
| --- | --- | --- |
| ``decode_seconds_per_token`` | 5.5 ms | Qwen2.5 Speed Benchmark (qwen.readthedocs.io, "Qwen2.5 Speed Benchmark", vLLM 0.6.3, A100 80GB, BF16, batch 1): Qwen2.5-1.5B-Instruct 183.33 tokens/s → 5.45 ms/token (0.5B: 311.55 tokens/s → 3.2 ms) |
| ``prefill_seconds_per_token`` | 25 µs | 2 × 1.5e9 FLOP per token at 40% of the A100's 312 TFLOP/s; the same table bounds it from above: 6,144 prompt tokens add 0.42 s (183.33 → 176.68 tokens/s over 2,048 generated), ≤ 68 µs/token |
| ``batch_slowdown`` | 0.05 | vLLM 0.32 on this project's 2-core CPU machines (measured, recorded in the team's VLLM_NOTES): SmolLM2-135M 10 tokens/s alone, ~60 over 8 streams, so a step at batch 8 takes ~1.33× a step at batch 1, ~5% per extra sequence |
| ``block_tokens`` | 16 | vLLM's default KV block size on GPU |
| ``capacity`` | 8 | the fabric's default ``max_inflight`` |

``time_scale`` multiplies every delay (tests use 0.01). ``bench/engine.py`` runs this
engine and vLLM on CPU through the fabric and directly, side by side.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import xxhash

from subjects.messages import ChatRequest
from workers.engine import Delta, EngineGenerateError, EngineStats

_WORDS = (
    "the fleet routes each request to a small model that fits the task and answers "
    "quickly from a warm cache while the queue stays short and nothing is lost"
).split()


# How far behind the modelled step clock the scheduler may start a step and still catch up.
_MAX_CATCH_UP = 0.002


class SimParams(msgspec.Struct, frozen=True, kw_only=True):
    """Constants of the simulated engine (see the module docstring for their sources)."""

    capacity: int = 8
    block_tokens: int = 16
    chars_per_token: float = 4.0
    cache_blocks: int = 4096
    prefill_seconds_per_token: float = 0.000025
    decode_seconds_per_token: float = 0.0055
    batch_slowdown: float = 0.05  # each extra running sequence adds 5% to a step
    default_max_tokens: int = 32
    time_scale: float = 1.0


def render_prompt(request: ChatRequest) -> str:
    """The text the simulated engine 'tokenizes': roles and contents, in order."""
    return "".join(f"{m.role}\x1f{m.text()}\x1e" for m in request.messages)


def block_hashes(text: str, block_chars: int) -> list[int]:
    """Chained hashes of the full ``block_chars``-byte chunks of ``text`` (a tail is not a block)."""
    data = text.encode("utf-8", "surrogatepass")
    hashes, h = [], 0
    for start in range(0, len(data) - block_chars + 1, block_chars):
        h = xxhash.xxh3_64_intdigest(data[start : start + block_chars], h)
        hashes.append(h)
    return hashes


class BlockCache:
    """An LRU set of prompt-block hashes: this replica's simulated prefix cache."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: list[int]) -> int:
        """Leading blocks already cached (chained hashes: the first miss ends the match)."""
        hit = 0
        for h in hashes:
            if h not in self._blocks:
                break
            hit += 1
        return hit

    def insert(self, hashes: list[int]) -> None:
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self._blocks)


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt_tokens: int
    hashes: list[int]
    budget: int
    seed: int
    out: asyncio.Queue[Delta] = field(default_factory=asyncio.Queue)
    cached_tokens: int = 0
    produced: int = 0
    prefilled: bool = False
    aborted: bool = False


class SimEngine:
    """The simulated engine: one scheduler task steps every running sequence together."""

    name = "sim"

    def __init__(self, params: SimParams | None = None, *, fail_every: int = 0) -> None:
        self.params = params or SimParams()
        self.capacity = self.params.capacity
        self.cache = BlockCache(self.params.cache_blocks)
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: list[_Sequence] = []
        self._by_id: dict[str, _Sequence] = {}
        self._work = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._queried_tokens = 0
        self._hit_tokens = 0
        self._fail_every = fail_every  # every Nth request fails, retryably (tests)
        self._count = itertools.count(1)
        self.steps = 0
        self.max_batch = 0  # the largest batch a step ran (tests check the limit)

    # ---- Engine protocol ---------------------------------------------------------------
    async def warmup(self) -> None:
        self._ensure_scheduler()

    def stats(self) -> EngineStats:
        rate = self._hit_tokens / self._queried_tokens if self._queried_tokens else 0.0
        p = self.params
        held = sum(len(s.hashes) + (s.produced + p.block_tokens - 1) // p.block_tokens
                   for s in self._running)
        usage = min(held / p.cache_blocks, 1.0) if p.cache_blocks else 0.0
        return EngineStats(len(self._running), len(self._waiting), usage, rate)

    async def abort(self, request_id: str) -> None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            seq.aborted = True
            self._work.set()

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None

    def reset_prefix_cache(self) -> None:
        """Forget every cached block (benchmarks start each phase cold)."""
        self.cache.clear()

    async def generate(self, request_id: str, request: ChatRequest) -> AsyncIterator[Delta]:
        p = self.params
        if self._fail_every and next(self._count) % self._fail_every == 0:
            raise EngineGenerateError("simulated transient engine failure", retryable=True)
        text = render_prompt(request)
        seq = _Sequence(
            request_id=request_id,
            prompt_tokens=int(len(text) / p.chars_per_token) + 1,
            hashes=block_hashes(text, int(p.block_tokens * p.chars_per_token)),
            budget=request.max_tokens or p.default_max_tokens,
            seed=xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass")),
        )
        self._ensure_scheduler()
        self._by_id[request_id] = seq
        self._waiting.append(seq)
        self._work.set()
        try:
            while True:
                delta = await seq.out.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            # The consumer went away (cancelled, closed early): free the slot at the next step.
            seq.aborted = True
            if self._by_id.get(request_id) is seq:
                del self._by_id[request_id]
            self._work.set()

    # ---- the scheduler -----------------------------------------------------------------
    def _ensure_scheduler(self) -> None:
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = asyncio.get_running_loop().create_task(
                self._schedule(), name="sim-engine-scheduler")

    async def _schedule(self) -> None:
        p = self.params
        loop = asyncio.get_running_loop()
        step_end: float | None = None  # when the last step was due to end (None: idle)
        while True:
            self._drop_aborted()
            if not self._running and not self._waiting:
                step_end = None
                self._work.clear()
                await self._work.wait()
                continue
            admitted = self._admit()
            decoding = [s for s in self._running if s.prefilled]
            step = self.step_seconds(len(decoding), sum(s.prompt_tokens - s.cached_tokens for s in admitted))
            self.max_batch = max(self.max_batch, len(self._running))
            # Steps run back to back on the modelled clock: a sleep wakes up to a timer tick
            # (~1 ms) late, and a real engine's step does not grow by that, so the next step
            # starts when this one was due to end. Bounded, so a stalled event loop does not
            # turn into a burst of zero-length steps.
            now = loop.time()
            start = now if step_end is None else max(step_end, now - _MAX_CATCH_UP)
            step_end = start + step * p.time_scale
            await asyncio.sleep(max(step_end - now, 0.0))
            self.steps += 1
            for seq in admitted:
                seq.prefilled = True
            for seq in [*decoding, *admitted]:
                if not seq.aborted:
                    self._emit_token(seq)
            self._running = [s for s in self._running if s.produced < s.budget]

    def step_seconds(self, decoding: int, prefill_tokens: int) -> float:
        """Modelled length of one engine step (before ``time_scale``)."""
        p = self.params
        step = prefill_tokens * p.prefill_seconds_per_token
        if decoding:
            step += p.decode_seconds_per_token * (1 + p.batch_slowdown * (decoding - 1))
        return step

    def _admit(self) -> list[_Sequence]:
        """Move waiting sequences into the batch up to the limit; look up their prefixes."""
        p = self.params
        admitted = []
        while self._waiting and len(self._running) < p.capacity:
            seq = self._waiting.popleft()
            hit = self.cache.match(seq.hashes)
            # vLLM always computes the last prompt token, so a full hit still prefills one.
            seq.cached_tokens = min(hit * p.block_tokens, seq.prompt_tokens - 1)
            self.cache.insert(seq.hashes)
            self._queried_tokens += seq.prompt_tokens
            self._hit_tokens += seq.cached_tokens
            self._running.append(seq)
            admitted.append(seq)
        return admitted

    def _drop_aborted(self) -> None:
        for seq in [s for s in (*self._waiting, *self._running) if s.aborted]:
            if seq in self._running:
                self._running.remove(seq)
            else:
                self._waiting.remove(seq)
            seq.out.put_nowait(Delta("", "abort", seq.prompt_tokens, seq.produced, seq.cached_tokens))

    def _emit_token(self, seq: _Sequence) -> None:
        i = seq.produced
        seq.produced += 1
        word = _WORDS[(seq.seed + i) % len(_WORDS)]
        text = word if i == 0 else " " + word
        if seq.produced >= seq.budget:
            seq.out.put_nowait(Delta(text, "length", seq.prompt_tokens, seq.produced, seq.cached_tokens))
        else:
            seq.out.put_nowait(Delta(text))
