"""Moving credits accounts between shards: the `AccountMover` the sharding server's rebalance engine drives.

It runs inside the sharding server (`sharding.account_mover: servers.credits.moves:create_mover`)
and works on the shard databases directly, each in the `credits` schema, migrated on first use
like the credits server does. For one account (see `servers.sharding.rebalancer.AccountMover`):

- copy: mark the account `incoming` on the target (its writes refused there, its rows there
  discardable), discard what an earlier attempt left, and copy every event row with its version,
  hashes, trace id and request id unchanged, the snapshots, the recorded answers about the
  account (its refusals included) and of the request ids its events carry, and read models
  rebuilt from the copied events. Alert numbers are not copied:
  they order each shard's alert feed, and an alert already announced must not be announced again;
- verify: the target's events equal the source's (version by version, hashes included), the
  target's chain verifies from genesis, and its balance row equals a replay of its events;
- fence: record the fence on the source (waiting for the writes in flight, prepared two-phase
  halves included), copy the events appended since, verify everything again, and clear the
  target's `incoming` mark;
- unfence: lift the source fence and discard the target's partial copy;
- cleanup: turn the source fence into a permanent `moved` marker and delete the account's rows
  there (the event store allows that only for a moved account).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from servers.credits.account import AccountState
from servers.credits.audit import ChainVerifier
from servers.credits.events import Event, StoredEvent
from servers.credits.eventstore import EventStore, Instants
from servers.credits.fences import FenceState, WriteFences
from servers.credits.projection import Projection
from servers.credits.readmodels import balance_row
from servers.credits.shards import open_shard_database
from servers.mesh.postgres import PostgresDatabase
from servers.mesh.server import Runtime
from servers.mesh.storage import Transaction
from servers.sharding.domain import Shard
from servers.sharding.rebalance import AccountMove

FENCE_LOCK_TIMEOUT = "1500ms"
"""Longest the fence waits for the account's writes in flight (under the engine's 2 s fence timeout)."""
_BATCH = 5000
_COLUMNS = "account_id, version, type, body, occurred_at, trace_id, prev_hash, hash, request_id, reference"
_INSERT = (
    f"INSERT INTO event_store ({_COLUMNS}) SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::text[],"
    " ?::timestamptz[], ?::text[], ?::bytea[], ?::bytea[], ?::text[], ?::text[]) RETURNING version, position"
)


class MoveMismatch(RuntimeError):
    """The copy of an account differs from its source (the message says where; no secrets)."""


@dataclass(frozen=True, slots=True)
class _EventRow:
    """One event row as copied: the audited columns plus request id and reference."""

    stored: StoredEvent
    request_id: str
    reference: str

    def params(self) -> tuple[Any, ...]:
        s = self.stored
        return (
            s.account_id,
            s.version,
            s.type,
            s.body,
            s.occurred_at,
            s.trace_id,
            s.prev_hash,
            s.hash,
            self.request_id,
            self.reference,
        )


class CreditsAccountMover:
    """Copies, verifies, fences, cuts over and cleans up credits accounts on PostgreSQL shards."""

    def __init__(self, *, pool_size: int = 4) -> None:
        self.pool_size = pool_size
        self.events = EventStore("postgres")
        self.projection = Projection("postgres")
        self.fences = WriteFences()
        self._databases: dict[str, PostgresDatabase] = {}
        self._opening = asyncio.Lock()
        self._targets: dict[str, Shard] = {}

    # -- the AccountMover contract ---------------------------------------------------------------

    async def list_accounts(self, shard: Shard) -> Sequence[str]:
        """Every account whose events live on the shard's primary (not moved away, not a copy in the making)."""
        database = await self._database(shard)
        rows = await database.fetchall(
            "SELECT b.account_id FROM credit_balances_read_model b WHERE NOT EXISTS ("
            " SELECT 1 FROM account_fences f WHERE f.account_id = b.account_id AND f.state IN (?, ?))"
            " ORDER BY b.account_id",
            (FenceState.MOVED.value, FenceState.INCOMING.value),
        )
        return [row[0] for row in rows]

    async def copy(self, move: AccountMove, source: Shard, target: Shard) -> None:
        """Copy the account's events (as of now) onto the target, replacing any earlier partial copy."""
        self._targets[move.account_id] = target
        rows = await self._events_after(await self._database(source), move.account_id, 0)
        target_db = await self._database(target)
        async with target_db.transaction() as tx:
            await self.fences.mark_incoming(tx, move.account_id, source.shard_id)
            await self._discard(tx, move.account_id)
            await self._copy_snapshots(source, tx, move.account_id, max((r.stored.version for r in rows), default=0))
            await self._append(tx, move.account_id, rows)
            await self._copy_answers(source, tx, move.account_id, rows)

    async def verify(self, move: AccountMove, source: Shard, target: Shard) -> None:
        """Raise MoveMismatch unless the target's copy equals the source's events up to what was copied."""
        copied = await self._events_after(await self._database(target), move.account_id, 0)
        original = await self._events_after(await self._database(source), move.account_id, 0)
        await self._check(move.account_id, copied, original[: len(copied)], target)

    async def fence(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        """Fence the account on the source, copy the events appended since `copy`, verify everything."""
        self._targets[move.account_id] = target
        source_db = await self._database(source)
        async with source_db.transaction() as tx:
            await tx.execute(f"SET LOCAL lock_timeout = '{FENCE_LOCK_TIMEOUT}'")
            await self.fences.fence(tx, move.account_id, rebalance_id, target.shard_id)
        target_db = await self._database(target)
        async with target_db.transaction() as tx:
            have = await tx.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM event_store WHERE account_id = ?", (move.account_id,)
            )
            tail = await self._events_after(source_db, move.account_id, int(have))
            await self._append(tx, move.account_id, tail)
            await self._copy_answers(source, tx, move.account_id, tail)
            await self.fences.clear(tx, move.account_id, FenceState.INCOMING)
        copied = await self._events_after(target_db, move.account_id, 0)
        original = await self._events_after(source_db, move.account_id, 0)
        if len(copied) != len(original):
            raise MoveMismatch(f"{move.account_id}: {len(copied)} events copied of {len(original)}")
        await self._check(move.account_id, copied, original, target)
        await self._check_balances(move.account_id, source_db, target_db)

    async def unfence(self, move: AccountMove, source: Shard, rebalance_id: str) -> None:
        """Lift the source fence of `rebalance_id` and discard the target's partial copy (if this process made it)."""
        async with (await self._database(source)).transaction() as tx:
            await self.fences.lift(tx, move.account_id, rebalance_id)
        target = self._targets.pop(move.account_id, None)
        if target is None:
            return  # made before a restart: the next copy discards it
        async with (await self._database(target)).transaction() as tx:
            await self.fences.mark_incoming(tx, move.account_id, source.shard_id)
            await self._discard(tx, move.account_id)
            await self.fences.clear(tx, move.account_id, FenceState.INCOMING)

    async def cleanup(self, move: AccountMove, source: Shard, target: Shard, rebalance_id: str) -> None:
        """Leave a `moved` marker on the source and delete the account's rows there."""
        self._targets.pop(move.account_id, None)
        async with (await self._database(source)).transaction() as tx:
            await self.fences.mark_moved(tx, move.account_id, rebalance_id, target.shard_id)
            await self._discard(tx, move.account_id)

    async def close(self) -> None:
        """Close every shard pool."""
        for database in self._databases.values():
            await database.close()
        self._databases.clear()

    # -- rows ------------------------------------------------------------------------------------

    async def _database(self, shard: Shard) -> PostgresDatabase:
        dsn = shard.primary.dsn
        async with self._opening:
            database = self._databases.get(dsn)
            if database is None:
                database = await open_shard_database(dsn, pool_size=self.pool_size)
                self._databases[dsn] = database
        return database

    async def _events_after(self, database: PostgresDatabase, account_id: str, version: int) -> list[_EventRow]:
        rows: list[_EventRow] = []
        while True:
            async with database.transaction() as tx:
                batch = await tx.fetchall(
                    f"SELECT {_COLUMNS} FROM event_store WHERE account_id = ? AND version > ? ORDER BY version LIMIT ?",
                    (account_id, version, _BATCH),
                )
            for row in batch:
                stored = StoredEvent(
                    row[0], int(row[1]), row[2], row[3], Instants.required(row[4]), row[5], bytes(row[6]), bytes(row[7])
                )
                rows.append(_EventRow(stored, row[8], row[9]))
            if len(batch) < _BATCH:
                return rows
            version = rows[-1].stored.version

    async def _append(self, tx: Transaction, account_id: str, rows: Sequence[_EventRow]) -> None:
        """Insert copied rows and bring the account's read models up to them (as the live path would)."""
        if not rows:
            return
        positions: list[int] = []
        for start in range(0, len(rows), _BATCH):
            params = [row.params() for row in rows[start : start + _BATCH]]
            returned = await tx.fetchall(_INSERT, [[p[i] for p in params] for i in range(10)])
            by_version = {int(r[0]): int(r[1]) for r in returned}
            positions += [by_version[row.stored.version] for row in rows[start : start + _BATCH]]
        loaded = await self.events.load(tx, account_id)
        events: list[Event] = [row.stored.decode() for row in rows]
        await self.projection.record(tx, loaded.state, events, positions)

    async def _copy_snapshots(self, source: Shard, tx: Transaction, account_id: str, up_to: int) -> None:
        snapshots = await (await self._database(source)).fetchall(
            "SELECT account_id, version, state, taken_at FROM snapshots WHERE account_id = ? AND version <= ?",
            (account_id, up_to),
        )
        if snapshots:
            await tx.executemany(
                "INSERT INTO snapshots (account_id, version, state, taken_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account_id, version) DO NOTHING",
                [tuple(row) for row in snapshots],
            )

    async def _copy_answers(self, source: Shard, tx: Transaction, account_id: str, rows: Sequence[_EventRow]) -> None:
        """Copy the recorded answers about the account (refusals too) and those of the request ids the rows
        carry (the other side of a transfer), so a retry on the target gets the same answer."""
        request_ids = sorted({row.request_id for row in rows if row.request_id})
        answers = await (await self._database(source)).fetchall(
            "SELECT request_id, method, fingerprint, outcome, response, subject, scope, created_at FROM request_ids"
            " WHERE subject = ? OR request_id = ANY(?::text[])",
            (account_id, request_ids),
        )
        if answers:
            await tx.executemany(
                "INSERT INTO request_ids (request_id, method, fingerprint, outcome, response, subject, scope,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (scope, request_id) DO NOTHING",
                [tuple(row) for row in answers],
            )

    async def _discard(self, tx: Transaction, account_id: str) -> None:
        """Delete the account's rows (the caller marked it moved or incoming, which the event store requires)."""
        await tx.execute("DELETE FROM event_store WHERE account_id = ?", (account_id,))
        await tx.execute("DELETE FROM snapshots WHERE account_id = ?", (account_id,))
        await tx.execute("DELETE FROM credit_balances_read_model WHERE account_id = ?", (account_id,))
        await tx.execute("DELETE FROM credit_reservations_read_model WHERE account_id = ?", (account_id,))

    # -- verification ----------------------------------------------------------------------------

    async def _check(
        self, account_id: str, copied: Sequence[_EventRow], original: Sequence[_EventRow], target: Shard
    ) -> None:
        if len(copied) != len(original):
            raise MoveMismatch(f"{account_id}: {len(copied)} events on the target, {len(original)} expected")
        verifier = ChainVerifier()
        state = AccountState(account_id)
        for mine, theirs in zip(copied, original, strict=True):
            if mine.stored != theirs.stored or mine.request_id != theirs.request_id:
                raise MoveMismatch(f"{account_id}@{mine.stored.version}: differs from the source")
            mismatch = verifier.check(mine.stored)
            if mismatch is not None:
                raise MoveMismatch(f"{account_id}@{mismatch.version}: audit chain broken ({mismatch.kind})")
            state.apply(mine.stored.decode())
        database = await self._database(target)
        async with database.transaction() as tx:
            row = await self.projection.balance(tx, account_id)
        if not copied:
            return
        expected = balance_row(state, 0)
        if row is None or (row.available, row.held, row.version) != (expected.available, expected.held, state.version):
            raise MoveMismatch(f"{account_id}: the target's balance does not match a replay of its events")

    async def _check_balances(self, account_id: str, source_db: PostgresDatabase, target_db: PostgresDatabase) -> None:
        async with source_db.transaction() as tx:
            before = await self.projection.balance(tx, account_id)
        async with target_db.transaction() as tx:
            after = await self.projection.balance(tx, account_id)
        summary = [(r.available, r.held, r.version, r.threshold) if r else None for r in (before, after)]
        if summary[0] != summary[1]:
            raise MoveMismatch(f"{account_id}: balances differ between source and target")


def create_mover(runtime: Runtime) -> CreditsAccountMover:
    """The mover the sharding server loads by name (`sharding.account_mover`)."""
    return CreditsAccountMover()
