"""Sharding values to and from their `shieldx.sharding.v1` messages (both directions, one place).

The server turns domain values into messages; topology followers (`follower.py`) turn the
streamed `Topology` back into the domain `Topology`, so both sides build the same ring.
DSNs are redacted everywhere except in the topology stream, which the followers connect with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, timedelta

from servers.mesh.timestamps import duration, timestamp
from servers.sharding.domain import (
    HealthState,
    Node,
    NodeRole,
    NodeSpec,
    Region,
    RegionState,
    ReplicationMode,
    Shard,
    ShardState,
)
from servers.sharding.failover import FailoverRecord, FailoverTrigger, NodeHealth, format_lsn
from servers.sharding.rebalance import AccountMove, AccountProgress, AccountState, RebalancePhase
from servers.sharding.regions import DivergenceRecord, RegionFailoverRecord, RegionFailoverStep, ShardReading
from servers.sharding.ring import RingStats
from servers.sharding.store import RebalanceSummary
from servers.sharding.topology import KeyLocation, MigrationRouting, Topology
from shieldx.sharding.v1 import sharding_pb2 as pb

ROLES: Mapping[NodeRole, pb.NodeRole.ValueType] = {
    NodeRole.PRIMARY: pb.NODE_ROLE_PRIMARY,
    NodeRole.REPLICA: pb.NODE_ROLE_REPLICA,
}
HEALTH: Mapping[HealthState, pb.HealthState.ValueType] = {
    HealthState.UNKNOWN: pb.HEALTH_STATE_UNCHECKED,
    HealthState.HEALTHY: pb.HEALTH_STATE_HEALTHY,
    HealthState.SUSPECT: pb.HEALTH_STATE_SUSPECT,
    HealthState.DOWN: pb.HEALTH_STATE_DOWN,
}
SHARD_STATES: Mapping[ShardState, pb.ShardState.ValueType] = {
    ShardState.JOINING: pb.SHARD_STATE_JOINING,
    ShardState.ACTIVE: pb.SHARD_STATE_ACTIVE,
    ShardState.LEAVING: pb.SHARD_STATE_LEAVING,
}
TRIGGERS: Mapping[FailoverTrigger, pb.FailoverTrigger.ValueType] = {
    FailoverTrigger.AUTOMATIC: pb.FAILOVER_TRIGGER_AUTOMATIC,
    FailoverTrigger.MANUAL: pb.FAILOVER_TRIGGER_MANUAL,
}
PHASES: Mapping[RebalancePhase, pb.RebalancePhase.ValueType] = {
    RebalancePhase.RUNNING: pb.REBALANCE_PHASE_RUNNING,
    RebalancePhase.FINALIZING: pb.REBALANCE_PHASE_FINALIZING,
    RebalancePhase.COMPLETED: pb.REBALANCE_PHASE_COMPLETED,
}
ACCOUNT_STATES: Mapping[AccountState, pb.AccountMoveState.ValueType] = {
    AccountState.PENDING: pb.ACCOUNT_MOVE_STATE_PENDING,
    AccountState.COPYING: pb.ACCOUNT_MOVE_STATE_COPYING,
    AccountState.VERIFYING: pb.ACCOUNT_MOVE_STATE_VERIFYING,
    AccountState.FENCED: pb.ACCOUNT_MOVE_STATE_FENCED,
    AccountState.CUT_OVER: pb.ACCOUNT_MOVE_STATE_CUT_OVER,
    AccountState.DONE: pb.ACCOUNT_MOVE_STATE_DONE,
    AccountState.FAILED: pb.ACCOUNT_MOVE_STATE_FAILED,
}


REGION_STATES: Mapping[RegionState, pb.RegionState.ValueType] = {
    RegionState.ACTIVE: pb.REGION_STATE_ACTIVE,
    RegionState.DEGRADED: pb.REGION_STATE_DEGRADED,
    RegionState.STANDBY: pb.REGION_STATE_STANDBY,
}
REPLICATION_MODES: Mapping[ReplicationMode, pb.ReplicationMode.ValueType] = {
    ReplicationMode.UNMANAGED: pb.REPLICATION_MODE_UNSPECIFIED,
    ReplicationMode.SYNCHRONOUS: pb.REPLICATION_MODE_SYNCHRONOUS,
    ReplicationMode.SEMI_SYNCHRONOUS: pb.REPLICATION_MODE_SEMI_SYNCHRONOUS,
    ReplicationMode.ASYNCHRONOUS: pb.REPLICATION_MODE_ASYNCHRONOUS,
}


REGION_FAILOVER_STEPS: Mapping[RegionFailoverStep, pb.RegionFailoverStep.ValueType] = {
    RegionFailoverStep.DETECT: pb.REGION_FAILOVER_STEP_DETECT,
    RegionFailoverStep.MARK_STANDBY: pb.REGION_FAILOVER_STEP_MARK_STANDBY,
    RegionFailoverStep.PROMOTE: pb.REGION_FAILOVER_STEP_PROMOTE,
    RegionFailoverStep.PUBLISH: pb.REGION_FAILOVER_STEP_PUBLISH,
    RegionFailoverStep.VERIFY_LAG: pb.REGION_FAILOVER_STEP_VERIFY_LAG,
    RegionFailoverStep.CONFIRM: pb.REGION_FAILOVER_STEP_CONFIRM,
}


class UnsupportedTopology(ValueError):
    """A streamed topology this code cannot follow (an unknown hash scheme or enum value)."""


def node_spec(message: pb.NodeSpec) -> NodeSpec:
    """The domain `NodeSpec` of a request's node (validated later, with field paths)."""
    return NodeSpec(message.node_id, message.dsn, message.region)


