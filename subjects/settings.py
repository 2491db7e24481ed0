"""JetStream settings of the fabric's streams, consumers and bucket, as plain data.

Both the router and the workers create what they need at start (idempotently), so either
may start first; they read the settings from here so the two can never disagree. Keys are
nats-py's ``StreamConfig`` / ``ConsumerConfig`` field names.
"""

from __future__ import annotations

from typing import Any

from subjects.names import Names

# How long JetStream remembers a Nats-Msg-Id: a client retry inside this window is a no-op.
DEDUP_WINDOW_SECONDS = 120.0
# A replica heartbeats this often; routers drop it after REPLICA_TTL without one.
HEARTBEAT_INTERVAL_SECONDS = 1.0
REPLICA_TTL_SECONDS = 3.5
# Un-acked work is redelivered after ACK_WAIT; workers send in-progress acks well inside it.
ACK_WAIT_SECONDS = 30.0
MAX_DELIVER = 5


def work_stream_config(
    names: Names, model: str, queue_bound: int, replicas: int = 1
) -> dict[str, Any]:
    """One WorkQueue stream per model, bounded per subject with discard-new-per-subject.

    A full replica subject refuses at publish time, so the router learns it at once and
    tries the next replica or sheds with ``overloaded``, rather than old work being dropped.
    """
    return {
        "name": names.work_stream(model),
        "subjects": [names.work_wildcard(model)],
        "retention": "workqueue",
        "max_msgs_per_subject": queue_bound,
        "discard": "new",
        "discard_new_per_subject": True,
        "duplicate_window": DEDUP_WINDOW_SECONDS,
        "storage": "file",
        "num_replicas": replicas,
        "allow_msg_ttl": True,
    }


def work_consumer_config(
    durable: str, filter_subject: str, max_ack_pending: int, *,
    ack_wait: float = ACK_WAIT_SECONDS, max_deliver: int = MAX_DELIVER,
) -> dict[str, Any]:
    return {
        "durable_name": durable,
        "filter_subject": filter_subject,
        "ack_policy": "explicit",
        "ack_wait": ack_wait,
        "max_deliver": max_deliver,
        "max_ack_pending": max_ack_pending,
        "deliver_policy": "all",
    }


def replica_bucket_config(names: Names, replicas: int = 1) -> dict[str, Any]:
    """Registry bucket: the last heartbeat per replica; old entries age out on their own.

    File storage, although it holds only seconds of state: a memory stream vanishes when
    the NATS server restarts, and nobody re-creates it — every heartbeat after the restart
    fails and routers drop the whole fleet. One small write per replica per second is cheap.
    """
    return {
        "bucket": names.replica_bucket,
        "history": 1,
        "ttl": REPLICA_TTL_SECONDS * 4,
        "storage": "file",
        "replicas": replicas,
    }


# ---- durable ingress and dead letters ---------------------------------------------------


def ingress_stream_config(
    names: Names, *, max_msgs: int, max_bytes: int, max_msg_size: int, replicas: int = 1
) -> dict[str, Any]:
    """SLM_INGRESS: requests from batch clients that must survive a moment with no router.

    WorkQueue retention (a request leaves once a router has routed or answered it), bounded
    with discard-new so a flood is refused at publish time instead of evicting accepted
    requests, and de-duplicated on the client's request id (``Nats-Msg-Id``).
    """
    return {
        "name": names.ingress_stream,
        "subjects": [names.durable_ingress],
        "retention": "workqueue",
        "max_msgs": max_msgs,
        "max_bytes": max_bytes,
        "max_msg_size": max_msg_size,
        "discard": "new",
        "duplicate_window": DEDUP_WINDOW_SECONDS,
        "storage": "file",
        "num_replicas": replicas,
    }


def ingress_consumer_config(
    names: Names, *, ack_wait: float, max_deliver: int, max_ack_pending: int
) -> dict[str, Any]:
    """The one durable pull consumer every router shares (JetStream spreads the work)."""
    return {
        "durable_name": names.ingress_consumer,
        "filter_subject": names.durable_ingress,
        "ack_policy": "explicit",
        "ack_wait": ack_wait,
        "max_deliver": max_deliver,
        "max_ack_pending": max_ack_pending,
        "deliver_policy": "all",
    }


def dead_letter_stream_config(
    names: Names, *, max_age: float, max_bytes: int, replicas: int = 1
) -> dict[str, Any]:
    """SLM_DEAD: messages that used up their deliveries, kept for people to inspect.

    Limits retention with discard-old: a dead-letter store must never refuse a message,
    so the oldest go first when it is full.
    """
    return {
        "name": names.dead_letter_stream,
        "subjects": [names.dead_letter_wildcard],
        "retention": "limits",
        "max_age": max_age,
        "max_bytes": max_bytes,
        "discard": "old",
        "storage": "file",
        "num_replicas": replicas,
    }


# JetStream API error codes the fabric branches on.
ERR_STREAM_NAME_IN_USE = 10058  # exists with a different configuration
ERR_MAX_MSGS_PER_SUBJECT = 10077  # discard-new-per-subject refused a publish
ERR_CONSUMER_EXISTS = 10148  # durable exists with a different configuration


async def ensure_stream(js: Any, config: dict[str, Any]) -> None:
    """Create the stream, or update it when it exists with other settings.

    ``js`` is a nats-py JetStreamContext, taken duck-typed so this package stays free of
    nats imports; routers and workers both call it, so either may start first.
    """
    try:
        await js.add_stream(**config)
    except Exception as exc:
        if getattr(exc, "err_code", None) != ERR_STREAM_NAME_IN_USE:
            raise
        await js.update_stream(**config)
