"""Every row of the worker's outcome table (workers/outcomes.py) on a real nats-server.

Work items are published straight onto the work stream, as a router would, so each test
controls exactly what the worker receives (deadlines, routing times, raw bytes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import nats

from fabric.client import Client, chat
from subjects import codec
from subjects.messages import (
    ChatRequest,
    Chunk,
    ErrorReply,
    Reply,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
    WorkItem,
)
from subjects.names import ANY_REPLICA, HEADER_MSG_ID, HEADER_REPLY, HEADER_RESTARTED
from subjects.settings import MAX_DELIVER, ensure_stream, work_stream_config
from tests.conftest import eventually, wait_until
from workers.engine import Delta, EngineDeadError, EngineGenerateError, EngineRequestError
from workers.sim_engine import SimEngine, SimParams


class ScriptedEngine:
    """The simulated engine with switches: a gate, planned failures, a record of calls.

    ``gate`` holds every generation before its first token; ``fail`` (a callable of the
    attempt number) decides whether an attempt raises; ``calls`` lists request ids in the
    order the engine started them (the warm-up request included).
    """

    def __init__(self, capacity: int = 8, time_scale: float = 0.01, **params: Any) -> None:
        self.inner = SimEngine(SimParams(capacity=capacity, time_scale=time_scale, **params))
        self.name = "sim"
        self.capacity = capacity
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Any = None  # (request_id, attempt) -> Exception | None
        self.calls: list[str] = []
        self.started_at: dict[str, list[float]] = {}
        self.running = 0
        self.max_running = 0

    async def warmup(self) -> None:
        await self.inner.warmup()

    def stats(self) -> Any:
        return self.inner.stats()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    async def close(self) -> None:
        await self.inner.close()

    async def generate(self, request_id: str, request: ChatRequest) -> AsyncIterator[Delta]:
        self.calls.append(request_id)
        self.started_at.setdefault(request_id, []).append(time.monotonic())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
            if self.fail is not None:
                error = self.fail(request_id, len(self.started_at[request_id]))
                if error is not None:
                    raise error
            async for delta in self.inner.generate(request_id, request):
                yield delta
        finally:
            self.running -= 1


def routing_context(prompt_tokens: int = 8, max_tokens: int = 8) -> RoutingContext:
    return RoutingContext(prompt_tokens, 0, Structured.NONE, Script.LATIN, SafetyCategory.NONE,
                          0, (), 0, 0.0, "", max_tokens)


class Queue:
    """Publishes work items onto one model's stream and reads the replies, like a router + client."""

    def __init__(self, client: Client, model: str = "general") -> None:
        self.client = client
        self.model = model
        self.names = client.names
        self.js = client.nc.jetstream()

    async def ensure(self, queue_bound: int = 64) -> None:
        await ensure_stream(self.js, work_stream_config(self.names, self.model, queue_bound))

    async def put(self, request: ChatRequest, request_id: str, *, replica: str = "r0",
                  deadline: float = 0.0, routed_at: float | None = None,
                  headers: dict[str, str] | None = None) -> nats.aio.subscription.Subscription:
        inbox = self.client.nc.new_inbox()
        sub = await self.client.nc.subscribe(inbox)
        item = WorkItem(request_id=request_id, reply=inbox, model=self.model, replica=replica,
                        deadline=deadline, routed_at=time.time() if routed_at is None else routed_at,
                        request=codec.encode_request(request),
                        context=routing_context(max_tokens=request.max_tokens or 8))
        await self.js.publish(self.names.work(self.model, replica), codec.encode_work(item),
                              headers={HEADER_MSG_ID: request_id, HEADER_REPLY: inbox, **(headers or {})})
        return sub

    async def stream_info(self) -> Any:
        return await self.js.stream_info(self.names.work_stream(self.model))

    async def messages(self) -> int:
        """Messages still in the stream (acked and terminated ones leave a WorkQueue stream)."""
        return (await self.stream_info()).state.messages

    async def consumer_info(self, replica: str = "r0") -> Any:
        return await self.js.consumer_info(self.names.work_stream(self.model),
                                           self.names.replica_consumer(self.model, replica))


