"""What the sharding server does to shard database servers itself: observe, promote, fence.

Each operation opens a fresh connection with the node's DSN, so an observation proves that
the server accepts new connections now (a postmaster that was killed leaves backends behind
for a moment; a kept-open connection would miss that). Errors come back as `NodeError`
with a message safe to store and show: libpq's text, which names host and port but never the
password, squeezed to one line.

On PostgreSQL (14 or newer):
- observe: `SELECT pg_is_in_recovery()`, then `pg_current_wal_lsn()` on a primary or
  `pg_last_wal_replay_lsn()` and `now() - pg_last_xact_replay_timestamp()` on a replica;
- promote: `SELECT pg_promote(true, <timeout>)`, then `pg_is_in_recovery()` must be false;
- fence (a planned switchover, or a deposed primary that came back): `ALTER SYSTEM SET
  default_transaction_read_only = on`, reload, wait until new sessions see it, terminate the
  other client sessions (waiting for them to exit) and read the final `pg_current_wal_lsn()`:
  no write can commit after that LSN. `ALTER SYSTEM` persists, so a restart keeps the fence.
  `unfence` resets the setting;
- set_standby_names (a replication mode): `ALTER SYSTEM SET synchronous_standby_names` and a
  reload, then wait until new sessions see it;
- follow (after a failover): point a replica at the new primary. Its own `primary_conninfo` is
  kept (user, application_name, TLS and password file settings) with host, hostaddr and port
  taken from the new primary's DSN; its `primary_slot_name`, if it has one, is created on the
  new primary first; then `ALTER SYSTEM SET primary_conninfo` and a reload, which restarts the
  WAL receiver (PostgreSQL 13+) and, with `recovery_target_timeline = 'latest'` (the default),
  follows the promotion onto the new timeline.

These need a superuser, or a role granted `pg_promote`, `ALTER SYSTEM` on the settings named and
`pg_signal_backend`.

`sqlite:` nodes (the embedded single-shard store) are observed by opening the file read-only;
they are primaries without replication and cannot be promoted or fenced.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from servers.sharding.domain import Node
from servers.sharding.dsn import REDACTED
from servers.sharding.failover import MAX_ERROR_LENGTH, format_lsn, parse_lsn

APPLICATION_NAME = "shieldx-sharding"
_OBSERVE = (
    "SELECT pg_is_in_recovery(),"
    " (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,"
    " CASE WHEN pg_is_in_recovery() THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END,"
    " current_setting('default_transaction_read_only')::bool"
)
_FOLLOWED_KEYS = ("host", "hostaddr", "port")
"""What `follow` takes from the new primary's DSN into a replica's `primary_conninfo`."""


class NodeError(Exception):
    """An operation on a node failed (unreachable, refused, timed out); the message holds no credentials."""


@dataclass(frozen=True)
class Observation:
    """What one look at a node showed."""

    in_recovery: bool
    """True for a streaming replica (or a server still recovering)."""
    lsn: int | None
    """Primary: current WAL write position; replica: last replayed position (None if unknown)."""
    replay_age: timedelta | None = None
    """Replica: time since the last replayed transaction committed on the primary."""
    read_only: bool = False
    """New sessions default to read-only: the server is fenced (or a replica that says so)."""


@dataclass(frozen=True)
class Divergence:
    """Transactions a deposed primary committed that its successor never received."""

    from_lsn: int
    """The successor's timeline switch point."""
    to_lsn: int
    """The deposed primary's last WAL position."""
    transactions: int
    """Commits in between."""


class NodeOperations(Protocol):
    """The operations the monitor and the failover need on a node."""

    async def observe(self, node: Node, timeout: float) -> Observation:
        """Connect and read role and WAL position (NodeError on any failure)."""
        ...

    async def promote(self, node: Node, timeout: float) -> int | None:
        """Promote a replica to primary; returns its WAL position afterwards."""
        ...

    async def fence(self, node: Node, timeout: float) -> int:
        """Make a primary refuse writes and end its client sessions; returns its final WAL position."""
        ...

    async def unfence(self, node: Node, timeout: float) -> None:
        """Undo `fence` (a switchover that could not complete)."""
        ...

    async def follow(self, replica: Node, primary: Node, timeout: float) -> None:
        """Make a replica stream from `primary` (after a failover)."""
        ...

    async def set_standby_names(self, primary: Node, names: str, timeout: float) -> None:
        """Set a primary's `synchronous_standby_names` (persisted) and reload its configuration."""
        ...

    async def switch_point(self, primary: Node, timeout: float) -> int | None:
        """Where a promoted primary's timeline left the previous one (None on timeline 1)."""
        ...

    async def divergence(self, node: Node, since: int, timeout: float) -> Divergence:
        """What a deposed primary wrote after `since` (the new primary's switch point)."""
        ...


