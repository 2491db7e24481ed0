"""A small async client: ``async for chunk in client.stream(request)``.

Requests go to the ingress subject with a private inbox as the reply subject. A chunk
with ``restarted`` set means the request was redelivered after a worker died: whatever
came before it is void. ``complete()`` handles that and returns the final text.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import nats
from nats.aio.client import Client as NATS

from subjects import codec
from subjects.messages import ChatMessage, ChatRequest, Chunk, ErrorCode, ErrorReply
from subjects.names import Names

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


class Client:
    def __init__(self, nc: NATS, prefix: str = "slm") -> None:
        self.nc = nc
        self.names = Names(prefix)

    @classmethod
    async def connect(cls, url: str, prefix: str = "slm") -> Client:
        return cls(await nats.connect(url, name="slm-client", max_reconnect_attempts=-1), prefix)

    async def close(self) -> None:
        await self.nc.drain()

    async def stream(self, request: ChatRequest, *, timeout: float = 60.0) -> AsyncIterator[Chunk]:
        """Yield reply chunks until the final one; raise FabricError on an error reply.

        ``timeout`` bounds the wait for each next reply, not the whole answer.
        """
        if request.id is None:
            request = _with_id(request, uuid.uuid4().hex)
        assert request.id is not None
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            await self.nc.publish(self.names.ingress, codec.encode_request(request), reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    raise ReplyTimeout(request.id, timeout) from None
                if not msg.data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                    raise FabricError(ErrorReply(request.id, ErrorCode.NO_ROUTER.value, (
                        f"no router is serving {self.names.ingress!r}; retry when one runs")))
                reply = codec.decode_reply(msg.data, msg.subject)
                if isinstance(reply, ErrorReply):
                    raise FabricError(reply)
                yield reply
                if reply.final:
                    return
        finally:
            await sub.unsubscribe()

    async def complete(self, request: ChatRequest, *, timeout: float = 60.0) -> Answer:
        """The whole answer, with partial output from an abandoned attempt discarded."""
        parts: list[str] = []
        restarts = 0
        async for chunk in self.stream(request, timeout=timeout):
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
