"""Every subject, stream, consumer, bucket and header name in the fabric.

Nothing outside this module builds a NATS name by hand: a rename here is a rename
everywhere, and the parsers below are the only place that knows the token layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "slm"

# Application headers carry an Slm- prefix; Nats-* belongs to the server.
HEADER_MSG_ID = "Nats-Msg-Id"  # JetStream de-duplication key (= request id)
HEADER_TTL = "Nats-TTL"  # per-message TTL (nats-server >= 2.11, stream allow_msg_ttl)
HEADER_REPLY = "Slm-Reply"  # the client's inbox when the request travels through a stream
HEADER_REQUEST_ID = "Slm-Request-Id"
# Where a dead-lettered message came from (the dead-letter stream keeps it for people).
HEADER_DEAD_STREAM = "Slm-Dead-Stream"
HEADER_DEAD_SEQUENCE = "Slm-Dead-Sequence"
HEADER_DEAD_REASON = "Slm-Dead-Reason"
# Set on work a router moved off a dead replica's queue after that replica had been given
# it: the first attempt may have streamed, so the worker should flag its first chunk
# ``restarted`` (as it does for a JetStream redelivery) for the client to reset.
HEADER_RESTARTED = "Slm-Restarted"

# JetStream's own advisory when a message used up its consumer's max_deliver.
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
MAX_REPLY_SUBJECT_LENGTH = 256

ROUTER_QUEUE_GROUP = "routers"
REPLICA_BUCKET = "slm-replicas"
ANY_REPLICA = "any"  # the spill-over token in slm.work.<model>.any

# One NATS token: no dots, wildcards or whitespace. Model ids are slugged into this.
_TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SLUG_DROP_RE = re.compile(r"[^a-z0-9]+")


class BadName(ValueError):
    """Raised when a name or subject does not fit the fabric's layout; not recoverable."""


def slug(model_id: str) -> str:
    """Map any model id (``Qwen/Qwen2.5-0.5B``) to one lower-case subject token."""
    token = _SLUG_DROP_RE.sub("-", model_id.lower()).strip("-")[:64]
    if not token:
        raise BadName(f"model id {model_id!r} has no letters or digits to name it by")
    return token


def is_token(text: str) -> bool:
    """True when ``text`` is usable as one subject token (a slug or replica id)."""
    return bool(_TOKEN_RE.match(text))


def check_token(kind: str, text: str) -> str:
    if not is_token(text):
        raise BadName(
            f"{kind} {text!r} is not one subject token (a-z, 0-9, '-' or '_', at most 64)"
        )
    return text


@dataclass(frozen=True, slots=True)
class WorkAddress:
    """Where a work subject points: a model and either a replica or the spill-over queue."""

    model: str
    replica: str  # ANY_REPLICA for the shared spill-over consumer

    @property
    def is_any(self) -> bool:
        return self.replica == ANY_REPLICA


