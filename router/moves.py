"""Nothing waits on a dead replica: its own queue is moved to its model's ``.any`` queue.

When a replica stops heartbeating (or says it is draining, after which it pulls nothing
new), the work routed to its own subject would wait for it forever. Each router then
pulls that replica's durable consumer, republishes every message to ``.any`` (any
replica of the model pulls it) and acks the original only after the republish was
accepted, so a crash in between leaves the message where it was.

Several routers do this at once without coordinating: the durable consumer hands each
message to one of them, and if one is handed out twice (a router died after republishing,
before acking), both copies carry the same ``Nats-Msg-Id`` — derived from the original's
stream sequence, fresh so the request id's own de-duplication entry does not swallow it —
and JetStream keeps one.

The mover keeps watching for ``move_window`` seconds (longer than the consumer's ack
wait), so work the dead worker had taken but not finished comes back from JetStream and
moves too; that work is marked ``Slm-Restarted``, since its first attempt may have
streamed part of an answer. It stops early when the replica heartbeats again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.js.errors import APIError, NotFoundError

from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import CacheClass
from subjects.names import ANY_REPLICA, HEADER_MSG_ID, HEADER_REPLY, HEADER_RESTARTED, Names
from subjects.settings import ERR_MAX_MSGS_PER_SUBJECT

log = logging.getLogger("slm.router.moves")

MOVE_BATCH = 64
FULL_RETRY_SECONDS = 1.0  # .any was full: hand the message back and try again after this


def moved_id(original: str, stream_sequence: int) -> str:
    """The Nats-Msg-Id of a moved copy: the same on every router that moves it."""
    return f"{original or 'work'}.moved.{stream_sequence}"


@dataclass
class QueueMover:
    js: Any  # nats-py JetStreamContext
    names: Names
    moved: int = 0

    async def move(self, model: str, replica: str, still_gone: Callable[[], bool],
                   window: float) -> int:
        """Move ``replica``'s queued work to ``.any`` while ``still_gone()``; returns how many."""
        stream = self.names.work_stream(model)
        durable = self.names.replica_consumer(model, replica)
        try:
            sub = await self.js.pull_subscribe_bind(durable, stream)
        except NotFoundError:
            return 0  # no consumer: the replica never came up, nothing was queued for it
        loop = asyncio.get_running_loop()
        until = loop.time() + window
        moved = 0
        try:
            while loop.time() < until and still_gone():
                try:
                    messages = await sub.fetch(MOVE_BATCH, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    info = await self.js.consumer_info(stream, durable)
                    if not info.num_pending and not info.num_ack_pending:
                        break  # empty, and nothing out with the dead worker to come back
                    continue
                for message in messages:
                    if await self._move_one(model, message):
                        moved += 1
                        self.moved += 1
        except NotFoundError:
            pass  # the consumer was deleted meanwhile: nothing left to move
        finally:
            with contextlib.suppress(Exception):  # the connection may be closing already
                await sub.unsubscribe()
        return moved

    async def _move_one(self, model: str, message: Any) -> bool:
        headers = message.headers or {}
        meta = message.metadata
        out = {
            HEADER_MSG_ID: moved_id(headers.get(HEADER_MSG_ID, ""), meta.sequence.stream),
            HEADER_REPLY: headers.get(HEADER_REPLY, ""),
        }
        if meta.num_delivered > 1:  # the dead worker had it: it may have streamed
            out[HEADER_RESTARTED] = "1"
        try:
            item = codec.decode_work(message.data, message.subject)
            data = codec.encode_work(msgspec.structs.replace(
                item, replica=ANY_REPLICA, cache_class=CacheClass.SPILL))
        except BadMessage:
            data = message.data  # the worker that takes it answers the client with the error
        try:
            await self.js.publish(self.names.work_any(model), data, headers=out)
        except APIError as exc:
            if exc.err_code != ERR_MAX_MSGS_PER_SUBJECT:
                raise
            await message.nak(delay=FULL_RETRY_SECONDS)  # .any is full: later
            return False
        await message.ack()
        return True
