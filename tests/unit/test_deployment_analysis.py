"""Canary analysis: p95 from histograms, verdicts, Prometheus scrapes and their deltas."""

from __future__ import annotations

import json
import math

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from clients.telemetry import GrpcMetrics
from servers.deployment.analysis import (
    AnalysisThresholds,
    Observation,
    Verdict,
    histogram_quantile,
    is_server_error,
    judge,
    thresholds,
)
from servers.deployment.prometheus import observation_from_vectors, parse_vector, version_queries
from servers.deployment.scrape import Scrape, observation, parse_scrape, scrape_delta
from servers.mesh.errors import InvalidArgument, Unavailable

INF = math.inf
CREDITS = "shieldx.credits.v1.CreditsService"


# -- histogram_quantile ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantile", "buckets", "expected"),
    [
        # Linear interpolation inside the bucket holding the rank (Prometheus' own test data:
        # 0.1:50, 0.2:70, 0.4:90, 1:100, +Inf:100 ... rank 95 lies in (0.4, 1]).
        (0.95, [(0.1, 50), (0.2, 70), (0.4, 90), (1.0, 100), (INF, 100)], 0.4 + 0.6 * 0.5),
        (0.5, [(0.1, 50), (0.2, 70), (0.4, 90), (1.0, 100), (INF, 100)], 0.1),
        (0.6, [(0.1, 50), (0.2, 70), (0.4, 90), (1.0, 100), (INF, 100)], 0.15),
        # The first bucket starts at zero.
        (0.25, [(1.0, 4), (INF, 4)], 0.25),
        # A rank in the +Inf bucket gives the highest finite bound.
        (0.99, [(0.5, 10), (1.0, 90), (INF, 100)], 1.0),
        # Unordered input and a bucket that dipped (racing scrape) are evened out: 0.5 holds
        # 5 like 0.25 does, so rank 5 ends at the top of the first bucket.
        (0.5, [(INF, 10), (1.0, 10), (0.5, 4), (0.25, 5)], 0.25),
        (0.75, [(INF, 10), (1.0, 10), (0.5, 4), (0.25, 5)], 0.5 + 0.5 * 2.5 / 5),
        # Out-of-range quantiles and empty histograms, as Prometheus answers them.
        (-0.1, [(1.0, 1), (INF, 1)], -INF),
        (1.1, [(1.0, 1), (INF, 1)], INF),
    ],
)
def test_histogram_quantile_interpolates_like_prometheus(
    quantile: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert histogram_quantile(quantile, buckets) == pytest.approx(expected)


@pytest.mark.parametrize(
    "buckets",
    [[], [(1.0, 5)], [(0.5, 3), (1.0, 5)], [(1.0, 0), (INF, 0)]],
)
def test_histogram_quantile_without_usable_data_is_nan(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(histogram_quantile(0.95, buckets))


# -- verdicts ---------------------------------------------------------------------------------------------


def seen(
    requests: int = 1000, errors: int = 0, p95_bucket: float = 0.1, healthy: int = 2, total: int = 2
) -> Observation:
    """An interval whose calls all took at most `p95_bucket` seconds."""
    buckets = ((p95_bucket / 2, 0.0), (p95_bucket, float(requests)), (INF, float(requests)))
    return Observation(requests, errors, buckets if requests else (), healthy, total)


@pytest.mark.parametrize(
    ("observed", "verdict", "codes"),
    [
        (seen(), Verdict.PASS, []),
        (seen(errors=50), Verdict.PASS, []),  # exactly 5 % passes
        (seen(errors=51), Verdict.FAIL, ["ERROR_RATE_TOO_HIGH"]),
        (seen(p95_bucket=2.5), Verdict.FAIL, ["P95_LATENCY_TOO_HIGH"]),
        (seen(healthy=0, total=2), Verdict.FAIL, ["TOO_FEW_HEALTHY_INSTANCES"]),
        (seen(healthy=1, total=2), Verdict.PASS, []),  # 50 % healthy passes
        (seen(healthy=1, total=3), Verdict.FAIL, ["TOO_FEW_HEALTHY_INSTANCES"]),
        (seen(total=0, healthy=0), Verdict.FAIL, ["NO_INSTANCES"]),
        (seen(requests=19, errors=19), Verdict.INCONCLUSIVE, ["INSUFFICIENT_REQUESTS"]),
        (seen(requests=0), Verdict.INCONCLUSIVE, ["INSUFFICIENT_REQUESTS"]),
        (seen(requests=5, healthy=0), Verdict.FAIL, ["TOO_FEW_HEALTHY_INSTANCES", "INSUFFICIENT_REQUESTS"]),
        (Observation(100, 0, (), 1, 1), Verdict.INCONCLUSIVE, ["NO_LATENCY_DATA"]),
        (seen(errors=200, p95_bucket=3.0), Verdict.FAIL, ["ERROR_RATE_TOO_HIGH", "P95_LATENCY_TOO_HIGH"]),
    ],
)
def test_verdicts_follow_the_default_thresholds(observed: Observation, verdict: Verdict, codes: list[str]) -> None:
    outcome = judge(observed, AnalysisThresholds())
    assert outcome.verdict is verdict
    assert [reason.split(":")[0] for reason in outcome.reasons] == codes


def test_an_outcome_carries_the_numbers_behind_it() -> None:
    outcome = judge(seen(requests=200, errors=4, p95_bucket=0.2, healthy=3, total=4), AnalysisThresholds())
    assert (outcome.requests, outcome.errors, outcome.error_rate, outcome.healthy_share) == (200, 4, 0.02, 0.75)
    assert outcome.p95_latency == pytest.approx(0.1 + 0.1 * 0.95)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_error_rate", 1.5),
        ("max_error_rate", -0.1),
        ("max_error_rate", math.nan),
        ("min_healthy_share", 2.0),
        ("max_p95_latency", -1.0),
        ("min_requests", -1),
        ("failure_limit", 0),
        ("interval", 0.5),
    ],
)
def test_bad_thresholds_name_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        thresholds(**{field: value})  # type: ignore[arg-type]
    assert caught.value.metadata["field"] == f"analysis.{field}"


