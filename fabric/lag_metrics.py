"""The lag monitor's Prometheus metrics: the latest snapshot, exported as gauges.

A custom collector rather than Gauge objects: each scrape reports exactly the streams and
consumers of the latest snapshot, so a consumer that was deleted (a replica scaled away)
disappears from /metrics instead of freezing at its last value. Scrapes never call NATS;
the monitor polls on its own interval.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fabric.lag import ConsumerLag, LagSnapshot, StreamLag
from router.metrics import package_version

STREAM_LABELS = ["stream"]
CONSUMER_LABELS = ["stream", "consumer", "model", "replica"]

# (metric name, help, value of a row); ages of nothing waiting are 0, not absent, so a
# dashboard shows a flat line rather than a gap.
_STREAM_GAUGES: tuple[tuple[str, str, Callable[[StreamLag], float]], ...] = (
    ("slm_stream_messages", "Messages the stream holds (WorkQueue: work not yet acknowledged).",
     lambda s: s.messages),
    ("slm_stream_bytes", "Bytes the stream holds.", lambda s: s.bytes),
    ("slm_stream_consumers", "Consumers on the stream.", lambda s: s.consumers),
    ("slm_stream_oldest_message_age_seconds", "Age of the stream's oldest message; 0 when empty.",
     lambda s: s.oldest_message_age or 0.0),
)
_CONSUMER_GAUGES: tuple[tuple[str, str, Callable[[ConsumerLag], float]], ...] = (
    ("slm_consumer_pending", "Messages not yet delivered to any worker (JetStream num_pending).",
     lambda c: c.pending),
    ("slm_consumer_ack_pending", "Messages delivered and not yet acknowledged: in flight.",
     lambda c: c.ack_pending),
    ("slm_consumer_redelivered", "Un-acknowledged messages delivered more than once.",
     lambda c: c.redelivered),
    ("slm_consumer_waiting", "Pull requests waiting at the server for messages.", lambda c: c.waiting),
    ("slm_consumer_oldest_pending_age_seconds",
     "How long the oldest undelivered message has waited; 0 when none waits.",
     lambda c: c.oldest_pending_age or 0.0),
)


class LagCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: LagSnapshot | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.snapshot  # one reference: the poller may swap it meanwhile
        streams: tuple[StreamLag, ...] = snapshot.streams if snapshot else ()
        consumers: tuple[ConsumerLag, ...] = snapshot.consumers if snapshot else ()
        for name, doc, of_stream in _STREAM_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=STREAM_LABELS)
            for s in streams:
                family.add_metric([s.stream], of_stream(s))
            yield family
        for name, doc, of_consumer in _CONSUMER_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=CONSUMER_LABELS)
            for c in consumers:
                family.add_metric([c.stream, c.consumer, c.model, c.replica], of_consumer(c))
            yield family
        taken = GaugeMetricFamily("slm_lag_snapshot_timestamp_seconds",
                                  "When the exported snapshot was taken (Unix seconds).")
        if snapshot is not None:
            taken.add_metric([], snapshot.taken_at)
        yield taken

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, for the registry's duplicate check; values come from collect().
        for name, doc, _ in _STREAM_GAUGES:
            yield GaugeMetricFamily(name, doc, labels=STREAM_LABELS)
        for name, doc, _ in _CONSUMER_GAUGES:
            yield GaugeMetricFamily(name, doc, labels=CONSUMER_LABELS)
        yield GaugeMetricFamily("slm_lag_snapshot_timestamp_seconds", "")


class LagMetrics:
    """What the lag monitor exports: the snapshot gauges, poll counts and build info."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.collector = LagCollector()
        registry.register(self.collector)
        self.polls = Counter("slm_lag_polls_total", "Snapshots taken, by result (ok, error).",
                             ["result"], registry=registry)
        for result in ("ok", "error"):
            self.polls.labels(result)
        Info("slm_build", "Version of the running code.", registry=registry).info(
            {"component": "lag-monitor", "version": package_version(), "python": platform.python_version()}
        )

    def update(self, snapshot: LagSnapshot) -> None:
        self.collector.snapshot = snapshot
        self.polls.labels("ok").inc()

    def failed(self, _exc: BaseException) -> None:
        self.polls.labels("error").inc()
