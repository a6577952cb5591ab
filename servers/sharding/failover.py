"""Health tracking of shard nodes and the rules that decide a failover.

Each node is checked every `check_interval`; a check either passes (with the node's WAL
position and, for a replica, its replication lag) or fails. `failure_threshold` failures in a
row mark the node DOWN; a DOWN primary is failed over to the healthy replica that has
replayed the most WAL, so the fewest acknowledged writes are at risk (none with synchronous
replication). The record keeps the measured recovery time: from the first failed check of
the streak to the moment the promoted replica took over.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from servers.mesh.errors import FailedPrecondition, InvalidArgument
from servers.sharding.domain import HealthState, NodeRole, Reason, Shard

MAX_LSN = (1 << 64) - 1
"""PostgreSQL LSNs are unsigned 64-bit WAL byte positions."""
MAX_ERROR_LENGTH = 500
"""Longest check error kept."""

_LSN_TEXT = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str, field: str = "lsn") -> int:
    """An LSN as PostgreSQL prints it (`16/B374D848`) as an integer."""
    match = _LSN_TEXT.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(field, "must be an LSN like 16/B374D848")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    """An integer LSN the way PostgreSQL prints it."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class HealthPolicy:
    """How nodes are checked and when a primary is failed over."""

    check_interval: timedelta = timedelta(seconds=30)
    """Time between two checks of a node."""
    check_timeout: timedelta = timedelta(seconds=5)
    """A check taking longer fails."""
    failure_threshold: int = 3
    """Failed checks in a row that make a node DOWN (and fail over a DOWN primary)."""
    automatic_failover: bool = True
    """Fail over a DOWN primary without an operator."""

    def __post_init__(self) -> None:
        if self.check_interval <= timedelta(0):
            raise InvalidArgument("check_interval", "must be positive")
        if not timedelta(0) < self.check_timeout <= self.check_interval:
            raise InvalidArgument("check_timeout", "must be positive and at most check_interval")
        if not 1 <= self.failure_threshold <= 100:
            raise InvalidArgument("failure_threshold", "must be between 1 and 100")


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one health check of one node."""

    node_id: str
    """The node checked."""
    ok: bool
    """It answered in time, in the expected role (a replica in recovery, a primary not)."""
    checked_at: datetime
    """When the check finished."""
    lsn: int | None = None
    """Primary: current WAL write position; replica: last replayed position."""
    lag_bytes: int | None = None
    """Replica: WAL bytes the primary has and this replica has not replayed."""
    lag: timedelta | None = None
    """Replica: age of the last replayed transaction relative to the primary."""
    error: str = ""
    """Why it failed."""

    def __post_init__(self) -> None:
        if self.lsn is not None and not 0 <= self.lsn <= MAX_LSN:
            raise InvalidArgument("lsn", "must be between 0 and 2^64 - 1")
        if self.lag_bytes is not None and self.lag_bytes < 0:
            raise InvalidArgument("lag_bytes", "must not be negative")
        if self.lag is not None and self.lag < timedelta(0):
            raise InvalidArgument("lag", "must not be negative")


@dataclass(frozen=True)
class NodeHealth:
    """What the checks know about one node."""

    node_id: str
    """The node."""
    state: HealthState = HealthState.UNKNOWN
    """The conclusion so far."""
    consecutive_failures: int = 0
    """Failed checks in a row (0 after a pass)."""
    failing_since: datetime | None = None
    """First failed check of the current streak."""
    last_checked_at: datetime | None = None
    """Last check of any outcome."""
    last_ok_at: datetime | None = None
    """Last passing check."""
    last_error: str = ""
    """Error of the last failed check."""
    lsn: int | None = None
    """WAL position from the last passing check."""
    lag_bytes: int | None = None
    """Replication lag in bytes from the last passing check (replicas)."""
    lag: timedelta | None = None
    """Replication lag in time from the last passing check (replicas)."""

    def record(self, check: CheckResult, policy: HealthPolicy) -> NodeHealth:
        """This node's health after `check`."""
        if check.node_id != self.node_id:
            raise InvalidArgument("node_id", f"check is for {check.node_id!r}, not {self.node_id!r}")
        if check.ok:
            return replace(
                self,
                state=HealthState.HEALTHY,
                consecutive_failures=0,
                failing_since=None,
                last_checked_at=check.checked_at,
                last_ok_at=check.checked_at,
                last_error="",
                lsn=check.lsn,
                lag_bytes=check.lag_bytes,
                lag=check.lag,
            )
        failures = self.consecutive_failures + 1
        return replace(
            self,
            state=HealthState.DOWN if failures >= policy.failure_threshold else HealthState.SUSPECT,
            consecutive_failures=failures,
            failing_since=self.failing_since or check.checked_at,
            last_checked_at=check.checked_at,
            last_error=(check.error or "check failed")[:MAX_ERROR_LENGTH],
        )


