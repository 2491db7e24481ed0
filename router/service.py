"""The router process: ingress → decode → policy → publish to a work queue.

A thin NATS adapter around ``router.policy``: the subscription callback only enqueues,
named tasks in one TaskGroup decide and publish, and every input ends in a publish or an
error reply — never an exception out of the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import CollectorRegistry

from router.backpressure import FullQueues
from router.config import RouterConfig
from router.context import PrefixMemory
from router.deadletter import DeadLetters
from router.decision_log import DecisionLog
from router.ingress import DurableIngress
from router.metrics import RouterMetrics
from router.moves import QueueMover
from router.policy import Policy, UnknownModel
from router.registry import ReplicaTable
from router.replicas import settings_from
from router.rules import RulesError, RuleSet, load_rules
from router.scorer import shared_scorer
from router.sessions import SessionTable
from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import ChatRequest, ErrorCode, ErrorReply, PlacementRecord, WorkItem
from subjects.names import (
    ANY_REPLICA,
    HEADER_MSG_ID,
    HEADER_REPLY,
    ROUTER_QUEUE_GROUP,
    BadName,
    Names,
    is_token,
)
from subjects.settings import (
    DEDUP_WINDOW_SECONDS,
    ERR_MAX_MSGS_PER_SUBJECT,
    dead_letter_stream_config,
    ensure_stream,
    ingress_consumer_config,
    ingress_stream_config,
    replica_bucket_config,
    work_stream_config,
)

log = logging.getLogger("slm.router")

# Room a work item needs around the request it wraps (ids, reply subject, routing context,
# headers), so a request that passes the size check also fits the server's max_payload.
WORK_ITEM_OVERHEAD_BYTES = 4096
# Load samples applied between yields to the event loop: a fleet's samples in one go held
# every request behind them (a sample is ~6 us of Python: 1,024 replicas, ~6 ms); 64 keep
# each stretch under half a millisecond.
SAMPLES_PER_YIELD = 64


class Rejected(Exception):
    """Raised inside the handler when a request ends in an error reply; carries the code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = ""  # filled in once the request is decoded


def validate(request: ChatRequest) -> None:
    """Checks the decoder's types cannot express; raises Rejected naming the problem."""
    if not request.messages:
        raise Rejected(ErrorCode.BAD_REQUEST, "messages: must hold at least one message")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise Rejected(ErrorCode.BAD_REQUEST, "max_tokens: must be at least 1")
    if request.id is not None and not is_token(request.id):
        raise Rejected(
            ErrorCode.BAD_REQUEST,
            "id: must be 1-64 characters of a-z, 0-9, '-' or '_' (it names a subject)",
        )


