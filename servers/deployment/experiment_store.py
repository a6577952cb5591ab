"""Stored A/B tests and the exposure and conversion counts of their arms."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from servers.deployment.experiments import ArmCounts, BindingKind, Experiment, ExperimentState
from servers.deployment.timestamps import epoch, moment
from servers.mesh import storage
from servers.mesh.errors import NotFound
from servers.mesh.pagination import PageRequest

_COLUMNS = (
    "id, name, control, variants, binding, target, min_exposures_per_arm, win_probability, state, winner,"
    " created_at, concluded_at, revision"
)


class ExperimentStore:
    """Experiments and their counts on one `Database`.

    Every change of an experiment (its counts included) bumps its revision under a compare,
    so two batches recorded at once never overwrite each other: the loser retries.
    """

    def __init__(self, database: storage.Database) -> None:
        self.database = database

    async def insert(self, tx: storage.Transaction, experiment: Experiment) -> None:
        """Store a new experiment with zero counts."""
        await tx.execute(
            f"INSERT INTO experiments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            (
                experiment.id,
                experiment.name,
                experiment.control,
                json.dumps(list(experiment.variants)),
                experiment.binding.value,
                experiment.target,
                experiment.min_exposures_per_arm,
                experiment.win_probability,
                experiment.state.value,
                experiment.winner,
                epoch(experiment.created_at),
                None,
            ),
        )
        await tx.executemany(
            "INSERT INTO experiment_arms (experiment_id, arm, exposures, conversions) VALUES (?, ?, 0, 0)",
            [(experiment.id, arm) for arm in experiment.arms],
        )

    async def get(self, tx: storage.Transaction, experiment_id: str) -> tuple[Experiment, int]:
        """An experiment and its revision; NotFound EXPERIMENT_NOT_FOUND otherwise."""
        row = await tx.fetchone(f"SELECT {_COLUMNS} FROM experiments WHERE id = ?", (experiment_id,))
        if row is None:
            raise NotFound("experiment", experiment_id, reason="EXPERIMENT_NOT_FOUND")
        return _experiment(row), int(row["revision"])

    async def counts(self, tx: storage.Transaction, experiment_id: str) -> dict[str, ArmCounts]:
        """Exposures and conversions per arm."""
        rows = await tx.fetchall(
            "SELECT arm, exposures, conversions FROM experiment_arms WHERE experiment_id = ?", (experiment_id,)
        )
        return {row["arm"]: ArmCounts(int(row["exposures"]), int(row["conversions"])) for row in rows}

    async def save_counts(
        self, tx: storage.Transaction, experiment_id: str, revision: int, counts: Mapping[str, ArmCounts]
    ) -> None:
        """Write new counts, if the experiment is still at `revision` (else TransientError: retry)."""
        await self._bump(tx, experiment_id, revision)
        await tx.executemany(
            "UPDATE experiment_arms SET exposures = ?, conversions = ? WHERE experiment_id = ? AND arm = ?",
            [(c.exposures, c.conversions, experiment_id, arm) for arm, c in counts.items()],
        )

    async def conclude(self, tx: storage.Transaction, experiment: Experiment, revision: int) -> None:
        """Record an experiment's conclusion (state, winner, time)."""
        await self._bump(tx, experiment.id, revision)
        await tx.execute(
            "UPDATE experiments SET state = ?, winner = ?, concluded_at = ? WHERE id = ?",
            (
                experiment.state.value,
                experiment.winner,
                epoch(experiment.concluded_at) if experiment.concluded_at else None,
                experiment.id,
            ),
        )

    async def _bump(self, tx: storage.Transaction, experiment_id: str, revision: int) -> None:
        changed = await tx.execute(
            "UPDATE experiments SET revision = ? WHERE id = ? AND revision = ?", (revision + 1, experiment_id, revision)
        )
        if not changed:
            raise storage.TransientError(f"experiment {experiment_id} changed concurrently")

    async def list_experiments(
        self, tx: storage.Transaction, state: ExperimentState | None, page: PageRequest
    ) -> tuple[list[Experiment], bool]:
        """A page of experiments, newest first; True if more follow."""
        sql = f"SELECT {_COLUMNS} FROM experiments WHERE 1 = 1"
        params: list[Any] = []
        if state is not None:
            sql += " AND state = ?"
            params.append(state.value)
        if page.cursor is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [page.cursor["t"], page.cursor["t"], page.cursor["id"]]
        rows = await tx.fetchall(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", [*params, page.size + 1])
        return [_experiment(row) for row in rows[: page.size]], len(rows) > page.size


def _experiment(row: storage.Row) -> Experiment:
    concluded = row["concluded_at"]
    return Experiment(
        id=row["id"],
        name=row["name"],
        control=row["control"],
        variants=tuple(json.loads(row["variants"])),
        binding=BindingKind(row["binding"]),
        target=row["target"],
        min_exposures_per_arm=int(row["min_exposures_per_arm"]),
        win_probability=float(row["win_probability"]),
        created_at=moment(float(row["created_at"])),
        state=ExperimentState(row["state"]),
        winner=row["winner"],
        concluded_at=moment(float(concluded)) if concluded is not None else None,
    )
