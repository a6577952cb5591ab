"""The versioned topology: the shard registry's state, as every credits server follows it.

The topology is a value: every command returns a new `Topology` whose `version` is one more,
and that snapshot is what `WatchTopology` streams. The first shard has nothing to take over
and is ACTIVE at once; later ones join through a rebalance. Shard membership is frozen while
a rebalance runs.

Locating a key: the serving ring (ACTIVE and LEAVING shards) answers, except while a
rebalance runs, when accounts already cut over answer from the target ring (ACTIVE and
JOINING shards), and fenced accounts answer from the serving ring with writes refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property

from servers.mesh.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from servers.sharding.domain import (
    MAX_REPLICAS,
    HealthState,
    Node,
    NodeRole,
    NodeSpec,
    Reason,
    Region,
    RegionState,
    ReplicationMode,
    Shard,
    ShardState,
    ordered_nodes,
    validate_key,
    validate_priority,
    validate_region_id,
)
from servers.sharding.ring import (
    DEFAULT_VNODES_PER_SHARD,
    HashRing,
    choose_placement_seed,
    validate_shard_id,
    validate_weight,
)

MAX_LOCATE_KEYS = 10_000
"""Keys one `LocateKeys` call may ask about."""


@dataclass(frozen=True)
class MigrationRouting:
    """How keys are routed while a rebalance moves accounts between rings."""

    rebalance_id: str
    """The running rebalance."""
    fenced: frozenset[str] = frozenset()
    """Accounts in their cut-over window: reads from the source shard, writes refused."""
    moved: frozenset[str] = frozenset()
    """Accounts already cut over: served by their target shard."""
    fence_unplanned: bool = False
    """Finalising: writes to any other key whose target shard differs are refused too, so no
    account can be created on a shard it is about to leave after the last sweep."""


@dataclass(frozen=True)
class KeyLocation:
    """Where one key lives right now."""

    key: str
    """The key (account id) asked about."""
    shard_id: str
    """The shard serving it."""
    primary: Node
    """That shard's primary."""
    write_fenced: bool
    """True while its writes are refused for a rebalance cut-over (retry shortly)."""


