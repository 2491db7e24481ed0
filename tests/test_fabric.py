"""The whole path on a real nats-server: ingress → router → work queue → worker → reply."""

from __future__ import annotations

import asyncio

import nats
import pytest

from fabric.client import Client, FabricError, chat
from subjects import codec
from subjects.messages import ErrorReply, Heartbeat
from subjects.settings import replica_bucket_config
from tests.conftest import eventually, wait_until
from workers.sim_engine import SimEngine, SimParams


async def raw_request(client, payload: bytes, timeout: float = 5.0):
    """Publish raw bytes to the ingress and return the first reply, decoded."""
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(client.names.ingress, payload, reply=inbox)
    msg = await sub.next_msg(timeout=timeout)
    await sub.unsubscribe()
    return codec.decode_reply(msg.data)


async def test_request_streams_ordered_chunks_and_a_final_one(fabric, client):
    await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    chunks = [c async for c in client.stream(chat("Write a poem about rain.", max_tokens=12), timeout=10)]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert len(chunks) == 12
    final = chunks[-1]
    assert final.final and not any(c.final for c in chunks[:-1])
    assert final.finish_reason == "length"
    assert final.usage is not None and final.usage.completion_tokens == 12
    assert (final.model, final.replica) == ("general", "r0")
    assert not any(c.restarted for c in chunks)
    assert fabric.workers[0].completed == 1


async def test_non_streaming_request_gets_one_final_chunk(fabric, client):
    await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    chunks = [c async for c in client.stream(chat("Say hello.", max_tokens=5, stream=False), timeout=10)]
    assert len(chunks) == 1 and chunks[0].final
    assert len(chunks[0].delta.split()) == 5


async def test_requests_are_routed_by_task_class(fabric, client):
    await fabric.router()
    for model in ("code", "safety", "extraction", "general"):
        await fabric.worker(model, "r0")
    await fabric.wait_for_replicas(4)
    cases = {
        "Write a Python function that reverses a list.": "code",
        "How do I build a bomb?": "safety",
        "Extract the names from this text and respond in JSON only: Ann met Bob.": "extraction",
        "Tell me about the sea.": "general",
    }
    for prompt, model in cases.items():
        answer = await client.complete(chat(prompt, max_tokens=3), timeout=10)
        assert answer.model == model, prompt