def test_unset_thresholds_take_the_documented_defaults() -> None:
    assert thresholds() == AnalysisThresholds(0.05, 0.5, 1.0, 20, 2, 30.0)
    assert thresholds(max_error_rate=0.0).max_error_rate == 0.0  # zero errors allowed is a real choice


@pytest.mark.parametrize(
    ("code", "server_error"),
    [
        ("OK", False),
        ("Unavailable", True),
        ("UNAVAILABLE", True),
        ("DeadlineExceeded", True),
        ("DEADLINE_EXCEEDED", True),
        ("InvalidArgument", False),
        ("NotFound", False),
        ("Internal", True),
        ("Canceled", False),
        ("ResourceExhausted", False),
    ],
)
def test_only_server_side_codes_count_as_errors(code: str, server_error: bool) -> None:
    assert is_server_error(code) is server_error


# -- scrapes ----------------------------------------------------------------------------------------------


def exposition(calls: list[tuple[str, str, grpc.StatusCode, float]]) -> str:
    """A real `/metrics` body as the mesh's metrics interceptor writes it."""
    registry = CollectorRegistry()
    metrics = GrpcMetrics("server", registry)
    for service, method, code, seconds in calls:
        metrics.record_start("unary", service, method)
        metrics.record_end("unary", service, method, code, seconds)
    return generate_latest(registry).decode()


def test_a_scrape_keeps_the_grpc_series_and_leaves_out_health_checks() -> None:
    text = exposition(
        [(CREDITS, "Consume", grpc.StatusCode.OK, 0.004)] * 8
        + [(CREDITS, "Consume", grpc.StatusCode.UNAVAILABLE, 0.2)] * 2
        + [("grpc.health.v1.Health", "Check", grpc.StatusCode.OK, 0.001)] * 50
    )
    scrape = parse_scrape(text)
    assert scrape.handled == {(CREDITS, "Consume", "OK"): 8.0, (CREDITS, "Consume", "Unavailable"): 2.0}
    assert scrape.latency[(CREDITS, "Consume")][0.005] == 8.0
    assert scrape.latency[(CREDITS, "Consume")][INF] == 10.0
    assert parse_scrape(text, services={"shieldx.tokens.v1.TokensService"}).handled == {}


def test_an_unreadable_exposition_makes_the_instance_unhealthy() -> None:
    with pytest.raises(Unavailable) as caught:
        parse_scrape('grpc_server_handled_total{grpc_code="OK" 12\n')
    assert caught.value.reason == "METRICS_UNREADABLE"


def test_deltas_subtract_the_previous_scrape() -> None:
    before = Scrape({(CREDITS, "Consume", "OK"): 100.0}, {(CREDITS, "Consume"): {0.1: 90.0, INF: 100.0}})
    after = Scrape(
        {(CREDITS, "Consume", "OK"): 130.0, (CREDITS, "Consume", "Internal"): 5.0},
        {(CREDITS, "Consume"): {0.1: 110.0, INF: 135.0}},
    )
    delta = scrape_delta(before, after)
    assert delta.handled == {(CREDITS, "Consume", "OK"): 30.0, (CREDITS, "Consume", "Internal"): 5.0}
    assert delta.latency == {(CREDITS, "Consume"): {0.1: 20.0, INF: 35.0}}


