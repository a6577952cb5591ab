"""The live topology of one sharding server: the stored versions, applied changes, and watchers.

Every change is made inside a transaction: `apply` reads the stored version (locking the
registry row on PostgreSQL), applies a domain command to the topology of that version, and
saves the result as exactly one new version, whatever number of commands the change ran.
Once the transaction has committed, the caller hands the result to `publish`, which makes it
`current` and wakes the watchers. `commit` does both for changes outside a request ledger.

Watchers (`watch`) get the current topology first if it is newer than the version they
already have, then every later version in order. Versions are kept in memory for
`history` steps; a watcher that falls further behind than that continues from the oldest
version still kept (each version is a full snapshot, so it only misses intermediate states).
When the server drains, `close_watches` ends every stream cleanly; followers resume
elsewhere with `after_version`.

Several sharding servers may share one PostgreSQL registry: each writes through the
optimistic save above, and `follow_store` picks up versions written by the others (one
`SELECT version` per interval), so their watchers see every change within that interval.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

from servers.mesh.storage import Transaction, TransientError, UniqueViolation
from servers.sharding.store import ShardingStore
from servers.sharding.topology import Topology

log = logging.getLogger(__name__)

Change = Callable[[Topology], Topology]
"""A pure function from a topology to the next (domain commands such as `register_shard`)."""
AlsoInTransaction = Callable[[Transaction, Topology], Awaitable[None]]
"""More writes to make in the transaction that saves a new topology."""
Clock = Callable[[], datetime]

DEFAULT_HISTORY = 256
_COMMIT_ATTEMPTS = 8


def utc_now() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)


class TopologyRegistry:
    """The current topology, its changes, and the in-process watchers of its versions."""

    def __init__(
        self,
        store: ShardingStore,
        *,
        clock: Clock = utc_now,
        history: int = DEFAULT_HISTORY,
        refresh_seconds: float = 0.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.refresh_seconds = refresh_seconds
        """How often `follow_store` reads the stored version (0: never)."""
        self._history: deque[Topology] = deque([Topology()], maxlen=max(1, history))
        self._changed = asyncio.Condition()
        self._closing = False
        self._listeners: list[Callable[[Topology], None]] = []

    @property
    def current(self) -> Topology:
        """The newest published topology."""
        return self._history[-1]

    async def load(self) -> Topology:
        """Read the stored topology and publish it (at start, or to catch up with other processes)."""
        async with self.store.database.transaction() as tx:
            version = await self.store.topology_version(tx)
            topology = self.current if version == self.current.version else await self.store.load_topology(tx)
        await self.publish(topology)
        return self.current

    def on_publish(self, listener: Callable[[Topology], None]) -> None:
        """Call `listener` with every newly published topology (metrics, monitors)."""
        self._listeners.append(listener)

    async def read(self, tx: Transaction, *, for_update: bool = True) -> Topology:
        """The stored topology inside `tx` (its registry row locked until commit, on PostgreSQL)."""
        version = await self.store.topology_version(tx, for_update=for_update)
        return self.current if version == self.current.version else await self.store.load_topology(tx)

    async def apply(self, tx: Transaction, change: Change) -> Topology:
        """Apply `change` to the stored topology inside `tx`; returns the new (unpublished) version.

        If the change leaves the topology as it was, nothing is written and the stored one is
        returned. Raises whatever the domain command raises, and TransientError if another
        writer saved a version meanwhile (retry).
        """
        base = await self.read(tx)
        changed = change(base)
        if changed is base or changed == base:
            return base
        new = replace(changed, version=base.version + 1, updated_at=self.clock())
        await self.store.save_topology(tx, new, expected_version=base.version)
        return new

    async def commit(self, change: Change, also: AlsoInTransaction | None = None) -> Topology:
        """`apply` in a transaction of its own (retried on write conflicts), then `publish`."""
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                async with self.store.database.transaction() as tx:
                    topology = await self.apply(tx, change)
                    if also is not None:
                        await also(tx, topology)
            except (TransientError, UniqueViolation):
                if attempt + 1 == _COMMIT_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
                continue
            await self.publish(topology)
            return topology
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish(self, topology: Topology) -> None:
        """Make a committed topology current and wake the watchers; older or equal versions are ignored."""
        if topology.version <= self.current.version:
            return
        async with self._changed:
            self._history.append(topology)
            self._changed.notify_all()
        for listener in self._listeners:
            try:
                listener(topology)
            except Exception:
                log.exception("topology listener failed")

    async def watch(self, after_version: int = 0) -> AsyncIterator[Topology]:
        """The current topology if newer than `after_version`, then every new version, forever."""
        current = self.current
        last = after_version
        if current.version > after_version:
            yield current
            last = current.version
        while not self._closing:
            async with self._changed:
                await self._changed.wait_for(self._newer_than(last))
                pending = [t for t in self._history if t.version > last]
            for topology in pending:
                yield topology
                last = topology.version

    async def close_watches(self) -> None:
        """End every watch stream (the server is draining; followers resume elsewhere)."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()

    async def follow_store(self) -> None:
        """Publish versions other servers wrote to the shared store, checking every `refresh_seconds`."""
        interval = self.refresh_seconds
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception:
                log.exception("reading the topology version failed; trying again in %ss", interval)

    def _newer_than(self, version: int) -> Callable[[], bool]:
        return lambda: self._closing or self.current.version > version
