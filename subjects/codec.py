"""The one place bytes become messages and back.

Encoders and typed decoders are built once at import. Every decode failure becomes a
``BadMessage`` carrying the subject and a truncated payload, so a caller has one thing
to catch and the error it returns can name what was wrong.
"""

from __future__ import annotations

from typing import Any

import msgspec

from subjects.messages import (
    ChatRequest,
    Heartbeat,
    PlacementRecord,
    Reply,
    RoutingContext,
    WorkItem,
)

_PAYLOAD_PREVIEW = 120


class BadMessage(ValueError):
    """Raised when a payload does not decode to the expected type.

    Not recoverable for that message (retrying the same bytes fails the same way); the
    receiver answers it with a ``bad_request`` error reply and keeps serving.
    """

    def __init__(self, what: str, subject: str, payload: bytes, reason: str) -> None:
        preview = payload[:_PAYLOAD_PREVIEW]
        more = "…" if len(payload) > _PAYLOAD_PREVIEW else ""
        super().__init__(f"bad {what} on {subject!r}: {reason} (payload {preview!r}{more})")
        self.what = what
        self.subject = subject
        self.payload_preview = preview
        self.reason = reason


_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()

_request_decoder = msgspec.json.Decoder(ChatRequest)
_reply_decoder = msgspec.json.Decoder(Reply)
_work_decoder = msgspec.msgpack.Decoder(WorkItem)
_context_decoder = msgspec.msgpack.Decoder(RoutingContext)
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def _decode(decoder: Any, what: str, payload: bytes, subject: str) -> Any:
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:  # well-formed, wrong shape: names the field
        raise BadMessage(what, subject, payload, str(exc)) from exc
    except msgspec.DecodeError as exc:  # not parseable at all
        raise BadMessage(what, subject, payload, f"malformed payload: {exc}") from exc
    except UnicodeDecodeError as exc:  # invalid UTF-8 inside a JSON string
        raise BadMessage(what, subject, payload, f"invalid UTF-8: {exc.reason}") from exc
    except RecursionError as exc:  # hostile nesting ([[[[…]]]]) past msgspec's depth limit
        raise BadMessage(what, subject, payload, "nested too deeply") from exc


def encode_json(obj: Any) -> bytes:
    return _json.encode(obj)


def encode_request(request: ChatRequest) -> bytes:
    return _json.encode(request)


def decode_request(payload: bytes, subject: str = "") -> ChatRequest:
    return _decode(_request_decoder, "chat request", payload, subject)  # type: ignore[no-any-return]


def encode_reply(reply: Reply) -> bytes:
    return _json.encode(reply)


def decode_reply(payload: bytes, subject: str = "") -> Reply:
    return _decode(_reply_decoder, "reply", payload, subject)  # type: ignore[no-any-return]


def encode_work(item: WorkItem) -> bytes:
    return _msgpack.encode(item)


def decode_work(payload: bytes, subject: str = "") -> WorkItem:
    return _decode(_work_decoder, "work item", payload, subject)  # type: ignore[no-any-return]


def encode_context(context: RoutingContext) -> bytes:
    return _msgpack.encode(context)


def decode_context(payload: bytes, subject: str = "") -> RoutingContext:
    return _decode(_context_decoder, "routing context", payload, subject)  # type: ignore[no-any-return]


def encode_heartbeat(beat: Heartbeat) -> bytes:
    return _json.encode(beat)


def decode_heartbeat(payload: bytes, subject: str = "") -> Heartbeat:
    return _decode(_heartbeat_decoder, "heartbeat", payload, subject)  # type: ignore[no-any-return]


_placement_decoder = msgspec.msgpack.Decoder(PlacementRecord)


def encode_placement(record: PlacementRecord) -> bytes:
    return _msgpack.encode(record)


def decode_placement(payload: bytes, subject: str = "") -> PlacementRecord:
    return _decode(_placement_decoder, "placement record", payload, subject)  # type: ignore[no-any-return]
