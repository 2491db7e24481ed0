"""The router process: ingress → decode → policy → publish to a work queue.

A thin NATS adapter around ``router.policy``: the subscription callback only enqueues,
named tasks in one TaskGroup decide and publish, and every input ends in a publish or an
error reply — never an exception out of the handler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError
from prometheus_client import CollectorRegistry

from router.config import RouterConfig
from router.context import PrefixMemory
from router.decision_log import DecisionLog
from router.metrics import RouterMetrics
from router.policy import Policy, UnknownModel
from router.registry import ReplicaTable
from router.rules import RulesError, RuleSet, load_rules
from router.scorer import shared_scorer
from router.sessions import SessionTable
from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import ChatRequest, ErrorCode, ErrorReply, WorkItem
from subjects.names import HEADER_MSG_ID, HEADER_REPLY, ROUTER_QUEUE_GROUP, Names, is_token
from subjects.settings import (
    ERR_MAX_MSGS_PER_SUBJECT,
    ensure_stream,
    replica_bucket_config,
    work_stream_config,
)

log = logging.getLogger("slm.router")


class Rejected(Exception):
    """Raised inside the handler when a request ends in an error reply; carries the code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
                             sessions=SessionTable(self.config.session_capacity))
        self._reload_requested = asyncio.Event()
        self.sighup_installed = False
        self.decision_log = (DecisionLog(self.config.decision_log, rules, time.time())
                             if self.config.decision_log else None)
        self.table = ReplicaTable(ttl=self.config.replica_ttl)
        self.metrics = RouterMetrics(self.registry)
        self.models = tuple(self.config.models) or tuple(sorted(rules.served_models()))
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=self.config.concurrency * 4)
        self.metrics.watch_inbox(self._inbox.qsize)
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.routed = 0
        self.rejected = 0
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """Serve until ``stop()``; raises if NATS cannot be reached at start."""
        self.nc = await nats.connect(
            self.config.nats_url, name="slm-router", max_reconnect_attempts=-1
        )
        self.js = self.nc.jetstream()
        for model in self.models:
            await ensure_stream(self.js, work_stream_config(
                self.names, model, self.config.queue_bound, self.config.stream_replicas))
        kv = await self.js.create_key_value(
            **replica_bucket_config(self.names, self.config.stream_replicas))
        watcher = await kv.watchall()
        sub = await self.nc.subscribe(
            self.names.ingress, queue=ROUTER_QUEUE_GROUP, cb=self._enqueue,
            pending_msgs_limit=self.config.concurrency * 64,
        )
        log.info("router serving %s for models %s", self.names.ingress, ", ".join(self.models))
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch_registry(watcher), name="registry-watch")
                tasks.create_task(self._expire_replicas(), name="registry-expire")
                self._install_sighup()
                tasks.create_task(self._watch_rules(), name="rules-watch")
                if self.decision_log is not None:
                    tasks.create_task(self._flush_decisions(self.decision_log), name="decision-log")
                for i in range(self.config.concurrency):
                    tasks.create_task(self._serve(), name=f"route-{i}")
                self.ready.set()
                await self._stopping.wait()
                await sub.unsubscribe()  # stop intake, then finish what was taken in
                await asyncio.wait_for(self._inbox.join(), timeout=5.0)
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._stop_sighup()
            if self.decision_log is not None:
                self.decision_log.flush()
            await watcher.stop()
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
        while True:
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
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(decisions.flush)
            except OSError as exc:
                log.error("cannot write decision log %s: %s", decisions.path, exc)

    async def _enqueue(self, msg: Msg) -> None:
        await self._inbox.put(msg)

    async def _serve(self) -> None:
        while True:
            msg = await self._inbox.get()
            try:
                await self.handle(msg)
            except Exception:  # a task root: log, answer, keep serving
                log.exception("router failed on a message from %s", msg.subject)
                await self._reply_error(msg.reply, "", ErrorCode.INTERNAL, "router error")
            finally:
                self._inbox.task_done()

    async def _watch_registry(self, watcher: object) -> None:
        async for entry in watcher:  # type: ignore[attr-defined]
            if entry is None or entry.value is None or entry.operation is not None:
                continue  # the end-of-history marker, or a delete/purge
            try:
                beat = codec.decode_heartbeat(entry.value, entry.key)
            except BadMessage as exc:
                log.warning("ignoring a bad heartbeat: %s", exc)
                continue
            self.table.apply(beat, time.monotonic())

    async def _expire_replicas(self) -> None:
        while True:
            for model, replica in self.table.expire(time.monotonic()):
                log.warning("replica %s/%s stopped heartbeating; dropped", model, replica)
            for model in self.models:
                self.metrics.replicas_seen(model, [s.beat for s in self.table.live(model).values()])
            await asyncio.sleep(self.config.replica_ttl / 4)

    # ---- one request -----------------------------------------------------------------
    async def handle(self, msg: Msg) -> None:
        """Route one ingress message; every outcome is a publish or an error reply."""
        received = time.perf_counter()
        if not msg.reply:
            self.metrics.unanswerable.inc()
            log.debug("dropping an ingress message with no reply subject")
            return
        request_id = ""
        try:
            if len(msg.data) > self.config.max_request_bytes:
                raise Rejected(ErrorCode.TOO_LARGE, (
                    f"request is {len(msg.data)} bytes; the limit is "
                    f"{self.config.max_request_bytes}"))
            try:
                request = codec.decode_request(msg.data, msg.subject)
            except BadMessage as exc:
                raise Rejected(ErrorCode.BAD_REQUEST, exc.reason) from exc
            request_id = request.id or uuid.uuid4().hex
            validate(request)
            await self._route(request, request_id, msg, received)
        except Rejected as rejection:
            await self._reply_error(msg.reply, request_id, rejection.code, rejection.message)

    async def _route(self, request: ChatRequest, request_id: str, msg: Msg, received: float) -> None:
        now = time.time()
        if request.deadline is not None and request.deadline <= now:
            raise Rejected(ErrorCode.DEADLINE_EXCEEDED, "deadline: already passed on arrival")
        t0 = time.perf_counter()
        ctx = self.policy.context(request)
        t1 = time.perf_counter()
        try:
            choice = self.policy.choose_model(ctx, time.monotonic())
        except UnknownModel as exc:
            raise Rejected(ErrorCode.UNKNOWN_MODEL, str(exc)) from exc
        t2 = time.perf_counter()
        candidates = self.policy.choose_replicas(ctx, choice.model, self.table)
        t3 = time.perf_counter()
        observe = self.metrics.decision_seconds.labels
        observe("context").observe(t1 - t0)
        observe("model").observe(t2 - t1)
        observe("replica").observe(t3 - t2)
        observe("total").observe(t3 - t0)
        if not candidates:
            raise Rejected(ErrorCode.NO_REPLICA, f"no live replica serves model {choice.model!r}")
        assert self.js is not None
        headers = {HEADER_MSG_ID: request_id, HEADER_REPLY: msg.reply}
        for replica, cache_class in candidates:
            item = WorkItem(
                request_id=request_id, reply=msg.reply, model=choice.model, replica=replica,
                deadline=request.deadline or 0.0, routed_at=now, request=msg.data, context=ctx,
                decision_path=choice.path, cache_class=cache_class,
            )
            try:
                await self.js.publish(
                    self.names.work(choice.model, replica), codec.encode_work(item), headers=headers
                )
            except APIError as exc:
                if exc.err_code == ERR_MAX_MSGS_PER_SUBJECT:
                    self.metrics.queue_full.labels(choice.model).inc()
                    continue  # that queue is full: try the next replica
                raise
            self.metrics.decided(choice.model, choice.task_class.name.lower(), choice.path, cache_class)
            if self.decision_log is not None:
                self.decision_log.record(now, ctx, choice, replica)
            self.metrics.hop_seconds.observe(time.perf_counter() - received)
            self.routed += 1
            return
        raise Rejected(ErrorCode.OVERLOADED, (
            f"every queue for model {choice.model!r} is full "
            f"({len(candidates)} tried); retry later"))

    async def _reply_error(self, reply: str, request_id: str, code: ErrorCode, message: str) -> None:
        self.rejected += 1
        self.metrics.rejected(code)
        if reply and self.nc is not None:
            await self.nc.publish(reply, codec.encode_reply(
                ErrorReply(request_id=request_id, code=code.value, message=message)))


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0  # a missing file is a change when it reappears; reload reports the error


class _Stopped(Exception):
    """Raised inside the task group to end it on ``stop()``."""