def one_line(error: BaseException, dsn: str = "") -> str:
    """An exception as a short single line; with `dsn`, any appearance of its password is masked.

    libpq's messages name host and port, not the password, but a connection-string parse error
    quotes the string near the fault, so the password is scrubbed all the same.
    """
    text = " ".join(str(error).split()) or type(error).__name__
    for secret in _secrets(dsn) if dsn else ():
        text = text.replace(secret, REDACTED)
    return text[:MAX_ERROR_LENGTH]


_SECRET_PAIR = re.compile(r"(?i)(?:ssl)?password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^\s&]+))")
_URI_PASSWORD = re.compile(r"//[^/@:?#]*:([^@/]+)@")


def _secrets(dsn: str) -> list[str]:
    """The passwords a DSN holds: parsed by libpq's rules, or found by pattern if it does not parse."""
    try:
        parsed = conninfo_to_dict(dsn)
    except psycopg.Error:
        found = [a or b for a, b in _SECRET_PAIR.findall(dsn)] + _URI_PASSWORD.findall(dsn)
        return [f for f in found if f]
    return [str(v) for k, v in parsed.items() if k in ("password", "sslpassword") and v]


def _sqlite_path(dsn: str) -> str | None:
    """The file of a `sqlite:` DSN: the URI's path (`sqlite:///var/lib/credits.db` is /var/lib/credits.db)."""
    if not dsn.startswith("sqlite:"):
        return None
    parts = urlsplit(dsn)
    path = unquote(parts.netloc + parts.path)
    return "/" + path.lstrip("/") if path.startswith("/") else path


