"""Persistence behind one small async interface: embedded SQLite, or PostgreSQL via psycopg-pool.

SQL is written once with `?` placeholders; the PostgreSQL backend rewrites them to `%s`.
Constraint failures surface as backend-neutral `UniqueViolation` / `CheckViolation`, and
serialization failures or deadlocks as `TransientError`, so stores can retry or map them.
Each service keeps its tables apart: its own SQLite file, or its own PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

Row = Any  # `row["column"]` and `row[0]` work on both backends (sqlite3.Row / PgRow)
Params = Sequence[Any]
Dialect = Literal["sqlite", "postgres"]
T = TypeVar("T")

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


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


class Database(ABC):
    """A connection (pool) to one service's store."""

    dialect: Dialect

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

    @abstractmethod
    async def _apply(self, migration: Migration) -> bool:
        """Apply one migration atomically unless already applied; True if it ran."""


def _check_identifiers(*names: str) -> None:
    for name in names:
        if not _IDENTIFIER.match(name):
            raise ValueError(f"{name!r} is not a plain lower-case SQL identifier")


@dataclass(frozen=True)
class Migration:
    """One numbered schema change of a package."""

    package: str
    version: int
    name: str
    sql: str


MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "package TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY (package, version))"
)


def discover_migrations(package: str, dialect: Dialect) -> list[Migration]:
    """`NNNN_name.sql` files of a package, with `NNNN_name.<dialect>.sql` replacing the generic one."""
    chosen: dict[int, tuple[bool, str, str]] = {}
    for entry in resources.files(package).iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+?)(?:\.(sqlite|postgres))?\.sql", entry.name)
        if match is None:
            continue
        version, name, only_for = int(match[1]), match[2], match[3]
        if only_for is not None and only_for != dialect:
            continue
        specific = only_for is not None
        if version in chosen and chosen[version][0] and not specific:
            continue
        chosen[version] = (specific, name, entry.read_text())
    return [Migration(package, v, name, sql) for v, (_, name, sql) in sorted(chosen.items())]


# --------------------------------------------------------------------------- SQLite


class _SQLiteTransaction(Transaction):
    dialect: Dialect = "sqlite"

    def __init__(self, db: SQLiteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._db.run(lambda c: c.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        materialized = list(rows)
        await self._db.run(lambda c: c.executemany(sql, materialized))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._db.run(lambda c: c.execute(sql, params).fetchall())

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> int:
        _check_identifiers(table, *columns)
        materialized = list(rows)
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        await self._db.run(lambda c: c.executemany(sql, materialized))
        return len(materialized)

    async def stream(self, sql: str, params: Params = (), batch: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        cursor = await self._db.run(lambda c: c.execute(sql, params))
        while True:
            rows = await self._db.run(lambda _: cursor.fetchmany(batch))
            if not rows:
                return
            yield [tuple(r) for r in rows]


class SQLiteDatabase(Database):
    """One SQLite file in WAL mode, used from one worker thread; transactions run one at a time."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._lock = asyncio.Lock()
        self._connection: sqlite3.Connection | None = None
        self._connect_once = threading.Lock()

    def _connection_in_thread(self) -> sqlite3.Connection:
        with self._connect_once:
            if self._connection is None:
                connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                connection.row_factory = sqlite3.Row
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
                connection.execute("PRAGMA foreign_keys=ON")
                connection.execute("PRAGMA busy_timeout=5000")
                self._connection = connection
            return self._connection

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` on the database thread, translating constraint errors."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, work)

    def _guarded(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._connection_in_thread())
        except sqlite3.IntegrityError as exc:
            text = str(exc)
            if "UNIQUE" in text or "PRIMARY KEY" in text:
                raise UniqueViolation(text) from exc
            raise CheckViolation(text) from exc
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TransientError(str(exc)) from exc
            raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            await self.run(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield _SQLiteTransaction(self)
            except BaseException:
                await asyncio.shield(self.run(lambda c: c.execute("ROLLBACK")))
                raise
            await self.run(lambda c: c.execute("COMMIT"))

    async def _apply(self, migration: Migration) -> bool:
        def apply(c: sqlite3.Connection) -> bool:
            c.execute(MIGRATIONS_TABLE)
            key = (migration.package, migration.version)
            if c.execute("SELECT 1 FROM schema_migrations WHERE package = ? AND version = ?", key).fetchone():
                return False
            # executescript commits first and runs many statements; BEGIN/COMMIT keep it atomic.
            c.executescript(f"BEGIN IMMEDIATE;\n{migration.sql}\n;")
            try:
                c.execute(
                    "INSERT INTO schema_migrations (package, version, name) VALUES (?, ?, ?)", (*key, migration.name)
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            return True

        async with self._lock:
            return await self.run(apply)

    async def close(self) -> None:
        def shut(_: sqlite3.Connection) -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        async with self._lock:
            await self.run(shut)
        self._executor.shutdown(wait=True)


# --------------------------------------------------------------------------- PostgreSQL


class PgRow:
    """A PostgreSQL result row readable by column name or position, like `sqlite3.Row`."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        """Column names, in order."""
        return list(self._index)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def _pg_row(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


def json_rows(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as one JSON document (an array of arrays), a parameter that `select_json_rows` expands.

    For PostgreSQL statements that take many rows at once: one text parameter, written by the C
    JSON encoder, costs the client far less than an array parameter per column, which psycopg
    dumps element by element in Python. Datetimes go as ISO 8601 text and bytes as bytea hex, so
    the casts of `select_json_rows` read every value back exactly. NaN and infinities are refused.
    """
    return _ROWS_ENCODER.encode(rows if isinstance(rows, list) else list(rows))


def select_json_rows(types: Sequence[str]) -> str:
    """`SELECT <column i cast to types[i]>, ... FROM jsonb_array_elements(?::jsonb) AS r` (PostgreSQL).

    The query yields the rows of one `json_rows` parameter, each value cast to its column's
    type (`text`, `bigint`, `boolean`, `timestamptz`, `bytea`, ...).
    """
    columns = ", ".join(f"(r->>{i})::{kind}" for i, kind in enumerate(types))
    return f"SELECT {columns} FROM jsonb_array_elements(?::jsonb) AS r"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        last = _last_instant
        if value is last[0]:
            return last[1]  # rows written together often share one instant
        text = value.isoformat()
        _remember_instant(value, text)
        return text
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    raise TypeError(f"{type(value).__name__} has no JSON row form")


_last_instant: tuple[datetime | None, str] = (None, "")


def _remember_instant(moment: datetime, text: str) -> None:
    global _last_instant
    _last_instant = (moment, text)  # one tuple, so a reader never sees half of a pair


_ROWS_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_json_value)

_BINARY_COPY_TYPES = frozenset({"text", "varchar", "bool", "int2", "int4", "int8", "float8", "bytea", "timestamptz"})
"""Column types whose binary COPY form psycopg writes from the value the text form takes too."""


@functools.lru_cache(maxsize=4096)
def _to_pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


@contextlib.contextmanager
def _translated() -> Any:
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise UniqueViolation(str(exc)) from exc
    except (psycopg.errors.CheckViolation, psycopg.errors.RaiseException) as exc:
        raise CheckViolation(str(exc)) from exc
    except (
        psycopg.errors.SerializationFailure,
        psycopg.errors.DeadlockDetected,
        psycopg.errors.LockNotAvailable,
    ) as exc:
        raise TransientError(str(exc)) from exc


class _PostgresTransaction(Transaction):
    dialect: Dialect = "postgres"

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        with _translated():
            cursor = await self._connection.execute(_to_pyformat(sql), params)
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        with _translated():
            async with self._connection.cursor() as cursor:
                await cursor.executemany(_to_pyformat(sql), list(rows))

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        with _translated():
            cursor = await self._connection.execute(_to_pyformat(sql), params)
            return await cursor.fetchall()

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Params]) -> int:
        _check_identifiers(table, *columns)
        types = await self._column_types(table, columns)
        # Binary COPY skips formatting every value as text (about five times faster for rows
        # with timestamps), but only where each type's binary form is written from the same
        # Python value its text form would be.
        binary = all(kind in _BINARY_COPY_TYPES for kind in types)
        count = 0
        with _translated():
            async with (
                self._connection.cursor() as cursor,
                cursor.copy(
                    f"COPY {table} ({', '.join(columns)}) FROM STDIN{' (FORMAT BINARY)' if binary else ''}"
                ) as copy,
            ):
                if binary:
                    copy.set_types(types)
                for row in rows:
                    await copy.write_row(row)
                    count += 1
        return count

    async def _column_types(self, table: str, columns: Sequence[str]) -> list[str]:
        """The type name of each of `columns` of `table` ("" for a column not found)."""
        cursor = await self._connection.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            (table,),
        )
        found = {row[0]: row[1] for row in await cursor.fetchall()}
        return [found.get(column, "") for column in columns]

    async def stream(self, sql: str, params: Params = (), batch: int = 5000) -> AsyncIterator[list[tuple[Any, ...]]]:
        async with self._connection.cursor(name="shieldx_stream", row_factory=psycopg.rows.tuple_row) as cursor:
            await cursor.execute(_to_pyformat(sql), params)
            while rows := await cursor.fetchmany(batch):
                yield rows


