"""Stream and consumer lag of a running fabric, read from JetStream's own state.

JetStream already keeps the one load signal every router and worker shares: per stream how
many messages wait, per durable consumer how many are undelivered (pending), delivered but
not acknowledged (in flight), redelivered, and how many pull requests wait. A snapshot
reads that state — a few API calls per stream, polled on an interval, never per request —
for ``slm-fabric lag`` (a live table, or JSON for scripts) and for the lag monitor that
exports it as Prometheus gauges (``fabric.lag_metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from subjects.names import BadName, Names

log = logging.getLogger("slm.lag")

T = TypeVar("T")

# nats-server answers STREAM.LIST and CONSUMER.LIST a page of at most this many
# (JSApiListLimit); a shorter page is the last one.
_API_PAGE = 256


class LagConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of ``slm-fabric lag`` and the lag monitor, read from SLM_* variables."""

    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = "slm"
    lag_interval: float = 2.0  # seconds between polls of JetStream's stream and consumer state
    metrics_port: int = 0  # the monitor's /metrics (``lag --serve``); 0 = none
    metrics_host: str = "0.0.0.0"


class StreamLag(msgspec.Struct, frozen=True, kw_only=True):
    """One stream: what it holds (on a WorkQueue stream, work not yet acknowledged)."""

    stream: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    consumers: int
    oldest_message_age: float | None  # seconds; None when the stream is empty


class ConsumerLag(msgspec.Struct, frozen=True, kw_only=True):
    """One durable consumer. ``model``/``replica`` come from its filter subject ("" when it
    is not a work consumer; ``replica`` is "any" for a model's shared spill-over queue)."""

    stream: str
    consumer: str
    model: str
    replica: str
    filter_subject: str
    pending: int  # matching messages not yet delivered to anyone
    ack_pending: int  # delivered and not yet acknowledged: in flight at a worker
    redelivered: int  # un-acknowledged messages delivered more than once
    waiting: int  # pull requests waiting at the server for messages
    oldest_pending_age: float | None  # seconds the oldest undelivered message has waited

    @property
    def backlog(self) -> int:
        """Work this consumer has not finished: waiting plus in flight."""
        return self.pending + self.ack_pending


class LagSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    taken_at: float  # Unix seconds
    prefix: str
    streams: tuple[StreamLag, ...]
    consumers: tuple[ConsumerLag, ...]


async def _all_pages(fetch: Callable[[int], Awaitable[list[T]]]) -> list[T]:
    items: list[T] = []
    while True:
        page = await fetch(len(items))
        items.extend(page)
        if len(page) < _API_PAGE:
            return items


def _under_prefix(names: Names, subject: str) -> bool:
    head = names.prefix.split(".")
    parts = subject.split(".")
    return len(parts) > len(head) and parts[: len(head)] == head


def _age(message: Any, now: float) -> float:
    # Clocks of this host and the server may disagree a little: never report a negative age.
    sent: float = message.time.timestamp()
    return max(0.0, now - sent)


async def _message_age(js: Any, stream: str, now: float, *, seq: int,
                       next_on: str | None = None) -> float | None:
    try:
        if next_on is None:
            message = await js.get_msg(stream, seq=seq)
        else:
            message = await js.get_msg(stream, seq=seq, subject=next_on, next=True)
    except NotFoundError:  # acknowledged (and so removed) between the two API calls
        return None
    return _age(message, now)


def _work_address(names: Names, subject: str) -> tuple[str, str]:
    try:
        address = names.parse_work(subject)
    except BadName:
        return "", ""
    return address.model, address.replica


async def _consumer_lag(js: Any, names: Names, info: Any, now: float) -> ConsumerLag:
    config = info.config
    subject = config.filter_subject or ",".join(config.filter_subjects or ())
    model, replica = _work_address(names, subject)
    pending = info.num_pending or 0
    oldest = None
    if pending and config.filter_subject:
        # Everything past the consumer's delivered cursor on its subject is undelivered;
        # the first such message is the one that has waited longest.
        after = (info.delivered.stream_seq if info.delivered else 0) + 1
        oldest = await _message_age(js, info.stream_name, now, seq=after, next_on=config.filter_subject)
    return ConsumerLag(
        stream=info.stream_name, consumer=info.name, model=model, replica=replica,
        filter_subject=subject, pending=pending, ack_pending=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0, waiting=info.num_waiting or 0,
        oldest_pending_age=oldest,
    )


async def take_snapshot(nc: NATS, names: Names, clock: Callable[[], float] = time.time) -> LagSnapshot:
    """Every stream under the fabric's prefix and every consumer on them, as JetStream sees them."""
    js = nc.jetstream()
    infos = await _all_pages(lambda offset: js.streams_info(offset=offset))
    ours = sorted((s for s in infos if s.config.subjects and all(
        _under_prefix(names, subject) for subject in s.config.subjects)), key=lambda s: str(s.config.name))
    now = clock()
    streams: list[StreamLag] = []
    consumers: list[ConsumerLag] = []
    for info in ours:
        name = str(info.config.name)
        state = info.state
        oldest = await _message_age(js, name, now, seq=state.first_seq) if state.messages else None
        streams.append(StreamLag(
            stream=name, subjects=tuple(info.config.subjects or ()), messages=state.messages,
            bytes=state.bytes, consumers=state.consumer_count, oldest_message_age=oldest,
        ))

        async def page(offset: int, stream: str = name) -> list[Any]:
            return await js.consumers_info(stream, offset=offset)

        for consumer in sorted(await _all_pages(page), key=lambda c: c.name):
            consumers.append(await _consumer_lag(js, names, consumer, now))
    return LagSnapshot(taken_at=now, prefix=names.prefix, streams=tuple(streams), consumers=tuple(consumers))


class LagMonitor:
    """Polls snapshots on an interval and hands each to ``on_snapshot``; errors are logged
    and counted (via ``on_error``) and the next poll tries again, so a NATS restart only
    leaves a gap."""

    def __init__(self, nc: NATS, names: Names, interval: float,
                 on_snapshot: Callable[[LagSnapshot], None],
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.nc, self.names, self.interval = nc, names, interval
        self.on_snapshot = on_snapshot
        self.on_error = on_error
        self.latest: LagSnapshot | None = None
        self._stopping = asyncio.Event()

    async def poll(self) -> LagSnapshot:
        snapshot = await take_snapshot(self.nc, self.names)
        self.latest = snapshot
        self.on_snapshot(snapshot)
        return snapshot

    async def run(self, count: int = 0) -> None:
        """Poll until ``stop()`` (or ``count`` polls when it is not 0)."""
        polls = 0
        while not self._stopping.is_set():
            try:
                await self.poll()
            except Exception as exc:  # a task root: NATS may be reconnecting
                log.warning("lag poll failed: %s", exc)
                if self.on_error is not None:
                    self.on_error(exc)
            polls += 1
            if count and polls >= count:
                return
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping.set()
