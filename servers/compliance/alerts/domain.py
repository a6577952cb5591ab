"""Alert rules: validation, folding by dedup key, acknowledgement, escalation and the GDPR Art. 33 clock.

An open HIGH or CRITICAL alert not acknowledged within its severity's response time escalates
(level raised, notified again), and again after each further response time. An alert in a
personal-data-breach category starts a 72-hour notification deadline at its first occurrence;
it escalates at 48 h and 70 h, and stops only when the notification to the supervisory
authority is recorded.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from servers.compliance.domain import Severity
from servers.mesh.errors import FailedPrecondition, InvalidArgument

SELF = "shieldx.compliance.v1.ComplianceService"
"""How the service names itself as the source of the alerts it raises."""

BREACH_CATEGORIES = frozenset({"personal_data_breach", "honeytoken_used"})
"""Categories that are personal-data breaches: raised by a person, or by deception when a
honeytoken planted in synthetic user data is used."""

BREACH_DEADLINE = timedelta(hours=72)
BREACH_STAGES = (48, 70)
"""Hours after first seen at which an unnotified breach escalates."""

_CATEGORY = re.compile(r"^[a-z0-9_.]{1,100}$")


class AlertState:
    """The contract's AlertState numbers."""

    OPEN = 1
    ACKNOWLEDGED = 2


@dataclass(frozen=True)
class Alert:
    """A security alert."""

    alert_id: str
    source: str
    category: str
    severity: Severity
    state: int
    title: str
    description: str
    subject: str
    source_address: str
    attributes: Mapping[str, str]
    count: int
    first_seen: datetime
    last_seen: datetime
    dedup_key: str
    acknowledge_time: datetime | None = None
    acknowledged_by: str = ""
    acknowledgement_note: str = ""
    escalation_level: int = 0
    escalate_time: datetime | None = None
    notification_deadline: datetime | None = None
    authority_notify_time: datetime | None = None
    authority: str = ""
    authority_reference: str = ""
    breach_stage: int = 0
    """The last breach escalation made (0, 48 or 70 hours)."""
    version: int = 1

    @property
    def is_breach(self) -> bool:
        """Whether the GDPR Art. 33 clock applies."""
        return self.notification_deadline is not None


@dataclass(frozen=True)
class AlertReport:
    """A validated RaiseAlert request."""

    source: str
    category: str
    severity: Severity
    title: str
    description: str = ""
    subject: str = ""
    source_address: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    dedup_key: str = ""
    occur_time: datetime | None = None


def validate_report(report: AlertReport) -> AlertReport:
    """The report if every field is in range; InvalidArgument naming the first field that is not."""
    if not 1 <= len(report.source) <= 200:
        raise InvalidArgument("source", "must be 1-200 characters")
    if not _CATEGORY.match(report.category):
        raise InvalidArgument("category", "must be 1-100 characters of lowercase letters, digits, '_' and '.'")
    if not 1 <= len(report.title) <= 200:
        raise InvalidArgument("title", "must be 1-200 characters")
    if len(report.description) > 4000:
        raise InvalidArgument("description", "must be at most 4,000 characters")
    if len(report.subject) > 200:
        raise InvalidArgument("subject", "must be at most 200 characters")
    if len(report.dedup_key) > 200:
        raise InvalidArgument("dedup_key", "must be at most 200 characters")
    if report.source_address:
        try:
            ipaddress.ip_address(report.source_address)
        except ValueError:
            raise InvalidArgument("source_address", "must be an IPv4 or IPv6 address") from None
    if len(report.attributes) > 32:
        raise InvalidArgument("attributes", "must have at most 32 entries")
    for key, value in report.attributes.items():
        if not 1 <= len(key) <= 64:
            raise InvalidArgument("attributes", "keys must be 1-64 characters")
        if len(value) > 1000:
            raise InvalidArgument(f"attributes[{key}]", "must be at most 1,000 characters")
    return report


def new_alert_id() -> str:
    """A fresh alert id."""
    return f"alr_{secrets.token_hex(8)}"


def open_alert(report: AlertReport, now: datetime) -> Alert:
    """A new alert for `report`; a breach category starts the 72-hour clock."""
    seen = report.occur_time or now
    return Alert(
        alert_id=new_alert_id(),
        source=report.source,
        category=report.category,
        severity=report.severity,
        state=AlertState.OPEN,
        title=report.title,
        description=report.description,
        subject=report.subject,
        source_address=report.source_address,
        attributes=dict(report.attributes),
        count=1,
        first_seen=seen,
        last_seen=seen,
        dedup_key=report.dedup_key,
        notification_deadline=seen + BREACH_DEADLINE if report.category in BREACH_CATEGORIES else None,
    )


