"""The msgspec wire types both sides import.

Hot-path types (the routing context, work items, reply chunks) are frozen, array-like and
untracked by the GC: their field order *is* the format, so new fields go at the end with a
default. Low-rate types that people read (requests written by clients, heartbeats) stay
map-encoded. No type forbids unknown fields: an older reader must accept a newer writer.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Union

import msgspec

# ------------------------------------------------------------------------------------
# Categorical fields
# ------------------------------------------------------------------------------------


class TaskClass(enum.IntEnum):
    """The five kinds of work the fleet has a specialised model for."""

    EXTRACTION = 0
    CODE = 1
    REASONING = 2
    SAFETY = 3
    GENERAL = 4


class DecisionPath(enum.IntEnum):
    """Which stage of the policy settled the model: every decision carries one."""

    RULE = 0
    SCORER = 1
    STICKY = 2
    EXPLICIT = 3
    FALLBACK = 4


class CacheClass(enum.IntEnum):
    """Why the chosen replica was chosen, for the cache-hit metrics."""

    COLD = 0
    SESSION_STICKY = 1
    PREFIX_HIT = 2
    SPILL = 3  # the model's shared .any queue


class Structured(enum.IntEnum):
    NONE = 0
    JSON_TEXT = 1  # the prompt demands JSON only
    RESPONSE_FORMAT = 2
    TOOLS = 3


class Script(enum.IntEnum):
    """Dominant writing system of the prompt (a cheap stand-in for language)."""

    LATIN = 0
    CYRILLIC = 1
    GREEK = 2
    ARABIC = 3
    HEBREW = 4
    DEVANAGARI = 5
    CJK = 6
    HANGUL = 7
    KANA = 8
    THAI = 9
    OTHER = 10


class SafetyCategory(enum.IntEnum):
    NONE = 0
    VIOLENCE = 1
    WEAPONS = 2
    CYBER = 3
    SELF_HARM = 4
    HATE = 5
    SEXUAL = 6
    DRUGS = 7
    FRAUD = 8


class ErrorCode(enum.Enum):
    """Stable error codes a client may branch on. Values are the wire strings."""

    BAD_REQUEST = "bad_request"  # the request itself is wrong: fix it, do not retry
    UNKNOWN_MODEL = "unknown_model"  # an explicit model the fleet does not serve
    TOO_LARGE = "too_large"  # payload over the configured limit
    OVERLOADED = "overloaded"  # every queue for the model is full: retry later
    NO_REPLICA = "no_replica"  # no live replica serves the model: retry later
    DEADLINE_EXCEEDED = "deadline_exceeded"  # the deadline passed before work started
    ENGINE_ERROR = "engine_error"  # the engine failed this request
    CANCELLED = "cancelled"  # the client cancelled
    REDELIVERY_EXHAUSTED = "redelivery_exhausted"  # every delivery attempt failed
    INTERNAL = "internal"
    # The request id was already accepted within the de-duplication window. To a client
    # retrying its own request this means "accepted, keep waiting"; to anyone else, "pick
    # another id" (the answer goes to the first requester's inbox).
    DUPLICATE_ID = "duplicate_id"
    NO_ROUTER = "no_router"  # nobody serves the ingress subject (client-side: NATS 503)


# ------------------------------------------------------------------------------------
# Client-facing request (OpenAI chat shape, JSON, map-encoded)
# ------------------------------------------------------------------------------------


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    # OpenAI allows a list of content parts; only text parts matter to routing.
    content: Union[str, list[dict[str, Any]], None] = None
    name: Union[str, None] = None
    tool_call_id: Union[str, None] = None
    tool_calls: Union[list[dict[str, Any]], None] = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "\n".join(
            str(part.get("text", "")) for part in self.content if isinstance(part, dict)
        )


class ChatRequest(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a client publishes to the ingress subject.

    ``model="auto"`` (the default) lets the router choose. ``id`` is the idempotency key:
    a retry carries the same id and JetStream de-duplicates it. ``deadline`` is a Unix
    time in seconds after which the work is not worth starting.
    """

    messages: list[ChatMessage]
    model: str = "auto"
    max_tokens: Union[int, None] = None
    temperature: Union[float, None] = None
    top_p: Union[float, None] = None
    stop: Union[str, list[str], None] = None
    seed: Union[int, None] = None
    response_format: Union[dict[str, Any], None] = None
    tools: Union[list[dict[str, Any]], None] = None
    stream: bool = True
    user: Union[str, None] = None  # session / user id: the sticky-session key
    session_id: Union[str, None] = None  # preferred over ``user`` when both are given
    id: Union[str, None] = None
    deadline: Union[float, None] = None

    @property
    def session(self) -> Union[str, None]:
        return self.session_id or self.user


# ------------------------------------------------------------------------------------
# Router → worker (internal, hot path, msgpack)
# ------------------------------------------------------------------------------------


