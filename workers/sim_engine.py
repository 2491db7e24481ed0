"""A simulated engine, named as one everywhere it reports: no model, no GPU.

It models what routing can change: prefill time for prompt tokens not already in this
replica's prefix cache, decode time per output token that grows with the running batch,
a concurrency limit, and a per-replica LRU cache over fixed-size prompt blocks (chained
hashes, so a block only hits when everything before it matched, as in vLLM).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import xxhash

from subjects.messages import ChatRequest
from workers.engine import Delta, EngineGenerateError, EngineStats

_WORDS = (
    "the fleet routes each request to a small model that fits the task and answers "
    "quickly from a warm cache while the queue stays short and nothing is lost"
).split()


class SimParams(msgspec.Struct, frozen=True, kw_only=True):
    """Constants of the simulated engine; ``time_scale`` shrinks every delay (tests)."""

    capacity: int = 8
    block_tokens: int = 16
    chars_per_token: float = 4.0
    cache_blocks: int = 4096
    prefill_seconds_per_token: float = 0.00005
    decode_seconds_per_token: float = 0.01
    batch_slowdown: float = 0.05  # each extra running sequence adds 5% per-token time
    default_max_tokens: int = 32
    time_scale: float = 1.0


def block_hashes(text: str, block_chars: int) -> list[int]:
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

    @property
    def usage(self) -> float:
        return len(self._blocks) / self.capacity if self.capacity else 0.0


class SimEngine:
    name = "sim"

    def __init__(self, params: SimParams | None = None, *, fail_every: int = 0) -> None:
        self.params = params or SimParams()
        self.capacity = self.params.capacity
        self.cache = BlockCache(self.params.cache_blocks)
        self._slots = asyncio.Semaphore(self.params.capacity)
        self._running = 0
        self._waiting = 0
        self._aborted: set[str] = set()
        self._queried_blocks = 0
        self._hit_blocks = 0
        self._fail_every = fail_every  # every Nth request fails, retryably (tests)
        self._count = itertools.count(1)

    async def warmup(self) -> None:
        await asyncio.sleep(0)

    def stats(self) -> EngineStats:
        rate = self._hit_blocks / self._queried_blocks if self._queried_blocks else 0.0
        return EngineStats(self._running, self._waiting, self.cache.usage, rate)

    async def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)

    async def close(self) -> None:
        return None

    async def generate(self, request_id: str, request: ChatRequest) -> AsyncIterator[Delta]:
        p = self.params
        if self._fail_every and next(self._count) % self._fail_every == 0:
            raise EngineGenerateError("simulated transient engine failure", retryable=True)
        text = "".join(f"{m.role}\x1f{m.text()}\x1e" for m in request.messages)
        prompt_tokens = int(len(text) / p.chars_per_token) + 1
        hashes = block_hashes(text, int(p.block_tokens * p.chars_per_token))
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            hit = self.cache.match(hashes)
            self._queried_blocks += len(hashes)
            self._hit_blocks += hit
            cached_tokens = hit * p.block_tokens
            self.cache.insert(hashes)
            uncached = max(prompt_tokens - cached_tokens, 1)
            await asyncio.sleep(uncached * p.prefill_seconds_per_token * p.time_scale)
            budget = request.max_tokens or p.default_max_tokens
            seed = xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))
            for i in range(budget):
                if request_id in self._aborted:
                    self._aborted.discard(request_id)
                    yield Delta("", "abort", prompt_tokens, i, cached_tokens)
                    return
                step = p.decode_seconds_per_token * (1 + p.batch_slowdown * (self._running - 1))
                await asyncio.sleep(step * p.time_scale)
                word = _WORDS[(seed + i) % len(_WORDS)]
                delta = word if i == 0 else " " + word
                if i == budget - 1:
                    yield Delta(delta, "length", prompt_tokens, budget, cached_tokens)
                else:
                    yield Delta(delta)
        finally:
            self._running -= 1
            self._slots.release()
