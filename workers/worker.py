"""The worker process: pull work for one replica, run it on the engine, stream replies.

Credits bound everything: a worker never holds more messages than ``max_inflight``
(delivered + requested), pulls its own sticky subject before the model's shared ``.any``
queue, and acknowledges a message only after its final chunk or error reply is out.
``workers.outcomes`` is the table of what each situation does to the message.

Life cycle: start → engine warm-up (and one warm-up request) → heartbeat ``warm`` → serve.
``stop()`` (SIGTERM) → draining heartbeat at once → no more pulls → in-flight work gets
``grace_seconds`` to finish → the rest is nak'd for another replica → the registry entry
is deleted → the NATS connection is drained → one summary log line. A dead engine stops
intake the same way (its generations fail at once and release their messages) and makes
``run()`` return 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import (
    ChatMessage,
    ChatRequest,
    Chunk,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    Usage,
    WorkItem,
)
from subjects.names import HEADER_REPLY, Names
from subjects.settings import (
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_DELIVER,
    ensure_stream,
    replica_bucket_config,
    work_consumer_config,
    work_stream_config,
)
from workers.config import WorkerConfig
from workers.engine import Engine, EngineDeadError, EngineGenerateError, EngineRequestError
from workers.metrics import WorkerMetrics
from workers.outcomes import Outcome, after_failure, is_restart, settle
from workers.pull import Puller

log = logging.getLogger("slm.worker")

WARMUP_REQUEST = ChatRequest(messages=[ChatMessage(role="user", content="Say hello.")], max_tokens=2)


@dataclass
class Worker:
    config: WorkerConfig
    engine: Engine
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        c = self.config
        self.names = Names(c.prefix)
        self.metrics = WorkerMetrics(self.registry, c.model, c.replica)
        self.stream = self.names.work_stream(c.model)
        self.own_consumer = self.names.replica_consumer(c.model, c.replica)
        self.any_consumer = self.names.any_consumer(c.model)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.warm = False
        self.draining = False
        self.ready = asyncio.Event()
        self.completed = 0  # final chunk sent
        self.failed = 0  # ended in an error reply
        self.retried = 0  # nak'd with a delay after a retryable failure
        self.released = 0  # handed back (nak) at shutdown or engine death
        self.poisoned = 0  # undecodable, terminated
        self._stopping = asyncio.Event()
        self._served = False
        self._beat_now = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._active: set[str] = set()  # request ids on the engine now
        self._expired: set[str] = set()  # request ids aborted because their deadline passed
        self._tasks: set[asyncio.Task[None]] = set()  # one per held message: the credits
        self._aborts: set[asyncio.Task[None]] = set()
        self._in_flight_tokens = 0
        self._dead: EngineDeadError | None = None
        self._started_at = time.time()

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> int:
        """Serve until ``stop()``; returns the process exit code (non-zero: engine died)."""
        c = self.config
        self.nc = await nats.connect(c.nats_url, name=f"slm-worker-{c.model}-{c.replica}",
                                     max_reconnect_attempts=-1)
        self.js = self.nc.jetstream()
        await ensure_stream(self.js, work_stream_config(self.names, c.model, c.queue_bound,
                                                        c.stream_replicas))
        # JetStream enforces the credits too: the own consumer never has more than
        # max_inflight un-acked messages, whatever this process does.
        await self._ensure_consumer(self.own_consumer, self.names.work(c.model, c.replica),
                                    c.max_inflight)
        await self._ensure_consumer(self.any_consumer, self.names.work_any(c.model),
                                    c.any_max_ack_pending)
        self.kv = await self.js.create_key_value(**replica_bucket_config(self.names, c.stream_replicas))
        api = "$JS.API"
        # A settled pull request (credits back, a doorbell, a filled linger) wakes the pull loop.
        self.own = Puller(self.nc, api, self.stream, self.own_consumer, self._on_message,
                          self._slot_freed.set)
        self.any = Puller(self.nc, api, self.stream, self.any_consumer, self._on_message,
                          self._slot_freed.set)
        await self.own.start()
        await self.any.start()
        cancel_sub = await self.nc.subscribe(self.names.cancel_wildcard, cb=self._on_cancel)
        try:
            if await self._warm_up():
                await self._serve()
        finally:
            self.draining = True
            await cancel_sub.unsubscribe()
            await self.own.stop()
            await self.any.stop()
            with contextlib.suppress(Exception):  # best effort: the entry also ages out
                await self.kv.delete(self.names.replica_key(c.model, c.replica))
            await self.engine.close()
            await self.nc.drain()
            log.info("worker %s/%s stopped: %d completed, %d failed, %d retried, %d released, "
                     "%d poison%s", c.model, c.replica, self.completed, self.failed, self.retried,
                     self.released, self.poisoned,
                     f"; engine dead: {self._dead}" if self._dead else "")
        return 1 if self._dead else 0

    async def _warm_up(self) -> bool:
        """Start the engine and run one request through it before reporting warm."""
        c = self.config
        started = time.perf_counter()
        try:
            await self.engine.warmup()
            if c.warmup:
                async for _ in self.engine.generate(f"warmup-{c.replica}", WARMUP_REQUEST):
                    pass
        except (EngineDeadError, EngineGenerateError) as exc:
            self._dead = exc if isinstance(exc, EngineDeadError) else EngineDeadError(str(exc))
            log.error("worker %s/%s: engine failed to warm up: %s", c.model, c.replica, exc)
            return False
        self.warm = True
        log.info("worker %s/%s warm in %.1fs (%s engine, %d slots)", c.model, c.replica,
                 time.perf_counter() - started, self.engine.name, c.max_inflight)
        return True

    async def _serve(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._heartbeat_loop(), name="heartbeat")
                pulling = tasks.create_task(self._pull_loop(), name="pull")
                self.ready.set()
                await self._stopping.wait()
                pulling.cancel()
                await self._drain_in_flight()
                await self._close_pulls()
                self._served = True  # the loops also stop on this: see _heartbeat_loop
                raise _Stopped
        except* _Stopped:
            pass
        with contextlib.suppress(Exception):
            await self._publish_heartbeat()  # the last word: draining

    def stop(self) -> None:
        """Begin a graceful stop (signal handlers call this); ``run()`` returns when done."""
        self.draining = True
        self._stopping.set()
        self._beat_now.set()  # tell routers at once, not at the next heartbeat

    async def _drain_in_flight(self) -> None:
        """Finish in-flight work up to the grace period, then hand the rest back (nak)."""
        if not self._tasks:
            return
        # With a dead engine too: its generations fail at once and release their messages.
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.grace_seconds)
        for task in pending:
            task.cancel()  # its handler naks the message on the way out
        if pending:
            await asyncio.wait(pending)

    async def _close_pulls(self) -> None:
        """Let open pull requests expire before their inboxes close.

        A message the server hands to a pull request whose subscription is gone would sit
        un-acked until ack_wait (30 s); while they expire (within ``idle_poll``), anything
        delivered is nak'd at once by ``_on_message``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.idle_poll + 2.0
        while (self.own.lingering or self.any.lingering) and loop.time() < deadline:
            self._slot_freed.clear()
            await wait_event(self._slot_freed, max(deadline - loop.time(), 0.0))
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _ensure_consumer(self, durable: str, subject: str, max_ack_pending: int) -> None:
        assert self.js is not None
        cfg = work_consumer_config(durable, subject, max_ack_pending)
        cfg["ack_wait"] = self.config.ack_wait
        try:
            await self.js.add_consumer(self.stream, **cfg)
        except nats.js.errors.BadRequestError:
            await self.js.update_consumer(self.stream, **cfg)  # type: ignore[attr-defined]

    # ---- pulling -----------------------------------------------------------------------
    def _free_slots(self) -> int:
        held = len(self._tasks) + self.own.outstanding + self.any.outstanding
        return self.config.max_inflight - held

    def _pull_size(self) -> int:
        return min(self._free_slots(), self.config.fetch_batch)

    async def _pull_loop(self) -> None:
        """Own subject first, then .any; when both are empty, linger on both at once.

        Lingering on both means work spilled to ``.any`` starts as soon as it lands instead
        of at the next poll, and it cannot jump ahead of sticky work: the lingering starts
        only once both queues were found empty. The own subject (sticky work, the common
        case) lingers with every free slot but one, so its work is delivered the moment it
        lands with no further pull on the way to the first token. ``.any`` lingers with a
        doorbell (no credit): when it rings, the slot kept back pulls its work at once;
        more ``.any`` work than that waits until the own pull expires (``idle_poll``).
        Credits split evenly between two lingering pulls used to strand the half on the
        queue that stayed empty while work waited on the other (a lingering pull cannot be
        taken back). Lingering for one message and pulling again after it costs two pull
        requests per request on the TTFT path (~0.6 ms on 2 cores).
        """
        lingering: set[asyncio.Task[object]] = set()
        try:
            while not self._stopping.is_set() and self._dead is None:
                if self._free_slots() <= 0:
                    self._slot_freed.clear()
                    if self._free_slots() <= 0:
                        await self._slot_freed.wait()
                    continue
                got = 0
                if not self.own.lingering:
                    got += (await self.own.pull(self._pull_size())).received
                if self._free_slots() > 0 and not self.any.lingering:
                    got += (await self.any.pull(self._pull_size())).received
                if got or self._free_slots() <= 0:
                    continue
                if not self.own.lingering:
                    share = max(min(self._free_slots() - 1, self.config.fetch_batch), 1)
                    lingering.add(asyncio.ensure_future(self.own.pull(
                        share, expires=self.config.idle_poll, wait_for_first=True)))
                if not self.any.lingering:
                    lingering.add(asyncio.ensure_future(self.any.doorbell(self.config.idle_poll)))
                self._slot_freed.clear()
                waiter = asyncio.ensure_future(self._slot_freed.wait())
                done, _ = await asyncio.wait({*lingering, waiter}, timeout=self.config.idle_poll,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                lingering -= done
        finally:
            for task in lingering:
                task.cancel()

    def _on_message(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        if self._stopping.is_set() or self._dead is not None:
            # A pull answered after intake stopped: hand it straight back, untouched.
            task = loop.create_task(self._release(msg))
        else:
            task = loop.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            request_id = self.names.parse_cancel(msg.subject)
        except ValueError:
            return
        if request_id in self._active:
            await self.engine.abort(request_id)

    # ---- one message ---------------------------------------------------------------------
    async def _release(self, msg: Msg) -> None:
        self.released += 1
        self.metrics.settled(Outcome.RELEASE.value)
        with contextlib.suppress(Exception):
            await settle(msg, Outcome.RELEASE, 0.0, self.config.release_delay)

    async def _handle(self, msg: Msg) -> None:
        outcome = Outcome.RELEASE
        try:
            outcome = await self._process(msg)
        except asyncio.CancelledError:
            outcome = Outcome.RELEASE  # shutdown past the grace period: another takes it
        except Exception as exc:  # a task root: log, then retry or answer
            log.exception("worker failed on a message")
            outcome = await self._unexpected_failure(msg, exc)
        finally:
            if outcome is Outcome.RELEASE:
                self.released += 1
            elif outcome is Outcome.RETRY:
                self.retried += 1
            self.metrics.settled(outcome.value)
            try:
                # Shielded: a shutdown that cancels this task must not cut the ack/nak short.
                await asyncio.shield(settle(msg, outcome, self.config.retry_delay,
                                            self.config.release_delay))
            except Exception:  # the connection is gone: JetStream redelivers after ack_wait
                log.warning("could not settle a message (%s); it will be redelivered", outcome.value)

    async def _unexpected_failure(self, msg: Msg, exc: Exception) -> Outcome:
        """A bug, not an engine verdict: retry, and on the last delivery answer the client."""
        outcome = after_failure(True, msg.metadata.num_delivered, MAX_DELIVER)
        if outcome is Outcome.DONE:
            reply = msg.headers.get(HEADER_REPLY) if msg.headers else None
            if reply:
                await self._error(reply, "", ErrorCode.INTERNAL, f"worker error: {type(exc).__name__}")
            self.failed += 1
        return outcome

    async def _process(self, msg: Msg) -> Outcome:
        self.metrics.received(msg.metadata.num_delivered)
        try:
            item = codec.decode_work(msg.data, msg.subject)
            request = codec.decode_request(item.request, msg.subject)
        except BadMessage as exc:
            # Retrying the same bytes fails the same way: terminate, and tell the client
            # if the message at least says where the client is.
            reply = msg.headers.get(HEADER_REPLY) if msg.headers else None
            if reply:
                await self._error(reply, "", ErrorCode.BAD_REQUEST, f"undecodable work item: {exc.reason}")
            log.warning("terminating an undecodable work message on %s: %s", msg.subject, exc.reason)
            self.poisoned += 1
            return Outcome.POISON
        now = time.time()
        if item.deadline and now >= item.deadline:
            self.failed += 1
            await self._error(item.reply, item.request_id, ErrorCode.DEADLINE_EXCEEDED,
                              f"deadline passed {now - item.deadline:.3f}s before the request "
                              "could start; it was not run")
            return Outcome.DONE
        waited = now - item.routed_at
        self.metrics.queue_seconds.observe(max(waited, 0.0))
        if self.config.max_queue_delay and waited > self.config.max_queue_delay:
            self.failed += 1
            await self._error(item.reply, item.request_id, ErrorCode.DEADLINE_EXCEEDED,
                              f"waited {waited:.3f}s in the queue; model {self.config.model!r} "
                              f"starts work only within {self.config.max_queue_delay}s")
            return Outcome.DONE
        return await self._generate(msg, item, request, msg.metadata.num_delivered,
                                    restarted=is_restart(msg))

    async def _generate(self, msg: Msg, item: WorkItem, request: ChatRequest,
                        deliveries: int, *, restarted: bool) -> Outcome:
        """``restarted``: an earlier attempt may have streamed, so the first chunk tells
        the client to reset."""
        assert self.nc is not None
        rid = item.request_id
        tokens = item.context.prompt_tokens + item.context.max_tokens
        loop = asyncio.get_running_loop()
        self._active.add(rid)
        self._in_flight_tokens += tokens
        keep_alive = KeepInProgress(loop, msg, self.config.in_progress_every)
        expiry = (loop.call_later(max(item.deadline - time.time(), 0.0), self._expire, rid)
                  if item.deadline else None)
        started = time.perf_counter()
        ttft: float | None = None
        seq = 0
        buffered: list[str] = []  # deltas not yet sent
        sent_at = 0.0  # when the last chunk went out
        interval = self.config.stream_interval
        model, replica = self.config.model, self.config.replica
        try:
            async for delta in self.engine.generate(rid, request):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - started
                    self.metrics.ttft_seconds.observe(ttft)
                if delta.finish_reason is None:
                    buffered.append(delta.text)
                    if not request.stream or (seq and now - sent_at < interval):
                        continue  # the first chunk goes at once: it is the TTFT
                    text = buffered[0] if len(buffered) == 1 else "".join(buffered)
                    buffered.clear()
                    await self.nc.publish(item.reply, codec.encode_reply(Chunk(
                        rid, seq, text, restarted=restarted and seq == 0,
                        model=model, replica=replica, attempt=deliveries)))
                    seq += 1
                    sent_at = now
                    continue
                if rid in self._expired:
                    self.failed += 1
                    await self._error(item.reply, rid, ErrorCode.DEADLINE_EXCEEDED,
                                      f"deadline passed during generation after "
                                      f"{delta.completion_tokens} tokens; stopped", seq)
                    return Outcome.DONE
                usage = Usage(delta.prompt_tokens, delta.completion_tokens, delta.cached_tokens)
                text = "".join(buffered) + delta.text
                await self.nc.publish(item.reply, codec.encode_reply(Chunk(
                    rid, seq, text, delta.finish_reason, usage,
                    restarted=restarted and seq == 0, model=model, replica=replica, attempt=deliveries)))
                self.metrics.finished(time.perf_counter() - started, delta.completion_tokens,
                                      delta.cached_tokens, delta.prompt_tokens, ttft=ttft)
                self.completed += 1
                return Outcome.DONE
            raise EngineGenerateError("engine ended a stream without a final delta", retryable=True)
        except EngineRequestError as exc:
            self.failed += 1
            await self._error(item.reply, rid, ErrorCode.BAD_REQUEST, str(exc), seq)
            return Outcome.DONE
        except EngineGenerateError as exc:
            outcome = after_failure(exc.retryable, deliveries, MAX_DELIVER)
            if outcome is Outcome.RETRY:
                log.warning("request %s failed (%s); retrying in %.1fs", rid, exc, self.config.retry_delay)
                return outcome
            self.failed += 1
            await self._error(item.reply, rid, ErrorCode.ENGINE_ERROR, str(exc), seq)
            return outcome
        except EngineDeadError as exc:
            self._dead = exc
            log.error("engine died: %s; releasing work and stopping", exc)
            self.stop()
            return Outcome.RELEASE
        finally:
            keep_alive.cancel()
            if expiry is not None:
                expiry.cancel()
            self._active.discard(rid)
            self._expired.discard(rid)
            self._in_flight_tokens -= tokens

    def _expire(self, request_id: str) -> None:
        """The request's deadline passed mid-generation: stop spending the engine on it."""
        if request_id in self._active:
            self._expired.add(request_id)
            task = asyncio.get_running_loop().create_task(self.engine.abort(request_id))
            self._aborts.add(task)  # held so it is not garbage-collected mid-flight
            task.add_done_callback(self._aborts.discard)

    async def _error(self, reply: str, request_id: str, code: ErrorCode, message: str,
                     seq: int = 0) -> None:
        assert self.nc is not None
        self.metrics.errors.labels(code.value).inc()
        await self.nc.publish(reply, codec.encode_reply(ErrorReply(request_id, code.value, message, seq)))

    # ---- registry --------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        # Ends on ``_served`` as well as on cancellation: on Python 3.11 a cancellation
        # that lands as a NATS request completes can be swallowed inside nats-py.
        while not self._served:
            try:
                await self._publish_heartbeat()
            except Exception as exc:  # NATS reconnecting: the next beat will do
                log.warning("heartbeat failed: %s", exc)
            self._beat_now.clear()
            if not self._served:
                await wait_event(self._beat_now, HEARTBEAT_INTERVAL_SECONDS)

    async def _publish_heartbeat(self) -> None:
        c = self.config
        stats = self.engine.stats()
        beat = Heartbeat(
            model=c.model, replica=c.replica, capacity=c.max_inflight,
            in_flight=len(self._tasks), in_flight_tokens=self._in_flight_tokens,
            queue_depth=stats.waiting, kv_cache_usage=stats.kv_cache_usage,
            prefix_hit_rate=stats.prefix_hit_rate, warm=self.warm and self._dead is None,
            draining=self.draining, engine=self.engine.name, sent_at=time.time(),
            started_at=self._started_at,
        )
        self.metrics.heartbeat(in_flight=len(self._tasks), capacity=c.max_inflight,
                               warm=self.warm and not self.draining, stats=stats)
        await self.kv.put(self.names.replica_key(c.model, c.replica), codec.encode_heartbeat(beat))


class KeepInProgress:
    """Long generations tell JetStream they are alive well inside ack_wait: an in-progress
    ack for ``msg`` every ``every`` seconds until ``cancel()``.

    A timer rather than a task per request: most generations end before the first one is
    due, and a task would be created and stepped on every request's way to the engine.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, msg: Msg, every: float) -> None:
        self._loop = loop
        self._msg = msg
        self._every = every
        self._sending: asyncio.Task[None] | None = None
        self._timer = loop.call_later(every, self._due)

    def _due(self) -> None:
        if self._sending is None or self._sending.done():
            self._sending = self._loop.create_task(self._send())
        self._timer = self._loop.call_later(self._every, self._due)

    async def _send(self) -> None:
        try:
            await self._msg.in_progress()
        except Exception as exc:  # reconnecting: the next one may get through
            log.warning("in-progress ack failed: %s", exc)

    def cancel(self) -> None:
        self._timer.cancel()
        if self._sending is not None:
            self._sending.cancel()


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` up to ``timeout``; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that lands while
    the event is being set, leaving a task that can never be stopped.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class _Stopped(Exception):
    """Raised inside the task group to end it on ``stop()``."""
