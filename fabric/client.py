"""A small async client: ``async for chunk in client.stream(request)``.

Requests go to the ingress subject with a private inbox as the reply subject. A chunk
with ``restarted`` set means the request was redelivered after a worker died: whatever
came before it is void. ``complete()`` handles that and returns the final text.

Replies come back on one wildcard subscription per client (``<inbox>.*``), each request
owning one subject under it: no subscribe/unsubscribe round per request, and a chunk
reaches the waiting stream through one queue (see ``_Replies``).

Nothing is lost quietly: silence before the first reply sends the same request again
(same id, same inbox — the work queues de-duplicate on the id, so it still runs once);
``durable=True`` stores the request in the SLM_INGRESS stream first, for batch work that
must survive a moment with no router; a gap in the chunk sequence is an error, never a
silently shortened answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import APIError

from subjects import codec
from subjects.messages import ChatMessage, ChatRequest, Chunk, ErrorCode, ErrorReply
from subjects.names import HEADER_MSG_ID, HEADER_REPLY, Names, is_token

# NATS answers a publish that has a reply subject but no subscriber with this status.
_NO_RESPONDERS = "503"


class FabricError(Exception):
    """Raised when the fabric answers a request with an error reply; ``code`` says which."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(f"{reply.code}: {reply.message}")
        self.code = reply.code
        self.message = reply.message
        self.request_id = reply.request_id


class ReplyTimeout(FabricError):
    """Raised when no reply arrives within the client's timeout; the request may be retried."""

    def __init__(self, request_id: str, seconds: float) -> None:
        super().__init__(ErrorReply(request_id, "timeout", f"no reply within {seconds}s"))


class LostChunks(FabricError):
    """Raised when a chunk arrives out of sequence: earlier ones were lost on the way (core
    NATS does not replay messages published while a subscriber was reconnecting). The
    answer would be incomplete; retry the request with a new id."""

    def __init__(self, request_id: str, expected: int, got: int) -> None:
        super().__init__(ErrorReply(request_id, "lost_chunks", (
            f"chunk {got} arrived where chunk {expected} was due: {got - expected} lost")))


# Until the first reply, this much silence means the request may have died with a router:
# send it again (same id). Generous enough that a queued request rarely needs it; each
# needless retry costs one de-duplicated publish and a duplicate_id notice.
DEFAULT_RETRY_AFTER = 2.0
DEFAULT_RETRIES = 3
# After a reconnect, a request that has had no chunk yet is resubmitted under a new id only
# after this many retry_after periods of silence: long enough for queued work to start.
STALL_TICKS = 4


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: str
    text: str
    chunks: int
    finish_reason: str
    model: str
    replica: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    restarts: int


def chat(prompt: str, **fields: object) -> ChatRequest:
    """A one-message request; ``fields`` are any other ChatRequest fields."""
    return ChatRequest(messages=[ChatMessage(role="user", content=prompt)], **fields)  # type: ignore[arg-type]


