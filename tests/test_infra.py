"""infra/ parses and keeps its safe defaults (no Docker engine or cluster here: the files are read as YAML).

Compose: Redis has a password and is not published; every published port is bound to loopback;
workers reach Redis with the password and listen on 0.0.0.0 inside the network. Kubernetes: the
workers listen on 0.0.0.0 and take the Redis URL from a Secret.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_every_infra_yaml_parses() -> None:
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert len(files) >= 3
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_compose_publishes_nothing_beyond_the_host_and_redis_needs_a_password() -> None:
    services = _compose()["services"]
    assert "ports" not in services["redis"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_workers_use_the_password_and_listen_on_the_network() -> None:
    services = _compose()["services"]
    for name in ("topics", "ingest", "trainer", "scorer", "scorer-gpu", "monitor"):
        env = services[name]["environment"]
        assert env["RIPPLEREC_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?"), name
        assert env["RIPPLEREC_WEB_BIND"] == "0.0.0.0", name  # noqa: S104 - containers must listen on the network


def test_k8s_workers_listen_on_the_network_and_read_redis_from_a_secret() -> None:
    documents = list(yaml.safe_load_all((INFRA / "k8s" / "workers.yaml").read_text()))
    config = next(d for d in documents if d["kind"] == "ConfigMap")
    assert config["data"]["RIPPLEREC_WEB_BIND"] == "0.0.0.0"  # noqa: S104
    assert not any("REDIS" in key for key in config["data"])
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert "secretKeyRef" in env["RIPPLEREC_REDIS_URL"]["valueFrom"]
            assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]


def test_topics_are_created_before_the_workers_and_one_trainer_runs() -> None:
    services = _compose()["services"]
    assert services["topics"]["command"] == ["topics"]
    for name in ("ingest", "trainer", "scorer", "scorer-gpu"):
        assert services[name]["depends_on"]["topics"] == {"condition": "service_completed_successfully"}, name
    assert services["trainer"]["command"] == ["worker", "--role", "trainer"]
    assert services["trainer"].get("deploy", {}).get("replicas", 1) == 1
    documents = list(yaml.safe_load_all((INFRA / "k8s" / "workers.yaml").read_text()))
    trainer = next(d for d in documents if d["metadata"]["name"] == "ripplerec-trainer")
    assert trainer["spec"]["replicas"] == 1 and trainer["spec"]["strategy"]["type"] == "Recreate"
    job = next(d for d in documents if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["topics"]


def test_grafana_is_provisioned_with_the_dashboard_of_the_monitor_series() -> None:
    import json

    from prometheus_client import CollectorRegistry

    from ripplerec.monitoring import StreamMetrics
    from ripplerec.monitoring.monitor_metrics import MonitorMetrics

    services = _compose()["services"]
    assert services["monitor"]["command"] == ["worker", "--role", "monitor"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert (INFRA / mounts["/etc/grafana/provisioning"].removeprefix("./")).is_dir()
    dashboards = INFRA / mounts["/var/lib/grafana/dashboards"].removeprefix("./")
    provider = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/ripplerec.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yaml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    assert "monitor:6066" in scrape["scrape_configs"][0]["static_configs"][0]["targets"]

    dashboard = json.loads((dashboards / "ripplerec.json").read_text())
    registry = CollectorRegistry()
    StreamMetrics(registry)
    MonitorMetrics(registry)
    known = {sample.name for family in registry.collect() for sample in family.samples}
    known |= {family.name + ("_total" if family.type == "counter" else "") for family in registry.collect()}
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [a["expr"] for a in dashboard["annotations"]["list"]]
    used = {name for q in queries for name in re.findall(r"ripplerec_[a-z0-9_]+", q)}
    assert used and used <= known, used - known  # every series the dashboard plots exists
    for wanted in ("ripplerec_stream_events_per_second", "ripplerec_consumer_lag_messages",
                   "ripplerec_recommendations_followed_total", "ripplerec_trainer_ndcg_at_10",
                   "ripplerec_trainer_loss", "ripplerec_drift_alerts_total"):
        assert wanted in used, wanted
    assert all(p["datasource"]["uid"] == source["uid"] for p in dashboard["panels"])
