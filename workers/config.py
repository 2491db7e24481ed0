"""Worker settings, read from SLM_* variables (see subjects.env); CLI flags override.

Admission (how much work a replica takes, how long work may wait) differs per model:
``MODEL_ADMISSION`` holds the defaults per model name, and ``load_worker_config`` applies
them under any ``SLM_*`` variable or flag that sets the same field explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from subjects.env import env_name, read_config
from subjects.names import slug
from subjects.settings import ACK_WAIT_SECONDS


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = "slm"
    model: str = "general"
    replica: str = "r0"
    engine: str = "sim"  # sim | vllm
    # ---- admission (per-model defaults: MODEL_ADMISSION) ----
    # Sequences this replica works on at once: its pull credits and its consumer's
    # max_ack_pending, so JetStream itself never hands it more.
    max_inflight: int = 8
    # At most this many messages per pull request (smaller = fairer between replicas).
    fetch_batch: int = 8
    queue_bound: int = 64  # messages one replica subject may hold; must match the routers'
    # Work that waited in the queue longer than this is answered deadline_exceeded.
    max_queue_delay: float = 0.0  # 0 = no limit
    # ---- pulling and acks ----
    # A lingering pull on the replica's own subject lasts this long before the worker
    # checks the model's shared .any queue again.
    idle_poll: float = 0.1
    ack_wait: float = ACK_WAIT_SECONDS  # JetStream redelivers un-acked work after this
    in_progress_interval: float = 0.0  # 0 = ack_wait / 3; must stay well inside ack_wait
    retry_delay: float = 1.0  # nak delay for a retryable engine failure
    # nak delay when handing work back (shutdown, dead engine): longer than idle_poll, so
    # this worker's last open pulls have expired and another replica gets it.
    release_delay: float = 1.0
    any_max_ack_pending: int = 10_000  # the shared .any consumer: each worker's credits bound it
    # ---- streaming ----
    # After the first chunk (sent at once), deltas are gathered into one chunk until this
    # many seconds have passed since the last one went out (vLLM's stream_interval, in
    # time): every chunk costs a publish, a server hop and a decode however few tokens it
    # carries. 0 = one chunk per engine delta. A delta waits at most until the first one
    # that arrives this long after the last chunk; the final chunk carries the rest at once.
    stream_interval: float = 0.0
    # ---- life cycle ----
    grace_seconds: float = 10.0  # SIGTERM: time to finish in-flight work
    warmup: bool = True  # run one request through the engine before reporting warm
    stream_replicas: int = 1
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"  # address /metrics listens on (all interfaces: containers)
    # ---- simulated engine only ----
    sim_time_scale: float = 1.0
    sim_cache_blocks: int = 4096
    # ---- vLLM engine only (workers.vllm_engine) ----
    model_path: str = ""  # a local Hugging Face model folder (or hub id where one is reachable)
    dtype: str = "auto"  # "float32" on CPUs without bf16
    max_num_seqs: int = 0  # 0 = max_inflight
    max_model_len: int = 0  # 0 = the model's own limit
    kv_cache_gib: float = 0.0  # KV-cache size; 0 = the engine's default (GPU: memory utilisation)
    block_size: int = 0  # KV block size in tokens; 0 = the engine's default
    enforce_eager: bool = False  # skip graph capture / compilation (faster start, slower steps)
    gpu_memory_utilization: float = 0.9
    # More model names served by the same engine in this process: one vLLM engine behind
    # several names on a machine too small for one engine per model (``up --engine vllm``).
    extra_models: tuple[str, ...] = ()

    @property
    def in_progress_every(self) -> float:
        return self.in_progress_interval or self.ack_wait / 3


class ModelAdmission(msgspec.Struct, frozen=True):
    """How much work one replica of a model takes and how long that work may wait."""

    max_inflight: int
    fetch_batch: int
    queue_bound: int
    max_queue_delay: float  # seconds; 0 = no limit


ADMISSION_FIELDS = tuple(f.name for f in msgspec.structs.fields(ModelAdmission))

# Short, structured outputs (extraction, moderation) batch wide: many sequences at once,
# big pulls, deep queues, and a patient queue delay — throughput is what they need.
# Interactive reasoning answers are long and a person waits for them: few at once, one
# message per pull (the next one may fit another replica better), a shallow queue and a
# tight queue delay, so a request that cannot start soon fails fast and is retried
# elsewhere instead of rotting in a queue.
MODEL_ADMISSION: dict[str, ModelAdmission] = {
    "extraction": ModelAdmission(max_inflight=32, fetch_batch=16, queue_bound=256, max_queue_delay=30.0),
    "safety": ModelAdmission(max_inflight=32, fetch_batch=16, queue_bound=256, max_queue_delay=10.0),
    "code": ModelAdmission(max_inflight=16, fetch_batch=4, queue_bound=64, max_queue_delay=10.0),
    "general": ModelAdmission(max_inflight=16, fetch_batch=4, queue_bound=64, max_queue_delay=10.0),
    "reasoning": ModelAdmission(max_inflight=4, fetch_batch=1, queue_bound=16, max_queue_delay=2.0),
}


def admission_for(model: str) -> ModelAdmission:
    """The model's admission defaults; an unknown model gets WorkerConfig's own defaults."""
    found = MODEL_ADMISSION.get(model)
    if found is not None:
        return found
    base = WorkerConfig()
    return ModelAdmission(base.max_inflight, base.fetch_batch, base.queue_bound, base.max_queue_delay)


def load_worker_config(environ: Mapping[str, str], **flags: Any) -> WorkerConfig:
    """Defaults, then the model's admission row, then ``SLM_*`` variables, then flags."""
    config = read_config(WorkerConfig, environ, **flags)
    row = admission_for(config.model)
    explicit = {name for name in ADMISSION_FIELDS
                if environ.get(env_name(name)) or flags.get(name) is not None}
    defaults = {name: getattr(row, name) for name in ADMISSION_FIELDS if name not in explicit}
    return msgspec.structs.replace(config, **defaults)


def replica_from_hostname(hostname: str) -> str:
    """A replica id from the host name, for workers started without SLM_REPLICA.

    Under ``docker compose up --scale worker-code=3`` every container runs the same
    command with the same environment, but each has its own host name (its container id),
    so the replicas get distinct ids and so distinct queues and consumers.
    """
    token = slug(hostname) if any(c.isalnum() for c in hostname) else ""
    return token[:64] or "r0"
