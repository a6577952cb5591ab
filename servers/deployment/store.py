"""The deployment server's store: deployments and fault injections, beside the route registry.

Every method works inside a transaction the caller opens (`transaction()`), so a servicer can
change a deployment, publish the routes it asks for (`registry`) and record its AIP-155
answer atomically. Deployments are kept as the JSON documents of `snapshots`; every
transition is also appended, with the actions carried out for it, to
`deployment_transitions`. Flags and experiments live in `flag_store` and
`experiment_store`, on the same database.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servers.deployment.events import Action, ScaleVersion, SetWeights
from servers.deployment.faults import FaultInjection
from servers.deployment.progress import Deployment, HistoryEntry, State
from servers.deployment.registry import RouteRegistry
from servers.deployment.snapshots import deployment_document, deployment_from_document
from servers.deployment.timestamps import epoch, moment
from servers.mesh import storage
from servers.mesh.errors import NotFound
from servers.mesh.pagination import PageRequest


@dataclass(frozen=True)
class StoredDeployment:
    """A deployment and when its latest analysis was made."""

    deployment: Deployment
    """The deployment."""
    analysed_at: datetime | None
    """When `deployment.last_analysis` was made (None before the first)."""


class DeploymentStore:
    """Deployments and fault injections on one `Database`, and the `registry` of instances and routes."""

    def __init__(self, database: storage.Database) -> None:
        self.database = database
        self.registry = RouteRegistry()

    def transaction(self) -> contextlib.AbstractAsyncContextManager[storage.Transaction]:
        """A transaction to call the other methods in."""
        return self.database.transaction()

    async def insert_deployment(self, tx: storage.Transaction, deployment: Deployment) -> None:
        """Store a new deployment (UniqueViolation if the service has an active one already)."""
        await tx.execute(
            "INSERT INTO deployments (id, service, state, active, created_at, updated_at, revision, document)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                deployment.id,
                deployment.plan.service,
                deployment.state.value,
                int(deployment.active),
                epoch(deployment.created_at),
                epoch(deployment.updated_at),
                deployment.revision,
                json.dumps(deployment_document(deployment)),
            ),
        )

    async def update_deployment(
        self,
        tx: storage.Transaction,
        deployment: Deployment,
        expected_revision: int,
        *,
        analysed_at: datetime | None = None,
    ) -> None:
        """Replace a deployment (and note when an analysis was made, if this is one); TransientError
        if someone else changed it since `expected_revision`."""
        changed = await tx.execute(
            "UPDATE deployments SET state = ?, active = ?, updated_at = ?, revision = ?, document = ?,"
            " last_analysis_at = COALESCE(?, last_analysis_at) WHERE id = ? AND revision = ?",
            (
                deployment.state.value,
                int(deployment.active),
                epoch(deployment.updated_at),
                deployment.revision,
                json.dumps(deployment_document(deployment)),
                epoch(analysed_at) if analysed_at is not None else None,
                deployment.id,
                expected_revision,
            ),
        )
        if not changed:
            raise storage.TransientError(f"deployment {deployment.id} changed concurrently")

    async def record_transition(
        self, tx: storage.Transaction, deployment: Deployment, entry: HistoryEntry, actions: Sequence[Action]
    ) -> None:
        """Append a transition and the actions carried out for it."""
        await tx.execute(
            "INSERT INTO deployment_transitions (deployment_id, revision, at, event, actor, from_state, to_state,"
            " step, weight_percent, verdict, detail, actions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                deployment.id,
                deployment.revision,
                epoch(entry.at),
                entry.event,
                entry.actor,
                entry.from_state.value if entry.from_state else "",
                entry.to_state.value,
                entry.step,
                entry.weight_percent,
                entry.verdict.value if entry.verdict else "",
                entry.detail,
                json.dumps([_action_document(action) for action in actions]),
            ),
        )

    async def transitions(self, tx: storage.Transaction, deployment_id: str) -> list[dict[str, Any]]:
        """The recorded transitions of a deployment, oldest first (event, actor, states, actions)."""
        rows = await tx.fetchall(
            "SELECT revision, event, actor, from_state, to_state, weight_percent, actions"
            " FROM deployment_transitions WHERE deployment_id = ? ORDER BY revision",
            (deployment_id,),
        )
        return [
            {
                "revision": int(row["revision"]),
                "event": row["event"],
                "actor": row["actor"],
                "from_state": row["from_state"],
                "to_state": row["to_state"],
                "weight_percent": int(row["weight_percent"]),
                "actions": json.loads(row["actions"]),
            }
            for row in rows
        ]

    async def deployment(self, tx: storage.Transaction, deployment_id: str) -> Deployment:
        """One deployment; NotFound DEPLOYMENT_NOT_FOUND otherwise."""
        return (await self.stored_deployment(tx, deployment_id)).deployment

    async def stored_deployment(self, tx: storage.Transaction, deployment_id: str) -> StoredDeployment:
        """One deployment with its analysis time; NotFound DEPLOYMENT_NOT_FOUND otherwise."""
        row = await tx.fetchone(f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?", (deployment_id,))
        if row is None:
            raise NotFound("deployment", deployment_id, reason="DEPLOYMENT_NOT_FOUND")
        return _stored(row)

    async def active_deployment(self, tx: storage.Transaction, service: str) -> Deployment | None:
        """The service's active deployment, if any."""
        row = await tx.fetchone("SELECT document FROM deployments WHERE service = ? AND active = 1", (service,))
        return deployment_from_document(json.loads(row["document"])) if row is not None else None

    async def active_deployments(self, tx: storage.Transaction) -> list[Deployment]:
        """Every active deployment, oldest first."""
        rows = await tx.fetchall("SELECT document FROM deployments WHERE active = 1 ORDER BY created_at, id")
        return [deployment_from_document(json.loads(row["document"])) for row in rows]

    async def list_deployments(
        self, tx: storage.Transaction, service: str, state: State | None, page: PageRequest
    ) -> tuple[list[StoredDeployment], bool]:
        """A page of deployments, newest first; True if more follow."""
        sql = f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE 1 = 1"
        params: list[Any] = []
        if service:
            sql += " AND service = ?"
            params.append(service)
        if state is not None:
            sql += " AND state = ?"
            params.append(state.value)
        if page.cursor is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            params += [page.cursor["t"], page.cursor["t"], page.cursor["id"]]
        rows = await tx.fetchall(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", [*params, page.size + 1])
        found = [_stored(row) for row in rows[: page.size]]
        return found, len(rows) > page.size

    # -- fault injections --------------------------------------------------------------------

    async def insert_fault(self, tx: storage.Transaction, fault: FaultInjection, *, actor: str) -> None:
        """Store a new fault injection."""
        await tx.execute(
            "INSERT INTO fault_injections (id, service, version, method_pattern, delay_seconds, abort_code,"
            " percentage, created_at, expires_at, actor, experiment_id, chaos)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fault.id,
                fault.service,
                fault.version,
                fault.method_pattern,
                fault.delay,
                fault.abort_code,
                fault.percentage,
                epoch(fault.created_at),
                epoch(fault.expires_at),
                actor,
                fault.experiment_id,
                json.dumps(_chaos_document(fault)),
            ),
        )

    async def delete_fault(self, tx: storage.Transaction, fault_id: str) -> None:
        """Remove a fault injection; NotFound FAULT_INJECTION_NOT_FOUND if unknown."""
        if not await tx.execute("DELETE FROM fault_injections WHERE id = ?", (fault_id,)):
            raise NotFound("fault injection", fault_id, reason="FAULT_INJECTION_NOT_FOUND")

    async def active_faults(
        self, tx: storage.Transaction, services: Iterable[str], now: datetime
    ) -> list[FaultInjection]:
        """Fault injections of `services` (all if none) that have not expired, oldest first."""
        wanted = sorted(set(services))
        sql = f"SELECT {_FAULT_COLUMNS} FROM fault_injections WHERE expires_at > ?"
        params: list[Any] = [epoch(now)]
        if wanted:
            sql += f" AND service IN ({', '.join('?' for _ in wanted)})"
            params += wanted
        rows = await tx.fetchall(sql + " ORDER BY created_at, id", params)
        return [_fault(row) for row in rows]

    async def list_faults(
        self, tx: storage.Transaction, service: str, now: datetime, page: PageRequest
    ) -> tuple[list[FaultInjection], bool]:
        """A page of active fault injections, oldest first; True if more follow."""
        sql = f"SELECT {_FAULT_COLUMNS} FROM fault_injections WHERE expires_at > ?"
        params: list[Any] = [epoch(now)]
        if service:
            sql += " AND service = ?"
            params.append(service)
        if page.cursor is not None:
            sql += " AND (created_at > ? OR (created_at = ? AND id > ?))"
            params += [page.cursor["t"], page.cursor["t"], page.cursor["id"]]
        rows = await tx.fetchall(sql + " ORDER BY created_at, id LIMIT ?", [*params, page.size + 1])
        return [_fault(row) for row in rows[: page.size]], len(rows) > page.size


