"""Shards and their nodes: the registry's entities, limits and error reasons.

A shard is JOINING from registration until a rebalance has moved its accounts onto it,
ACTIVE while it serves, and LEAVING from `RemoveShard` until a rebalance has moved its
accounts off. Each has one primary and up to `MAX_REPLICAS` streaming replicas; node DSNs may
hold passwords and are never shown unredacted outside the topology stream.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from servers.mesh.errors import InvalidArgument, NotFound
from servers.sharding.dsn import dsn_endpoint, redact_dsn, validate_dsn
from servers.sharding.ring import RingMember, validate_shard_id

MAX_REGION_LENGTH = 63
"""Longest region label."""
MAX_REPLICAS = 16
"""Replicas one shard may have."""
MAX_KEY_LENGTH = 256
"""Longest key (account id) that can be located."""

_REGION_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class Reason(enum.StrEnum):
    """`ErrorInfo.reason` values of the sharding service."""

    SHARD_NOT_FOUND = "SHARD_NOT_FOUND"
    SHARD_EXISTS = "SHARD_EXISTS"
    NODE_NOT_FOUND = "NODE_NOT_FOUND"
    NODE_EXISTS = "NODE_EXISTS"
    NO_SHARDS = "NO_SHARDS"
    LAST_SHARD = "LAST_SHARD"
    SHARD_ALREADY_LEAVING = "SHARD_ALREADY_LEAVING"
    CANNOT_REMOVE_PRIMARY = "CANNOT_REMOVE_PRIMARY"
    TOO_MANY_REPLICAS = "TOO_MANY_REPLICAS"
    NO_HEALTHY_REPLICA = "NO_HEALTHY_REPLICA"
    REPLICA_UNHEALTHY = "REPLICA_UNHEALTHY"
    REPLICA_BEHIND = "REPLICA_BEHIND"
    ALREADY_PRIMARY = "ALREADY_PRIMARY"
    REBALANCE_IN_PROGRESS = "REBALANCE_IN_PROGRESS"
    NO_REBALANCE_IN_PROGRESS = "NO_REBALANCE_IN_PROGRESS"
    REBALANCE_NOT_FOUND = "REBALANCE_NOT_FOUND"
    NOTHING_TO_REBALANCE = "NOTHING_TO_REBALANCE"
    REBALANCE_UNFINISHED = "REBALANCE_UNFINISHED"
    ACCOUNT_NOT_IN_REBALANCE = "ACCOUNT_NOT_IN_REBALANCE"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    ACCOUNT_FENCED = "ACCOUNT_FENCED"
    REBALANCE_MOVER_UNAVAILABLE = "REBALANCE_MOVER_UNAVAILABLE"
    PROMOTION_FAILED = "PROMOTION_FAILED"
    PRIMARY_NOT_FENCED = "PRIMARY_NOT_FENCED"
    UNKNOWN_REGION = "UNKNOWN_REGION"
    REGION_STANDBY = "REGION_STANDBY"
    NO_REPLICAS = "NO_REPLICAS"
    NO_SAME_REGION_REPLICA = "NO_SAME_REGION_REPLICA"
    NO_PRIMARY_IN_REGION = "NO_PRIMARY_IN_REGION"
    SAME_REGION = "SAME_REGION"
    MODE_NOT_APPLIED = "MODE_NOT_APPLIED"


class NodeRole(enum.Enum):
    """What a node does for its shard."""

    PRIMARY = "primary"
    """Takes reads and writes; exactly one per shard."""
    REPLICA = "replica"
    """A streaming replica; takes reads, promoted on failover."""


class HealthState(enum.Enum):
    """What the health checks last concluded about a node."""

    UNKNOWN = "unknown"
    """Not checked yet; not routed to."""
    HEALTHY = "healthy"
    """The last check passed."""
    SUSPECT = "suspect"
    """Failed at least one check in a row, fewer than the failover threshold."""
    DOWN = "down"
    """Failed the threshold of checks in a row (a primary this long down is failed over)."""


class ShardState(enum.Enum):
    """Where a shard is in its life on the ring."""

    JOINING = "joining"
    """Registered, not serving yet: its accounts arrive with the next rebalance."""
    ACTIVE = "active"
    """On the ring, serving its accounts."""
    LEAVING = "leaving"
    """Being removed: still serving until a rebalance has moved its accounts off."""


class RegionState(enum.Enum):
    """What the sharding server concludes about a region."""

    ACTIVE = "active"
    """Serving: primaries may live here and failovers may promote here."""
    DEGRADED = "degraded"
    """Some of its nodes fail their checks; still serving."""
    STANDBY = "standby"
    """Failed over: no primary lives here and nothing is promoted here until it is declared again."""


class ReplicationMode(enum.Enum):
    """How a shard's primary waits for replicas before a COMMIT returns (see `regions.standby_names`)."""

    UNMANAGED = "unmanaged"
    """The primary's own `synchronous_standby_names` stands."""
    SYNCHRONOUS = "synchronous"
    """A quorum that always includes a replica in another region."""
    SEMI_SYNCHRONOUS = "semi_synchronous"
    """Any one replica in the primary's region; other regions asynchronous."""
    ASYNCHRONOUS = "asynchronous"
    """No waiting."""


