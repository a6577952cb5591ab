"""The credits read models: balances and reservations as queried, kept in step with the event store.

The live path writes them in the same transaction as the events they follow (`Projection.record`),
so a committed event is always reflected; a rebuild (`rebuild.py`) replays every event into
fresh rows with the same functions (`balance_row`, `reservation_change`), so both paths give
identical tables. The projection checkpoint (the highest event position applied) is kept in
slots by account, so writers of different accounts do not all queue on one row.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from servers.credits.account import AccountState
from servers.credits.audit import AccountHead
from servers.credits.events import (
    Event,
    ReservationCancelled,
    ReservationCommitted,
    ReservationExpired,
    Reserved,
)
from servers.credits.eventstore import Instants
from servers.mesh.storage import Dialect, Transaction

PROJECTION = "credit_balances"
"""Name of the read-model projection in `projection_checkpoint`."""
CHECKPOINT_SLOTS = 64
"""Rows the checkpoint is spread over."""

_BALANCE_COLUMNS = (
    "account_id, available, held, version, threshold, alert_armed, purchased, consumed, transferred_in,"
    " transferred_out, open_reservations, next_expiry, updated_at, position"
)
_RESERVATION_COLUMNS = (
    "account_id, reservation_id, amount, state, description, created_at, expires_at, closed_at, committed,"
    " released, position"
)


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
_CHECKPOINT_TYPES = (("projection", "text"), ("slot", "integer"), ("position", "bigint"))


async def _insert_json(
    tx: Transaction, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> None:
    if not rows:
        return
    listed = ", ".join(name for name, _ in columns)
    values = ", ".join(f"(r->>{i})::{kind}" for i, (_, kind) in enumerate(columns))
    document = json.dumps(
        [[value.isoformat() if type(value) is datetime else value for value in row] for row in rows],
        separators=(",", ":"),
    )
    await tx.execute(
        f"INSERT INTO {table} ({listed}) SELECT {values} FROM jsonb_array_elements(?::jsonb) AS r", (document,)
    )


def checkpoint_slot(account_id: str) -> int:
    """The checkpoint row an account's writes advance."""
    return zlib.crc32(account_id.encode()) % CHECKPOINT_SLOTS


class ReservationState(StrEnum):
    """A reservation's stored state (an open one past its expiry is reported as expired)."""

    OPEN = "open"
    COMMITTED = "committed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class BalanceRow:
    """One account's row of the balances read model."""

    account_id: str
    available: int
    held: int
    version: int
    threshold: int
    alert_armed: bool
    purchased: int
    consumed: int
    transferred_in: int
    transferred_out: int
    open_reservations: int
    next_expiry: datetime | None
    """Earliest expiry among the open reservations (the sweeper's index)."""
    updated_at: datetime
    position: int
    """Position of the account's latest event."""


@dataclass(frozen=True, slots=True)
class ReservationRow:
    """One reservation as ListReservations reports it."""

    account_id: str
    reservation_id: str
    amount: int
    state: ReservationState
    description: str
    created_at: datetime
    expires_at: datetime
    closed_at: datetime | None
    committed: int
    released: int
    position: int
    """Position of the event that made it (the list order)."""

    def as_of(self, now: datetime) -> ReservationRow:
        """The row as seen at `now`: open past its expiry means expired, releasing everything."""
        if self.state is ReservationState.OPEN and self.expires_at <= now:
            return replace(self, state=ReservationState.EXPIRED, closed_at=self.expires_at, released=self.amount)
        return self


@dataclass(frozen=True, slots=True)
class ReservationClosed:
    """An event closing a reservation: its new state and how its amount was split."""

    account_id: str
    reservation_id: str
    state: ReservationState
    closed_at: datetime
    committed: int
    released: int


def balance_row(state: AccountState, position: int) -> BalanceRow:
    """The read-model row of an account in `state`, whose latest event is at `position`."""
    if state.updated_at is None:
        raise ValueError(f"account {state.account_id!r} has no events to project")
    open_reservations = state.open_reservations.values()
    return BalanceRow(
        state.account_id,
        state.available,
        state.held,
        state.version,
        state.threshold,
        state.alert_armed,
        state.purchased,
        state.consumed,
        state.transferred_in,
        state.transferred_out,
        len(open_reservations),
        min((r.expires_at for r in open_reservations), default=None),
        state.updated_at,
        position,
    )


def reservation_change(event: Event, position: int) -> ReservationRow | ReservationClosed | None:
    """How an event changes the reservations read model (None: it does not)."""
    match event:
        case Reserved():
            return ReservationRow(
                event.account_id,
                event.reservation_id,
                event.amount,
                ReservationState.OPEN,
                event.description,
                event.occurred_at,
                event.expires_at,
                None,
                0,
                0,
                position,
            )
        case ReservationCommitted():
            return ReservationClosed(
                event.account_id,
                event.reservation_id,
                ReservationState.COMMITTED,
                event.occurred_at,
                event.committed,
                event.released,
            )
        case ReservationCancelled():
            return ReservationClosed(
                event.account_id, event.reservation_id, ReservationState.CANCELLED, event.occurred_at, 0, event.released
            )
        case ReservationExpired():
            return ReservationClosed(
                event.account_id, event.reservation_id, ReservationState.EXPIRED, event.occurred_at, 0, event.released
            )
    return None


