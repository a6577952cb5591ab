"""Two-phase commit of cross-shard transfers: prepared transaction names, the coordinator log, recovery.

A transfer between accounts on two shards prepares one PostgreSQL transaction on each shard
primary (`PREPARE TRANSACTION`), then the coordinator writes its decision, COMMIT, to the
coordinator log (the `transfer_decisions` table of the credits server's own store), and only
then runs `COMMIT PREPARED` on both. A decision is written once per transfer: whoever writes
first, the coordinator's COMMIT or recovery's ABORT, wins (the primary key), so the two shards
can never be finished differently.

Prepared transactions are named `shieldx-credits:<coordinator id>:<transfer id>:<from|to>`.
The coordinator id is made once per coordinator log and stored in it, so recovery touches only
the transactions its own log decides (several credits servers sharing one PostgreSQL store
share the log and may each recover; servers with their own SQLite store each recover theirs).

Recovery (`TransferCoordinator.recover`, at start and every few seconds) scans
`pg_prepared_xacts` on every shard primary the topology names now (prepared transactions
replicate to synchronous standbys and survive a failover). Each of ours that is not running in
this process and is older than `in_doubt_after` seconds is finished as the log says; with no
decision logged it is presumed aborted (ABORT is logged first, so a coordinator still alive
somewhere can no longer commit it). The gauge `shieldx_credits_prepared_transactions_unresolved`
counts our prepared transactions left in doubt after the latest pass.

Crash points: for tests of exactly this, `CrashPoint.AFTER_PREPARE` or `AFTER_DECISION` makes
every cross-shard transfer stop there (logging a warning) until the process is killed. It is
off unless `credits.two_phase_crash_point` is set; never set it in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psycopg
from prometheus_client import CollectorRegistry, Gauge
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from servers.credits.placement import UNREACHABLE, AccountPlacement, Shard
from servers.mesh import storage
from servers.mesh.postgres import PostgresDatabase
from servers.mesh.storage import Database, Transaction

log = logging.getLogger(__name__)

GID_PREFIX = "shieldx-credits"
"""Every prepared transaction credits makes is named `<GID_PREFIX>:<coordinator>:<transfer>:<side>`."""
_GID = re.compile(rf"{GID_PREFIX}:([0-9a-f]{{16}}):([0-9a-f]{{32}}):(from|to)")
_MAX_DECISION_BATCH = 100


class Side(enum.StrEnum):
    """Which half of a transfer a prepared transaction holds."""

    FROM = "from"
    TO = "to"


class Decision(enum.StrEnum):
    """The outcome of a transfer, as the coordinator log records it."""

    COMMIT = "commit"
    ABORT = "abort"


class CrashPoint(enum.StrEnum):
    """Where a test may make cross-shard transfers stop until the process is killed."""

    NONE = ""
    AFTER_PREPARE = "after_prepare"
    """Both shards prepared, no decision logged: recovery must abort both."""
    AFTER_DECISION = "after_decision"
    """COMMIT logged, neither shard finished: recovery must commit both."""


@dataclass(frozen=True, slots=True)
class PreparedName:
    """The name of one prepared half of a transfer."""

    coordinator_id: str
    transfer_id: str
    side: Side

    @property
    def gid(self) -> str:
        """The PostgreSQL transaction identifier."""
        return f"{GID_PREFIX}:{self.coordinator_id}:{self.transfer_id}:{self.side}"

    @classmethod
    def parse(cls, gid: str) -> PreparedName | None:
        """The name a gid spells, or None for a prepared transaction that is not ours."""
        match = _GID.fullmatch(gid)
        return None if match is None else cls(match[1], match[2], Side(match[3]))


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """What the coordinator log keeps of a committed transfer (for operators; recovery needs the id only)."""

    transfer_id: str
    from_account_id: str
    to_account_id: str
    from_shard: str
    to_shard: str
    amount: int
    request_id: str


async def prepare(tx: Transaction, name: PreparedName) -> None:
    """End `tx` with PREPARE TRANSACTION: its changes and locks now outlive the session, undecided."""
    # The gid is a literal in the grammar (no parameter), and `PreparedName` only ever holds
    # hex digits and the two side names.
    await tx.execute(f"PREPARE TRANSACTION '{name.gid}'")


class CoordinatorLog:
    """The decisions of cross-shard transfers, in the credits server's own store.

    Concurrent COMMIT decisions are written together, one transaction per batch.
    """

    def __init__(self, database: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock
        self._pending: list[tuple[TransferRecord, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def coordinator_id(self) -> str:
        """This log's id (made on first use)."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO coordinator_identity (id, coordinator_id) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                (uuid.uuid4().hex[:16],),
            )
            return str(await tx.fetchval("SELECT coordinator_id FROM coordinator_identity WHERE id = 1"))

    async def record_commit(self, record: TransferRecord) -> bool:
        """Log COMMIT for the transfer; False if recovery had logged ABORT first (the transfer must abort)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        if self._writer is None:
            # Its own task: a caller that stops waiting must not cut the batch's transaction short.
            self._writer = asyncio.create_task(self._write_pending(), name="credits.coordinator_log")
        return await future

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:_MAX_DECISION_BATCH]
                del self._pending[:_MAX_DECISION_BATCH]
                try:
                    written = await self._insert_commits([record for record, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for record, future in batch:
                    if not future.done():
                        future.set_result(record.transfer_id in written)
        finally:
            self._writer = None

    async def _insert_commits(self, records: Sequence[TransferRecord]) -> set[str]:
        now = self._clock()
        rows = ", ".join(["(?, 'commit', ?, ?, ?, ?, ?, ?, ?)"] * len(records))
        params = [
            value
            for r in records
            for value in (
                r.transfer_id,
                r.from_account_id,
                r.to_account_id,
                r.from_shard,
                r.to_shard,
                r.amount,
                r.request_id,
                now,
            )
        ]
        async with self.database.transaction() as tx:
            inserted = await tx.fetchall(
                "INSERT INTO transfer_decisions (transfer_id, decision, from_account_id, to_account_id, from_shard,"
                f" to_shard, amount, request_id, decided_at) VALUES {rows}"
                " ON CONFLICT (transfer_id) DO NOTHING RETURNING transfer_id",
                params,
            )
        return {row[0] for row in inserted}

    async def decision(self, transfer_id: str) -> Decision | None:
        """The transfer's logged decision, if any."""
        found = await self.database.fetchone(
            "SELECT decision FROM transfer_decisions WHERE transfer_id = ?", (transfer_id,)
        )
        return None if found is None else Decision(found[0])

    async def presume_abort(self, transfer_id: str) -> Decision:
        """Log ABORT unless a decision is there already; the decision in force."""
        async with self.database.transaction() as tx:
            await tx.execute(
                "INSERT INTO transfer_decisions (transfer_id, decision, from_account_id, to_account_id, from_shard,"
                " to_shard, amount, request_id, decided_at) VALUES (?, 'abort', '', '', '', '', 0, '', ?)"
                " ON CONFLICT (transfer_id) DO NOTHING",
                (transfer_id, self._clock()),
            )
            found = await tx.fetchval("SELECT decision FROM transfer_decisions WHERE transfer_id = ?", (transfer_id,))
        return Decision(found)

    async def purge(self, older_than_seconds: float, keep: Sequence[str]) -> int:
        """Forget decisions older than the retention, except those of transfers in `keep`."""
        cutoff = self._clock() - older_than_seconds
        kept = sorted(set(keep))
        if not kept:
            return await self.database.execute("DELETE FROM transfer_decisions WHERE decided_at < ?", (cutoff,))
        marks = ", ".join("?" * len(kept))
        return await self.database.execute(
            f"DELETE FROM transfer_decisions WHERE decided_at < ? AND transfer_id NOT IN ({marks})", (cutoff, *kept)
        )