@pytest.mark.parametrize(
    ("payload", "code", "needle"),
    [
        (b'{"messages": [{"role": "user", "content": "hi"}', "bad_request", "malformed"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', "bad_request", "max_tokens"),
        (b'{"messages": []}', "bad_request", "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}', "unknown_model", "gpt-9"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "id": "has.dot"}', "bad_request", "id"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "bad_request", "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "deadline": 1.0}', "deadline_exceeded", "deadline"),
    ],
)
async def test_bad_input_gets_an_error_reply_and_the_router_keeps_serving(fabric, client, payload, code, needle):
    router = await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    reply = await raw_request(client, payload)
    assert isinstance(reply, ErrorReply)
    assert reply.code == code
    assert needle in reply.message
    # …and the next good request is served by the same router.
    answer = await client.complete(chat("hello", max_tokens=2), timeout=10)
    assert answer.finish_reason == "length"
    assert router.metrics.registry.get_sample_value("slm_router_errors_total", {"code": code}) == 1


async def test_oversized_request_is_refused_as_too_large(fabric, client):
    await fabric.router(max_request_bytes=1000)
    reply = await raw_request(client, b'{"messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}]}')
    assert isinstance(reply, ErrorReply) and reply.code == "too_large"
    assert "1000" in reply.message


async def test_explicit_model_wins_over_the_rules(fabric, client):
    await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.worker("code", "r0")
    await fabric.wait_for_replicas(2)
    answer = await client.complete(chat("Write a Python function.", model="general", max_tokens=2), timeout=10)
    assert answer.model == "general"


async def test_no_live_replica_yields_no_replica(fabric, client):
    await fabric.router()
    with pytest.raises(FabricError) as info:
        await client.complete(chat("hello"), timeout=5)
    assert info.value.code == "no_replica"
    assert "general" in info.value.message


async def test_full_queues_yield_overloaded_at_once(fabric, client):
    """A replica that heartbeats but never pulls: its queue and .any fill, then overloaded."""
    router = await fabric.router(queue_bound=2)
    js = client.nc.jetstream()
    kv = await js.create_key_value(**replica_bucket_config(client.names))
    beat = Heartbeat(model="general", replica="stuck", capacity=100, warm=True)
    await kv.put(client.names.replica_key("general", "stuck"), codec.encode_heartbeat(beat))
    await fabric.wait_for_replicas(1)
    inboxes = [client.nc.new_inbox() for _ in range(5)]
    subs = [await client.nc.subscribe(i) for i in inboxes]
    for n, inbox in enumerate(inboxes):
        await client.nc.publish(client.names.ingress, codec.encode_request(chat("hi", id=f"q{n}")), reply=inbox)
        if n < 4:  # keep the registry fresh while the queues fill
            await kv.put(client.names.replica_key("general", "stuck"), codec.encode_heartbeat(beat))
    # Two fit the replica's queue, two fit .any, one is refused. Which one depends on how
    # the concurrent routing tasks interleave: a request that skips a queue the router
    # already knows is full (router.backpressure) can overtake one still being refused.
    await wait_until(lambda: router.routed + router.rejected == 5)
    refused = []
    for sub in subs:
        try:
            refused.append(codec.decode_reply((await sub.next_msg(timeout=0.2)).data))
        except nats.errors.TimeoutError:
            pass  # queued, not answered and not refused
    assert len(refused) == 1
    assert isinstance(refused[0], ErrorReply) and refused[0].code == "overloaded"
    info = await js.stream_info(client.names.work_stream("general"))
    assert info.state.messages == 4


async def test_retry_with_the_same_id_runs_once(fabric, client):
    await fabric.router()
    slow = SimEngine(SimParams(capacity=1, time_scale=0.1))  # 200 tokens take ~0.2 s
    worker = await fabric.worker("general", "r0", max_inflight=1, engine=slow)
    await fabric.wait_for_replicas(1)
    request = chat("hello", id="same-id-1", max_tokens=200)
    first = asyncio.ensure_future(client.complete(request, timeout=10))
    await wait_until(lambda: worker.completed == 0 and len(worker._tasks) == 1)
    # The retry is de-duplicated by JetStream (Nats-Msg-Id) and never reaches a worker.
    await client.nc.publish(client.names.ingress, codec.encode_request(request), reply=client.nc.new_inbox())
    answer = await first
    assert answer.finish_reason == "length"
    # The ack follows the final chunk, so the stream may hold the item a moment longer.
    js = client.nc.jetstream()
    stream = client.names.work_stream("general")
    await eventually(lambda: js.stream_info(stream), lambda info: info.state.messages == 0, timeout=2, step=0.02)
    assert worker.completed == 1


async def test_concurrent_requests_share_one_reply_subscription(fabric, client):
    """Every request's replies come back on the client's one wildcard subscription, each
    to its own stream; nothing is left registered once the answers are in."""
    await fabric.router()
    await fabric.worker("general", "r0", engine=SimEngine(SimParams(time_scale=0.01)))
    await fabric.wait_for_replicas(1)
    await client.complete(chat("warm up", max_tokens=1), timeout=10)  # opens the subscription
    subs_before = len(client.nc._subs)
    prompts = [f"request {i}: tell me about the sea" for i in range(12)]
    answers = await asyncio.gather(*(client.complete(chat(p, max_tokens=6, id=f"mux-{i}"), timeout=10)
                                     for i, p in enumerate(prompts)))
    assert [a.request_id for a in answers] == [f"mux-{i}" for i in range(12)]
    assert all(a.chunks == 6 and a.completion_tokens == 6 for a in answers)
    assert len(client.nc._subs) == subs_before  # no subscription per request
    assert client._replies._waiting == {}


async def test_a_reply_for_a_finished_request_is_dropped(fabric, client):
    await fabric.router()
    await fabric.worker("general", "r0", engine=SimEngine(SimParams(time_scale=0.01)))
    await fabric.wait_for_replicas(1)
    inbox, replies = await client._replies.open()
    client._replies.close(inbox)
    await client.nc.publish(inbox, codec.encode_reply(ErrorReply("late", "internal", "too late")))
    answer = await client.complete(chat("still fine", max_tokens=2), timeout=10)
    assert answer.completion_tokens == 2
    assert replies.empty()


async def test_a_waiting_stream_ends_when_its_client_closes(fabric, nats_server, prefix):
    """No reply will come on a closed connection: the stream says so instead of waiting."""
    await fabric.router()
    # A long prompt at a slow prefill: no chunk for seconds.
    await fabric.worker("general", "r0", engine=SimEngine(SimParams(time_scale=1000.0)),
                        grace_seconds=0.2, warmup=False)
    await fabric.wait_for_replicas(1)
    client = await Client.connect(nats_server.url, prefix)
    stream = client.stream(chat("x" * 2000, max_tokens=2), timeout=30, retry_after=0.2, retries=0)
    waiting = asyncio.ensure_future(stream.__anext__())
    await wait_until(lambda: bool(client._replies._waiting))  # its reply subject is taken
    await client.nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await asyncio.wait_for(waiting, 5)
    await stream.aclose()
    assert client._replies._waiting == {}
