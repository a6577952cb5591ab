"""Following a sharding server's topology: where each key lives and which node takes each read.

This is the library the credits servers (and any other client of the shards) use:

    follower = TopologyFollower(ShardingClient(runtime.channel("sharding")))
    tasks.append(follower.run)                  # keeps one WatchTopology stream open
    await follower.wait_until_ready()
    location = follower.locate(account_id)      # shard, primary node (its DSN), write fence
    with follower.read(account_id) as target:   # a healthy replica, else the primary
        ... connect to target.node.dsn ...

`run` holds one `WatchTopology` stream and resumes it with `after_version` after any break,
with exponential backoff (0.1 s doubling up to 5 s, reset by every received version), so a
restart of the sharding server costs nothing but the time it is away. The follower always
answers from the newest topology it has received (reads never wait on the stream). Versions
only move forward: an older version (another sharding server behind a balancer) is ignored.

Reads go to HEALTHY replicas by round-robin or power of two choices (`routing.ReadRouter`),
to the primary when no replica is healthy. Writes go to `locate(key).primary`; a
`write_fenced` location must be retried shortly (a rebalance is cutting the account over).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from clients.errors import ShieldxError
from clients.sharding import ShardingClient
from servers.sharding.domain import Node
from servers.sharding.routing import ReadRouter, ReadTarget, RoutingConfig
from servers.sharding.topology import KeyLocation, Topology
from servers.sharding.wire import UnsupportedTopology, topology_from_message
from shieldx.sharding.v1 import sharding_pb2 as pb

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0


class TopologyFollower:
    """The newest topology of a sharding server, kept current by `run`."""

    def __init__(
        self,
        client: ShardingClient,
        *,
        routing: RoutingConfig | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.client = client
        self.router = ReadRouter(routing)
        self._metadata = tuple(metadata)
        self._topology = Topology()
        self._changed = asyncio.Condition()
        self.reconnects = 0
        """Streams opened after the first (breaks survived)."""

    @property
    def topology(self) -> Topology:
        """The newest topology received (version 0 before the first)."""
        return self._topology

    async def run(self) -> None:
        """Follow the topology until cancelled, resuming after every break."""
        backoff = MIN_BACKOFF
        first = True
        while True:
            if not first:
                self.reconnects += 1
            first = False
            try:
                request = pb.WatchTopologyRequest(after_version=self._topology.version)
                async for response in self.client.watch_topology(request, metadata=self._metadata):
                    await self._accept(topology_from_message(response.topology))
                    backoff = MIN_BACKOFF
                log.warning("topology stream ended; reconnecting")
            except ShieldxError as error:
                log.warning("topology stream broke (%s); reconnecting in %.1fs", error.code.name, backoff)
            except UnsupportedTopology as error:
                log.error("cannot follow the topology (%s); keeping version %d", error, self._topology.version)
                backoff = MAX_BACKOFF
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _accept(self, topology: Topology) -> None:
        if topology.version <= self._topology.version:
            return
        async with self._changed:
            self._topology = topology
            self._changed.notify_all()

    async def wait_until(self, condition: Callable[[Topology], bool], timeout: float | None = None) -> Topology:
        """The first topology (the current one included) for which `condition` holds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: condition(self._topology))
            return self._topology

    async def wait_until_ready(self, timeout: float | None = None) -> Topology:
        """The first topology with a serving shard."""
        return await self.wait_until(lambda t: len(t.ring) > 0, timeout)

    def locate(self, key: str) -> KeyLocation:
        """Where `key` lives now: its shard, that shard's primary, and whether writes are fenced."""
        return self._topology.locate(key)

    def primary(self, shard_id: str) -> Node:
        """The primary of a shard."""
        return self._topology.shard(shard_id).primary

    @contextmanager
    def read(self, key: str) -> Iterator[ReadTarget]:
        """The node to read `key` from, counted as in flight for the block (least-connections routing)."""
        shard = self._topology.shard(self.locate(key).shard_id)
        with self.router.read(shard) as target:
            yield target