async def settles_to(read: Any, expected: Any, timeout: float = 10.0) -> None:
    """Until ``await read()`` returns ``expected``: acks travel after the final reply."""
    await eventually(read, lambda value: value == expected, timeout, step=0.02)


async def replies(sub: Any, timeout: float = 10.0) -> list[Reply]:
    """Every reply on ``sub`` up to the final chunk or an error reply."""
    got: list[Reply] = []
    try:
        while True:
            reply = codec.decode_reply((await sub.next_msg(timeout=timeout)).data)
            got.append(reply)
            if isinstance(reply, ErrorReply) or reply.final:
                return got
    finally:
        await sub.unsubscribe()  # late replies (a duplicate attempt) must not stall the drain


def sample(worker: Any, name: str, **labels: str) -> float:
    value = worker.registry.get_sample_value(name, {"model": worker.config.model,
                                                    "replica": worker.config.replica, **labels})
    return 0.0 if value is None else value


# ---- done → ack ---------------------------------------------------------------------------


async def test_done_is_acked_and_leaves_the_queue(fabric, client):
    worker = await fabric.worker("general", "r0")
    queue = Queue(client)
    subs = [await queue.put(chat(f"hello {i}", max_tokens=3), f"done-{i}") for i in range(3)]
    for sub in subs:
        got = await replies(sub)
        assert isinstance(got[-1], Chunk) and got[-1].finish_reason == "length"
        assert not any(isinstance(r, Chunk) and r.restarted for r in got)
    await settles_to(queue.messages, 0)  # acked work leaves a WorkQueue stream
    info = await queue.consumer_info()
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    assert sample(worker, "slm_worker_outcomes_total", outcome="done") == 3


# ---- retryable → nak with delay -----------------------------------------------------------------


async def test_retryable_failure_is_nakd_with_its_delay_and_the_retry_says_restarted(fabric, client):
    engine = ScriptedEngine()
    engine.fail = lambda rid, attempt: (EngineGenerateError("flaky", retryable=True)
                                        if rid == "retry-1" and attempt == 1 else None)
    worker = await fabric.worker("general", "r0", engine=engine, retry_delay=0.4)
    queue = Queue(client)
    got = await replies(await queue.put(chat("hello", max_tokens=3), "retry-1"))
    assert isinstance(got[-1], Chunk) and got[-1].final
    assert isinstance(got[0], Chunk) and got[0].restarted  # a redelivery: the client resets
    first, second = engine.started_at["retry-1"]
    assert second - first >= 0.4  # JetStream held it back for the nak delay
    assert worker.retried == 1
    assert sample(worker, "slm_worker_outcomes_total", outcome="retry") == 1
    await settles_to(queue.messages, 0)


async def test_retryable_failure_on_the_last_delivery_ends_in_engine_error(fabric, client):
    engine = ScriptedEngine()
    engine.fail = lambda rid, attempt: EngineGenerateError("always broken", retryable=True) \
        if rid == "hopeless-1" else None
    worker = await fabric.worker("general", "r0", engine=engine, retry_delay=0.01)
    queue = Queue(client)
    got = await replies(await queue.put(chat("hello", max_tokens=3), "hopeless-1"))
    assert isinstance(got[-1], ErrorReply) and got[-1].code == "engine_error"
    assert "always broken" in got[-1].message
    assert len(engine.started_at["hopeless-1"]) == MAX_DELIVER
    assert worker.retried == MAX_DELIVER - 1 and worker.failed == 1
    await settles_to(queue.messages, 0)  # answered, so acked


async def test_engine_request_error_is_a_bad_request_and_is_not_retried(fabric, client):
    engine = ScriptedEngine()
    engine.fail = lambda rid, attempt: EngineRequestError("temperature: must be >= 0") \
        if rid == "bad-1" else None
    worker = await fabric.worker("general", "r0", engine=engine)
    got = await replies(await Queue(client).put(chat("hello", max_tokens=3), "bad-1"))
    assert isinstance(got[-1], ErrorReply) and got[-1].code == "bad_request"
    assert "temperature" in got[-1].message
    assert len(engine.started_at["bad-1"]) == 1 and worker.retried == 0


# ---- poison → term + error reply + counter -----------------------------------------------------------


