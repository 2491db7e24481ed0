"""Router and worker metrics, read with registry.get_sample_value after real traffic.

Every test drives requests through a real nats-server (the ``fabric`` fixture) and checks
the values the registries hold afterwards: counts that must equal what was sent, labels
that must name the right model, replica, path, reason and acknowledgement kind.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fabric.client import FabricError, chat
from fabric.serve import start_metrics
from router.metrics import REPLICA_STATES, RouterMetrics, replica_state
from subjects.messages import CacheClass, DecisionPath, Heartbeat
from tests.conftest import wait_until
from workers.engine import EngineGenerateError
from workers.metrics import WorkerMetrics
from workers.sim_engine import SimEngine, SimParams

# Every label any fabric metric may carry: a closed set, so no metric can grow a series
# per request (no request id, session, prompt or reply subject).
ALLOWED_LABELS = {
    "stage", "model", "task_class", "path", "cache_class", "code", "reason", "state",
    "replica", "kind", "outcome", "component", "version", "python", "le",
}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    return sum(
        s.value for metric in registry.collect() for s in metric.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class GatedEngine:
    """A simulated engine whose generations wait at a gate: work piles up on demand.

    Wraps the real SimEngine (every other call goes straight to it); only ``generate``
    first waits for ``gate``. ``fail_first`` makes the first N generations fail
    retryably, so the worker naks and JetStream redelivers.
    """

    def __init__(self, capacity: int = 8, fail_first: int = 0) -> None:
        self.inner = SimEngine(SimParams(capacity=capacity, time_scale=0.01))
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_first = fail_first
        self.name = self.inner.name
        self.capacity = capacity

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def generate(self, request_id: str, request: Any) -> Any:
        await self.gate.wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            raise EngineGenerateError("gated engine: planned transient failure", retryable=True)
        async for delta in self.inner.generate(request_id, request):
            yield delta


def test_no_metric_has_a_per_request_label_and_all_are_slm_prefixed():
    registries = [CollectorRegistry(), CollectorRegistry()]
    RouterMetrics(registries[0])
    WorkerMetrics(registries[1], "general", "r0")
    for registry in registries:
        for metric in registry.collect():
            assert metric.name.startswith("slm_"), metric.name
            if metric.type == "histogram":
                assert metric.name.endswith("_seconds"), f"{metric.name}: histograms here are times"
            for s in metric.samples:
                assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)


def test_replica_state_names_draining_before_warm():
    beat = Heartbeat(model="m", replica="r", capacity=1, warm=True)
    assert replica_state(beat) == "warm"
    assert replica_state(Heartbeat(model="m", replica="r", capacity=1)) == "cold"
    assert replica_state(Heartbeat(model="m", replica="r", capacity=1, warm=True, draining=True)) == "draining"
    assert set(REPLICA_STATES) == {"warm", "cold", "draining"}


async def test_router_counts_decisions_by_model_class_path_and_cache_class(fabric, client):
    router = await fabric.router()
    await fabric.worker("code", "r0")
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(2)
    prompts = {
        "Write a Python function that reverses a list.": "code",
        "Tell me about the sea.": "general",
        "Tell me about the mountains.": "general",
    }
    for prompt, model in prompts.items():
        answer = await client.complete(chat(prompt, max_tokens=3), timeout=10)
        assert answer.model == model
    # An explicit model is its own decision path.
    await client.complete(chat("Tell me about rivers.", model="general", max_tokens=3), timeout=10)
    reg = router.registry
    assert total(reg, "slm_router_decisions_total", model="code", task_class="code") == 1
    assert total(reg, "slm_router_decisions_total", model="general", task_class="general") == 3
    assert total(reg, "slm_router_decisions_total", model="general", path="explicit") == 1
    # Each decision has exactly one cache class from the closed set.
    classes = {s.labels["cache_class"] for m in reg.collect() for s in m.samples
               if s.name == "slm_router_decisions_total"}
    assert classes <= {"cold", "session_sticky", "prefix_hit", "spill"}
    assert total(reg, "slm_router_decisions_total") == 4
    for stage in ("context", "model", "replica", "total"):
        assert sample(reg, "slm_router_decision_seconds_count", stage=stage) == 4
    assert 0 < sample(reg, "slm_router_decision_seconds_sum", stage="total") < 4 * 0.1
    assert sample(reg, "slm_router_hop_seconds_count") == 4
    assert _build_label(reg, "component") == "router"
    assert _build_label(reg, "version")  # the installed version, or "unknown" from a bare source tree


def _build_label(registry: CollectorRegistry, label: str) -> str:
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "slm_build_info":
                return s.labels[label]
    raise AssertionError("no slm_build_info")


def test_cache_classes_are_labelled_by_name():
    registry = CollectorRegistry()
    metrics = RouterMetrics(registry)
    for cache in CacheClass:
        metrics.decided("general", "general", DecisionPath.RULE, cache)
    for label in ("cold", "session_sticky", "prefix_hit", "spill"):
        assert sample(registry, "slm_router_decisions_total", model="general", task_class="general",
                      path="rule", cache_class=label) == 1


async def test_shed_requests_are_counted_by_reason(fabric, client):
    router = await fabric.router(models=("general", "code"))
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    with pytest.raises(FabricError) as no_replica:
        await client.complete(chat("Write a Python function that sorts.", max_tokens=2), timeout=10)
    assert no_replica.value.code == "no_replica"
    with pytest.raises(FabricError) as late:
        await client.complete(chat("Tell me about the sea.", deadline=time.time() - 5), timeout=10)
    assert late.value.code == "deadline_exceeded"
    with pytest.raises(FabricError):
        await client.complete(chat("hi", model="gpt-9"), timeout=10)  # bad input, not shed
    reg = router.registry
    assert sample(reg, "slm_router_shed_total", reason="no_replica") == 1
    assert sample(reg, "slm_router_shed_total", reason="deadline") == 1
    assert sample(reg, "slm_router_shed_total", reason="overloaded") == 0
    assert sample(reg, "slm_router_errors_total", code="unknown_model") == 1
    assert total(reg, "slm_router_shed_total") == 2


async def test_full_queues_count_queue_full_then_overloaded(fabric, client):
    router = await fabric.router(queue_bound=1)
    engine = GatedEngine(capacity=1)
    await fabric.worker("general", "r0", engine=engine, max_inflight=1, queue_bound=1)
    await fabric.wait_for_replicas(1)
    engine.gate.clear()
    first = asyncio.ensure_future(client.complete(chat("Tell me about the sea.", max_tokens=2), timeout=20))
    # The first request is held by the worker (un-acked, so it still fills r0's queue).
    await wait_until(lambda: total(router.registry, "slm_router_decisions_total") == 1)
    second = asyncio.ensure_future(client.complete(chat("Tell me about the hills.", max_tokens=2), timeout=20))
    await wait_until(lambda: total(router.registry, "slm_router_decisions_total") == 2)
    with pytest.raises(FabricError) as third:
        await client.complete(chat("Tell me about the moon.", max_tokens=2), timeout=10)
    assert third.value.code == "overloaded"
    reg = router.registry
    assert sample(reg, "slm_router_shed_total", reason="overloaded") == 1
    # r0 refused the second request (it went to .any) and both queues refused the third.
    assert sample(reg, "slm_router_queue_full_total", model="general") == 3
    assert total(reg, "slm_router_decisions_total", model="general", cache_class="spill") == 1
    engine.gate.set()
    await asyncio.gather(first, second)


async def test_router_reports_live_replicas_by_state(fabric):
    router = await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.worker("general", "r1")
    await fabric.wait_for_replicas(2)
    reg = router.registry
    await wait_until(lambda: reg.get_sample_value("slm_router_replicas", {"model": "general", "state": "warm"}) == 2)
    assert sample(reg, "slm_router_replicas_live", model="general") == 2
    assert sample(reg, "slm_router_replicas", model="general", state="cold") == 0
    assert sample(reg, "slm_router_replicas", model="code", state="warm") == 0
    assert sample(reg, "slm_router_inbox_depth") == 0


async def test_worker_times_and_counts_every_generation(fabric, client):
    await fabric.router()
    worker = await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    answers = [await client.complete(chat(f"Tell me about the sea, part {i}.", max_tokens=6), timeout=10)
               for i in range(3)]
    reg, labels = worker.registry, {"model": "general", "replica": "r0"}
    assert sample(reg, "slm_worker_ttft_seconds_count", **labels) == 3
    assert sample(reg, "slm_worker_request_seconds_count", **labels) == 3
    assert sample(reg, "slm_worker_time_per_output_token_seconds_count", **labels) == 3
    assert sample(reg, "slm_worker_queue_seconds_count", **labels) == 3
    # Time per output token is decode only: each one is shorter than the whole request.
    assert (sample(reg, "slm_worker_time_per_output_token_seconds_sum", **labels)
            < sample(reg, "slm_worker_request_seconds_sum", **labels))
    completion = sum(a.completion_tokens for a in answers)
    prompt = sum(a.prompt_tokens for a in answers)
    assert completion == 18
    assert sample(reg, "slm_worker_tokens_total", kind="completion", **labels) == completion
    assert sample(reg, "slm_worker_tokens_total", kind="prompt", **labels) == prompt
    assert sample(reg, "slm_worker_outcomes_total", outcome="done", **labels) == 3
    assert sample(reg, "slm_worker_acks_total", kind="ack", **labels) == 3
    assert sample(reg, "slm_worker_acks_total", kind="nak", **labels) == 0
    assert sample(reg, "slm_worker_redeliveries_total", **labels) == 0
    assert _build_label(reg, "component") == "worker"


async def test_worker_gauges_follow_the_heartbeat(fabric, client):
    await fabric.router()
    engine = GatedEngine(capacity=4)
    worker = await fabric.worker("general", "r0", engine=engine, max_inflight=4)
    await fabric.wait_for_replicas(1)
    reg, labels = worker.registry, {"model": "general", "replica": "r0"}
    assert sample(reg, "slm_worker_warm", **labels) == 1
    assert sample(reg, "slm_worker_capacity", **labels) == 4
    engine.gate.clear()
    pending = [asyncio.ensure_future(client.complete(chat(f"Tell me about cloud {i}.", max_tokens=2),
                                                     timeout=20)) for i in range(3)]
    await wait_until(lambda: reg.get_sample_value("slm_worker_in_flight", labels) == 3, timeout=10)
    engine.gate.set()
    await asyncio.gather(*pending)
    await wait_until(lambda: reg.get_sample_value("slm_worker_in_flight", labels) == 0, timeout=10)
    assert sample(reg, "slm_worker_engine_queue_depth", **labels) == 0
    assert 0 <= sample(reg, "slm_worker_kv_cache_usage_ratio", **labels) <= 1


async def test_prefix_hit_rate_is_what_the_engine_reports(fabric, client):
    await fabric.router()
    engine = SimEngine(SimParams(capacity=8, time_scale=0.01))
    worker = await fabric.worker("general", "r0", engine=engine)
    await fabric.wait_for_replicas(1)
    prompt = "Summarise this long shared context. " + "The river bends past the old mill. " * 40
    for _ in range(2):  # the model named: this test is about the cache, not the classifier
        await client.complete(chat(prompt, max_tokens=2, model="general"), timeout=10)
    reported = engine.stats().prefix_hit_rate
    assert reported > 0, "the second identical prompt hits the engine's prefix cache"
    labels = {"model": "general", "replica": "r0"}
    await wait_until(lambda: worker.registry.get_sample_value(
        "slm_worker_prefix_cache_hit_rate", labels) == engine.stats().prefix_hit_rate, timeout=5)
    assert worker.registry.get_sample_value("slm_worker_tokens_total", {**labels, "kind": "cached"}) > 0


async def test_retry_is_a_nak_and_the_redelivery_is_counted(fabric, client):
    await fabric.router()
    engine = GatedEngine()
    worker = await fabric.worker("general", "r0", engine=engine, retry_delay=0.05)
    await fabric.wait_for_replicas(1)
    engine.fail_first = 1  # armed after the warm-up generation
    answer = await client.complete(chat("Tell me about the sea.", max_tokens=3), timeout=15)
    assert answer.completion_tokens == 3 and answer.restarts == 1  # the redelivery says so
    reg, labels = worker.registry, {"model": "general", "replica": "r0"}
    assert sample(reg, "slm_worker_outcomes_total", outcome="retry", **labels) == 1
    assert sample(reg, "slm_worker_acks_total", kind="nak", **labels) == 1
    assert sample(reg, "slm_worker_redeliveries_total", **labels) == 1
    assert sample(reg, "slm_worker_acks_total", kind="ack", **labels) == 1


async def test_poison_message_is_a_term(fabric, client):
    await fabric.router()
    worker = await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    js = client.nc.jetstream()
    await js.publish(client.names.work("general", "r0"), b"\x93not a work item")
    labels = {"model": "general", "replica": "r0"}
    await wait_until(lambda: worker.registry.get_sample_value(
        "slm_worker_acks_total", {**labels, "kind": "term"}) == 1, timeout=10)
    assert sample(worker.registry, "slm_worker_outcomes_total", outcome="poison", **labels) == 1
    # A well-formed item still goes through afterwards.
    answer = await client.complete(chat("Tell me about the sea.", max_tokens=2), timeout=10)
    assert answer.model == "general"


async def test_metrics_endpoint_serves_the_registry_on_the_configured_port(fabric, client):
    router = await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    await client.complete(chat("Tell me about the sea.", max_tokens=2), timeout=10)
    port = _free_port()
    start_metrics("127.0.0.1", port, router.registry)
    body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert 'slm_router_decisions_total{cache_class="' in body
    assert 'slm_build_info{component="router"' in body
    assert "slm_router_shed_total" in body


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
