"""Persistence of attacker activity: decoy interactions, sessions and their timelines."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from servers.deception.domain import Credential, Interaction, Protocol, ReconKind, ReconReport, ReconStage
from servers.deception.records import to_json
from servers.deception.sessions import Session, SessionEvent
from servers.mesh.pagination import PageRequest
from servers.mesh.storage import Database, Row, Transaction
from servers.mesh.timestamps import from_micros, to_micros

_INTERACTION_COLUMNS = (
    "interaction_id, decoy_id, protocol, source_address, source_port, start_time_us, end_time_us, bytes_received,"
    " received_sample, stage, credentials, client_banner, indicators, commands, session_id"
)


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
        to_json([[c.username, c.secret] for c in interaction.credentials]),
        interaction.client_banner,
        to_json(list(interaction.indicators)),
        to_json(list(interaction.commands)),
        session_id,
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
    return to_json(
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


class ActivityStore:
    """Interactions, sessions and timeline events."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def load(self, tx: Transaction, max_events_per_session: int) -> tuple[list[Session], list[SessionEvent]]:
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

    async def save_interactions(self, tx: Transaction, interactions: Sequence[tuple[Interaction, str]]) -> None:
        """Insert interactions with the session each was added to."""
        if interactions:
            await tx.executemany(
                f"INSERT INTO interactions ({_INTERACTION_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                [_interaction_row(interaction, session_id) for interaction, session_id in interactions],
            )

    async def stored(self, tx: Transaction, interaction_ids: Sequence[str]) -> set[str]:
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
                to_json(s.decoy_ids),
                to_json(s.labels),
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

    async def purge(self, tx: Transaction, cutoff: datetime) -> tuple[int, int]:
        """Delete sessions inactive since before `cutoff` with their events and interactions;
        returns (sessions, interactions) deleted."""
        stale = "SELECT session_id FROM sessions WHERE last_event_time_us < ?"
        moment = (to_micros(cutoff),)
        await tx.execute(f"DELETE FROM session_events WHERE session_id IN ({stale})", moment)
        interactions = await tx.execute(f"DELETE FROM interactions WHERE session_id IN ({stale})", moment)
        sessions = await tx.execute("DELETE FROM sessions WHERE last_event_time_us < ?", moment)
        return sessions, interactions
