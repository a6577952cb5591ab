"""Both storage backends behave the same: migrations, transactions, constraint errors, streaming."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servers.mesh import postgres, storage
from servers.mesh.sqlite import SQLiteDatabase, sql_statements
from servers.mesh.storage import Database, discover_migrations, open_database

MIGRATIONS = "tests.support.migrations"


@pytest.fixture
async def database(store_config: dict[str, str]) -> AsyncIterator[Database]:
    db = await open_database(
        "storetest",
        data_dir=store_config["data_dir"],
        database_url=store_config["database_url"],
        schema=store_config.get("database_schema"),
        migrations=[MIGRATIONS],
    )
    yield db
    await db.close()


def test_dialect_specific_migration_replaces_the_generic_one() -> None:
    postgres = discover_migrations(MIGRATIONS, "postgres")
    sqlite = discover_migrations(MIGRATIONS, "sqlite")
    assert [m.version for m in postgres] == [1, 2] == [m.version for m in sqlite]
    assert "BIGSERIAL" in postgres[1].sql
    assert "BIGSERIAL" not in sqlite[1].sql


async def test_migrations_apply_once(database: Database) -> None:
    assert await database.migrate(MIGRATIONS) == []
    versions = [
        row["version"]
        for row in await database.fetchall("SELECT version FROM schema_migrations WHERE package = ?", (MIGRATIONS,))
    ]
    assert sorted(versions) == [1, 2]


async def test_transaction_commits_or_rolls_back_as_a_whole(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.execute("INSERT INTO accounts (id, balance) VALUES (?, ?)", ("a", 10))
    with pytest.raises(RuntimeError):
        async with database.transaction() as tx:
            await tx.execute("UPDATE accounts SET balance = balance - 5 WHERE id = ?", ("a",))
            raise RuntimeError("abandon")
    row = await database.fetchone("SELECT balance FROM accounts WHERE id = ?", ("a",))
    assert row is not None
    assert row["balance"] == 10


async def test_constraint_failures_are_backend_neutral(database: Database) -> None:
    await database.execute("INSERT INTO accounts (id, balance) VALUES (?, ?)", ("a", 1))
    with pytest.raises(storage.UniqueViolation):
        await database.execute("INSERT INTO accounts (id, balance) VALUES (?, ?)", ("a", 2))
    with pytest.raises(storage.CheckViolation):
        await database.execute("UPDATE accounts SET balance = -1 WHERE id = ?", ("a",))
    row = await database.fetchone("SELECT balance FROM accounts")
    assert row is not None
    assert row["balance"] == 1


async def test_percent_signs_and_placeholders_are_safe(database: Database) -> None:
    await database.execute("INSERT INTO notes (body) VALUES (?)", ("100% sure?",))
    rows = await database.fetchall("SELECT body FROM notes WHERE body LIKE '100%'")
    assert [r["body"] for r in rows] == ["100% sure?"]


async def test_stream_returns_every_row_in_batches(database: Database) -> None:
    async with database.transaction() as tx:
        await tx.executemany(
            "INSERT INTO accounts (id, balance) VALUES (?, ?)", [(f"k{i:04d}", i) for i in range(1234)]
        )
    seen: list[tuple[object, ...]] = []
    async with database.transaction() as tx:
        async for batch in tx.stream("SELECT id, balance FROM accounts ORDER BY id", batch=500):
            assert len(batch) <= 500
            seen.extend(batch)
    assert len(seen) == 1234
    assert seen[0] == ("k0000", 0)


async def test_copy_rows_bulk_loads_inside_the_transaction(database: Database) -> None:
    with pytest.raises(RuntimeError):
        async with database.transaction() as tx:
            assert await tx.copy_rows("accounts", ["id", "balance"], [(f"c{i}", i) for i in range(3)]) == 3
            raise RuntimeError("abandon")
    assert await database.fetchall("SELECT id FROM accounts") == []
    async with database.transaction() as tx:
        await tx.copy_rows("accounts", ["id", "balance"], ((f"c{i:03d}", i) for i in range(500)))
    rows = await database.fetchall("SELECT id, balance FROM accounts ORDER BY id")
    assert len(rows) == 500
    assert (rows[-1]["id"], rows[-1]["balance"]) == ("c499", 499)
    with pytest.raises(storage.CheckViolation):
        async with database.transaction() as tx:
            await tx.copy_rows("accounts", ["id", "balance"], [("neg", -1)])


async def test_copy_rows_keeps_every_value_of_typed_columns(database: Database) -> None:
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    if database.dialect == "postgres":
        table = (
            "CREATE TABLE typed (name TEXT PRIMARY KEY, count INTEGER, total BIGINT, flag BOOLEAN,"
            " ratio DOUBLE PRECISION, digest BYTEA, at TIMESTAMPTZ)"
        )
    else:
        table = (
            "CREATE TABLE typed (name TEXT PRIMARY KEY, count INTEGER, total BIGINT, flag BOOLEAN,"
            " ratio DOUBLE PRECISION, digest BLOB, at TEXT)"
        )
    at = moment if database.dialect == "postgres" else moment.isoformat()
    rows = [
        ("full", 7, 2**40, True, 0.25, b"\x00\xff" * 16, at),
        ("nulls", None, None, None, None, None, None),
        ("quote'tab\\t\\nnewline", -1, -(2**62), False, 3, b"", at),
    ]
    async with database.transaction() as tx:
        await tx.execute(table)
        assert await tx.copy_rows("typed", ["name", "count", "total", "flag", "ratio", "digest", "at"], rows) == 3
    stored = await database.fetchall("SELECT name, count, total, flag, ratio, digest, at FROM typed ORDER BY total")
    loaded = {row["name"]: tuple(row) for row in stored}
    assert loaded["full"][1:4] == (7, 2**40, True)
    assert loaded["full"][4] == 0.25
    assert bytes(loaded["full"][5]) == b"\x00\xff" * 16
    assert loaded["full"][6] == at
    assert loaded["nulls"][1:] == (None,) * 6
    assert loaded["quote'tab\\t\\nnewline"][1:5] == (-1, -(2**62), False, 3.0)
    assert bytes(loaded["quote'tab\\t\\nnewline"][5]) == b""


async def test_copy_rows_loads_columns_without_a_binary_form_as_text(database: Database) -> None:
    if database.dialect != "postgres":
        pytest.skip("JSONB is a PostgreSQL type")
    async with database.transaction() as tx:
        await tx.execute("CREATE TABLE documents (id TEXT PRIMARY KEY, body JSONB NOT NULL)")
        await tx.copy_rows("documents", ["id", "body"], [("a", '{"b": [1, 2]}')])
    row = await database.fetchone("SELECT body -> 'b' ->> 1 FROM documents WHERE id = 'a'")
    assert row is not None
    assert row[0] == "2"


async def test_json_rows_carry_every_value_exactly(database: Database) -> None:
    if database.dialect != "postgres":
        pytest.skip("json_rows feeds PostgreSQL statements")
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    rows = [
        ["ascii", 2**62, True, b"\x00\x01\xfe\xff", moment, 0.1],
        ['quote" back\\slash \u00e9\u4e2d \U0001f600 {"json": [1]}', -(2**63), False, b"", None, None],
    ]
    select = postgres.select_json_rows(["text", "bigint", "boolean", "bytea", "timestamptz", "double precision"])
    async with database.transaction() as tx:
        returned = await tx.fetchall(select, (postgres.json_rows(rows),))
    assert [[bytes(v) if isinstance(v, bytes | memoryview) else v for v in row] for row in returned] == rows


def test_json_rows_refuse_values_without_an_exact_form() -> None:
    with pytest.raises(ValueError):
        postgres.json_rows([[float("nan")]])
    with pytest.raises(TypeError):
        postgres.json_rows([[object()]])


async def test_two_processes_opening_one_sqlite_file_migrate_it_once(tmp_path: Path) -> None:
    # Two stores on one file (as two versions of a service share one): each checks and applies a
    # migration under the write lock, so every migration is applied by one of them, exactly once.
    first, second = SQLiteDatabase(tmp_path / "shared.db"), SQLiteDatabase(tmp_path / "shared.db")
    applied = await asyncio.gather(
        first.migrate("servers.mesh.migrations"),
        second.migrate("servers.mesh.migrations"),
        first.migrate(MIGRATIONS),
        second.migrate(MIGRATIONS),
    )
    for package, (one, other) in (("servers.mesh.migrations", applied[:2]), (MIGRATIONS, applied[2:])):
        every = [m.version for m in discover_migrations(package, "sqlite")]
        assert len(every) >= 2 and sorted(one + other) == every, (package, one, other)
    await first.close()
    await second.close()


async def test_a_transaction_cancelled_while_its_begin_runs_leaves_none_open(tmp_path: Path) -> None:
    # A call cancelled (deadline, client gone) while its BEGIN waits for another writer's lock:
    # the BEGIN still completes on the database thread, and the next transaction must not find
    # it open ("cannot start a transaction within a transaction").
    database = SQLiteDatabase(tmp_path / "cancel.db")
    other = sqlite3.connect(tmp_path / "cancel.db", isolation_level=None)
    try:
        await database.run(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
        begin_runs = threading.Event()
        await database.run(lambda c: c.set_trace_callback(lambda sql: sql == "BEGIN IMMEDIATE" and begin_runs.set()))
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the BEGIN will wait for it

        async def write() -> None:
            async with database.transaction() as tx:
                await tx.execute("INSERT INTO t VALUES (1)")

        cancelled = asyncio.create_task(write())
        await asyncio.to_thread(begin_runs.wait, 10)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        other.execute("COMMIT")  # the waiting BEGIN now succeeds on the database thread

        async with database.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (2)")
        assert [tuple(row) for row in await database.fetchall("SELECT x FROM t")] == [(2,)]
    finally:
        other.close()
        await database.close()


def test_sql_statements_keep_trigger_bodies_whole() -> None:
    script = (
        "CREATE TABLE t (a INTEGER); -- a comment; with a semicolon\n"
        "CREATE TRIGGER t_frozen BEFORE UPDATE ON t BEGIN\n  SELECT RAISE(ABORT, 'frozen; really');\nEND;\n"
        "INSERT INTO t VALUES (1);\n"
    )
    statements = list(sql_statements(script))
    assert len(statements) == 3
    assert "END;" in statements[1]


async def test_a_transaction_cancelled_while_it_begins_leaves_the_sqlite_connection_usable(tmp_path: Path) -> None:
    database = SQLiteDatabase(tmp_path / "cancel.db")
    other = sqlite3.connect(tmp_path / "cancel.db", isolation_level=None)
    try:
        await database.migrate("servers.mesh.migrations")
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: our BEGIN waits for it

        async def begin_then_wait() -> None:
            async with database.transaction():
                await asyncio.Event().wait()

        waiting = asyncio.ensure_future(begin_then_wait())
        await asyncio.sleep(0.3)  # BEGIN IMMEDIATE is now running on the database thread
        waiting.cancel()
        other.execute("COMMIT")  # ... and succeeds once the lock is free, after the cancellation
        with pytest.raises(asyncio.CancelledError):
            await waiting
        async with database.transaction() as tx:  # failed with "cannot start a transaction within a transaction"
            assert await tx.fetchval("SELECT 1") == 1
    finally:
        other.close()
        await database.close()
