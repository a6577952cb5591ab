"""The sharding registry's persistence: the versioned topology, failover history, rebalance progress.

One `Database` (SQLite by default, a PostgreSQL schema when configured), tables in
`migrations/`. The topology is stored as its current state (registry, shards, nodes rows) and
every save is optimistic: it names the version it replaces, and a concurrent writer that got
there first makes it fail with `TransientError`, which callers retry on a fresh read. On
PostgreSQL, `topology_version(tx, for_update=True)` also locks the registry row, so writers of
one registry queue up instead of failing. A rebalance's per-account routing (fenced and moved
accounts) is not duplicated in the registry: it is read from the rebalance's account rows,
which the workflow writes in the same transaction as the topology it publishes.

Times are stored as integer microseconds since the Unix epoch; LSNs as PostgreSQL prints them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from servers.mesh.storage import Database, Row, Transaction, TransientError
from servers.sharding.domain import (
    HealthState,
    Node,
    NodeRole,
    Region,
    RegionState,
    ReplicationMode,
    Shard,
    ShardState,
    ordered_nodes,
)
from servers.sharding.failover import FailoverRecord, FailoverTrigger, format_lsn, parse_lsn
from servers.sharding.rebalance import (
    AccountMove,
    AccountProgress,
    AccountState,
    RebalanceConfig,
    RebalancePhase,
    RebalanceProgress,
    RebalanceWorkflow,
)
from servers.sharding.regions import DivergenceRecord, RegionFailoverRecord, RegionFailoverStep, StepTiming
from servers.sharding.sealed_dsns import SealedDsns
from servers.sharding.topology import MigrationRouting, Topology

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_LISTED_FAILURES = 100
"""Failed accounts a rebalance summary carries."""

_ROUTED_STATES = (AccountState.FENCED.value, AccountState.CUT_OVER.value, AccountState.DONE.value)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    """The aware UTC datetime of microseconds since the epoch."""
    return EPOCH + timedelta(microseconds=int(us))


def _maybe_us(moment: datetime | None) -> int | None:
    return None if moment is None else to_us(moment)


def _maybe_time(us: int | None) -> datetime | None:
    return None if us is None else from_us(us)


@dataclass(frozen=True)
class RebalanceSummary:
    """A rebalance as `GetRebalanceStatus` reports it, read without loading every account."""

    rebalance_id: str
    """Unique id."""
    phase: RebalancePhase
    """Running, finalizing or completed."""
    started_at: datetime
    """When it started."""
    finished_at: datetime | None
    """When it completed."""
    progress: RebalanceProgress
    """Accounts per state."""
    failures: tuple[AccountProgress, ...]
    """Up to `MAX_LISTED_FAILURES` FAILED accounts, by account id."""


@dataclass(frozen=True)
class FailoverCursor:
    """Where a page of the failover history (newest first) stopped."""

    completed_us: int
    """`completed_us` of the last record of the page."""
    failover_id: str
    """Its id (ties on time)."""


class ShardingStore:
    """Reads and writes of the sharding registry; writes take the caller's transaction."""

    def __init__(self, database: Database, dsns: SealedDsns | None = None) -> None:
        """A store over `database`; with `dsns`, node DSNs (and their passwords) are stored sealed."""
        self.database = database
        self._dsns = dsns

    def _stored_dsn(self, dsn: str) -> str:
        return dsn if self._dsns is None else self._dsns.seal(dsn)

    def _read_dsn(self, stored: str) -> str:
        return stored if self._dsns is None else self._dsns.open(stored)

    # Topology

    async def topology_version(self, tx: Transaction, *, for_update: bool = False) -> int:
        """The stored topology version; `for_update` locks the registry row (PostgreSQL) until commit."""
        lock = " FOR UPDATE" if for_update and tx.dialect == "postgres" else ""
        return int(await tx.fetchval(f"SELECT version FROM registry WHERE singleton = 1{lock}"))

    async def load_topology(self, tx: Transaction) -> Topology:
        """The stored topology, with the running rebalance's routing from its account rows."""
        registry = await tx.fetchone(
            "SELECT version, vnodes_per_shard, rebalance_id, fence_unplanned, updated_us FROM registry"
            " WHERE singleton = 1"
        )
        assert registry is not None, "the registry row is created by the first migration"
        nodes: dict[str, list[Node]] = {}
        for row in await tx.fetchall("SELECT node_id, shard_id, role, dsn, region, health FROM nodes"):
            node = Node(
                row["node_id"],
                self._read_dsn(row["dsn"]),
                row["region"],
                NodeRole(row["role"]),
                HealthState(row["health"]),
            )
            nodes.setdefault(row["shard_id"], []).append(node)
        shards = tuple(
            Shard(
                row["shard_id"],
                float(row["weight"]),
                int(row["placement_seed"]),
                ShardState(row["state"]),
                ordered_nodes(nodes.get(row["shard_id"], ())),
                row["preferred_region"],
                ReplicationMode(row["replication_mode"]),
            )
            for row in await tx.fetchall(
                "SELECT shard_id, weight, placement_seed, state, preferred_region, replication_mode FROM shards"
                " ORDER BY shard_id"
            )
        )
        regions = tuple(
            Region(row["region_id"], int(row["priority"]), RegionState(row["state"]))
            for row in await tx.fetchall("SELECT region_id, priority, state FROM regions ORDER BY region_id")
        )
        migration = None
        if registry["rebalance_id"] is not None:
            migration = await self._routing(tx, registry["rebalance_id"], bool(registry["fence_unplanned"]))
        return Topology(
            version=int(registry["version"]),
            shards=shards,
            vnodes_per_shard=int(registry["vnodes_per_shard"]),
            migration=migration,
            updated_at=_maybe_time(registry["updated_us"]),
            regions=regions,
        )

    async def _routing(self, tx: Transaction, rebalance_id: str, fence_unplanned: bool) -> MigrationRouting:
        rows = await tx.fetchall(
            "SELECT account_id, state FROM rebalance_accounts WHERE rebalance_id = ? AND state IN (?, ?, ?)",
            (rebalance_id, *_ROUTED_STATES),
        )
        fenced = frozenset(r["account_id"] for r in rows if r["state"] == AccountState.FENCED.value)
        moved = frozenset(r["account_id"] for r in rows if r["state"] != AccountState.FENCED.value)
        return MigrationRouting(rebalance_id, fenced, moved, fence_unplanned)

    async def save_topology(self, tx: Transaction, topology: Topology, *, expected_version: int) -> None:
        """Replace the stored topology, provided it is still `expected_version` (TransientError otherwise)."""
        routing = topology.migration
        updated = await tx.execute(
            "UPDATE registry SET version = ?, vnodes_per_shard = ?, rebalance_id = ?, fence_unplanned = ?,"
            " updated_us = ? WHERE singleton = 1 AND version = ?",
            (
                topology.version,
                topology.vnodes_per_shard,
                routing.rebalance_id if routing else None,
                int(routing.fence_unplanned) if routing else 0,
                _maybe_us(topology.updated_at),
                expected_version,
            ),
        )
        if updated != 1:
            raise TransientError(f"the topology moved on from version {expected_version} concurrently")
        await tx.execute("DELETE FROM nodes")
        await tx.execute("DELETE FROM shards")
        await tx.execute("DELETE FROM regions")
        await tx.executemany(
            "INSERT INTO shards (shard_id, weight, placement_seed, state, preferred_region, replication_mode)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (s.shard_id, s.weight, s.placement_seed, s.state.value, s.preferred_region, s.replication_mode.value)
                for s in topology.shards
            ],
        )
        await tx.executemany(
            "INSERT INTO regions (region_id, priority, state) VALUES (?, ?, ?)",
            [(r.region_id, r.priority, r.state.value) for r in topology.regions],
        )
        await tx.executemany(
            "INSERT INTO nodes (node_id, shard_id, role, dsn, region, health) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (n.node_id, s.shard_id, n.role.value, self._stored_dsn(n.dsn), n.region, n.health.value)
                for s in topology.shards
                for n in s.nodes
            ],
        )

    # Failover history

    async def add_failover(self, tx: Transaction, record: FailoverRecord) -> None:
        """Append a failover to the history."""
        await tx.execute(
            "INSERT INTO failover_history (failover_id, shard_id, failover_trigger, old_primary, new_primary,"
            " promoted_lsn, outage_started_us, completed_us, recovery_us, topology_version, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.failover_id,
                record.shard_id,
                record.trigger.value,
                record.old_primary,
                record.new_primary,
                None if record.promoted_lsn is None else format_lsn(record.promoted_lsn),
                to_us(record.outage_started_at),
                to_us(record.completed_at),
                record.recovery_time // timedelta(microseconds=1),
                record.topology_version,
                record.reason,
            ),
        )

    async def was_failed_over(self, shard_id: str, node_id: str) -> bool:
        """Whether `node_id` was ever the primary a failover of `shard_id` replaced."""
        found = await self._fetchval(
            "SELECT 1 FROM failover_history WHERE shard_id = ? AND old_primary = ? LIMIT 1", (shard_id, node_id)
        )
        return found is not None

    async def list_failovers(
        self, *, shard_id: str = "", after: FailoverCursor | None = None, limit: int = 50
    ) -> list[FailoverRecord]:
        """Failovers newest first (of one shard, if given), after a page cursor."""
        clauses: list[str] = []
        params: list[object] = []
        if shard_id:
            clauses.append("shard_id = ?")
            params.append(shard_id)
        if after is not None:
            clauses.append("(completed_us < ? OR (completed_us = ? AND failover_id < ?))")
            params += [after.completed_us, after.completed_us, after.failover_id]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.database.fetchall(
            "SELECT failover_id, shard_id, failover_trigger, old_primary, new_primary, promoted_lsn,"
            f" outage_started_us, completed_us, topology_version, reason FROM failover_history{where}"
            " ORDER BY completed_us DESC, failover_id DESC LIMIT ?",
            (*params, limit),
        )
        return [_failover(row) for row in rows]

    # Region failovers

    async def add_region_failover(self, record: RegionFailoverRecord) -> None:
        """Append a region failover to its history and link its shard failovers to it."""
        steps = [
            {
                "step": t.step.value,
                "started_us": to_us(t.started_at),
                "duration_us": t.duration // timedelta(microseconds=1),
                "detail": t.detail,
            }
            for t in record.steps
        ]
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO region_failovers (region_failover_id, region_id, failover_trigger, planned, started_us,"
                " completed_us, reason, steps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.region_failover_id,
                    record.region_id,
                    record.trigger.value,
                    int(record.planned),
                    to_us(record.started_at),
                    to_us(record.completed_at),
                    record.reason,
                    json.dumps(steps),
                ),
            )
            await tx.executemany(
                "UPDATE failover_history SET region_failover_id = ? WHERE failover_id = ?",
                [(record.region_failover_id, f.failover_id) for f in record.failovers],
            )

    async def recent_region_failovers(self, limit: int = 10) -> list[RegionFailoverRecord]:
        """The latest region failovers with their shard failovers, newest first."""
        async with self.database.transaction() as tx:
            heads = await tx.fetchall(
                "SELECT region_failover_id, region_id, failover_trigger, planned, started_us, completed_us, reason,"
                " steps FROM region_failovers ORDER BY completed_us DESC, region_failover_id DESC LIMIT ?",
                (limit,),
            )
            found = []
            for head in heads:
                rows = await tx.fetchall(
                    "SELECT failover_id, shard_id, failover_trigger, old_primary, new_primary, promoted_lsn,"
                    " outage_started_us, completed_us, topology_version, reason FROM failover_history"
                    " WHERE region_failover_id = ? ORDER BY shard_id",
                    (head["region_failover_id"],),
                )
                found.append(_region_failover(head, [_failover(r) for r in rows]))
        return found

    async def add_divergence(self, record: DivergenceRecord) -> None:
        """Keep a measured divergence (a repeat measurement of the same range replaces it)."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO divergences (shard_id, node_id, from_lsn, to_lsn, transactions, detected_us)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (shard_id, node_id, from_lsn) DO UPDATE SET"
                " to_lsn = excluded.to_lsn, transactions = excluded.transactions, detected_us = excluded.detected_us",
                (
                    record.shard_id,
                    record.node_id,
                    format_lsn(record.from_lsn),
                    format_lsn(record.to_lsn),
                    record.transactions,
                    to_us(record.detected_at),
                ),
            )

    async def recent_divergences(self, limit: int = 10) -> list[DivergenceRecord]:
        """The latest measured divergences, newest first."""
        rows = await self.database.fetchall(
            "SELECT shard_id, node_id, from_lsn, to_lsn, transactions, detected_us FROM divergences"
            " ORDER BY detected_us DESC, shard_id, node_id LIMIT ?",
            (limit,),
        )
        return [
            DivergenceRecord(
                r["shard_id"],
                r["node_id"],
                parse_lsn(r["from_lsn"]),
                parse_lsn(r["to_lsn"]),
                int(r["transactions"]),
                from_us(r["detected_us"]),
            )
            for r in rows
        ]

    # Rebalances

    async def create_rebalance(self, tx: Transaction, workflow: RebalanceWorkflow, topology_version: int) -> None:
        """Store a new rebalance and all its accounts."""
        await tx.execute(
            "INSERT INTO rebalances (rebalance_id, phase, started_us, finished_us, topology_version)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                workflow.rebalance_id,
                workflow.phase.value,
                to_us(workflow.started_at),
                _maybe_us(workflow.finished_at),
                topology_version,
            ),
        )
        await self.save_accounts(tx, workflow.rebalance_id, workflow.accounts())

    async def save_rebalance(self, tx: Transaction, workflow: RebalanceWorkflow) -> None:
        """Store a rebalance's phase and finish time."""
        await tx.execute(
            "UPDATE rebalances SET phase = ?, finished_us = ? WHERE rebalance_id = ?",
            (workflow.phase.value, _maybe_us(workflow.finished_at), workflow.rebalance_id),
        )

    async def save_accounts(self, tx: Transaction, rebalance_id: str, accounts: Iterable[AccountProgress]) -> None:
        """Insert or update the given accounts' progress."""
        await tx.executemany(
            "INSERT INTO rebalance_accounts (rebalance_id, account_id, source_shard, target_shard, state, attempts,"
            " fenced_us, last_error, updated_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (rebalance_id, account_id) DO UPDATE SET state = excluded.state,"
            " attempts = excluded.attempts, fenced_us = excluded.fenced_us, last_error = excluded.last_error,"
            " updated_us = excluded.updated_us",
            [
                (
                    rebalance_id,
                    p.move.account_id,
                    p.move.source_shard,
                    p.move.target_shard,
                    p.state.value,
                    p.attempts,
                    _maybe_us(p.fenced_at),
                    p.last_error,
                    _maybe_us(p.updated_at),
                )
                for p in accounts
            ],
        )

    async def load_workflow(
        self, tx: Transaction, rebalance_id: str, config: RebalanceConfig
    ) -> RebalanceWorkflow | None:
        """A stored rebalance with every account, or None."""
        head = await tx.fetchone(
            "SELECT phase, started_us, finished_us FROM rebalances WHERE rebalance_id = ?", (rebalance_id,)
        )
        if head is None:
            return None
        rows = await tx.fetchall(
            "SELECT account_id, source_shard, target_shard, state, attempts, fenced_us, last_error, updated_us"
            " FROM rebalance_accounts WHERE rebalance_id = ?",
            (rebalance_id,),
        )
        return RebalanceWorkflow(
            rebalance_id,
            (_progress(row) for row in rows),
            started_at=from_us(head["started_us"]),
            config=config,
            phase=RebalancePhase(head["phase"]),
            finished_at=_maybe_time(head["finished_us"]),
        )

    async def latest_rebalance_id(self) -> str | None:
        """The most recently started rebalance, or None."""
        value = await self._fetchval(
            "SELECT rebalance_id FROM rebalances ORDER BY started_us DESC, rebalance_id DESC LIMIT 1"
        )
        return None if value is None else str(value)

    async def rebalance_summary(self, rebalance_id: str, tx: Transaction | None = None) -> RebalanceSummary | None:
        """Phase, times, counts per state and the first failures of a rebalance, or None (in `tx` if given)."""
        if tx is None:
            async with self.database.transaction() as own:
                return await self.rebalance_summary(rebalance_id, own)
        head = await tx.fetchone(
            "SELECT phase, started_us, finished_us FROM rebalances WHERE rebalance_id = ?", (rebalance_id,)
        )
        if head is None:
            return None
        counts = await tx.fetchall(
            "SELECT state, COUNT(*) AS accounts FROM rebalance_accounts WHERE rebalance_id = ? GROUP BY state",
            (rebalance_id,),
        )
        failed = await tx.fetchall(
            "SELECT account_id, source_shard, target_shard, state, attempts, fenced_us, last_error, updated_us"
            " FROM rebalance_accounts WHERE rebalance_id = ? AND state = ? ORDER BY account_id LIMIT ?",
            (rebalance_id, AccountState.FAILED.value, MAX_LISTED_FAILURES),
        )
        by_state = {AccountState(r["state"]): int(r["accounts"]) for r in counts}
        return RebalanceSummary(
            rebalance_id=rebalance_id,
            phase=RebalancePhase(head["phase"]),
            started_at=from_us(head["started_us"]),
            finished_at=_maybe_time(head["finished_us"]),
            progress=RebalanceProgress(sum(by_state.values()), by_state),
            failures=tuple(_progress(r) for r in failed),
        )

    async def _fetchval(self, sql: str, params: Sequence[object] = ()) -> object:
        async with self.database.transaction() as tx:
            return await tx.fetchval(sql, params)


