"""Canary analysis: whether the new version is healthy, from what it did in one interval.

An `Observation` (calls, server errors, latency histogram, healthy instances) is judged
against `AnalysisThresholds` into PASS, FAIL or INCONCLUSIVE with a reason per finding.
Too few healthy instances fails whatever the traffic; error rate and p95 latency are only
judged once the interval saw `min_requests` calls, since a handful of calls proves nothing
either way. The p95 is interpolated from histogram buckets exactly as Prometheus'
`histogram_quantile` does, so the number matches what operators see on their dashboards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from servers.mesh.errors import InvalidArgument

SERVER_ERROR_CODES = frozenset({"UNKNOWN", "DEADLINEEXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATALOSS"})
"""gRPC codes that count as the server's fault (normalised: upper case, no underscores)."""


def is_server_error(code: str) -> bool:
    """True if a `grpc_code` label (`Unavailable`, `UNAVAILABLE`, `DeadlineExceeded`...) is a server error."""
    return code.replace("_", "").upper() in SERVER_ERROR_CODES


class Verdict(StrEnum):
    """The outcome of one analysis."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True)
class AnalysisThresholds:
    """When the new version passes. Defaults are the documented ones of CreateDeployment."""

    max_error_rate: float = 0.05
    """Highest share of calls ending in a server error that still passes (0..1)."""
    min_healthy_share: float = 0.5
    """Lowest share of the new version's instances that must be healthy (0..1)."""
    max_p95_latency: float = 1.0
    """Highest p95 latency in seconds that still passes."""
    min_requests: int = 20
    """Fewest calls in an interval before error rate and latency are judged."""
    failure_limit: int = 2
    """Failed analyses in a row that trigger the rollback."""
    interval: float = 30.0
    """Seconds between analyses."""


def thresholds(
    *,
    max_error_rate: float | None = None,
    min_healthy_share: float | None = None,
    max_p95_latency: float | None = None,
    min_requests: int | None = None,
    failure_limit: int | None = None,
    interval: float | None = None,
) -> AnalysisThresholds:
    """Validated thresholds from a request; None (or a zero duration) takes the default.

    Errors name the field as in `CreateDeploymentRequest.analysis`.
    """
    base = AnalysisThresholds()
    checked = AnalysisThresholds(
        max_error_rate=_share(max_error_rate, base.max_error_rate, "analysis.max_error_rate"),
        min_healthy_share=_share(min_healthy_share, base.min_healthy_share, "analysis.min_healthy_share"),
        max_p95_latency=_seconds(max_p95_latency, base.max_p95_latency, "analysis.max_p95_latency", 3600.0),
        min_requests=_count(min_requests, base.min_requests, "analysis.min_requests", 0, 10**12),
        failure_limit=_count(failure_limit, base.failure_limit, "analysis.failure_limit", 1, 100),
        interval=_seconds(interval, base.interval, "analysis.interval", 3600.0),
    )
    if checked.interval < 1.0:
        raise InvalidArgument("analysis.interval", "must be at least 1 s")
    return checked


def _share(value: float | None, default: float, field_name: str) -> float:
    if value is None:
        return default
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidArgument(field_name, "must be from 0 to 1")
    return value


def _seconds(value: float | None, default: float, field_name: str, ceiling: float) -> float:
    if value is None or value == 0:
        return default
    if not math.isfinite(value) or value < 0 or value > ceiling:
        raise InvalidArgument(field_name, f"must be positive and at most {ceiling:g} s")
    return value


def _count(value: int | None, default: int, field_name: str, floor: int, ceiling: int) -> int:
    if value is None:
        return default
    if not floor <= value <= ceiling:
        raise InvalidArgument(field_name, f"must be from {floor} to {ceiling}")
    return value


@dataclass(frozen=True)
class Observation:
    """What the new version did over one interval (deltas, not running totals)."""

    requests: int
    """Calls handled."""
    errors: int
    """Of those, calls ending in a server error."""
    latency_buckets: tuple[tuple[float, float], ...]
    """Cumulative latency histogram: (upper bound in seconds, calls at or under it), `inf` last."""
    healthy_instances: int
    """Instances of the new version that answered (scraped, serving)."""
    total_instances: int
    """Instances of the new version registered."""


