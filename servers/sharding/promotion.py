"""Carrying out a failover: pick the replica, fence the old primary if it still answers, promote, record.

Automatic (the monitor found the primary DOWN): fresh checks of the shard's replicas, the
healthy one that has replayed the most WAL is promoted with `pg_promote()`, and the new
topology and the `failover_history` record are written in one transaction, then published.
Its recovery time runs from the first failed check of the primary to that commit.

Manual (`Failover`): the same, but when the current primary still answers it is first fenced
(made read-only, its sessions ended), and the chosen replica must replay up to the primary's
final WAL position before it is promoted, so a planned switchover loses no acknowledged write
even with asynchronous replication. If the replica does not catch up in time, or the primary
cannot be fenced, the primary is unfenced and the failover refused.

A promotion is remembered until its topology is committed: if that write has to be retried
(by the request ledger, or the next monitor round after a registry outage), the promoted node is
reused rather than a second replica promoted.

After the topology is published, the shard's other replicas are pointed at the new primary
(`NodeOperations.follow`), so it keeps its replicas rather than leaving them waiting on a dead
server. The failed-over primary stays in the shard as a DOWN replica, refused any traffic,
until an operator rebuilds it as a replica (pg_rewind or a new base backup) or removes it. If
it comes back as a writable server (a restart after an automatic failover, when it could not
be fenced first), the monitor sees a replica out of recovery and `fence_deposed` makes it
read-only and ends its sessions, so a client that missed the topology change cannot write to
the old timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram

from servers.mesh.errors import Conflict, FailedPrecondition, Unavailable
from servers.mesh.storage import Transaction
from servers.sharding.domain import Node, NodeRole, Reason, Shard
from servers.sharding.failover import FailoverRecord, FailoverTrigger, HealthPolicy, choose_promotion_target
from servers.sharding.monitor import HealthMonitor
from servers.sharding.nodes import NodeError, NodeOperations
from servers.sharding.registry import Clock, TopologyRegistry, utc_now
from servers.sharding.store import ShardingStore
from servers.sharding.topology import Topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailoverTimeouts:
    """How long the steps of a failover may take."""

    promote: timedelta = timedelta(seconds=30)
    """`pg_promote` waiting for the replica to leave recovery."""
    switchover: timedelta = timedelta(seconds=10)
    """Manual failover: fencing the primary and the replica replaying its last WAL."""


@dataclass(frozen=True)
class Promotion:
    """A replica promoted whose topology change is not committed yet."""

    shard_id: str
    old_primary: str
    new_primary: str
    promoted_lsn: int | None


class FailoverMetrics:
    """`shieldx_sharding_failovers_total` and the recovery time histogram."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failovers = Counter(
            "shieldx_sharding_failovers",
            "Failovers done, by shard and trigger",
            ("shard", "trigger"),
            registry=registry,
        )
        self.recovery = Histogram(
            "shieldx_sharding_failover_recovery_seconds",
            "Time a shard had no working primary: first failed check (or request) to the published topology",
            ("trigger",),
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
            registry=registry,
        )
        self.repointed = Counter(
            "shieldx_sharding_replicas_repointed",
            "Replicas pointed at a new primary after a failover, by result",
            ("shard", "result"),
            registry=registry,
        )
        self.deposed_fenced = Counter(
            "shieldx_sharding_deposed_primaries_fenced",
            "Failed-over primaries found writable again and fenced",
            ("shard",),
            registry=registry,
        )


