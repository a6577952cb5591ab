"""Regions as failure domains: replication settings per mode, health scores, region states, RPO promises.

Pure rules (no SQL, no gRPC). A region's state follows its nodes' checks: DEGRADED as soon as
one of its nodes is not HEALTHY, ACTIVE again when all are, and lost when every node in it has
failed the threshold of checks in a row (the monitor then fails the region over, which marks
it STANDBY). A node that fails fewer checks in a row than the threshold (flapping) degrades
its region's score but never makes it lost.

Health score of a node, 0 to 1: 0 when DOWN; otherwise the mean of three parts, each 0 to 1:
connectivity (the last check passed), the pass rate over the last `SCORE_WINDOW` checks
(error rate), and freshness (1 minus the replay lag over the RPO objective, replicas only).
A shard's and a region's score are the mean of their nodes'.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from servers.mesh.errors import FailedPrecondition
from servers.sharding.domain import (
    HealthState,
    Node,
    NodeRole,
    Reason,
    Region,
    RegionState,
    ReplicationMode,
    Shard,
)
from servers.sharding.failover import FailoverRecord, FailoverTrigger, NodeHealth

SCORE_WINDOW = 10
"""Checks the error-rate part of a health score looks back over."""


def quote_standby(name: str) -> str:
    """A standby name as `synchronous_standby_names` takes it (double-quoted, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def standby_names(mode: ReplicationMode, primary: Node, replicas: Sequence[Node]) -> str:
    """The primary's `synchronous_standby_names` for `mode`, over the given replicas.

    Replicas stream under their node id as `application_name` (the registry's convention).
    SYNCHRONOUS: `ANY k (all)` with k one more than the replicas in the primary's region (at
    most all), so k acknowledgements always include another region's replica. SEMI_SYNCHRONOUS:
    `ANY 1 (same-region replicas)`. ASYNCHRONOUS, or no replica to wait for: "".
    """
    if mode in (ReplicationMode.ASYNCHRONOUS, ReplicationMode.UNMANAGED) or not replicas:
        return ""
    local = [r for r in replicas if r.region == primary.region]
    if mode is ReplicationMode.SEMI_SYNCHRONOUS:
        chosen, quorum = local, 1
        if not chosen:
            return ""
    else:
        chosen, quorum = list(replicas), min(len(replicas), len(local) + 1)
    names = ", ".join(quote_standby(r.node_id) for r in sorted(chosen, key=lambda n: n.node_id))
    return f"ANY {quorum} ({names})"


def check_mode_possible(shard: Shard, mode: ReplicationMode) -> None:
    """Refuse a mode the shard's replicas cannot give (FailedPrecondition NO_REPLICAS / NO_SAME_REGION_REPLICA)."""
    if not shard.replicas:
        raise FailedPrecondition(
            f"shard {shard.shard_id!r} has no replicas; add one before choosing a replication mode",
            reason=Reason.NO_REPLICAS,
            metadata={"shard_id": shard.shard_id},
        )
    if mode is ReplicationMode.SEMI_SYNCHRONOUS and not any(r.region == shard.primary.region for r in shard.replicas):
        raise FailedPrecondition(
            f"shard {shard.shard_id!r} has no replica in its primary's region {shard.primary.region!r}",
            reason=Reason.NO_SAME_REGION_REPLICA,
            metadata={"shard_id": shard.shard_id, "region_id": shard.primary.region},
        )


def waitable_replicas(shard: Shard, regions: Mapping[str, Region]) -> list[Node]:
    """Replicas a primary may wait for: not DOWN and not in a STANDBY region (a lost region would block commits)."""
    return [
        r
        for r in shard.replicas
        if r.health is not HealthState.DOWN
        and not (r.region in regions and regions[r.region].state is RegionState.STANDBY)
    ]


def node_score(health: NodeHealth, recent: Sequence[bool], *, rpo_objective: timedelta) -> float:
    """A node's health score, 0 to 1 (see the module docstring); `recent` holds the last checks' outcomes."""
    if health.state is HealthState.DOWN:
        return 0.0
    if health.last_checked_at is None:
        return 1.0 if health.state is HealthState.HEALTHY else 0.0
    connectivity = 1.0 if health.consecutive_failures == 0 else 0.0
    window = list(recent)[-SCORE_WINDOW:]
    pass_rate = sum(window) / len(window) if window else connectivity
    freshness = 1.0
    if health.lag is not None and rpo_objective > timedelta(0):
        freshness = max(0.0, 1.0 - health.lag / rpo_objective)
    return round((connectivity + pass_rate + freshness) / 3, 4)


def mean(values: Iterable[float], empty: float = 1.0) -> float:
    """The mean of the values (`empty` for none)."""
    listed = list(values)
    return sum(listed) / len(listed) if listed else empty


def region_states(
    regions: Sequence[Region], shards: Sequence[Shard], health: Mapping[str, NodeHealth], threshold: int
) -> tuple[dict[str, RegionState], list[str]]:
    """Each non-STANDBY region's state from its nodes' checks, and the regions now lost.

    A region is lost when it has nodes, at least one primary, and every node has failed
    `threshold` checks in a row. STANDBY regions keep their state (only PutRegion revives them).
    """
    states: dict[str, RegionState] = {}
    lost: list[str] = []
    for region in regions:
        if region.state is RegionState.STANDBY:
            continue
        nodes = [n for s in shards for n in s.nodes if n.region == region.region_id]
        known = [health[n.node_id] for n in nodes if n.node_id in health]
        if not known:
            states[region.region_id] = region.state
            continue
        has_primary = any(s.primary.region == region.region_id for s in shards)
        if has_primary and len(known) == len(nodes) and all(h.consecutive_failures >= threshold for h in known):
            lost.append(region.region_id)
        healthy = all(h.state is HealthState.HEALTHY for h in known)
        states[region.region_id] = RegionState.ACTIVE if healthy else RegionState.DEGRADED
    return states, lost


def target_regions(regions: Sequence[Region], failed: str, target: str = "") -> list[str]:
    """Regions to promote in, in order: `target` alone if given, else every other non-STANDBY region by priority."""
    if target:
        return [target]
    ordered = sorted(regions, key=lambda r: (r.priority, r.region_id))
    return [r.region_id for r in ordered if r.region_id != failed and r.state is not RegionState.STANDBY]


def promotion_region(shard: Shard, health: Mapping[str, NodeHealth], candidates: Sequence[str]) -> str | None:
    """The first of `candidates` holding a HEALTHY replica of the shard, or None."""
    for region_id in candidates:
        for node in shard.replicas:
            known = health.get(node.node_id)
            if node.region == region_id and known is not None and known.state is HealthState.HEALTHY:
                return region_id
    return None


def promised_rpo(
    shard: Shard, health: Mapping[str, NodeHealth], regions: Mapping[str, Region]
) -> tuple[timedelta, int | None]:
    """The recovery point a region loss would cost now: (time, bytes) of the freshest other-region replica.

    Zero under SYNCHRONOUS replication (every commit waits for another region). Otherwise the
    replay lag of the healthy replica outside the primary's region that is furthest ahead (the
    one a region failover would promote); with no such replica, a region loss has no recovery
    point at all, reported as `timedelta.max`.
    """
    if shard.replication_mode is ReplicationMode.SYNCHRONOUS:
        return timedelta(0), 0
    remote = [
        health[r.node_id]
        for r in waitable_replicas(shard, regions)
        if r.region != shard.primary.region
        and r.node_id in health
        and health[r.node_id].state is HealthState.HEALTHY
        and health[r.node_id].lag_bytes is not None
    ]
    if not remote:
        return timedelta.max, None
    best = min(remote, key=lambda h: h.lag_bytes if h.lag_bytes is not None else 0)
    return best.lag or timedelta(0), best.lag_bytes


@dataclass(frozen=True)
class ShardReading:
    """One shard's disaster-recovery reading."""

    shard: Shard
    """The shard."""
    scores: dict[str, float]
    """Health score per node id."""
    rpo: timedelta
    """Promised RPO (`promised_rpo`); `timedelta.max` when unbounded."""
    lag_bytes: int | None
    """Replay lag of the freshest other-region replica."""
    breached: bool
    """The promised RPO is above the objective."""

    @property
    def score(self) -> float:
        """Mean node score."""
        return mean(self.scores.values())


class RegionFailoverStep(enum.Enum):
    """The steps of a region failover, in order."""

    DETECT = "detect"
    MARK_STANDBY = "mark_standby"
    PROMOTE = "promote"
    PUBLISH = "publish"
    VERIFY_LAG = "verify_lag"
    CONFIRM = "confirm"


@dataclass(frozen=True)
class StepTiming:
    """One step of a region failover as it ran."""

    step: RegionFailoverStep
    """Which step."""
    started_at: datetime
    """When it started."""
    duration: timedelta
    """How long it took."""
    detail: str = ""
    """What it did."""


@dataclass(frozen=True)
class RegionFailoverRecord:
    """A region failover, as kept in its history."""

    region_failover_id: str
    """Unique id."""
    region_id: str
    """The region failed over."""
    trigger: FailoverTrigger
    """Automatic or manual."""
    planned: bool
    """A fenced, caught-up switchover."""
    started_at: datetime
    """First failed check (automatic) or request time (manual)."""
    completed_at: datetime
    """When every new primary was confirmed."""
    steps: tuple[StepTiming, ...]
    """Steps in order."""
    failovers: tuple[FailoverRecord, ...] = ()
    """The shard failovers it made."""
    reason: str = ""
    """Operator's reason or what the checks saw."""

    @property
    def recovery_time(self) -> timedelta:
        """From start to confirmation."""
        return self.completed_at - self.started_at


@dataclass(frozen=True)
class DivergenceRecord:
    """What a deposed primary committed that its successor never received (RPO incurred)."""

    shard_id: str
    """The shard."""
    node_id: str
    """The deposed primary."""
    from_lsn: int
    """The successor's timeline switch point."""
    to_lsn: int
    """The deposed primary's last WAL position."""
    transactions: int
    """Commits in between."""
    detected_at: datetime
    """When it was measured."""


def primaries_in(shards: Iterable[Shard], region_id: str) -> list[Shard]:
    """Shards whose primary lives in the region."""
    return [s for s in shards if s.primary.region == region_id and s.primary.role is NodeRole.PRIMARY]
