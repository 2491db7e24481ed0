"""Router hop: what the router adds between a client and the work queue.

Latency: client publish → first reply chunk, (a) through the ingress and a router
process, and (b) the baseline — the client publishes the finished work item straight
onto the work queue (what a client would do with no router at all). Both paths run in
the same run, interleaved request by request, against the same worker; the simulated
engine runs with zero delays and max_tokens=1, so the figure is fabric overhead only.

Throughput: how many requests/s one router process decides and publishes, measured as
the rate at which work lands in the stream while the client floods the ingress (no
worker pulling, queues unbounded for the run).

Run: make bench-hop  (or python -m bench.router_hop [--requests N])
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import nats
import uvloop
from nats.aio.msg import Msg

from bench.results import machine, percentile, write_section
from fabric.client import Client
from fabric.local import NatsServer, ProcessGroup, component_command
from router.context import build_context
from subjects import codec
from subjects.messages import ChatMessage, ChatRequest, ErrorReply, Heartbeat, WorkItem
from subjects.names import HEADER_MSG_ID, HEADER_REPLY, Names
from subjects.settings import replica_bucket_config

PROMPT = "Tell me something interesting about the sea."
FLOOD_REPLICAS = 16


async def _wait_replicas(nc: nats.NATS, names: Names, count: int) -> None:
    js = nc.jetstream()
    for _ in range(300):
        try:
            kv = await js.key_value(names.replica_bucket)
            if len(await kv.keys()) >= count:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("workers did not come up")


async def latency(url: str, requests: int) -> tuple[list[float], list[float]]:
    names = Names()
    nc = await nats.connect(url)
    js = nc.jetstream()
    await _wait_replicas(nc, names, 1)
    await Client(nc).wait_until_served()
    inbox_sub = await nc.subscribe(nc.new_inbox() + ".*")
    base = inbox_sub.subject[:-2]
    via_router: list[float] = []
    direct: list[float] = []

    async def one(use_router: bool, i: int) -> float:
        rid = uuid.uuid4().hex
        reply = f"{base}.{i}"
        request = ChatRequest(messages=[ChatMessage(role="user", content=PROMPT)], max_tokens=1, id=rid)
        payload = codec.encode_request(request)
        t0 = time.perf_counter()
        if use_router:
            await nc.publish(names.ingress, payload, reply=reply)
        else:
            # The baseline still builds the context the worker expects: no free lunch.
            item = WorkItem(rid, reply, "general", "r0", 0.0, time.time(), payload,
                            build_context(request))
            await js.publish(names.work("general", "r0"), codec.encode_work(item),
                             headers={HEADER_MSG_ID: rid, HEADER_REPLY: reply})
        msg = await inbox_sub.next_msg(timeout=10)
        elapsed = time.perf_counter() - t0
        reply_msg = codec.decode_reply(msg.data)
        if isinstance(reply_msg, ErrorReply):
            raise RuntimeError(f"bench request failed: {reply_msg}")
        return elapsed

    for i in range(200):  # warm both paths
        await one(i % 2 == 0, i)
    for i in range(requests * 2):
        use_router = i % 2 == 0
        (via_router if use_router else direct).append(await one(use_router, i))
    await nc.close()
    return via_router, direct


async def throughput(url: str, requests: int) -> tuple[float, int, dict[str, int]]:
    names = Names(prefix="hop")
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = names.work_stream("general")
    for _ in range(300):  # the router creates the stream at start
        try:
            await js.stream_info(stream)
            break
        except Exception:
            await asyncio.sleep(0.1)
    # Live replicas for the router to spread over; nobody pulls. The router bounds the work
    # it places on one replica that never drains, so there are enough of them for the flood.
    kv = await js.create_key_value(**replica_bucket_config(names))
    replicas = [f"r{i}" for i in range(FLOOD_REPLICAS)]

    async def heartbeat() -> None:
        for replica in replicas:
            beat = Heartbeat(model="general", replica=replica, capacity=1_000_000, warm=True)
            await kv.put(names.replica_key("general", replica), codec.encode_heartbeat(beat))

    await heartbeat()
    await asyncio.sleep(0.5)
    payloads = [codec.encode_request(ChatRequest(
        messages=[ChatMessage(role="user", content=f"{PROMPT} #{i}")], max_tokens=1,
        id=uuid.uuid4().hex)) for i in range(requests)]
    reply = nc.new_inbox()
    refusals: dict[str, int] = {}

    async def count_refusal(msg: Msg) -> None:
        answer = codec.decode_reply(msg.data)
        if isinstance(answer, ErrorReply):
            refusals[answer.code] = refusals.get(answer.code, 0) + 1

    await nc.subscribe(reply, cb=count_refusal)
    t0 = time.perf_counter()
    for i, p in enumerate(payloads):
        await nc.publish(names.ingress, p, reply=reply)
        if i % 2000 == 0:
            await heartbeat()
    while True:
        info = await js.stream_info(stream)
        if info.state.messages + sum(refusals.values()) >= requests:
            break
        if time.perf_counter() - t0 > 120:
            raise RuntimeError(f"only {info.state.messages}/{requests} routed in 120 s; refused: {refusals}")
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - t0
    await nc.close()
    # Decisions per second (each request routed or refused with an error reply).
    return requests / elapsed, info.state.messages, refusals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path, for latency")
    parser.add_argument("--flood", type=int, default=20000, help="requests for the throughput run")
    args = parser.parse_args()
    with NatsServer() as server:
        group = ProcessGroup()
        try:
            group.spawn("router", component_command("router", "--nats-url", server.url))
            group.spawn("worker", component_command(
                "worker", "--nats-url", server.url, "--model", "general", "--replica", "r0",
                "--sim-time-scale", "0", "--max-inflight", "8"))
            via_router, direct = uvloop.run(latency(server.url, args.requests))
        finally:
            group.stop()
        group = ProcessGroup()
        try:
            group.spawn("router", component_command(
                "router", "--nats-url", server.url, "--prefix", "hop", "--queue-bound",
                str(args.flood * 2)))
            rate, routed, refusals = uvloop.run(throughput(server.url, args.flood))
        finally:
            group.stop()
    ms = 1000.0
    r50, r99 = percentile(via_router, 50) * ms, percentile(via_router, 99) * ms
    d50, d99 = percentile(direct, 50) * ms, percentile(direct, 99) * ms
    table = (
        f"| path | p50 | p99 |\n|---|---|---|\n"
        f"| client → router → work queue → worker → first chunk | {r50:.3f} ms | {r99:.3f} ms |\n"
        f"| client → work queue → worker → first chunk (baseline) | {d50:.3f} ms | {d99:.3f} ms |\n"
        f"| ratio (router / baseline) | {r50 / d50:.2f}× | {r99 / d99:.2f}× |\n\n"
        f"One router process answers **{rate:,.0f} requests/s** (ingress → decision → "
        f"JetStream publish acknowledged or an error reply; {args.flood:,} requests over "
        f"{FLOOD_REPLICAS} registered replicas, one process, no worker pulling): "
        f"{routed:,} published, refused: {refusals or 'none'}.\n"
    )
    md = (
        "## Router hop\n\n"
        f"Machine: {machine()}. Command: `python -m bench.router_hop --requests {args.requests} "
        f"--flood {args.flood}`. Router and worker are separate processes on one embedded "
        "nats-server; simulated engine with zero delays, max_tokens=1, requests one at a time, "
        f"the two paths interleaved ({args.requests} each).\n\n" + table
    )
    write_section("router-hop", md)
    print(md)


if __name__ == "__main__":
    main()
