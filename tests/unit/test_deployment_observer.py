"""Observing a version: scrape windows (baseline, deltas, unhealthy instances, restarts) and
Prometheus queries, with the HTTP GET replaced by a table of answers."""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime

import pytest

from servers.deployment.observer import PrometheusObserver, ScrapeObserver
from servers.deployment.routes import Instance
from servers.mesh.errors import Unavailable

AT = datetime(2030, 1, 1, tzinfo=UTC)
A = Instance("credits", "v2", "10.0.0.1:5004", "http://10.0.0.1:9004/metrics", AT)
B = Instance("credits", "v2", "10.0.0.2:5004", "http://10.0.0.2:9004/metrics", AT)
SILENT = Instance("credits", "v2", "10.0.0.3:5004", "", AT)


def exposition(ok: int, unavailable: int, fast: int) -> str:
    """`grpc_server_*` series of one instance: ok + unavailable calls, `fast` of them under 10 ms."""
    total = ok + unavailable
    labels = 'grpc_type="unary",grpc_service="shieldx.credits.v1.CreditsService",grpc_method="Consume"'
    return "\n".join(
        [
            "# TYPE grpc_server_handled_total counter",
            f'grpc_server_handled_total{{{labels},grpc_code="OK"}} {ok}',
            f'grpc_server_handled_total{{{labels},grpc_code="Unavailable"}} {unavailable}',
            'grpc_server_handled_total{grpc_type="unary",grpc_service="grpc.health.v1.Health",'
            'grpc_method="Check",grpc_code="OK"} 999',
            "# TYPE grpc_server_handling_seconds histogram",
            f'grpc_server_handling_seconds_bucket{{{labels},le="0.01"}} {fast}',
            f'grpc_server_handling_seconds_bucket{{{labels},le="+Inf"}} {total}',
            f"grpc_server_handling_seconds_sum{{{labels}}} 1.0",
            f"grpc_server_handling_seconds_count{{{labels}}} {total}",
            "",
        ]
    )


