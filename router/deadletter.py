"""Dead letters: work that used up its deliveries leaves its queue and its client is told.

A WorkQueue stream keeps a message until it is acked. One that every delivery failed on
without an answer (the worker holding it died each time, or hung past ``ack_wait``) is
never delivered again and never removed: the queue holds it forever and its client waits
forever. JetStream announces the moment on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.
<stream>.<consumer>``; routers listen in one queue group (so one router handles each), and
that router copies the message to the dead-letter stream (kept for people, with where it
came from), deletes it from its queue, and sends its client ``redelivery_exhausted``.

Every step is safe to repeat: the copy keeps the request's ``Nats-Msg-Id`` (the dead-letter
stream de-duplicates it), a message already gone is skipped, and the reply is one more
error to an inbox that has stopped listening after the first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter

from subjects import codec
from subjects.messages import ErrorCode, ErrorReply
from subjects.names import (
    HEADER_DEAD_REASON,
    HEADER_DEAD_SEQUENCE,
    HEADER_DEAD_STREAM,
    HEADER_MSG_ID,
    HEADER_REPLY,
    Names,
)

log = logging.getLogger("slm.router.dead")

DEAD_LETTER_QUEUE_GROUP = "routers-dead-letters"


class MaxDeliveries(msgspec.Struct, frozen=True):
    """The fields of JetStream's max-deliveries advisory the fabric reads."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


_advisory = msgspec.json.Decoder(MaxDeliveries)


class DeadLetterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.moved = Counter(
            "slm_router_dead_letters_total",
            "Messages that used up their deliveries, moved to the dead-letter stream, by stream.",
            ["stream"], registry=registry,
        )


@dataclass
class DeadLetters:
    """Handles max-deliveries advisories for the fabric's streams (work queues, ingress)."""

    nc: Any  # nats-py Client
    js: Any  # nats-py JetStreamContext
    names: Names
    streams: tuple[str, ...]
    registry: CollectorRegistry
    moved: int = 0
    _subs: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.metrics = DeadLetterMetrics(self.registry)
        for stream in self.streams:
            self.metrics.moved.labels(stream)

    async def start(self) -> None:
        for stream in self.streams:
            self._subs.append(await self.nc.subscribe(
                self.names.max_deliveries_advisory(stream, "*"),
                queue=DEAD_LETTER_QUEUE_GROUP, cb=self._on_advisory))

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = _advisory.decode(msg.data)
            await self.move(advisory)
        except Exception:  # a callback root: log; the message stays where it was
            log.exception("could not dead-letter after advisory %r", msg.data[:200])

    async def move(self, advisory: MaxDeliveries) -> bool:
        """Copy, delete, tell the client; False when the message was already gone."""
        stream, seq = advisory.stream, advisory.stream_seq
        try:
            stored = await self.js.get_msg(stream, seq)
        except NotFoundError:
            return False  # acked after all, or another router moved it
        headers = dict(stored.headers or {})
        reason = (f"{advisory.deliveries} deliveries on consumer {advisory.consumer} "
                  "ended without an answer")
        headers.update({HEADER_DEAD_STREAM: stream, HEADER_DEAD_SEQUENCE: str(seq),
                        HEADER_DEAD_REASON: reason})
        await self.js.publish(self.names.dead_letter(stream), stored.data or b"", headers=headers)
        try:
            await self.js.delete_msg(stream, seq)
        except NotFoundError:
            return False  # a late ack removed it meanwhile: its client had its answer
        self.moved += 1
        self.metrics.moved.labels(stream).inc()
        reply = headers.get(HEADER_REPLY, "")
        request_id = headers.get(HEADER_MSG_ID, "")
        log.warning("request %s dead-lettered from %s #%d: %s", request_id, stream, seq, reason)
        if reply and self.names.reply_problem(reply) is None:
            await self.nc.publish(reply, codec.encode_reply(ErrorReply(
                request_id, ErrorCode.REDELIVERY_EXHAUSTED.value,
                f"gave up: {reason}; the request is kept in {self.names.dead_letter_stream}")))
        return True
