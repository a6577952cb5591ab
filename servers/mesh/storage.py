"""Persistence behind one small async interface: embedded SQLite (`servers.mesh.sqlite`), or
PostgreSQL via psycopg-pool (`servers.mesh.postgres`).

SQL is written once with `?` placeholders; the PostgreSQL backend rewrites them to `%s`.
Constraint failures surface as backend-neutral `UniqueViolation` / `CheckViolation`, and
serialization failures or deadlocks as `TransientError`, so stores can retry or map them.
Each service keeps its tables apart: its own SQLite file, or its own PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

Row = Any  # `row["column"]` and `row[0]` work on both backends (sqlite3.Row / PgRow)
Params = Sequence[Any]
Dialect = Literal["sqlite", "postgres"]
T = TypeVar("T")

SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (how stores keep instants portably)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=int(micros))


def maybe_micros(moment: datetime | None) -> int | None:
    """`to_micros`, keeping None."""
    return None if moment is None else to_micros(moment)


def maybe_datetime(micros: int | None) -> datetime | None:
    """`from_micros`, keeping None."""
    return None if micros is None else from_micros(micros)


class StorageError(Exception):
    """Base of the backend-neutral storage errors."""


class UniqueViolation(StorageError):
    """A unique or primary key constraint refused the write."""


class CheckViolation(StorageError):
    """A CHECK constraint (or a trigger guarding an invariant) refused the write."""


class TransientError(StorageError):
    """Serialization failure, deadlock or lock timeout: retrying the transaction may succeed."""


class Transaction(ABC):
    """One open transaction. Commits when its `async with` block ends without an exception."""

    dialect: Dialect

    @abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the affected row count."""

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement for each parameter row."""

    @abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """All rows of a query."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """The first row of a query, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None."""
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    @abstractmethod
    async def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> int:
        """Bulk-load rows into `table` (PostgreSQL COPY; batched INSERT on SQLite); returns the count.

        Each value must have its column's Python type (str for text, int for integers, bool,
        bytes for bytea, an aware datetime for timestamptz, None for NULL): on PostgreSQL, a
        table whose columns are all of such types is loaded in COPY's binary format.
        """

    @abstractmethod
    def stream(self, sql: str, params: Params = (), batch: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Iterate over a large result in batches of plain tuples (for replays)."""


