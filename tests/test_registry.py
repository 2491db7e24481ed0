"""The registry on a real nats-server: dead and draining replicas, placement records."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.js.errors import NotFoundError

from fabric.client import chat
from router.config import RouterConfig
from router.context import PREFIX_BLOCK_CHARS, PrefixMemory
from router.policy import Policy
from router.registry import ReplicaTable
from router.rules import DEFAULT_RULES
from router.service import Router
from subjects import codec
from subjects.messages import Heartbeat, PlacementRecord
from subjects.settings import replica_bucket_config, work_consumer_config
from tests.conftest import eventually, wait_until

MODEL = "general"


@contextlib.asynccontextmanager
async def ghost(client, name: str = "ghost", *, draining: asyncio.Event | None = None
                ) -> AsyncIterator[asyncio.Event]:
    """A replica that heartbeats (and has its own durable consumer) but never pulls.

    Set the yielded event to stop its heartbeats (it "dies"); set ``draining`` to make
    it announce that it is draining.
    """
    names = client.names
    js = client.nc.jetstream()
    kv = await js.create_key_value(**replica_bucket_config(names))
    stream = names.work_stream(MODEL)

    async def stream_exists() -> bool:
        try:
            await js.stream_info(stream)
        except NotFoundError:
            return False
        return True

    await eventually(stream_exists, bool, timeout=5)  # the router creates the stream at start
    await js.add_consumer(stream, **work_consumer_config(
        names.replica_consumer(MODEL, name), names.work(MODEL, name), 100))
    dead = asyncio.Event()

    async def beat() -> None:
        while not dead.is_set():
            hb = Heartbeat(model=MODEL, replica=name, capacity=100, warm=True,
                           draining=draining is not None and draining.is_set())
            await kv.put(names.replica_key(MODEL, name), codec.encode_heartbeat(hb))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dead.wait(), 0.2)

    task = asyncio.ensure_future(beat())
    try:
        yield dead
    finally:
        dead.set()
        await task


async def queued_on(client, replica: str) -> int:
    info = await client.nc.jetstream().stream_info(
        client.names.work_stream(MODEL), subjects_filter=client.names.work(MODEL, replica))
    return (info.state.subjects or {}).get(client.names.work(MODEL, replica), 0)


async def queue_requests_on_ghost(fabric, client, count: int) -> list[asyncio.Future]:
    answers = [asyncio.ensure_future(client.complete(
        chat(f"Tell me about the sea, part {i}.", model=MODEL, max_tokens=4, id=f"req-{i}"),
        timeout=30)) for i in range(count)]
    await eventually(lambda: queued_on(client, "ghost"), lambda queued: queued == count)
    return answers


@pytest.mark.parametrize("routers", [1, 2])
async def test_a_dead_replicas_queued_work_is_moved_and_served(fabric, client, routers):
    for _ in range(routers):
        await fabric.router(replica_ttl=1.0)
    async with ghost(client) as dead:
        await fabric.wait_for_replicas(1)
        answers = await queue_requests_on_ghost(fabric, client, 12)
        worker = await fabric.worker(MODEL, "r1")
        await fabric.wait_for_replicas(2)
        assert not any(a.done() for a in answers)  # waiting on the ghost, which never pulls
        dead.set()  # its heartbeats stop: dropped within the TTL, its queue moved to .any
        done = await asyncio.wait_for(asyncio.gather(*answers), 30)
    assert sorted(a.request_id for a in done) == sorted(f"req-{i}" for i in range(12))
    assert {a.replica for a in done} == {"r1"}
    assert all(a.finish_reason == "length" and a.restarts == 0 for a in done)
    # Moved once even with several routers moving at the same time: served once each.
    await wait_until(lambda: worker.completed == 12)
    await asyncio.sleep(0.3)
    assert worker.completed == 12
    assert await queued_on(client, "ghost") == 0
    assert sum(r.mover.moved for r in fabric.routers) >= 12


async def test_a_draining_replica_gets_no_new_work_and_its_queue_moves_at_once(fabric, client):
    router = await fabric.router()  # default TTL: the move must not wait for expiry
    draining = asyncio.Event()
    async with ghost(client, draining=draining):
        await fabric.wait_for_replicas(1)
        answers = await queue_requests_on_ghost(fabric, client, 6)
        await fabric.worker(MODEL, "r1")
        await fabric.wait_for_replicas(2)
        draining.set()
        await wait_until(lambda: "ghost" not in router.table.fleet(MODEL).usable, 5)
        done = await asyncio.wait_for(asyncio.gather(*answers), 20)
        assert {a.replica for a in done} == {"r1"}
        # A session that was on the ghost is not sent back there while it drains.
        later = await client.complete(chat("And the moon?", model=MODEL, max_tokens=2,
                                           session_id="s-ghost"), timeout=10)
        assert later.replica == "r1"
        assert "ghost" in router.table.live(MODEL)  # still alive, only draining


async def test_routers_share_placements_so_a_prefix_sticks_across_routers(fabric, client):
    first = await fabric.router()
    second = await fabric.router()
    for replica in ("r0", "r1", "r2", "r3"):
        await fabric.worker(MODEL, replica)
    await fabric.wait_for_replicas(4)
    # Twelve blocks (~6k tokens): long enough that moving it would waste real prefill.
    document = "A long shared document. " * (12 * PREFIX_BLOCK_CHARS // 24)
    answer = await client.complete(chat(document + "Question one?", model=MODEL, max_tokens=2),
                                   timeout=10)
    # Both routers learn where it went (one decided, the other applied its record) ...
    for router in (first, second):
        await wait_until(lambda r=router: r.table.fleet(MODEL).placements.lookup(
            r.policy.context(chat(document + "Question two?")).prefix_hashes)[0] >= 2)
    # ... so the next question about it lands on the same replica whichever router takes it.
    for i in range(6):
        again = await client.complete(chat(document + f"Question {i}?", model=MODEL,
                                           max_tokens=2), timeout=10)
        assert again.replica == answer.replica


async def test_a_burst_of_one_new_prefix_is_spread_by_the_load_bound(fabric, client):
    """Requests that arrive together with the same new prefix each see the ones chosen
    before them (the router claims a replica when it chooses, before the publish returns),
    so the burst lands exactly as one-at-a-time routing would place it."""
    ghosts = ("g0", "g1", "g2", "g3")
    # No load samples during the test: only the router's own placements count.
    router = await fabric.router(load_sample_interval=600.0)
    # Four blocks: short enough that sharing it is cheap (below free_move_tokens).
    document = "A shared report on tides. " * (4 * PREFIX_BLOCK_CHARS // 26 + 1)
    request = chat(document + "What rises?", model=MODEL, max_tokens=16)
    burst = 16
    async with contextlib.AsyncExitStack() as stack:
        for name in ghosts:
            await stack.enter_async_context(ghost(client, name))
        await fabric.wait_for_replicas(len(ghosts))
        # The same placements, made one at a time on a fresh copy of the router's view.
        policy = Policy(DEFAULT_RULES, PrefixMemory(), replica_settings=router.policy.replica_settings)
        table = ReplicaTable(ttl=60.0, load_from_heartbeats=False)
        for name in ghosts:
            table.apply(Heartbeat(model=MODEL, replica=name, capacity=100, warm=True), 0.0)
        expected: Counter[str] = Counter()
        for _ in range(burst):
            ctx = policy.context(request)
            replica = policy.choose_replicas(ctx, MODEL, table)[0][0]
            policy.placed(ctx, MODEL, replica, table)
            expected[replica] += 1
        assert max(expected.values()) < burst  # the bound spreads it (else the test is moot)

        answers = [asyncio.ensure_future(client.complete(
            msgspec.structs.replace(request, id=f"burst-{i}"), timeout=30, retries=0))
            for i in range(burst)]
        try:

            async def counts() -> dict[str, int]:
                return {name: await queued_on(client, name) for name in ghosts}

            queued = await eventually(counts, lambda c: sum(c.values()) == burst)
            assert {k: v for k, v in queued.items() if v} == dict(expected)
        finally:
            for answer in answers:
                answer.cancel()
            await asyncio.gather(*answers, return_exceptions=True)


async def test_a_placement_record_with_a_bad_hash_is_skipped_and_the_router_keeps_applying(fabric, client):
    # Records come from other routers over the wire: a hash outside 63 bits (which the
    # prefix memory refuses) must cost that record only, never the router's record task.
    router = await fabric.router()
    await fabric.worker(MODEL, "r0")
    await fabric.wait_for_replicas(1)
    subject = router.names.placements
    bad = PlacementRecord("other-router", MODEL, "r0", 100, 0, (21, 1 << 63))
    good = PlacementRecord("other-router", MODEL, "r0", 100, 0, (31, 32, 33))
    await client.nc.publish(subject, codec.encode_placement(bad))
    await client.nc.publish(subject, codec.encode_placement(good))
    fleet = router.table.fleet(MODEL)
    await wait_until(lambda: fleet.placements.lookup((31, 32, 33))[0] == 3)
    assert fleet.placements.lookup((21,))[0] == 0  # nothing of the bad record was applied
    assert router.policy.memory.seen_depth((31, 32, 33)) == 3
    answer = await client.complete(chat("still there?", model=MODEL, max_tokens=2), timeout=10)
    assert answer.replica == "r0"


def test_the_router_makes_its_models_fleets_before_it_serves():
    """A fleet's placement memory zeroes its newer array as it is made (~22 ms at the
    default capacity): made when the router is built, not at a model's first heartbeat
    with the event loop serving."""
    router = Router(RouterConfig(nats_url="nats://127.0.0.1:1", models=("code", "general")))
    assert router.table._fleets.keys() == {"code", "general"}
    assert router.table.models() == frozenset()  # made, with no replica yet
