"""compose.yaml and deploy/ without Docker: the Compose schema, names that match the code,
and files that the services mount or build from actually exist.

The schema is the Compose specification's own JSON schema (Apache-2.0), kept read-only in
the shared data folder beside the repository (``../shared/data/schemas``).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml

from fabric.lag import LagConfig
from fabric.local import nats_server_binary
from router.config import RouterConfig
from router.rules import DEFAULT_MODELS
from subjects.env import config_env_names
from subjects.names import is_token
from workers.config import WorkerConfig, replica_from_hostname

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
SCHEMA = ROOT.parent / "shared" / "data" / "schemas" / "compose-spec.json"
MODELS = sorted(DEFAULT_MODELS.values())
# Which config a fabric service reads, by the slm-fabric subcommand it runs.
CONFIG_OF_COMMAND: dict[str, type[msgspec.Struct]] = {
    "router": RouterConfig, "worker": WorkerConfig, "lag": LagConfig,
}
FABRIC_IMAGES = ("slm-fabric:", "slm-fabric-vllm:")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not SCHEMA.exists():
        pytest.fail(f"the Compose specification schema is missing: expected {SCHEMA} "
                    "(the shared data folder beside the repository)")
    return json.loads(SCHEMA.read_text())


def fabric_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith(FABRIC_IMAGES)}


def test_compose_file_validates_against_the_compose_spec(compose, schema):
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_check_would_catch_a_mistake(compose, schema):
    broken = copy.deepcopy(compose)
    broken["services"]["router"]["enviroment"] = {"SLM_PREFIX": "slm"}  # misspelled key
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


def test_one_gpu_worker_and_one_simulated_worker_service_per_model(compose):
    services = compose["services"]
    for model in MODELS:
        gpu, sim = services[f"worker-{model}"], services[f"sim-{model}"]
        assert gpu["environment"]["SLM_MODEL"] == sim["environment"]["SLM_MODEL"] == model
        assert gpu["environment"]["SLM_ENGINE"] == "vllm" and sim["environment"]["SLM_ENGINE"] == "sim"
        assert gpu["image"].startswith("slm-fabric-vllm:") and gpu["build"]["dockerfile"] == "Dockerfile.vllm"
        assert gpu["profiles"] == ["gpu"] and sim["profiles"] == ["sim"]
        devices = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        mounts = [v.rsplit(":", 2) for v in gpu["volumes"]]
        assert any(target == "/models" and mode == "ro" for _, target, mode in mounts)
        assert gpu["environment"]["SLM_MODEL_PATH"].startswith("/models/")
        assert "deploy" not in sim, "simulated workers must run without a GPU"
    assert {n for n in services if n.startswith(("worker-", "sim-"))} == {
        f"{kind}-{m}" for kind in ("worker", "sim") for m in MODELS}


def test_scalable_services_have_no_fixed_names_ports_or_replica_ids(compose):
    for name, service in fabric_services(compose).items():
        assert "container_name" not in service, f"{name}: a container name prevents --scale"
        assert "ports" not in service, f"{name}: a fixed host port prevents --scale"
        assert "SLM_REPLICA" not in service.get("environment", {}), (
            f"{name}: a fixed replica id would give every scaled container the same queue")


def test_fabric_environment_names_are_config_fields(compose):
    for name, service in fabric_services(compose).items():
        command = service["command"][0]
        kind = CONFIG_OF_COMMAND[command]
        unknown = set(service["environment"]) - set(config_env_names(kind))
        assert not unknown, f"{name} sets {sorted(unknown)}, which {kind.__name__} does not read"


def test_every_compose_variable_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(SLM_[A-Z0-9_]+)`", readme))
    used = set(re.findall(r"\b(SLM_[A-Z0-9_]+)\b", COMPOSE.read_text()))
    used.discard("SLM_MODELS_DIR")  # compose's own variable (host folder of models), not a config field
    assert used <= documented, f"add to the README: {sorted(used - documented)}"
    assert "SLM_MODELS_DIR" in documented


def test_every_fabric_service_serves_metrics_where_prometheus_scrapes(compose):
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    scraped: dict[str, int] = {}
    for job in prometheus["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                scraped[name] = sd["port"]
    for name, service in fabric_services(compose).items():
        assert name in scraped, f"deploy/prometheus.yml does not scrape {name}"
        assert int(service["environment"]["SLM_METRICS_PORT"]) == scraped[name], name
    static = {t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", [])
              for t in sc["targets"]}
    assert "nats-exporter:7777" in static and "nats-exporter" in compose["services"]
    assert set(scraped) <= set(compose["services"]), "a scrape target names no service"


def test_nats_has_jetstream_monitoring_and_a_health_check(compose):
    nats = compose["services"]["nats"]
    assert "./deploy/nats.conf:/etc/nats/nats.conf:ro" in nats["volumes"]
    assert "8222:8222" in nats["ports"]
    assert "healthz" in " ".join(nats["healthcheck"]["test"])
    conf = (ROOT / "deploy" / "nats.conf").read_text()
    assert "jetstream" in conf and "http: 0.0.0.0:8222" in conf
    for service in fabric_services(compose).values():
        assert service["depends_on"]["nats"]["condition"] == "service_healthy"


def test_nats_config_is_accepted_by_nats_server():
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(ROOT / "deploy" / "nats.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout


def test_files_that_compose_mounts_and_builds_from_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists(), name
    for dockerfile in ("Dockerfile", "Dockerfile.vllm"):
        text = (ROOT / dockerfile).read_text()
        assert 'ENTRYPOINT ["slm-fabric"]' in text
        sources = re.findall(r"^COPY (?!--from)([^\n]+) \S+$", text, flags=re.M)  # build context only
        for source in " ".join(sources).split():
            assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which is missing"
        # setup.py declares the router's C twin: an image without it runs the Python pass.
        assert "setup.py" in " ".join(sources).split(), f"{dockerfile} does not copy setup.py"


def test_grafana_provisioning_points_at_the_dashboard_and_datasource(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/slm-fabric.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards_dir
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    source = datasources["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/slm-fabric.json").read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/slm-fabric.json"


@pytest.mark.parametrize("hostname", ["3f2a9c1b7d4e", "worker-code-2", "GPU-Node.example.org", "a" * 80])
def test_container_host_names_give_valid_distinct_replica_ids(hostname):
    replica = replica_from_hostname(hostname)
    assert is_token(replica), replica
    assert replica_from_hostname(hostname + "x") != replica or len(replica) == 64


def test_a_host_name_without_letters_or_digits_falls_back_to_r0():
    assert replica_from_hostname("") == "r0"
    assert replica_from_hostname("--") == "r0"