def _failover(row: Row) -> FailoverRecord:
    return FailoverRecord(
        failover_id=row["failover_id"],
        shard_id=row["shard_id"],
        trigger=FailoverTrigger(row["failover_trigger"]),
        old_primary=row["old_primary"],
        new_primary=row["new_primary"],
        promoted_lsn=None if row["promoted_lsn"] is None else parse_lsn(row["promoted_lsn"]),
        outage_started_at=from_us(row["outage_started_us"]),
        completed_at=from_us(row["completed_us"]),
        topology_version=int(row["topology_version"]),
        reason=row["reason"],
    )


def _region_failover(head: Row, failovers: list[FailoverRecord]) -> RegionFailoverRecord:
    steps = tuple(
        StepTiming(
            RegionFailoverStep(step["step"]),
            from_us(step["started_us"]),
            timedelta(microseconds=step["duration_us"]),
            step["detail"],
        )
        for step in json.loads(head["steps"])
    )
    return RegionFailoverRecord(
        region_failover_id=head["region_failover_id"],
        region_id=head["region_id"],
        trigger=FailoverTrigger(head["failover_trigger"]),
        planned=bool(head["planned"]),
        started_at=from_us(head["started_us"]),
        completed_at=from_us(head["completed_us"]),
        steps=steps,
        failovers=tuple(failovers),
        reason=head["reason"],
    )


def _progress(row: Row) -> AccountProgress:
    return AccountProgress(
        move=AccountMove(row["account_id"], row["source_shard"], row["target_shard"]),
        state=AccountState(row["state"]),
        attempts=int(row["attempts"]),
        fenced_at=_maybe_time(row["fenced_us"]),
        last_error=row["last_error"],
        updated_at=_maybe_time(row["updated_us"]),
    )
