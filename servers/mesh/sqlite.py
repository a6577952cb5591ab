"""The embedded SQLite store: one file in WAL mode, used from one worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from servers.mesh.filemodes import private_directory, private_file, restrict_if_present
from servers.mesh.storage import (
    MIGRATIONS_TABLE,
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

T = TypeVar("T")


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
        check_identifiers(table, *columns)
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


def _rollback_if_open(connection: sqlite3.Connection) -> None:
    if connection.in_transaction:
        connection.execute("ROLLBACK")


class SQLiteDatabase(Database):
    """One SQLite file in WAL mode, used from one worker thread; transactions run one at a time."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private_directory(Path(self.path).parent)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._lock = asyncio.Lock()
        self._connection: sqlite3.Connection | None = None
        self._connect_once = threading.Lock()

    def _connection_in_thread(self) -> sqlite3.Connection:
        with self._connect_once:
            if self._connection is None:
                if self.path != ":memory:":
                    # SQLite gives the WAL and shared-memory files the database file's mode.
                    private_file(Path(self.path))
                    for suffix in ("-wal", "-shm", "-journal"):
                        restrict_if_present(Path(self.path + suffix))
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
            try:
                await self.run(lambda c: c.execute("BEGIN IMMEDIATE"))
            except asyncio.CancelledError:
                # The BEGIN still runs on the database thread; queue its undo there (in order)
                # before the lock goes, or the next transaction would find this one open.
                self._executor.submit(self._guarded, _rollback_if_open)
                raise
            try:
                yield self.slowed(_SQLiteTransaction(self))
            except BaseException:
                await asyncio.shield(self.run(lambda c: c.execute("ROLLBACK")))
                raise
            await self.run(lambda c: c.execute("COMMIT"))

    async def _apply(self, migration: Migration) -> bool:
        def apply(c: sqlite3.Connection) -> bool:
            c.execute(MIGRATIONS_TABLE)
            key = (migration.package, migration.version)
            # The check and the change under one write lock: another process starting on the
            # same file (a second version of a service) waits, then sees the migration applied.
            c.execute("BEGIN IMMEDIATE")
            try:
                if c.execute("SELECT 1 FROM schema_migrations WHERE package = ? AND version = ?", key).fetchone():
                    c.execute("ROLLBACK")
                    return False
                for statement in sql_statements(migration.sql):
                    c.execute(statement)
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

    async def _revert(self, migration: Migration) -> None:
        def revert(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                for statement in sql_statements(migration.down or ""):
                    c.execute(statement)
                c.execute(
                    "DELETE FROM schema_migrations WHERE package = ? AND version = ?",
                    (migration.package, migration.version),
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

        async with self._lock:
            await self.run(revert)

    async def backup(self, path: Path) -> None:
        def copy(c: sqlite3.Connection) -> None:
            # The online backup API: a consistent copy while the store stays usable.
            target = sqlite3.connect(path)
            try:
                c.backup(target)
            finally:
                target.close()

        async with self._lock:
            await self.run(copy)

    async def restore(self, path: Path) -> None:
        def copy_back(c: sqlite3.Connection) -> None:
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                source.backup(c)
            finally:
                source.close()

        async with self._lock:
            await self.run(copy_back)

    async def close(self) -> None:
        def shut(_: sqlite3.Connection) -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        async with self._lock:
            await self.run(shut)
        self._executor.shutdown(wait=True)


def sql_statements(script: str) -> Iterator[str]:
    """The statements of a script, split where SQLite says a statement is complete (so a
    trigger's `BEGIN ... END;` stays whole); `executescript` would commit the open transaction."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending
