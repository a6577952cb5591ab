"""Credits on the sharding topology: accounts placed by the ring, one PostgreSQL pool per shard node.

When the credits server follows a sharding server (`settings.CreditsSettings.topology`), a
`TopologyFollower` keeps the newest topology from `WatchTopology`, and `TopologyPlacement`
answers from it:

- writes go to the primary of the account's shard; an account whose key the topology marks
  `write_fenced` (a rebalance is cutting it over) is refused with UNAVAILABLE `ACCOUNT_MOVING`
  and a RetryInfo, and the shard itself refuses it too (see `fences.py`), so a server on an
  older topology version cannot write after a cut-over;
- a pool is opened (and the shard's schema migrated) for every shard primary as soon as a
  topology names it, in the background (`run`), and swapped when a failover names another
  primary; until the new pool is ready the shard answers UNAVAILABLE `SHARD_UNAVAILABLE`;
- reads where a little staleness is harmless (listings, history, usage, audit verification)
  may go to a HEALTHY streaming replica through the follower's read routing; the current
  balance is read from the primary, so a caller always sees its own acknowledged writes.

All shard tables live in the `credits` schema of each shard database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from servers.credits.placement import AccountPlacement, Shard
from servers.mesh import errors
from servers.mesh.postgres import PostgresDatabase
from servers.mesh.storage import Database
from servers.sharding.domain import HealthState
from servers.sharding.follower import TopologyFollower
from servers.sharding.topology import KeyLocation, Topology

log = logging.getLogger(__name__)

SHARD_SCHEMA = "credits"
"""The schema holding the ledger's tables in every shard database."""
SHARD_MIGRATIONS = ("servers.mesh.migrations", "servers.credits.migrations", "servers.credits.shard_migrations")
"""What a shard database is migrated with, in order."""
OPEN_TIMEOUT_SECONDS = 5.0
"""How long opening a shard node's pool may take before it is retried later."""


class ReplicaDatabase(PostgresDatabase):
    """A hot standby's pool: read-only, so its schema is never created or migrated (replication brings it)."""

    async def open(self) -> None:
        """Open the pool (no CREATE SCHEMA: a standby refuses every write)."""
        await self._pool.open(wait=True, timeout=OPEN_TIMEOUT_SECONDS)


async def open_shard_database(dsn: str, *, pool_size: int) -> PostgresDatabase:
    """A pool to a shard primary, its credits schema created and migrated."""
    database = PostgresDatabase(dsn, SHARD_SCHEMA, min_size=1, max_size=pool_size)
    await asyncio.wait_for(database.open(), OPEN_TIMEOUT_SECONDS)
    try:
        for package in SHARD_MIGRATIONS:
            await database.migrate(package)
    except BaseException:
        await database.close()
        raise
    return database


@dataclass(frozen=True)
class _OpenNode:
    """A pool to one node of a shard, as a credits `Shard`."""

    node_id: str
    dsn: str
    shard: Shard


class TopologyPlacement(AccountPlacement):
    """Places accounts by the followed topology; keeps a pool per shard primary and healthy replica."""

    sharded = True

    def __init__(
        self,
        follower: TopologyFollower,
        home: Database,
        *,
        pool_size: int = 8,
        read_replicas: bool = True,
        retry_seconds: float = 1.0,
    ) -> None:
        self.follower = follower
        self.pool_size = pool_size
        self.read_replicas = read_replicas
        self.retry_seconds = retry_seconds
        self._home = home
        self._primaries: dict[str, _OpenNode] = {}
        self._replicas: dict[str, _OpenNode] = {}
        self._synced = asyncio.Condition()
        self._synced_version = 0

    # -- what the store asks -----------------------------------------------------------------

    @property
    def home(self) -> Database:
        """The credits server's own store (coordinator log, signed heads)."""
        return self._home

    @property
    def shards(self) -> tuple[Shard, ...]:
        """The shard primaries open now, by shard id."""
        return tuple(self._primaries[shard_id].shard for shard_id in sorted(self._primaries))

    @property
    def every_shard_open(self) -> bool:
        """True if every shard of the topology has its current primary open."""
        opened = {shard_id: node.node_id for shard_id, node in self._primaries.items()}
        return all(opened.get(s.shard_id) == s.primary.node_id for s in self.follower.topology.shards)

    def shard_for(self, account_id: str) -> Shard:
        """The primary to write `account_id` on (UNAVAILABLE while fenced or while its pool opens)."""
        location = self._locate(account_id)
        if location.write_fenced:
            raise errors.Unavailable(
                f"account {account_id!r} is being moved to another shard; retry shortly",
                retry_after=0.2,
                reason="ACCOUNT_MOVING",
                metadata={"account_id": account_id, "shard_id": location.shard_id},
            )
        return self._primary(location.shard_id, location.primary.node_id)

    def shard_for_reading(self, account_id: str) -> Shard:
        """The primary of the shard serving `account_id` (reads go on while writes are fenced)."""
        location = self._locate(account_id)
        return self._primary(location.shard_id, location.primary.node_id)

    def primary_of(self, shard_id: str) -> Shard:
        """The open primary of a shard by id (UNAVAILABLE if the topology lacks it or it is not open)."""
        try:
            node_id = self.follower.topology.shard(shard_id).primary.node_id
        except errors.NotFound:
            raise _unavailable(shard_id, "is not in the topology") from None
        return self._primary(shard_id, node_id)

    def shard_id_of(self, account_id: str) -> str:
        """The shard serving `account_id` now (writes fenced or not)."""
        return self._locate(account_id).shard_id

    def owners(self, account_ids: Sequence[str]) -> list[str]:
        """The shard serving each account now, in order."""
        if not account_ids:
            return []
        topology = self.follower.topology
        if not len(topology.ring):
            raise _no_topology()
        return [location.shard_id for location in topology.locate_many(list(account_ids))]

    @contextlib.asynccontextmanager
    async def reading(self, account_id: str, *, replica_ok: bool = False) -> AsyncIterator[Shard]:
        """The node to read `account_id` from: a healthy replica if allowed and open, else the primary."""
        location = self._locate(account_id)
        primary = self._primary(location.shard_id, location.primary.node_id)
        if not (replica_ok and self.read_replicas):
            yield primary
            return
        with self.follower.read(account_id) as target:
            replica = None if target.fallback else self._replicas.get(target.node.node_id)
            yield primary if replica is None else replica.shard

    def replica_or_primary(self, shard: Shard) -> Shard:
        """For a scan of one whole shard: a healthy open replica of it, else the shard itself."""
        if not self.read_replicas:
            return shard
        try:
            described = self.follower.topology.shard(shard.name)
        except errors.NotFound:
            return shard
        for node in described.replicas:
            replica = self._replicas.get(node.node_id)
            if replica is not None and node.health is HealthState.HEALTHY:
                return replica.shard
        return shard

    def _locate(self, account_id: str) -> KeyLocation:
        topology = self.follower.topology
        if not len(topology.ring):
            raise _no_topology()
        return topology.locate(account_id)

    def _primary(self, shard_id: str, node_id: str) -> Shard:
        opened = self._primaries.get(shard_id)
        if opened is None or opened.node_id != node_id:
            raise _unavailable(shard_id, "is being connected to")
        return opened.shard

    # -- keeping pools in step with the topology ---------------------------------------------

    async def wait_synced(self, version: int, timeout: float | None = None) -> None:
        """Wait until every shard of topology `version` (or newer) has its primary pool open."""
        async with asyncio.timeout(timeout), self._synced:
            await self._synced.wait_for(lambda: self._synced_version >= version)

    async def run(self) -> None:
        """Open, swap and close pools as the topology changes, until cancelled (failures are retried)."""
        seen = -1
        while True:
            topology = self.follower.topology
            try:
                complete = await self._sync(topology)
            except Exception:
                log.exception("following the shard topology failed; retrying")
                complete = False
            if complete and topology.version > self._synced_version:
                async with self._synced:
                    self._synced_version = topology.version
                    self._synced.notify_all()
            seen = topology.version
            with contextlib.suppress(TimeoutError):
                await self.follower.wait_until(_newer_than(seen), None if complete else self.retry_seconds)

    async def _sync(self, topology: Topology) -> bool:
        complete = True
        # Primaries first: a replica slow to answer must not hold up a failover's new primary.
        for described in topology.shards:
            primary = described.primary
            opened = self._primaries.get(described.shard_id)
            if opened is None or (opened.node_id, opened.dsn) != (primary.node_id, primary.dsn):
                try:
                    database = await open_shard_database(primary.dsn, pool_size=self.pool_size)
                except Exception as error:
                    log.warning(
                        "cannot open shard %s primary %s (%s): %s",
                        described.shard_id,
                        primary.node_id,
                        primary.endpoint,
                        type(error).__name__,
                    )
                    complete = False
                else:
                    self._primaries[described.shard_id] = _OpenNode(
                        primary.node_id, primary.dsn, Shard.of(described.shard_id, database)
                    )
                    log.info("shard %s writes go to %s", described.shard_id, primary.node_id)
                    if opened is not None:
                        await _close_quietly(opened)
        wanted_replicas: set[str] = set()
        for described in topology.shards if self.read_replicas else ():
            for node in described.replicas:
                if node.health is HealthState.HEALTHY:
                    wanted_replicas.add(node.node_id)
                    await self._open_replica(described.shard_id, node.node_id, node.dsn)
        listed = {s.shard_id for s in topology.shards}
        for shard_id in [s for s in self._primaries if s not in listed]:
            await _close_quietly(self._primaries.pop(shard_id))
        for node_id in [n for n in self._replicas if n not in wanted_replicas]:
            await _close_quietly(self._replicas.pop(node_id))
        return complete

    async def _open_replica(self, shard_id: str, node_id: str, dsn: str) -> None:
        opened = self._replicas.get(node_id)
        if opened is not None and opened.dsn == dsn:
            return
        database = ReplicaDatabase(dsn, SHARD_SCHEMA, min_size=1, max_size=self.pool_size)
        try:
            await database.open()
        except Exception as error:
            # Reads fall back to the primary until the replica answers.
            log.warning("cannot open replica %s of shard %s: %s", node_id, shard_id, type(error).__name__)
            await database.close()
            return
        self._replicas[node_id] = _OpenNode(node_id, dsn, Shard.of(shard_id, database))
        if opened is not None:
            await _close_quietly(opened)

    async def close(self) -> None:
        """Close every shard pool."""
        for opened in [*self._primaries.values(), *self._replicas.values()]:
            await _close_quietly(opened)
        self._primaries.clear()
        self._replicas.clear()


async def _close_quietly(opened: _OpenNode) -> None:
    try:
        await opened.shard.database.close()
    except Exception as error:
        log.warning("closing the pool of %s failed: %s", opened.node_id, type(error).__name__)


def _newer_than(version: int) -> Callable[[Topology], bool]:
    return lambda topology: topology.version > version


def _no_topology() -> errors.Unavailable:
    return errors.Unavailable(
        "no shard topology received from the sharding server yet", retry_after=1.0, reason="NO_SHARD_TOPOLOGY"
    )


def _unavailable(shard_id: str, why: str) -> errors.Unavailable:
    return errors.Unavailable(
        f"shard {shard_id!r} {why}; retry shortly",
        retry_after=0.5,
        reason="SHARD_UNAVAILABLE",
        metadata={"shard_id": shard_id},
    )
