"""Read routing to replicas: round-robin or least-connections by the power of two choices.

Only HEALTHY replicas take reads; with none, reads go to the primary. Power of two choices
samples two replicas at random and takes the one with fewer reads in flight: nearly as good
as scanning all of them for the least loaded, without every router piling onto the same one.
The random source is seeded, so a router's choices can be replayed. A router belongs to one
event loop (or thread); it keeps its own in-flight counts.
"""

from __future__ import annotations

import enum
import random
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from servers.mesh.errors import InvalidArgument
from servers.sharding.domain import HealthState, Node, Shard


class ReadPolicy(enum.Enum):
    """How a replica is picked for a read."""

    ROUND_ROBIN = "round_robin"
    """Each healthy replica in turn, in node id order."""
    LEAST_CONNECTIONS = "least_connections"
    """Of two random healthy replicas, the one with fewer reads in flight."""


@dataclass(frozen=True)
class RoutingConfig:
    """Read routing settings."""

    policy: ReadPolicy = ReadPolicy.LEAST_CONNECTIONS
    """How replicas are picked."""
    seed: int | None = None
    """Seed of the random source (None: seeded from the OS)."""


@dataclass(frozen=True)
class ReadTarget:
    """Where one read goes."""

    node: Node
    """The node to read from."""
    fallback: bool
    """True if it is the primary because no replica was healthy."""


class ReadRouter:
    """Picks the node for each read of a shard."""

    def __init__(self, config: RoutingConfig | None = None) -> None:
        self.config = config or RoutingConfig()
        self._random = random.Random(self.config.seed)
        self._turn: defaultdict[str, int] = defaultdict(int)
        self._in_flight: defaultdict[str, int] = defaultdict(int)

    def choose(self, shard: Shard) -> ReadTarget:
        """The node for the next read of `shard`."""
        healthy = [n for n in shard.replicas if n.health is HealthState.HEALTHY]
        if not healthy:
            return ReadTarget(shard.primary, fallback=True)
        if len(healthy) == 1:
            return ReadTarget(healthy[0], fallback=False)
        if self.config.policy is ReadPolicy.ROUND_ROBIN:
            turn = self._turn[shard.shard_id]
            self._turn[shard.shard_id] = turn + 1
            return ReadTarget(healthy[turn % len(healthy)], fallback=False)
        first, second = self._random.sample(healthy, 2)
        chosen = second if self._in_flight[second.node_id] < self._in_flight[first.node_id] else first
        return ReadTarget(chosen, fallback=False)

    def in_flight(self, node_id: str) -> int:
        """Reads currently running on a node through this router."""
        return self._in_flight.get(node_id, 0)

    def begin(self, node_id: str) -> None:
        """Count a read starting on `node_id` (pair with `end`)."""
        self._in_flight[node_id] += 1

    def end(self, node_id: str) -> None:
        """Count a read on `node_id` finishing."""
        if self._in_flight.get(node_id, 0) <= 0:
            raise InvalidArgument("node_id", f"no read in flight on {node_id!r}")
        self._in_flight[node_id] -= 1

    @contextmanager
    def read(self, shard: Shard) -> Iterator[ReadTarget]:
        """Choose a node and count the read as in flight for the duration of the block."""
        target = self.choose(shard)
        self.begin(target.node.node_id)
        try:
            yield target
        finally:
            self.end(target.node.node_id)
