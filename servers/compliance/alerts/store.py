"""Persistence of alerts, the notification outbox and every delivery attempt."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from servers.compliance.alerts.domain import Alert, AlertState
from servers.compliance.domain import Severity
from servers.mesh import storage
from servers.mesh.storage import Database, Row, Transaction, from_micros, maybe_datetime, maybe_micros, to_micros

_COLUMNS = (
    "alert_id, source, category, severity, state, title, description, subject, source_address, attributes, count,"
    " first_us, last_us, dedup_key, acknowledge_us, acknowledged_by, acknowledgement_note, escalation_level,"
    " escalate_us, deadline_us, notify_us, authority, authority_reference, breach_stage, version"
)


@dataclass(frozen=True)
class AlertFilter:
    """ListAlerts filters."""

    state: int = 0
    min_severity: int = 0
    source: str = ""


@dataclass(frozen=True)
class Notification:
    """One notification of one alert on one channel, delivered until it succeeds or runs out of tries."""

    notification_id: str
    alert_id: str
    channel: str
    reason: str
    payload: str
    attempts: int
    next_time: datetime


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt."""

    attempt_id: str
    notification_id: str
    alert_id: str
    channel: str
    reason: str
    attempt: int
    delivered: bool
    status_code: int
    error: str
    attempt_time: datetime


