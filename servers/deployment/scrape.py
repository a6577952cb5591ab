"""Reading an instance's `/metrics`: the gRPC server series the analysis needs, and the
difference between two scrapes of it.

Only `grpc_server_handled_total{grpc_code}` and `grpc_server_handling_seconds_bucket` are
kept, per (service, method), leaving out health checks and reflection, which would dilute
the error rate with calls the new version cannot get wrong. Counters only grow, except
when the process restarts: a series smaller than before was reset, and its new value is all
that happened since (Prometheus' `increase` reads resets the same way).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from servers.deployment.analysis import Observation, is_server_error
from servers.mesh.errors import Unavailable

HANDLED_SAMPLE = "grpc_server_handled_total"
BUCKET_SAMPLE = "grpc_server_handling_seconds_bucket"
IGNORED_SERVICE_PREFIXES = ("grpc.health.", "grpc.reflection.")
"""Services whose calls say nothing about the version under test."""

Method = tuple[str, str]
"""(grpc_service, grpc_method)."""


@dataclass(frozen=True)
class Scrape:
    """The gRPC server counters of one instance at one moment (or the change between two)."""

    handled: Mapping[tuple[str, str, str], float] = field(default_factory=dict)
    """(service, method, grpc_code) → calls completed."""
    latency: Mapping[Method, Mapping[float, float]] = field(default_factory=dict)
    """(service, method) → {bucket upper bound in seconds: cumulative calls}."""


def parse_scrape(text: str, services: Collection[str] | None = None) -> Scrape:
    """The gRPC server series of a Prometheus text exposition.

    `services`, if given, keeps only those `grpc_service` values (full names such as
    `shieldx.credits.v1.CreditsService`). Raises Unavailable (METRICS_UNREADABLE) if the
    text is not an exposition, which makes the instance count as unhealthy.
    """
    handled: dict[tuple[str, str, str], float] = {}
    latency: dict[Method, dict[float, float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in (HANDLED_SAMPLE, BUCKET_SAMPLE):
                    continue
                labels = sample.labels
                service, method = labels.get("grpc_service", ""), labels.get("grpc_method", "")
                if not _wanted(service, services) or not math.isfinite(sample.value) or sample.value < 0:
                    continue
                if sample.name == HANDLED_SAMPLE:
                    key = (service, method, labels.get("grpc_code", ""))
                    handled[key] = handled.get(key, 0.0) + sample.value
                else:
                    bound = float(labels.get("le", "nan"))
                    if not math.isnan(bound):
                        series = latency.setdefault((service, method), {})
                        series[bound] = series.get(bound, 0.0) + sample.value
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise Unavailable(f"metrics are not a Prometheus exposition: {exc}", reason="METRICS_UNREADABLE") from exc
    return Scrape(handled, latency)


def _wanted(service: str, services: Collection[str] | None) -> bool:
    if not service or service.startswith(IGNORED_SERVICE_PREFIXES):
        return False
    return services is None or service in services


def scrape_delta(previous: Scrape | None, current: Scrape) -> Scrape:
    """What happened between two scrapes of one instance, counter resets included.

    A series that went down was reset by a restart: its current value is the increase. A
    histogram is reset as a whole when any bucket went down. Series that vanished (the
    restarted process has not served that method yet) contribute nothing.
    """
    if previous is None:
        return current
    handled = {key: _increase(previous.handled.get(key), value) for key, value in current.handled.items()}
    latency: dict[Method, Mapping[float, float]] = {}
    for method, buckets in current.latency.items():
        before = previous.latency.get(method)
        if before is None or any(count < before.get(bound, 0.0) for bound, count in buckets.items()):
            latency[method] = dict(buckets)
        else:
            latency[method] = {bound: count - before.get(bound, 0.0) for bound, count in buckets.items()}
    return Scrape(handled, latency)


def _increase(before: float | None, now: float) -> float:
    """A counter's increase; a counter below its previous value restarted from zero."""
    if before is None or now < before:
        return now
    return now - before


def observation(deltas: Iterable[Scrape], *, healthy_instances: int, total_instances: int) -> Observation:
    """One `Observation` of a version from the per-instance deltas of its healthy instances."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for delta in deltas:
        for (_service, _method, code), count in delta.handled.items():
            requests += count
            if is_server_error(code):
                errors += count
        for series in delta.latency.values():
            for bound, count in series.items():
                buckets[bound] = buckets.get(bound, 0.0) + count
    return Observation(
        requests=round(requests),
        errors=round(errors),
        latency_buckets=tuple(sorted(buckets.items())),
        healthy_instances=healthy_instances,
        total_instances=total_instances,
    )
