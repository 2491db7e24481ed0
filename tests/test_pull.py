"""workers.pull against a real nats-server: credit-holding pulls and the credit-free doorbell."""

from __future__ import annotations

import asyncio

from nats.aio.msg import Msg

from subjects.names import Names
from subjects.settings import ensure_stream, work_consumer_config, work_stream_config
from tests.conftest import wait_until
from workers.pull import Puller


async def consumer(client, replica: str = "r0") -> tuple[Names, str, str]:
    names = client.names
    js = client.nc.jetstream()
    stream = names.work_stream("general")
    await ensure_stream(js, work_stream_config(names, "general", 64))
    durable = names.replica_consumer("general", replica)
    await js.add_consumer(stream, **work_consumer_config(durable, names.work("general", replica), 4))
    return names, stream, durable


async def test_doorbell_rings_when_work_lands_and_leaves_it_for_a_real_pull(client):
    names, stream, durable = await consumer(client)
    js = client.nc.jetstream()
    delivered: list[Msg] = []
    settled = asyncio.Event()
    puller = Puller(client.nc, "$JS.API", stream, durable, delivered.append, settled.set)
    ringing = asyncio.ensure_future(puller.doorbell(expires=10.0))
    await wait_until(lambda: puller.lingering)  # the doorbell's request went out first
    await client.nc.flush()
    assert puller.lingering and puller.outstanding == 0  # waiting, holding no credit
    await js.publish(names.work("general", "r0"), b"work item")
    bell = await asyncio.wait_for(ringing, 5)  # well before its 10 s expiry
    assert bell.rang and settled.is_set()
    assert delivered == []
    info = await js.consumer_info(stream, durable)
    assert info.num_pending == 1 and info.num_ack_pending == 0  # still there, nobody holds it
    got = await puller.pull(4)
    assert got.received == 1 and delivered[0].data == b"work item"
    assert delivered[0].metadata.num_delivered == 1  # the doorbell did not count as a delivery
    await delivered[0].ack()
    await puller.stop()


async def test_doorbell_on_an_empty_queue_expires_without_ringing(client):
    _, stream, durable = await consumer(client)
    puller = Puller(client.nc, "$JS.API", stream, durable, lambda msg: None)
    bell = await puller.doorbell(expires=0.2)
    assert not bell.rang and bell.status == "408"
    assert not puller.lingering
    await puller.stop()
