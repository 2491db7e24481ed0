"""Credit-based JetStream pulls for one durable consumer.

Why not nats-py's ``fetch``: it returns a batch only when the batch is full or the
request expires, so a lingering fetch for 4 messages holds the first one until the
deadline — milliseconds of TTFT for nothing. Here every delivered message goes to
``on_message`` the moment it arrives, and each pull request has its own reply subscription, so the
server's status replies (404 no messages, 408 expired, 409 …) settle exactly the request
they belong to. (Delivered messages carry their stream subject, not the reply subject,
so only the subscription tells them apart.) A message that arrives after its request was
given up on is still delivered, never dropped.

``doorbell`` waits for work without holding a credit: a pull request for one message of at
most one byte. No work message is that small, so the server never delivers one to it; the
moment a message becomes available it answers ``409 Message Size Exceeds MaxBytes`` and
leaves the message in place for a real pull. A worker idle on two queues lingers with real
credits only on the one it serves first and a doorbell on the other: a lingering pull cannot
be taken back before it expires, so credits split between two lingering pulls sit on the
queue that stays empty while work waits on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from subjects.names import pull_next_subject

_STATUS = "Status"
_HEARTBEAT = "100"
_TOO_BIG = "409"  # for a doorbell: "Message Size Exceeds MaxBytes", a message is waiting
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class PullRequest:
    batch: int
    credits: int  # messages the caller holds slots for: ``batch``, or 0 for a doorbell
    received: int = 0
    finished: bool = False
    status: str = ""
    activity: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def outstanding(self) -> int:
        return 0 if self.finished else max(self.credits - self.received, 0)

    @property
    def rang(self) -> bool:
        """A doorbell's answer: work became available on its consumer."""
        return self.status == _TOO_BIG


class Puller:
    """Issues pull requests against ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``."""

    def __init__(self, nc: NATS, api_prefix: str, stream: str, consumer: str,
                 on_message: Callable[[Msg], None],
                 on_settled: Callable[[], None] | None = None) -> None:
        self._nc = nc
        # Called whenever a request settles: its undelivered credits return to the caller,
        # a doorbell rang, or a lingering request filled up (more work may be waiting).
        self._on_settled = on_settled
        self._next_subject = pull_next_subject(stream, consumer, api_prefix)
        self._on_message = on_message
        self._inbox = nc.new_inbox()
        self._ids = itertools.count(1)
        self._open: dict[str, PullRequest] = {}
        self._subs: dict[str, Subscription] = {}
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self.late_deliveries = 0
        self.consumer = consumer

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        # Finish the unsubscribes already under way first: one still pending when the
        # connection drains can stop its subscription mid-drain and hang the drain.
        if self._unsubscribing:
            await asyncio.gather(*self._unsubscribing, return_exceptions=True)
        for sub in list(self._subs.values()):
            await sub.unsubscribe()
        self._subs.clear()

    @property
    def outstanding(self) -> int:
        """Messages requested and not yet delivered: credits the caller must hold back."""
        return sum(r.outstanding for r in self._open.values())

    @property
    def lingering(self) -> bool:
        return bool(self._open)

    async def pull(self, batch: int, *, expires: float | None = None,
                   wait_for_first: bool = False) -> PullRequest:
        """Ask for up to ``batch`` messages and wait until the request settles.

        ``expires=None`` is a no-wait pull: it settles as soon as the server has sent what
        it has. With ``expires`` the request lingers; ``wait_for_first`` returns at the first
        delivery, leaving the rest of the request open (its credits stay outstanding).
        """
        return await self._request(PullRequest(batch, batch), {"batch": batch}, expires,
                                   wait_for_first)

    async def doorbell(self, expires: float) -> PullRequest:
        """Wait up to ``expires`` for work on this consumer without taking any (no credit).

        Settles ``rang`` when a message is available; the caller then pulls it for real.
        """
        return await self._request(PullRequest(1, 0), {"batch": 1, "max_bytes": 1}, expires,
                                   wait_for_first=False)

    async def _request(self, request: PullRequest, body: dict[str, object],
                       expires: float | None, wait_for_first: bool) -> PullRequest:
        token = str(next(self._ids))
        self._open[token] = request
        if expires is None:
            body["no_wait"] = True
            local_limit = 2.0
        else:
            body["expires"] = int(expires * 1e9)
            local_limit = expires + 2.0
        reply = f"{self._inbox}.{token}"
        self._subs[token] = await self._nc.subscribe(reply, cb=partial(self._on_reply, token))
        await self._nc.publish(self._next_subject, _encode(body), reply=reply)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + local_limit
        while not request.finished:
            if wait_for_first and request.received:
                return request
            remaining = give_up - loop.time()
            if remaining <= 0:
                # No status arrived (a reconnect can swallow it): stop counting the credits.
                self._finish(token, "local-timeout")
                break
            request.activity.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await request.activity.wait()
        return request

    def _finish(self, token: str, status: str) -> None:
        request = self._open.pop(token, None)
        if request is not None:
            request.finished = True
            request.status = status
            request.activity.set()
            if self._on_settled is not None:
                self._on_settled()
        # The server sends nothing more once it has answered with a status or filled the
        # batch; after a local timeout it still might, so that subscription stays.
        if status != "local-timeout" and (sub := self._subs.pop(token, None)) is not None:
            task = asyncio.get_running_loop().create_task(sub.unsubscribe())
            self._unsubscribing.add(task)
            task.add_done_callback(self._unsubscribing.discard)

    async def _on_reply(self, token: str, msg: Msg) -> None:
        request = self._open.get(token)
        status = msg.headers.get(_STATUS) if msg.headers else None
        if status is not None:
            if status != _HEARTBEAT:
                self._finish(token, status)
            return
        # The message first: its handler is scheduled ahead of the pull loop this wakes,
        # so the work starts before the next pull request goes out (TTFT).
        self._on_message(msg)
        if request is None:
            self.late_deliveries += 1
        else:
            request.received += 1
            request.activity.set()
            if request.received >= request.batch:
                self._finish(token, "filled")
