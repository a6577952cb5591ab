"""Persistence of remediation tasks (notes kept as JSON beside each task)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from servers.compliance.domain import Severity
from servers.compliance.remediation.domain import Note, Remediation, RemediationState
from servers.mesh import storage
from servers.mesh.storage import Database, Row, Transaction, from_micros, maybe_datetime, maybe_micros, to_micros

_COLUMNS = (
    "remediation_id, control_id, framework, state, title, detail, opened_by_assessment_id, last_assessment_id,"
    " assignee, due_us, create_us, update_us, resolve_us, severity, notes, version"
)


@dataclass(frozen=True)
class RemediationFilter:
    """ListRemediations filters."""

    state: RemediationState | None = None
    framework: int = 0
    control_id: str = ""


class RemediationStore:
    """The remediations table."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, remediation_id: str, tx: Transaction | None = None) -> Remediation | None:
        """One task."""
        sql = f"SELECT {_COLUMNS} FROM remediations WHERE remediation_id = ?"
        row = await (tx.fetchone(sql, (remediation_id,)) if tx else self.database.fetchone(sql, (remediation_id,)))
        return None if row is None else _task(row)

    async def latest_for(self, tx: Transaction, control_id: str) -> Remediation | None:
        """The control's newest task."""
        row = await tx.fetchone(
            f"SELECT {_COLUMNS} FROM remediations WHERE control_id = ? ORDER BY create_us DESC LIMIT 1", (control_id,)
        )
        return None if row is None else _task(row)

    async def insert(self, tx: Transaction, task: Remediation) -> None:
        """A new task."""
        await tx.execute(
            f"INSERT INTO remediations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _values(task),
        )

    async def update(self, tx: Transaction, task: Remediation) -> Remediation:
        """Write a changed task; TransientError if it changed since it was read."""
        changed = await tx.execute(
            "UPDATE remediations SET state = ?, detail = ?, last_assessment_id = ?, assignee = ?, due_us = ?,"
            " update_us = ?, resolve_us = ?, notes = ?, version = version + 1 WHERE remediation_id = ? AND version = ?",
            (
                int(task.state),
                task.detail,
                task.last_assessment_id,
                task.assignee,
                maybe_micros(task.due_time),
                to_micros(task.update_time),
                maybe_micros(task.resolve_time),
                _notes(task),
                task.remediation_id,
                task.version,
            ),
        )
        if changed != 1:
            raise storage.TransientError(f"remediation {task.remediation_id} changed concurrently")
        return Remediation(**{**task.__dict__, "version": task.version + 1})

    async def page(
        self, filters: RemediationFilter, after: tuple[int, int, str] | None, limit: int
    ) -> list[Remediation]:
        """Most severe first, then oldest first; `after` = (severity, create_us, id) of the previous page's last."""
        clauses: list[str] = ["1 = 1"]
        params: list[object] = []
        if filters.state is not None:
            clauses.append("state = ?")
            params.append(int(filters.state))
        if filters.framework:
            clauses.append("framework = ?")
            params.append(filters.framework)
        if filters.control_id:
            clauses.append("control_id = ?")
            params.append(filters.control_id)
        if after is not None:
            clauses.append(
                "(severity < ? OR (severity = ? AND (create_us > ? OR (create_us = ? AND remediation_id > ?))))"
            )
            params += [after[0], after[0], after[1], after[1], after[2]]
        rows = await self.database.fetchall(
            f"SELECT {_COLUMNS} FROM remediations WHERE {' AND '.join(clauses)}"
            " ORDER BY severity DESC, create_us, remediation_id LIMIT ?",
            (*params, limit),
        )
        return [_task(r) for r in rows]

    async def active(self) -> list[Remediation]:
        """Tasks still to be worked on (for the overdue gauge)."""
        rows = await self.database.fetchall(f"SELECT {_COLUMNS} FROM remediations WHERE state IN (1, 2)")
        return [_task(r) for r in rows]


def _notes(task: Remediation) -> str:
    return json.dumps([{"a": n.author, "t": n.text, "c": to_micros(n.create_time)} for n in task.notes])


def _values(task: Remediation) -> tuple[object, ...]:
    return (
        task.remediation_id,
        task.control_id,
        task.framework,
        int(task.state),
        task.title,
        task.detail,
        task.opened_by_assessment_id,
        task.last_assessment_id,
        task.assignee,
        maybe_micros(task.due_time),
        to_micros(task.create_time),
        to_micros(task.update_time),
        maybe_micros(task.resolve_time),
        int(task.severity),
        _notes(task),
        task.version,
    )


def _task(row: Row) -> Remediation:
    notes = tuple(Note(n["a"], n["t"], from_micros(n["c"])) for n in json.loads(str(row[14])))
    return Remediation(
        remediation_id=str(row[0]),
        control_id=str(row[1]),
        framework=int(row[2]),
        state=RemediationState(int(row[3])),
        title=str(row[4]),
        detail=str(row[5]),
        opened_by_assessment_id=str(row[6]),
        last_assessment_id=str(row[7]),
        assignee=str(row[8]),
        due_time=maybe_datetime(row[9]),
        create_time=from_micros(row[10]),
        update_time=from_micros(row[11]),
        resolve_time=maybe_datetime(row[12]),
        severity=Severity(int(row[13])),
        notes=notes,
        version=int(row[15]),
    )
