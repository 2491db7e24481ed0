"""The simulated engine on its own: prefix cache, batching, limits, abort (no NATS needed)."""

from __future__ import annotations

import asyncio
import time

from fabric.client import chat
from subjects.messages import ChatMessage, ChatRequest
from tests.conftest import wait_until
from workers.engine import Delta
from workers.sim_engine import BlockCache, SimEngine, SimParams, block_hashes

SHARED = "You are the fleet's assistant. Follow the house style and cite sources. " * 30


async def run(engine: SimEngine, request_id: str, request: ChatRequest) -> tuple[float, list[Delta]]:
    """Time to the first delta, and every delta."""
    started = time.perf_counter()
    first = 0.0
    deltas = []
    async for delta in engine.generate(request_id, request):
        if not deltas:
            first = time.perf_counter() - started
        deltas.append(delta)
    return first, deltas


def with_system(question: str, max_tokens: int = 2) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="system", content=SHARED),
                                 ChatMessage(role="user", content=question)], max_tokens=max_tokens)


async def test_a_prefix_hit_skips_prefill_and_lowers_time_to_first_token():
    # 1 ms of prefill per uncached token makes the ~570-token system prompt cost ~0.57 s.
    engine = SimEngine(SimParams(prefill_seconds_per_token=0.001, decode_seconds_per_token=0.001))
    cold_ttft, cold = await run(engine, "a", with_system("What is a queue?"))
    warm_ttft, warm = await run(engine, "b", with_system("What is a stream?"))
    assert cold[-1].cached_tokens == 0
    assert warm[-1].cached_tokens >= 0.9 * len(SHARED) / 4  # nearly all of the system prompt
    assert warm[-1].cached_tokens < warm[-1].prompt_tokens  # the question itself is new
    assert warm_ttft < cold_ttft / 3
    assert engine.stats().prefix_hit_rate > 0.4
    await engine.close()


def test_block_hashes_are_chained_so_a_changed_block_ends_the_match():
    cache = BlockCache(100)
    a = block_hashes("x" * 64 + "y" * 64 + "z" * 64, 64)
    cache.insert(a)
    b = block_hashes("q" * 64 + "y" * 64 + "z" * 64, 64)  # same 2nd and 3rd text, new 1st
    assert cache.match(a) == 3
    assert cache.match(b) == 0  # chained: equal later blocks do not hit after a miss
    assert len(block_hashes("x" * 63, 64)) == 0  # a partial block is never cached


def test_the_cache_evicts_the_least_recently_used_blocks():
    cache = BlockCache(4)
    first, second = block_hashes("a" * 128, 64), block_hashes("b" * 128, 64)
    cache.insert(first)
    cache.insert(second)
    cache.insert(first)  # touch: `first` is now the most recent
    cache.insert(block_hashes("c" * 128, 64))
    assert cache.match(first) == 2 and cache.match(second) == 0


def test_decode_steps_slow_down_as_the_batch_grows():
    engine = SimEngine(SimParams(decode_seconds_per_token=0.01, batch_slowdown=0.05,
                                 prefill_seconds_per_token=0.001))
    alone, eight = engine.step_seconds(1, 0), engine.step_seconds(8, 0)
    assert alone == 0.01 and abs(eight - 0.01 * 1.35) < 1e-12
    assert engine.step_seconds(1, 100) == alone + 0.1  # prefill of newly admitted tokens adds on


async def test_no_more_than_capacity_sequences_run_at_once():
    engine = SimEngine(SimParams(capacity=2, time_scale=0.01))
    results = await asyncio.gather(*(run(engine, f"r{i}", chat(f"hello {i}", max_tokens=5)) for i in range(6)))
    assert engine.max_batch == 2
    assert all(deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 5
               for _, deltas in results)
    assert engine.stats().running == 0 and engine.stats().waiting == 0
    await engine.close()


async def test_waiting_requests_are_reported_as_waiting():
    engine = SimEngine(SimParams(capacity=1, time_scale=1.0, decode_seconds_per_token=0.01))
    # A prompt of several KV blocks: the running sequence holds cache from admission on,
    # not only once its first token is out (a loaded box can poll before that).
    prompt = "tell me about the harbour and the boats " * 8
    tasks = [asyncio.ensure_future(run(engine, f"w{i}", chat(prompt, max_tokens=20))) for i in range(3)]
    await wait_until(lambda: engine.stats().running == 1, step=0.005)
    stats = engine.stats()
    assert stats.running == 1 and stats.waiting == 2
    assert 0 < stats.kv_cache_usage <= 1
    await asyncio.gather(*tasks)
    await engine.close()


async def test_abort_ends_the_stream_with_abort_and_frees_the_slot():
    engine = SimEngine(SimParams(capacity=1, time_scale=1.0, decode_seconds_per_token=0.005))
    deltas = []
    async for delta in engine.generate("long", chat("go", max_tokens=10_000)):
        deltas.append(delta)
        if len(deltas) == 3:
            await engine.abort("long")
    assert deltas[-1].finish_reason == "abort" and deltas[-1].completion_tokens < 100
    _, after = await run(engine, "next", chat("next", max_tokens=2))  # the slot is free again
    assert after[-1].finish_reason == "length"
    await engine.close()


async def test_a_consumer_that_walks_away_frees_its_slot():
    engine = SimEngine(SimParams(capacity=1, time_scale=0.01))
    stream = engine.generate("gone", chat("go", max_tokens=10_000))
    await stream.__anext__()
    await stream.aclose()  # e.g. the worker's task was cancelled
    _, after = await run(engine, "next", chat("next", max_tokens=2))
    assert after[-1].finish_reason == "length"
    await engine.close()