MIN_PRIORITY = 1
MAX_PRIORITY = 1000


@dataclass(frozen=True)
class Region:
    """A failure domain: nodes carry its label; failovers go to regions in priority order."""

    region_id: str
    """Region label, as on nodes."""
    priority: int
    """Failover order: smaller first."""
    state: RegionState = RegionState.ACTIVE
    """Active, degraded or standby."""


def validate_region_id(region_id: str, field: str) -> None:
    """Raise InvalidArgument unless `region_id` is a region label (non-empty)."""
    if not _REGION_PATTERN.fullmatch(region_id):
        raise InvalidArgument(field, "must be 1-63 lowercase letters, digits or '-', starting alphanumeric")


def validate_priority(priority: int, field: str = "priority") -> None:
    """Raise InvalidArgument unless `priority` is within the allowed range."""
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidArgument(field, f"must be between {MIN_PRIORITY} and {MAX_PRIORITY}")


@dataclass(frozen=True)
class NodeSpec:
    """A node as an operator describes it when registering a shard or adding a replica."""

    node_id: str
    """Unique across the topology, a lowercase DNS label (e.g. `shard-3-b`)."""
    dsn: str = field(repr=False)
    """How to connect (may hold a password: never logged, see `redact_dsn`)."""
    region: str = ""
    """Free region label (e.g. `eu-west-1`), used for placement and reporting."""

    def validate(self, prefix: str) -> None:
        """Raise InvalidArgument naming `prefix.field` for any bad field."""
        validate_shard_id(self.node_id, f"{prefix}.node_id")
        validate_dsn(self.dsn, f"{prefix}.dsn")
        if self.region and not _REGION_PATTERN.fullmatch(self.region):
            raise InvalidArgument(
                f"{prefix}.region", "must be at most 63 lowercase letters, digits or '-', starting alphanumeric"
            )


@dataclass(frozen=True)
class Node:
    """A database server of a shard."""

    node_id: str
    """Unique across the topology."""
    dsn: str = field(repr=False)
    """Connection string (may hold a password; `redacted_dsn` is safe to show)."""
    region: str
    """Region label."""
    role: NodeRole
    """Primary or replica."""
    health: HealthState = HealthState.UNKNOWN
    """Last health conclusion."""

    @property
    def redacted_dsn(self) -> str:
        """The DSN with its password replaced, safe to log and to show to readers."""
        return redact_dsn(self.dsn)

    @property
    def endpoint(self) -> str:
        """`host:port/dbname`, no credentials."""
        return dsn_endpoint(self.dsn)


@dataclass(frozen=True)
class Shard:
    """A shard: a primary, its replicas, and its place on the ring."""

    shard_id: str
    """Lowercase DNS label."""
    weight: float
    """Relative capacity on the ring."""
    placement_seed: int
    """Part of the shard's ring labels, chosen when it joined (see `ring.choose_placement_seed`)."""
    state: ShardState
    """Joining, active or leaving."""
    nodes: tuple[Node, ...]
    """The primary first, then replicas sorted by node id."""
    preferred_region: str = ""
    """The region its primary should live in ("" when not placed)."""
    replication_mode: ReplicationMode = ReplicationMode.UNMANAGED
    """How its primary waits for replicas."""

    @property
    def primary(self) -> Node:
        """The node taking writes."""
        return self.nodes[0]

    @property
    def replicas(self) -> tuple[Node, ...]:
        """The replicas, sorted by node id."""
        return self.nodes[1:]

    @property
    def ring_member(self) -> RingMember:
        """How the ring sees this shard."""
        return RingMember(self.shard_id, self.weight, self.placement_seed)

    def node(self, node_id: str) -> Node:
        """The node with this id (NotFound NODE_NOT_FOUND)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise NotFound("node", f"{self.shard_id}/{node_id}", reason=Reason.NODE_NOT_FOUND)


def ordered_nodes(nodes: Iterable[Node]) -> tuple[Node, ...]:
    """The primary first, then replicas by id (the order `Shard.nodes` keeps)."""
    listed = list(nodes)
    primaries = [n for n in listed if n.role is NodeRole.PRIMARY]
    replicas = sorted((n for n in listed if n.role is NodeRole.REPLICA), key=lambda n: n.node_id)
    return (*primaries, *replicas)


def validate_key(key: str, field: str) -> None:
    """Raise InvalidArgument unless `key` (an account id) can be placed on the ring."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(field, f"must be 1 to {MAX_KEY_LENGTH} characters")
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(field, "must be valid Unicode (no lone surrogates)") from None