@dataclass(frozen=True, slots=True)
class InDoubt:
    """A prepared transaction of ours found on a shard."""

    name: PreparedName
    age_seconds: float


class PreparedTransactions:
    """Finishing and finding prepared transactions on shard primaries.

    `COMMIT PREPARED` cannot run inside a transaction block, so each shard primary gets a small
    pool of autocommit connections of its own, beside the store's transactional pool.
    """

    def __init__(self, pool_size: int = 4) -> None:
        self.pool_size = pool_size
        self._pools: dict[str, AsyncConnectionPool] = {}

    async def finish(self, shard: Shard, name: PreparedName, decision: Decision) -> bool:
        """COMMIT or ROLLBACK PREPARED; False if the transaction is not there (already finished)."""
        verb = "COMMIT PREPARED" if decision is Decision.COMMIT else "ROLLBACK PREPARED"
        pool = await self._pool(shard)
        async with pool.connection() as connection:
            try:
                await connection.execute(sql.SQL(verb + " {}").format(sql.Literal(name.gid)))
            except psycopg.errors.UndefinedObject:
                return False  # finished already (by recovery, or by an earlier attempt)
        return True

    async def in_doubt(self, shard: Shard, coordinator_id: str) -> list[InDoubt]:
        """Our prepared transactions on the shard's primary, with their age by the server's clock."""
        pool = await self._pool(shard)
        async with pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT gid, EXTRACT(EPOCH FROM now() - prepared)::float8 FROM pg_prepared_xacts"
                " WHERE database = current_database() AND gid LIKE %s",
                (f"{GID_PREFIX}:{coordinator_id}:%",),
            )
            rows = await cursor.fetchall()
        found = []
        for gid, age in rows:
            name = PreparedName.parse(gid)
            if name is not None:
                found.append(InDoubt(name, float(age)))
        return found

    async def _pool(self, shard: Shard) -> AsyncConnectionPool:
        database = shard.database
        if not isinstance(database, PostgresDatabase):
            raise TypeError(f"shard {shard.name!r} is not on PostgreSQL: two-phase commit needs it")
        pool = self._pools.get(database.url)
        if pool is None:
            pool = AsyncConnectionPool(
                database.url,
                min_size=1,
                max_size=self.pool_size,
                open=False,
                kwargs={"autocommit": True, "application_name": "shieldx:credits-2pc"},
            )
            self._pools[database.url] = pool
            try:
                await pool.open(wait=True, timeout=5.0)
            except BaseException:
                del self._pools[database.url]
                await pool.close()
                raise
        return pool

    async def retire(self, keep: Sequence[Shard]) -> None:
        """Close the pools of shard nodes no longer in `keep` (after a failover)."""
        wanted = {s.database.url for s in keep if isinstance(s.database, PostgresDatabase)}
        for url in [u for u in self._pools if u not in wanted]:
            await self._pools.pop(url).close()

    async def close(self) -> None:
        """Close every pool."""
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()


