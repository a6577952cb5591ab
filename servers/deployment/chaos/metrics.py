"""The chaos controller's Prometheus metrics (`shieldx_chaos_*`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ChaosMetrics:
    """Experiments by type and outcome, safety violations, recovery times and active faults."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.experiments = Counter(
            "shieldx_chaos_experiments_total",
            "Chaos experiments by type and status (RUNNING when started, then COMPLETED, ABORTED or REFUSED).",
            ["type", "status"],
            registry=registry,
        )
        self.violations = Counter(
            "shieldx_chaos_safety_violations_total",
            "Abort conditions met (each rolled its experiment back).",
            registry=registry,
        )
        self.recovery = Histogram(
            "shieldx_chaos_recovery_time_seconds",
            "From the end of a fault (the kill, for service failure) until the hypothesis held again.",
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120),
            registry=registry,
        )
        self.active_faults = Gauge(
            "shieldx_chaos_active_faults", "Fault injections installed by running experiments.", registry=registry
        )