def needs_failover(shard: Shard, primary_health: NodeHealth, policy: HealthPolicy) -> bool:
    """True if the shard's primary has failed `failure_threshold` checks in a row."""
    if primary_health.node_id != shard.primary.node_id:
        raise InvalidArgument("node_id", f"{primary_health.node_id!r} is not the primary of {shard.shard_id!r}")
    return policy.automatic_failover and primary_health.consecutive_failures >= policy.failure_threshold


def choose_promotion_target(
    shard: Shard,
    health: Mapping[str, NodeHealth],
    *,
    target_node_id: str = "",
    within: Collection[str] | None = None,
) -> str:
    """The replica to promote: the healthy one that has replayed the most WAL.

    Ties go to the smaller byte lag, then the smaller node id. With `target_node_id` (a manual
    failover) that replica is used, provided it is healthy and no healthy replica is ahead of
    it, since promoting a replica that is behind would drop acknowledged writes. With `within`
    (a region failover), only replicas in those regions are considered.
    """
    candidates = [
        health[n.node_id]
        for n in shard.replicas
        if n.node_id in health
        and health[n.node_id].state is HealthState.HEALTHY
        and (within is None or n.region in within)
    ]
    best = min(candidates, key=_promotion_order, default=None)
    if target_node_id:
        return _check_target(shard, health, target_node_id, best)
    if best is None:
        raise FailedPrecondition(
            f"shard {shard.shard_id!r} has no healthy replica to promote",
            reason=Reason.NO_HEALTHY_REPLICA,
            metadata={"shard_id": shard.shard_id},
        )
    return best.node_id


def _promotion_order(h: NodeHealth) -> tuple[int, int, str]:
    return (-(h.lsn if h.lsn is not None else -1), h.lag_bytes if h.lag_bytes is not None else MAX_LSN, h.node_id)


def _check_target(shard: Shard, health: Mapping[str, NodeHealth], target: str, best: NodeHealth | None) -> str:
    node = shard.node(target)
    if node.role is NodeRole.PRIMARY:
        raise FailedPrecondition(f"{target!r} is already the primary", reason=Reason.ALREADY_PRIMARY)
    chosen = health.get(target)
    if chosen is None or chosen.state is not HealthState.HEALTHY:
        raise FailedPrecondition(
            f"replica {target!r} is not healthy", reason=Reason.REPLICA_UNHEALTHY, metadata={"node_id": target}
        )
    if best is not None and (best.lsn or 0) > (chosen.lsn or 0):
        raise FailedPrecondition(
            f"replica {target!r} is behind {best.node_id!r}; promoting it would lose writes",
            reason=Reason.REPLICA_BEHIND,
            metadata={"node_id": target, "ahead": best.node_id},
        )
    return target


class FailoverTrigger(enum.Enum):
    """Who started a failover."""

    AUTOMATIC = "automatic"
    """The health monitor, after the primary failed `failure_threshold` checks."""
    MANUAL = "manual"
    """An operator, through the `Failover` RPC."""


@dataclass(frozen=True)
class FailoverRecord:
    """One failover, as kept in the failover history."""

    failover_id: str
    """Unique id."""
    shard_id: str
    """The shard."""
    trigger: FailoverTrigger
    """Automatic or manual."""
    old_primary: str
    """Node that was primary."""
    new_primary: str
    """Node promoted."""
    promoted_lsn: int | None
    """WAL position of the promoted replica at its last check before promotion."""
    outage_started_at: datetime
    """First failed check of the primary (automatic) or the request time (manual)."""
    completed_at: datetime
    """When the promoted node was serving and the topology published."""
    topology_version: int
    """The topology version that made it primary."""
    reason: str = ""
    """Operator's note (manual) or the last check error (automatic)."""

    @property
    def recovery_time(self) -> timedelta:
        """How long the shard was without a working primary."""
        return self.completed_at - self.outage_started_at
