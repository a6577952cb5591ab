"""The append-only event store of the credits ledger: appending sealed events, loading accounts, reading.

Rows are `(account_id, version)`-keyed, so two writers that decided on the same account version
collide on the key and one of them retries (optimistic concurrency). Every row carries its
audit-chain hashes (`audit.seal`), the trace id and request id of the call that caused it, and
a store-wide `position`. Accounts load from their latest snapshot plus the events after it.
All SQL of the `event_store` and `snapshots` tables is here; it runs inside the caller's
transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from servers.credits.account import AccountState
from servers.credits.audit import GENESIS_HASH, seal
from servers.credits.events import (
    Consumed,
    CorruptEvent,
    Event,
    LowBalanceAlerted,
    Purchased,
    StoredEvent,
    canonical_json,
    decode_event,
    parse_utc,
    utc_text,
)
from servers.mesh.postgres import json_rows, select_json_rows
from servers.mesh.storage import Dialect, Transaction

_EVENT_COLUMNS = "account_id, version, type, body, occurred_at, trace_id, prev_hash, hash"
_INSERT_COLUMNS = f"{_EVENT_COLUMNS}, request_id, reference, alert_seq"
_INSERT_ROW = "(" + ", ".join("?" * 11) + ")"
_PG_INSERT = (
    f"INSERT INTO event_store ({_INSERT_COLUMNS}) "
    + select_json_rows(
        ["text", "bigint", "text", "text", "timestamptz", "text", "bytea", "bytea", "text", "text", "bigint"]
    )
    + " RETURNING account_id, version, position"
)


class Instants:
    """How one dialect stores instants: TIMESTAMPTZ on PostgreSQL, canonical UTC text on SQLite."""

    def __init__(self, dialect: Dialect) -> None:
        self._as_text = dialect == "sqlite"

    def column(self, moment: datetime | None) -> Any:
        """The parameter value for `moment` (None stays NULL)."""
        if moment is None or not self._as_text:
            return moment
        return utc_text(moment)

    @staticmethod
    def value(stored: Any) -> datetime | None:
        """The instant read back from a column (time zone aware), or None for NULL."""
        if stored is None or isinstance(stored, datetime):
            return stored
        return parse_utc(str(stored))

    @staticmethod
    def required(stored: Any) -> datetime:
        """The instant of a NOT NULL column."""
        moment = Instants.value(stored)
        if moment is None:
            raise CorruptEvent("a required time column is NULL")
        return moment


@dataclass(slots=True)
class LoadedAccount:
    """An account's state as stored, with the hash its next event must chain from."""

    state: AccountState
    head_hash: bytes
    """Hash of the event at `state.version` (`GENESIS_HASH` for an account with no events)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """Rows appended by one call of `EventStore.append`, with their store-wide positions."""

    rows: tuple[StoredEvent, ...]
    positions: tuple[int, ...]
    """Position of each row, in the order of `rows`."""

    @property
    def head_hash(self) -> bytes:
        """Hash of the last row appended."""
        return self.rows[-1].hash


@dataclass(frozen=True, slots=True)
class TransactionQuery:
    """Which events ListTransactions wants (all fields optional but checked by the caller)."""

    account_id: str = ""
    types: tuple[str, ...] = ()
    start_time: datetime | None = None
    end_time: datetime | None = None
    consume_reference: str = ""
    """Consumes whose caller reference equals this."""
    purchase_lookups: tuple[str, ...] = ()
    """Purchases whose payment reference has one of these keyed lookup hashes."""


def reference_of(event: Event) -> str:
    """What the `reference` column holds for an event (searched by ListTransactions)."""
    if isinstance(event, Consumed):
        return event.reference
    if isinstance(event, Purchased):
        return event.payment_reference.lookup
    return ""


class EventStore:
    """SQL for the `event_store` and `snapshots` tables of one database dialect."""

    REPLAY_QUERY = (
        "SELECT account_id, version, type, body, occurred_at, trace_id, position FROM event_store"
        " ORDER BY account_id, version"
    )
    """Every event in (account, version) order, as raw rows for a rebuild."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.instants = Instants(dialect)
        self._insert_sql: dict[int, str] = {}

    # -- writing ---------------------------------------------------------------------------------

    async def append(self, tx: Transaction, events: Sequence[Event], prev_hash: bytes, request_id: str) -> Appended:
        """Seal `events` (one account, next versions) onto the chain ending in `prev_hash` and insert them.

        Raises `storage.UniqueViolation` if another writer took one of the versions first.
        """
        rows = seal(events, prev_hash)
        positions = await self.insert(tx, [(event, row, request_id) for event, row in zip(events, rows, strict=True)])
        return Appended(tuple(rows), tuple(positions))

    async def insert(self, tx: Transaction, entries: Sequence[tuple[Event, StoredEvent, str]]) -> list[int]:
        """Insert sealed rows (any accounts; each with the request id that caused it) in one statement.

        Returns the position of each row, in order. Raises `storage.UniqueViolation` if another
        writer took one of the versions first.
        """
        alerts = sum(isinstance(event, LowBalanceAlerted) for event, _, _ in entries)
        # Alerts are numbered under the alert_sequence row lock, held to commit (see alerts.py).
        next_alert = 0
        if alerts:
            last = await tx.fetchval("UPDATE alert_sequence SET last = last + ? WHERE id = 1 RETURNING last", (alerts,))
            next_alert = int(last) - alerts + 1
        rows: list[tuple[Any, ...]] = []
        column = self.instants.column
        for event, row, request_id in entries:
            alert_seq = None
            if isinstance(event, LowBalanceAlerted):
                alert_seq, next_alert = next_alert, next_alert + 1
            rows.append(
                (
                    row.account_id,
                    row.version,
                    row.type,
                    row.body,
                    column(row.occurred_at),
                    row.trace_id,
                    row.prev_hash,
                    row.hash,
                    request_id,
                    reference_of(event),
                    alert_seq,
                )
            )
        if self.dialect == "postgres":
            # One statement text whatever the count, the rows in one JSON parameter.
            returned = await tx.fetchall(_PG_INSERT, (json_rows(rows),))
        else:
            returned = await tx.fetchall(self._insert(len(entries)), [value for row in rows for value in row])
        positions = {(r[0], int(r[1])): int(r[2]) for r in returned}
        return [positions[(row.account_id, row.version)] for _, row, _ in entries]

    def _insert(self, count: int) -> str:
        sql = self._insert_sql.get(count)
        if sql is None:
            sql = self._insert_sql[count] = (
                f"INSERT INTO event_store ({_INSERT_COLUMNS}) VALUES "
                + ", ".join([_INSERT_ROW] * count)
                + " RETURNING account_id, version, position"
            )
        return sql

    async def save_snapshot(self, tx: Transaction, state: AccountState, taken_at: datetime) -> None:
        """Store `state` as the account's snapshot at its version (once per version)."""
        await tx.execute(
            "INSERT INTO snapshots (account_id, version, state, taken_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (account_id, version) DO NOTHING",
            (state.account_id, state.version, canonical_json(state.to_snapshot()), self.instants.column(taken_at)),
        )

    # -- loading accounts ------------------------------------------------------------------------

    async def load(self, tx: Transaction, account_id: str, *, up_to: int | None = None) -> LoadedAccount:
        """The account after its events up to version `up_to` (all of them if None).

        Starts from the latest snapshot at or before that version, so at most `snapshot_every`
        events are decoded.
        """
        bound = "" if up_to is None else " AND version <= ?"
        limit: tuple[int, ...] = () if up_to is None else (up_to,)
        snapshot = await tx.fetchone(
            f"SELECT state FROM snapshots WHERE account_id = ?{bound} ORDER BY version DESC LIMIT 1",
            (account_id, *limit),
        )
        if snapshot is None:
            return await self.catch_up(tx, LoadedAccount(AccountState(account_id), GENESIS_HASH), up_to=up_to)
        state = AccountState.from_snapshot(json.loads(snapshot[0]))
        if state.account_id != account_id:
            raise CorruptEvent(f"snapshot of {state.account_id!r} stored under {account_id!r}")
        head = await tx.fetchval(
            "SELECT hash FROM event_store WHERE account_id = ? AND version = ?", (account_id, state.version)
        )
        if head is None:
            raise CorruptEvent(f"snapshot of {account_id}@{state.version} has no event")
        return await self.catch_up(tx, LoadedAccount(state, bytes(head)), up_to=up_to)

    async def catch_up(self, tx: Transaction, loaded: LoadedAccount, *, up_to: int | None = None) -> LoadedAccount:
        """Apply, in place, the account's stored events after `loaded.state.version` (up to `up_to`)."""
        state = loaded.state
        bound = "" if up_to is None else " AND version <= ?"
        limit: tuple[int, ...] = () if up_to is None else (up_to,)
        rows = await tx.fetchall(
            "SELECT version, type, body, occurred_at, trace_id, hash FROM event_store"
            f" WHERE account_id = ? AND version > ?{bound} ORDER BY version",
            (state.account_id, state.version, *limit),
        )
        if not rows:
            return loaded
        account_id, value = state.account_id, Instants.required
        for version, type_name, body, occurred_at, trace_id, _ in rows:
            state.apply(decode_event(account_id, version, type_name, body, value(occurred_at), trace_id))
        loaded.head_hash = bytes(rows[-1][5])
        return loaded

    async def has_events_after(self, tx: Transaction, state: AccountState) -> bool:
        """True if the account has stored events beyond `state` (another writer got there)."""
        row = await tx.fetchone(
            "SELECT 1 FROM event_store WHERE account_id = ? AND version > ? LIMIT 1", (state.account_id, state.version)
        )
        return row is not None

    async def version_at(self, tx: Transaction, account_id: str, moment: datetime) -> int | None:
        """The account's latest version recorded at or before `moment`, or None."""
        found = await tx.fetchval(
            "SELECT MAX(version) FROM event_store WHERE account_id = ? AND occurred_at <= ?",
            (account_id, self.instants.column(moment)),
        )
        return None if found is None else int(found)

    # -- reading ---------------------------------------------------------------------------------

    async def transactions(
        self, tx: Transaction, query: TransactionQuery, after: tuple[str, int] | None, limit: int
    ) -> list[StoredEvent]:
        """Events matching `query` in (account, version) order, after the cursor `after`."""
        where: list[str] = []
        params: list[Any] = []
        if query.account_id:
            where.append("account_id = ?")
            params.append(query.account_id)
        if query.types:
            where.append(f"type IN ({', '.join('?' * len(query.types))})")
            params += query.types
        if query.start_time is not None:
            where.append("occurred_at >= ?")
            params.append(self.instants.column(query.start_time))
        if query.end_time is not None:
            where.append("occurred_at < ?")
            params.append(self.instants.column(query.end_time))
        if query.consume_reference or query.purchase_lookups:
            lookups = query.purchase_lookups or ("",)
            where.append(
                f"((type = 'Consumed' AND reference = ?) OR (type = 'Purchased' AND reference IN"
                f" ({', '.join('?' * len(lookups))})))"
            )
            params += (query.consume_reference, *lookups)
        if after is not None:
            where.append("(account_id, version) > (?, ?)")
            params += after
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await tx.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM event_store{clause} ORDER BY account_id, version LIMIT ?",
            (*params, limit),
        )
        return [self._stored(row) for row in rows]

    async def replay_batch(self, tx: Transaction, after: tuple[str, int] | None, limit: int) -> list[tuple[Any, ...]]:
        """Raw `(account_id, version, type, body, occurred_at, trace_id, position)` rows for a rebuild."""
        clause, params = ("", ()) if after is None else (" WHERE (account_id, version) > (?, ?)", after)
        rows = await tx.fetchall(
            "SELECT account_id, version, type, body, occurred_at, trace_id, position FROM event_store"
            f"{clause} ORDER BY account_id, version LIMIT ?",
            (*params, limit),
        )
        return [tuple(row) for row in rows]

    async def replay_tail(self, tx: Transaction, account_id: str, after_version: int) -> list[tuple[Any, ...]]:
        """Raw rows (as `replay_batch`) of one account after `after_version`."""
        rows = await tx.fetchall(
            "SELECT account_id, version, type, body, occurred_at, trace_id, position FROM event_store"
            " WHERE account_id = ? AND version > ? ORDER BY version",
            (account_id, after_version),
        )
        return [tuple(row) for row in rows]

    async def usage_events(
        self, tx: Transaction, account_id: str, start: datetime, end: datetime, after: int, limit: int
    ) -> list[tuple[int, Event]]:
        """Consume and commit events recorded in `[start, end)`, by position after `after`."""
        account = " AND account_id = ?" if account_id else ""
        rows = await tx.fetchall(
            f"SELECT {_EVENT_COLUMNS}, position FROM event_store"
            " WHERE type IN ('Consumed', 'ReservationCommitted') AND occurred_at >= ? AND occurred_at < ?"
            f"{account} AND position > ? ORDER BY position LIMIT ?",
            (
                self.instants.column(start),
                self.instants.column(end),
                *((account_id,) if account_id else ()),
                after,
                limit,
            ),
        )
        return [(int(row[8]), self._stored(row).decode()) for row in rows]

    async def events_by_request(self, tx: Transaction, request_id: str) -> list[StoredEvent]:
        """The events a call with this request id recorded (for operators and tests)."""
        rows = await tx.fetchall(
            f"SELECT {_EVENT_COLUMNS} FROM event_store WHERE request_id = ? ORDER BY account_id, version",
            (request_id,),
        )
        return [self._stored(row) for row in rows]

    @staticmethod
    def _stored(row: Any) -> StoredEvent:
        return StoredEvent(
            row[0],
            int(row[1]),
            row[2],
            row[3],
            Instants.required(row[4]),
            row[5],
            bytes(row[6]),
            bytes(row[7]),
        )
