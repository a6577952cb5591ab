"""The deception service's persistence: attacker activity, alerts, the selection log, honeytokens, batches.

The domain keeps its books in memory (`SessionBook`, `AlertBook`, `DecoySelector`,
`HoneytokenRegistry`); this store is what they are rebuilt from at start and what every change
is written to, in the transaction of the request or intake batch that made it. SQL is the same
on SQLite and PostgreSQL; times are exact integer microseconds since the epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from servers.deception.alerts import Alert
from servers.deception.bandit import ArmScore, Selection, SelectionCounts, SelectionPolicy
from servers.deception.domain import (
    AlertKind,
    Credential,
    Interaction,
    Protocol,
    ReconKind,
    ReconReport,
    ReconStage,
    Severity,
)
from servers.deception.honeytokens import HoneytokenKind, HoneytokenRecord
from servers.deception.installation import Installation
from servers.deception.policy_evaluation import LoggedRound
from servers.deception.quality import QualityReport
from servers.deception.sessions import Session, SessionEvent
from servers.deception.synthetic import DatasetKind
from servers.mesh.pagination import PageRequest
from servers.mesh.storage import Database, Row, Transaction

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime of `to_micros` output."""
    return EPOCH + timedelta(microseconds=int(micros))


def seed_digest(installation: Installation) -> str:
    """What the store keeps to recognise an installation: a tagged SHA-256 of its seed."""
    tag = b"shieldx.deception.installation.v1\x00"
    return hashlib.sha256(tag + installation.seed.to_bytes(16, "big")).hexdigest()


@dataclass(frozen=True)
class InstallationRecord:
    """The installation the store's data belongs to."""

    seed_digest: str
    """`seed_digest` of its seed."""
    create_time: datetime
    """When the installation was set up."""
    file_path: str
    """Where its file was when it was recorded."""


@dataclass(frozen=True)
class BanditHistory:
    """Everything a `DecoySelector` is rebuilt from."""

    evidence: dict[str, dict[str, tuple[float, float]]]
    """Bucket → decoy → discounted (engagements, non-engagements)."""
    counts: list[SelectionCounts]
    """Totals per bucket and decoy."""
    recent: list[tuple[Selection, bool]]
    """The latest selections, oldest first, with whether each has had feedback."""
    draws: int
    """Selections made so far (the next draw number)."""


@dataclass(frozen=True)
class SelectionContext:
    """What a selection was made for, logged beside it."""

    source_address: str
    """The attacker's address ("" if not given)."""
    session_id: str
    """The attacker's session ("" if not given)."""
    features: Mapping[str, str]
    """The context's features as given."""


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


@dataclass(frozen=True)
class BatchRecord:
    """A synthetic data batch as registered when its stream started."""

    batch_id: str
    """Unique id."""
    kind: DatasetKind
    """What it holds."""
    seed: int
    """Seed of its SeedSequence."""
    generator_version: str
    """The generator that made it."""
    row_count: int
    """Rows asked for."""
    chunk_size: int
    """Rows per chunk asked for (0: the default)."""
    honeytoken_count: int
    """Honeytokens planted."""
    create_time: datetime
    """When it was created (the planted honeytokens' mint time)."""
    requested_by: str
    """Subject of the caller's token ("anonymous" without auth)."""


@dataclass(frozen=True)
class PurgeCounts:
    """What a retention purge removed."""

    sessions: int
    """Sessions (with their timelines)."""
    interactions: int
    """Decoy interactions."""
    alerts: int
    """Alerts (with their notifications)."""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _interaction_row(interaction: Interaction, session_id: str) -> tuple[Any, ...]:
    return (
        interaction.interaction_id,
        interaction.decoy_id,
        int(interaction.protocol),
        interaction.source_address,
        interaction.source_port,
        to_micros(interaction.start_time),
        to_micros(interaction.end_time),
        interaction.bytes_received,
        interaction.received_sample,
        int(interaction.stage),
        _json([[c.username, c.secret] for c in interaction.credentials]),
        interaction.client_banner,
        _json(list(interaction.indicators)),
        _json(list(interaction.commands)),
        session_id,
    )


