"""Persistence of deduplicated alerts and of the notifications that forward them to compliance."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from servers.deception.alerts import Alert
from servers.deception.domain import AlertKind, ReconStage, Severity
from servers.deception.records import to_json
from servers.mesh.storage import Database, Row, Transaction
from servers.mesh.timestamps import from_micros, to_micros


@dataclass(frozen=True)
class Notification:
    """An alert to forward to the compliance service."""

    notification_id: str
    """Unique id, also the RaiseAlert request_id."""
    alert_id: str
    """The alert."""
    severity: Severity
    """Its severity when the notification was made."""
    request: bytes
    """The serialized RaiseAlertRequest."""
    attempts: int = 0
    """Deliveries tried so far."""


def _alert(row: Row) -> Alert:
    return Alert(
        alert_id=row["alert_id"],
        kind=AlertKind(row["kind"]),
        severity=Severity(row["severity"]),
        source_address=row["source_address"],
        first_time=from_micros(row["first_time_us"]),
        last_time=from_micros(row["last_time_us"]),
        count=int(row["event_count"]),
        stage=None if row["stage"] is None else ReconStage(row["stage"]),
        decoy_ids=list(json.loads(row["decoy_ids"])),
        session_id=row["session_id"],
        batch_id=row["batch_id"],
        honeytoken_id=row["honeytoken_id"],
        summary=row["summary"],
    )


class AlertStore:
    """Alerts and their notifications."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def load(self, tx: Transaction) -> list[Alert]:
        """Every alert."""
        return [_alert(r) for r in await tx.fetchall("SELECT * FROM alerts ORDER BY last_time_us, alert_id")]

    async def save(self, tx: Transaction, alerts: Iterable[Alert]) -> None:
        """Insert or update alerts."""
        rows = [
            (
                a.alert_id,
                int(a.kind),
                int(a.severity),
                a.source_address,
                to_micros(a.first_time),
                to_micros(a.last_time),
                a.count,
                None if a.stage is None else int(a.stage),
                to_json(a.decoy_ids),
                a.session_id,
                a.batch_id,
                a.honeytoken_id,
                a.summary,
            )
            for a in alerts
        ]
        if rows:
            await tx.executemany(
                "INSERT INTO alerts (alert_id, kind, severity, source_address, first_time_us, last_time_us,"
                " event_count, stage, decoy_ids, session_id, batch_id, honeytoken_id, summary)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET"
                " severity = excluded.severity, first_time_us = excluded.first_time_us,"
                " last_time_us = excluded.last_time_us, event_count = excluded.event_count, stage = excluded.stage,"
                " decoy_ids = excluded.decoy_ids, session_id = excluded.session_id, summary = excluded.summary",
                rows,
            )

    async def purge(self, tx: Transaction, cutoff: datetime) -> int:
        """Delete alerts whose last event is older than `cutoff`, with their notifications; returns how many."""
        stale = "SELECT alert_id FROM alerts WHERE last_time_us < ?"
        moment = (to_micros(cutoff),)
        await tx.execute(f"DELETE FROM alert_notifications WHERE alert_id IN ({stale})", moment)
        return await tx.execute("DELETE FROM alerts WHERE last_time_us < ?", moment)

    async def queue(self, tx: Transaction, notifications: Sequence[Notification], now: datetime) -> None:
        """Queue alerts for forwarding (a notification queued before is left as it is)."""
        if notifications:
            await tx.executemany(
                "INSERT INTO alert_notifications (notification_id, alert_id, severity, request, create_time_us,"
                " next_attempt_us) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (notification_id) DO NOTHING",
                [
                    (n.notification_id, n.alert_id, int(n.severity), n.request, to_micros(now), to_micros(now))
                    for n in notifications
                ],
            )

    async def due(self, now: datetime, limit: int) -> list[Notification]:
        """Undelivered notifications whose next attempt is due, oldest first."""
        rows = await self.database.fetchall(
            "SELECT notification_id, alert_id, severity, request, attempts FROM alert_notifications"
            " WHERE delivered_time_us IS NULL AND abandoned_time_us IS NULL AND next_attempt_us <= ?"
            " ORDER BY next_attempt_us, create_time_us, notification_id LIMIT ?",
            (to_micros(now), limit),
        )
        return [Notification(r[0], r[1], Severity(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    async def next_due_time(self) -> datetime | None:
        """When the earliest undelivered notification is due, if any."""
        value = await self.database.fetchone(
            "SELECT MIN(next_attempt_us) FROM alert_notifications"
            " WHERE delivered_time_us IS NULL AND abandoned_time_us IS NULL"
        )
        return None if value is None or value[0] is None else from_micros(value[0])

    async def pending(self) -> int:
        """Notifications not yet delivered nor abandoned."""
        row = await self.database.fetchone(
            "SELECT COUNT(*) FROM alert_notifications WHERE delivered_time_us IS NULL AND abandoned_time_us IS NULL"
        )
        return int(row[0]) if row is not None else 0

    async def delivered(self, notification_id: str, attempts: int, now: datetime) -> None:
        """Record a delivery."""
        await self.database.execute(
            "UPDATE alert_notifications SET delivered_time_us = ?, attempts = ?, last_error = ''"
            " WHERE notification_id = ?",
            (to_micros(now), attempts, notification_id),
        )

    async def failed(self, notification_id: str, attempts: int, error: str, retry_at: datetime | None) -> None:
        """Record a failed delivery: retried at `retry_at`, or abandoned if None."""
        if retry_at is None:
            await self.database.execute(
                "UPDATE alert_notifications SET attempts = ?, last_error = ?, abandoned_time_us = next_attempt_us"
                " WHERE notification_id = ?",
                (attempts, error[:1000], notification_id),
            )
            return
        await self.database.execute(
            "UPDATE alert_notifications SET attempts = ?, last_error = ?, next_attempt_us = ?"
            " WHERE notification_id = ?",
            (attempts, error[:1000], to_micros(retry_at), notification_id),
        )
