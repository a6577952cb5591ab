"""The deployment manifests agree with the runtime: ports, probes, and Prometheus rules that work."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from clients.endpoints import DEFAULT_PORTS

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
        assert f"{grpc_port}:{grpc_port}" in compose["services"][name]["ports"]


def test_prometheus_rules_are_valid_and_their_alerts_fire() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes from Debian's prometheus package (tests/run installs it)"
    subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")], check=True)
    subprocess.run([promtool, "test", "rules", str(DEPLOY / "prometheus" / "shieldx.rules.test.yml")], check=True)
