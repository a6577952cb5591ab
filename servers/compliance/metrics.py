"""Prometheus metrics of the compliance service (`shieldx_compliance_*`); label values are lower case
(`framework="soc2"`, `severity="critical"`), as the alert rules and the scorecard dashboard expect."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from servers.compliance.domain import ControlStatus, Severity

if TYPE_CHECKING:
    from servers.compliance.assessments.store import StoredAssessment


class ComplianceMetrics:
    """Scores, control counts, findings, open alerts, overdue remediations, assessment durations."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.score = Gauge(
            "shieldx_compliance_score",
            "Latest severity-weighted score per framework (0-1).",
            ["framework"],
            registry=registry,
        )
        self.controls = Gauge(
            "shieldx_compliance_controls",
            "Controls per framework by latest status.",
            ["framework", "status"],
            registry=registry,
        )
        self.findings = Counter(
            "shieldx_compliance_findings_total",
            "Failing control results found, by control severity.",
            ["severity"],
            registry=registry,
        )
        self.alerts_open = Gauge(
            "shieldx_compliance_alerts_open",
            "Open (unacknowledged) alerts by severity.",
            ["severity"],
            registry=registry,
        )
        self.remediations_overdue = Gauge(
            "shieldx_compliance_remediations_overdue", "Remediation tasks past their due time.", registry=registry
        )
        self.assessment_seconds = Histogram(
            "shieldx_compliance_assessment_duration_seconds",
            "Time to run one assessment, evidence collection included.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
            registry=registry,
        )

    def record_assessment(self, assessment: StoredAssessment, severities: Mapping[str, Severity] | None = None) -> None:
        """Gauges from a finished assessment; findings counted per failing result."""
        for score, _ in assessment.scores:
            name = score.framework.name.lower()
            self.score.labels(name).set(score.overall.score)
            counts = {
                ControlStatus.PASSING: score.overall.passing,
                ControlStatus.FAILING: score.overall.failing,
                ControlStatus.ERROR: score.overall.error,
                ControlStatus.NOT_ASSESSED: score.overall.not_assessed,
            }
            for status, count in counts.items():
                self.controls.labels(name, status.name.lower()).set(count)
        for result in assessment.results:
            if result.status is ControlStatus.FAILING:
                severity = (severities or {}).get(result.control_id)
                self.findings.labels(severity.name.lower() if severity else "unknown").inc()

    def record_alerts(self, open_counts: Mapping[Severity, int]) -> None:
        """The open-alert gauges."""
        for severity in Severity:
            self.alerts_open.labels(severity.name.lower()).set(open_counts.get(severity, 0))

    def record_overdue(self, overdue: int) -> None:
        """The overdue gauge."""
        self.remediations_overdue.set(overdue)