@dataclass(frozen=True)
class AnalysisOutcome:
    """A verdict and the numbers behind it."""

    verdict: Verdict
    """PASS, FAIL or INCONCLUSIVE."""
    requests: int
    """Calls in the interval."""
    errors: int
    """Server errors in the interval."""
    error_rate: float
    """errors / requests (0 without requests)."""
    p95_latency: float | None
    """Interpolated p95 in seconds; None without latency observations."""
    healthy_share: float
    """healthy / registered instances (0 without instances)."""
    reasons: tuple[str, ...]
    """One line per finding, each starting with an UPPER_SNAKE code."""


def histogram_quantile(quantile: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The `quantile` of a cumulative histogram, as Prometheus' `histogram_quantile` computes it.

    `buckets` are (upper bound, cumulative count) in any order and must include `+inf`. The
    value is interpolated linearly inside the bucket holding the rank; a rank in the `+inf`
    bucket gives the highest finite bound. NaN when there is nothing to compute from.
    """
    if math.isnan(quantile):
        return math.nan
    if quantile < 0:
        return -math.inf
    if quantile > 1:
        return math.inf
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    monotonic: list[tuple[float, float]] = []
    for bound, count in ordered:  # scrapes racing increments can dip; Prometheus evens them out
        monotonic.append((bound, max(count, monotonic[-1][1]) if monotonic else count))
    observations = monotonic[-1][1]
    if observations <= 0:
        return math.nan
    rank = quantile * observations
    index = next(i for i, (_, count) in enumerate(monotonic) if count >= rank)
    if index == len(monotonic) - 1:
        return monotonic[-2][0]
    if index == 0 and monotonic[0][0] <= 0:
        return monotonic[0][0]
    start, end, count = 0.0, monotonic[index][0], monotonic[index][1]
    if index > 0:
        start = monotonic[index - 1][0]
        count -= monotonic[index - 1][1]
        rank -= monotonic[index - 1][1]
    return start + (end - start) * (rank / count)


def judge(observation: Observation, limits: AnalysisThresholds) -> AnalysisOutcome:
    """PASS, FAIL or INCONCLUSIVE for one interval of the new version."""
    requests, errors = max(observation.requests, 0), max(observation.errors, 0)
    error_rate = errors / requests if requests else 0.0
    total = max(observation.total_instances, 0)
    healthy_share = min(max(observation.healthy_instances, 0), total) / total if total else 0.0
    p95 = histogram_quantile(0.95, observation.latency_buckets) if observation.latency_buckets else math.nan
    p95_latency = None if math.isnan(p95) else p95

    failures: list[str] = []
    doubts: list[str] = []
    if total == 0:
        failures.append("NO_INSTANCES: the new version has no registered instance")
    elif healthy_share < limits.min_healthy_share:
        failures.append(f"TOO_FEW_HEALTHY_INSTANCES: {healthy_share:.2f} < {limits.min_healthy_share:.2f}")
    if requests < limits.min_requests:
        doubts.append(f"INSUFFICIENT_REQUESTS: {requests} < {limits.min_requests}")
    else:
        if error_rate > limits.max_error_rate:
            failures.append(f"ERROR_RATE_TOO_HIGH: {error_rate:.4f} > {limits.max_error_rate:.4f}")
        if p95_latency is None:
            doubts.append("NO_LATENCY_DATA: the latency histogram is empty")
        elif p95_latency > limits.max_p95_latency:
            failures.append(f"P95_LATENCY_TOO_HIGH: {p95_latency:.3f}s > {limits.max_p95_latency:.3f}s")

    verdict = Verdict.FAIL if failures else Verdict.INCONCLUSIVE if doubts else Verdict.PASS
    return AnalysisOutcome(
        verdict=verdict,
        requests=requests,
        errors=errors,
        error_rate=error_rate,
        p95_latency=p95_latency,
        healthy_share=healthy_share,
        reasons=tuple(failures + doubts),
    )
