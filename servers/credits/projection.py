"""The credits read models: balances and reservations as queried, kept in step with the event store.

The live path writes them in the same transaction as the events they follow (`Projection.record`),
so a committed event is always reflected; a rebuild (`rebuild.py`) replays every event into
fresh rows with the same functions (`readmodels.balance_row`, `readmodels.reservation_change`),
so both paths give identical tables. The projection checkpoint (the highest event position applied) is kept in
slots by account, so writers of different accounts do not all queue on one row.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from servers.credits.account import AccountState
from servers.credits.audit import AccountHead
from servers.credits.events import (
    Event,
)
from servers.credits.eventstore import Instants
from servers.credits.readmodels import (
    BalanceRow,
    ReservationClosed,
    ReservationRow,
    ReservationState,
    balance_row,
    reservation_changes,
)
from servers.mesh.postgres import json_rows, select_json_rows
from servers.mesh.storage import Dialect, Transaction

PROJECTION = "credit_balances"
"""Name of the read-model projection in `projection_checkpoint`."""
CHECKPOINT_SLOTS = 64
"""Rows the checkpoint is spread over."""

_BALANCE_TYPES = (
    ("account_id", "text"),
    ("available", "bigint"),
    ("held", "bigint"),
    ("version", "bigint"),
    ("threshold", "bigint"),
    ("alert_armed", "boolean"),
    ("purchased", "bigint"),
    ("consumed", "bigint"),
    ("transferred_in", "bigint"),
    ("transferred_out", "bigint"),
    ("open_reservations", "integer"),
    ("next_expiry", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("position", "bigint"),
)
_RESERVATION_TYPES = (
    ("account_id", "text"),
    ("reservation_id", "text"),
    ("amount", "bigint"),
    ("state", "text"),
    ("description", "text"),
    ("created_at", "timestamptz"),
    ("expires_at", "timestamptz"),
    ("closed_at", "timestamptz"),
    ("committed", "bigint"),
    ("released", "bigint"),
    ("position", "bigint"),
)
_CLOSURE_TYPES = (
    ("state", "text"),
    ("closed_at", "timestamptz"),
    ("committed", "bigint"),
    ("released", "bigint"),
    ("account_id", "text"),
    ("reservation_id", "text"),
)
_CHECKPOINT_TYPES = (("slot", "integer"), ("position", "bigint"))
_BALANCE_COLUMNS = ", ".join(name for name, _ in _BALANCE_TYPES)
_RESERVATION_COLUMNS = ", ".join(name for name, _ in _RESERVATION_TYPES)


def _kinds(columns: Sequence[tuple[str, str]]) -> list[str]:
    return [kind for _, kind in columns]


def checkpoint_slot(account_id: str) -> int:
    """The checkpoint row an account's writes advance."""
    return zlib.crc32(account_id.encode()) % CHECKPOINT_SLOTS


