"""The worker process: pull work for one replica, run it on the engine, stream replies.

Credits bound everything: a worker never holds more messages than ``max_inflight``
(delivered + requested), pulls its own sticky subject before the model's shared ``.any``
queue, and acknowledges a message only after its final chunk or error reply is out.
"""

from __future__ import annotations

import asyncio
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
from subjects.messages import Chunk, ErrorCode, ErrorReply, Heartbeat, Usage, WorkItem
from subjects.names import HEADER_REPLY, Names
from subjects.settings import (
    ACK_WAIT_SECONDS,
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_DELIVER,
    ensure_stream,
    replica_bucket_config,
    work_consumer_config,
    work_stream_config,
)
from workers.config import WorkerConfig
from workers.engine import Engine, EngineDeadError, EngineGenerateError
from workers.metrics import WorkerMetrics
from workers.outcomes import Outcome, settle
from workers.pull import Puller

log = logging.getLogger("slm.worker")

# The shared .any consumer is pulled by every replica of the model: bound it loosely;
# each worker's own credits are the real bound.
ANY_MAX_ACK_PENDING = 10_000
IN_PROGRESS_EVERY = ACK_WAIT_SECONDS / 3


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
        self.completed = 0
        self.failed = 0
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}  # request id -> its task
        self._tasks: set[asyncio.Task[None]] = set()
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
        await self._ensure_consumer(self.own_consumer, self.names.work(c.model, c.replica),
                                    c.max_inflight)
        await self._ensure_consumer(self.any_consumer, self.names.work_any(c.model),
                                    ANY_MAX_ACK_PENDING)
        self.kv = await self.js.create_key_value(**replica_bucket_config(self.names, c.stream_replicas))
        api = "$JS.API"
        self.own = Puller(self.nc, api, self.stream, self.own_consumer, self._on_message)
        self.any = Puller(self.nc, api, self.stream, self.any_consumer, self._on_message)
        await self.own.start()
        await self.any.start()
        cancel_sub = await self.nc.subscribe(self.names.cancel_wildcard, cb=self._on_cancel)
        await self.engine.warmup()
        self.warm = True
        log.info("worker %s/%s warm (%s engine, %d slots)", c.model, c.replica,
                 self.engine.name, c.max_inflight)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._heartbeat_loop(), name="heartbeat")
                pulling = tasks.create_task(self._pull_loop(), name="pull")
                self.ready.set()
                await self._stopping.wait()
                pulling.cancel()
                await self._drain_in_flight()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self.draining = True
            await self._publish_heartbeat()
            await cancel_sub.unsubscribe()
            await self.own.stop()
            await self.any.stop()
            await self.engine.close()
            await self.nc.drain()
            log.info("worker %s/%s stopped: %d completed, %d failed%s", c.model, c.replica,
                     self.completed, self.failed, f", engine dead: {self._dead}" if self._dead else "")
        return 1 if self._dead else 0

    def stop(self) -> None:
        self.draining = True
        self._stopping.set()

    async def _drain_in_flight(self) -> None:
        """Finish in-flight work up to the grace period, then hand the rest back (nak)."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.grace_seconds)
            for task in pending:
                task.cancel()  # its handler naks the message on the way out
            if pending:
                await asyncio.wait(pending)

    async def _ensure_consumer(self, durable: str, subject: str, max_ack_pending: int) -> None:
        assert self.js is not None
        cfg = work_consumer_config(durable, subject, max_ack_pending)
        try:
            await self.js.add_consumer(self.stream, **cfg)
        except nats.js.errors.BadRequestError:
            await self.js.update_consumer(self.stream, **cfg)  # type: ignore[attr-defined]

    # ---- pulling -----------------------------------------------------------------------
    def _free_slots(self) -> int:
        held = len(self._tasks) + self.own.outstanding + self.any.outstanding
        return self.config.max_inflight - held

    async def _pull_loop(self) -> None:
        """Own subject first, then .any; linger on the own subject only when both are empty."""
        while not self._stopping.is_set() and self._dead is None:
            if self._free_slots() <= 0:
                self._slot_freed.clear()
                if self._free_slots() <= 0:
                    await self._slot_freed.wait()
                continue
            got = 0
            if not self.own.lingering:
                got += (await self.own.pull(self._free_slots())).received
            if self._free_slots() > 0:
                got += (await self.any.pull(self._free_slots())).received
            if got or self._free_slots() <= 0:
                continue
            if not self.own.lingering:
                await self.own.pull(self._free_slots(), expires=self.config.idle_poll,
                                    wait_for_first=True)
            else:
                self._slot_freed.clear()
                try:
                    await asyncio.wait_for(self._slot_freed.wait(), self.config.idle_poll)
                except TimeoutError:
                    pass

    def _on_message(self, msg: Msg) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(msg))
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
            self.metrics.settled(outcome.value)
            try:
                await settle(msg, outcome, self.config.retry_delay)
            except Exception:  # the connection is gone: JetStream redelivers after ack_wait
                log.warning("could not settle a message (%s); it will be redelivered", outcome.value)

    async def _unexpected_failure(self, msg: Msg, exc: Exception) -> Outcome:
        """A bug, not an engine verdict: retry, and on the last delivery answer the client."""
        if msg.metadata.num_delivered < MAX_DELIVER:
            return Outcome.RETRY
        reply = msg.headers.get(HEADER_REPLY) if msg.headers else None
        if reply:
            await self._error(reply, "", ErrorCode.INTERNAL, f"worker error: {type(exc).__name__}")
        self.failed += 1
        return Outcome.DONE

    async def _process(self, msg: Msg) -> Outcome:
        self.metrics.received(msg.metadata.num_delivered)
        assert self.nc is not None
        try:
            item = codec.decode_work(msg.data, msg.subject)
            request = codec.decode_request(item.request, msg.subject)
        except BadMessage as exc:
            reply = msg.headers.get(HEADER_REPLY) if msg.headers else None
            if reply:
                await self._error(reply, "", ErrorCode.BAD_REQUEST, f"undecodable work item: {exc.reason}")
            self.failed += 1
            return Outcome.POISON
        now = time.time()
        if item.deadline and now >= item.deadline:
            await self._error(item.reply, item.request_id, ErrorCode.DEADLINE_EXCEEDED,
                              "deadline passed while the request waited in the queue")
            return Outcome.DONE
        waited = now - item.routed_at
        self.metrics.queue_seconds.observe(max(waited, 0.0))
        if self.config.max_queue_delay and waited > self.config.max_queue_delay:
            await self._error(item.reply, item.request_id, ErrorCode.DEADLINE_EXCEEDED,
                              f"waited {waited:.3f}s in the queue; this model's limit is "
                              f"{self.config.max_queue_delay}s")
            return Outcome.DONE
        deliveries = msg.metadata.num_delivered
        return await self._generate(msg, item, request, restarted=deliveries > 1,
                                    last_attempt=deliveries >= MAX_DELIVER)

    async def _generate(self, msg: Msg, item: WorkItem, request: object, *,
                        restarted: bool, last_attempt: bool) -> Outcome:
        assert self.nc is not None
        rid = item.request_id
        tokens = item.context.prompt_tokens + item.context.max_tokens
        self._active[rid] = asyncio.current_task()  # type: ignore[assignment]
        self._in_flight_tokens += tokens
        keep_alive = asyncio.get_running_loop().create_task(self._keep_in_progress(msg))
        started = time.perf_counter()
        ttft: float | None = None
        seq = 0
        buffered: list[str] = []
        streaming = getattr(request, "stream", True)
        model, replica = self.config.model, self.config.replica
        try:
            async for delta in self.engine.generate(rid, request):  # type: ignore[arg-type]
                if ttft is None:
                    ttft = time.perf_counter() - started
                    self.metrics.ttft_seconds.observe(ttft)
                if delta.finish_reason is None:
                    if not streaming:
                        buffered.append(delta.text)
                        continue
                    await self.nc.publish(item.reply, codec.encode_reply(Chunk(
                        rid, seq, delta.text, restarted=restarted and seq == 0,
                        model=model, replica=replica)))
                    seq += 1
                    continue
                usage = Usage(delta.prompt_tokens, delta.completion_tokens, delta.cached_tokens)
                text = "".join(buffered) + delta.text
                await self.nc.publish(item.reply, codec.encode_reply(Chunk(
                    rid, seq, text, delta.finish_reason, usage,
                    restarted=restarted and seq == 0, model=model, replica=replica)))
                self.metrics.finished(time.perf_counter() - started, delta.completion_tokens,
                                      delta.cached_tokens, delta.prompt_tokens, ttft=ttft)
                self.completed += 1
                return Outcome.DONE
            raise EngineGenerateError("engine ended a stream without a final delta", retryable=True)
        except EngineGenerateError as exc:
            if exc.retryable and not last_attempt:
                log.warning("request %s failed (%s); retrying later", rid, exc)
                return Outcome.RETRY
            self.failed += 1
            await self._error(item.reply, rid, ErrorCode.ENGINE_ERROR, str(exc), seq)
            return Outcome.DONE
        except EngineDeadError as exc:
            self._dead = exc
            log.error("engine died: %s; releasing work and stopping", exc)
            self.stop()
            return Outcome.RELEASE
        finally:
            keep_alive.cancel()
            self._active.pop(rid, None)
            self._in_flight_tokens -= tokens

    async def _keep_in_progress(self, msg: Msg) -> None:
        """Long generations tell JetStream they are alive well inside ack_wait."""
        while True:
            await asyncio.sleep(IN_PROGRESS_EVERY)
            await msg.in_progress()

    async def _error(self, reply: str, request_id: str, code: ErrorCode, message: str,
                     seq: int = 0) -> None:
        assert self.nc is not None
        self.metrics.errors.labels(code.value).inc()
        await self.nc.publish(reply, codec.encode_reply(ErrorReply(request_id, code.value, message, seq)))

    # ---- registry --------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._publish_heartbeat()
            except Exception as exc:  # NATS reconnecting: the next beat will do
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL_SECONDS)

    async def _publish_heartbeat(self) -> None:
        c = self.config
        stats = self.engine.stats()
        beat = Heartbeat(
            model=c.model, replica=c.replica, capacity=c.max_inflight,
            in_flight=len(self._tasks), in_flight_tokens=self._in_flight_tokens,
            queue_depth=stats.waiting, kv_cache_usage=stats.kv_cache_usage,
            prefix_hit_rate=stats.prefix_hit_rate, warm=self.warm, draining=self.draining,
            engine=self.engine.name, sent_at=time.time(), started_at=self._started_at,
        )
        self.metrics.heartbeat(in_flight=len(self._tasks), capacity=c.max_inflight,
                               warm=self.warm and not self.draining, stats=stats)
        await self.kv.put(self.names.replica_key(c.model, c.replica), codec.encode_heartbeat(beat))


class _Stopped(Exception):
    """Raised inside the task group to end it on ``stop()``."""
