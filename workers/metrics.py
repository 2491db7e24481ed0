"""Worker metrics on an injected registry, labelled by model and replica only.

A replica's labels are fixed when it starts, so each series below exists once per replica
(times a small closed set: token kind, outcome, ack kind, error code). The README's
Operations section explains each one.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from subjects.messages import ErrorCode
from workers.engine import EngineStats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
OUTCOMES = ("done", "retry", "poison", "release")
# What each outcome sends to JetStream (the table in workers.outcomes): counted apart so a
# dashboard shows naks and terms without knowing the outcome names.
ACK_KIND = {"done": "ack", "retry": "nak", "poison": "term", "release": "nak"}


def package_version() -> str:
    try:
        return metadata.version("slm-fabric")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, replica: str) -> None:
        labels = {"model": model, "replica": replica}
        names = list(labels)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, registry=registry, buckets=buckets)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=registry)

        def counter(name: str, doc: str, extra: list[str]) -> Counter:
            return Counter(name, doc, names + extra, registry=registry)

        self.registry = registry
        self._ttft = hist("slm_worker_ttft_seconds", "Time to first token at the worker.", _LATENCY_BUCKETS)
        self._tpot = hist("slm_worker_time_per_output_token_seconds",
                          "Decode time per output token after the first.", _TOKEN_BUCKETS)
        self._e2e = hist("slm_worker_request_seconds", "Start of generation to final chunk.", _LATENCY_BUCKETS)
        self._queue = hist("slm_worker_queue_seconds", "Routed to picked up by this worker.", _LATENCY_BUCKETS)
        self._tokens = counter("slm_worker_tokens_total", "Tokens processed, by kind.", ["kind"])
        self._outcomes = counter("slm_worker_outcomes_total", "Settled messages by JetStream outcome.", ["outcome"])
        self._acks = counter("slm_worker_acks_total",
                             "Acknowledgements sent to JetStream, by kind (ack, nak, term).", ["kind"])
        self._errors = counter("slm_worker_errors_total", "Error replies sent, by code.", ["code"])
        self._redeliveries = Counter("slm_worker_redeliveries_total",
                                     "Messages this replica received on a second or later delivery.",
                                     names, registry=registry)
        self._in_flight = gauge("slm_worker_in_flight", "Requests held by this replica (sampled each heartbeat).")
        self._capacity = gauge("slm_worker_capacity", "Requests this replica holds at most (its pull credits).")
        self._warm = gauge("slm_worker_warm", "1 when the replica is warm and not draining.")
        self._hit = gauge("slm_worker_prefix_cache_hit_rate", "Prefix-cache hit rate as the engine reports it.")
        self._queue_depth = gauge("slm_worker_engine_queue_depth", "Sequences waiting inside the engine.")
        self._running = gauge("slm_worker_engine_running", "Sequences the engine is running.")
        self._kv = gauge("slm_worker_kv_cache_usage_ratio", "KV-cache use as the engine reports it (0..1).")
        Info("slm_build", "Version of the running code.", registry=registry).info(
            {"component": "worker", "version": package_version(), "python": platform.python_version()}
        )
        self.ttft_seconds = self._ttft.labels(**labels)
        self.tpot_seconds = self._tpot.labels(**labels)
        self.request_seconds = self._e2e.labels(**labels)
        self.queue_seconds = self._queue.labels(**labels)
        self.redeliveries = self._redeliveries.labels(**labels)
        self.in_flight = self._in_flight.labels(**labels)
        self.capacity = self._capacity.labels(**labels)
        self.warm = self._warm.labels(**labels)
        self.prefix_hit_rate = self._hit.labels(**labels)
        self.engine_queue_depth = self._queue_depth.labels(**labels)
        self.engine_running = self._running.labels(**labels)
        self.kv_cache_usage = self._kv.labels(**labels)
        self.outcomes = _Bound(self._outcomes, model, replica)
        self.acks = _Bound(self._acks, model, replica)
        self.errors = _Bound(self._errors, model, replica)
        self.tokens = _Bound(self._tokens, model, replica)
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome)
        for kind in set(ACK_KIND.values()):
            self.acks.labels(kind)
        for code in ErrorCode:
            self.errors.labels(code.value)
        for kind in ("prompt", "completion", "cached"):
            self.tokens.labels(kind)

    def received(self, num_delivered: int) -> None:
        """A message arrived; ``num_delivered`` is JetStream's delivery count for it."""
        if num_delivered > 1:
            self.redeliveries.inc()

    def settled(self, outcome: str) -> None:
        """A message was settled with ``outcome`` (an ``Outcome`` value)."""
        self.outcomes.labels(outcome).inc()
        self.acks.labels(ACK_KIND[outcome]).inc()

    def finished(self, seconds: float, completion: int, cached: int, prompt: int,
                 ttft: float | None = None) -> None:
        """A generation ended: ``seconds`` from its start, ``ttft`` to its first token."""
        self.request_seconds.observe(seconds)
        if ttft is not None and completion > 1:
            # Inter-token time, as vLLM reports it: decode only, prefill excluded.
            self.tpot_seconds.observe(max(seconds - ttft, 0.0) / (completion - 1))
        elif ttft is None and completion:  # a caller that did not time the first token
            self.tpot_seconds.observe(seconds / completion)
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("completion").inc(completion)
        self.tokens.labels("cached").inc(cached)

    def heartbeat(self, *, in_flight: int, capacity: int, warm: bool, stats: EngineStats) -> None:
        """Sample the replica's state; called with each registry heartbeat."""
        self.in_flight.set(in_flight)
        self.capacity.set(capacity)
        self.warm.set(1 if warm else 0)
        self.prefix_hit_rate.set(stats.prefix_hit_rate)
        self.engine_queue_depth.set(stats.waiting)
        self.engine_running.set(stats.running)
        self.kv_cache_usage.set(stats.kv_cache_usage)


class _Bound:
    """A counter with the model and replica labels already filled in."""

    def __init__(self, counter: Counter, model: str, replica: str) -> None:
        self._counter, self._model, self._replica = counter, model, replica

    def labels(self, value: str) -> Counter:
        return self._counter.labels(self._model, self._replica, value)
