"""Stream and consumer lag: snapshots of a real server with queued work, the exported
gauges, the ``slm-fabric lag`` command (live, --once --json, --serve), and the pure view."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from fabric.client import chat
from fabric.lag import ConsumerLag, LagMonitor, LagSnapshot, StreamLag, take_snapshot
from fabric.lag_metrics import LagMetrics
from fabric.lag_view import LagView, backlog_rate, format_age, sparkline
from tests.conftest import eventually
from tests.test_metrics import GatedEngine

# ---------------------------------------------------------------------------------------
# The pure view
# ---------------------------------------------------------------------------------------


def consumer(replica: str, pending: int, in_flight: int = 0, model: str = "general",
             oldest: float | None = None) -> ConsumerLag:
    return ConsumerLag(stream="SLM_WORK_GENERAL", consumer=f"{model}-{replica}", model=model,
                       replica=replica, filter_subject=f"slm.work.{model}.{replica}", pending=pending,
                       ack_pending=in_flight, redelivered=0, waiting=0, oldest_pending_age=oldest)


def snapshot(at: float, *consumers: ConsumerLag) -> LagSnapshot:
    stream = StreamLag(stream="SLM_WORK_GENERAL", subjects=("slm.work.general.>",),
                       messages=sum(c.backlog for c in consumers), bytes=2048,
                       consumers=len(consumers), oldest_message_age=3.0)
    return LagSnapshot(taken_at=at, prefix="slm", streams=(stream,), consumers=consumers)


def test_ages_read_like_a_person_would_say_them():
    assert format_age(None) == "-"
    assert format_age(0.42) == "0.4s"
    assert format_age(42) == "42s"
    assert format_age(185) == "3m05s"
    assert format_age(3 * 3600 + 120) == "3h02m"


def test_sparkline_scales_to_the_largest_value():
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([0, 4, 8]) == "▁▅█"
    assert sparkline([]) == ""


def test_backlog_rate_is_change_per_second():
    assert backlog_rate([(0.0, 10)]) is None
    assert backlog_rate([(0.0, 10), (2.0, 4)]) == -3.0
    assert backlog_rate([(5.0, 1), (5.0, 9)]) is None  # no time passed


def test_view_rows_per_model_and_replica_with_any_last_and_a_trend():
    view = LagView()
    first = snapshot(100.0, consumer("any", 0), consumer("r1", 2), consumer("r0", 10, 4, oldest=1.5))
    view.update(first)
    second = snapshot(102.0, consumer("any", 0), consumer("r1", 2), consumer("r0", 4, 4, oldest=0.5))
    view.update(second)
    text = view.render(second)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    rows = [line.split()[:6] for line in lines[header + 1: header + 4]]
    assert rows == [["general", "r0", "4", "4", "0", "0"],
                    ["general", "r1", "2", "0", "0", "0"],
                    ["general", "any", "0", "0", "0", "0"]]
    assert "▼-3.0/s" in lines[header + 1]  # backlog 14 → 8 in 2 s
    assert "steady" in lines[header + 2]
    assert "0.5s" in lines[header + 1]
    assert view.trend("SLM_WORK_GENERAL", "general-r0") == -3.0
    assert "SLM_WORK_GENERAL" in text and "2.0KiB" in text


def test_view_forgets_deleted_consumers():
    view = LagView()
    view.update(snapshot(1.0, consumer("r0", 1), consumer("r1", 1)))
    view.update(snapshot(2.0, consumer("r0", 1)))
    assert view.trend("SLM_WORK_GENERAL", "general-r1") is None
    assert "r1" not in view.render(snapshot(2.0, consumer("r0", 1)))


def test_view_says_what_to_do_when_nothing_runs():
    text = LagView().render(LagSnapshot(taken_at=0.0, prefix="slm", streams=(), consumers=()))
    assert "no consumers yet" in text and "is a router running?" in text


# ---------------------------------------------------------------------------------------
# Against a real nats-server with queued work
# ---------------------------------------------------------------------------------------


def row(snap: LagSnapshot, model: str, replica: str) -> ConsumerLag:
    return next(c for c in snap.consumers if (c.model, c.replica) == (model, replica))


def stream_of(snap: LagSnapshot, name: str) -> StreamLag:
    return next(s for s in snap.streams if s.stream == name)


async def queued_work(fabric, client, requests: int = 5, in_flight: int = 2):
    """A router and a gated general/r0 worker holding ``in_flight`` requests; the rest wait."""
    # Every request must queue on r0's own subject, past the default saturation point
    # (2 × capacity outstanding), beyond which replica choice sends the rest to .any.
    await fabric.router(saturation=8.0)
    engine = GatedEngine(capacity=in_flight)
    await fabric.worker("general", "r0", engine=engine, max_inflight=in_flight)
    await fabric.worker("code", "r0")
    await fabric.wait_for_replicas(2)
    engine.gate.clear()
    answers = [asyncio.ensure_future(client.complete(chat(f"Tell me about lake {i}.", max_tokens=2),
                                                     timeout=30)) for i in range(requests)]
    return engine, answers


async def test_snapshot_shows_pending_in_flight_and_oldest_age_of_queued_work(fabric, client):
    engine, answers = await queued_work(fabric, client)
    nc, names = client.nc, client.names
    general = names.work_stream("general")
    snap = await eventually(lambda: take_snapshot(nc, names),
                            lambda s: row(s, "general", "r0").backlog == 5
                            and row(s, "general", "r0").ack_pending == 2
                            and stream_of(s, general).messages == 5)
    r0 = row(snap, "general", "r0")
    assert (r0.pending, r0.ack_pending, r0.redelivered) == (3, 2, 0)
    assert r0.stream == names.work_stream("general")
    assert r0.consumer == names.replica_consumer("general", "r0")
    assert r0.filter_subject == names.work("general", "r0")
    assert r0.oldest_pending_age is not None and r0.oldest_pending_age >= 0
    assert row(snap, "general", "any").backlog == 0
    assert row(snap, "code", "r0").backlog == 0 and row(snap, "code", "r0").oldest_pending_age is None
    stream = stream_of(snap, general)
    assert stream.bytes > 0 and stream.consumers == 2
    assert stream.oldest_message_age is not None
    engine.gate.set()
    await asyncio.gather(*answers)
    done = await eventually(lambda: take_snapshot(nc, names), lambda s: stream_of(s, general).messages == 0)
    assert row(done, "general", "r0").backlog == 0


async def test_snapshot_reports_every_stream_and_consumer_under_the_prefix_and_nothing_else(fabric, client):
    await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.worker("general", "r1")
    await fabric.wait_for_replicas(2)
    js = client.nc.jetstream()
    # A stream of another deployment on the same server must not show up.
    await js.add_stream(name="OTHER_WORK", subjects=["other.work.>"])
    snap = await take_snapshot(client.nc, client.names)
    head = client.names.prefix + "."
    expected_streams = {s.config.name for s in await js.streams_info()
                        if s.config.subjects and all(subj.startswith(head) for subj in s.config.subjects)}
    assert client.names.work_stream("general") in expected_streams
    assert "OTHER_WORK" not in expected_streams
    assert {s.stream for s in snap.streams} == expected_streams
    expected_consumers = set()
    for name in expected_streams:
        expected_consumers |= {(name, c.name) for c in await js.consumers_info(name)}
    assert {(c.stream, c.consumer) for c in snap.consumers} == expected_consumers
    assert {(c.model, c.replica) for c in snap.consumers if c.model == "general"} == {
        ("general", "r0"), ("general", "r1"), ("general", "any")}
    await js.delete_stream("OTHER_WORK")


async def test_monitor_exports_the_snapshot_as_gauges_and_drops_deleted_consumers(fabric, client):
    engine, answers = await queued_work(fabric, client, requests=4, in_flight=1)
    registry = CollectorRegistry()
    metrics = LagMetrics(registry)
    monitor = LagMonitor(client.nc, client.names, 0.05, on_snapshot=metrics.update, on_error=metrics.failed)
    labels = {"stream": client.names.work_stream("general"),
              "consumer": client.names.replica_consumer("general", "r0"), "model": "general", "replica": "r0"}

    async def polled() -> LagSnapshot:
        return await monitor.poll()

    general = labels["stream"]
    await eventually(polled, lambda s: row(s, "general", "r0").backlog == 4
                     and stream_of(s, general).messages == 4)
    assert registry.get_sample_value("slm_consumer_pending", labels) == 3
    assert registry.get_sample_value("slm_consumer_ack_pending", labels) == 1
    assert registry.get_sample_value("slm_consumer_redelivered", labels) == 0
    assert registry.get_sample_value("slm_consumer_waiting", labels) is not None
    assert registry.get_sample_value("slm_consumer_oldest_pending_age_seconds", labels) >= 0
    assert registry.get_sample_value("slm_stream_messages", {"stream": labels["stream"]}) == 4
    assert registry.get_sample_value("slm_lag_polls_total", {"result": "ok"}) >= 1
    assert registry.get_sample_value("slm_lag_snapshot_timestamp_seconds") == monitor.latest.taken_at
    engine.gate.set()
    await asyncio.gather(*answers)
    # A replica scaled away: its consumer is deleted and its series leave /metrics.
    code_labels = {"stream": client.names.work_stream("code"),
                   "consumer": client.names.replica_consumer("code", "r0"), "model": "code", "replica": "r0"}
    assert registry.get_sample_value("slm_consumer_pending", code_labels) == 0
    fabric.workers[-1].stop()
    await client.nc.jetstream().delete_consumer(code_labels["stream"], code_labels["consumer"])
    await monitor.poll()
    assert registry.get_sample_value("slm_consumer_pending", code_labels) is None


async def test_monitor_keeps_polling_after_a_failed_poll(fabric, client):
    await fabric.router()
    failures: list[BaseException] = []
    snapshots: list[LagSnapshot] = []
    monitor = LagMonitor(client.nc, client.names, 0.01, on_snapshot=snapshots.append,
                         on_error=failures.append)
    real = monitor.poll
    calls = 0

    async def flaky() -> LagSnapshot:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError("simulated JetStream API timeout")
        return await real()

    monitor.poll = flaky  # type: ignore[method-assign]
    await monitor.run(count=3)
    assert len(failures) == 1 and len(snapshots) == 2


# ---------------------------------------------------------------------------------------
# The command, as its own process
# ---------------------------------------------------------------------------------------


async def run_cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fabric", "lag", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("SLM_")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_lag_once_json_reports_every_stream_and_consumer(fabric, client, nats_server):
    engine, answers = await queued_work(fabric, client)
    nc, names = client.nc, client.names
    await eventually(lambda: take_snapshot(nc, names), lambda s: row(s, "general", "r0").backlog == 5)
    code, out, err = await run_cli("--once", "--json", "--nats-url", nats_server.url, "--prefix", client.names.prefix)
    assert code == 0, err
    report = json.loads(out)
    direct = await take_snapshot(nc, names)
    assert report["prefix"] == client.names.prefix
    assert {s["stream"] for s in report["streams"]} == {s.stream for s in direct.streams}
    assert {(c["stream"], c["consumer"]) for c in report["consumers"]} == {
        (c.stream, c.consumer) for c in direct.consumers}
    r0 = next(c for c in report["consumers"] if (c["model"], c["replica"]) == ("general", "r0"))
    assert r0["pending"] + r0["ack_pending"] == 5 and r0["ack_pending"] == 2
    assert set(r0) >= {"pending", "ack_pending", "redelivered", "waiting", "oldest_pending_age"}
    engine.gate.set()
    await asyncio.gather(*answers)


async def test_lag_live_table_refreshes_per_model_and_replica(fabric, client, nats_server):
    await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    code, out, err = await run_cli("--count", "2", "--interval", "0.1", "--nats-url", nats_server.url,
                                   "--prefix", client.names.prefix)
    assert code == 0, err
    assert out.count("MODEL") == 2, "two refreshes, each a whole table"
    rows = [line.split() for line in out.splitlines() if line.startswith("general")]
    assert ["general", "r0"] == rows[0][:2] and ["general", "any"] == rows[1][:2]
    assert "steady" in out  # the second table has a trend


async def test_lag_without_nats_fails_with_a_clear_message():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = await run_cli("--once", "--nats-url", f"nats://127.0.0.1:{port}")
    assert code == 1
    assert f"cannot reach NATS at nats://127.0.0.1:{port}" in err
    assert "Traceback" not in err


async def test_lag_serve_exports_gauges_on_the_metrics_port(fabric, client, nats_server):
    await fabric.router()
    await fabric.worker("general", "r0")
    await fabric.wait_for_replicas(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fabric", "lag", "--serve", "--metrics-port", str(port),
        "--metrics-host", "127.0.0.1", "--interval", "0.1", "--nats-url", nats_server.url,
        "--prefix", client.names.prefix, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        consumer_name = client.names.replica_consumer("general", "r0")
        # Polled until the gauges appear, or the monitor exits (checked right after).
        body = await eventually(lambda: asyncio.to_thread(_scrape, port),
                                lambda page: f'consumer="{consumer_name}"' in page or proc.returncode is not None,
                                timeout=20, step=0.1)
        assert proc.returncode is None, "the monitor exited early"
        assert 'slm_consumer_pending{consumer="' in body
        assert 'slm_build_info{component="lag-monitor"' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()


async def test_lag_serve_without_a_port_is_a_usage_error():
    code, _, err = await run_cli("--serve")
    assert code == 2 and "--metrics-port" in err


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""  # not listening yet


@pytest.fixture(autouse=True)
def _no_slm_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SLM_"):
            monkeypatch.delenv(key)