class _Replies:
    """One wildcard reply subscription for every request of a client.

    A per-request subscription costs a SUB and an UNSUB (and a subscription task) for each
    request, in front of its publish; here the first request subscribes ``<inbox>.*`` once
    and each request takes a subject under it. Replies are sorted by subject (not by the
    request id inside: an error about an undecodable request carries none), into the
    request's own queue; a reply for a request already finished is dropped, as an
    unsubscribed inbox's would be. The subscription is re-established with the connection
    after a reconnect, like any other.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._sub: Subscription | None = None
        self._prefix = ""
        self._opening = asyncio.Lock()
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Queue[Msg]] = {}

    async def open(self) -> tuple[str, asyncio.Queue[Msg]]:
        """A fresh reply subject and the queue its replies arrive in; ``close`` it after."""
        if self._sub is None:
            async with self._opening:
                if self._sub is None:
                    base = self._nc.new_inbox()
                    self._sub = await self._nc.subscribe(f"{base}.*", cb=self._deliver)
                    self._prefix = f"{base}."
        inbox = f"{self._prefix}{next(self._tokens)}"
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._waiting[inbox] = queue
        return inbox, queue

    def close(self, inbox: str) -> None:
        self._waiting.pop(inbox, None)

    async def _deliver(self, msg: Msg) -> None:
        queue = self._waiting.get(msg.subject)
        if queue is not None:
            queue.put_nowait(msg)


class Client:
    def __init__(self, nc: NATS, prefix: str = "slm") -> None:
        self.nc = nc
        self.names = Names(prefix)
        self._replies = _Replies(nc)
        self.retries_sent = 0  # requests sent again, same id, after silence (see stream())
        self.resubmits_sent = 0  # requests sent under a new id after a reconnect

    @classmethod
    async def connect(cls, url: str, prefix: str = "slm", **options: Any) -> Client:
        """Connect; ``options`` go to ``nats.connect`` (``tls``, ``user``, ``password`` …).

        Inboxes live under ``Names.inbox_prefix`` — per user (``_INBOX_<prefix>.<user>``)
        when the connection names a user, which is what a least-privilege server (see
        ``slm-fabric nats-config``) lets that user, and only that user, subscribe to.
        """
        names = Names(prefix)
        user = options.get("user") or urlparse(url).username
        options.setdefault("inbox_prefix", names.client_inbox_prefix(user)
                           if user and is_token(user) else names.inbox_prefix)
        options.setdefault("name", "slm-client")
        options.setdefault("max_reconnect_attempts", -1)
        options.setdefault("reconnect_time_wait", 0.5)  # back soon after a server restart
        return cls(await nats.connect(url, **options), prefix)

    async def close(self) -> None:
        await self.nc.drain()

    async def stream(self, request: ChatRequest, *, timeout: float = 60.0,
                     retry_after: float = DEFAULT_RETRY_AFTER, retries: int = DEFAULT_RETRIES,
                     durable: bool = False) -> AsyncGenerator[Chunk, None]:
        """Yield reply chunks until the final one; raise FabricError on an error reply.

        ``timeout`` bounds the silence before each next reply, not the whole answer.
        ``durable=True`` stores the request in the SLM_INGRESS stream (confirmed by
        JetStream) instead of asking a live router. Silence is acted on, at most
        ``retries`` times each way:

        - no reply yet after ``retry_after`` seconds: the request may have died with a
          router. It is sent again, same id, same inbox; the work queue de-duplicates it,
          and a ``duplicate_id`` answer to the retry means "accepted already: keep waiting".
        - silence across a reconnect to NATS: replies published while this client was away
          are gone for good (core NATS keeps none), and the work queue would de-duplicate
          the same id. Mid-answer, ``retry_after`` seconds of silence (or a gap in the chunk
          sequence) sends the request again under a new id (``<id>-r<n>``), cancelling the
          old one and ignoring its late chunks. Before any chunk, the same id is sent once
          more first (queued work answers ``duplicate_id`` and starts in its turn); only
          ``STALL_TICKS`` × ``retry_after`` seconds of further silence resubmit it.
          After a reconnect a request may therefore run twice; the caller sees one answer.

        A chunk that starts the answer over (``seq`` back to 0) always has ``restarted`` set.
        """
        if request.id is None:
            request = _with_id(request, uuid.uuid4().hex)
        assert request.id is not None
        inbox, replies = await self._replies.open()
        current = request
        tick = min(retry_after, timeout)
        try:
            await self._send(current, inbox, durable, timeout)
            sends = 1  # of the current id
            resubmits = 0
            accepted = durable  # a stored request is redelivered by JetStream, not by us
            expected = 0  # the next chunk's seq
            silence = 0.0
            # Connection epochs (reconnect counts). A reconnect since the current id was sent
            # explains lost replies: not the epoch a chunk was read in, which can be one
            # later than the connection it came on (nats-py hands a message read just before
            # a disconnect to its callback after the reconnect has been counted).
            sent_in = self._reconnects()  # when the current id was first sent
            running: tuple[str, int] | None = None  # (replica, attempt) of the run being read
            probed = sent_in  # epoch of the last same-id send after a reconnect
            noticed = sent_in  # the last reconnect whose silence we started counting afresh

            async def resubmit() -> None:
                nonlocal current, sends, resubmits, accepted, silence, sent_in, probed, noticed, running
                resubmits += 1
                self.resubmits_sent += 1
                await self.cancel(current.id or "")
                current = _with_id(request, f"{(request.id or '')[:56]}-r{resubmits}")
                await self._send(current, inbox, durable, timeout)
                sends, accepted, silence = 1, durable, 0.0
                sent_in = probed = noticed = self._reconnects()
                running = None

            while True:
                try:
                    async with asyncio.timeout(tick):
                        msg = await replies.get()
                except TimeoutError:
                    if self.nc.is_closed:  # closed under us: nothing more will arrive
                        raise nats.errors.ConnectionClosedError from None
                    silence += tick
                    now = self._reconnects()
                    if now != noticed:
                        # Count silence from the reconnect: a worker may still be on its
                        # way back, holding chunks it will flush when it reconnects.
                        noticed, silence = now, 0.0
                    if now != sent_in:  # a reconnect since the send: replies may be lost
                        if expected == 0 and probed != now:
                            probed = now
                            sends += 1
                            await self._send(current, inbox, durable, timeout)
                            continue
                        stall = tick * (2 if expected else STALL_TICKS)
                        if silence >= stall and resubmits < retries:
                            await resubmit()
                            continue
                    elif not accepted and expected == 0 and sends <= retries:
                        sends += 1
                        self.retries_sent += 1
                        silence = 0.0
                        await self._send(current, inbox, durable, timeout)
                        continue
                    if silence >= timeout:
                        raise ReplyTimeout(current.id or "", timeout) from None
                    continue
                silence = 0.0
                if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                    raise FabricError(ErrorReply(current.id or "", ErrorCode.NO_ROUTER.value, (
                        f"no router is serving {self.names.ingress!r}; retry when one runs")))
                reply = codec.decode_reply(msg.data, msg.subject)
                if reply.request_id and reply.request_id != current.id:
                    continue  # from an attempt given up on
                if isinstance(reply, ErrorReply):
                    if reply.code == ErrorCode.DUPLICATE_ID.value and sends > 1:
                        accepted = True  # our own earlier send got through
                        continue
                    raise FabricError(reply)
                run = (reply.replica, reply.attempt)
                if running is not None and run != running and reply.seq != 0:
                    # The same work delivered again (a run outlived its ack_wait) and
                    # another run has started over since: follow that one, not both.
                    continue
                running = run
                if reply.seq == 0 and expected > 0 and not reply.restarted:
                    # A new attempt the worker could not know was one (a resubmission, or
                    # work moved to another replica with a fresh delivery count).
                    reply = msgspec.structs.replace(reply, restarted=True)
                if reply.restarted:
                    expected = 0
                if reply.seq != expected:
                    if self._reconnects() != sent_in and resubmits < retries:
                        await resubmit()  # the gap may have fallen into a reconnect
                        continue
                    raise LostChunks(current.id or "", expected, reply.seq)
                expected = reply.seq + 1
                yield reply
                if reply.final:
                    return
        finally:
            self._replies.close(inbox)

    def _reconnects(self) -> int:
        return int(self.nc.stats["reconnects"])

    async def _send(self, request: ChatRequest, inbox: str, durable: bool, timeout: float) -> None:
        payload = codec.encode_request(request)
        if not durable:
            await self.nc.publish(self.names.ingress, payload, reply=inbox)
            return
        request_id = request.id or ""
        headers = {HEADER_MSG_ID: request_id, HEADER_REPLY: inbox}
        try:
            await self.nc.jetstream().publish(self.names.durable_ingress, payload,
                                              headers=headers, timeout=min(timeout, 5.0))
        except nats.errors.NoRespondersError:
            raise FabricError(ErrorReply(request_id, ErrorCode.NO_ROUTER.value, (
                f"no {self.names.ingress_stream} stream: a router creates it when it "
                "first starts"))) from None
        except APIError as exc:
            full = "maximum" in str(exc).lower()
            code = ErrorCode.OVERLOADED if full else ErrorCode.INTERNAL
            raise FabricError(ErrorReply(request_id, code.value, (
                f"{self.names.ingress_stream} refused the request: {exc}"))) from None

    async def complete(self, request: ChatRequest, *, timeout: float = 60.0,
                       **options: Any) -> Answer:
        """The whole answer, with partial output from an abandoned attempt discarded.

        ``options`` are ``stream()``'s: ``retry_after``, ``retries``, ``durable``.
        """
        parts: list[str] = []
        restarts = 0
        # Closed here, not whenever the garbage collector gets to it: its cleanup frees
        # the reply subject at once.
        async with contextlib.aclosing(self.stream(request, timeout=timeout, **options)) as chunks:
            async for chunk in chunks:
                if chunk.restarted:
                    parts.clear()
                    restarts += 1
                parts.append(chunk.delta)
                if chunk.final:
                    usage = chunk.usage
                    return Answer(
                        chunk.request_id, "".join(parts), chunk.seq + 1, chunk.finish_reason or "",
                        chunk.model, chunk.replica, usage.prompt_tokens if usage else 0,
                        usage.completion_tokens if usage else 0, usage.cached_tokens if usage else 0,
                        restarts,
                    )
        raise AssertionError("stream ended without a final chunk")  # stream() never does

    async def wait_until_served(self, timeout: float = 30.0) -> None:
        """Send one-token probes until the fabric answers one (a router and a worker are up)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await self.complete(chat("ping", max_tokens=1), timeout=5.0)
                return
            except FabricError as exc:
                if exc.code not in (ErrorCode.NO_ROUTER.value, ErrorCode.NO_REPLICA.value):
                    raise
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def cancel(self, request_id: str) -> None:
        await self.nc.publish(self.names.cancel(request_id), b"")


def _with_id(request: ChatRequest, request_id: str) -> ChatRequest:
    return msgspec.structs.replace(request, id=request_id)
