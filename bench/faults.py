"""Fault report: what the fabric does under crashes, overload and hostile input.

Every scenario starts its own nats-server (file storage, loopback) and runs routers and
workers as real OS processes (``slm-fabric router`` / ``worker``), so a SIGKILL is a real
crash. The client side is the real ``fabric.client.Client``; a spy connection hears every
reply sent to the clients' inboxes, which is how duplicates and restarted attempts are
counted independently of what the client chose to keep.

Columns of the table: requests **sent**; **answered** (a complete final answer);
**errored** (a clear error reply, by code); **lost** (no final answer and no error within
the timeout — must be 0 everywhere); **duplicated** (a request that received more than one
final answer or terminal error — must be 0 everywhere).

``tests/test_faults.py`` runs the same scenarios with smaller numbers and asserts on them.
Run: ``make faults`` (``python -m bench.faults``); writes the ``faults`` section of
bench/results.md and prints the table the README quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from bench.results import machine, percentile, write_section
from fabric.client import Client, FabricError, ReplyTimeout, chat
from fabric.local import NatsServer, ProcessGroup, component_command
from fabric.security import ROLES, Plan, password_variable, render
from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import ChatRequest, ErrorCode, ErrorReply, Heartbeat
from subjects.names import Names
from subjects.settings import replica_bucket_config, work_consumer_config

MODEL = "general"
VERBOSE = bool(os.environ.get("SLM_FAULTS_VERBOSE"))


# ---- tallies --------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report: a fault, what the fabric does about it, and the counts."""

    fault: str
    happens: str
    sent: int = 0
    answered: int = 0
    errored: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    facts: dict[str, Any] = field(default_factory=dict)  # scenario-specific measurements
    lost_ids: list[str] = field(default_factory=list)

    def cells(self) -> list[str]:
        errors = ", ".join(f"{n} {code}" for code, n in sorted(self.errored.items())) or "0"
        return [self.fault, self.happens, str(self.sent), str(self.answered), errors,
                str(self.lost), str(self.duplicated)]


def original_id(request_id: str) -> str:
    """The id a request was first sent under (a client resubmits as ``<id>-r<n>``)."""
    base, sep, n = request_id.rpartition("-r")
    return base if sep and n.isdigit() else request_id


class Spy:
    """Hears every reply to one scenario's clients: all their inboxes share one prefix."""

    def __init__(self) -> None:
        self.finals: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()  # chunks with seq 0: one per attempt that spoke
        self.errors: defaultdict[str, list[str]] = defaultdict(list)
        self.replicas: defaultdict[str, set[str]] = defaultdict(set)
        self.flagged: Counter[str] = Counter()  # chunks the worker marked restarted
        self._sub: Any = None

    async def start(self, nc: nats.NATS, inbox_prefix: str) -> None:
        self._sub = await nc.subscribe(f"{inbox_prefix}.>", cb=self._on_reply)

    async def _on_reply(self, msg: Any) -> None:
        try:
            reply = codec.decode_reply(msg.data, msg.subject)
        except BadMessage:
            return  # JetStream publish acks of durable requests share the inbox prefix
        rid = original_id(reply.request_id)
        if isinstance(reply, ErrorReply):
            self.errors[rid].append(reply.code)
            return
        if reply.seq == 0:
            self.starts[rid] += 1
        if reply.restarted:
            self.flagged[rid] += 1
        self.replicas[rid].add(reply.replica)
        if reply.final:
            self.finals[rid] += 1

    def terminal(self, request_id: str) -> int:
        """Final answers and final errors (a duplicate_id notice to a retry is neither)."""
        errors = [c for c in self.errors[request_id] if c != ErrorCode.DUPLICATE_ID.value]
        return self.finals[request_id] + len(errors)

    def streaming_on(self, replica: str) -> int:
        """Requests that have output from ``replica`` and no final answer yet."""
        return sum(1 for rid, seen in self.replicas.items()
                   if replica in seen and not self.finals[rid])