_INTERACTION_COLUMNS = (
    "interaction_id, decoy_id, protocol, source_address, source_port, start_time_us, end_time_us, bytes_received,"
    " received_sample, stage, credentials, client_banner, indicators, commands, session_id"
)


def _interaction(row: Row, offset: int = 0) -> Interaction:
    """An Interaction from `_INTERACTION_COLUMNS` read from position `offset` of `row`."""
    values = [row[offset + i] for i in range(14)]
    return Interaction(
        interaction_id=values[0],
        decoy_id=values[1],
        protocol=Protocol(values[2]),
        source_address=values[3],
        source_port=int(values[4]),
        start_time=from_micros(values[5]),
        end_time=from_micros(values[6]),
        bytes_received=int(values[7]),
        received_sample=bytes(values[8]),
        stage=ReconStage(values[9]),
        credentials=tuple(Credential(user, secret) for user, secret in json.loads(values[10])),
        client_banner=values[11],
        indicators=tuple(json.loads(values[12])),
        commands=tuple(json.loads(values[13])),
    )


def _report_json(report: ReconReport) -> str:
    return _json(
        {
            "kind": int(report.kind),
            "reporting_service": report.reporting_service,
            "method": report.method,
            "detail": report.detail,
            "claimed_subject": report.claimed_subject,
        }
    )


def _report(text: str) -> ReconReport:
    document = json.loads(text)
    return ReconReport(
        kind=ReconKind(document["kind"]),
        reporting_service=document["reporting_service"],
        method=document["method"],
        detail=document["detail"],
        claimed_subject=document["claimed_subject"],
    )


def _session(row: Row) -> Session:
    return Session(
        session_id=row["session_id"],
        source_address=row["source_address"],
        create_time=from_micros(row["create_time_us"]),
        last_event_time=from_micros(row["last_event_time_us"]),
        event_count=int(row["event_count"]),
        stage=None if row["stage"] is None else ReconStage(row["stage"]),
        decoy_ids=list(json.loads(row["decoy_ids"])),
        labels=dict(json.loads(row["labels"])),
    )


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


def _selection(row: Row) -> Selection:
    return Selection(
        selection_id=row["selection_id"],
        bucket=row["bucket"],
        decoy_id=row["decoy_id"],
        policy=SelectionPolicy(row["policy"]),
        seed=int(row["seed"]),
        draw=int(row["draw"]),
        scores=tuple(ArmScore(d, float(s), float(a), float(b)) for d, s, a, b in json.loads(row["scores"])),
        propensity=float(row["propensity"]),
        select_time=int(row["select_time_us"]) / 1e6,
    )


def quality_json(report: QualityReport) -> str:
    """A quality report as the JSON the batch record keeps."""
    return _json(
        [
            {"column": c.column, "metric": c.metric.name.lower(), "statistic": c.statistic, "score": c.score}
            for c in report.columns
        ]
    )


