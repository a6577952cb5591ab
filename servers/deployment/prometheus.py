"""Reading a version's metrics from a Prometheus server's query API instead of scraping.

When a Prometheus server is configured, the analysis asks it for the same four numbers it
would otherwise compute from two scrapes: calls, server errors, latency buckets (all as
`increase` over the analysis interval, which copes with counter resets) and how many of
the version's instances are up. Instances are selected by Prometheus' `instance` label,
which by default is the `host:port` of the scraped `/metrics` endpoint, so the server must
scrape the endpoints the instances registered.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from servers.deployment.analysis import Observation
from servers.mesh.errors import InvalidArgument, Unavailable

SERVER_ERROR_CODES_REGEX = "(?i)unknown|deadline_?exceeded|unimplemented|internal|unavailable|data_?loss"
"""`grpc_code` values counted as server errors, in either spelling (`DeadlineExceeded`, `DEADLINE_EXCEEDED`)."""
_INFRASTRUCTURE = "grpc[.](health|reflection)[.].*"


@dataclass(frozen=True)
class VersionQueries:
    """The PromQL instant queries that observe one version over one interval."""

    requests: str
    """Calls completed (scalar vector)."""
    errors: str
    """Calls ending in a server error (scalar vector)."""
    buckets: str
    """Latency histogram, one sample per `le`."""
    up: str
    """Instances whose last scrape succeeded (scalar vector)."""


def _promql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def instance_labels(metrics_endpoints: Iterable[str]) -> list[str]:
    """The Prometheus `instance` labels (`host:port`) of metrics endpoint URLs."""
    labels = []
    for url in metrics_endpoints:
        parts = urlsplit(url)
        if not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        labels.append(f"{host}:{port}")
    return sorted(set(labels))


def version_queries(
    metrics_endpoints: Iterable[str], window_seconds: float, services: Collection[str] | None = None
) -> VersionQueries:
    """Queries over the last `window_seconds` for the instances behind `metrics_endpoints`.

    `services` restricts the `grpc_service` label to those full names; otherwise every
    service but health checks and reflection counts.
    """
    labels = instance_labels(metrics_endpoints)
    if not labels:
        raise InvalidArgument("metrics_endpoint", "no instance of the version has a metrics endpoint")
    if not math.isfinite(window_seconds) or window_seconds < 1:
        raise InvalidArgument("analysis.interval", "must be at least 1 s")
    instances = _promql_string("|".join(re.escape(label) for label in labels))
    if services:
        service_matcher = f'grpc_service=~"{_promql_string("|".join(re.escape(s) for s in sorted(services)))}"'
    else:
        service_matcher = f'grpc_service!~"{_promql_string(_INFRASTRUCTURE)}"'
    matchers = f'instance=~"{instances}",{service_matcher}'
    window = f"[{round(window_seconds)}s]"
    return VersionQueries(
        requests=f"sum(increase(grpc_server_handled_total{{{matchers}}}{window}))",
        errors=(
            f"sum(increase(grpc_server_handled_total{{{matchers},"
            f'grpc_code=~"{_promql_string(SERVER_ERROR_CODES_REGEX)}"}}{window}))'
        ),
        buckets=f"sum by (le) (increase(grpc_server_handling_seconds_bucket{{{matchers}}}{window}))",
        up=f'sum(up{{instance=~"{instances}"}})',
    )


def parse_vector(body: str | bytes | Mapping[str, Any]) -> list[tuple[dict[str, str], float]]:
    """(labels, value) samples of a `/api/v1/query` answer whose result is an instant vector.

    Raises Unavailable (METRICS_UNREADABLE) for an error answer or one of another shape.
    """
    try:
        answer = json.loads(body) if isinstance(body, str | bytes) else body
        if answer.get("status") != "success":
            raise ValueError(f"{answer.get('errorType', 'error')}: {answer.get('error', 'query failed')}")
        data = answer["data"]
        if data["resultType"] != "vector":
            raise ValueError(f"expected a vector, got {data['resultType']}")
        return [(dict(sample["metric"]), float(sample["value"][1])) for sample in data["result"]]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise Unavailable(f"Prometheus answer unusable: {exc}", reason="METRICS_UNREADABLE") from exc


def _scalar(samples: list[tuple[dict[str, str], float]]) -> float:
    total = sum(value for _, value in samples if math.isfinite(value))
    return max(total, 0.0)


def observation_from_vectors(
    *,
    requests: list[tuple[dict[str, str], float]],
    errors: list[tuple[dict[str, str], float]],
    buckets: list[tuple[dict[str, str], float]],
    up: list[tuple[dict[str, str], float]],
    total_instances: int,
) -> Observation:
    """An `Observation` from the answers to `version_queries` (an empty vector means zero)."""
    histogram: dict[float, float] = {}
    for labels, value in buckets:
        try:
            bound = float(labels["le"])
        except (KeyError, ValueError):
            continue
        if not math.isnan(bound) and math.isfinite(value):
            histogram[bound] = histogram.get(bound, 0.0) + max(value, 0.0)
    return Observation(
        requests=round(_scalar(requests)),
        errors=round(_scalar(errors)),
        latency_buckets=tuple(sorted(histogram.items())),
        healthy_instances=min(round(_scalar(up)), total_instances),
        total_instances=total_instances,
    )