@dataclass
class Router:
    config: RouterConfig
    rules: RuleSet | None = None  # None: SLM_RULES_PATH, else the shipped rules
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.names = Names(self.config.prefix)
        # Model choice: the scorer is loaded once per process; rules resolve "calibrated"
        # thresholds from it. A bad file fails the start with an error naming it.
        self.scorer = shared_scorer(self.config.scorer_path)
        rules = self.rules or load_rules(self.config.rules_path or None, self.scorer.thresholds)
        self.rules = rules
        self.policy = Policy(rules, PrefixMemory(), scorer=self.scorer,
                             sessions=SessionTable(self.config.session_capacity),
                             replica_settings=settings_from(self.config))
        self._reload_requested = asyncio.Event()
        self.sighup_installed = False
        self.decision_log = (DecisionLog(self.config.decision_log, rules, time.time())
                             if self.config.decision_log else None)
        # Replica choice's shared signals: heartbeats (registry), per-subject queue counts
        # (load samples) and the placement records every router publishes.
        self.table = ReplicaTable(ttl=self.config.replica_ttl,
                                  load_from_heartbeats=self.config.load_sample_interval <= 0,
                                  placement_capacity=self.config.placement_capacity,
                                  saturation=self.config.saturation)
        self.router_id = uuid.uuid4().hex[:12]  # names this process's placement records
        self._moves: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.metrics = RouterMetrics(self.registry)
        self.models = tuple(self.config.models) or tuple(sorted(rules.served_models()))
        for model in self.models:
            # Each served model's fleet now, before serving: its placement memory zeroes its
            # newer array as it is made (~22 ms a model at the default capacity), which at
            # the model's first heartbeat would stop the event loop with requests waiting.
            self.table.fleet(model)
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=self.config.concurrency * 4)
        self.metrics.watch_inbox(self._inbox.qsize)
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.routed = 0
        self.rejected = 0
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.dead_letters: DeadLetters | None = None
        self.durable: DurableIngress | None = None
        self._watcher: Any = None
        self._reconnected = asyncio.Event()
        self._expire_after = 0.0  # monotonic; replicas are not expired before this
        self.full_queues = FullQueues(self.config.full_queue_memory, self.config.queue_bound)
        # Bytes a request may have: the configured limit, and room left under the server's
        # max_payload for the work item that wraps it (set on connect).
        self.request_limit = self.config.max_request_bytes

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """Serve until ``stop()``; raises if NATS cannot be reached at start."""
        self.nc = await nats.connect(
            self.config.nats_url, name="slm-router", max_reconnect_attempts=-1,
            reconnect_time_wait=0.5, reconnected_cb=self._on_reconnected,
        )
        self.js = self.nc.jetstream()
        for model in self.models:
            await ensure_stream(self.js, work_stream_config(
                self.names, model, self.config.queue_bound, self.config.stream_replicas))
        kv = await self.js.create_key_value(
            **replica_bucket_config(self.names, self.config.stream_replicas))
        self._watcher = await kv.watchall()
        self.mover = QueueMover(self.js, self.names)
        placements = await self.nc.subscribe(self.names.placements)
        self.request_limit = min(self.config.max_request_bytes,
                                 self.nc.max_payload - WORK_ITEM_OVERHEAD_BYTES)
        await self._start_reliability()
        sub = await self.nc.subscribe(
            self.names.ingress, queue=ROUTER_QUEUE_GROUP, cb=self._enqueue,
            pending_msgs_limit=self.config.concurrency * 64,
        )
        log.info("router serving %s for models %s", self.names.ingress, ", ".join(self.models))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_watching_registry(kv), name="registry-watch")
                tasks.create_task(self._expire_replicas(), name="registry-expire")
                tasks.create_task(self._apply_placements(placements), name="placements")
                if self.config.load_sample_interval > 0:
                    tasks.create_task(self._sample_loads(), name="load-samples")
                self._install_sighup()
                tasks.create_task(self._watch_rules(), name="rules-watch")
                if self.decision_log is not None:
                    tasks.create_task(self._flush_decisions(self.decision_log), name="decision-log")
                for i in range(self.config.concurrency):
                    tasks.create_task(self._serve(), name=f"route-{i}")
                durable = (tasks.create_task(self.durable.run(self._stopping), name="durable-ingress")
                           if self.durable is not None else None)
                # A round trip makes the server hold the ingress subscription before anyone
                # is told the router is ready (else a first request may meet no responders).
                # Two: nats-py writes a flush's PING straight to the socket, ahead of the SUB
                # still in its pending buffer, so the first PONG can come back before the
                # server has the subscription; the second PING leaves after the flusher has
                # written the SUB (it ran while we waited for the first PONG).
                await self.nc.flush()
                await self.nc.flush()
                self.ready.set()
                await self._stopping.wait()
                await sub.unsubscribe()  # stop intake, then finish what was taken in
                if durable is not None:
                    await asyncio.wait_for(durable, timeout=5.0)
                await asyncio.wait_for(self._inbox.join(), timeout=5.0)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            for move in self._moves.values():
                move.cancel()
            await asyncio.gather(*self._moves.values(), return_exceptions=True)
            self._stop_sighup()
            if self.decision_log is not None:
                self.decision_log.flush()
            await self._watcher.stop()
            if self.dead_letters is not None:
                await self.dead_letters.stop()
            await self.nc.drain()
            log.info("router stopped: %d routed, %d errors", self.routed, self.rejected)

    def stop(self) -> None:
        self._stopping.set()

    # ---- rules reload (SIGHUP or a changed file) and the decision log -------------------
    def request_rules_reload(self) -> None:
        """Ask the rules-watch task to re-read the rules file (the SIGHUP handler)."""
        self._reload_requested.set()

    def reload_rules(self) -> bool:
        """Re-read SLM_RULES_PATH; on any problem keep the current rules and log it."""
        path = self.config.rules_path
        if not path:
            log.warning("rules reload asked for, but SLM_RULES_PATH is not set: keeping the shipped rules")
            return False
        try:
            rules = load_rules(path, self.scorer.thresholds)
        except RulesError as exc:
            log.error("rules reload failed, keeping the previous rules: %s", exc)
            return False
        if missing := sorted(rules.served_models() - set(self.models)):
            log.error("rules reload refused, keeping the previous rules: %s names models %s that "
                      "this router has no work stream for (it serves %s; restart to add models)",
                      path, missing, ", ".join(self.models))
            return False
        self.rules = rules
        self.policy.rules = rules
        if self.decision_log is not None:
            self.decision_log.rules_changed(rules, time.time())
        log.info("rules reloaded from %s: %d rules, digest %s", path, len(rules.rules), rules.digest)
        return True

    def _install_sighup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live on the main thread's loop only
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_rules_reload)
        self.sighup_installed = True

    def _stop_sighup(self) -> None:
        if self.sighup_installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self.sighup_installed = False

    async def _watch_rules(self) -> None:
        """Reload on SIGHUP, and when the rules file's mtime changes (every rules_poll s)."""
        path, poll = self.config.rules_path, self.config.rules_poll
        last = _mtime(path)
        while not _cancel_requested():
            try:
                await asyncio.wait_for(self._reload_requested.wait(), poll if path and poll > 0 else None)
            except TimeoutError:
                pass
            asked = self._reload_requested.is_set()
            self._reload_requested.clear()
            current = _mtime(path)
            if asked or current != last:
                last = current
                self.reload_rules()

    async def _flush_decisions(self, decisions: DecisionLog, interval: float = 0.25) -> None:
        """Write queued decisions from a worker thread, so file I/O never blocks routing."""
        while not _cancel_requested():
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(decisions.flush)
            except OSError as exc:
                log.error("cannot write decision log %s: %s", decisions.path, exc)

    async def _start_reliability(self) -> None:
        """Durable ingress (SLM_INGRESS) and the dead-letter monitor (SLM_DEAD), if enabled."""
        assert self.nc is not None and self.js is not None
        c = self.config
        streams = [self.names.work_stream(model) for model in self.models]
        if c.durable_ingress:
            await ensure_stream(self.js, ingress_stream_config(
                self.names, max_msgs=c.ingress_max_msgs, max_bytes=c.ingress_max_bytes,
                max_msg_size=c.max_request_bytes + WORK_ITEM_OVERHEAD_BYTES,
                replicas=c.stream_replicas))
            consumer = ingress_consumer_config(
                self.names, ack_wait=c.ingress_ack_wait, max_deliver=c.ingress_max_deliver,
                max_ack_pending=max(c.ingress_batch * 64, 1024))
            await self.js.add_consumer(self.names.ingress_stream, **consumer)  # create or update
            subscription = await self.js.pull_subscribe_bind(
                self.names.ingress_consumer, self.names.ingress_stream)
            self.durable = DurableIngress(
                self.names, subscription, self.admit, self._reply_error, Rejected,
                batch=c.ingress_batch, max_deliver=c.ingress_max_deliver,
                retry_delay=c.ingress_retry_delay)
            streams.append(self.names.ingress_stream)
        if c.dead_letter:
            await ensure_stream(self.js, dead_letter_stream_config(
                self.names, max_age=c.dead_letter_max_age, max_bytes=c.dead_letter_max_bytes,
                replicas=c.stream_replicas))
            self.dead_letters = DeadLetters(self.nc, self.js, self.names, tuple(streams), self.registry)
            await self.dead_letters.start()

    async def _enqueue(self, msg: Msg) -> None:
        try:
            self._inbox.put_nowait(msg)
        except asyncio.QueueFull:
            # Shed at the door, at once. Waiting here would stall this subscription until
            # NATS's pending limit drops messages silently (slow consumer) — a burst would
            # turn into timeouts instead of a clear, immediate "overloaded".
            if self.names.reply_problem(msg.reply) is None:
                await self._reply_error(msg.reply, "", ErrorCode.OVERLOADED, (
                    f"router busy: {self._inbox.qsize()} requests already waiting; retry later"))

    async def _serve(self) -> None:
        while not _cancel_requested():
            msg = await self._inbox.get()
            try:
                await self.handle(msg)
            except Exception:  # a task root: log, answer, keep serving
                log.exception("router failed on a message from %s", msg.subject)
                await self._reply_error(msg.reply, "", ErrorCode.INTERNAL, "router error")
            finally:
                self._inbox.task_done()

    async def _on_reconnected(self) -> None:
        self._reconnected.set()

    async def _keep_watching_registry(self, kv: Any) -> None:
        """Watch the registry; after a NATS reconnect, start a fresh watch at once.

        nats-py's ordered consumer notices a restarted server only after missed heartbeats
        (about 10 s); meanwhile no heartbeat would arrive, every replica would expire and
        every request get no_replica. A fresh watch replays each replica's latest heartbeat;
        until it has, replicas are not expired (the silence was ours, not theirs).
        """
        while not _cancel_requested():
            watching = asyncio.ensure_future(self._watch_registry(self._watcher))
            reconnected = asyncio.ensure_future(self._reconnected.wait())
            try:
                done, _ = await asyncio.wait({watching, reconnected},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (watching, reconnected):
                    task.cancel()
            if watching in done:
                watching.result()  # a failure ends the router, as before; a clean end re-watches
            self._reconnected.clear()
            self._expire_after = time.monotonic() + self.config.replica_ttl
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            while not _cancel_requested():
                try:
                    self._watcher = await kv.watchall()
                    break
                except Exception as exc:  # JetStream still recovering after a server restart
                    log.warning("registry watch failed (%s); retrying", exc)
                    await asyncio.sleep(0.25)
            log.info("registry watch restarted after a reconnect")

    async def _watch_registry(self, watcher: object) -> None:
        async for entry in watcher:  # type: ignore[attr-defined]
            if entry is None:
                continue  # the end-of-history marker
            if entry.operation is not None:  # a delete/purge: the replica deregistered
                try:
                    model, replica = self.names.parse_replica_key(entry.key)
                except BadName:
                    continue
                if self.table.remove(model, replica):
                    log.warning("replica %s/%s deregistered; dropped", model, replica)
                    self._move_queue(model, replica)
                continue
            if entry.value is None:
                continue
            try:
                beat = codec.decode_heartbeat(entry.value, entry.key)
            except BadMessage as exc:
                log.warning("ignoring a bad heartbeat: %s", exc)
                continue
            if self.table.apply(beat, time.monotonic()):
                log.info("replica %s/%s is draining; its queue moves to .any", beat.model, beat.replica)
                self._move_queue(beat.model, beat.replica)

    async def _expire_replicas(self) -> None:
        while not _cancel_requested():
            now = time.monotonic()
            for model, replica in self.table.expire(now) if now >= self._expire_after else ():
                log.warning("replica %s/%s stopped heartbeating; dropped", model, replica)
                self._move_queue(model, replica)
            for model in self.models:
                self.metrics.replicas_seen(model, [s.beat for s in self.table.live(model).values()])
            # Upkeep off the request path: hash rings left unfilled by joins and leaves.
            self.table.refresh(self.policy.replica_settings.max_walk)
            await asyncio.sleep(self.config.replica_ttl / 4)

    # ---- replica choice's shared signals and dead replicas ---------------------------
    def _move_queue(self, model: str, replica: str) -> None:
        """Start moving a dead or draining replica's queue to .any (one mover per replica)."""
        key = (model, replica)
        running = self._moves.get(key)
        if running is not None and not running.done():
            return

        def still_gone() -> bool:
            return not self._stopping.is_set() and replica not in self.table.fleet(model).usable

        async def move() -> None:
            try:
                moved = await self.mover.move(model, replica, still_gone, self.config.move_window)
            except Exception:  # a task root: the next expiry (or a restart) tries again
                log.exception("moving the queue of %s/%s failed", model, replica)
                return
            if moved:
                log.warning("moved %d queued requests from %s/%s to %s", moved, model, replica,
                            self.names.work_any(model))

        self._moves[key] = asyncio.get_running_loop().create_task(
            move(), name=f"move-{model}-{replica}")

    async def _apply_placements(self, sub: Any) -> None:
        """Apply every other router's placement records: one shared map of warm caches."""
        async for msg in sub.messages:
            try:
                record = codec.decode_placement(msg.data, msg.subject)
            except BadMessage as exc:
                log.warning("ignoring a bad placement record: %s", exc)
                continue
            if record.router != self.router_id:
                self.policy.apply_placement(record, self.table)

    async def _sample_loads(self) -> None:
        """Read each work stream's per-subject counts: every replica's queued + in-service work."""
        assert self.js is not None
        while not _cancel_requested():
            await asyncio.sleep(self.config.load_sample_interval)
            for model in self.models:
                fleet = self.table.fleet(model)
                if not fleet.members:
                    continue
                try:
                    info = await self.js.stream_info(self.names.work_stream(model),
                                                     subjects_filter=self.names.work_wildcard(model))
                except Exception as exc:  # reconnecting: the next sample will do
                    log.debug("load sample of %s failed: %s", model, exc)
                    continue
                counts = info.state.subjects or {}
                for done, replica in enumerate(list(fleet.members), 1):
                    fleet.sample(replica, counts.get(self.names.work(model, replica), 0))
                    if done % SAMPLES_PER_YIELD == 0:
                        await asyncio.sleep(0)  # requests waiting behind the loop go first

    # ---- one request -----------------------------------------------------------------
    async def handle(self, msg: Msg) -> None:
        """Route one ingress message; every outcome is a publish or an error reply."""
        received = time.perf_counter()
        problem = self.names.reply_problem(msg.reply)
        if problem is not None:
            # Nowhere safe to answer: a missing reply, or one aimed at the fabric's own
            # subjects or a system API (answering there would act with the router's rights).
            self.metrics.unanswerable.inc()
            log.debug("not routing an ingress message: %s", problem)
            return
        try:
            await self.admit(msg, received)
        except Rejected as rejection:
            await self._reply_error(msg.reply, rejection.request_id, rejection.code, rejection.message)

    async def admit(self, msg: Msg, received: float, default_id: str = "") -> None:
        """Check, decide and publish one request; raises Rejected naming what is wrong.

        ``default_id`` names a request that carries no id of its own (durable ingress
        passes one derived from the stream sequence, so a redelivery keeps it).
        """
        request_id = ""
        try:
            if len(msg.data) > self.request_limit:
                raise Rejected(ErrorCode.TOO_LARGE, (
                    f"request is {len(msg.data)} bytes; the limit is {self.request_limit}"))
            try:
                request = codec.decode_request(msg.data, msg.subject)
            except BadMessage as exc:
                raise Rejected(ErrorCode.BAD_REQUEST, exc.reason) from exc
            request_id = request.id or default_id or uuid.uuid4().hex
            validate(request)
            self._check_limits(request)
            if self._fleet_full():
                raise Rejected(ErrorCode.OVERLOADED, (
                    "every work queue of the fleet is full; retry later"))
            await self._route(request, request_id, msg, received)
        except Rejected as rejection:
            rejection.request_id = request_id
            raise

    def _fleet_full(self) -> bool:
        """True while every work queue (each live replica's and each model's .any) was
        refused within the last moment: the request would be refused too, so skip routing."""
        full = self.full_queues.count(time.monotonic())
        return full > 0 and full >= sum(len(self.table.live(m)) + 1 for m in self.models)

    def _check_limits(self, request: ChatRequest) -> None:
        c = self.config
        if len(request.messages) > c.max_messages:
            raise Rejected(ErrorCode.TOO_LARGE, (
                f"messages: {len(request.messages)} messages; the limit is {c.max_messages}"))
        if request.max_tokens is not None and request.max_tokens > c.max_tokens_limit:
            raise Rejected(ErrorCode.BAD_REQUEST, (
                f"max_tokens: {request.max_tokens} is more than this fabric allows "
                f"({c.max_tokens_limit})"))

    async def _route(self, request: ChatRequest, request_id: str, msg: Msg, received: float) -> None:
        now = time.time()
        if request.deadline is not None and request.deadline <= now:
            raise Rejected(ErrorCode.DEADLINE_EXCEEDED, "deadline: already passed on arrival")
        t0 = time.perf_counter()
        ctx = self.policy.context(request)
        t1 = time.perf_counter()
        try:
            choice = self.policy.choose_model(ctx, time.monotonic())
        except (UnknownModel, BadName) as exc:  # BadName: a model name with nothing to slug
            raise Rejected(ErrorCode.UNKNOWN_MODEL, str(exc)) from exc
        t2 = time.perf_counter()
        candidates = self.policy.choose_replicas(ctx, choice.model, self.table)
        t3 = time.perf_counter()
        stage = self.metrics.stage_seconds
        stage["context"].observe(t1 - t0)
        stage["model"].observe(t2 - t1)
        stage["replica"].observe(t3 - t2)
        stage["total"].observe(t3 - t0)
        if not candidates:
            raise Rejected(ErrorCode.NO_REPLICA, f"no live replica serves model {choice.model!r}")
        assert self.js is not None
        headers = {HEADER_MSG_ID: request_id, HEADER_REPLY: msg.reply}
        for replica, cache_class in candidates:
            subject = self.names.work(choice.model, replica)
            if self.full_queues.is_full(subject, time.monotonic()):
                self.metrics.queue_full.labels(choice.model).inc()
                continue  # full a moment ago (or by publishes in flight): skip the round trip
            item = WorkItem(
                request_id=request_id, reply=msg.reply, model=choice.model, replica=replica,
                deadline=request.deadline or 0.0, routed_at=now, request=msg.data, context=ctx,
                decision_path=choice.path, cache_class=cache_class,
            )
            self.full_queues.publishing(subject)
            # Claim the replica before awaiting the publish: its placement (prefixes,
            # session, load) counts now, in the same synchronous step as the choice, so a
            # burst of requests with one new prefix sees each other's claims and spreads
            # by the load bound instead of all choosing the same replica. A refused or
            # duplicate publish takes its load back.
            weight = self.policy.placed(ctx, choice.model, replica, self.table)
            try:
                ack = await self.js.publish(subject, codec.encode_work(item), headers=headers)
            except APIError as exc:
                if exc.err_code == ERR_MAX_MSGS_PER_SUBJECT:
                    self.policy.released(choice.model, replica, weight, self.table)
                    self.full_queues.mark(subject, time.monotonic())
                    self.metrics.queue_full.labels(choice.model).inc()
                    continue  # that queue is full: try the next replica
                raise
            finally:
                self.full_queues.published(subject)
            if ack.duplicate:
                self.policy.released(choice.model, replica, weight, self.table)
                raise Rejected(ErrorCode.DUPLICATE_ID, (
                    f"id: {request_id!r} was accepted already (within the last "
                    f"{DEDUP_WINDOW_SECONDS:.0f}s); its replies go to the first requester. "
                    "A retry of your own request: keep waiting. Otherwise: use another id"))
            self.metrics.decided(choice.model, choice.task_class.name.lower(), choice.path, cache_class)
            await self._announce(ctx, choice.model, replica, weight)
            if self.decision_log is not None:
                self.decision_log.record(now, ctx, choice, replica)
            self.metrics.hop_seconds.observe(time.perf_counter() - received)
            self.routed += 1
            return
        raise Rejected(ErrorCode.OVERLOADED, (
            f"every queue for model {choice.model!r} is full "
            f"({len(candidates)} tried); retry later"))

    async def _announce(self, ctx: Any, model: str, replica: str, weight: int) -> None:
        """Tell every other router where the request went (core NATS, no ack); this
        router recorded it when it chose."""
        if replica != ANY_REPLICA and self.nc is not None:
            await self.nc.publish(self.names.placements, codec.encode_placement(PlacementRecord(
                self.router_id, model, replica, weight, ctx.session_hash, ctx.prefix_hashes)))

    async def _reply_error(self, reply: str, request_id: str, code: ErrorCode, message: str) -> None:
        self.rejected += 1
        self.metrics.rejected(code)
        if reply and self.nc is not None:
            await self.nc.publish(reply, codec.encode_reply(
                ErrorReply(request_id=request_id, code=code.value, message=message)))


def _cancel_requested() -> bool:
    """True once the running task has been asked to cancel, even if the cancellation was
    swallowed: on Python 3.11 ``asyncio.wait_for`` (so every nats-py request) returns its
    result instead of raising when the awaited reply lands in the same turn as the cancel.
    A loop that only relied on CancelledError would then go on forever and hang the
    router's stop; each loop of the router checks this too."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0  # a missing file is a change when it reappears; reload reports the error


class _Stopped(Exception):
    """Raised inside the task group to end it on ``stop()``."""