class DatabaseNodes:
    """`NodeOperations` on PostgreSQL servers (and read-only looks at `sqlite:` files)."""

    async def observe(self, node: Node, timeout: float) -> Observation:
        """See `NodeOperations.observe`."""
        path = _sqlite_path(node.dsn)
        if path is not None:
            return await self._observe_sqlite(path, timeout)
        async with self._connection(node, timeout) as connection:
            row = await (await connection.execute(_OBSERVE)).fetchone()
        assert row is not None
        in_recovery, lsn_text, age_seconds, read_only = row
        age = None
        if age_seconds is not None and math.isfinite(float(age_seconds)):
            age = timedelta(seconds=max(0.0, float(age_seconds)))
        lsn = None if lsn_text is None else parse_lsn(lsn_text)
        return Observation(bool(in_recovery), lsn, age, read_only=bool(read_only))

    async def promote(self, node: Node, timeout: float) -> int | None:
        """See `NodeOperations.promote`; a node already out of recovery counts as promoted."""
        self._refuse_sqlite(node, "promoted")
        wait_seconds = max(1, math.ceil(timeout))
        async with self._connection(node, timeout + 5) as connection:
            if await self._value(connection, "SELECT pg_is_in_recovery()"):
                try:
                    promoted = await self._value(connection, "SELECT pg_promote(true, %s)", (wait_seconds,))
                except psycopg.Error as error:
                    raise NodeError(f"pg_promote failed: {one_line(error, node.dsn)}") from error
                if not promoted:
                    raise NodeError(f"pg_promote did not finish within {wait_seconds}s")
            if await self._value(connection, "SELECT pg_is_in_recovery()"):
                raise NodeError("still in recovery after pg_promote")
            lsn = await self._value(connection, "SELECT pg_current_wal_lsn()::text")
        return None if lsn is None else parse_lsn(lsn)

    async def fence(self, node: Node, timeout: float) -> int:
        """See `NodeOperations.fence`."""
        self._refuse_sqlite(node, "fenced")
        deadline = time.monotonic() + timeout
        async with self._connection(node, timeout) as connection:
            try:
                await connection.execute("ALTER SYSTEM SET default_transaction_read_only = on")
                await connection.execute("SELECT pg_reload_conf()")
            except psycopg.Error as error:
                raise NodeError(f"could not make the primary read-only: {one_line(error, node.dsn)}") from error
        # The postmaster applies a reload asynchronously; sessions forked before it would still write.
        while True:
            async with self._connection(node, max(0.1, deadline - time.monotonic())) as connection:
                if await self._value(connection, "SHOW default_transaction_read_only") == "on":
                    break
            if time.monotonic() > deadline:
                raise NodeError("the primary did not apply default_transaction_read_only in time")
            await asyncio.sleep(0.02)
        async with self._connection(node, max(0.1, deadline - time.monotonic())) as connection:
            wait_ms = max(100, int((deadline - time.monotonic()) * 1000))
            await connection.execute(
                "SELECT pg_terminate_backend(pid, %s) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                (wait_ms,),
            )
            lsn = await self._value(connection, "SELECT pg_current_wal_lsn()::text")
        return parse_lsn(lsn)

    async def unfence(self, node: Node, timeout: float) -> None:
        """See `NodeOperations.unfence`."""
        self._refuse_sqlite(node, "unfenced")
        async with self._connection(node, timeout) as connection:
            await connection.execute("ALTER SYSTEM RESET default_transaction_read_only")
            await connection.execute("SELECT pg_reload_conf()")

    async def follow(self, replica: Node, primary: Node, timeout: float) -> None:
        """See `NodeOperations.follow`."""
        self._refuse_sqlite(replica, "re-pointed")
        self._refuse_sqlite(primary, "followed")
        async with self._connection(replica, timeout) as connection:
            current = await self._value(connection, "SHOW primary_conninfo")
            slot = await self._value(connection, "SHOW primary_slot_name")
        try:
            settings = conninfo_to_dict(current or "")
            target = conninfo_to_dict(primary.dsn)
        except psycopg.Error as error:
            raise NodeError(f"unreadable connection string: {one_line(error, primary.dsn)}") from None
        for key in _FOLLOWED_KEYS:
            settings.pop(key, None)
        settings.update({k: v for k, v in target.items() if k in _FOLLOWED_KEYS})
        settings.pop("dbname", None)  # a physical replication connection has no database
        conninfo = make_conninfo("", **{k: v for k, v in settings.items() if v is not None})
        if slot:
            async with self._connection(primary, timeout) as connection:
                await connection.execute(
                    "SELECT pg_create_physical_replication_slot(%s, true)"
                    " WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = %s)",
                    (slot, slot),
                )
        async with self._connection(replica, timeout) as connection:
            await connection.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo)))
            await connection.execute("SELECT pg_reload_conf()")

    async def set_standby_names(self, primary: Node, names: str, timeout: float) -> None:
        """See `NodeOperations.set_standby_names`; returns once new sessions see the setting."""
        self._refuse_sqlite(primary, "given synchronous standbys")
        deadline = time.monotonic() + timeout
        async with self._connection(primary, timeout) as connection:
            statement = sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(names))
            await connection.execute(statement)
            await connection.execute("SELECT pg_reload_conf()")
        while True:  # the postmaster applies a reload asynchronously
            async with self._connection(primary, max(0.1, deadline - time.monotonic())) as connection:
                if await self._value(connection, "SHOW synchronous_standby_names") == names:
                    return
            if time.monotonic() > deadline:
                raise NodeError("the primary did not apply synchronous_standby_names in time")
            await asyncio.sleep(0.02)

    async def switch_point(self, primary: Node, timeout: float) -> int | None:
        """See `NodeOperations.switch_point`: the last entry of the current timeline's history file."""
        self._refuse_sqlite(primary, "read")
        async with self._connection(primary, timeout) as connection:
            # The checkpoint's timeline lags a fresh promotion; the current WAL file names the timeline now.
            timeline = int(
                await self._value(connection, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16
            )
            if timeline <= 1:
                return None
            history = await self._value(connection, "SELECT pg_read_file(%s)", (f"pg_wal/{timeline:08X}.history",))
        entries = [line.split("\t") for line in str(history or "").splitlines() if line and not line.startswith("#")]
        return parse_lsn(entries[-1][1]) if entries and len(entries[-1]) > 1 else None

    async def divergence(self, node: Node, since: int, timeout: float) -> Divergence:
        """See `NodeOperations.divergence`: commits counted with `pg_walinspect` (contrib, PostgreSQL 15+),
        in a session allowed to write despite the fence (creating the extension is the one write)."""
        self._refuse_sqlite(node, "inspected")
        async with self._connection(node, timeout) as connection:
            end = parse_lsn(await self._value(connection, "SELECT pg_current_wal_flush_lsn()::text"))
            await connection.execute("SET default_transaction_read_only = off")
            await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            if end <= since:
                return Divergence(since, end, 0)
            commits = await self._value(
                connection,
                "SELECT count(*) FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)"
                " WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%%'",
                (format_lsn(since), format_lsn(end)),
            )
        return Divergence(since, end, int(commits or 0))

    @asynccontextmanager
    async def _connection(self, node: Node, timeout: float) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with asyncio.timeout(timeout):
                connection = await psycopg.AsyncConnection.connect(
                    node.dsn,
                    autocommit=True,
                    connect_timeout=max(2, math.ceil(timeout)),
                    application_name=APPLICATION_NAME,
                )
        except TimeoutError:
            raise NodeError(f"no connection within {timeout:.3g}s") from None
        except (psycopg.Error, OSError) as error:
            raise NodeError(one_line(error, node.dsn)) from None
        try:
            async with asyncio.timeout(timeout):
                yield connection
        except TimeoutError:
            raise NodeError(f"no answer within {timeout:.3g}s") from None
        except psycopg.Error as error:
            raise NodeError(one_line(error, node.dsn)) from None
        finally:
            await connection.close()

    @staticmethod
    async def _value(connection: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
        row = await (await connection.execute(query.encode(), params)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _refuse_sqlite(node: Node, what: str) -> None:
        if _sqlite_path(node.dsn) is not None:
            raise NodeError(f"an embedded sqlite node cannot be {what}")

    @staticmethod
    async def _observe_sqlite(path: str, timeout: float) -> Observation:
        def look() -> None:
            connection = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=timeout)
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                connection.close()

        try:
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(look)
        except TimeoutError:
            raise NodeError(f"no answer within {timeout:.3g}s") from None
        except sqlite3.Error as error:
            raise NodeError(f"sqlite: {one_line(error)}") from None
        return Observation(in_recovery=False, lsn=None)