class Projection:
    """SQL for the read models and the checkpoint in one database dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.instants = Instants(dialect)
        greatest = "GREATEST" if dialect == "postgres" else "MAX"
        self._checkpoint_conflict = (
            " ON CONFLICT (projection, slot) DO UPDATE"
            f" SET position = {greatest}(projection_checkpoint.position, excluded.position)"
        )
        updates = ", ".join(f"{name} = excluded.{name}" for name, _ in _BALANCE_TYPES[1:])
        self._balance_conflict = f" ON CONFLICT (account_id) DO UPDATE SET {updates}"
        self._statements: dict[tuple[str, int], str] = {}

    # -- the live path ---------------------------------------------------------------------------

    async def record(
        self, tx: Transaction, state: AccountState, events: Sequence[Event], positions: Sequence[int]
    ) -> None:
        """Reflect `events` (just appended at `positions`) that took the account to `state`."""
        await self.record_many(tx, [(state, events, positions)])

    async def record_many(
        self, tx: Transaction, changes: Sequence[tuple[AccountState, Sequence[Event], Sequence[int]]]
    ) -> None:
        """`record` for several accounts (each once): one statement on PostgreSQL, a few on SQLite."""
        balances = [balance_row(state, max(positions)) for state, _, positions in changes]
        opened, closed = reservation_changes(changes)
        slots: dict[int, int] = {}
        for row in balances:
            slot = checkpoint_slot(row.account_id)
            slots[slot] = max(slots.get(slot, 0), row.position)
        checkpoints = sorted(slots.items())
        balance_params = [self._balance_params(row) for row in balances]
        opened_params = [self._reservation_params(row) for row in opened]
        closed_params = [self._closure_params(change) for change in closed]
        if self.dialect == "postgres":
            await self._record_postgres(tx, balance_params, opened_params, closed_params, checkpoints)
            return
        await tx.execute(self._many("balances", len(balances)), [v for row in balance_params for v in row])
        if opened_params:
            await tx.execute(self._many("reservations", len(opened)), [v for row in opened_params for v in row])
        if closed_params:
            await tx.executemany(
                "UPDATE credit_reservations_read_model SET state = ?, closed_at = ?, committed = ?, released = ?"
                " WHERE account_id = ? AND reservation_id = ?",
                closed_params,
            )
        await tx.execute(
            self._many("checkpoints", len(checkpoints)),
            [value for slot, position in checkpoints for value in (PROJECTION, slot, position)],
        )

    async def _record_postgres(
        self,
        tx: Transaction,
        balances: list[tuple[Any, ...]],
        opened: list[tuple[Any, ...]],
        closed: list[tuple[Any, ...]],
        checkpoints: list[tuple[int, int]],
    ) -> None:
        # Every table in one statement (one round trip), each fed one JSON parameter. The parts
        # run on one snapshot and cannot see each other's rows, which is why a reservation opened
        # and closed within these changes arrives already closed (`readmodels.reservation_changes`).
        parts = [
            f"balances AS (INSERT INTO credit_balances_read_model ({_BALANCE_COLUMNS})"
            f" {select_json_rows(_kinds(_BALANCE_TYPES))}{self._balance_conflict})"
        ]
        params = [json_rows(balances)]
        if opened:
            parts.append(
                f"opened AS (INSERT INTO credit_reservations_read_model ({_RESERVATION_COLUMNS})"
                f" {select_json_rows(_kinds(_RESERVATION_TYPES))})"
            )
            params.append(json_rows(opened))
        if closed:
            parts.append(
                "closed AS (UPDATE credit_reservations_read_model AS m"
                " SET state = c.state, closed_at = c.closed_at, committed = c.committed, released = c.released"
                f" FROM ({select_json_rows(_kinds(_CLOSURE_TYPES))}) AS c ({', '.join(n for n, _ in _CLOSURE_TYPES)})"
                " WHERE m.account_id = c.account_id AND m.reservation_id = c.reservation_id)"
            )
            params.append(json_rows(closed))
        statement = (
            f"WITH {', '.join(parts)} INSERT INTO projection_checkpoint (projection, slot, position)"
            f" SELECT '{PROJECTION}', * FROM ({select_json_rows(_kinds(_CHECKPOINT_TYPES))}) AS c"
            f"{self._checkpoint_conflict}"
        )
        params.append(json_rows(checkpoints))
        await tx.execute(statement, params)

    def _many(self, table: str, count: int) -> str:
        """A multi-row statement of SQLite (its text depends on the row count, so it is cached)."""
        key = (table, count)
        sql = self._statements.get(key)
        if sql is not None:
            return sql
        if table == "balances":
            values = ", ".join([f"({', '.join('?' * len(_BALANCE_TYPES))})"] * count)
            sql = f"INSERT INTO credit_balances_read_model ({_BALANCE_COLUMNS}) VALUES {values}{self._balance_conflict}"
        elif table == "reservations":
            values = ", ".join([f"({', '.join('?' * len(_RESERVATION_TYPES))})"] * count)
            sql = f"INSERT INTO credit_reservations_read_model ({_RESERVATION_COLUMNS}) VALUES {values}"
        else:
            values = ", ".join(["(?, ?, ?)"] * count)
            sql = f"INSERT INTO projection_checkpoint (projection, slot, position) VALUES {values}"
            sql += self._checkpoint_conflict
        if count <= 256:
            self._statements[key] = sql
        return sql

    # -- queries ---------------------------------------------------------------------------------

    async def balance(self, tx: Transaction, account_id: str) -> BalanceRow | None:
        """An account's row, or None if it has no events."""
        row = await tx.fetchone(
            f"SELECT {_BALANCE_COLUMNS} FROM credit_balances_read_model WHERE account_id = ?", (account_id,)
        )
        return None if row is None else self._balance(row)

    async def balances(self, tx: Transaction) -> list[BalanceRow]:
        """Every account's row, by account id."""
        rows = await tx.fetchall(f"SELECT {_BALANCE_COLUMNS} FROM credit_balances_read_model ORDER BY account_id")
        return [self._balance(row) for row in rows]

    async def due_for_expiry(self, tx: Transaction, now: datetime, limit: int) -> list[str]:
        """Accounts holding a reservation whose expiry is at or before `now`."""
        rows = await tx.fetchall(
            "SELECT account_id FROM credit_balances_read_model WHERE next_expiry <= ? ORDER BY next_expiry LIMIT ?",
            (self.instants.column(now), limit),
        )
        return [row[0] for row in rows]

    async def expired_holds(self, tx: Transaction, account_id: str, now: datetime) -> tuple[int, int]:
        """(count, amount) of the account's reservations still open in the table but past their expiry at `now`."""
        row = await tx.fetchone(
            "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM credit_reservations_read_model"
            " WHERE account_id = ? AND state = 'open' AND expires_at <= ?",
            (account_id, self.instants.column(now)),
        )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    async def reservations(
        self,
        tx: Transaction,
        account_id: str,
        states: Iterable[ReservationState],
        now: datetime,
        after: int,
        limit: int,
    ) -> list[ReservationRow]:
        """Reservations in any of `states` as of `now` (all if none), oldest first, after position `after`."""
        where = ["position > ?"]
        params: list[Any] = [after]
        if account_id:
            where.append("account_id = ?")
            params.append(account_id)
        wanted = set(states)
        if wanted:
            alternatives = []
            current = self.instants.column(now)
            for state in sorted(wanted):
                if state is ReservationState.OPEN:
                    alternatives.append("(state = 'open' AND expires_at > ?)")
                    params.append(current)
                elif state is ReservationState.EXPIRED:
                    alternatives.append("(state = 'expired' OR (state = 'open' AND expires_at <= ?))")
                    params.append(current)
                else:
                    alternatives.append("state = ?")
                    params.append(str(state))
            where.append(f"({' OR '.join(alternatives)})")
        rows = await tx.fetchall(
            f"SELECT {_RESERVATION_COLUMNS} FROM credit_reservations_read_model WHERE {' AND '.join(where)}"
            " ORDER BY position LIMIT ?",
            (*params, limit),
        )
        return [self._reservation(row).as_of(now) for row in rows]

    async def all_reservations(self, tx: Transaction) -> list[ReservationRow]:
        """Every reservation row as stored, by account and id."""
        rows = await tx.fetchall(
            f"SELECT {_RESERVATION_COLUMNS} FROM credit_reservations_read_model ORDER BY account_id, reservation_id"
        )
        return [self._reservation(row) for row in rows]

    async def heads(self, tx: Transaction) -> list[AccountHead]:
        """The chain head (latest version and its hash) of every account."""
        rows = await tx.fetchall(
            "SELECT r.account_id, r.version, e.hash FROM credit_balances_read_model r"
            " JOIN event_store e ON e.account_id = r.account_id AND e.version = r.version"
        )
        return [AccountHead(row[0], int(row[1]), bytes(row[2])) for row in rows]

    async def checkpoint(self, tx: Transaction) -> int:
        """The highest event position applied to the read models (0 before any)."""
        found = await tx.fetchval(
            "SELECT COALESCE(MAX(position), 0) FROM projection_checkpoint WHERE projection = ?", (PROJECTION,)
        )
        return int(found or 0)

    async def checkpoints(self, tx: Transaction) -> dict[int, int]:
        """Every checkpoint slot's position."""
        rows = await tx.fetchall("SELECT slot, position FROM projection_checkpoint WHERE projection = ?", (PROJECTION,))
        return {int(row[0]): int(row[1]) for row in rows}

    async def lag(self, tx: Transaction) -> int:
        """Events stored beyond the checkpoint (0 while the read models are in step)."""
        found = await tx.fetchval(
            "SELECT COUNT(*) FROM event_store WHERE position > ("
            "SELECT COALESCE(MAX(position), 0) FROM projection_checkpoint WHERE projection = ?)",
            (PROJECTION,),
        )
        return int(found or 0)

    # -- rebuilding ------------------------------------------------------------------------------

    async def lock(self, tx: Transaction) -> None:
        """Hold off writers of the read models until `tx` ends (they wait; readers go on)."""
        if self.dialect == "postgres":
            await tx.execute(
                "LOCK TABLE credit_balances_read_model, credit_reservations_read_model, projection_checkpoint"
                " IN EXCLUSIVE MODE"
            )
        # SQLite: the transaction already holds the database's only write lock.

    async def replace(
        self,
        tx: Transaction,
        balances: Iterable[BalanceRow],
        reservations: Iterable[ReservationRow],
        checkpoints: dict[int, int],
    ) -> None:
        """Swap the read models and the checkpoint for the given rows (inside a locked transaction)."""
        await tx.execute("DELETE FROM credit_balances_read_model")
        await tx.execute("DELETE FROM credit_reservations_read_model")
        await tx.execute("DELETE FROM projection_checkpoint WHERE projection = ?", (PROJECTION,))
        # A bulk load (binary COPY on PostgreSQL): a rebuild writes tens of thousands of rows.
        await tx.copy_rows(
            "credit_balances_read_model",
            [name for name, _ in _BALANCE_TYPES],
            (self._balance_params(row) for row in balances),
        )
        await tx.copy_rows(
            "credit_reservations_read_model",
            [name for name, _ in _RESERVATION_TYPES],
            (self._reservation_params(row) for row in reservations),
        )
        await tx.copy_rows(
            "projection_checkpoint",
            ["projection", "slot", "position"],
            [(PROJECTION, slot, position) for slot, position in sorted(checkpoints.items())],
        )

    # -- row conversion --------------------------------------------------------------------------

    def _balance_params(self, row: BalanceRow) -> tuple[Any, ...]:
        return (
            row.account_id,
            row.available,
            row.held,
            row.version,
            row.threshold,
            row.alert_armed,
            row.purchased,
            row.consumed,
            row.transferred_in,
            row.transferred_out,
            row.open_reservations,
            self.instants.column(row.next_expiry),
            self.instants.column(row.updated_at),
            row.position,
        )

    def _reservation_params(self, row: ReservationRow) -> tuple[Any, ...]:
        return (
            row.account_id,
            row.reservation_id,
            row.amount,
            str(row.state),
            row.description,
            self.instants.column(row.created_at),
            self.instants.column(row.expires_at),
            self.instants.column(row.closed_at),
            row.committed,
            row.released,
            row.position,
        )

    def _closure_params(self, change: ReservationClosed) -> tuple[Any, ...]:
        return (
            str(change.state),
            self.instants.column(change.closed_at),
            change.committed,
            change.released,
            change.account_id,
            change.reservation_id,
        )

    @staticmethod
    def _balance(row: Any) -> BalanceRow:
        return BalanceRow(
            row[0],
            int(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
            bool(row[5]),
            int(row[6]),
            int(row[7]),
            int(row[8]),
            int(row[9]),
            int(row[10]),
            Instants.value(row[11]),
            Instants.required(row[12]),
            int(row[13]),
        )

    @staticmethod
    def _reservation(row: Any) -> ReservationRow:
        return ReservationRow(
            row[0],
            row[1],
            int(row[2]),
            ReservationState(row[3]),
            row[4],
            Instants.required(row[5]),
            Instants.required(row[6]),
            Instants.value(row[7]),
            int(row[8]),
            int(row[9]),
            int(row[10]),
        )