class SlowedTransaction(Transaction):
    """A transaction whose statements wait `delay()` seconds first, inside it: a slow database
    as the chaos `db_slow_query` fault models it, holding its locks for longer."""

    def __init__(self, inner: Transaction, delay: Callable[[], float]) -> None:
        self.inner = inner
        self.dialect = inner.dialect
        self._delay = delay

    async def _wait(self) -> None:
        seconds = self._delay()
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def execute(self, sql: str, params: Params = ()) -> int:
        await self._wait()
        return await self.inner.execute(sql, params)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        await self._wait()
        await self.inner.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        await self._wait()
        return await self.inner.fetchall(sql, params)

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> int:
        await self._wait()
        return await self.inner.copy_rows(table, columns, rows)

    def stream(self, sql: str, params: Params = (), batch: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        return self.inner.stream(sql, params, batch)


class Database(ABC):
    """A connection (pool) to one service's store."""

    dialect: Dialect
    statement_delay: Callable[[], float] | None = None
    """Seconds to hold each statement before it runs (the fault table's slow-query faults); None for never."""

    def slowed(self, tx: Transaction) -> Transaction:
        """`tx` itself, or wrapped so its statements honour `statement_delay` while a fault asks."""
        delay = self.statement_delay
        return tx if delay is None else SlowedTransaction(tx, delay)

    @abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """Open a transaction; the block commits on success and rolls back on an exception."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a query in its own short transaction."""
        async with self.transaction() as tx:
            return await tx.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """Run a query in its own short transaction; the first row or None."""
        async with self.transaction() as tx:
            return await tx.fetchone(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement in its own transaction."""
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def migrate(self, package: str) -> list[int]:
        """Apply the numbered `.sql` files of `package` that are not applied yet; returns those applied.

        Versions are counted per package, so a service can apply shared mesh tables
        (`servers.mesh.migrations`) beside its own.
        """
        migrations = discover_migrations(package, self.dialect)
        applied: list[int] = []
        for migration in migrations:
            if await self._apply(migration):
                applied.append(migration.version)
        if applied:
            log.info("applied migrations", extra={"package": package, "versions": applied})
        return applied

    async def revert(self, migration: Migration) -> None:
        """Run `migration`'s down SQL and forget it was applied, in one transaction."""
        if migration.down is None:
            raise ValueError(f"{migration.package} {migration.version:04d} {migration.name} has no down migration")
        await self._revert(migration)

    @abstractmethod
    async def _revert(self, migration: Migration) -> None:
        """Run the down SQL and delete the migration's row, atomically."""

    @abstractmethod
    async def backup(self, path: Path) -> None:
        """Copy the whole store to `path` (SQLite: the online backup API; PostgreSQL: pg_dump of the schema)."""

    @abstractmethod
    async def restore(self, path: Path) -> None:
        """Replace the store's contents with a copy `backup` made (no server may be using the store)."""

    async def applied_migrations(self) -> set[tuple[str, int]]:
        """(package, version) of every migration applied to this store."""
        await self.execute(MIGRATIONS_TABLE)
        return {(row[0], int(row[1])) for row in await self.fetchall("SELECT package, version FROM schema_migrations")}

    @abstractmethod
    async def _apply(self, migration: Migration) -> bool:
        """Apply one migration atomically unless already applied; True if it ran."""


def check_identifiers(*names: str) -> None:
    for name in names:
        if not SQL_IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")


@dataclass(frozen=True)
class Migration:
    """One numbered schema change of a package."""

    package: str
    version: int
    name: str
    sql: str
    down: str | None = None
    """The SQL that reverts it (`NNNN_name[.dialect].down.sql` beside it), if the package has one."""


MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "package TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY (package, version))"
)


def discover_migrations(package: str, dialect: Dialect) -> list[Migration]:
    """`NNNN_name.sql` files of a package, with `NNNN_name.<dialect>.sql` replacing the generic one."""
    files = {entry.name: entry for entry in resources.files(package).iterdir()}
    chosen: dict[int, tuple[bool, str, str]] = {}
    for filename in files:
        match = re.fullmatch(r"(\d{4})_(\w+?)(?:\.(sqlite|postgres))?\.sql", filename)
        if match is None:
            continue
        version, name, only_for = int(match[1]), match[2], match[3]
        if only_for is not None and only_for != dialect:
            continue
        specific = only_for is not None
        if version in chosen and chosen[version][0] and not specific:
            continue
        chosen[version] = (specific, name, filename)
    migrations = []
    for version, (_, name, filename) in sorted(chosen.items()):
        down = files.get(filename.removesuffix(".sql") + ".down.sql")
        migrations.append(
            Migration(package, version, name, files[filename].read_text(), down.read_text() if down else None)
        )
    return migrations


async def open_database(
    service: str,
    *,
    data_dir: str | Path,
    database_url: str = "",
    schema: str | None = None,
    migrations: Sequence[str] = (),
) -> Database:
    """Open a service's store (PostgreSQL if `database_url`, else `<data_dir>/<service>.db`) and migrate it."""
    from servers.mesh.postgres import PostgresDatabase
    from servers.mesh.sqlite import SQLiteDatabase

    database: Database
    if database_url:
        postgres = PostgresDatabase(database_url, schema or service)
        await postgres.open()
        database = postgres
    else:
        database = SQLiteDatabase(Path(data_dir) / f"{service}.db")
    for package in migrations:
        await database.migrate(package)
    return database
