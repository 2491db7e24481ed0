"""Durable ingress: requests from the SLM_INGRESS stream, for clients that must not lose one.

Core ingress is a plain NATS request: lowest latency, but a request published while no
router listens is gone. A batch client publishes to ``<prefix>.ingress.durable`` instead;
JetStream stores it (de-duplicated on the client's ``Nats-Msg-Id``) until a router takes it
from the one durable consumer all routers share. The client's inbox travels in the
``Slm-Reply`` header because a stored message has no reply subject of its own.

A router acks the stored request only after it is routed (published to a work queue,
where the work queue's own guarantees take over) or answered with an error. A router that
dies in between leaves it un-acked; JetStream offers it again after ``ingress_ack_wait``
and the work queue's de-duplication makes the second publish a no-op. "Try later" errors
(no replica yet, every queue full) are not final here: the request waits in the stream and
is offered again, until its last delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from subjects.messages import ErrorCode
from subjects.names import HEADER_REPLY, Names

log = logging.getLogger("slm.router.ingress")

# Codes that say "not now" rather than "never": a durable request waits and is retried.
RETRY_LATER = frozenset({ErrorCode.NO_REPLICA, ErrorCode.OVERLOADED})


@dataclass
class DurableIngress:
    """Pulls the shared durable consumer and hands each request to the router.

    ``admit(msg, received, default_id)`` routes one request or raises an exception with
    ``code``/``message``/``request_id`` attributes (the router's ``Rejected``);
    ``reply_error(reply, request_id, code, message)`` answers the client.
    """

    names: Names
    subscription: Any  # nats-py JetStreamContext.PullSubscription
    admit: Callable[[Msg, float, str], Awaitable[None]]
    reply_error: Callable[[str, str, ErrorCode, str], Awaitable[None]]
    rejected: type[Exception]
    batch: int
    max_deliver: int
    retry_delay: float
    routed: int = 0
    answered: int = 0
    retried: int = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Pull and route until ``stopping`` is set; what was pulled is finished first."""
        while not stopping.is_set():
            try:
                msgs = await self.subscription.fetch(self.batch, timeout=0.5)
            except (TimeoutError, NatsTimeoutError):
                continue  # nothing waiting (or NATS reconnecting): ask again
            except Exception as exc:  # the stream is being re-created, the server restarts…
                log.warning("durable ingress pull failed: %s", exc)
                await asyncio.sleep(self.retry_delay)
                continue
            await asyncio.gather(*(self._one(msg) for msg in msgs))
        # Unsubscribe before the connection drains: a status reply to the last pull that
        # nobody reads would hold the drain until its timeout.
        await self.subscription.unsubscribe()

    async def _one(self, msg: Msg) -> None:
        received = time.perf_counter()
        meta = msg.metadata
        last_delivery = meta.num_delivered >= self.max_deliver
        reply = (msg.headers or {}).get(HEADER_REPLY, "")
        problem = self.names.reply_problem(reply)
        if problem is not None:
            # Nobody can be told, and no later delivery changes that: take it off the queue.
            log.warning("durable request %d dropped: %s", meta.sequence.stream, problem)
            await msg.term()
            return
        # The stream sequence names a request that carries no id of its own, so that a
        # redelivery keeps its id and the work queue de-duplicates it.
        default_id = f"ingress-{meta.sequence.stream}"
        incoming = Msg(_client=msg._client, subject=msg.subject, reply=reply, data=msg.data,
                       headers=msg.headers)
        try:
            await self.admit(incoming, received, default_id)
        except self.rejected as exc:
            code: ErrorCode = exc.code  # type: ignore[attr-defined]
            request_id: str = exc.request_id  # type: ignore[attr-defined]
            if code is ErrorCode.DUPLICATE_ID and meta.num_delivered > 1:
                # An earlier delivery of this very message was routed before its ack got
                # lost (a router died): the work is queued, nothing more to do.
                await msg.ack()
                return
            if code in RETRY_LATER and not last_delivery:
                self.retried += 1
                await msg.nak(delay=self.retry_delay)
                return
            await self.reply_error(reply, request_id, code, exc.message)  # type: ignore[attr-defined]
            self.answered += 1
            await msg.ack()
            return
        except Exception:  # a task root: this request only; JetStream offers it again
            log.exception("durable request %d failed in the router", meta.sequence.stream)
            if not last_delivery:
                await msg.nak(delay=self.retry_delay)
                return
            await self.reply_error(reply, default_id, ErrorCode.INTERNAL, "router error")
            await msg.ack()
            return
        self.routed += 1
        await msg.ack()