_DEPLOYMENT_COLUMNS = "document, last_analysis_at"


def _stored(row: storage.Row) -> StoredDeployment:
    analysed = row["last_analysis_at"]
    return StoredDeployment(
        deployment_from_document(json.loads(row["document"])),
        moment(float(analysed)) if analysed is not None else None,
    )


_FAULT_COLUMNS = (
    "id, service, version, method_pattern, delay_seconds, abort_code, percentage, created_at, expires_at,"
    " experiment_id, chaos"
)
_CHAOS_FIELDS = (
    "kind",
    "jitter",
    "peer_service",
    "block_inbound",
    "block_outbound",
    "cpu_workers",
    "memory_mib",
    "instance_address",
)
"""Fault fields only chaos experiments set, kept as one JSON column (`servers.deployment.chaos` migrations)."""


def _chaos_document(fault: FaultInjection) -> dict[str, Any]:
    return {name: getattr(fault, name) for name in _CHAOS_FIELDS if getattr(fault, name)}


def _fault(row: storage.Row) -> FaultInjection:
    return FaultInjection(
        id=row["id"],
        service=row["service"],
        method_pattern=row["method_pattern"],
        delay=float(row["delay_seconds"]),
        abort_code=int(row["abort_code"]),
        percentage=float(row["percentage"]),
        created_at=moment(float(row["created_at"])),
        expires_at=moment(float(row["expires_at"])),
        version=row["version"],
        experiment_id=row["experiment_id"],
        **{k: v for k, v in json.loads(row["chaos"] or "{}").items() if k in _CHAOS_FIELDS},
    )


def _action_document(action: Action) -> dict[str, Any]:
    if isinstance(action, SetWeights):
        return {"set_weights": {"service": action.service, "weights": dict(action.weights)}}
    assert isinstance(action, ScaleVersion)
    return {"scale_version": {"service": action.service, "version": action.version, "replicas": action.replicas}}
