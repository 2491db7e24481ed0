"""Two runs of the same work stream at once: the client follows one and answers once.

A run that outlives its ack_wait (a starved worker misses its in-progress acks) is
delivered again, and both runs stream to the same reply subject. Here the test plays
router and workers on a real nats-server: it takes the client's request off the ingress
and publishes the chunks of two runs, interleaved, to the request's reply subject.
"""

from __future__ import annotations

import asyncio

from fabric.client import chat
from subjects import codec
from subjects.messages import Chunk, Usage


async def _answer_with(client, chunks_for) -> str:  # type: ignore[no-untyped-def]
    """Serve one request with the chunks ``chunks_for(request_id)`` gives; the client's text."""
    ingress = await client.nc.subscribe(client.names.ingress)
    asking = asyncio.ensure_future(client.complete(chat("hello", max_tokens=3), timeout=10))
    msg = await ingress.next_msg(timeout=10)
    request = codec.decode_request(msg.data)
    assert request.id
    for chunk in chunks_for(request.id):
        await client.nc.publish(msg.reply, codec.encode_reply(chunk))
    answer = await asyncio.wait_for(asking, 10)
    await ingress.unsubscribe()
    return answer.text


def _run(rid: str, replica: str, attempt: int, texts: list[str], *, restarted: bool = False,
         final_at: int | None = None) -> list[Chunk]:
    usage = Usage(1, len(texts), 0)
    return [Chunk(rid, seq, text, "stop" if seq == final_at else None, usage if seq == final_at else None,
                  restarted=restarted and seq == 0, replica=replica, attempt=attempt)
            for seq, text in enumerate(texts)]


async def test_stale_chunks_of_an_older_run_are_dropped_once_a_newer_run_starts(client):
    def interleaved(rid: str) -> list[Chunk]:
        old = _run(rid, "r0", 1, ["a0", "a1", "a2", "a3"], final_at=3)
        new = _run(rid, "r1", 2, ["b0", "b1", "b2"], restarted=True, final_at=2)
        # The old run's first two chunks, the new run's start, then both runs' rest mixed.
        return [old[0], old[1], new[0], old[2], new[1], old[3], new[2]]

    assert await _answer_with(client, interleaved) == "b0b1b2"


async def test_the_same_replica_delivering_again_is_a_new_run_too(client):
    def interleaved(rid: str) -> list[Chunk]:
        old = _run(rid, "r0", 1, ["a0", "a1", "a2"], final_at=2)
        new = _run(rid, "r0", 2, ["b0", "b1"], restarted=True, final_at=1)
        return [old[0], new[0], old[1], new[1], old[2]]

    assert await _answer_with(client, interleaved) == "b0b1"


async def test_one_run_streams_as_before(client):
    assert await _answer_with(client, lambda rid: _run(rid, "r0", 1, ["x", "y", "z"], final_at=2)) == "xyz"
