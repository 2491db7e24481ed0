import msgspec
import pytest

from subjects import codec
from subjects.codec import BadMessage
from subjects.messages import (
    CacheClass,
    ChatMessage,
    ChatRequest,
    Chunk,
    DecisionPath,
    ErrorReply,
    Heartbeat,
    PlacementRecord,
    RoutingContext,
    SafetyCategory,
    Script,
    Structured,
    TaskClass,
    Usage,
    WorkItem,
)

CONTEXT = RoutingContext(
    prompt_tokens=120, code_markers=3, structured=Structured.TOOLS, script=Script.CJK,
    safety=SafetyCategory.CYBER, session_hash=42, prefix_hashes=(1, 2, 3), prefix_seen_depth=2,
    complexity=0.75, requested_model="", max_tokens=64, scorer_class=TaskClass.CODE,
    scorer_confidence=0.9,
)


def test_request_round_trip_keeps_openai_fields():
    request = ChatRequest(
        messages=[ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hi")],
        model="auto", max_tokens=10, temperature=0.2, response_format={"type": "json_object"},
        tools=[{"type": "function", "function": {"name": "f"}}], stream=False, user="u1", id="r1",
        deadline=1.5,
    )
    assert codec.decode_request(codec.encode_request(request)) == request


def test_request_accepts_content_parts_and_unknown_fields():
    raw = b'{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"n":1}'
    request = codec.decode_request(raw)
    assert request.messages[0].text() == "a\nb"


@pytest.mark.parametrize(
    "value",
    [
        CONTEXT,
        WorkItem("r1", "_INBOX.x", "code", "r0", 0.0, 1.0, b'{"messages":[]}', CONTEXT,
                 DecisionPath.STICKY, CacheClass.PREFIX_HIT),
    ],
)
def test_msgpack_types_round_trip(value):
    if isinstance(value, RoutingContext):
        assert codec.decode_context(codec.encode_context(value)) == value
    else:
        assert codec.decode_work(codec.encode_work(value)) == value


@pytest.mark.parametrize(
    "reply",
    [
        Chunk("r1", 0, "hel"),
        Chunk("r1", 3, "lo", "stop", Usage(5, 4, 2), restarted=True, model="code", replica="r0"),
        ErrorReply("r1", "overloaded", "every queue is full"),
    ],
)
def test_replies_round_trip_through_one_decoder(reply):
    assert codec.decode_reply(codec.encode_reply(reply)) == reply


def test_heartbeat_is_readable_json():
    beat = Heartbeat(model="code", replica="r0", capacity=8, in_flight=2, warm=True)
    raw = codec.encode_heartbeat(beat)
    assert msgspec.json.decode(raw)["replica"] == "r0"
    assert codec.decode_heartbeat(raw) == beat


def test_context_field_order_is_the_wire_format():
    # Appending fields is allowed; reordering is not. An old 11-field context still decodes.
    old = msgspec.msgpack.encode([120, 3, 3, 6, 3, 42, [1, 2, 3], 2, 0.75, "", 64])
    decoded = codec.decode_context(old)
    assert decoded.prompt_tokens == 120 and decoded.scorer_class == TaskClass.GENERAL


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{not json", "malformed"),
        (b'{"messages": "hi"}', "$.messages"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}', "$.max_tokens"),
        (b'{"messages": [{"role": "user", "content": "\xff"}]}', "UTF-8"),
        (b"[1,2]", "object"),
    ],
)
def test_bad_requests_raise_bad_message_naming_the_problem(payload, needle):
    with pytest.raises(BadMessage) as info:
        codec.decode_request(payload, "slm.ingress")
    assert needle.lower() in str(info.value).lower()
    assert info.value.subject == "slm.ingress"


def test_bad_message_truncates_the_payload():
    with pytest.raises(BadMessage) as info:
        codec.decode_request(b"x" * 10_000, "s")
    assert len(info.value.payload_preview) <= 120
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("bad", [-1, 1 << 63])  # msgpack ends at 2**64 - 1
def test_a_placement_record_with_a_hash_outside_63_bits_is_refused_at_decode(bad: int) -> None:
    # Records come from other routers over the wire; a router's prefix memory takes only
    # 63-bit hashes, so a bad one must fail here (the router logs and skips the record).
    good = PlacementRecord("router-a", "m", "r0", 10, 7, (1, (1 << 63) - 1))
    assert codec.decode_placement(codec.encode_placement(good)) == good
    payload = codec.encode_placement(PlacementRecord("router-a", "m", "r0", 10, 7, (1, bad)))
    with pytest.raises(BadMessage, match=r"bad placement record.*Expected `int` [<>]= .* at `\$\[5\]\[1\]`"):
        codec.decode_placement(payload)


@pytest.mark.parametrize(("weight", "session_hash", "where"), [(-1, 7, r"\$\[3\]"), (10, -1, r"\$\[4\]"),
                                                              (10, 1 << 63, r"\$\[4\]")])
def test_a_placement_record_with_a_negative_weight_or_a_bad_session_hash_is_refused(
        weight: int, session_hash: int, where: str) -> None:
    # A negative weight would take load off a replica that never had it.
    payload = codec.encode_placement(PlacementRecord("router-a", "m", "r0", weight, session_hash, (1,)))
    with pytest.raises(BadMessage, match=r"bad placement record.*Expected `int` [<>]= .* at `" + where + "`"):
        codec.decode_placement(payload)