def fold(alert: Alert, report: AlertReport, now: datetime) -> Alert:
    """`report` folded into the open `alert`: count up, last seen and severity raised."""
    seen = report.occur_time or now
    return replace(
        alert,
        count=alert.count + 1,
        last_seen=max(alert.last_seen, seen),
        severity=max(alert.severity, report.severity),
        title=report.title,
        description=report.description or alert.description,
        attributes={**alert.attributes, **report.attributes},
    )


def acknowledge(alert: Alert, by: str, note: str, now: datetime) -> Alert:
    """The alert acknowledged; acknowledging twice keeps the first acknowledgement."""
    if len(note) > 2000:
        raise InvalidArgument("note", "must be at most 2,000 characters")
    if alert.state == AlertState.ACKNOWLEDGED:
        return alert
    return replace(
        alert, state=AlertState.ACKNOWLEDGED, acknowledge_time=now, acknowledged_by=by, acknowledgement_note=note
    )


def record_notification(alert: Alert, authority: str, reference: str, when: datetime) -> Alert:
    """The breach notified to the supervisory authority: its clock stops."""
    if not 1 <= len(authority) <= 200:
        raise InvalidArgument("authority", "must be 1-200 characters")
    if len(reference) > 200:
        raise InvalidArgument("reference", "must be at most 200 characters")
    if not alert.is_breach:
        raise FailedPrecondition(
            f"alert {alert.alert_id} is not a personal-data breach",
            reason="NOT_A_BREACH",
            metadata={"alert_id": alert.alert_id},
        )
    if alert.authority_notify_time is not None:
        return alert
    return replace(alert, authority_notify_time=when, authority=authority, authority_reference=reference)


@dataclass(frozen=True)
class ResponsePolicy:
    """How long each severity may stay unacknowledged before it escalates."""

    response_times: Mapping[Severity, timedelta]

    def response_time(self, severity: Severity) -> timedelta | None:
        """None: this severity never escalates."""
        return self.response_times.get(severity)


@dataclass(frozen=True)
class Escalation:
    """An alert escalated, and why (the notification reason)."""

    alert: Alert
    reason: str


def escalate(alert: Alert, policy: ResponsePolicy, now: datetime) -> Escalation | None:
    """The escalation due for `alert` at `now`, if any (one step at a time)."""
    stage = breach_stage_due(alert, now)
    if stage:
        return Escalation(
            replace(alert, breach_stage=stage, escalation_level=alert.escalation_level + 1, escalate_time=now),
            f"breach_deadline_{stage}h",
        )
    limit = policy.response_time(alert.severity)
    if alert.state != AlertState.OPEN or limit is None:
        return None
    steps_due = int((now - alert.first_seen) / limit) if limit > timedelta(0) else 0
    response_levels = alert.escalation_level - _breach_levels(alert)
    if steps_due <= response_levels:
        return None
    return Escalation(replace(alert, escalation_level=alert.escalation_level + 1, escalate_time=now), "escalated")


def _breach_levels(alert: Alert) -> int:
    return sum(1 for stage in BREACH_STAGES if alert.breach_stage >= stage)


def breach_stage_due(alert: Alert, now: datetime) -> int:
    """The breach escalation stage (48 or 70) newly reached at `now`, or 0."""
    if not alert.is_breach or alert.authority_notify_time is not None:
        return 0
    elapsed = now - alert.first_seen
    due = [stage for stage in BREACH_STAGES if elapsed >= timedelta(hours=stage) and alert.breach_stage < stage]
    return max(due) if due else 0


def breach_overdue(alert: Alert, now: datetime) -> bool:
    """True while the breach is past its deadline and not notified."""
    deadline = alert.notification_deadline
    return deadline is not None and alert.authority_notify_time is None and now > deadline


def responded_in_time(alert: Alert, policy: ResponsePolicy, now: datetime) -> bool | None:
    """For HIGH/CRITICAL alerts: acknowledged within the response time (or still within it); None otherwise."""
    if alert.severity < Severity.HIGH:
        return None
    limit = policy.response_time(alert.severity)
    if limit is None:
        return None
    answered = alert.acknowledge_time or now
    return answered - alert.first_seen <= limit
