"""The alert desk: raising, folding, acknowledging and escalating alerts, and announcing each on every channel.

Every change that must reach a person writes its notifications (one per channel) in the same
transaction as the alert, so nothing announced is lost and nothing lost is announced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from servers.compliance.alerts.domain import (
    Alert,
    AlertReport,
    ResponsePolicy,
    acknowledge,
    breach_overdue,
    escalate,
    fold,
    open_alert,
    record_notification,
    responded_in_time,
    validate_report,
)
from servers.compliance.alerts.notifications import Notifier
from servers.compliance.alerts.store import AlertStore
from servers.compliance.domain import EvidenceKind
from servers.compliance.evidence.collectors import Probe
from servers.compliance.evidence.domain import Observation, rfc3339
from servers.mesh.errors import NotFound
from servers.mesh.storage import Transaction


def alert_payload(alert: Alert, reason: str) -> str:
    """The JSON a channel receives."""
    return json.dumps(
        {
            "reason": reason,
            "alert_id": alert.alert_id,
            "source": alert.source,
            "category": alert.category,
            "severity": alert.severity.name,
            "title": alert.title,
            "description": alert.description,
            "subject": alert.subject,
            "source_address": alert.source_address,
            "attributes": dict(alert.attributes),
            "count": alert.count,
            "first_seen_time": rfc3339(alert.first_seen),
            "last_seen_time": rfc3339(alert.last_seen),
            "escalation_level": alert.escalation_level,
            "notification_deadline": rfc3339(alert.notification_deadline) if alert.notification_deadline else None,
        },
        sort_keys=True,
    )


@dataclass(frozen=True)
class Raised:
    """The outcome of raising an alert."""

    alert: Alert
    created: bool


class AlertDesk:
    """Alert use cases over the store, with the notifier's channels."""

    def __init__(
        self, store: AlertStore, notifier: Notifier, policy: ResponsePolicy, clock: Callable[[], datetime]
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.policy = policy
        self.clock = clock

    async def announce(self, tx: Transaction, alert: Alert, reason: str) -> None:
        """Queue `alert` for every channel."""
        payload = alert_payload(alert, reason)
        for channel in self.notifier.channels:
            await self.store.enqueue(tx, alert.alert_id, channel, reason, payload, self.clock())

    async def raise_alert(self, tx: Transaction, report: AlertReport) -> Raised:
        """Open an alert, or fold it into the open one with the same source and dedup key."""
        report = validate_report(report)
        now = self.clock()
        if report.dedup_key:
            existing = await self.store.find_open(tx, report.source, report.dedup_key)
            if existing is not None:
                folded = fold(existing, report, now)
                stored = await self.store.update(tx, folded)
                if folded.severity > existing.severity:
                    await self.announce(tx, stored, "severity_raised")
                return Raised(stored, created=False)
        alert = open_alert(report, now)
        await self.store.insert(tx, alert)
        await self.announce(tx, alert, "raised")
        return Raised(alert, created=True)

    async def acknowledge(self, tx: Transaction, alert_id: str, by: str, note: str) -> Alert:
        """Mark acknowledged."""
        alert = await self._get(tx, alert_id)
        changed = acknowledge(alert, by, note, self.clock())
        return alert if changed is alert else await self.store.update(tx, changed)

    async def record_breach_notification(
        self, tx: Transaction, alert_id: str, authority: str, reference: str, when: datetime | None
    ) -> Alert:
        """Stop a breach's clock."""
        alert = await self._get(tx, alert_id)
        changed = record_notification(alert, authority, reference, when or self.clock())
        return alert if changed is alert else await self.store.update(tx, changed)

    async def _get(self, tx: Transaction, alert_id: str) -> Alert:
        alert = await self.store.get(alert_id, tx)
        if alert is None:
            raise NotFound("alert", alert_id)
        return alert

    async def escalate_due(self) -> list[Alert]:
        """Escalate every alert whose response time or breach stage has passed; returns them."""
        escalated = []
        for candidate in await self.store.escalation_candidates():
            async with self.store.database.transaction() as tx:
                current = await self.store.get(candidate.alert_id, tx)
                step = escalate(current, self.policy, self.clock()) if current else None
                if step is None:
                    continue
                stored = await self.store.update(tx, step.alert)
                await self.announce(tx, stored, step.reason)
            escalated.append(stored)
        return escalated

    # --- evidence the desk itself holds -------------------------------------------------------------------

    async def alert_response_evidence(self, window: timedelta) -> list[Observation]:
        """HIGH/CRITICAL alerts of the window acknowledged within their response time."""
        probe = Probe(EvidenceKind.ALERT_RESPONSE, "shieldx.compliance.v1.ComplianceService/alerts")
        now = self.clock()
        judged = [(a, responded_in_time(a, self.policy, now)) for a in await self.store.seen_since(now - window)]
        relevant = [(a, ok) for a, ok in judged if ok is not None]
        late = sorted(a.alert_id for a, ok in relevant if not ok)
        return [
            probe.seen(
                not late,
                f"{len(relevant)} high/critical alerts in {window.days} days, {len(late)} not acknowledged in time"
                + (f": {', '.join(late[:10])}" if late else ""),
                alerts=len(relevant),
                late=late,
            )
        ]

    async def breach_evidence(self) -> list[Observation]:
        """No personal-data breach past its 72-hour deadline without a recorded notification."""
        probe = Probe(EvidenceKind.BREACH_NOTIFICATION, "shieldx.compliance.v1.ComplianceService/breaches")
        now = self.clock()
        breaches = [a for a in await self.store.escalation_candidates() if a.is_breach]
        overdue = sorted(a.alert_id for a in breaches if breach_overdue(a, now))
        return [
            probe.seen(
                not overdue,
                f"{len(breaches)} breach clocks running, {len(overdue)} overdue"
                + (f": {', '.join(overdue)}" if overdue else ""),
                running=len(breaches),
                overdue=overdue,
            )
        ]