class PostgresDatabase(Database):
    """A psycopg connection pool whose connections use the service's own schema."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str, schema: str, *, min_size: int = 2, max_size: int = 16) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"schema {schema!r} is not a plain lower-case identifier")
        self.url = url
        self.schema = schema
        self._pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={
                "row_factory": _pg_row,
                "autocommit": True,
                "options": f"-c search_path={schema}",
                "application_name": f"shieldx:{schema}",
            },
        )

    async def open(self) -> None:
        """Create the schema if needed and open the pool."""
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as connection:
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        await self._pool.open(wait=True)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        connection = await self._pool.getconn()
        try:
            with _translated():
                async with connection.transaction():
                    yield _PostgresTransaction(connection)
        finally:
            # A task cancelled mid-statement or mid-COMMIT must still hand its connection back
            # rolled back (or discarded), never idle in a transaction holding locks.
            await asyncio.shield(self._release(connection))

    async def _release(self, connection: psycopg.AsyncConnection[Any]) -> None:
        if connection.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
            await connection.close()  # a statement was still running: the session is unusable
        await self._pool.putconn(connection)

    async def _apply(self, migration: Migration) -> bool:
        async with self._pool.connection() as connection, connection.transaction():
            # One migrator at a time across processes starting together.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
            await connection.execute(MIGRATIONS_TABLE)
            cursor = await connection.execute(
                "SELECT 1 FROM schema_migrations WHERE package = %s AND version = %s",
                (migration.package, migration.version),
            )
            if await cursor.fetchone():
                return False
            await connection.execute(migration.sql.encode())
            await connection.execute(
                "INSERT INTO schema_migrations (package, version, name) VALUES (%s, %s, %s)",
                (migration.package, migration.version, migration.name),
            )
            return True

    async def close(self) -> None:
        await self._pool.close()


async def open_database(
    service: str,
    *,
    data_dir: str | Path,
    database_url: str = "",
    schema: str | None = None,
    migrations: Sequence[str] = (),
) -> Database:
    """Open a service's store (PostgreSQL if `database_url`, else `<data_dir>/<service>.db`) and migrate it."""
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