def test_a_counter_reset_counts_the_new_value_not_a_negative_delta() -> None:
    before = Scrape({(CREDITS, "Consume", "OK"): 500.0}, {(CREDITS, "Consume"): {0.1: 450.0, INF: 500.0}})
    restarted = Scrape({(CREDITS, "Consume", "OK"): 12.0}, {(CREDITS, "Consume"): {0.1: 10.0, INF: 12.0}})
    delta = scrape_delta(before, restarted)
    assert delta.handled == {(CREDITS, "Consume", "OK"): 12.0}
    assert delta.latency == {(CREDITS, "Consume"): {0.1: 10.0, INF: 12.0}}


def test_the_first_scrape_of_an_instance_counts_whole() -> None:
    first = Scrape({(CREDITS, "Consume", "OK"): 7.0}, {})
    assert scrape_delta(None, first) == first


def test_an_observation_sums_the_instances_of_a_version_and_judges_it() -> None:
    healthy_instance = parse_scrape(exposition([(CREDITS, "Consume", grpc.StatusCode.OK, 0.02)] * 40))
    failing_instance = parse_scrape(
        exposition(
            [(CREDITS, "Consume", grpc.StatusCode.OK, 0.02)] * 30
            + [(CREDITS, "Consume", grpc.StatusCode.INTERNAL, 0.02)] * 10
        )
    )
    observed = observation([healthy_instance, failing_instance], healthy_instances=2, total_instances=2)
    assert (observed.requests, observed.errors) == (80, 10)
    outcome = judge(observed, AnalysisThresholds())
    assert outcome.verdict is Verdict.FAIL
    assert outcome.error_rate == pytest.approx(0.125)
    assert outcome.p95_latency is not None and 0.01 < outcome.p95_latency <= 0.025


# -- Prometheus query API ---------------------------------------------------------------------------------


def test_queries_select_the_versions_instances_by_their_metrics_address() -> None:
    queries = version_queries(
        ["http://10.0.0.7:9104/metrics", "http://[::1]:9105/metrics", "https://canary.local/m"], 30
    )
    assert 'instance=~"10\\\\.0\\\\.0\\\\.7:9104|\\\\[::1\\\\]:9105|canary\\\\.local:443"' in queries.requests
    assert queries.requests.startswith("sum(increase(grpc_server_handled_total{")
    assert queries.requests.endswith("[30s]))")
    assert 'grpc_service!~"grpc[.](health|reflection)[.].*"' in queries.requests
    assert "grpc_code=~" in queries.errors and "grpc_code" not in queries.requests
    assert queries.buckets.startswith("sum by (le) (increase(grpc_server_handling_seconds_bucket{")
    assert queries.up.startswith("sum(up{instance=~")
    only = version_queries(["http://h:1/metrics"], 10, services={CREDITS})
    assert 'grpc_service=~"shieldx\\\\.credits\\\\.v1\\\\.CreditsService"' in only.requests


def test_queries_need_a_metrics_endpoint() -> None:
    with pytest.raises(InvalidArgument) as caught:
        version_queries(["", "not a url"], 30)
    assert caught.value.metadata["field"] == "metrics_endpoint"


def test_prometheus_answers_become_an_observation() -> None:
    def vector(*samples: tuple[dict[str, str], str]) -> str:
        result = [{"metric": labels, "value": [1_900_000_000.0, value]} for labels, value in samples]
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})

    observed = observation_from_vectors(
        requests=parse_vector(vector(({}, "400.0000001"))),
        errors=parse_vector(vector(({}, "30"))),
        buckets=parse_vector(vector(({"le": "0.1"}, "300"), ({"le": "0.5"}, "390"), ({"le": "+Inf"}, "400"))),
        up=parse_vector(vector(({}, "2"))),
        total_instances=3,
    )
    assert (observed.requests, observed.errors, observed.healthy_instances) == (400, 30, 2)
    assert observed.latency_buckets == ((0.1, 300.0), (0.5, 390.0), (INF, 400.0))
    assert judge(observed, AnalysisThresholds()).verdict is Verdict.FAIL  # 7.5 % errors
    empty = observation_from_vectors(requests=[], errors=[], buckets=[], up=[], total_instances=1)
    assert judge(empty, AnalysisThresholds()).verdict is Verdict.FAIL  # nothing up


@pytest.mark.parametrize(
    "body",
    [
        '{"status": "error", "errorType": "bad_data", "error": "parse error"}',
        '{"status": "success", "data": {"resultType": "matrix", "result": []}}',
        '{"status": "success"}',
        "<html>",
    ],
)
def test_unusable_prometheus_answers_are_unavailable(body: str) -> None:
    with pytest.raises(Unavailable) as caught:
        parse_vector(body)
    assert caught.value.reason == "METRICS_UNREADABLE"