class Pages:
    """GET answers by URL; a missing URL is an unreachable instance."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.asked: list[str] = []

    async def __call__(self, url: str, timeout: float) -> str:
        self.asked.append(url)
        if url not in self.pages:
            raise Unavailable(f"GET {url} failed", reason="METRICS_UNREACHABLE")
        return self.pages[url]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_first_scrape_is_a_baseline_and_analyses_see_only_what_followed() -> None:
    pages, clock = Pages(), Clock()
    observer = ScrapeObserver(fetch=pages, clock=clock)
    pages.pages = {A.metrics_endpoint: exposition(100, 0, 100), B.metrics_endpoint: exposition(50, 0, 50)}
    assert await observer.observe("dep-1", [A, B], 10.0) is None
    clock.now += 10
    pages.pages = {A.metrics_endpoint: exposition(140, 5, 140), B.metrics_endpoint: exposition(60, 5, 55)}
    seen = await observer.observe("dep-1", [A, B], 10.0)
    assert seen is not None
    assert (seen.requests, seen.errors, seen.healthy_instances, seen.total_instances) == (60, 10, 2, 2)
    assert dict(seen.latency_buckets) == {0.01: 45.0, float("inf"): 60.0}


async def test_an_instance_that_does_not_answer_is_unhealthy_and_keeps_its_baseline() -> None:
    pages, clock = Pages(), Clock()
    observer = ScrapeObserver(fetch=pages, clock=clock)
    pages.pages = {A.metrics_endpoint: exposition(10, 0, 10), B.metrics_endpoint: exposition(10, 0, 10)}
    await observer.begin("dep-1", [A, B, SILENT])
    clock.now += 10
    del pages.pages[B.metrics_endpoint]
    pages.pages[A.metrics_endpoint] = exposition(30, 0, 30)
    missed = await observer.observe("dep-1", [A, B, SILENT], 10.0)
    assert missed is not None and (missed.requests, missed.healthy_instances, missed.total_instances) == (20, 1, 3)
    clock.now += 10
    pages.pages[B.metrics_endpoint] = exposition(40, 0, 40)  # 30 calls since its last good scrape
    back = await observer.observe("dep-1", [A, B, SILENT], 10.0)
    assert back is not None and (back.requests, back.healthy_instances) == (30, 2)
    assert SILENT.metrics_endpoint not in pages.asked


async def test_a_restarted_instance_counts_from_zero_and_a_young_window_waits() -> None:
    pages, clock = Pages(), Clock()
    observer = ScrapeObserver(fetch=pages, clock=clock)
    pages.pages = {A.metrics_endpoint: exposition(500, 0, 500)}
    await observer.begin("dep-1", [A])
    await observer.begin("dep-1", [A])  # a second begin keeps the first baseline
    clock.now += 2
    assert await observer.observe("dep-1", [A], 10.0) is None  # less than half an interval
    clock.now += 8
    pages.pages = {A.metrics_endpoint: exposition(7, 3, 10)}  # the process restarted
    seen = await observer.observe("dep-1", [A], 10.0)
    assert seen is not None and (seen.requests, seen.errors) == (10, 3)
    observer.forget(keep=set())
    assert await observer.observe("dep-1", [A], 10.0) is None  # forgotten: a new baseline


async def test_unparseable_metrics_make_an_instance_unhealthy() -> None:
    pages, clock = Pages(), Clock()
    observer = ScrapeObserver(fetch=pages, clock=clock)
    pages.pages = {A.metrics_endpoint: "{not an exposition"}
    await observer.begin("dep-1", [A])
    clock.now += 10
    seen = await observer.observe("dep-1", [A], 10.0)
    assert seen is not None and (seen.healthy_instances, seen.total_instances) == (0, 1)
    assert await observer.ready([A, B]) == 1  # it answers, so it is up; B does not


def vector(*samples: tuple[dict[str, str], float]) -> str:
    result = [{"metric": labels, "value": [1_900_000_000, str(value)]} for labels, value in samples]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


async def test_prometheus_answers_become_an_observation() -> None:
    pages = Pages()
    answers = {
        "sum(increase(grpc_server_handled_total{": vector(({}, 400.0)),
        "grpc_code=~": vector(({}, 12.0)),
        "sum by (le)": vector(({"le": "0.1"}, 380.0), ({"le": "+Inf"}, 400.0)),
        "sum(up{": vector(({}, 2.0)),
    }

    async def fetch(url: str, timeout: float) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["query"][0]
        assert url.startswith("http://prometheus:9090/api/v1/query?")
        assert 'instance=~"10\\\\.0\\\\.0\\\\.1:9004|10\\\\.0\\\\.0\\\\.2:9004"' in query
        chosen = [answer for prefix, answer in answers.items() if prefix in query]
        return chosen[-1]

    observer = PrometheusObserver("http://prometheus:9090/", fetch=fetch)
    seen = await observer.observe("dep-1", [A, B, SILENT], 30.0)
    assert seen is not None
    assert (seen.requests, seen.errors, seen.healthy_instances, seen.total_instances) == (400, 12, 2, 3)
    assert seen.latency_buckets == ((0.1, 380.0), (float("inf"), 400.0))
    nothing = await PrometheusObserver("http://p", fetch=pages).observe("dep-1", [SILENT], 30.0)
    assert nothing is not None and (nothing.healthy_instances, nothing.total_instances) == (0, 1)


async def test_a_prometheus_error_is_unavailable() -> None:
    async def failing(url: str, timeout: float) -> str:
        return json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"})

    with pytest.raises(Unavailable) as caught:
        await PrometheusObserver("http://p", fetch=failing).observe("dep-1", [A], 30.0)
    assert caught.value.reason == "METRICS_UNREADABLE"