class Failovers:
    """Automatic and manual failovers of shards."""

    def __init__(
        self,
        registry: TopologyRegistry,
        store: ShardingStore,
        monitor: HealthMonitor,
        nodes: NodeOperations,
        metrics: FailoverMetrics,
        *,
        timeouts: FailoverTimeouts | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.registry = registry
        self.store = store
        self.monitor = monitor
        self.nodes = nodes
        self.metrics = metrics
        self.timeouts = timeouts or FailoverTimeouts()
        self.clock = clock
        self._pending: dict[str, Promotion] = {}
        self._reported: set[str] = set()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.on_new_primary: Callable[[Shard], Awaitable[object]] | None = None
        """Called after a failover's replicas were re-pointed (the replication mode is re-applied)."""

    @property
    def policy(self) -> HealthPolicy:
        """The monitor's check policy."""
        return self.monitor.policy

    async def automatic(self, shard: Shard) -> FailoverRecord | None:
        """Fail over a shard whose primary the monitor found DOWN; the record, or None if it answers again."""
        primary_health = self.monitor.health(shard.primary)
        promotion = await self._promote(shard, target_node_id="", fence_live_primary=False)
        if promotion is None:
            return None
        outage_started = primary_health.failing_since or self.clock()
        written: list[FailoverRecord] = []

        async def record(tx: Transaction, topology: Topology) -> None:
            written.clear()
            written.append(
                await self._record(
                    tx, promotion, topology, FailoverTrigger.AUTOMATIC, outage_started, primary_health.last_error
                )
            )

        topology = await self.registry.commit(lambda t: self._switch(t, promotion), also=record)
        await self.completed(topology, written[-1])
        return written[-1]

    async def manual(
        self, tx: Transaction, shard_id: str, target_node_id: str, reason: str, requested_at: datetime
    ) -> tuple[Topology, FailoverRecord]:
        """Fail over a shard inside `tx` (an idempotent request's transaction); call `completed` after commit."""
        shard = (await self.registry.read(tx)).shard(shard_id)
        promotion = await self._promote(shard, target_node_id=target_node_id, fence_live_primary=True)
        assert promotion is not None, "a manual failover fences a live primary instead of giving up"
        topology = await self.registry.apply(tx, lambda t: self._switch(t, promotion))
        record = await self._record(tx, promotion, topology, FailoverTrigger.MANUAL, requested_at, reason)
        return topology, record

    async def completed(self, topology: Topology, record: FailoverRecord) -> None:
        """After the commit: publish, keep the old primary DOWN, count it."""
        pending = self._pending.get(record.shard_id)
        if pending is not None and pending.new_primary == record.new_primary:
            del self._pending[record.shard_id]
        await self.registry.publish(topology)
        log.warning(
            "failed over shard %s from %s to %s in %.2fs (%s)",
            record.shard_id,
            record.old_primary,
            record.new_primary,
            record.recovery_time.total_seconds(),
            record.trigger.value,
            extra={"shard_id": record.shard_id, "topology_version": record.topology_version},
        )
        self.monitor.mark_down(record.old_primary)
        self.metrics.failovers.labels(record.shard_id, record.trigger.value).inc()
        self.metrics.recovery.labels(record.trigger.value).observe(record.recovery_time.total_seconds())
        shard = topology.shard(record.shard_id)
        await self._repoint_replicas(shard, record.old_primary)
        if self.on_new_primary is not None:
            try:
                await self.on_new_primary(shard)
            except Exception:
                log.exception("after the failover of %s, its replication mode could not be applied", shard.shard_id)

    async def promote_within(
        self, shard: Shard, regions: Collection[str], *, fence_live_primary: bool
    ) -> Promotion | None:
        """Promote the best healthy replica in `regions` (a region failover); see `_promote`."""
        return await self._promote(shard, target_node_id="", fence_live_primary=fence_live_primary, within=regions)

    def switch(self, topology: Topology, promotion: Promotion) -> Topology:
        """The topology with the promotion made (Conflict if the shard changed meanwhile)."""
        return self._switch(topology, promotion)

    async def record(
        self,
        tx: Transaction,
        promotion: Promotion,
        topology: Topology,
        trigger: FailoverTrigger,
        outage_started: datetime,
        reason: str,
    ) -> FailoverRecord:
        """Write the failover history record of a committed promotion (in `tx`)."""
        return await self._record(tx, promotion, topology, trigger, outage_started, reason)

    async def fence_deposed(self, shard: Shard, node: Node) -> bool:
        """Fence a node listed as a replica that answered as a writable primary, if it was failed over
        from; any other writable "replica" is only reported (it may be a server registered by mistake).
        True if it was fenced now."""
        async with self._locks[shard.shard_id]:
            pending = self._pending.get(shard.shard_id)
            if pending is not None and pending.new_primary == node.node_id:
                return False  # promoted a moment ago; its topology is being written
            if any(
                s.shard_id == shard.shard_id and s.primary.node_id == node.node_id for s in self.registry.current.shards
            ):
                return False  # the topology has made it the primary meanwhile
            if not await self.store.was_failed_over(shard.shard_id, node.node_id):
                if node.node_id not in self._reported:
                    self._reported.add(node.node_id)
                    log.warning(
                        "replica %s of %s is a writable primary, not following %s; not touched, as it was never"
                        " this shard's primary: rebuild it as a replica or remove it",
                        node.node_id,
                        shard.shard_id,
                        shard.primary.node_id,
                        extra={"shard_id": shard.shard_id, "node_id": node.node_id},
                    )
                return False
            return await self._fence_deposed(shard, node)

    async def _fence_deposed(self, shard: Shard, node: Node) -> bool:
        try:
            await self.nodes.fence(node, self.timeouts.switchover.total_seconds())
        except NodeError as error:
            log.error(
                "deposed primary %s of %s is writable again and could not be fenced: %s",
                node.node_id,
                shard.shard_id,
                error,
                extra={"shard_id": shard.shard_id, "node_id": node.node_id},
            )
            return False
        log.warning(
            "deposed primary %s of %s came back writable; fenced (read-only, sessions ended)",
            node.node_id,
            shard.shard_id,
            extra={"shard_id": shard.shard_id, "node_id": node.node_id},
        )
        self.metrics.deposed_fenced.labels(shard.shard_id).inc()
        return True

    async def _repoint_replicas(self, shard: Shard, old_primary: str) -> None:
        """Point the shard's replicas (not the deposed primary) at its new primary; failures are logged."""
        replicas = [n for n in shard.replicas if n.node_id != old_primary]
        timeout = self.timeouts.switchover.total_seconds()
        results = await asyncio.gather(
            *(self.nodes.follow(n, shard.primary, timeout) for n in replicas), return_exceptions=True
        )
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled
            fields = {"shard_id": shard.shard_id, "node_id": replica.node_id}
            if result is None:
                log.info("replica %s now follows %s", replica.node_id, shard.primary.node_id, extra=fields)
            else:
                # The failover itself is done; a replica left behind shows as lagging until fixed.
                log.error(
                    "replica %s could not be pointed at %s: %s",
                    replica.node_id,
                    shard.primary.node_id,
                    result,
                    exc_info=None if isinstance(result, NodeError) else result,
                    extra=fields,
                )
            self.metrics.repointed.labels(shard.shard_id, "ok" if result is None else "error").inc()

    async def _promote(
        self,
        shard: Shard,
        *,
        target_node_id: str,
        fence_live_primary: bool,
        within: Collection[str] | None = None,
    ) -> Promotion | None:
        """Promote the target (fencing a live primary first if asked); None if the primary is live and not to be
        fenced (it answered again since the monitor gave up on it)."""
        async with self._locks[shard.shard_id]:
            pending = self._pending.get(shard.shard_id)
            if pending is not None and pending.old_primary == shard.primary.node_id:
                return pending
            health = await self.monitor.check_shard(shard)
            primary_live = health[shard.primary.node_id].consecutive_failures == 0
            if primary_live and not fence_live_primary:
                return None
            target = shard.node(choose_promotion_target(shard, health, target_node_id=target_node_id, within=within))
            promoted_lsn = health[target.node_id].lsn
            fenced = primary_live
            if fenced:
                promoted_lsn = await self._switch_over(shard, target.node_id)
            try:
                after = await self.nodes.promote(target, self.timeouts.promote.total_seconds())
            except NodeError as error:
                if fenced:
                    await self._unfence(shard)
                raise Unavailable(
                    f"promoting {target.node_id!r} failed: {error}",
                    reason=Reason.PROMOTION_FAILED,
                    retry_after=self.policy.check_interval.total_seconds(),
                    metadata={"shard_id": shard.shard_id, "node_id": target.node_id},
                ) from None
            promotion = Promotion(shard.shard_id, shard.primary.node_id, target.node_id, promoted_lsn or after)
            self._pending[shard.shard_id] = promotion
            return promotion

    async def _switch_over(self, shard: Shard, target_node_id: str) -> int | None:
        """Fence the live primary and wait for the target to replay its final WAL; the target's LSN."""
        budget = self.timeouts.switchover.total_seconds()
        deadline = time.monotonic() + budget
        try:
            final_lsn = await self.nodes.fence(shard.primary, budget)
        except NodeError as error:
            await self._unfence(shard)
            raise FailedPrecondition(
                f"the primary of {shard.shard_id!r} answers but could not be fenced ({error}); stop it or fix its"
                " privileges, then retry",
                reason=Reason.PRIMARY_NOT_FENCED,
                metadata={"shard_id": shard.shard_id, "node_id": shard.primary.node_id},
            ) from None
        target = shard.node(target_node_id)
        replayed: int | None = None
        while time.monotonic() < deadline:
            try:
                look = await self.nodes.observe(target, max(0.1, deadline - time.monotonic()))
                replayed = look.lsn
            except NodeError:
                replayed = None
            if replayed is not None and replayed >= final_lsn:
                return replayed
            await asyncio.sleep(0.05)
        await self._unfence(shard)
        raise FailedPrecondition(
            f"replica {target_node_id!r} did not replay the primary's last WAL within {budget:g}s",
            reason=Reason.REPLICA_BEHIND,
            metadata={"node_id": target_node_id, "shard_id": shard.shard_id},
        )

    async def _unfence(self, shard: Shard) -> None:
        # If it is unreachable now there is nothing left to undo that could be undone.
        with contextlib.suppress(NodeError):
            await self.nodes.unfence(shard.primary, self.policy.check_timeout.total_seconds())

    def _switch(self, topology: Topology, promotion: Promotion) -> Topology:
        shard = topology.shard(promotion.shard_id)
        if shard.primary.node_id != promotion.old_primary:
            raise Conflict(
                f"the primary of {promotion.shard_id!r} changed while failing over", reason="CONCURRENT_MODIFICATION"
            )
        if shard.node(promotion.new_primary).role is not NodeRole.REPLICA:
            raise Conflict(f"{promotion.new_primary!r} is no longer a replica", reason="CONCURRENT_MODIFICATION")
        return topology.promote(promotion.shard_id, promotion.new_primary, now=self.clock())

    async def _record(
        self,
        tx: Transaction,
        promotion: Promotion,
        topology: Topology,
        trigger: FailoverTrigger,
        outage_started: datetime,
        reason: str,
    ) -> FailoverRecord:
        record = FailoverRecord(
            failover_id=str(uuid.uuid4()),
            shard_id=promotion.shard_id,
            trigger=trigger,
            old_primary=promotion.old_primary,
            new_primary=promotion.new_primary,
            promoted_lsn=promotion.promoted_lsn,
            outage_started_at=outage_started,
            completed_at=max(self.clock(), outage_started),
            topology_version=topology.version,
            reason=reason,
        )
        await self.store.add_failover(tx, record)
        return record
