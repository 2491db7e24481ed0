"""Worker metrics on an injected registry, labelled by model and replica only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from subjects.messages import ErrorCode

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
OUTCOMES = ("done", "retry", "poison", "release")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, replica: str) -> None:
        labels = {"model": model, "replica": replica}
        names = list(labels)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, names, registry=registry, buckets=buckets)

        self.registry = registry
        self._ttft = hist("slm_worker_ttft_seconds", "Time to first token at the worker.", _LATENCY_BUCKETS)
        self._tpot = hist("slm_worker_time_per_output_token_seconds", "Decode time per output token.", _TOKEN_BUCKETS)
        self._e2e = hist("slm_worker_request_seconds", "Start of generation to final chunk.", _LATENCY_BUCKETS)
        self._queue = hist("slm_worker_queue_seconds", "Routed to picked up by this worker.", _LATENCY_BUCKETS)
        self._tokens = Counter("slm_worker_tokens_total", "Tokens processed, by kind.", names + ["kind"], registry=registry)
        self._outcomes = Counter("slm_worker_outcomes_total", "Settled messages by JetStream outcome.", names + ["outcome"], registry=registry)
        self._errors = Counter("slm_worker_errors_total", "Error replies sent, by code.", names + ["code"], registry=registry)
        self._in_flight = Gauge("slm_worker_in_flight", "Requests held by this replica.", names, registry=registry)
        self._warm = Gauge("slm_worker_warm", "1 when the replica is warm and not draining.", names, registry=registry)
        self._hit = Gauge("slm_worker_prefix_cache_hit_rate", "Prefix-cache hit rate as the engine reports it.", names, registry=registry)
        self.ttft_seconds = self._ttft.labels(**labels)
        self.tpot_seconds = self._tpot.labels(**labels)
        self.request_seconds = self._e2e.labels(**labels)
        self.queue_seconds = self._queue.labels(**labels)
        self.in_flight = self._in_flight.labels(**labels)
        self.warm = self._warm.labels(**labels)
        self.prefix_hit_rate = self._hit.labels(**labels)
        self.outcomes = _Bound(self._outcomes, model, replica)
        self.errors = _Bound(self._errors, model, replica)
        self.tokens = _Bound(self._tokens, model, replica)
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome)
        for code in ErrorCode:
            self.errors.labels(code.value)
        for kind in ("prompt", "completion", "cached"):
            self.tokens.labels(kind)

    def finished(self, seconds: float, completion: int, cached: int, prompt: int) -> None:
        self.request_seconds.observe(seconds)
        if completion:
            self.tpot_seconds.observe(seconds / completion)
        self.tokens.labels("prompt").inc(prompt)
        self.tokens.labels("completion").inc(completion)
        self.tokens.labels("cached").inc(cached)


class _Bound:
    """A counter with the model and replica labels already filled in."""

    def __init__(self, counter: Counter, model: str, replica: str) -> None:
        self._counter, self._model, self._replica = counter, model, replica

    def labels(self, value: str) -> Counter:
        return self._counter.labels(self._model, self._replica, value)