async def send_all(client: Client, requests: list[ChatRequest], row: Row, spy: Spy, *,
                   timeout: float, **options: Any) -> dict[str, float]:
    """Send every request at once; fill in the row. Returns latency per answered id."""
    latencies: dict[str, float] = {}
    row.sent += len(requests)

    async def one(request: ChatRequest) -> None:
        assert request.id is not None
        started = time.perf_counter()
        try:
            await client.complete(request, timeout=timeout, **options)
        except ReplyTimeout:
            row.lost += 1
            row.lost_ids.append(request.id)
            return
        except FabricError as exc:
            row.errored[exc.code] += 1
            return
        row.answered += 1
        latencies[request.id] = time.perf_counter() - started

    await asyncio.gather(*(one(r) for r in requests))
    await settle_replies()
    row.duplicated += sum(1 for r in requests if r.id and spy.terminal(r.id) > 1)
    return latencies


async def settle_replies(seconds: float = 0.3) -> None:
    """Give a late duplicate the chance to arrive before it is counted (report only)."""
    await asyncio.sleep(seconds)


def requests_for(tag: str, n: int, max_tokens: int) -> list[ChatRequest]:
    # A session each and a distinct start, so affinity routing spreads them over the
    # replicas (a shared prompt prefix sends them where that prefix was placed).
    return [chat(f"{tag}-{i}: tell me something about this topic.", model=MODEL,
                 max_tokens=max_tokens, id=f"{tag}-{i}", user=f"{tag}-{i}") for i in range(n)]


# ---- the fleet: real processes --------------------------------------------------------


def _env(settings: dict[str, Any]) -> dict[str, str]:
    return {f"SLM_{k.upper()}": str(v) for k, v in settings.items()}