async def test_undecodable_message_is_terminated_answered_and_counted(fabric, client):
    worker = await fabric.worker("general", "r0")
    queue = Queue(client)
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await queue.js.publish(client.names.work("general", "r0"), b"\x93not a work item",
                           headers={HEADER_REPLY: inbox})
    reply = codec.decode_reply((await sub.next_msg(timeout=10)).data)
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
    assert "undecodable work item" in reply.message
    await wait_until(lambda: worker.poisoned == 1)
    assert sample(worker, "slm_worker_outcomes_total", outcome="poison") == 1
    assert sample(worker, "slm_worker_acks_total", kind="term") == 1

    async def ack_pending() -> int:
        return int((await queue.consumer_info()).num_ack_pending)

    # The term travels on the worker's connection, this query on the client's.
    await settles_to(ack_pending, 0)
    assert (await queue.consumer_info()).num_redelivered == 0  # terminated: never again
    # The worker keeps serving well-formed work.
    got = await replies(await queue.put(chat("hello", max_tokens=2), "after-poison"))
    assert isinstance(got[-1], Chunk) and got[-1].final


# ---- long generation → in-progress acks ------------------------------------------------------------


async def test_in_progress_acks_keep_a_long_generation_from_being_redelivered(fabric, client):
    """ack_wait is 1 s and the generation takes ~3.5 s: in-progress acks every 0.25 s keep it."""
    engine = ScriptedEngine(time_scale=1.0, decode_seconds_per_token=0.1)
    await fabric.worker("general", "r0", engine=engine, ack_wait=1.0, in_progress_interval=0.25)
    queue = Queue(client)
    got = await replies(await queue.put(chat("a long answer please", max_tokens=35), "long-1"), timeout=15)
    assert isinstance(got[-1], Chunk) and got[-1].finish_reason == "length"
    assert not any(isinstance(r, Chunk) and r.restarted for r in got)
    assert engine.calls.count("long-1") == 1
    assert (await queue.consumer_info()).num_redelivered == 0


async def test_without_in_progress_acks_a_held_message_is_redelivered(fabric, client):
    """The control for the test above: the same ack_wait, no in-progress ack inside it."""
    engine = ScriptedEngine()
    await engine.warmup()
    engine.gate.clear()
    await fabric.worker("general", "r0", engine=engine, ack_wait=1.0, in_progress_interval=30.0,
                        warmup=False)
    sub = await Queue(client).put(chat("hold me", max_tokens=3), "held-1")
    await wait_until(lambda: engine.calls.count("held-1") >= 2, 10)  # JetStream gave up on it
    engine.gate.set()
    got = await replies(sub)
    assert isinstance(got[-1], Chunk) and got[-1].final


# ---- expired deadline / queue delay → error reply, never started ----------------------------------------


async def test_expired_deadline_is_answered_and_never_started(fabric, client):
    engine = ScriptedEngine()
    worker = await fabric.worker("general", "r0", engine=engine)
    queue = Queue(client)
    got = await replies(await queue.put(chat("too late", max_tokens=3), "late-1",
                                        deadline=time.time() - 1.0))
    assert isinstance(got[-1], ErrorReply) and got[-1].code == "deadline_exceeded"
    assert "not run" in got[-1].message
    assert "late-1" not in engine.calls
    await settles_to(queue.messages, 0)
    assert sample(worker, "slm_worker_outcomes_total", outcome="done") == 1


async def test_work_past_the_models_max_queue_delay_is_answered_and_never_started(fabric, client):
    engine = ScriptedEngine()
    await fabric.worker("reasoning", "r0", engine=engine, max_queue_delay=2.0)
    queue = Queue(client, "reasoning")
    got = await replies(await queue.put(chat("old", max_tokens=3), "stale-1", routed_at=time.time() - 5))
    assert isinstance(got[-1], ErrorReply) and got[-1].code == "deadline_exceeded"
    assert "'reasoning'" in got[-1].message and "2.0s" in got[-1].message
    assert "stale-1" not in engine.calls


