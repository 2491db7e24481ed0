"""Router metrics on an injected registry: base units, slm_ prefix, no per-request labels.

Every label value comes from a small closed set (stage, model, task class, decision path,
cache class, error code, shed reason, replica state), so the series count is bounded by
the fleet's shape, never by traffic. The README's Operations section explains each one.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from subjects.messages import CacheClass, DecisionPath, ErrorCode, Heartbeat

# Decision stages take microseconds; the publish hop takes fractions of a millisecond.
_DECISION_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3)
_HOP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0)
STAGES = ("context", "model", "replica", "total")
# Requests refused for want of capacity or time, as opposed to bad input: the reasons an
# operator adds replicas or raises a bound for.
SHED_REASONS: dict[ErrorCode, str] = {
    ErrorCode.OVERLOADED: "overloaded",  # every queue of the model was full
    ErrorCode.NO_REPLICA: "no_replica",  # no live replica serves the model
    ErrorCode.DEADLINE_EXCEEDED: "deadline",  # the deadline had passed on arrival
}
REPLICA_STATES = ("warm", "cold", "draining")


def replica_state(beat: Heartbeat) -> str:
    """One word for a replica's heartbeat: draining wins over warm/cold."""
    if beat.draining:
        return "draining"
    return "warm" if beat.warm else "cold"


def package_version() -> str:
    try:
        return metadata.version("slm-fabric")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decision_seconds = Histogram(
            "slm_router_decision_seconds", "Time to decide, by stage.", ["stage"],
            registry=registry, buckets=_DECISION_BUCKETS,
        )
        self.hop_seconds = Histogram(
            "slm_router_hop_seconds", "Ingress receipt to work-queue publish acknowledged.",
            registry=registry, buckets=_HOP_BUCKETS,
        )
        self.decisions = Counter(
            "slm_router_decisions_total", "Requests routed, by model, task class, path and cache class.",
            ["model", "task_class", "path", "cache_class"], registry=registry,
        )
        self.errors = Counter(
            "slm_router_errors_total", "Error replies sent, by code.", ["code"], registry=registry,
        )
        self.shed = Counter(
            "slm_router_shed_total", "Requests refused for want of capacity or time, by reason.",
            ["reason"], registry=registry,
        )
        self.queue_full = Counter(
            "slm_router_queue_full_total",
            "Publishes a full replica queue refused; the router then tried the next replica.",
            ["model"], registry=registry,
        )
        self.unanswerable = Counter(
            "slm_router_unanswerable_total", "Ingress messages without a reply subject.",
            registry=registry,
        )
        self.replicas_live = Gauge(
            "slm_router_replicas_live", "Replicas with a fresh heartbeat, by model.", ["model"],
            registry=registry,
        )
        self.replicas = Gauge(
            "slm_router_replicas", "Live replicas by model and state (warm, cold, draining).",
            ["model", "state"], registry=registry,
        )
        self.inbox_depth = Gauge(
            "slm_router_inbox_depth", "Ingress messages taken in but not yet picked up by a routing task.",
            registry=registry,
        )
        Info("slm_build", "Version of the running code.", registry=registry).info(
            {"component": "router", "version": package_version(), "python": platform.python_version()}
        )
        for code in ErrorCode:
            self.errors.labels(code.value)
        for reason in SHED_REASONS.values():
            self.shed.labels(reason)
        # Children bound once: labels() costs ~2 us a call here (a lock and a dict walk),
        # and these run on every request.
        self.stage_seconds = {stage: self.decision_seconds.labels(stage) for stage in STAGES}
        self._paths = {p: p.name.lower() for p in DecisionPath}
        self._caches = {c: c.name.lower() for c in CacheClass}
        self._decision_counts: dict[tuple[str, str, DecisionPath, CacheClass], Any] = {}

    def decided(self, model: str, task_class: str, path: DecisionPath, cache: CacheClass) -> None:
        key = (model, task_class, path, cache)
        counter = self._decision_counts.get(key)
        if counter is None:  # bounded: served models x task classes x paths x cache classes
            counter = self._decision_counts[key] = self.decisions.labels(
                model, task_class, self._paths[path], self._caches[cache])
        counter.inc()

    def rejected(self, code: ErrorCode) -> None:
        """An error reply went out: count it, and as shed load when capacity or time ran out."""
        self.errors.labels(code.value).inc()
        reason = SHED_REASONS.get(code)
        if reason is not None:
            self.shed.labels(reason).inc()

    def replicas_seen(self, model: str, beats: Iterable[Heartbeat]) -> None:
        """Set the live-replica gauges of ``model`` from its current heartbeats."""
        self.queue_full.labels(model)  # a served model's series exists before its first refusal
        counts = dict.fromkeys(REPLICA_STATES, 0)
        for beat in beats:
            counts[replica_state(beat)] += 1
        self.replicas_live.labels(model).set(sum(counts.values()))
        for state, count in counts.items():
            self.replicas.labels(model, state).set(count)

    def watch_inbox(self, depth: Callable[[], float]) -> None:
        """Read the inbox depth when scraped: no cost on the request path."""
        self.inbox_depth.set_function(depth)