class TransferCoordinator:
    """The coordinator side of cross-shard transfers: decisions, the second phase, recovery, the gauge."""

    def __init__(
        self,
        log: CoordinatorLog,
        placement: AccountPlacement,
        registry: CollectorRegistry,
        *,
        prepared: PreparedTransactions | None = None,
        in_doubt_after_seconds: float = 10.0,
        decision_retention_seconds: float = 7 * 86400.0,
        crash_point: CrashPoint = CrashPoint.NONE,
    ) -> None:
        self.log = log
        self.placement = placement
        self.prepared = prepared or PreparedTransactions()
        self.in_doubt_after_seconds = in_doubt_after_seconds
        self.decision_retention_seconds = decision_retention_seconds
        self.crash_point = crash_point
        self.coordinator_id = ""
        self._running: set[str] = set()
        self._next_purge = 0.0
        self.unresolved = Gauge(
            "shieldx_credits_prepared_transactions_unresolved",
            "Prepared cross-shard transfer halves of this coordinator left in doubt after the latest recovery pass",
            registry=registry,
        )

    async def start(self) -> None:
        """Load (or make) the coordinator id."""
        self.coordinator_id = await self.log.coordinator_id()

    def names(self, transfer_id: str) -> tuple[PreparedName, PreparedName]:
        """The prepared transaction names of a transfer's two halves."""
        if not self.coordinator_id:
            raise RuntimeError("TransferCoordinator.start() has not run")
        return (
            PreparedName(self.coordinator_id, transfer_id, Side.FROM),
            PreparedName(self.coordinator_id, transfer_id, Side.TO),
        )

    @contextlib.contextmanager
    def running(self, transfer_id: str) -> Iterator[None]:
        """Mark a transfer as driven by this process (recovery leaves its prepared halves alone)."""
        self._running.add(transfer_id)
        try:
            yield
        finally:
            self._running.discard(transfer_id)

    async def commit(self, record: TransferRecord, source: Shard, target: Shard) -> tuple[bool, bool]:
        """Decide COMMIT for a prepared transfer and finish both halves.

        Returns (committed, finished): `committed` is False if recovery had aborted the transfer
        first (both halves are rolled back); `finished` is False if a half could not be finished
        now (recovery will finish it as decided).
        """
        await self._pause_at(CrashPoint.AFTER_PREPARE, record.transfer_id)
        if not await self.log.record_commit(record):
            await self.finish(record.transfer_id, Decision.ABORT, source, target)
            return False, True
        await self._pause_at(CrashPoint.AFTER_DECISION, record.transfer_id)
        return True, await self.finish(record.transfer_id, Decision.COMMIT, source, target)

    async def finish(self, transfer_id: str, decision: Decision, source: Shard, target: Shard) -> bool:
        """Finish both halves as decided; False if one could not be reached (recovery will)."""
        from_name, to_name = self.names(transfer_id)
        results = await asyncio.gather(
            self.prepared.finish(source, from_name, decision),
            self.prepared.finish(target, to_name, decision),
            return_exceptions=True,
        )
        finished = True
        for name, result in zip((from_name, to_name), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                finished = False
                log.warning(
                    "finishing a prepared transfer half failed; recovery will finish it",
                    extra={"gid": name.gid, "decision": str(decision), "error": type(result).__name__},
                )
        return finished

    async def abandon(self, shard: Shard, name: PreparedName) -> None:
        """Roll back one prepared half of a transfer that failed before its decision (best effort)."""
        try:
            await self.prepared.finish(shard, name, Decision.ABORT)
        except Exception as error:
            log.warning(
                "rolling back a prepared transfer half failed; recovery will",
                extra={"gid": name.gid, "error": type(error).__name__},
            )

    async def recover(self) -> int:
        """Finish every in-doubt prepared transaction of ours as the log says; returns how many were finished."""
        finished = 0
        unresolved = 0
        in_doubt: list[str] = []
        every_shard_read = self.placement.every_shard_open
        for shard in self.placement.shards:
            try:
                found = await self.prepared.in_doubt(shard, self.coordinator_id)
            except UNREACHABLE as error:
                every_shard_read = False
                log.warning("cannot scan shard %s for prepared transfers: %s", shard.name, type(error).__name__)
                continue
            for doubt in found:
                if doubt.name.transfer_id in self._running:
                    continue
                in_doubt.append(doubt.name.transfer_id)
                if doubt.age_seconds < self.in_doubt_after_seconds:
                    unresolved += 1
                    continue
                try:
                    decision = await self.log.decision(doubt.name.transfer_id)
                    if decision is None:
                        decision = await self.log.presume_abort(doubt.name.transfer_id)
                    await self.prepared.finish(shard, doubt.name, decision)
                except (*UNREACHABLE, storage.StorageError) as error:
                    unresolved += 1
                    log.warning("recovering %s failed: %s", doubt.name.gid, type(error).__name__)
                    continue
                finished += 1
                log.info("recovered prepared transfer half", extra={"gid": doubt.name.gid, "decision": str(decision)})
        self.unresolved.set(unresolved)
        await self.prepared.retire(self.placement.shards)
        if every_shard_read and time.monotonic() >= self._next_purge:
            # A decision may only be forgotten once no shard can still hold a half it decides.
            await self.log.purge(self.decision_retention_seconds, in_doubt)
            self._next_purge = time.monotonic() + min(self.decision_retention_seconds / 10, 3600.0)
        return finished

    async def _pause_at(self, point: CrashPoint, transfer_id: str) -> None:
        if self.crash_point is not point:
            return
        log.warning(
            "two-phase crash point reached: transfer paused until the process is killed",
            extra={"crash_point": str(point), "transfer_id": transfer_id},
        )
        await asyncio.Event().wait()

    async def close(self) -> None:
        """Close the second-phase connections."""
        await self.prepared.close()
