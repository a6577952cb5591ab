"""Disaster recovery across regions: replication modes applied, region states, region failovers, DR status.

`DisasterRecovery` runs after every health round of the monitor (`after_round`): it writes
region states (ACTIVE or DEGRADED) to the topology, sets the `shieldx_dr_*` gauges, and fails
over every region whose nodes have all failed the threshold of checks (`regions.region_states`).
A region failover (automatic, or `FailoverRegion`) runs its steps in order and times each:

1. detect: the region and the target checked, each affected shard's replicas checked afresh,
   and a healthy replica in a target region found for every one (else nothing changes);
2. mark standby: the region is STANDBY in a new topology version;
3. promote: per shard, the healthy replica of the first target region that has one and has
   replayed the most WAL (`Failovers.promote_within`); a manual failover fences each live
   primary first and waits for the replica to replay its final WAL, so a planned switchover
   loses nothing whatever the replication mode;
4. publish: every promotion and its `failover_history` record in one topology version;
   replicas re-pointed at their new primaries;
5. verify lag: each shard's replication mode re-applied over the replicas it can still wait
   for (none in a STANDBY region), and their lag measured;
6. confirm: every new primary answers as a writable primary.

The record (steps, timings, shard failovers) is kept in `region_failovers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Gauge

from servers.mesh.errors import FailedPrecondition, InvalidArgument, Unavailable
from servers.mesh.storage import Transaction
from servers.sharding.domain import Node, Reason, RegionState, ReplicationMode, Shard
from servers.sharding.failover import FailoverRecord, FailoverTrigger, NodeHealth, format_lsn
from servers.sharding.monitor import HealthMonitor
from servers.sharding.nodes import NodeError, NodeOperations
from servers.sharding.promotion import Failovers, Promotion
from servers.sharding.regions import (
    DivergenceRecord,
    RegionFailoverRecord,
    RegionFailoverStep,
    ShardReading,
    StepTiming,
    check_mode_possible,
    mean,
    node_score,
    primaries_in,
    promised_rpo,
    promotion_region,
    region_states,
    standby_names,
    target_regions,
    waitable_replicas,
)
from servers.sharding.registry import Clock, TopologyRegistry, utc_now
from servers.sharding.store import ShardingStore
from servers.sharding.topology import Topology

log = logging.getLogger(__name__)


class DrMetrics:
    """The `shieldx_dr_*` gauges."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.region_state = Gauge(
            "shieldx_dr_region_state", "1 for the region's current state", ("region", "state"), registry=registry
        )
        self.region_score = Gauge(
            "shieldx_dr_region_health_score", "Mean health score of the region's nodes (0-1)", ("region",),
            registry=registry,
        )  # fmt: skip
        self.node_score = Gauge(
            "shieldx_dr_node_health_score", "Node health score (0-1)", ("shard", "node", "region"), registry=registry
        )
        self.mode = Gauge(
            "shieldx_dr_replication_mode", "1 for the shard's replication mode", ("shard", "mode"), registry=registry
        )
        self.lag_bytes = Gauge(
            "shieldx_dr_cross_region_lag_bytes",
            "Replay lag of the freshest healthy replica outside the primary's region",
            ("shard",),
            registry=registry,
        )
        self.rpo = Gauge(
            "shieldx_dr_promised_rpo_seconds",
            "What a region loss would cost now (+Inf with no replica in another region)",
            ("shard",),
            registry=registry,
        )
        self.rpo_breached = Gauge(
            "shieldx_dr_rpo_objective_breached", "1 while the promised RPO is above the objective", ("shard",),
            registry=registry,
        )  # fmt: skip
        self.last_rto = Gauge(
            "shieldx_dr_last_region_failover_seconds",
            "Recovery time of the region's last failover (start to confirmed)",
            ("region",),
            registry=registry,
        )
        self.incurred_transactions = Gauge(
            "shieldx_dr_rpo_incurred_transactions",
            "Transactions the last deposed primary had that its successor never received",
            ("shard",),
            registry=registry,
        )
        self.incurred_bytes = Gauge(
            "shieldx_dr_rpo_incurred_bytes",
            "WAL the last deposed primary had beyond its successor's switch point",
            ("shard",),
            registry=registry,
        )
        self.last_rpo_bytes = Gauge(
            "shieldx_dr_last_failover_rpo_bytes",
            "WAL the old primary had beyond the promoted replica at their last checks (the most a failover lost)",
            ("shard",),
            registry=registry,
        )