@dataclass(frozen=True, slots=True)
class Names:
    """Builders and parsers for one deployment's names, under a configurable prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        for part in self.prefix.split("."):
            check_token("prefix part", part)

    # ---- subjects -------------------------------------------------------------------
    @property
    def ingress(self) -> str:
        return f"{self.prefix}.ingress"

    @property
    def durable_ingress(self) -> str:
        """Subject of the SLM_INGRESS stream, for batch clients that must not lose work."""
        return f"{self.prefix}.ingress.durable"

    def work(self, model: str, replica: str) -> str:
        return f"{self.prefix}.work.{check_token('model', model)}.{check_token('replica', replica)}"

    def work_any(self, model: str) -> str:
        return self.work(model, ANY_REPLICA)

    def work_wildcard(self, model: str) -> str:
        return f"{self.prefix}.work.{check_token('model', model)}.>"

    def cancel(self, request_id: str) -> str:
        return f"{self.prefix}.cancel.{check_token('request id', request_id)}"

    @property
    def cancel_wildcard(self) -> str:
        return f"{self.prefix}.cancel.*"

    @property
    def placements(self) -> str:
        """Core subject every router publishes its placements to and every router hears."""
        return f"{self.prefix}.placements"

    @property
    def inbox_prefix(self) -> str:
        """Client inboxes live under here so a least-privilege client can own one prefix."""
        return f"_INBOX_{self.prefix}"

    def parse_work(self, subject: str) -> WorkAddress:
        head = f"{self.prefix}.work."
        if not subject.startswith(head):
            raise BadName(f"{subject!r} is not a work subject under {self.prefix!r}")
        parts = subject[len(head) :].split(".")
        if len(parts) != 2 or not all(is_token(p) for p in parts):
            raise BadName(f"{subject!r} is not <prefix>.work.<model>.<replica>")
        return WorkAddress(model=parts[0], replica=parts[1])

    def parse_cancel(self, subject: str) -> str:
        head = f"{self.prefix}.cancel."
        rest = subject[len(head) :] if subject.startswith(head) else ""
        if not is_token(rest):
            raise BadName(f"{subject!r} is not <prefix>.cancel.<request id>")
        return rest

    # ---- JetStream objects ------------------------------------------------------------
    def work_stream(self, model: str) -> str:
        """SLM_WORK_<MODEL>: streams are UPPER_SNAKE."""
        stem = self.prefix.upper().replace(".", "_").replace("-", "_")
        return f"{stem}_WORK_{check_token('model', model).upper().replace('-', '_')}"

    @property
    def ingress_stream(self) -> str:
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_INGRESS"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_DEAD"

    def replica_consumer(self, model: str, replica: str) -> str:
        """Durable pull consumer of one replica's sticky subject (lower-case-dashed)."""
        return f"{check_token('model', model)}-{check_token('replica', replica)}".replace("_", "-")

    def any_consumer(self, model: str) -> str:
        return f"{check_token('model', model)}-{ANY_REPLICA}".replace("_", "-")

    @property
    def ingress_consumer(self) -> str:
        return "routers"

    # ---- registry ----------------------------------------------------------------------
    @property
    def replica_bucket(self) -> str:
        return REPLICA_BUCKET if self.prefix == DEFAULT_PREFIX else f"{slug(self.prefix)}-replicas"

    def replica_key(self, model: str, replica: str) -> str:
        """KV keys are dotted: <model>.<replica>."""
        return f"{check_token('model', model)}.{check_token('replica', replica)}"

    def parse_replica_key(self, key: str) -> tuple[str, str]:
        parts = key.split(".")
        if len(parts) != 2 or not all(is_token(p) for p in parts):
            raise BadName(f"{key!r} is not a replica key <model>.<replica>")
        return parts[0], parts[1]

    # ---- reliability and security --------------------------------------------------------
    def dead_letter(self, stream: str) -> str:
        """Subject in the dead-letter stream for messages that came from ``stream``."""
        return f"{self.prefix}.dead.{check_token('stream', stream.lower())}"

    @property
    def dead_letter_wildcard(self) -> str:
        return f"{self.prefix}.dead.>"

    def max_deliveries_advisory(self, stream: str = "*", consumer: str = "*") -> str:
        """``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``."""
        return f"{MAX_DELIVERIES_ADVISORY}.{stream}.{consumer}"

    def client_inbox_prefix(self, client: str) -> str:
        """One client user's inboxes: a least-privilege server lets it read only these."""
        return f"{self.inbox_prefix}.{check_token('client', client)}"

    def reply_problem(self, reply: str) -> str | None:
        """Why ``reply`` must not be used as a reply subject, or None when it is fine.

        The router and workers publish to whatever reply subject a request carries, with
        their own permissions: a reply subject inside the fabric (a work queue) or a system
        API (``$JS.API...``) would turn them into a confused deputy.
        """
        if not reply:
            return "no reply subject"
        if len(reply) > MAX_REPLY_SUBJECT_LENGTH:
            return f"reply subject is longer than {MAX_REPLY_SUBJECT_LENGTH} characters"
        tokens = reply.split(".")
        if any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
            return f"reply subject {reply[:80]!r} is not a literal subject"
        if reply.startswith("$"):
            return "system subjects ($JS, $KV, $SYS …) cannot be reply subjects"
        if reply.startswith(self.prefix + ".") or reply == self.prefix:
            return f"subjects under {self.prefix!r} belong to the fabric and cannot be reply subjects"
        return None


JS_API_PREFIX = "$JS.API"


def pull_next_subject(stream: str, consumer: str, api_prefix: str = JS_API_PREFIX) -> str:
    """JetStream's API subject a pull request for ``consumer`` on ``stream`` is sent to."""
    return f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
