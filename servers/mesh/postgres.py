"""The PostgreSQL store: a psycopg connection pool whose connections use the service's own schema."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool

from servers.mesh.storage import (
    MIGRATIONS_TABLE,
    SQL_IDENTIFIER,
    CheckViolation,
    Database,
    Dialect,
    Migration,
    Params,
    Row,
    Transaction,
    TransientError,
    UniqueViolation,
    check_identifiers,
)


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
        check_identifiers(table, *columns)
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
        if not SQL_IDENTIFIER.match(schema):
            raise ValueError(f"schema {schema!r} is not a plain lower-case identifier")
        self.url = url
        self.schema = schema
        self._sizes = (min_size, max_size)
        self._pool = self._new_pool()

    def _new_pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(
            self.url,
            min_size=self._sizes[0],
            max_size=self._sizes[1],
            open=False,
            kwargs={
                "row_factory": _pg_row,
                "autocommit": True,
                "options": f"-c search_path={self.schema}",
                "application_name": f"shieldx:{self.schema}",
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
                    yield self.slowed(_PostgresTransaction(connection))
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

    async def _revert(self, migration: Migration) -> None:
        async with self._pool.connection() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
            await connection.execute((migration.down or "").encode())
            await connection.execute(
                "DELETE FROM schema_migrations WHERE package = %s AND version = %s",
                (migration.package, migration.version),
            )

    async def backup(self, path: Path) -> None:
        """`pg_dump` of this schema alone, in the custom format `pg_restore` reads."""
        await _run_client(
            "pg_dump", "--dbname", self.url, "--schema", self.schema, "--format", "custom", "--file", str(path)
        )

    async def restore(self, path: Path) -> None:
        """Drop the schema and load the dump (which creates it again) in one transaction."""
        await self._pool.close()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as connection:
            await connection.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        await _run_client("pg_restore", "--dbname", self.url, "--no-owner", "--single-transaction", str(path))
        self._pool = self._new_pool()
        await self._pool.open(wait=True)

    async def close(self) -> None:
        await self._pool.close()


def client_binary(name: str) -> str:
    """A PostgreSQL client program: from `$SHIELDX_PG_BINDIR`, the newest Debian install, or PATH."""
    override = os.environ.get("SHIELDX_PG_BINDIR")
    candidates = [Path(override)] if override else []
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for bindir in [*candidates, *versions]:
        if (bindir / name).is_file():
            return str(bindir / name)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (install postgresql-client or set SHIELDX_PG_BINDIR)")
    return found


async def _run_client(name: str, *args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        client_binary(name), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({process.returncode}): {err.decode(errors='replace').strip()}")
