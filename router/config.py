"""Router settings, read from SLM_* variables (see subjects.env); CLI flags override."""

from __future__ import annotations

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
    # ---- model choice (router.rules, router.scorer) -----------------------------------
    rules_path: str = ""  # rules TOML; "" = the shipped router/data/rules.toml
    rules_poll: float = 2.0  # seconds between checks of the rules file's mtime; 0 = SIGHUP only
    scorer_path: str = ""  # scorer model file; "" = the shipped router/data/scorer.msgpack.z
    session_capacity: int = 100_000  # sessions the sticky-session table remembers (LRU)
    decision_log: str = ""  # append every decision to this file (router.decision_log); "" = off