class Fleet:
    """Routers and workers as OS processes against one server, under one prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.names = Names(prefix)
        self.group = ProcessGroup()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def router(self, label: str = "router", **settings: Any) -> None:
        env = _env({"nats_url": self.url, "prefix": self.prefix, "models": MODEL, **settings})
        self.procs[label] = self.group.spawn(label, component_command("router"), env,
                                             quiet=not VERBOSE)

    def worker(self, replica: str, **settings: Any) -> None:
        env = _env({"nats_url": self.url, "prefix": self.prefix, "model": MODEL,
                    "replica": replica, "engine": "sim", **settings})
        self.procs[replica] = self.group.spawn(f"worker {replica}", component_command("worker"),
                                               env, quiet=not VERBOSE)

    def kill(self, label: str) -> None:
        """SIGKILL: no handler runs, nothing is nak'd, the socket just closes."""
        proc = self.procs[label]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def freeze(self, label: str) -> None:
        """SIGSTOP: the process holds its connection and whatever it took, and does nothing."""
        self.procs[label].send_signal(signal.SIGSTOP)

    def terminate(self, label: str) -> None:
        proc = self.procs[label]
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)

    def rss_bytes(self, label: str) -> int:
        status = Path(f"/proc/{self.procs[label].pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.group.stop()


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def replicas_up(nc: nats.NATS, names: Names, count: int) -> bool:
    try:
        kv = await nc.jetstream().key_value(names.replica_bucket)
        return len(await kv.keys()) >= count
    except Exception:  # bucket not created yet, or empty
        return False


async def routers_listening(server: NatsServer, names: Names, count: int) -> bool:
    """Do ``count`` connections hold a subscription to the ingress (the routers' queue
    group)? Read from the server's monitoring endpoint: answered probes cannot tell, as
    the queue group may give every probe to the router that started first."""
    url = f"http://127.0.0.1:{server.monitor_port}/connz?subs=1&limit=1024"

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
            return json.loads(response.read())  # type: ignore[no-any-return]

    try:
        connz = await asyncio.to_thread(fetch)
    except OSError:
        return False
    listening = [c for c in connz.get("connections", []) if names.ingress in c.get("subscriptions_list", [])]
    return len(listening) >= count


async def served(client: Client) -> bool:
    """One probe through router and worker (its id is not part of any tally)."""
    try:
        await client.complete(chat("ping", model=MODEL, max_tokens=1), timeout=2.0, retries=0)
        return True
    except FabricError:
        return False


async def router_up(client: Client) -> bool:
    """A router listens on the ingress (any answer but no_router will do)."""
    try:
        await client.complete(chat("ping", model=MODEL, max_tokens=1), timeout=2.0, retries=0)
    except FabricError as exc:
        return exc.code != ErrorCode.NO_ROUTER.value
    return True


async def stream_exists(nc: nats.NATS, stream: str) -> bool:
    try:
        await nc.jetstream().stream_info(stream)
        return True
    except Exception:
        return False


@contextlib.asynccontextmanager
async def scenario(server: NatsServer | None = None) -> Any:
    """A server (unless given), a fresh prefix, a fleet, a client, an admin connection, a spy."""
    own = server is None
    srv = server or NatsServer().start()
    prefix = "f" + uuid.uuid4().hex[:8]
    fleet = Fleet(srv.url, prefix)
    admin = await nats.connect(srv.url, max_reconnect_attempts=-1)
    client = await Client.connect(srv.url, prefix)
    spy = Spy()
    await spy.start(admin, Names(prefix).inbox_prefix)
    try:
        yield srv, fleet, client, admin, spy
    finally:
        await client.close()
        await admin.close()
        fleet.stop()
        if own:
            srv.stop()


# ---- scenarios -------------------------------------------------------------------------


async def worker_kill(n: int = 300, replicas: int = 3, max_tokens: int = 100,
                      timeout: float = 60.0) -> Row:
    """SIGKILL the busiest of three replicas while a few hundred requests stream."""
    row = Row("worker SIGKILL mid-generation",
              "its un-acked work comes back (its own queue moved to .any by the router once "
              "its heartbeat stops, .any work redelivered after ack_wait) to the surviving "
              "replicas; the client discards the partial answer (restarted) and gets one "
              "complete answer")
    async with scenario() as (_, fleet, client, admin, spy):
        ack_wait = 2.0
        bound = n
        fleet.router(queue_bound=bound)
        for r in range(replicas):
            fleet.worker(f"r{r}", max_inflight=n // replicas + 32, queue_bound=bound,
                         ack_wait=ack_wait, sim_time_scale=1.0)
        await wait_for(lambda: replicas_up(admin, fleet.names, replicas), 60, "replicas")
        await wait_for(lambda: served(client), 60, "the fabric to answer")
        requests = requests_for("wk", n, max_tokens)
        progress = {"sent": 0}
        sending = asyncio.ensure_future(paced(client, requests, row, spy, progress, timeout=timeout))
        await wait_for(_async(lambda: progress["sent"] == n), 60, "everything sent")
        names = [f"r{r}" for r in range(replicas)]
        # Long answers (max_tokens): when the last request is sent, many are mid-stream. A
        # quarter, not half: on a loaded box sending takes long enough that the first answers
        # end before the last requests start, and half were never streaming at once.
        await wait_for(_async(lambda: sum(spy.streaming_on(r) for r in names) >= n // 4),
                       60, "a quarter of the requests to be streaming")
        victim = max(names, key=spy.streaming_on)
        row.facts["in_flight_at_kill"] = sum(1 for r in requests if not spy.finals[r.id or ""])
        row.facts["streaming_at_kill"] = {r: spy.streaming_on(r) for r in names}
        row.facts["streaming_on_killed"] = spy.streaming_on(victim)
        fleet.kill(victim)
        killed_at = time.perf_counter()
        await sending
        row.facts["all_done_after_kill_s"] = round(time.perf_counter() - killed_at, 2)
        row.facts["restarted"] = sum(1 for r in requests if spy.starts[r.id or ""] > 1)
        # ... of which the worker flagged the new first chunk (else the client inferred it)
        row.facts["restarted_flagged"] = sum(1 for r in requests if spy.flagged[r.id or ""])
        row.facts["ack_wait_s"] = ack_wait
    return row


async def paced(client: Client, requests: list[ChatRequest], row: Row, spy: Spy,
                progress: dict[str, int], batch: int = 10, gap: float = 0.02,
                **options: Any) -> dict[str, float]:
    """Send in batches of ``batch`` every ``gap`` seconds (a steady arrival, not one wave)."""
    tasks = []
    for i in range(0, len(requests), batch):
        tasks.append(asyncio.ensure_future(send_all(client, requests[i:i + batch], row, spy,
                                                    **options)))
        progress["sent"] = min(i + batch, len(requests))
        await asyncio.sleep(gap)
    merged: dict[str, float] = {}
    for part in await asyncio.gather(*tasks):
        merged.update(part)
    return merged


def _async(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()
    return check


async def router_kill(n: int = 300, max_tokens: int = 10) -> Row:
    """Two routers; SIGKILL one while requests arrive; clients retry with the same id."""
    row = Row("router frozen, then SIGKILL, under load",
              "requests the dead router held get no reply; clients resend them with the same "
              "id after 1 s; the surviving router routes them; JetStream de-duplicates the "
              "ones that had been published, so each runs once")
    async with scenario() as (server, fleet, client, admin, spy):
        fleet.router("router-a", queue_bound=n)
        fleet.router("router-b", queue_bound=n)
        for r in range(2):
            fleet.worker(f"r{r}", max_inflight=64, queue_bound=n, sim_time_scale=0.5)
        await wait_for(lambda: replicas_up(admin, fleet.names, 2), 60, "replicas")
        # Both routers in the queue group, so the one frozen below holds requests (on a
        # loaded box a router can take seconds to start; probes alone would not show it).
        await wait_for(lambda: routers_listening(server, fleet.names, 2), 60, "both routers")
        await wait_for(lambda: served(client), 60, "the fabric to answer")
        requests = requests_for("rk", n, max_tokens)
        progress = {"sent": 0}
        # ~300 requests/s, so the freeze and the kill land while requests arrive.
        sending = asyncio.ensure_future(paced(client, requests, row, spy, progress, gap=0.03,
                                              timeout=30.0, retry_after=1.0))
        await wait_for(_async(lambda: progress["sent"] >= n // 3), 30, "a third of the load")
        # Freeze it first, so the kill lands while it holds requests (taken from the
        # queue group, not yet routed): a router that hangs, then crashes.
        fleet.freeze("router-a")
        await wait_for(_async(lambda: progress["sent"] >= 2 * n // 3), 30, "another third")
        fleet.kill("router-a")
        await sending
        row.duplicated = sum(1 for r in requests if spy.terminal(r.id or "") > 1)
        row.facts["client_retries"] = client.retries_sent
        row.facts["ran_twice"] = sum(1 for r in requests if spy.starts[r.id or ""] > 1)
        info = await admin.jetstream().stream_info(fleet.names.work_stream(MODEL))
        row.facts["work_items_stored"] = info.state.last_seq - _probes(spy)
    return row


def _probes(spy: Spy) -> int:
    """Probe requests (ids not from requests_for) that also went through the work stream."""
    return sum(1 for rid in spy.finals if "-" not in rid)


async def nats_restart(n: int = 200, max_tokens: int = 20, *, crash: bool = False) -> Row:
    """Stop the nats-server (SIGTERM, or SIGKILL with ``crash``) and start it again on the
    same port and store while requests are queued and streaming."""
    how = "SIGKILL + restart" if crash else "restart"
    row = Row(f"NATS server {how} (file storage)",
              "routers, workers and clients reconnect by themselves; work stored in JetStream "
              "is served after the restart; a client that heard nothing across the reconnect "
              "asks again (same id first, then a new id)"
              + ("; after a crash JetStream may deliver work again whose acks it had not "
                 "persisted (at-least-once), so some requests run twice" if crash else ""))
    async with scenario() as (server, fleet, client, admin, spy):
        fleet.router(queue_bound=n)
        for r in range(2):
            fleet.worker(f"r{r}", max_inflight=16, queue_bound=n, ack_wait=3.0,
                         sim_time_scale=1.0)
        await wait_for(lambda: replicas_up(admin, fleet.names, 2), 60, "replicas")
        await wait_for(lambda: served(client), 60, "the fabric to answer")
        requests = requests_for("nc" if crash else "nr", n, max_tokens)
        sending = asyncio.ensure_future(send_all(client, requests, row, spy, timeout=60.0))
        await wait_for(_async(lambda: sum(spy.finals.values()) >= n // 4), 60, "a quarter answered")
        info = await admin.jetstream().stream_info(fleet.names.work_stream(MODEL))
        row.facts["queued_at_restart"] = info.state.messages
        t0 = time.perf_counter()
        await asyncio.to_thread(server.restart, kill=crash)
        row.facts["server_down_s"] = round(time.perf_counter() - t0, 2)
        await sending
        row.facts["client_retries"] = client.retries_sent
        row.facts["client_resubmits"] = client.resubmits_sent
        row.facts["ran_twice"] = sum(1 for r in requests if spy.starts[r.id or ""] > 1)
    return row


async def nats_crash(n: int = 200, max_tokens: int = 20) -> Row:
    return await nats_restart(n, max_tokens, crash=True)


async def durable_ingress(n: int = 100, max_tokens: int = 5) -> Row:
    """Durable requests published while no router runs; a router starts later."""
    row = Row("no router running (durable ingress)",
              "batch clients publish to the SLM_INGRESS stream; JetStream stores the requests; "
              "the first router to start serves them, replies going to the Slm-Reply inbox")
    async with scenario() as (_, fleet, client, admin, spy):
        fleet.router("router-once")  # creates SLM_INGRESS, then goes away
        await wait_for(lambda: stream_exists(admin, fleet.names.ingress_stream), 60, "SLM_INGRESS")
        fleet.terminate("router-once")
        requests = requests_for("di", n, max_tokens)
        sending = asyncio.ensure_future(send_all(client, requests, row, spy, timeout=60.0,
                                                 durable=True))

        async def stored() -> bool:
            info = await admin.jetstream().stream_info(fleet.names.ingress_stream)
            return info.state.messages >= n

        await wait_for(stored, 30, "the durable requests to be stored")
        row.facts["stored_while_no_router"] = n
        fleet.worker("r0", max_inflight=32, sim_time_scale=0.2)
        fleet.router("router")
        await sending
    return row


async def overload(replicas: int = 2, slots: int = 8, bound: int = 8, bursts: int = 3,
                   max_tokens: int = 100) -> Row:
    """A burst of 10× what the fleet holds (slots + queue room), several times over."""
    capacity = replicas * (slots + bound) + bound  # in flight + sticky queues + .any
    burst = 10 * capacity
    row = Row("10× burst (overload)",
              f"queues stay at their bound ({bound}); the excess is refused with `overloaded` "
              "at once; admitted requests keep their latency; memory stays flat")
    async with scenario() as (_, fleet, client, admin, spy):
        fleet.router(queue_bound=bound)
        for r in range(replicas):
            fleet.worker(f"r{r}", max_inflight=slots, queue_bound=bound, sim_time_scale=1.0)
        await wait_for(lambda: replicas_up(admin, fleet.names, replicas), 60, "replicas")
        await wait_for(lambda: served(client), 60, "the fabric to answer")
        js = admin.jetstream()
        stream = fleet.names.work_stream(MODEL)
        # Baseline: exactly what the fleet holds (every slot busy, every queue full), no
        # excess — the latency admitted requests should keep under a burst.
        base = await send_all(client, requests_for("base", capacity, max_tokens), Row("", ""),
                              spy, timeout=30.0)
        memory_before = {label: fleet.rss_bytes(label) for label in ("router", "r0")}
        deepest = 0
        refused_after: list[float] = []
        admitted: list[float] = []

        async def sample_depth() -> None:
            nonlocal deepest
            while True:
                info = await js.stream_info(stream, subjects_filter=">")
                deepest = max([deepest, *(info.state.subjects or {}).values()])
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample_depth())
        for b in range(bursts):
            requests = requests_for(f"burst{b}", burst, max_tokens)
            refused_after += await _burst(client, requests, row, spy, admitted)
        sampler.cancel()
        memory_after = {label: fleet.rss_bytes(label) for label in ("router", "r0")}
        ms = 1000.0
        row.facts.update({
            "burst": burst, "capacity": capacity, "bursts": bursts, "queue_bound": bound,
            "deepest_queue": deepest,
            "overloaded_p50_ms": round(percentile(refused_after, 50) * ms, 1),
            "overloaded_p99_ms": round(percentile(refused_after, 99) * ms, 1),
            "overloaded_max_ms": round(max(refused_after, default=0.0) * ms, 1),
            "baseline_p50_ms": round(percentile(list(base.values()), 50) * ms, 1),
            "baseline_p99_ms": round(percentile(list(base.values()), 99) * ms, 1),
            "admitted_p50_ms": round(percentile(admitted, 50) * ms, 1),
            "admitted_p99_ms": round(percentile(admitted, 99) * ms, 1),
            "admitted_first_finished_ms": round(min(admitted, default=0.0) * ms, 1),
            "router_rss_mib": [round(memory_before["router"] / 2**20, 1),
                               round(memory_after["router"] / 2**20, 1)],
            "worker_rss_mib": [round(memory_before["r0"] / 2**20, 1),
                               round(memory_after["r0"] / 2**20, 1)],
        })
    return row


async def _burst(client: Client, requests: list[ChatRequest], row: Row, spy: Spy,
                 admitted: list[float]) -> list[float]:
    """All at once, as fast as one connection can publish; returns how long each
    ``overloaded`` refusal took to arrive after its request was published.

    Raw publishes to one wildcard inbox (no per-request subscription): what is measured is
    the fabric's reaction, not the Python client's cost of starting 400 streams.
    """
    nc = client.nc
    inbox = nc.new_inbox()
    sent_at: dict[str, float] = {}
    refused: list[float] = []
    pending = {r.id or "" for r in requests}
    done = asyncio.Event()

    async def on_reply(msg: Any) -> None:
        reply = codec.decode_reply(msg.data, msg.subject)
        rid = msg.subject.rpartition(".")[2]
        if rid not in pending:
            return
        elapsed = time.perf_counter() - sent_at[rid]
        if isinstance(reply, ErrorReply):
            row.errored[reply.code] += 1
            if reply.code == ErrorCode.OVERLOADED.value:
                refused.append(elapsed)
        elif reply.final:
            row.answered += 1
            admitted.append(elapsed)
        else:
            return
        pending.discard(rid)
        if not pending:
            done.set()

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    payloads = [(r.id or "", codec.encode_request(r)) for r in requests]
    row.sent += len(requests)
    for rid, payload in payloads:
        sent_at[rid] = time.perf_counter()
        await nc.publish(client.names.ingress, payload, reply=f"{inbox}.{rid}")
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        row.lost += len(pending)
    await sub.unsubscribe()
    return refused


async def dead_letter(n: int = 20) -> Row:
    """A replica takes each request and dies before answering, every delivery."""
    row = Row("work that exhausts its deliveries (dead letter)",
              "after max_deliver attempts JetStream's advisory reaches a router, which moves "
              "the message to SLM_DEAD, removes it from the WorkQueue and tells the client "
              "`redelivery_exhausted`")
    async with scenario() as (_, fleet, client, admin, spy):
        fleet.router(queue_bound=n)
        names = fleet.names
        js = admin.jetstream()
        await wait_for(lambda: router_up(client), 60, "the router")
        # A replica that heartbeats (so the router sends it work) and a consumer that takes
        # every delivery and never settles it: a worker crashing on the request each time.
        kv = await js.create_key_value(**replica_bucket_config(names))
        beat = codec.encode_heartbeat(Heartbeat(model=MODEL, replica="doomed", capacity=n, warm=True))
        await kv.put(names.replica_key(MODEL, "doomed"), beat)
        max_deliver = 3
        await js.add_consumer(names.work_stream(MODEL), **work_consumer_config(
            names.replica_consumer(MODEL, "doomed"), names.work(MODEL, "doomed"), n,
            ack_wait=0.5, max_deliver=max_deliver))
        taker = await js.pull_subscribe_bind(names.replica_consumer(MODEL, "doomed"),
                                             names.work_stream(MODEL))

        async def crash_on_everything() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await taker.fetch(n, timeout=0.5)  # taken, never acked
                await kv.put(names.replica_key(MODEL, "doomed"), beat)

        crasher = asyncio.ensure_future(crash_on_everything())
        try:
            await send_all(client, requests_for("dl", n, 5), row, spy, timeout=30.0)
        finally:
            crasher.cancel()
        info = await js.stream_info(names.dead_letter_stream)
        work = await js.stream_info(names.work_stream(MODEL))
        row.facts.update({"max_deliver": max_deliver, "in_dead_letter_stream": info.state.messages,
                          "left_in_work_queue": work.state.messages})
    return row


async def hostile_input(examples: int = 2500) -> Row:
    """The hypothesis fuzz of tests/test_hostile_input.py, run for its tally."""
    row = Row("hostile input (hypothesis, one router)",
              "invalid UTF-8, wrong types, oversize, deep nesting, odd model names, bad ids, "
              "hostile reply subjects, duplicate ids: each routed (valid) or refused with an "
              "error naming the problem, never `internal`; unusable reply subjects neither "
              "answered nor routed")
    with tempfile.TemporaryDirectory() as tmp:
        tally_path = Path(tmp) / "tally.json"
        env = {**os.environ, "SLM_HOSTILE_EXAMPLES": str(examples),
               "SLM_HOSTILE_TALLY": str(tally_path)}
        done = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/test_hostile_input.py::test_hostile_input_never_crashes_the_router_and_is_answered_precisely"],
            env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError("the hostile-input test failed:\n" + done.stdout[-3000:])
        tally = json.loads(tally_path.read_text())
    outcomes = Counter(tally["outcomes"])
    row.sent = tally["sent"]
    row.answered = outcomes.pop("routed", 0)
    unanswerable = outcomes.pop("unanswerable", 0)
    row.errored = outcomes
    row.lost = row.sent - row.answered - unanswerable - sum(outcomes.values())
    row.facts.update({"examples": examples, "queued_valid_requests": tally["queued"],
                      "unusable_reply_not_answered_not_queued": unanswerable,
                      "internal_errors": outcomes.get(ErrorCode.INTERNAL.value, 0)})
    return row


async def least_privilege(n: int = 50) -> Row:
    """The fabric under the config `slm-fabric nats-config` writes; forbidden actions tried."""
    row = Row("least-privilege NATS (nats-config)",
              "router, worker and client run as their own users; a client publishing work, "
              "reading another client's inbox or calling JetStream, a worker publishing to "
              "the ingress, the monitor purging a stream: each refused by the server")
    names = Names("f" + uuid.uuid4().hex[:8])
    passwords = {user: uuid.uuid4().hex for user in [*ROLES, "alice", "bob"]}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "nats.conf"
        config.write_text(render(Plan(names, [MODEL], ("alice", "bob"), http_port=0)))
        saved = dict(os.environ)
        os.environ.update({password_variable(u): p for u, p in passwords.items()})
        try:
            server = NatsServer(config_file=str(config)).start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        fleet = Fleet(server.url, names.prefix)

        def url(user: str) -> str:
            return f"nats://{user}:{passwords[user]}@127.0.0.1:{server.client_port}"

        refused: list[str] = []

        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc):
                refused.append(str(exc))

        try:
            fleet.router(nats_url=url("router"), queue_bound=n)
            fleet.worker("r0", nats_url=url("worker"), max_inflight=16, queue_bound=n,
                         sim_time_scale=0.2)
            client = await Client.connect(url("alice"), names.prefix)
            spy = Spy()  # alice's own inboxes are all alice may hear
            await spy.start(client.nc, names.client_inbox_prefix("alice"))
            await wait_for(lambda: served(client), 60, "the fabric to answer")
            await send_all(client, requests_for("lp", n, 5), row, spy, timeout=30.0)
            alice = await nats.connect(url("alice"), error_cb=on_error, allow_reconnect=False,
                                       inbox_prefix=names.client_inbox_prefix("alice"))
            worker = await nats.connect(url("worker"), error_cb=on_error, allow_reconnect=False)
            monitor = await nats.connect(url("monitor"), error_cb=on_error, allow_reconnect=False)
            stream = names.work_stream(MODEL)
            before = (await monitor.jetstream().stream_info(stream)).state.last_seq
            await alice.publish(names.work(MODEL, "r0"), b"injected")
            await alice.subscribe(f"{names.client_inbox_prefix('bob')}.>")
            await alice.publish(f"$JS.API.STREAM.DELETE.{stream}", b"")
            await worker.publish(names.ingress, b"{}", reply=f"{names.inbox_prefix}.x")
            await monitor.publish(f"$JS.API.STREAM.PURGE.{stream}", b"")
            for nc in (alice, worker, monitor):
                await nc.flush()
            await wait_for(_async(lambda: len(refused) >= 5), 10, "five refusals")
            after = (await monitor.jetstream().stream_info(stream)).state.last_seq
            row.facts.update({"forbidden_actions": 5, "refused": len(refused),
                              "work_items_injected": after - before,
                              "violations_in_server_log": sum("Violation" in line
                                                              for line in server.log_lines)})
            for nc in (alice, worker, monitor):
                await nc.close()
            await client.close()
        finally:
            fleet.stop()
            server.stop()
    return row


SCENARIOS: dict[str, Callable[..., Awaitable[Row]]] = {
    "worker_kill": worker_kill,
    "router_kill": router_kill,
    "nats_restart": nats_restart,
    "nats_crash": nats_crash,
    "durable_ingress": durable_ingress,
    "overload": overload,
    "dead_letter": dead_letter,
    "hostile_input": hostile_input,
    "least_privilege": least_privilege,
}


# ---- the report ------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ["fault", "what happens", "sent", "answered", "errored", "lost", "duplicated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def facts(rows: list[Row]) -> str:
    return "\n".join(f"- **{row.fault}**: " + ", ".join(f"{k} = {v}" for k, v in row.facts.items())
                     for row in rows if row.facts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run only these")
    parser.add_argument("--json", action="store_true", help="print rows as JSON too")
    args = parser.parse_args()
    rows = []
    for name, run in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} …", flush=True)
        rows.append(asyncio.run(run()))
    md = ("## Faults\n\n"
          f"Machine: {machine()}. Command: `python -m bench.faults`. Each row: a fresh embedded "
          "nats-server (file storage), router and workers as separate OS processes, simulated "
          "engine.\n\n" + table(rows) + "\n\nMeasured along the way:\n\n" + facts(rows) + "\n")
    if not args.only:
        write_section("faults", md)
    print(md)
    if args.json:
        print(json.dumps([{**row.__dict__, "errored": dict(row.errored)} for row in rows], indent=1))


if __name__ == "__main__":
    main()
