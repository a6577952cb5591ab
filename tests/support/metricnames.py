"""The metric names that `deploy/` uses (alert rules, Grafana panels) and those a `/metrics` page exports.

`deploy_expressions()` lists every PromQL expression in the Prometheus rules and the Grafana
dashboards; `metric_names(expr)` the metric names one reads (recording rules resolved to the
series they are built from); `exported_names(page)` every series name a scrape offers,
including the `_bucket`/`_count`/`_sum` and `_total` forms of families that have no sample yet.

`EXPORTED_WHEN_CONFIGURED` names the series only a differently configured server exports
(credits on shards). `NOT_YET_EXPORTED` is the allowlist of names that rules and dashboards
already use but that work in progress will export, each with the issue that adds it (empty now
that compliance, chaos and DR metrics have landed); an entry the mesh does export fails the test.
`APPEAR_AFTER_EVENT` names series that exist only after an event the e2e mesh does not stage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "shieldx.rules.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"

# Named by issues whose work is landing in parallel; remove an entry when the metric exists.
NOT_YET_EXPORTED: dict[str, str] = {}

# Series Prometheus itself adds to every target; no server exports them.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}

# Exported only by servers configured in a way `shieldx up` does not use; another test scrapes each.
EXPORTED_WHEN_CONFIGURED: dict[str, str] = {
    "shieldx_credits_prepared_transactions_unresolved": "credits on shards (tests/e2e/test_credits_sharded.py)",
}

_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "exp", "floor",
    "group", "histogram_quantile", "idelta", "increase", "irate", "label_replace", "last_over_time", "ln",
    "max", "max_over_time", "min", "min_over_time", "predict_linear", "quantile", "quantile_over_time",
    "rate", "resets", "round", "scalar", "sort", "sort_desc", "sqrt", "stddev", "stdvar", "sum",
    "sum_over_time", "time", "timestamp", "topk", "vector",
}  # fmt: skip
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def recording_rules() -> dict[str, str]:
    """Recorded series name → the expression that records it."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"] if "record" in rule}


def deploy_expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert rule and every dashboard panel target."""
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]
    for path in sorted(DASHBOARDS.glob("*.json")):
        for title, expr in dashboard_expressions(json.loads(path.read_text())):
            yield f"{path.name}: {title}", expr


def dashboard_expressions(dashboard: dict[str, object]) -> Iterator[tuple[str, str]]:
    """(panel title, expression) for every target of every panel, rows included."""
    panels = list(dashboard.get("panels", []))  # type: ignore[call-overload]
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", "?"), target["expr"]


def metric_names(expr: str, recorded: dict[str, str] | None = None) -> set[str]:
    """The metric names `expr` reads, with recording rules replaced by what they read."""
    recorded = recording_rules() if recorded is None else recorded
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    names: set[str] = set()
    for match in _NAME.finditer(text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if word in _FUNCTIONS or word in _KEYWORDS or rest.startswith("("):
            continue
        if re.fullmatch(r"\d+(e\d+)?", word) or (match.start() > 0 and text[match.start() - 1].isdigit()):
            continue
        if word in SCRAPE_SERIES:
            continue
        if word in recorded:
            names |= metric_names(recorded[word], recorded)
        else:
            names.add(word)
    return names


def exported_names(page: str) -> set[str]:
    """Every series name a `/metrics` page offers (families without samples yet included)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
    names: set[str] = set()
    for family in text_string_to_metric_families(page):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


# Series that appear only after an event the e2e mesh does not stage; a panel reading one may be empty.
APPEAR_AFTER_EVENT: dict[str, str] = {
    "shieldx_deployment_analyses_total": "an analysis of a deployment in progress",
    "shieldx_deployment_automatic_rollbacks_total": "an automatic rollback",
    "shieldx_deployment_new_version_weight_percent": "a deployment in progress",
    "shieldx_sharding_failovers_total": "a shard failover",
    "shieldx_sharding_failover_recovery_seconds_bucket": "a shard failover",
    "shieldx_sharding_replication_lag_seconds": "a shard with a replica",
    "shieldx_sharding_replication_lag_bytes": "a shard with a replica",
    "shieldx_chaos_experiments_total": "a chaos experiment",
    "shieldx_client_circuit_breaker_trips_total": "a circuit breaker opening",
    "shieldx_dr_region_state": "a registered region",
    "shieldx_dr_region_health_score": "a registered region",
    "shieldx_dr_node_health_score": "a node in a region",
    "shieldx_dr_cross_region_lag_bytes": "a replica in another region",
    "shieldx_dr_promised_rpo_seconds": "a shard with regions",
    "shieldx_dr_rpo_objective_breached": "a shard with regions",
    "shieldx_dr_last_region_failover_seconds": "a region failover",
    "shieldx_dr_last_failover_rpo_bytes": "a failover",
    "shieldx_dr_replication_mode": "a shard with a managed replication mode",
}