class Projection:
    """SQL for the read models and the checkpoint in one database dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.instants = Instants(dialect)
        greatest = "GREATEST" if dialect == "postgres" else "MAX"
        self._advance_checkpoint = (
            "INSERT INTO projection_checkpoint (projection, slot, position) VALUES (?, ?, ?)"
            " ON CONFLICT (projection, slot) DO UPDATE"
            f" SET position = {greatest}(projection_checkpoint.position, excluded.position)"
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in _BALANCE_COLUMNS.split(", ")[1:])
        self._one_balance = f"({', '.join('?' * 14)})"
        self._upsert_balance = (
            f"INSERT INTO credit_balances_read_model ({_BALANCE_COLUMNS}) VALUES {self._one_balance}"
            f" ON CONFLICT (account_id) DO UPDATE SET {updates}"
        )
        self._balance_sql: dict[int, str] = {}
        # PostgreSQL gets one statement text per table whatever the count (arrays per column).
        self._pg_upsert_balances = self._upsert_balance.replace(
            f"VALUES {self._one_balance}",
            "SELECT * FROM unnest(?::text[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[], ?::boolean[],"
            " ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[], ?::integer[], ?::timestamptz[], ?::timestamptz[],"
            " ?::bigint[])",
        )
        self._pg_advance_checkpoints = self._advance_checkpoint.replace(
            "VALUES (?, ?, ?)", f"SELECT '{PROJECTION}', * FROM unnest(?::integer[], ?::bigint[])"
        )
        self._checkpoint_sql: dict[int, str] = {}

    # -- the live path ---------------------------------------------------------------------------

    async def record(
        self, tx: Transaction, state: AccountState, events: Sequence[Event], positions: Sequence[int]
    ) -> None:
        """Reflect `events` (just appended at `positions`) that took the account to `state`."""
        await self.record_many(tx, [(state, events, positions)])

    async def record_many(
        self, tx: Transaction, changes: Sequence[tuple[AccountState, Sequence[Event], Sequence[int]]]
    ) -> None:
        """`record` for several accounts (each once), in as few statements as the changes allow."""
        balances = [balance_row(state, max(positions)) for state, _, positions in changes]
        params = [value for row in balances for value in self._balance_params(row)]
        if self.dialect == "postgres":
            await tx.execute(self._pg_upsert_balances, [params[i::14] for i in range(14)])
        else:
            await tx.execute(self._upsert_balances(len(balances)), params)
        opened: list[ReservationRow] = []
        for _, events, positions in changes:
            for event, position in zip(events, positions, strict=True):
                change = reservation_change(event, position)
                if isinstance(change, ReservationRow):
                    opened.append(change)
                elif isinstance(change, ReservationClosed):
                    if opened:  # a reservation opened and closed within the same changes
                        await self._insert_reservations(tx, opened)
                        opened = []
                    await tx.execute(
                        "UPDATE credit_reservations_read_model"
                        " SET state = ?, closed_at = ?, committed = ?, released = ?"
                        " WHERE account_id = ? AND reservation_id = ?",
                        (
                            str(change.state),
                            self.instants.column(change.closed_at),
                            change.committed,
                            change.released,
                            change.account_id,
                            change.reservation_id,
                        ),
                    )
        if opened:
            await self._insert_reservations(tx, opened)
        slots: dict[int, int] = {}
        for row in balances:
            slot = checkpoint_slot(row.account_id)
            slots[slot] = max(slots.get(slot, 0), row.position)
        ordered = sorted(slots.items())
        if self.dialect == "postgres":
            await tx.execute(
                self._pg_advance_checkpoints, [[slot for slot, _ in ordered], [position for _, position in ordered]]
            )
        else:
            await tx.execute(
                self._advance_checkpoints(len(ordered)),
                [value for slot, position in ordered for value in (PROJECTION, slot, position)],
            )

    async def _insert_reservations(self, tx: Transaction, rows: Sequence[ReservationRow]) -> None:
        await tx.execute(
            f"INSERT INTO credit_reservations_read_model ({_RESERVATION_COLUMNS}) VALUES "
            + ", ".join([f"({', '.join('?' * 11)})"] * len(rows)),
            [value for row in rows for value in self._reservation_params(row)],
        )

    def _upsert_balances(self, count: int) -> str:
        sql = self._balance_sql.get(count)
        if sql is None:
            sql = self._balance_sql[count] = self._upsert_balance.replace(
                self._one_balance, ", ".join([self._one_balance] * count)
            )
        return sql

    def _advance_checkpoints(self, count: int) -> str:
        sql = self._checkpoint_sql.get(count)
        if sql is None:
            sql = self._checkpoint_sql[count] = self._advance_checkpoint.replace(
                "(?, ?, ?)", ", ".join(["(?, ?, ?)"] * count)
            )
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
        balance_rows = [self._balance_params(row) for row in balances]
        reservation_rows = [self._reservation_params(row) for row in reservations]
        checkpoint_rows = [(PROJECTION, slot, position) for slot, position in sorted(checkpoints.items())]
        if self.dialect == "postgres":
            # One JSON document per table, expanded by the server: far cheaper than a statement
            # per row, or than the driver encoding an array per column element by element.
            await _insert_json(tx, "credit_balances_read_model", _BALANCE_TYPES, balance_rows)
            await _insert_json(tx, "credit_reservations_read_model", _RESERVATION_TYPES, reservation_rows)
            await _insert_json(tx, "projection_checkpoint", _CHECKPOINT_TYPES, checkpoint_rows)
            return
        await tx.executemany(
            f"INSERT INTO credit_balances_read_model ({_BALANCE_COLUMNS}) VALUES ({', '.join('?' * 14)})",
            balance_rows,
        )
        await tx.executemany(
            f"INSERT INTO credit_reservations_read_model ({_RESERVATION_COLUMNS}) VALUES ({', '.join('?' * 11)})",
            reservation_rows,
        )
        await tx.executemany(
            "INSERT INTO projection_checkpoint (projection, slot, position) VALUES (?, ?, ?)", checkpoint_rows
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