async def test_deadline_passing_mid_generation_aborts_it(fabric, client):
    engine = ScriptedEngine(time_scale=1.0, decode_seconds_per_token=0.05)
    worker = await fabric.worker("general", "r0", engine=engine)
    got = await replies(await Queue(client).put(chat("go on", max_tokens=200), "mid-1",
                                                deadline=time.time() + 0.5))
    assert isinstance(got[-1], ErrorReply) and got[-1].code == "deadline_exceeded"
    assert "during generation" in got[-1].message
    assert got[-1].seq == len(got) - 1  # the error continues the chunk sequence
    await wait_until(lambda: engine.stats().running == 0)
    assert worker.failed == 1


async def test_client_cancel_aborts_the_generation(fabric, client):
    engine = ScriptedEngine(time_scale=1.0, decode_seconds_per_token=0.02)
    await fabric.worker("general", "r0", engine=engine)
    sub = await Queue(client).put(chat("go on", max_tokens=500), "cancel-1")
    first = codec.decode_reply((await sub.next_msg(timeout=10)).data)
    assert isinstance(first, Chunk)
    await client.cancel("cancel-1")
    got = await replies(sub)
    assert isinstance(got[-1], Chunk) and got[-1].finish_reason == "abort"
    assert got[-1].usage is not None and got[-1].usage.completion_tokens < 500


# ---- redelivered message → restarted flag on the first chunk ------------------------------------------


async def test_work_a_vanished_worker_held_is_redelivered_with_the_restart_flag(fabric, client):
    """A consumer that fetched and died (never acked): after ack_wait the message comes back."""
    queue = Queue(client)
    await queue.ensure()
    js = client.nc.jetstream()
    # The first "worker": the replica's durable consumer, fetched by hand and never acked.
    await fabric.worker("general", "r0", ack_wait=1.0)
    fabric.workers[0].stop()
    await wait_until(lambda: fabric._tasks[0].done(), 15)
    sub = await queue.put(chat("hello", max_tokens=4), "vanish-1")
    psub = await js.pull_subscribe_bind(client.names.replica_consumer("general", "r0"),
                                        stream=client.names.work_stream("general"))
    (taken,) = await psub.fetch(1, timeout=5)
    assert taken.metadata.num_delivered == 1  # …and that process is gone now.
    worker = await fabric.worker("general", "r0", ack_wait=1.0)
    got = await replies(sub, timeout=15)
    assert isinstance(got[0], Chunk) and got[0].restarted
    assert not any(isinstance(r, Chunk) and r.restarted for r in got[1:])
    assert isinstance(got[-1], Chunk) and got[-1].final
    await wait_until(lambda: worker.completed == 1)
    assert sample(worker, "slm_worker_redeliveries_total") == 1


async def test_work_moved_off_a_dead_replica_says_restarted_on_its_first_chunk(fabric, client):
    """A router's move (router/moves.py) is a new message, delivered once: the header says restart."""
    queue = Queue(client)
    await queue.ensure()
    worker = await fabric.worker("general", "r0")
    moved = await queue.put(chat("hello", max_tokens=4), "moved-1", replica=ANY_REPLICA,
                            headers={HEADER_RESTARTED: "1"})
    plain = await queue.put(chat("hello", max_tokens=4), "plain-1", replica=ANY_REPLICA)
    got = await replies(moved)
    assert isinstance(got[0], Chunk) and got[0].restarted
    assert not any(isinstance(r, Chunk) and r.restarted for r in got[1:])
    assert isinstance(got[-1], Chunk) and got[-1].final
    fresh = await replies(plain)
    assert isinstance(fresh[-1], Chunk) and fresh[-1].final
    assert not any(isinstance(r, Chunk) and r.restarted for r in fresh)
    await wait_until(lambda: worker.completed == 2)


# ---- credits: free slots, max_ack_pending, own subject before .any --------------------------------------


async def test_worker_holds_no_more_than_its_free_slots(fabric, client):
    engine = ScriptedEngine(capacity=2)
    engine.gate.clear()
    await engine.warmup()
    worker = await fabric.worker("general", "r0", engine=engine, max_inflight=2, warmup=False)
    queue = Queue(client)
    subs = [await queue.put(chat(f"q{i}", max_tokens=2), f"slot-{i}") for i in range(6)]
    await wait_until(lambda: engine.running == 2)
    info = await queue.consumer_info()
    assert info.config.max_ack_pending == 2  # JetStream enforces the credits as well
    assert info.num_ack_pending == 2 and info.num_pending == 4  # the rest wait in the stream
    assert len(worker._tasks) == 2
    engine.gate.set()
    for sub in subs:
        got = await replies(sub)
        assert isinstance(got[-1], Chunk) and got[-1].final
    assert engine.max_running == 2