class RoutingContext(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Everything the policy reads about a request, as primitives.

    Computed once per request from its text and fields; a logged context replays to the
    same decision because the policy reads nothing else.
    """

    prompt_tokens: int  # estimated, no tokenizer call
    code_markers: int  # bit set of router.context.CodeMarker
    structured: Structured
    script: Script
    safety: SafetyCategory
    session_hash: int  # 0 when the request names no session
    prefix_hashes: tuple[int, ...]  # cumulative hashes of the prompt at growing depths
    prefix_seen_depth: int  # how many of prefix_hashes this router saw recently
    complexity: float  # 0..1, from the offline-trained scorer
    requested_model: str  # "" when the router may choose
    max_tokens: int
    scorer_class: TaskClass = TaskClass.GENERAL  # the scorer's best guess
    scorer_confidence: float = 0.0
    safety_score: float = 0.0  # the scorer's probability that the request is unsafe


class Decision(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The policy's answer for one request."""

    model: str
    task_class: TaskClass
    path: DecisionPath
    replica: str  # a replica id or ANY_REPLICA
    cache_class: CacheClass = CacheClass.COLD


class WorkItem(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the router publishes onto a model's work stream.

    ``request`` is the client's JSON exactly as received: the worker decodes it once,
    and nobody re-encodes a prompt on the way.
    """

    request_id: str
    reply: str  # the client's inbox
    model: str
    replica: str
    deadline: float  # Unix seconds; 0 = none
    routed_at: float  # Unix seconds at the router, for queue-delay metrics
    request: bytes
    context: RoutingContext
    decision_path: DecisionPath = DecisionPath.RULE
    cache_class: CacheClass = CacheClass.COLD


# ------------------------------------------------------------------------------------
# Worker → client replies (JSON, array-like, tagged so one decoder reads both kinds)
# ------------------------------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True, array_like=True, gc=False):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class Chunk(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="c", omit_defaults=True):
    """One piece of a streamed answer. ``seq`` starts at 0 and has no gaps.

    The final chunk has a ``finish_reason`` and ``usage``. ``restarted`` is set on the
    first chunk of a redelivered request: the client discards what it had so far.
    ``replica`` and ``attempt`` (the work message's JetStream delivery count) name the run
    that made the chunk: when a slow run outlives its ack_wait, JetStream delivers the same
    work again and two runs stream at once; the client follows the newest one.
    """

    request_id: str
    seq: int
    delta: str
    finish_reason: Union[str, None] = None
    usage: Union[Usage, None] = None
    restarted: bool = False
    model: str = ""
    replica: str = ""
    attempt: int = 0

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


class ErrorReply(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="e"):
    """A request that ends in an error: a stable code and a message naming the problem."""

    request_id: str
    code: str  # an ErrorCode value
    message: str
    seq: int = 0


Reply = Union[Chunk, ErrorReply]


# ------------------------------------------------------------------------------------
# Registry (KV bucket, JSON, map-encoded: people read these)
# ------------------------------------------------------------------------------------


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A replica's state, written to the registry bucket every heartbeat interval."""

    model: str
    replica: str
    capacity: int  # concurrent sequences it serves at full speed
    in_flight: int = 0
    in_flight_tokens: int = 0
    queue_depth: int = 0
    kv_cache_usage: float = 0.0  # 0..1
    prefix_hit_rate: float = 0.0  # 0..1, as the engine reports it
    warm: bool = False
    draining: bool = False
    engine: str = "sim"
    sent_at: float = 0.0  # Unix seconds at the worker
    started_at: float = 0.0


# ------------------------------------------------------------------------------------
# Router → routers (core NATS, every router hears every other; hot path, msgpack)
# ------------------------------------------------------------------------------------


# A prefix or session hash is 63 bits (router.context.prefix_hashes, stable_hash). A
# placement record from the wire with any other value is refused when it is decoded,
# before a router's prefix memory (which refuses it too, with an error that would stop
# the router's record task) sees it; so is a negative weight, which would take load off
# a replica that never had it.
PrefixHash = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
TokenWeight = Annotated[int, msgspec.Meta(ge=0)]


class PlacementRecord(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One router's placement of one request, published for every other router to apply.

    A fact, not a command: applying it records that ``replica`` now holds these prefixes
    (and this session) and adds ``weight`` tokens to that replica's outstanding load, the
    same update the publishing router made. Applying it twice changes the prefix map not
    at all and the load estimate only until the replica's next load sample.
    """

    router: str  # the publishing router's instance id (a router skips its own records)
    model: str
    replica: str
    weight: TokenWeight  # token weight charged to the replica: prompt + expected output
    session_hash: PrefixHash  # 0 when the request named no session
    prefix_hashes: tuple[PrefixHash, ...]  # the request's chained prefix hashes, every depth
