"""Which server plays an elected role (sharding's health monitor and rebalance engine, compliance's
continuous assessments): exactly one per store for each role, and another takes over when it stops.

Several sharding servers may share one registry (for reads and topology streams); if each ran
its own monitor, two could fail the same shard over at once and promote two replicas, and two
rebalance engines could copy and clean up the same account at once. Before each round the
monitor asks `Leadership.lead()`, as does the rebalance engine before it drives, and only the
holder acts:

- PostgreSQL registry: a session-level advisory lock (`pg_try_advisory_lock`) on a dedicated
  connection, keyed by the registry's schema and the role. PostgreSQL releases it the moment that session
  ends: the process exits or dies, or the server gives up on a silent client (the session asks
  for TCP keepalives every few seconds). The holder confirms its session each round (a failed
  `SELECT 1` means the lock may be gone: it stops leading until it takes the lock again).
- SQLite registry: an exclusive `flock` on `<database>.<role>.lock`, which the kernel releases
  when the process dies. (`:memory:` stores are private to their process, which always leads.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg

from servers.mesh.postgres import PostgresDatabase
from servers.mesh.sqlite import SQLiteDatabase
from servers.mesh.storage import Database

log = logging.getLogger(__name__)

_KEEPALIVES = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
"""The server drops the session of a client it cannot reach after about 11 s, releasing its lock."""


class Leadership(Protocol):
    """The right to play one role (`monitor`, `rebalancer`) for one registry."""

    async def lead(self, timeout: float) -> bool:
        """True if this process holds the lead now (taking it if it is free)."""
        ...

    async def release(self) -> None:
        """Give the lead up (at shutdown)."""
        ...


def leadership_for(database: Database, role: str, *, owner: str = "sharding") -> Leadership:
    """The leadership of `role` that fits the store; `owner` names the service playing it (part of the lock key)."""
    if isinstance(database, PostgresDatabase):
        return AdvisoryLockLeadership(database.url, database.schema, role, owner=owner)
    if isinstance(database, SQLiteDatabase) and database.path != ":memory:":
        return FileLockLeadership(Path(f"{database.path}.{role}.lock"))
    return SoleLeadership()


def lock_key(schema: str, role: str, owner: str = "sharding") -> int:
    """The advisory lock key (a signed 64-bit integer) of `owner`'s `role` for the store in `schema`."""
    digest = hashlib.sha256(f"shieldx-{owner}-{role}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLockLeadership:
    """A PostgreSQL session-level advisory lock held on a connection of its own."""

    def __init__(self, url: str, schema: str, role: str, *, owner: str = "sharding") -> None:
        self.url = url
        self.role = role
        self.owner = owner
        self.key = lock_key(schema, role, owner)
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._held = False

    async def lead(self, timeout: float) -> bool:
        """See `Leadership.lead`."""
        try:
            async with asyncio.timeout(timeout):
                if self._connection is None or self._connection.closed:
                    self._held = False
                    self._connection = await psycopg.AsyncConnection.connect(
                        self.url,
                        autocommit=True,
                        connect_timeout=max(2, int(timeout)),
                        application_name=f"shieldx:{self.owner}-{self.role}",
                        options=_KEEPALIVES,
                    )
                if self._held:
                    await self._connection.execute("SELECT 1")  # still our session, so still our lock
                else:
                    cursor = await self._connection.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                    row = await cursor.fetchone()
                    self._held = bool(row and row[0])
        except (TimeoutError, psycopg.Error, OSError) as error:
            if self._held:
                log.warning("lost the %s lock session (%s); not leading until it is taken again", self.role, error)
            await self._drop()
            return False
        return self._held

    async def release(self) -> None:
        """See `Leadership.release`: closing the session releases the lock."""
        await self._drop()

    async def _drop(self) -> None:
        self._held = False
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


class FileLockLeadership:
    """An exclusive `flock` on a file beside the SQLite registry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    async def lead(self, timeout: float) -> bool:
        """See `Leadership.lead`."""
        if self._file is not None:
            return True
        handle = self.path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    async def release(self) -> None:
        """See `Leadership.release`."""
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the last descriptor releases the lock


class SoleLeadership:
    """A registry no other process can share: always led by this one."""

    async def lead(self, timeout: float) -> bool:
        """See `Leadership.lead`."""
        return True

    async def release(self) -> None:
        """See `Leadership.release`."""