@dataclass(frozen=True)
class Topology:
    """A versioned snapshot of the shard registry; every change gives a new version."""

    version: int = 0
    """Bumped by every change; 0 is the empty registry."""
    shards: tuple[Shard, ...] = ()
    """All registered shards, sorted by id."""
    vnodes_per_shard: int = DEFAULT_VNODES_PER_SHARD
    """Ring points per shard of weight 1; every follower builds its ring with it."""
    migration: MigrationRouting | None = None
    """Routing overrides while a rebalance runs, else None."""
    updated_at: datetime | None = None
    """When this version was made."""
    regions: tuple[Region, ...] = ()
    """Declared regions, by id."""

    @cached_property
    def ring(self) -> HashRing:
        """The serving ring: ACTIVE and LEAVING shards."""
        return HashRing(
            (s.ring_member for s in self.shards if s.state is not ShardState.JOINING),
            vnodes_per_shard=self.vnodes_per_shard,
        )

    @cached_property
    def target_ring(self) -> HashRing:
        """The ring after the pending membership change: ACTIVE and JOINING shards."""
        return HashRing(
            (s.ring_member for s in self.shards if s.state is not ShardState.LEAVING),
            vnodes_per_shard=self.vnodes_per_shard,
        )

    @property
    def has_pending_change(self) -> bool:
        """True if some shard is joining or leaving (a rebalance has work to do)."""
        return any(s.state is not ShardState.ACTIVE for s in self.shards)

    def shard(self, shard_id: str) -> Shard:
        """The shard with this id (NotFound SHARD_NOT_FOUND)."""
        for shard in self.shards:
            if shard.shard_id == shard_id:
                return shard
        raise NotFound("shard", shard_id, reason=Reason.SHARD_NOT_FOUND)

    def region(self, region_id: str, field: str = "region_id") -> Region:
        """The declared region (InvalidArgument for a malformed id, FailedPrecondition UNKNOWN_REGION)."""
        validate_region_id(region_id, field)
        for region in self.regions:
            if region.region_id == region_id:
                return region
        raise FailedPrecondition(
            f"region {region_id!r} is not declared (PutRegion first)",
            reason=Reason.UNKNOWN_REGION,
            metadata={"region_id": region_id},
        )

    def find_node(self, node_id: str) -> tuple[Shard, Node]:
        """The shard and node with this node id (NotFound NODE_NOT_FOUND)."""
        for shard in self.shards:
            for node in shard.nodes:
                if node.node_id == node_id:
                    return shard, node
        raise NotFound("node", node_id, reason=Reason.NODE_NOT_FOUND)

    def locate(self, key: str) -> KeyLocation:
        """Where `key` lives now (FailedPrecondition NO_SHARDS before any shard is serving)."""
        return self.locate_many([key])[0]

    def locate_many(self, keys: Sequence[str]) -> list[KeyLocation]:
        """`locate` for a batch, using the vectorised ring lookup."""
        if len(keys) > MAX_LOCATE_KEYS:
            raise InvalidArgument("keys", f"at most {MAX_LOCATE_KEYS} keys per call")
        for i, key in enumerate(keys):
            validate_key(key, f"keys[{i}]")
        if not len(self.ring):
            raise FailedPrecondition("no shard is serving yet", reason=Reason.NO_SHARDS)
        serving = self.ring.locate_many(keys)
        routing = self.migration
        if routing is None:
            return [self._location(key, shard_id, False) for key, shard_id in zip(keys, serving, strict=True)]
        target = self.target_ring.locate_many(keys)
        located = []
        for key, now, then in zip(keys, serving, target, strict=True):
            if key in routing.moved:
                located.append(self._location(key, then, False))
            else:
                fenced = key in routing.fenced or (routing.fence_unplanned and now != then)
                located.append(self._location(key, now, fenced))
        return located

    def _location(self, key: str, shard_id: str, fenced: bool) -> KeyLocation:
        return KeyLocation(key, shard_id, self._primaries[shard_id], fenced)

    @cached_property
    def _primaries(self) -> dict[str, Node]:
        return {s.shard_id: s.primary for s in self.shards}

    # Commands. Each returns the next version; `now` stamps it.

    def register_shard(
        self,
        shard_id: str,
        primary: NodeSpec,
        replicas: Sequence[NodeSpec] = (),
        *,
        weight: float = 1.0,
        now: datetime,
    ) -> Topology:
        """Add a shard: ACTIVE if it is the first, else JOINING until a rebalance fills it.

        Its placement seed is chosen against the target ring, so the ring it joins stays even.
        """
        validate_shard_id(shard_id)
        validate_weight(weight)
        primary.validate("primary")
        if len(replicas) > MAX_REPLICAS:
            raise FailedPrecondition(
                f"a shard may have at most {MAX_REPLICAS} replicas", reason=Reason.TOO_MANY_REPLICAS
            )
        for i, spec in enumerate(replicas):
            spec.validate(f"replicas[{i}]")
        self._refuse_during_rebalance()
        if any(s.shard_id == shard_id for s in self.shards):
            raise AlreadyExists("shard", shard_id, reason=Reason.SHARD_EXISTS)
        self._refuse_taken_node_ids([primary, *replicas])
        seed = choose_placement_seed(self.target_ring, shard_id, weight)
        state = ShardState.ACTIVE if not len(self.ring) else ShardState.JOINING
        nodes = (
            Node(primary.node_id, primary.dsn, primary.region, NodeRole.PRIMARY),
            *(Node(r.node_id, r.dsn, r.region, NodeRole.REPLICA) for r in replicas),
        )
        shard = Shard(shard_id, weight, seed, state, ordered_nodes(nodes))
        return self._next(now, _sorted_shards([*self.shards, shard]))

    def remove_shard(self, shard_id: str, *, now: datetime) -> Topology:
        """Take a shard away: a JOINING one at once, an ACTIVE one by marking it LEAVING."""
        shard = self.shard(shard_id)
        self._refuse_during_rebalance()
        if shard.state is ShardState.LEAVING:
            raise FailedPrecondition(f"shard {shard_id!r} is already leaving", reason=Reason.SHARD_ALREADY_LEAVING)
        if shard.state is ShardState.JOINING:
            return self._next(now, tuple(s for s in self.shards if s.shard_id != shard_id))
        # Leaving needs somewhere to go: another shard that is active or joining.
        if not any(s.state is not ShardState.LEAVING and s.shard_id != shard_id for s in self.shards):
            raise FailedPrecondition(
                f"shard {shard_id!r} is the last shard its accounts could live on; register another one first",
                reason=Reason.LAST_SHARD,
            )
        return self._with_shard(replace(shard, state=ShardState.LEAVING), now)

    def add_replica(self, shard_id: str, replica: NodeSpec, *, now: datetime) -> Topology:
        """Add a replica to a shard (it takes reads once a health check passes)."""
        replica.validate("replica")
        shard = self.shard(shard_id)
        if len(shard.replicas) >= MAX_REPLICAS:
            raise FailedPrecondition(
                f"shard {shard_id!r} already has {MAX_REPLICAS} replicas", reason=Reason.TOO_MANY_REPLICAS
            )
        self._refuse_taken_node_ids([replica])
        node = Node(replica.node_id, replica.dsn, replica.region, NodeRole.REPLICA)
        return self._with_shard(replace(shard, nodes=ordered_nodes((*shard.nodes, node))), now)

    def remove_replica(self, shard_id: str, node_id: str, *, now: datetime) -> Topology:
        """Remove a replica (the primary cannot be removed: fail over first)."""
        shard = self.shard(shard_id)
        node = shard.node(node_id)
        if node.role is NodeRole.PRIMARY:
            raise FailedPrecondition(
                f"{node_id!r} is the primary of {shard_id!r}; fail over before removing it",
                reason=Reason.CANNOT_REMOVE_PRIMARY,
            )
        nodes = tuple(n for n in shard.nodes if n.node_id != node_id)
        return self._with_shard(replace(shard, nodes=nodes), now)

    def with_node_health(self, node_id: str, health: HealthState, *, now: datetime) -> Topology:
        """Record a node's new health state; the same topology (no new version) if unchanged."""
        shard, node = self.find_node(node_id)
        if node.health is health:
            return self
        nodes = tuple(replace(n, health=health) if n.node_id == node_id else n for n in shard.nodes)
        return self._with_shard(replace(shard, nodes=nodes), now)

    def promote(self, shard_id: str, node_id: str, *, now: datetime) -> Topology:
        """Make a replica the primary; the old primary stays listed as a DOWN replica.

        It is kept DOWN (never routed to) because a failed-over primary has diverged and must
        be rebuilt (pg_rewind or a fresh base backup) before it can follow the new primary.
        """
        shard = self.shard(shard_id)
        chosen = shard.node(node_id)
        if chosen.role is NodeRole.PRIMARY:
            raise FailedPrecondition(f"{node_id!r} is already the primary", reason=Reason.ALREADY_PRIMARY)
        old = shard.primary
        nodes = (
            replace(chosen, role=NodeRole.PRIMARY),
            replace(old, role=NodeRole.REPLICA, health=HealthState.DOWN),
            *(n for n in shard.replicas if n.node_id != node_id),
        )
        return self._with_shard(replace(shard, nodes=ordered_nodes(nodes)), now)

    def put_region(self, region_id: str, priority: int, *, now: datetime) -> Topology:
        """Declare a region or change its priority; a STANDBY region declared again is ACTIVE."""
        validate_region_id(region_id, "region_id")
        validate_priority(priority)
        region = Region(region_id, priority, RegionState.ACTIVE)
        if region in self.regions:
            return self
        others = [r for r in self.regions if r.region_id != region_id]
        return replace(self._next(now), regions=tuple(sorted([*others, region], key=lambda r: r.region_id)))

    def with_region_states(self, states: dict[str, RegionState], *, now: datetime) -> Topology:
        """Set region states (unknown ids ignored); the same topology if nothing changes."""
        regions = tuple(replace(r, state=states.get(r.region_id, r.state)) for r in self.regions)
        if regions == self.regions:
            return self
        return replace(self._next(now), regions=regions)

    def place_shard(self, shard_id: str, preferred_region: str, *, now: datetime) -> Topology:
        """Set the region a shard's primary should live in ("" clears it); the region must be declared."""
        shard = self.shard(shard_id)
        if preferred_region:
            self.region(preferred_region, "preferred_region")
        if shard.preferred_region == preferred_region:
            return self
        return self._with_shard(replace(shard, preferred_region=preferred_region), now)

    def with_replication_mode(self, shard_id: str, mode: ReplicationMode, *, now: datetime) -> Topology:
        """Record a shard's replication mode (the caller applies it to the primary)."""
        shard = self.shard(shard_id)
        if shard.replication_mode is mode:
            return self
        return self._with_shard(replace(shard, replication_mode=mode), now)

    def with_migration(self, routing: MigrationRouting | None, *, now: datetime) -> Topology:
        """Set (or clear) the rebalance routing overrides; unchanged routing keeps the version."""
        if routing == self.migration:
            return self
        if routing is not None and not self.has_pending_change:
            raise FailedPrecondition("no shard is joining or leaving", reason=Reason.NOTHING_TO_REBALANCE)
        return replace(self._next(now), migration=routing)

    def complete_migration(self, rebalance_id: str, *, now: datetime) -> Topology:
        """Switch to the target ring: JOINING shards become ACTIVE, LEAVING shards are gone."""
        if self.migration is None or self.migration.rebalance_id != rebalance_id:
            raise FailedPrecondition(
                f"rebalance {rebalance_id!r} is not the one running", reason=Reason.NO_REBALANCE_IN_PROGRESS
            )
        shards = tuple(replace(s, state=ShardState.ACTIVE) for s in self.shards if s.state is not ShardState.LEAVING)
        return replace(self._next(now, shards), migration=None)

    def _with_shard(self, shard: Shard, now: datetime) -> Topology:
        shards = tuple(shard if s.shard_id == shard.shard_id else s for s in self.shards)
        return self._next(now, shards)

    def _next(self, now: datetime, shards: tuple[Shard, ...] | None = None) -> Topology:
        # `replace` builds a fresh instance, so the cached rings of this version are not carried.
        return replace(self, version=self.version + 1, updated_at=now, shards=self.shards if shards is None else shards)

    def _refuse_during_rebalance(self) -> None:
        if self.migration is not None:
            raise FailedPrecondition(
                f"rebalance {self.migration.rebalance_id!r} is running; shard membership is frozen",
                reason=Reason.REBALANCE_IN_PROGRESS,
                metadata={"rebalance_id": self.migration.rebalance_id},
            )

    def _refuse_taken_node_ids(self, specs: Iterable[NodeSpec]) -> None:
        taken = {n.node_id for s in self.shards for n in s.nodes}
        for spec in specs:
            if spec.node_id in taken:
                raise AlreadyExists("node", spec.node_id, reason=Reason.NODE_EXISTS)
            taken.add(spec.node_id)


def _sorted_shards(shards: Iterable[Shard]) -> tuple[Shard, ...]:
    return tuple(sorted(shards, key=lambda s: s.shard_id))