class AlertStore:
    """The alert and notification tables."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, alert_id: str, tx: Transaction | None = None) -> Alert | None:
        """One alert."""
        sql = f"SELECT {_COLUMNS} FROM alerts WHERE alert_id = ?"
        row = await (tx.fetchone(sql, (alert_id,)) if tx else self.database.fetchone(sql, (alert_id,)))
        return None if row is None else _alert(row)

    async def find_open(self, tx: Transaction, source: str, dedup_key: str) -> Alert | None:
        """The open alert a report with this source and key folds into."""
        row = await tx.fetchone(
            f"SELECT {_COLUMNS} FROM alerts WHERE source = ? AND dedup_key = ? AND state = ? ORDER BY first_us DESC"
            " LIMIT 1",
            (source, dedup_key, AlertState.OPEN),
        )
        return None if row is None else _alert(row)

    async def insert(self, tx: Transaction, alert: Alert) -> None:
        """A new alert."""
        await tx.execute(
            f"INSERT INTO alerts ({_COLUMNS}) VALUES ({', '.join('?' for _ in range(25))})", _values(alert)
        )

    async def update(self, tx: Transaction, alert: Alert) -> Alert:
        """Write a changed alert; TransientError if it changed since it was read."""
        values = _values(alert)
        changed = await tx.execute(
            "UPDATE alerts SET severity = ?, state = ?, title = ?, description = ?, attributes = ?, count = ?,"
            " last_us = ?, acknowledge_us = ?, acknowledged_by = ?, acknowledgement_note = ?, escalation_level = ?,"
            " escalate_us = ?, notify_us = ?, authority = ?, authority_reference = ?, breach_stage = ?,"
            " version = version + 1 WHERE alert_id = ? AND version = ?",
            (
                values[3],
                values[4],
                values[5],
                values[6],
                values[9],
                values[10],
                values[12],
                values[14],
                values[15],
                values[16],
                values[17],
                values[18],
                values[20],
                values[21],
                values[22],
                values[23],
                alert.alert_id,
                alert.version,
            ),
        )
        if changed != 1:
            raise storage.TransientError(f"alert {alert.alert_id} changed concurrently")
        return Alert(**{**alert.__dict__, "version": alert.version + 1})

    async def page(self, filters: AlertFilter, after: tuple[int, str] | None, limit: int) -> list[Alert]:
        """Most recently seen first; `after` = (last_us, id) of the previous page's last."""
        clauses: list[str] = ["1 = 1"]
        params: list[object] = []
        if filters.state:
            clauses.append("state = ?")
            params.append(filters.state)
        if filters.min_severity:
            clauses.append("severity >= ?")
            params.append(filters.min_severity)
        if filters.source:
            clauses.append("source = ?")
            params.append(filters.source)
        if after is not None:
            clauses.append("(last_us < ? OR (last_us = ? AND alert_id > ?))")
            params += [after[0], after[0], after[1]]
        rows = await self.database.fetchall(
            f"SELECT {_COLUMNS} FROM alerts WHERE {' AND '.join(clauses)} ORDER BY last_us DESC, alert_id LIMIT ?",
            (*params, limit),
        )
        return [_alert(r) for r in rows]

    async def escalation_candidates(self) -> list[Alert]:
        """Open HIGH/CRITICAL alerts, and breaches whose clock still runs."""
        rows = await self.database.fetchall(
            f"SELECT {_COLUMNS} FROM alerts WHERE (state = ? AND severity >= ?)"
            " OR (deadline_us IS NOT NULL AND notify_us IS NULL)",
            (AlertState.OPEN, int(Severity.HIGH)),
        )
        return [_alert(r) for r in rows]

    async def seen_since(self, since: datetime) -> list[Alert]:
        """Alerts first seen since `since`, and every alert still open."""
        rows = await self.database.fetchall(
            f"SELECT {_COLUMNS} FROM alerts WHERE first_us >= ? OR state = ?", (to_micros(since), AlertState.OPEN)
        )
        return [_alert(r) for r in rows]

    async def open_counts(self) -> dict[Severity, int]:
        """Open alerts by severity."""
        rows = await self.database.fetchall(
            "SELECT severity, COUNT(*) FROM alerts WHERE state = ? GROUP BY severity", (AlertState.OPEN,)
        )
        return {Severity(int(r[0])): int(r[1]) for r in rows}

    # --- notifications ------------------------------------------------------------------------------------

    async def enqueue(
        self, tx: Transaction, alert_id: str, channel: str, reason: str, payload: str, now: datetime
    ) -> None:
        """A notification to deliver from now on."""
        await tx.execute(
            "INSERT INTO notifications (notification_id, alert_id, channel, reason, payload, next_us)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (f"ntf_{secrets.token_hex(8)}", alert_id, channel, reason, payload, to_micros(now)),
        )

    async def due(self, now: datetime, limit: int) -> list[Notification]:
        """Notifications whose next attempt is due."""
        rows = await self.database.fetchall(
            "SELECT notification_id, alert_id, channel, reason, payload, attempts, next_us FROM notifications"
            " WHERE done = ? AND next_us <= ? ORDER BY next_us LIMIT ?",
            (False, to_micros(now), limit),
        )
        return [
            Notification(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]), from_micros(r[6]))
            for r in rows
        ]

    async def record_attempt(self, attempt: Attempt, next_time: datetime | None) -> None:
        """Record an attempt; the notification is done when delivered or `next_time` is None."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO notification_attempts (attempt_id, notification_id, alert_id, channel, reason, attempt,"
                " delivered, status_code, error, attempt_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.attempt_id,
                    attempt.notification_id,
                    attempt.alert_id,
                    attempt.channel,
                    attempt.reason,
                    attempt.attempt,
                    attempt.delivered,
                    attempt.status_code,
                    attempt.error,
                    to_micros(attempt.attempt_time),
                ),
            )
            done = attempt.delivered or next_time is None
            await tx.execute(
                "UPDATE notifications SET attempts = ?, done = ?, next_us = ? WHERE notification_id = ?",
                (
                    attempt.attempt,
                    done,
                    to_micros(next_time or attempt.attempt_time),
                    attempt.notification_id,
                ),
            )

    async def attempts(self, alert_id: str, after: tuple[int, str] | None, limit: int) -> list[Attempt]:
        """Newest first, for one alert or all."""
        clauses: list[str] = ["1 = 1"]
        params: list[object] = []
        if alert_id:
            clauses.append("alert_id = ?")
            params.append(alert_id)
        if after is not None:
            clauses.append("(attempt_us < ? OR (attempt_us = ? AND attempt_id > ?))")
            params += [after[0], after[0], after[1]]
        rows = await self.database.fetchall(
            "SELECT attempt_id, notification_id, alert_id, channel, reason, attempt, delivered, status_code, error,"
            f" attempt_us FROM notification_attempts WHERE {' AND '.join(clauses)}"
            " ORDER BY attempt_us DESC, attempt_id LIMIT ?",
            (*params, limit),
        )
        return [
            Attempt(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                str(r[3]),
                str(r[4]),
                int(r[5]),
                bool(r[6]),
                int(r[7]),
                str(r[8]),
                from_micros(r[9]),
            )
            for r in rows
        ]


def _values(alert: Alert) -> tuple[object, ...]:
    return (
        alert.alert_id,
        alert.source,
        alert.category,
        int(alert.severity),
        alert.state,
        alert.title,
        alert.description,
        alert.subject,
        alert.source_address,
        json.dumps(dict(alert.attributes), sort_keys=True),
        alert.count,
        to_micros(alert.first_seen),
        to_micros(alert.last_seen),
        alert.dedup_key,
        maybe_micros(alert.acknowledge_time),
        alert.acknowledged_by,
        alert.acknowledgement_note,
        alert.escalation_level,
        maybe_micros(alert.escalate_time),
        maybe_micros(alert.notification_deadline),
        maybe_micros(alert.authority_notify_time),
        alert.authority,
        alert.authority_reference,
        alert.breach_stage,
        alert.version,
    )


def _alert(row: Row) -> Alert:
    return Alert(
        alert_id=str(row[0]),
        source=str(row[1]),
        category=str(row[2]),
        severity=Severity(int(row[3])),
        state=int(row[4]),
        title=str(row[5]),
        description=str(row[6]),
        subject=str(row[7]),
        source_address=str(row[8]),
        attributes=json.loads(str(row[9])),
        count=int(row[10]),
        first_seen=from_micros(row[11]),
        last_seen=from_micros(row[12]),
        dedup_key=str(row[13]),
        acknowledge_time=maybe_datetime(row[14]),
        acknowledged_by=str(row[15]),
        acknowledgement_note=str(row[16]),
        escalation_level=int(row[17]),
        escalate_time=maybe_datetime(row[18]),
        notification_deadline=maybe_datetime(row[19]),
        authority_notify_time=maybe_datetime(row[20]),
        authority=str(row[21]),
        authority_reference=str(row[22]),
        breach_stage=int(row[23]),
        version=int(row[24]),
    )