async def test_an_idle_worker_takes_a_burst_on_either_queue_at_once(fabric, client):
    """An own-subject burst as large as the free slots, or a spilled request on .any, starts
    at once on an idle worker (see ``Worker._pull_loop``): no credit waits on the queue
    that stays empty.

    ``idle_poll`` is 5 s here: a slot held by a lingering pull on the queue that stays
    empty would keep part of a burst waiting that long (and the stop waits it out once).
    """
    engine = ScriptedEngine(capacity=4)
    engine.gate.clear()
    await engine.warmup()
    worker = await fabric.worker("general", "r0", engine=engine, max_inflight=4, fetch_batch=4,
                                 idle_poll=5.0, warmup=False)
    queue = Queue(client)
    for replica, burst in (("r0", 4), (ANY_REPLICA, 1)):
        await wait_until(lambda: worker.own.lingering and worker.any.lingering)
        subs = [await queue.put(chat(f"{replica} {i}", max_tokens=1), f"burst-{replica}-{i}",
                                replica=replica) for i in range(burst)]
        await wait_until(lambda n=burst: engine.running == n, timeout=2)
        engine.gate.set()
        for sub in subs:
            got = await replies(sub)
            assert isinstance(got[-1], Chunk) and got[-1].final
        await wait_until(lambda: not worker._tasks and engine.running == 0)
        engine.gate.clear()


async def test_own_subject_is_served_before_the_shared_any_queue(fabric, client):
    engine = ScriptedEngine(capacity=1)
    queue = Queue(client)
    await queue.ensure()
    subs = []
    for i in range(3):  # queued before the worker exists; .any first, to be sure order is not arrival
        subs.append(await queue.put(chat(f"spill {i}", max_tokens=1), f"any-{i}", replica="any"))
    for i in range(3):
        subs.append(await queue.put(chat(f"own {i}", max_tokens=1), f"own-{i}"))
    await fabric.worker("general", "r0", engine=engine, max_inflight=1, fetch_batch=1)
    for sub in subs:
        await replies(sub)
    served = [c for c in engine.calls if not c.startswith("warmup")]
    assert served == ["own-0", "own-1", "own-2", "any-0", "any-1", "any-2"]


# ---- dead engine → stop fetching, nak in-flight, exit non-zero -------------------------------------------


async def test_dead_engine_releases_in_flight_work_and_the_worker_exits_non_zero(fabric, client):
    engine = ScriptedEngine(capacity=3)
    engine.gate.clear()
    await engine.warmup()
    dead = False
    engine.fail = lambda rid, attempt: EngineDeadError("engine core process exited") if dead else None
    worker = await fabric.worker("general", "r0", engine=engine, max_inflight=3, warmup=False)
    queue = Queue(client)
    subs = [await queue.put(chat(f"q{i}", max_tokens=2), f"dead-{i}") for i in range(5)]
    await wait_until(lambda: engine.running == 3)
    dead = True
    engine.gate.set()
    exit_code = await asyncio.wait_for(fabric._tasks[-1], 15)
    fabric._tasks.pop()  # already finished; the fixture should not wait for it again
    assert exit_code == 1
    assert worker.released == 3 and worker.completed == 0
    assert not engine.calls[3:], "no more work was fetched once the engine was dead"
    assert await queue.messages() == 5  # nothing lost
    # A healthy replica picks all of it up at once — the three were nak'd, not left for
    # ack_wait (30 s, far past the reply timeout below) — and the three that had started
    # say so.
    await fabric.worker("general", "r0")
    restarted = 0
    for sub in subs:
        got = await replies(sub)
        assert isinstance(got[-1], Chunk) and got[-1].final
        restarted += isinstance(got[0], Chunk) and got[0].restarted
    assert restarted == 3
