"""Settings of the compliance server (YAML section `compliance:`, env `SHIELDX_COMPLIANCE__<FIELD>`).

Ranges are declared on the fields (`bounded`) and enforced by the config loader, with errors
naming the key; `check()` adds what the ranges cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlparse

from servers.compliance.alerts.domain import ResponsePolicy
from servers.compliance.alerts.notifications import RetryPolicy, Webhook
from servers.compliance.assessments.runner import Thresholds
from servers.compliance.domain import Severity
from servers.compliance.evidence.collectors import Policy
from servers.compliance.remediation.domain import DuePolicy
from servers.mesh.config import ConfigError, bounded


@dataclass
class ComplianceSettings:
    """How the compliance server assesses, keeps evidence, and escalates."""

    monitoring_interval_seconds: float = bounded(3600.0, above=0)
    """How often the elected server runs an assessment of every framework (seconds allowed, for tests)."""
    monitoring: bool = True
    """Run the continuous assessments at all (the lead is still elected among servers sharing the store)."""
    probe_timeout_seconds: float = bounded(5.0, above=0)
    """Time one evidence collector may take; a probe past it is ERROR evidence."""
    call_timeout_seconds: float = bounded(2.0, above=0)
    """Deadline of each call a collector makes."""
    evidence_retention_days: float = bounded(365.0, above=0)
    """Evidence older than this is purged (with a recorded purge event)."""
    evidence_signing_key_file: str = ""
    """Ed25519 seed signing the evidence-chain head (default `<data_dir>/compliance-evidence-signing.key`)."""
    signing_key_max_age_days: float = bounded(90.0, above=0)
    """Oldest the token service's active signing key may be."""
    client_secret_max_age_days: float = bounded(365.0, above=0)
    """Oldest a client (and its secret) may be."""
    audit_head_max_age_seconds: float = bounded(3600.0, above=0)
    """Oldest the credits ledger's signed head may be."""
    recovery_time_objective_seconds: float = bounded(60.0, above=0)
    """Longest a shard failover may take."""
    certificate_min_days: int = bounded(14, at_least=0)
    """Fewest days a TLS certificate must still be valid."""
    required_retention_days: float = bounded(365.0, above=0)
    """Shortest retention of events, evidence, alerts and logs (PCI DSS 10.5.1: 12 months)."""
    change_window_days: float = bounded(30.0, above=0)
    """How far back deployments are checked for automated analysis."""
    alert_window_days: float = bounded(30.0, above=0)
    """How far back alert response is judged."""
    threshold_critical: float = bounded(0.0, at_least=0, at_most=1)
    """Share of failing CRITICAL controls in a framework above which a framework alert is raised."""
    threshold_high: float = bounded(0.1, at_least=0, at_most=1)
    """Same for HIGH."""
    threshold_medium: float = bounded(0.3, at_least=0, at_most=1)
    """Same for MEDIUM."""
    response_time_critical_seconds: float = bounded(900.0, above=0)
    """Unacknowledged CRITICAL alerts escalate after this, and again after each further period."""
    response_time_high_seconds: float = bounded(3600.0, above=0)
    """Same for HIGH."""
    due_critical_days: float = bounded(1.0, above=0)
    """Time to fix a failing CRITICAL control."""
    due_high_days: float = bounded(7.0, above=0)
    """Time to fix a failing HIGH control."""
    due_medium_days: float = bounded(30.0, above=0)
    """Time to fix a failing MEDIUM control."""
    due_low_days: float = bounded(90.0, above=0)
    """Time to fix a failing LOW control."""
    webhooks: list[str] = field(default_factory=list)
    """Webhook URLs alerts are POSTed to (http or https)."""
    webhook_secret: str = ""
    """Shared secret of the HMAC-SHA256 signature header; required with webhooks."""
    webhook_max_attempts: int = bounded(8, at_least=1)
    """Deliveries tried per notification before giving up."""
    webhook_initial_backoff_seconds: float = bounded(1.0, above=0)
    """Delay before the first retry (doubling per failure)."""
    webhook_max_backoff_seconds: float = bounded(600.0, above=0)
    """Longest delay between two attempts."""
    escalation_interval_seconds: float = bounded(5.0, above=0)
    """How often alerts are checked for escalation and notifications delivered."""
    request_id_retention_seconds: float = bounded(86400.0, above=0)
    """How long request ids are remembered for retries (AIP-155)."""

    def check(self) -> None:
        """Refuse what the field ranges cannot say (ConfigError naming the setting)."""
        for url in self.webhooks:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ConfigError(f"compliance.webhooks: {url!r} is not an http(s) URL")
        if self.webhooks and not self.webhook_secret:
            raise ConfigError("compliance.webhook_secret: required when webhooks are configured")

    def policy(self) -> Policy:
        """What evidence is judged against."""
        required = timedelta(days=self.required_retention_days)
        return Policy(
            signing_key_max_age=timedelta(days=self.signing_key_max_age_days),
            client_secret_max_age=timedelta(days=self.client_secret_max_age_days),
            audit_head_max_age=timedelta(seconds=self.audit_head_max_age_seconds),
            recovery_time_objective=timedelta(seconds=self.recovery_time_objective_seconds),
            certificate_min_days=self.certificate_min_days,
            required_retention={"events": required, "evidence": required, "alerts": required, "logs": required},
            change_window=timedelta(days=self.change_window_days),
        )

    def thresholds(self) -> Thresholds:
        """Framework alert thresholds."""
        return Thresholds(
            {
                Severity.CRITICAL: self.threshold_critical,
                Severity.HIGH: self.threshold_high,
                Severity.MEDIUM: self.threshold_medium,
            }
        )

    def response_policy(self) -> ResponsePolicy:
        """Escalation response times."""
        return ResponsePolicy(
            {
                Severity.CRITICAL: timedelta(seconds=self.response_time_critical_seconds),
                Severity.HIGH: timedelta(seconds=self.response_time_high_seconds),
            }
        )

    def due_policy(self) -> DuePolicy:
        """Remediation due times."""
        return DuePolicy(
            {
                Severity.CRITICAL: timedelta(days=self.due_critical_days),
                Severity.HIGH: timedelta(days=self.due_high_days),
                Severity.MEDIUM: timedelta(days=self.due_medium_days),
                Severity.LOW: timedelta(days=self.due_low_days),
            }
        )

    def webhook_targets(self) -> list[Webhook]:
        """The webhooks."""
        return [Webhook(url, self.webhook_secret) for url in self.webhooks]

    def retry_policy(self) -> RetryPolicy:
        """Webhook retries."""
        return RetryPolicy(
            max_attempts=self.webhook_max_attempts,
            initial_backoff=timedelta(seconds=self.webhook_initial_backoff_seconds),
            max_backoff=timedelta(seconds=self.webhook_max_backoff_seconds),
        )