def node_message(node: Node, *, redact: bool = True) -> pb.Node:
    """A node, its DSN redacted unless told otherwise."""
    return pb.Node(
        node_id=node.node_id,
        role=ROLES[node.role],
        dsn=node.redacted_dsn if redact else node.dsn,
        endpoint=node.endpoint,
        region=node.region,
        health=HEALTH[node.health],
    )


def shard_message(shard: Shard, *, redact: bool = True) -> pb.Shard:
    """A shard with its nodes, primary first."""
    return pb.Shard(
        shard_id=shard.shard_id,
        weight=shard.weight,
        placement_seed=shard.placement_seed,
        state=SHARD_STATES[shard.state],
        nodes=[node_message(n, redact=redact) for n in shard.nodes],
        preferred_region=shard.preferred_region,
        replication_mode=REPLICATION_MODES[shard.replication_mode],
    )


def region_message(region: Region) -> pb.Region:
    """A declared region."""
    return pb.Region(region_id=region.region_id, priority=region.priority, state=REGION_STATES[region.state])


def topology_message(topology: Topology, *, redact: bool = False) -> pb.Topology:
    """The full topology (unredacted by default: this is what followers connect with)."""
    message = pb.Topology(
        version=topology.version,
        shards=[shard_message(s, redact=redact) for s in topology.shards],
        vnodes_per_shard=topology.vnodes_per_shard,
        hash_scheme=pb.HASH_SCHEME_CRC32_FMIX32,
        regions=[region_message(r) for r in topology.regions],
    )
    if topology.migration is not None:
        routing = topology.migration
        message.migration.CopyFrom(
            pb.Migration(
                rebalance_id=routing.rebalance_id,
                fenced_account_ids=sorted(routing.fenced),
                moved_account_ids=sorted(routing.moved),
                fence_unplanned=routing.fence_unplanned,
            )
        )
    if topology.updated_at is not None:
        message.update_time.CopyFrom(timestamp(topology.updated_at))
    return message


def topology_from_message(message: pb.Topology) -> Topology:
    """The domain topology of a streamed one (UnsupportedTopology if it cannot be followed)."""
    if message.hash_scheme != pb.HASH_SCHEME_CRC32_FMIX32:
        raise UnsupportedTopology(f"hash scheme {message.hash_scheme} is not CRC32_FMIX32")
    shards = tuple(_shard_from_message(s) for s in message.shards)
    migration = None
    if message.HasField("migration"):
        migration = MigrationRouting(
            rebalance_id=message.migration.rebalance_id,
            fenced=frozenset(message.migration.fenced_account_ids),
            moved=frozenset(message.migration.moved_account_ids),
            fence_unplanned=message.migration.fence_unplanned,
        )
    return Topology(
        version=message.version,
        shards=tuple(sorted(shards, key=lambda s: s.shard_id)),
        vnodes_per_shard=message.vnodes_per_shard,
        migration=migration,
        updated_at=message.update_time.ToDatetime(UTC) if message.HasField("update_time") else None,
        regions=tuple(_region_from_message(r) for r in message.regions),
    )


