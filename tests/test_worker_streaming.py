"""Reply chunks on a real nats-server: the first goes at once, later deltas are gathered
per ``stream_interval`` (``SLM_STREAM_INTERVAL``), nothing is lost or reordered."""

from __future__ import annotations

from fabric.client import chat
from subjects.messages import Chunk
from tests.test_worker_acks import Queue, replies


async def answer(queue: Queue, request, request_id: str) -> list[Chunk]:
    got = await replies(await queue.put(request, request_id))
    assert all(isinstance(r, Chunk) for r in got), got
    assert [c.seq for c in got] == list(range(len(got)))
    assert got[-1].final and not any(c.final for c in got[:-1])
    return got  # type: ignore[return-value]


async def test_every_delta_is_a_chunk_by_default(fabric, client):
    await fabric.worker("general", "r0")
    chunks = await answer(Queue(client), chat("Tell me about rain.", max_tokens=8), "each-1")
    assert len(chunks) == 8
    assert all(len(c.delta.split()) == 1 for c in chunks)


async def test_after_the_first_chunk_deltas_are_gathered_per_stream_interval(fabric, client):
    # A 60 s interval is never reached here: the first delta goes out alone (it is the
    # time to first token), the final chunk carries every later one.
    await fabric.worker("general", "r0", stream_interval=60.0)
    queue = Queue(client)
    prompt = "Tell me about rain."
    chunks = await answer(queue, chat(prompt, max_tokens=8), "gathered-1")
    assert len(chunks) == 2
    assert len(chunks[0].delta.split()) == 1 and len(chunks[1].delta.split()) == 7
    assert chunks[1].usage is not None and chunks[1].usage.completion_tokens == 8
    # The same words, in order, as one non-streamed answer to the same prompt.
    (whole,) = await answer(queue, chat(prompt, max_tokens=8, stream=False), "whole-1")
    assert "".join(c.delta for c in chunks) == whole.delta
