"""The Prometheus config and the Grafana dashboard, proven with Debian's real Prometheus.

``promtool check config`` validates deploy/prometheus.yml. The live test starts a local
fabric on this test's event loop (router, a worker per model, the lag monitor), serves
each registry on a 127.0.0.1 port, points a real Prometheus at those ports with a
generated scrape config (the compose one names container hosts), sends traffic, and
evaluates every dashboard panel's PromQL: each query must return series, so no panel of
the provisioned dashboard is empty against real metrics.

Prometheus comes from Debian's ``prometheus`` package. ``.ci/run`` installs it and sets
SLM_REQUIRE_PROMETHEUS=1 (so does ``make ops-check``): there a missing binary fails these
tests, so CI can never pass them by skipping. Elsewhere, as the README's ``make test`` on a
machine with only Python, the three that run promtool or Prometheus skip, naming the
package to install; the dashboard's own checks run everywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from fabric.client import FabricError, chat
from fabric.lag import LagMonitor
from fabric.lag_metrics import LagMetrics
from router.rules import DEFAULT_MODELS

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "slm-fabric.json"
# What Grafana substitutes for $__rate_interval is at least four scrape intervals; the
# test scrapes every second and looks back over a comfortable window.
RATE_INTERVAL = "30s"
# The panels issue 6 asks for, by title.
REQUIRED_PANELS = (
    "Decisions/s by model and path", "Decision latency p99 by stage", "TTFT p50 / p99 by model",
    "Cache-hit class share", "Queue depth by replica", "Lag: oldest pending age by replica",
    "Shed requests/s by reason", "Warm / cold replicas by model",
)


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        missing = (f"{name} is not installed: it comes with Debian's 'prometheus' package "
                   "(apt-get install -y prometheus; .ci/run installs it)")
        if os.environ.get("SLM_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return found


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana variables filled in."""
    return [(p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
            for p in panels() for t in p["targets"]]


def test_promtool_accepts_the_compose_prometheus_config():
    result = subprocess.run([binary("promtool"), "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path):
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    result = subprocess.run([binary("promtool"), "check", "config", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_dashboard_has_every_required_panel_and_well_formed_targets():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "slm-fabric"
    titles = [p["title"] for p in panels()]
    for title in REQUIRED_PANELS:
        assert title in titles, f"dashboard lacks the panel {title!r}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels():
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert "slm_" in target["expr"], (panel["title"], target["expr"])
    # Every metric a panel reads is one the README documents.
    readme = (ROOT / "README.md").read_text()
    for _, expr in queries():
        for metric in re.findall(r"\b(slm_[a-z_]+?)(?:_bucket)?\b[\[({) ]", expr + " "):
            assert f"`{metric}`" in readme, f"README does not document {metric}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class LocalPrometheus:
    """A real Prometheus on 127.0.0.1 scraping the given targets every second."""

    def __init__(self, jobs: dict[str, list[str]], workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in jobs.items()],
        }
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.data = workdir / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def start(self) -> None:
        check = subprocess.run([binary("promtool"), "check", "config", str(self.config_file)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={self.config_file}",
                 f"--storage.tsdb.path={self.data}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await asyncio.to_thread(_ready, f"{self.url}/-/ready"):
            assert self.process is not None and self.process.poll() is None, (
                "prometheus exited:\n" + self.log.read_text()[-2000:])
            assert loop.time() < deadline, "prometheus was not ready in time:\n" + self.log.read_text()[-2000:]
            await asyncio.sleep(0.2)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = await asyncio.to_thread(_get_json, url)
        assert answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])

    async def targets_up(self) -> dict[str, str]:
        answer = await asyncio.to_thread(_get_json, f"{self.url}/api/v1/targets")
        return {t["scrapeUrl"]: t["health"] for t in answer["data"]["activeTargets"]}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def metrics_servers() -> Iterator[list[Any]]:
    servers: list[Any] = []
    yield servers
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_every_dashboard_panel_returns_series_from_a_live_fabric(fabric, client, metrics_servers, tmp_path):
    binary("prometheus")
    await fabric.router()
    models = sorted(DEFAULT_MODELS.values())
    for model in models:
        await fabric.worker(model, "r0")
    await fabric.worker("general", "r1")
    await fabric.wait_for_replicas(len(models) + 1)
    lag = LagMetrics(CollectorRegistry())
    monitor = LagMonitor(client.nc, client.names, 0.5, on_snapshot=lag.update, on_error=lag.failed)
    monitor_task = asyncio.ensure_future(monitor.run())

    def serve(registry: CollectorRegistry) -> str:
        port = _free_port()
        metrics_servers.append(start_http_server(port, addr="127.0.0.1", registry=registry))
        return f"127.0.0.1:{port}"

    jobs = {
        "slm-router": [serve(r.registry) for r in fabric.routers],
        "slm-worker": [serve(w.registry) for w in fabric.workers],
        "slm-lag-monitor": [serve(lag.registry)],
    }
    prometheus = LocalPrometheus(jobs, tmp_path)
    prometheus.start()
    try:
        await prometheus.wait_ready()

        async def traffic() -> None:
            prompts = ["Write a Python function that reverses a list.", "How do I build a bomb?",
                       "Extract the names from this text and respond in JSON only: Ann met Bob.",
                       "Prove that the square root of two is irrational, step by step, carefully.",
                       "Tell me about the sea."]
            for round_ in range(3):
                await asyncio.gather(*(client.complete(chat(p, user=f"s{i}", max_tokens=4), timeout=20)
                                       for i, p in enumerate(prompts)))
                if round_ == 0:
                    with pytest.raises(FabricError):
                        await client.complete(chat("late", deadline=1.0), timeout=10)

        await traffic()
        empty: list[tuple[str, str]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45
        while True:
            empty = [(title, expr) for title, expr in queries() if not await prometheus.query(expr)]
            if not empty or loop.time() > deadline:
                break
            await traffic()  # keep rates non-zero while Prometheus gathers its samples
            await asyncio.sleep(0.5)
        health = await prometheus.targets_up()
        assert all(h == "up" for h in health.values()), health
        assert len(health) == len(fabric.routers) + len(fabric.workers) + 1
        assert not empty, "panels with no series:\n" + "\n".join(f"  {t}: {e}" for t, e in empty)
        assert len(queries()) >= len(panels()) >= len(REQUIRED_PANELS)
        # Series carry the fabric's own labels, not just Prometheus' job/instance.
        by_model = await prometheus.query(dict(queries())["Decisions/s by model and path"])
        assert {s["metric"]["model"] for s in by_model} >= {"code", "general"}
        depth = await prometheus.query(dict(queries())["Queue depth by replica"])
        assert ("general", "r1") in {(s["metric"]["model"], s["metric"]["replica"]) for s in depth}
    finally:
        prometheus.stop()
        monitor.stop()
        await monitor_task