def _region_from_message(message: pb.Region) -> Region:
    states = {v: k for k, v in REGION_STATES.items()}
    if message.state not in states:
        raise UnsupportedTopology(f"region {message.region_id!r} has unknown state {message.state}")
    return Region(message.region_id, message.priority, states[message.state])


def _shard_from_message(message: pb.Shard) -> Shard:
    states = {v: k for k, v in SHARD_STATES.items()}
    if message.state not in states:
        raise UnsupportedTopology(f"shard {message.shard_id!r} has unknown state {message.state}")
    nodes = tuple(_node_from_message(n) for n in message.nodes)
    modes = {v: k for k, v in REPLICATION_MODES.items()}
    return Shard(
        message.shard_id,
        message.weight,
        message.placement_seed,
        states[message.state],
        nodes,
        message.preferred_region,
        modes.get(message.replication_mode, ReplicationMode.UNMANAGED),
    )


def _node_from_message(message: pb.Node) -> Node:
    roles = {v: k for k, v in ROLES.items()}
    health = {v: k for k, v in HEALTH.items()}
    if message.role not in roles:
        raise UnsupportedTopology(f"node {message.node_id!r} has unknown role {message.role}")
    return Node(
        message.node_id,
        message.dsn,
        message.region,
        roles[message.role],
        health.get(message.health, HealthState.UNKNOWN),
    )


def locate_response(topology: Topology, locations: Sequence[KeyLocation]) -> pb.LocateKeysResponse:
    """Where each key lives, from `topology`.

    Each shard's primary endpoint is worked out once per call, not once per key: parsing a DSN
    costs more than locating a key.
    """
    primaries = {s.shard_id: (s.primary.node_id, s.primary.endpoint) for s in topology.shards}
    response = pb.LocateKeysResponse(topology_version=topology.version)
    add = response.locations.add
    for location in locations:
        node_id, endpoint = primaries[location.shard_id]
        add(
            key=location.key,
            shard_id=location.shard_id,
            primary_node_id=node_id,
            primary_endpoint=endpoint,
            write_fenced=location.write_fenced,
        )
    return response


def ring_stats_message(stats: RingStats, version: int) -> pb.GetRingStatsResponse:
    """Ring statistics."""
    return pb.GetRingStatsResponse(
        shards=[
            pb.ShardShare(
                shard_id=s.shard_id,
                weight=s.weight,
                points=s.points,
                load_share=s.load_share,
                target_share=s.target_share,
                load_ratio=s.load_ratio,
            )
            for s in stats.shards
        ],
        total_points=stats.total_points,
        vnodes_per_shard=stats.vnodes_per_shard,
        max_load_ratio=stats.max_load_ratio,
        topology_version=version,
    )


def failover_message(record: FailoverRecord) -> pb.FailoverRecord:
    """One failover of the history."""
    message = pb.FailoverRecord(
        failover_id=record.failover_id,
        shard_id=record.shard_id,
        trigger=TRIGGERS[record.trigger],
        old_primary_node_id=record.old_primary,
        new_primary_node_id=record.new_primary,
        outage_start_time=timestamp(record.outage_started_at),
        complete_time=timestamp(record.completed_at),
        recovery_time=duration(record.recovery_time),
        topology_version=record.topology_version,
        reason=record.reason,
    )
    if record.promoted_lsn is not None:
        message.promoted_lsn = record.promoted_lsn
    return message


def node_health_message(node: Node, health: NodeHealth) -> pb.NodeHealth:
    """What the checks know about one node."""
    message = pb.NodeHealth(
        node_id=node.node_id,
        role=ROLES[node.role],
        state=HEALTH[health.state],
        consecutive_failures=health.consecutive_failures,
        last_error=health.last_error,
    )
    if health.failing_since is not None:
        message.failing_since_time.CopyFrom(timestamp(health.failing_since))
    if health.last_checked_at is not None:
        message.last_check_time.CopyFrom(timestamp(health.last_checked_at))
    if health.last_ok_at is not None:
        message.last_ok_time.CopyFrom(timestamp(health.last_ok_at))
    if health.lsn is not None:
        message.lsn = health.lsn
        message.lsn_text = format_lsn(health.lsn)
    if node.role is NodeRole.REPLICA:
        if health.lag_bytes is not None:
            message.lag_bytes = health.lag_bytes
        if health.lag is not None:
            message.lag.CopyFrom(duration(health.lag))
    return message


