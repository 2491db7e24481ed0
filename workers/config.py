"""Worker settings, read from SLM_* variables (see subjects.env); CLI flags override."""

from __future__ import annotations

import msgspec

from subjects.names import slug


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = "slm"
    model: str = "general"
    replica: str = "r0"
    engine: str = "sim"  # sim | vllm
    # Admission: sequences this replica works on at once (its pull credits).
    max_inflight: int = 8
    queue_bound: int = 64  # must match the routers' bound for the stream
    # A lingering pull on the replica's own subject lasts this long before the worker
    # checks the model's shared .any queue again.
    idle_poll: float = 0.1
    # Work that waited in the queue longer than this is answered deadline_exceeded.
    max_queue_delay: float = 0.0  # 0 = no limit
    retry_delay: float = 1.0  # nak delay for a retryable engine failure
    grace_seconds: float = 10.0  # SIGTERM: time to finish in-flight work
    stream_replicas: int = 1
    metrics_port: int = 0
    # Simulated engine only.
    sim_time_scale: float = 1.0
    sim_cache_blocks: int = 4096
    metrics_host: str = "0.0.0.0"  # address /metrics listens on (all interfaces: containers)
    model_path: str = ""  # vLLM engine: a local Hugging Face model folder


def replica_from_hostname(hostname: str) -> str:
    """A replica id from the host name, for workers started without SLM_REPLICA.

    Under ``docker compose up --scale worker-code=3`` every container runs the same
    command with the same environment, but each has its own host name (its container id),
    so the replicas get distinct ids and so distinct queues and consumers.
    """
    token = slug(hostname) if any(c.isalnum() for c in hostname) else ""
    return token[:64] or "r0"
