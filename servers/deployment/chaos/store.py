"""Persistence of chaos experiments and schedules, and the experiment-owned rows of the fault table."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from servers.deployment.chaos.domain import (
    AbortConditions,
    ChaosType,
    Direction,
    Experiment,
    Hypothesis,
    Measurement,
    Parameters,
    Report,
    Spec,
    State,
    Target,
    Verdict,
)
from servers.deployment.timestamps import epoch, moment
from servers.mesh import storage
from servers.mesh.errors import NotFound
from servers.mesh.pagination import PageRequest

MIGRATIONS = "servers.deployment.chaos.migrations"


@dataclass(frozen=True)
class Schedule:
    """A recurring experiment."""

    id: str
    spec: Spec
    interval: float
    created_at: datetime
    last_run_at: datetime | None = None
    last_experiment_id: str = ""


class ChaosStore:
    """Experiments and schedules in the deployment server's database."""

    def __init__(self, database: storage.Database) -> None:
        self.database = database

    def transaction(self) -> contextlib.AbstractAsyncContextManager[storage.Transaction]:
        """A transaction on the store."""
        return self.database.transaction()

    async def insert(self, tx: storage.Transaction, experiment: Experiment) -> None:
        """Store a new experiment."""
        await tx.execute(
            "INSERT INTO chaos_experiments (id, state, created_at, document) VALUES (?, ?, ?, ?)",
            (
                experiment.id,
                experiment.state.value,
                epoch(experiment.created_at),
                _dump(experiment_document(experiment)),
            ),
        )

    async def update(self, tx: storage.Transaction, experiment: Experiment) -> None:
        """Replace a stored experiment."""
        await tx.execute(
            "UPDATE chaos_experiments SET state = ?, document = ? WHERE id = ?",
            (experiment.state.value, _dump(experiment_document(experiment)), experiment.id),
        )

    async def get(self, tx: storage.Transaction, experiment_id: str) -> Experiment:
        """One experiment; NotFound CHAOS_EXPERIMENT_NOT_FOUND."""
        row = await tx.fetchone("SELECT document FROM chaos_experiments WHERE id = ?", (experiment_id,))
        if row is None:
            raise NotFound("chaos experiment", experiment_id, reason="CHAOS_EXPERIMENT_NOT_FOUND")
        return experiment_from_document(json.loads(row["document"]))

    async def running(self, tx: storage.Transaction) -> list[Experiment]:
        """Experiments in state RUNNING."""
        rows = await tx.fetchall("SELECT document FROM chaos_experiments WHERE state = 'RUNNING' ORDER BY created_at")
        return [experiment_from_document(json.loads(r["document"])) for r in rows]

    async def page(
        self, tx: storage.Transaction, state: State | None, page: PageRequest
    ) -> tuple[list[Experiment], bool]:
        """A page of experiments, newest first; True if more follow."""
        sql = "SELECT created_at, id, document FROM chaos_experiments WHERE 1 = 1"
        params: list[Any] = []
        if state is not None:
            sql += " AND state = ?"
            params.append(state.value)
        if page.cursor is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [page.cursor["t"], page.cursor["t"], page.cursor["id"]]
        rows = await tx.fetchall(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", [*params, page.size + 1])
        found = [experiment_from_document(json.loads(r["document"])) for r in rows[: page.size]]
        return found, len(rows) > page.size

    # -- experiment-owned fault injections ---------------------------------------------------

    async def renew_faults(self, tx: storage.Transaction, experiment_id: str, expires_at: datetime) -> int:
        """Push the expiry of an experiment's fault injections to `expires_at`; how many there are."""
        return await tx.execute(
            "UPDATE fault_injections SET expires_at = ? WHERE experiment_id = ?", (epoch(expires_at), experiment_id)
        )

    async def withdraw_faults(self, tx: storage.Transaction, experiment_id: str) -> int:
        """Delete an experiment's fault injections; how many there were."""
        return await tx.execute("DELETE FROM fault_injections WHERE experiment_id = ?", (experiment_id,))

    async def orphaned_faults(self, tx: storage.Transaction, owners: Sequence[str]) -> int:
        """Delete fault injections of experiments not in `owners` (a server that restarted mid-experiment)."""
        sql = "DELETE FROM fault_injections WHERE experiment_id <> ''"
        params: list[Any] = []
        if owners:
            sql += f" AND experiment_id NOT IN ({', '.join('?' for _ in owners)})"
            params += list(owners)
        return await tx.execute(sql, params)

    # -- schedules ----------------------------------------------------------------------------

    async def insert_schedule(self, tx: storage.Transaction, schedule: Schedule) -> None:
        """Store a new schedule."""
        await tx.execute(
            "INSERT INTO chaos_schedules (id, created_at, document) VALUES (?, ?, ?)",
            (schedule.id, epoch(schedule.created_at), _dump(schedule_document(schedule))),
        )

    async def update_schedule(self, tx: storage.Transaction, schedule: Schedule) -> None:
        """Replace a stored schedule."""
        await tx.execute(
            "UPDATE chaos_schedules SET document = ? WHERE id = ?", (_dump(schedule_document(schedule)), schedule.id)
        )

    async def delete_schedule(self, tx: storage.Transaction, schedule_id: str) -> None:
        """Delete a schedule; NotFound CHAOS_SCHEDULE_NOT_FOUND."""
        if not await tx.execute("DELETE FROM chaos_schedules WHERE id = ?", (schedule_id,)):
            raise NotFound("chaos schedule", schedule_id, reason="CHAOS_SCHEDULE_NOT_FOUND")

    async def schedules(self, tx: storage.Transaction, page: PageRequest | None = None) -> tuple[list[Schedule], bool]:
        """Schedules, oldest first (a page of them if `page`); True if more follow."""
        sql = "SELECT document FROM chaos_schedules"
        params: list[Any] = []
        if page is not None and page.cursor is not None:
            sql += " WHERE (created_at > ? OR (created_at = ? AND id > ?))"
            params += [page.cursor["t"], page.cursor["t"], page.cursor["id"]]
        sql += " ORDER BY created_at, id"
        if page is not None:
            sql += " LIMIT ?"
            params.append(page.size + 1)
        rows = await tx.fetchall(sql, params)
        size = page.size if page is not None else len(rows)
        found = [schedule_from_document(json.loads(r["document"])) for r in rows[:size]]
        return found, len(rows) > size


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def spec_document(spec: Spec) -> dict[str, Any]:
    """A spec as JSON-ready data."""
    document = asdict(spec)
    document["type"] = spec.type.name
    document["parameters"]["direction"] = spec.parameters.direction.value
    return document


def spec_from_document(d: dict[str, Any]) -> Spec:
    """The spec `spec_document` wrote."""
    parameters = dict(d["parameters"], direction=Direction(d["parameters"]["direction"]))
    return Spec(
        name=d["name"],
        type=ChaosType[d["type"]],
        target=Target(**d["target"]),
        parameters=Parameters(**parameters),
        percentage=d["percentage"],
        duration=d["duration"],
        hypothesis=Hypothesis(**d["hypothesis"]),
        abort=AbortConditions(**d["abort"]),
    )


def experiment_document(e: Experiment) -> dict[str, Any]:
    """An experiment as JSON-ready data."""
    report = asdict(e.report)
    report["verdict"] = e.report.verdict.value
    return {
        "id": e.id,
        "spec": spec_document(e.spec),
        "state": e.state.value,
        "created_at": epoch(e.created_at),
        "started_at": epoch(e.started_at) if e.started_at else None,
        "ended_at": epoch(e.ended_at) if e.ended_at else None,
        "abort_reason": e.abort_reason,
        "report": report,
        "schedule_id": e.schedule_id,
        "fault_ids": list(e.fault_ids),
    }


def experiment_from_document(d: dict[str, Any]) -> Experiment:
    """The experiment `experiment_document` wrote."""
    r = d["report"]
    report = Report(
        before=Measurement(**r["before"]),
        during=Measurement(**r["during"]),
        after=Measurement(**r["after"]),
        recovery_seconds=r["recovery_seconds"],
        violations=tuple(r["violations"]),
        verdict=Verdict(r["verdict"]),
        deviations=r.get("deviations", 0),
    )
    return Experiment(
        id=d["id"],
        spec=spec_from_document(d["spec"]),
        state=State(d["state"]),
        created_at=moment(d["created_at"]),
        started_at=moment(d["started_at"]) if d["started_at"] is not None else None,
        ended_at=moment(d["ended_at"]) if d["ended_at"] is not None else None,
        abort_reason=d["abort_reason"],
        report=report,
        schedule_id=d["schedule_id"],
        fault_ids=tuple(d["fault_ids"]),
    )


def schedule_document(s: Schedule) -> dict[str, Any]:
    """A schedule as JSON-ready data."""
    return {
        "id": s.id,
        "spec": spec_document(s.spec),
        "interval": s.interval,
        "created_at": epoch(s.created_at),
        "last_run_at": epoch(s.last_run_at) if s.last_run_at else None,
        "last_experiment_id": s.last_experiment_id,
    }


def schedule_from_document(d: dict[str, Any]) -> Schedule:
    """The schedule `schedule_document` wrote."""
    return Schedule(
        id=d["id"],
        spec=spec_from_document(d["spec"]),
        interval=d["interval"],
        created_at=moment(d["created_at"]),
        last_run_at=moment(d["last_run_at"]) if d["last_run_at"] is not None else None,
        last_experiment_id=d["last_experiment_id"],
    )