def region_failover_message(record: RegionFailoverRecord) -> pb.RegionFailover:
    """A region failover with its steps and shard failovers."""
    return pb.RegionFailover(
        region_failover_id=record.region_failover_id,
        region_id=record.region_id,
        trigger=TRIGGERS[record.trigger],
        planned=record.planned,
        failovers=[failover_message(f) for f in record.failovers],
        steps=[
            pb.RegionFailoverStepTiming(
                step=REGION_FAILOVER_STEPS[t.step],
                start_time=timestamp(t.started_at),
                duration=duration(t.duration),
                detail=t.detail,
            )
            for t in record.steps
        ],
        start_time=timestamp(record.started_at),
        complete_time=timestamp(record.completed_at),
        recovery_time=duration(record.recovery_time),
        reason=record.reason,
    )


def dr_status_message(
    topology: Topology,
    readings: Sequence[ShardReading],
    region_scores: Mapping[str, float],
    recent: Sequence[RegionFailoverRecord],
    rpo_objective: timedelta,
) -> pb.GetDrStatusResponse:
    """The disaster-recovery status."""
    regions = sorted(topology.regions, key=lambda r: (r.priority, r.region_id))
    message = pb.GetDrStatusResponse(
        regions=[
            pb.RegionStatus(
                region=region_message(r),
                health_score=region_scores.get(r.region_id, 1.0),
                primaries=sum(1 for s in topology.shards if s.primary.region == r.region_id),
                nodes=sum(1 for s in topology.shards for n in s.nodes if n.region == r.region_id),
            )
            for r in regions
        ],
        recent_region_failovers=[region_failover_message(r) for r in recent],
        rpo_objective=duration(rpo_objective),
        topology_version=topology.version,
    )
    for reading in readings:
        shard = reading.shard
        status = message.shards.add(
            shard_id=shard.shard_id,
            primary_region=shard.primary.region,
            preferred_region=shard.preferred_region,
            replication_mode=REPLICATION_MODES[shard.replication_mode],
            health_score=reading.score,
            rpo_objective_breached=reading.breached,
        )
        for node in shard.nodes:
            status.nodes.add(node_id=node.node_id, region=node.region, score=reading.scores[node.node_id])
        if reading.lag_bytes is not None:
            status.cross_region_lag_bytes = reading.lag_bytes
        if reading.rpo != timedelta.max:
            status.promised_rpo.CopyFrom(duration(reading.rpo))
    return message


def divergence_message(record: DivergenceRecord) -> pb.Divergence:
    """What a deposed primary had that its successor never received."""
    return pb.Divergence(
        shard_id=record.shard_id,
        node_id=record.node_id,
        from_lsn=record.from_lsn,
        to_lsn=record.to_lsn,
        lsn_range=f"{format_lsn(record.from_lsn)}-{format_lsn(record.to_lsn)}",
        transactions=record.transactions,
        detect_time=timestamp(record.detected_at),
    )


def move_message(move: AccountMove) -> pb.AccountMove:
    """One account changing shards."""
    return pb.AccountMove(
        account_id=move.account_id, source_shard_id=move.source_shard, target_shard_id=move.target_shard
    )


def failed_move_message(progress: AccountProgress) -> pb.FailedAccountMove:
    """One account whose move failed, with its last error."""
    return pb.FailedAccountMove(move=move_message(progress.move), attempts=progress.attempts, error=progress.last_error)


def rebalance_message(summary: RebalanceSummary) -> pb.Rebalance:
    """A rebalance and its progress."""
    progress = summary.progress
    message = pb.Rebalance(
        rebalance_id=summary.rebalance_id,
        phase=PHASES[summary.phase],
        total_accounts=progress.total,
        pending_accounts=progress.count(AccountState.PENDING),
        copying_accounts=progress.count(AccountState.COPYING),
        verifying_accounts=progress.count(AccountState.VERIFYING),
        fenced_accounts=progress.count(AccountState.FENCED),
        cut_over_accounts=progress.count(AccountState.CUT_OVER),
        done_accounts=progress.count(AccountState.DONE),
        failed_accounts=progress.count(AccountState.FAILED),
        fraction_done=progress.fraction_done,
        failures=[failed_move_message(p) for p in summary.failures],
        start_time=timestamp(summary.started_at),
    )
    if summary.finished_at is not None:
        message.finish_time.CopyFrom(timestamp(summary.finished_at))
    return message
