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
    durable: str, filter_subject: str, max_ack_pending: int
) -> dict[str, Any]:
    return {
        "durable_name": durable,
        "filter_subject": filter_subject,
        "ack_policy": "explicit",
        "ack_wait": ACK_WAIT_SECONDS,
        "max_deliver": MAX_DELIVER,
        "max_ack_pending": max_ack_pending,
        "deliver_policy": "all",
    }


def replica_bucket_config(names: Names, replicas: int = 1) -> dict[str, Any]:
    """Registry bucket: the last heartbeat per replica; old entries age out on their own."""
    return {
        "bucket": names.replica_bucket,
        "history": 1,
        "ttl": REPLICA_TTL_SECONDS * 4,
        "storage": "memory",
        "replicas": replicas,
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
