"""Router metrics on an injected registry: base units, slm_ prefix, no per-request labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from subjects.messages import CacheClass, DecisionPath, ErrorCode

# Decision stages take microseconds; the publish hop takes fractions of a millisecond.
_DECISION_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3)
_HOP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.25, 1.0)
STAGES = ("context", "model", "replica", "total")


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
        self.unanswerable = Counter(
            "slm_router_unanswerable_total", "Ingress messages without a reply subject.",
            registry=registry,
        )
        self.replicas_live = Gauge(
            "slm_router_replicas_live", "Replicas with a fresh heartbeat, by model.", ["model"],
            registry=registry,
        )
        for code in ErrorCode:
            self.errors.labels(code.value)
        for stage in STAGES:
            self.decision_seconds.labels(stage)
        self._paths = {p: p.name.lower() for p in DecisionPath}
        self._caches = {c: c.name.lower() for c in CacheClass}

    def decided(self, model: str, task_class: str, path: DecisionPath, cache: CacheClass) -> None:
        self.decisions.labels(model, task_class, self._paths[path], self._caches[cache]).inc()