class DeceptionStore:
    """The deception service's tables behind a small async interface.

    Methods taking a `Transaction` write (or read) inside the caller's transaction, so a
    change to the books and its record commit together; the others open their own.
    """

    def __init__(self, database: Database) -> None:
        self.database = database

    # --- installation -----------------------------------------------------------------------

    async def installation(self) -> InstallationRecord | None:
        """The installation recorded with the data, if any."""
        row = await self.database.fetchone("SELECT seed_digest, create_time_us, file_path FROM installation")
        if row is None:
            return None
        return InstallationRecord(row["seed_digest"], from_micros(row["create_time_us"]), row["file_path"])

    async def record_installation(self, installation: Installation, file_path: str, now: datetime) -> None:
        """Record (or replace) the installation the data belongs to."""
        await self.database.execute(
            "INSERT INTO installation (singleton, seed_digest, create_time_us, file_path, record_time_us)"
            " VALUES (1, ?, ?, ?, ?) ON CONFLICT (singleton) DO UPDATE SET seed_digest = excluded.seed_digest,"
            " create_time_us = excluded.create_time_us, file_path = excluded.file_path,"
            " record_time_us = excluded.record_time_us",
            (seed_digest(installation), to_micros(installation.created_at), file_path, to_micros(now)),
        )

    # --- loading the books ------------------------------------------------------------------

    async def load_sessions(
        self, tx: Transaction, max_events_per_session: int
    ) -> tuple[list[Session], list[SessionEvent]]:
        """Every session (oldest first) and up to `max_events_per_session` earliest events of each."""
        sessions = [
            _session(r) for r in await tx.fetchall("SELECT * FROM sessions ORDER BY create_time_us, session_id")
        ]
        rows = await tx.fetchall(
            "SELECT e.event_id, e.session_id, e.time_us, e.stage, e.summary, e.recon, "
            + ", ".join(f"i.{c.strip()}" for c in _INTERACTION_COLUMNS.split(",")[:14])
            + " FROM (SELECT session_events.*, ROW_NUMBER() OVER"
            " (PARTITION BY session_id ORDER BY time_us, event_id) AS position FROM session_events) e"
            " LEFT JOIN interactions i ON i.interaction_id = e.interaction_id"
            " WHERE e.position <= ? ORDER BY e.session_id, e.time_us, e.event_id",
            (max_events_per_session,),
        )
        events = [
            SessionEvent(
                event_id=row[0],
                session_id=row[1],
                time=from_micros(row[2]),
                stage=ReconStage(row[3]),
                summary=row[4],
                interaction=None if row[6] is None else _interaction(row, 6),
                recon=None if row[5] is None else _report(row[5]),
            )
            for row in rows
        ]
        return sessions, events

    async def load_alerts(self, tx: Transaction) -> list[Alert]:
        """Every alert."""
        return [_alert(r) for r in await tx.fetchall("SELECT * FROM alerts ORDER BY last_time_us, alert_id")]

    async def load_honeytokens(self, tx: Transaction) -> list[HoneytokenRecord]:
        """Every registered honeytoken."""
        rows = await tx.fetchall("SELECT * FROM honeytokens ORDER BY create_time_us, honeytoken_id")
        return [
            HoneytokenRecord(
                honeytoken_id=r["honeytoken_id"],
                kind=HoneytokenKind(r["kind"]),
                username=r["username"],
                batch_id=r["batch_id"],
                row_index=int(r["row_index"]),
                create_time=from_micros(r["create_time_us"]),
                fingerprint=r["fingerprint"],
            )
            for r in rows
        ]

    async def load_bandit(self, tx: Transaction, max_recent: int) -> BanditHistory:
        """The selection policies' evidence, totals and the latest `max_recent` selections."""
        evidence = {
            r["bucket"]: {decoy: (float(e), float(i)) for decoy, (e, i) in json.loads(r["evidence"]).items()}
            for r in await tx.fetchall("SELECT bucket, evidence FROM bandit_evidence")
        }
        counts = [
            SelectionCounts(r[0], r[1], int(r[2]), int(r[3]), float(r[4] or 0.0))
            for r in await tx.fetchall(
                "SELECT bucket, decoy_id, COUNT(*), COUNT(reward), SUM(reward) FROM decoy_selections"
                " GROUP BY bucket, decoy_id"
            )
        ]
        recent_rows = await tx.fetchall("SELECT * FROM decoy_selections ORDER BY draw DESC LIMIT ?", (max_recent,))
        recent = [(_selection(r), r["reward"] is not None) for r in reversed(recent_rows)]
        draws = await tx.fetchval("SELECT MAX(draw) FROM decoy_selections")
        return BanditHistory(evidence, counts, recent, 0 if draws is None else int(draws) + 1)

    # --- attacker activity ------------------------------------------------------------------

    async def save_interactions(self, tx: Transaction, interactions: Sequence[tuple[Interaction, str]]) -> None:
        """Insert interactions with the session each was added to."""
        if interactions:
            await tx.executemany(
                f"INSERT INTO interactions ({_INTERACTION_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                [_interaction_row(interaction, session_id) for interaction, session_id in interactions],
            )

    async def stored_interactions(self, tx: Transaction, interaction_ids: Sequence[str]) -> set[str]:
        """Which of these interactions are stored already."""
        if not interaction_ids:
            return set()
        marks = ", ".join("?" * len(interaction_ids))
        rows = await tx.fetchall(
            f"SELECT interaction_id FROM interactions WHERE interaction_id IN ({marks})", tuple(interaction_ids)
        )
        return {row[0] for row in rows}

    async def save_events(self, tx: Transaction, events: Sequence[SessionEvent]) -> None:
        """Insert timeline events (a decoy event's interaction is saved by `save_interactions`)."""
        if events:
            await tx.executemany(
                "INSERT INTO session_events (event_id, session_id, time_us, stage, summary, interaction_id, recon)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.event_id,
                        e.session_id,
                        to_micros(e.time),
                        int(e.stage),
                        e.summary,
                        e.interaction.interaction_id if e.interaction is not None else None,
                        _report_json(e.recon) if e.recon is not None else None,
                    )
                    for e in events
                ],
            )

    async def save_sessions(self, tx: Transaction, sessions: Iterable[Session]) -> None:
        """Insert or update sessions."""
        rows = [
            (
                s.session_id,
                s.source_address,
                to_micros(s.create_time),
                to_micros(s.last_event_time),
                s.event_count,
                None if s.stage is None else int(s.stage),
                _json(s.decoy_ids),
                _json(s.labels),
            )
            for s in sessions
        ]
        if rows:
            await tx.executemany(
                "INSERT INTO sessions (session_id, source_address, create_time_us, last_event_time_us, event_count,"
                " stage, decoy_ids, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
                " create_time_us = excluded.create_time_us, last_event_time_us = excluded.last_event_time_us,"
                " event_count = excluded.event_count, stage = excluded.stage, decoy_ids = excluded.decoy_ids",
                rows,
            )

    async def list_interactions(
        self, page: PageRequest, *, decoy_id: str, source_address: str, stage: ReconStage | None
    ) -> tuple[list[tuple[Interaction, str]], dict[str, Any] | None]:
        """One page of interactions, newest first, with their session ids; and the next page's cursor."""
        clauses: list[str] = []
        params: list[Any] = []
        if decoy_id:
            clauses.append("decoy_id = ?")
            params.append(decoy_id)
        if source_address:
            clauses.append("source_address = ?")
            params.append(source_address)
        if stage is not None:
            clauses.append("stage = ?")
            params.append(int(stage))
        if page.cursor is not None:
            clauses.append("(start_time_us < ? OR (start_time_us = ? AND interaction_id < ?))")
            params += [int(page.cursor["t"]), int(page.cursor["t"]), str(page.cursor["id"])]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.database.fetchall(
            f"SELECT {_INTERACTION_COLUMNS} FROM interactions{where}"
            " ORDER BY start_time_us DESC, interaction_id DESC LIMIT ?",
            (*params, page.size + 1),
        )
        found = [(_interaction(r), r[14]) for r in rows[: page.size]]
        if len(rows) <= page.size:
            return found, None
        last = found[-1][0]
        return found, {"t": to_micros(last.start_time), "id": last.interaction_id}

    async def purge_activity(self, tx: Transaction, cutoff: datetime) -> PurgeCounts:
        """Delete sessions inactive since before `cutoff` with their events and interactions, and
        alerts whose last event is older, with their notifications."""
        stale_sessions = "SELECT session_id FROM sessions WHERE last_event_time_us < ?"
        stale_alerts = "SELECT alert_id FROM alerts WHERE last_time_us < ?"
        moment = (to_micros(cutoff),)
        await tx.execute(f"DELETE FROM session_events WHERE session_id IN ({stale_sessions})", moment)
        interactions = await tx.execute(f"DELETE FROM interactions WHERE session_id IN ({stale_sessions})", moment)
        sessions = await tx.execute("DELETE FROM sessions WHERE last_event_time_us < ?", moment)
        await tx.execute(f"DELETE FROM alert_notifications WHERE alert_id IN ({stale_alerts})", moment)
        alerts = await tx.execute("DELETE FROM alerts WHERE last_time_us < ?", moment)
        return PurgeCounts(sessions, interactions, alerts)

    # --- alerts -----------------------------------------------------------------------------

    async def save_alerts(self, tx: Transaction, alerts: Iterable[Alert]) -> None:
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
                _json(a.decoy_ids),
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

    async def queue_notifications(self, tx: Transaction, notifications: Sequence[Notification], now: datetime) -> None:
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

    async def due_notifications(self, now: datetime, limit: int) -> list[Notification]:
        """Undelivered notifications whose next attempt is due, oldest first."""
        rows = await self.database.fetchall(
            "SELECT notification_id, alert_id, severity, request, attempts FROM alert_notifications"
            " WHERE delivered_time_us IS NULL AND abandoned_time_us IS NULL AND next_attempt_us <= ?"
            " ORDER BY next_attempt_us, create_time_us, notification_id LIMIT ?",
            (to_micros(now), limit),
        )
        return [Notification(r[0], r[1], Severity(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    async def next_notification_time(self) -> datetime | None:
        """When the earliest undelivered notification is due, if any."""
        value = await self.database.fetchone(
            "SELECT MIN(next_attempt_us) FROM alert_notifications"
            " WHERE delivered_time_us IS NULL AND abandoned_time_us IS NULL"
        )
        return None if value is None or value[0] is None else from_micros(value[0])

    async def pending_notifications(self) -> int:
        """Notifications not yet delivered nor abandoned."""
        row = await self.database.fetchone(
            "SELECT COUNT(*) FROM alert_notifications WHERE delivered_time_us IS NULL AND abandoned_time_us IS NULL"
        )
        return int(row[0]) if row is not None else 0

    async def notification_delivered(self, notification_id: str, attempts: int, now: datetime) -> None:
        """Record a delivery."""
        await self.database.execute(
            "UPDATE alert_notifications SET delivered_time_us = ?, attempts = ?, last_error = ''"
            " WHERE notification_id = ?",
            (to_micros(now), attempts, notification_id),
        )

    async def notification_failed(
        self, notification_id: str, attempts: int, error: str, retry_at: datetime | None
    ) -> None:
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

    async def notification(self, notification_id: str) -> Row | None:
        """One notification's delivery state (attempts, last_error, delivered/abandoned times)."""
        return await self.database.fetchone(
            "SELECT notification_id, alert_id, severity, attempts, last_error, delivered_time_us, abandoned_time_us"
            " FROM alert_notifications WHERE notification_id = ?",
            (notification_id,),
        )

    # --- decoy selection --------------------------------------------------------------------

    async def save_selection(self, tx: Transaction, selection: Selection, context: SelectionContext) -> None:
        """Log a selection with its seed and draw."""
        await tx.execute(
            "INSERT INTO decoy_selections (selection_id, draw, bucket, decoy_id, policy, seed, scores, propensity,"
            " select_time_us, source_address, session_id, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                selection.selection_id,
                selection.draw,
                selection.bucket,
                selection.decoy_id,
                selection.policy.value,
                str(selection.seed),
                _json([[s.decoy_id, s.score, s.posterior_alpha, s.posterior_beta] for s in selection.scores]),
                selection.propensity,
                round(selection.select_time * 1e6),
                context.source_address,
                context.session_id,
                _json(dict(context.features)),
            ),
        )

    async def save_feedback(
        self,
        tx: Transaction,
        selection_id: str,
        reward: float,
        now: datetime,
        bucket: str,
        evidence: Mapping[str, tuple[float, float]],
    ) -> None:
        """Record a selection's reward and its bucket's evidence after the update."""
        await tx.execute(
            "UPDATE decoy_selections SET reward = ?, feedback_time_us = ? WHERE selection_id = ?",
            (reward, to_micros(now), selection_id),
        )
        await tx.execute(
            "INSERT INTO bandit_evidence (bucket, evidence, update_time_us) VALUES (?, ?, ?)"
            " ON CONFLICT (bucket) DO UPDATE SET evidence = excluded.evidence,"
            " update_time_us = excluded.update_time_us",
            (bucket, _json({d: list(v) for d, v in evidence.items()}), to_micros(now)),
        )

    async def logged_rounds(self, start: datetime | None, end: datetime | None, limit: int) -> list[LoggedRound]:
        """Selections with feedback in [start, end), oldest first; the latest `limit` of them."""
        clauses = ["reward IS NOT NULL"]
        params: list[Any] = []
        if start is not None:
            clauses.append("select_time_us >= ?")
            params.append(to_micros(start))
        if end is not None:
            clauses.append("select_time_us < ?")
            params.append(to_micros(end))
        rows = await self.database.fetchall(
            "SELECT bucket, decoy_id, reward, propensity FROM decoy_selections"
            f" WHERE {' AND '.join(clauses)} ORDER BY draw DESC LIMIT ?",
            (*params, limit),
        )
        return [LoggedRound(r[0], r[1], float(r[2]), float(r[3])) for r in reversed(rows)]

    # --- honeytokens and synthetic batches --------------------------------------------------

    async def save_honeytokens(self, tx: Transaction, records: Sequence[HoneytokenRecord]) -> None:
        """Register honeytokens; one registered before (a regenerated batch) is left as it is."""
        if records:
            await tx.executemany(
                "INSERT INTO honeytokens (honeytoken_id, kind, username, batch_id, row_index, create_time_us,"
                " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (honeytoken_id) DO NOTHING",
                [
                    (
                        r.honeytoken_id,
                        r.kind.value,
                        r.username,
                        r.batch_id,
                        r.row_index,
                        to_micros(r.create_time),
                        r.fingerprint,
                    )
                    for r in records
                ],
            )

    async def create_batch(self, tx: Transaction, batch: BatchRecord) -> None:
        """Register a synthetic batch as its stream starts."""
        await tx.execute(
            "INSERT INTO synthetic_batches (batch_id, kind, seed, generator_version, row_count, chunk_size,"
            " honeytoken_count, create_time_us, requested_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                batch.batch_id,
                batch.kind.value,
                str(batch.seed),
                batch.generator_version,
                batch.row_count,
                batch.chunk_size,
                batch.honeytoken_count,
                to_micros(batch.create_time),
                batch.requested_by,
            ),
        )

    async def batch(self, batch_id: str) -> BatchRecord | None:
        """A registered batch."""
        row = await self.database.fetchone("SELECT * FROM synthetic_batches WHERE batch_id = ?", (batch_id,))
        if row is None:
            return None
        return BatchRecord(
            batch_id=row["batch_id"],
            kind=DatasetKind(row["kind"]),
            seed=int(row["seed"]),
            generator_version=row["generator_version"],
            row_count=int(row["row_count"]),
            chunk_size=int(row["chunk_size"]),
            honeytoken_count=int(row["honeytoken_count"]),
            create_time=from_micros(row["create_time_us"]),
            requested_by=row["requested_by"],
        )

    async def batch_planting_seed(self, tx: Transaction, kind: DatasetKind, seed: int) -> str | None:
        """The batch that planted honeytokens in `kind` data generated from `seed`, if one did."""
        value = await tx.fetchval(
            "SELECT batch_id FROM synthetic_batches WHERE kind = ? AND seed = ? AND honeytoken_count > 0"
            " ORDER BY create_time_us LIMIT 1",
            (kind.value, str(seed)),
        )
        return None if value is None else str(value)

    async def complete_batch(self, batch_id: str, chunks: int, quality: QualityReport, now: datetime) -> None:
        """Record that a batch's last chunk was streamed, and its quality."""
        await self.database.execute(
            "UPDATE synthetic_batches SET complete_time_us = ?, chunk_count = ?, quality_overall = ?, quality = ?"
            " WHERE batch_id = ?",
            (to_micros(now), chunks, quality.overall_score, quality_json(quality), batch_id),
        )

    async def batch_quality(self, batch_id: str) -> tuple[float | None, int | None]:
        """(overall quality score, chunks) recorded for a batch; (None, None) until it completes."""
        row = await self.database.fetchone(
            "SELECT quality_overall, chunk_count FROM synthetic_batches WHERE batch_id = ?", (batch_id,)
        )
        if row is None or row[0] is None:
            return None, None
        return float(row[0]), int(row[1])
