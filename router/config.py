"""Router settings, read from SLM_* variables (see subjects.env); CLI flags override."""

from __future__ import annotations

from typing import Annotated

import msgspec


class RouterConfig(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = "slm"
    # Messages one replica's sticky subject may hold (queued + in flight) before the
    # stream refuses more and the router tries the next replica.
    queue_bound: int = 64
    max_request_bytes: int = 1_048_576
    # Requests one router process decides and publishes at once.
    concurrency: int = 256
    replica_ttl: float = 3.5
    stream_replicas: int = 1
    metrics_port: int = 0  # 0 = no /metrics endpoint
    models: tuple[str, ...] = ()  # empty = the rule set's models
    metrics_host: str = "0.0.0.0"  # address /metrics listens on (all interfaces: containers)
    # A work queue that refused a publish is skipped for this long (router.backpressure),
    # so a burst is shed at once instead of one JetStream round trip per refusal.
    full_queue_memory: float = 0.05
    # ---- input limits: a request past one is refused with an error naming it ----------
    max_messages: int = 1_024  # chat messages in one request
    max_tokens_limit: int = 32_768  # the largest max_tokens a request may ask for
    # ---- durable ingress (SLM_INGRESS) for batch clients ----------------------------
    durable_ingress: bool = True  # also serve requests from the SLM_INGRESS stream
    ingress_max_msgs: int = 100_000  # the stream refuses new requests past this many
    ingress_max_bytes: int = 1_073_741_824
    ingress_ack_wait: float = 30.0  # a router that took a request and died: redelivered after this
    ingress_max_deliver: int = 5
    ingress_batch: int = 32  # durable requests one router pulls and routes at once
    ingress_retry_delay: float = 1.0  # no replica / overloaded: offer the request again after this
    # ---- dead letters (SLM_DEAD) ------------------------------------------------------
    # Work that used up its deliveries is copied to SLM_DEAD, removed from its queue (a
    # WorkQueue stream would keep it forever) and its client gets redelivery_exhausted.
    dead_letter: bool = True
    dead_letter_max_age: float = 604_800.0  # a week
    dead_letter_max_bytes: int = 1_073_741_824
    # ---- model choice (router.rules, router.scorer) -----------------------------------
    rules_path: str = ""  # rules TOML; "" = the shipped router/data/rules.toml
    rules_poll: float = 2.0  # seconds between checks of the rules file's mtime; 0 = SIGHUP only
    scorer_path: str = ""  # scorer model file; "" = the shipped router/data/scorer.msgpack.z
    session_capacity: int = 100_000  # sessions the sticky-session table remembers (LRU)
    decision_log: str = ""  # append every decision to this file (router.decision_log); "" = off
    # ---- replica choice (router.replicas; defaults from the offline replay) -------------
    load_epsilon: float = 0.1  # no replica above (1 + this) × the mean load …
    move_cost: float = 12.0  # … except by this × the prompt tokens of the request it holds …
    free_move_tokens: int = 3072  # … past this many (moving a short prefix costs little)
    decode_weight: float = 32.0  # prompt-token equivalents of one output token in a load
    load_cost: float = 0.01  # a candidate's cost: tokens to prefill + this × its load
    ring_choices: int = 4  # ring candidates for a new prefix
    saturation: float = 2.0  # a replica with this × its capacity outstanding takes no more
    # Prefix hashes the placement memory keeps; its C map takes at most 2**32 and
    # allocates for all of them (24 bytes a hash, three times: README, Known limits).
    placement_capacity: Annotated[int, msgspec.Meta(ge=2, le=1 << 32)] = 1_048_576
    # Seconds between reads of each work stream's per-subject counts (the load sample);
    # 0 = use the heartbeats' in-flight counts instead (blind to messages still queued).
    load_sample_interval: float = 0.5
    # Seconds a dead or draining replica's own queue is watched and moved to .any: past
    # the consumer's ack_wait, so work the dead worker held comes back and moves too.
    move_window: float = 45.0
