"""Every metric `deploy/` names (alert rules, Grafana panels) is exported by a mesh run with `shieldx up`,
and a real Prometheus scraping that mesh answers every dashboard expression with data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.launchedmesh import drive_traffic, launched_mesh, scrape
from tests.support.metricnames import (
    APPEAR_AFTER_EVENT,
    EXPORTED_WHEN_CONFIGURED,
    NOT_YET_EXPORTED,
    deploy_expressions,
    exported_names,
    metric_names,
)
from tests.support.prometheus import PrometheusServer, prometheus_binary


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, dict[str, Any]]]]:
    directory = tmp_path_factory.mktemp("mesh") / "state"
    with launched_mesh(directory) as endpoints:
        yield directory, endpoints


async def test_every_metric_named_in_deploy_is_exported_by_a_running_mesh(
    mesh: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    directory, endpoints = mesh
    await drive_traffic(directory)
    pages = {name: scrape(int(endpoint["metrics_port"])) for name, endpoint in endpoints.items()}
    exported = set().union(*(exported_names(page) for page in pages.values()))
    for name, page in pages.items():
        assert "process_resident_memory_bytes" in exported_names(page), f"{name} has the process collector"
        assert "python_info" in exported_names(page), f"{name} has the platform collector"
    named = {name: where for where, expr in deploy_expressions() for name in metric_names(expr)}
    assert len(named) > 20, "the expressions were read"
    allowed = NOT_YET_EXPORTED.keys() | EXPORTED_WHEN_CONFIGURED.keys()
    missing = {name: where for name, where in named.items() if name not in exported and name not in allowed}
    assert not missing, f"used in deploy/ but exported by no server: {missing}"
    landed = sorted(name for name in NOT_YET_EXPORTED if name in exported)
    assert not landed, f"exported now: remove from NOT_YET_EXPORTED: {landed}"
    unused = sorted(name for name in NOT_YET_EXPORTED if name not in named)
    assert not unused, f"allowlisted but used nowhere in deploy/: {unused}"
    service_metrics = {n for n in exported if not n.startswith(("grpc_", "process_", "python_", "up"))}
    assert service_metrics and all(n.startswith("shieldx_") for n in service_metrics), sorted(
        n for n in service_metrics if not n.startswith("shieldx_")
    )


# Panels whose series need an event the mesh here does not stage (a deployed experiment winner).
EMPTY_PANELS_ALLOWED = {"ab-testing.json: Winners deployed (24h)"}


@pytest.mark.skipif(prometheus_binary() is None, reason="Debian's prometheus package (tests/run installs it)")
async def test_prometheus_answers_every_dashboard_expression_from_a_live_mesh(
    mesh: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    directory, endpoints = mesh
    await drive_traffic(directory)
    targets = [f"127.0.0.1:{endpoint['metrics_port']}" for endpoint in endpoints.values()]
    prometheus = PrometheusServer(tmp_path, targets, job="shieldx").start()
    try:
        prometheus.wait_scraped()
        await drive_traffic(directory)
        allowed = NOT_YET_EXPORTED.keys() | EXPORTED_WHEN_CONFIGURED.keys() | APPEAR_AFTER_EVENT.keys()
        deadline = time.monotonic() + 60
        while (empty := _unanswered(prometheus, allowed)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(1)
        assert not empty, f"dashboard expressions without data from a live mesh: {empty}"
    finally:
        prometheus.stop()


def _unanswered(prometheus: PrometheusServer, allowed: set[str]) -> dict[str, str]:
    """Dashboard expressions that return no series although nothing they read is allowlisted."""
    empty: dict[str, str] = {}
    for where, expr in deploy_expressions():
        if where.startswith("rule ") or where in EMPTY_PANELS_ALLOWED or metric_names(expr) & allowed:
            continue  # alert rules return series only while they fire
        if not prometheus.query(expr.replace("$__rate_interval", "30s")):
            empty[where] = expr
    return empty