class DisasterRecovery:
    """Replication modes, region states and region failovers over the monitor and the failovers."""

    def __init__(
        self,
        registry: TopologyRegistry,
        store: ShardingStore,
        monitor: HealthMonitor,
        failovers: Failovers,
        nodes: NodeOperations,
        metrics: DrMetrics,
        *,
        rpo_objective: timedelta = timedelta(seconds=60),
        clock: Clock = utc_now,
    ) -> None:
        self.registry = registry
        self.store = store
        self.monitor = monitor
        self.failovers = failovers
        self.nodes = nodes
        self.metrics = metrics
        self.rpo_objective = rpo_objective
        self.clock = clock
        self._running = asyncio.Lock()
        self._breached: set[str] = set()

    @property
    def _timeout(self) -> float:
        return self.failovers.timeouts.switchover.total_seconds()

    # Replication modes

    async def set_mode(self, shard_id: str, mode: ReplicationMode) -> str:
        """Check and apply a mode to a shard's primary; returns the `synchronous_standby_names` written."""
        topology = self.registry.current
        shard = topology.shard(shard_id)
        check_mode_possible(shard, mode)
        return await self.apply_mode(shard, mode, topology)

    async def apply_mode(self, shard: Shard, mode: ReplicationMode, topology: Topology | None = None) -> str:
        """Write the mode's standby names on the shard's primary (Unavailable if it cannot be reached)."""
        regions = {r.region_id: r for r in (topology or self.registry.current).regions}
        names = standby_names(mode, shard.primary, waitable_replicas(shard, regions))
        try:
            await self.nodes.set_standby_names(shard.primary, names, self._timeout)
        except NodeError as error:
            raise Unavailable(
                f"could not apply the replication mode on {shard.primary.node_id!r}: {error}",
                reason=Reason.MODE_NOT_APPLIED,
                retry_after=1.0,
                metadata={"shard_id": shard.shard_id, "node_id": shard.primary.node_id},
            ) from None
        return names

    async def reapply_mode(self, shard: Shard) -> None:
        """After a failover: the shard's managed mode over the replicas it has now."""
        current = self.registry.current.shard(shard.shard_id)
        if current.replication_mode is not ReplicationMode.UNMANAGED:
            await self.apply_mode(current, current.replication_mode)

    # Deposed primaries

    async def deposed_came_back(self, shard: Shard, node: Node) -> None:
        """Fence a deposed primary found writable, then measure and keep what it had that the shard lost."""
        if not await self.failovers.fence_deposed(shard, node):
            return
        timeout = self._timeout
        try:
            since = await self.nodes.switch_point(shard.primary, timeout)
            if since is None:
                log.warning("%s is still on its first timeline; nothing diverged", shard.primary.node_id)
                return
            found = await self.nodes.divergence(node, since, timeout)
        except NodeError as error:
            log.error(
                "could not measure what deposed primary %s of %s had beyond %s: %s",
                node.node_id,
                shard.shard_id,
                shard.primary.node_id,
                error,
                extra={"shard_id": shard.shard_id, "node_id": node.node_id},
            )
            return
        record = DivergenceRecord(
            shard.shard_id, node.node_id, found.from_lsn, found.to_lsn, found.transactions, self.clock()
        )
        await self.store.add_divergence(record)
        self.metrics.incurred_transactions.labels(shard.shard_id).set(found.transactions)
        self.metrics.incurred_bytes.labels(shard.shard_id).set(max(0, found.to_lsn - found.from_lsn))
        log.warning(
            "deposed primary %s of %s had %d transaction(s) its successor never received (WAL %s-%s): RPO incurred",
            node.node_id,
            shard.shard_id,
            found.transactions,
            format_lsn(found.from_lsn),
            format_lsn(found.to_lsn),
            extra={"shard_id": shard.shard_id, "node_id": node.node_id, "transactions": found.transactions},
        )

    # Health rounds

    async def after_round(self, health: Mapping[str, NodeHealth]) -> set[str]:
        """Region states and gauges from a round's health; fails over lost regions; the shards it handled."""
        topology = self.registry.current
        states, lost = region_states(topology.regions, topology.shards, health, self.monitor.policy.failure_threshold)
        if any(r.region_id in states and states[r.region_id] is not r.state for r in topology.regions):
            await self.registry.commit(lambda t: t.with_region_states(states, now=self.clock()))
        self.record_gauges(health)
        handled: set[str] = set()
        for region_id in lost:
            shards = primaries_in(self.registry.current.shards, region_id)
            handled |= {s.shard_id for s in shards}
            failing = [health[s.primary.node_id].failing_since for s in shards if s.primary.node_id in health]
            started = min((f for f in failing if f is not None), default=self.clock())
            try:
                await self.fail_over_region(
                    region_id,
                    trigger=FailoverTrigger.AUTOMATIC,
                    started_at=started,
                    reason=f"every node of region {region_id} failed {self.monitor.policy.failure_threshold} checks",
                )
            except Exception:
                log.exception("automatic failover of region %s failed; retried next round", region_id)
        return handled

    def shard_readings(self, health: Mapping[str, NodeHealth] | None = None) -> list[ShardReading]:
        """Every shard's scores and promised RPO from the monitor's latest health."""
        topology = self.registry.current
        regions = {r.region_id: r for r in topology.regions}
        readings = []
        for shard in topology.shards:
            known = {n.node_id: (health or {}).get(n.node_id) or self.monitor.health(n) for n in shard.nodes}
            scores = {
                node_id: node_score(h, self.monitor.recent(node_id), rpo_objective=self.rpo_objective)
                for node_id, h in known.items()
            }
            rpo, lag_bytes = promised_rpo(shard, known, regions)
            readings.append(ShardReading(shard, scores, rpo, lag_bytes, rpo > self.rpo_objective))
        return readings

    def region_scores(self, readings: Sequence[ShardReading]) -> dict[str, float]:
        """Mean node score per declared region."""
        by_region: dict[str, list[float]] = {r.region_id: [] for r in self.registry.current.regions}
        for reading in readings:
            for node in reading.shard.nodes:
                by_region.setdefault(node.region, []).append(reading.scores[node.node_id])
        return {region: mean(values) for region, values in by_region.items()}

    def record_gauges(self, health: Mapping[str, NodeHealth] | None = None) -> None:
        """Set every `shieldx_dr_*` gauge from the current topology and health."""
        readings = self.shard_readings(health)
        m = self.metrics
        for region in self.registry.current.regions:
            for state in RegionState:
                m.region_state.labels(region.region_id, state.value).set(1 if region.state is state else 0)
        for region_id, score in self.region_scores(readings).items():
            m.region_score.labels(region_id).set(score)
        for reading in readings:
            shard = reading.shard
            for node in shard.nodes:
                m.node_score.labels(shard.shard_id, node.node_id, node.region).set(reading.scores[node.node_id])
            for mode in ReplicationMode:
                m.mode.labels(shard.shard_id, mode.value).set(1 if shard.replication_mode is mode else 0)
            if reading.lag_bytes is not None:
                m.lag_bytes.labels(shard.shard_id).set(reading.lag_bytes)
            seconds = float("inf") if reading.rpo == timedelta.max else reading.rpo.total_seconds()
            m.rpo.labels(shard.shard_id).set(seconds)
            m.rpo_breached.labels(shard.shard_id).set(1 if reading.breached else 0)
            newly = reading.breached and shard.shard_id not in self._breached
            if reading.breached:
                self._breached.add(shard.shard_id)
            else:
                self._breached.discard(shard.shard_id)
            if newly and shard.replication_mode is not ReplicationMode.UNMANAGED:
                log.warning(
                    "shard %s: promised RPO %s is above the objective %s",
                    shard.shard_id,
                    "unbounded" if reading.rpo == timedelta.max else reading.rpo,
                    self.rpo_objective,
                    extra={"shard_id": shard.shard_id},
                )

    # Region failover

    async def fail_over_region(
        self,
        region_id: str,
        *,
        target_region_id: str = "",
        planned: bool = False,
        trigger: FailoverTrigger = FailoverTrigger.MANUAL,
        started_at: datetime | None = None,
        reason: str = "",
    ) -> RegionFailoverRecord:
        """Move every primary out of `region_id` (see the module docstring); the record kept."""
        async with self._running:
            return await self._fail_over_region(region_id, target_region_id, planned, trigger, started_at, reason)

    async def _fail_over_region(
        self,
        region_id: str,
        target_region_id: str,
        planned: bool,
        trigger: FailoverTrigger,
        started_at: datetime | None,
        reason: str,
    ) -> RegionFailoverRecord:
        started = started_at or self.clock()
        steps: list[StepTiming] = []
        step = _Steps(steps, self.clock)

        with step(RegionFailoverStep.DETECT) as detail:
            plan = await self._plan(region_id, target_region_id)
            detail.append(", ".join(f"{shard.shard_id}->{target}" for shard, target in plan))
        with step(RegionFailoverStep.MARK_STANDBY) as detail:
            await self.registry.commit(
                lambda t: t.with_region_states({region_id: RegionState.STANDBY}, now=self.clock())
            )
            detail.append(f"{region_id} standby")
        with step(RegionFailoverStep.PROMOTE) as detail:
            fence = trigger is FailoverTrigger.MANUAL
            outcomes = await asyncio.gather(
                *(self.failovers.promote_within(shard, [target], fence_live_primary=fence) for shard, target in plan),
                return_exceptions=True,
            )
            promotions: list[Promotion] = []
            for (shard, _), outcome in zip(plan, outcomes, strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                    raise outcome
                if isinstance(outcome, Promotion):
                    promotions.append(outcome)
                    detail.append(f"{shard.shard_id}: {outcome.new_primary} promoted")
                else:
                    detail.append(f"{shard.shard_id}: not promoted ({_why(outcome)})")
        if not promotions:  # every primary answered again (or none could be promoted): the region stays
            previous = {region_id: RegionState.DEGRADED}
            await self.registry.commit(lambda t: t.with_region_states(previous, now=self.clock()))
        with step(RegionFailoverStep.PUBLISH) as detail:
            records = await self._publish(promotions, trigger, started, reason)
            detail.append(f"topology {records[0].topology_version}" if records else "nothing promoted")
        with step(RegionFailoverStep.VERIFY_LAG) as detail:
            detail.append(await self._reapply_modes(region_id, records))
            detail.append(await self._verify_lag([r.shard_id for r in records]))
        with step(RegionFailoverStep.CONFIRM) as detail:
            detail.append(await self._confirm(records))
        record = RegionFailoverRecord(
            region_failover_id=str(uuid.uuid4()),
            region_id=region_id,
            trigger=trigger,
            planned=planned,
            started_at=started,
            completed_at=max(self.clock(), started),
            steps=tuple(steps),
            failovers=tuple(records),
            reason=reason,
        )
        await self.store.add_region_failover(record)
        self.metrics.last_rto.labels(region_id).set(record.recovery_time.total_seconds())
        log.warning(
            "failed over region %s in %.2fs: %d shard(s) promoted",
            region_id,
            record.recovery_time.total_seconds(),
            len(records),
            extra={"region_id": region_id},
        )
        return record

    async def _plan(self, region_id: str, target_region_id: str) -> list[tuple[Shard, str]]:
        topology = self.registry.current
        topology.region(region_id)
        if target_region_id:
            wanted = topology.region(target_region_id, "target_region_id")
            if wanted.region_id == region_id:
                raise InvalidArgument("target_region_id", "must differ from region_id", reason=Reason.SAME_REGION)
            if wanted.state is RegionState.STANDBY:
                raise FailedPrecondition(
                    f"region {target_region_id!r} is standby; declare it again before promoting there",
                    reason=Reason.REGION_STANDBY,
                    metadata={"region_id": target_region_id},
                )
        affected = primaries_in(topology.shards, region_id)
        if not affected:
            raise FailedPrecondition(
                f"no shard has its primary in region {region_id!r}",
                reason=Reason.NO_PRIMARY_IN_REGION,
                metadata={"region_id": region_id},
            )
        candidates = target_regions(topology.regions, region_id, target_region_id)
        plan = []
        for shard in affected:
            chosen = None
            # One slow check must not refuse a failover: a replica is written off after the threshold, as anywhere.
            for _ in range(self.monitor.policy.failure_threshold):
                health = await self.monitor.check_shard(shard)
                chosen = promotion_region(shard, health, candidates)
                if chosen is not None:
                    break
            if chosen is None:
                raise FailedPrecondition(
                    f"shard {shard.shard_id!r} has no healthy replica in {', '.join(candidates) or 'any other region'}",
                    reason=Reason.NO_HEALTHY_REPLICA,
                    metadata={"shard_id": shard.shard_id, "region_id": region_id},
                )
            plan.append((shard, chosen))
        return plan

    async def _publish(
        self, promotions: list[Promotion], trigger: FailoverTrigger, started: datetime, reason: str
    ) -> list[FailoverRecord]:
        if not promotions:
            return []
        before = {p.shard_id: self.monitor.health(self.registry.current.shard(p.shard_id).primary) for p in promotions}
        written: list[FailoverRecord] = []

        def change(topology: Topology) -> Topology:
            for promotion in promotions:
                topology = self.failovers.switch(topology, promotion)
            return topology

        async def record(tx: Transaction, topology: Topology) -> None:
            written.clear()
            for promotion in promotions:
                written.append(await self.failovers.record(tx, promotion, topology, trigger, started, reason))

        topology = await self.registry.commit(change, also=record)
        for promotion in promotions:
            old_lsn = before[promotion.shard_id].lsn
            if old_lsn is not None and promotion.promoted_lsn is not None:
                self.metrics.last_rpo_bytes.labels(promotion.shard_id).set(max(0, old_lsn - promotion.promoted_lsn))
        await asyncio.gather(*(self.failovers.completed(topology, r) for r in written))
        return written

    async def _reapply_modes(self, region_id: str, records: list[FailoverRecord]) -> str:
        """Stop every managed primary waiting for replicas in the standby region (a promoted shard's
        mode was re-applied when its failover completed)."""
        promoted = {r.shard_id for r in records}
        shards = [
            s
            for s in self.registry.current.shards
            if s.shard_id not in promoted
            and s.replication_mode is not ReplicationMode.UNMANAGED
            and any(n.region == region_id for n in s.replicas)
        ]
        outcomes = await asyncio.gather(
            *(self.apply_mode(s, s.replication_mode) for s in shards), return_exceptions=True
        )
        notes = []
        for shard, outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome
            notes.append(
                f"{shard.shard_id} waits for {outcome!r}"
                if isinstance(outcome, str)
                else f"{shard.shard_id}: {_why(outcome)}"
            )
        return "; ".join(notes)

    async def _verify_lag(self, shard_ids: list[str]) -> str:
        notes = []
        for shard_id in shard_ids:
            shard = self.registry.current.shard(shard_id)
            health = await self.monitor.check_shard(shard)
            lags = [
                f"{r.node_id} {health[r.node_id].lag_bytes} B"
                for r in shard.replicas
                if health[r.node_id].lag_bytes is not None
            ]
            notes.append(f"{shard_id}: {', '.join(lags) or 'no replica streaming'}")
        return "; ".join(notes)

    async def _confirm(self, records: list[FailoverRecord]) -> str:
        topology = self.registry.current
        notes = []
        for record in records:
            primary = topology.shard(record.shard_id).primary
            try:
                look = await self.nodes.observe(primary, self.monitor.policy.check_timeout.total_seconds())
                writable = not look.in_recovery and not look.read_only
            except NodeError:
                writable = False
            notes.append(f"{primary.node_id} {'writable' if writable else 'NOT writable'}")
        return ", ".join(notes)


def _why(outcome: object) -> str:
    if outcome is None:
        return "its primary answers again"
    return str(getattr(outcome, "message", outcome))[:200]


class _Steps:
    """Times the steps of a region failover into `steps`."""

    def __init__(self, steps: list[StepTiming], clock: Clock) -> None:
        self.steps = steps
        self.clock = clock

    @contextlib.contextmanager
    def __call__(self, step: RegionFailoverStep) -> Iterator[list[str]]:
        started_at, started = self.clock(), time.monotonic()
        detail: list[str] = []
        yield detail
        took = timedelta(seconds=time.monotonic() - started)
        self.steps.append(StepTiming(step, started_at, took, "; ".join(d for d in detail if d)[:1000]))
