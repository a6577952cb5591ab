"""The health monitor: every node of every shard checked each interval, lag measured, failover triggered.

A round checks all nodes of all shards at once, each with a fresh connection and a timeout
(`nodes.NodeOperations.observe`). A check passes if the node answered in time in the role the
topology gives it: a primary out of recovery, a replica in recovery. A replica's lag is
measured against its primary's `pg_current_wal_lsn()` from the same round (in bytes, never
negative) and, when it is behind, as the age of its last replayed transaction.

Health changes are written to the topology (one version per round at most), so followers stop
routing reads to a replica that is not HEALTHY. A primary that has failed
`failure_threshold` checks in a row is handed to the failover (`on_primary_down`); a replica
that answers as a writable primary (a deposed primary restarted, say) to `on_writable_replica`,
which fences it if it was failed over from. The loop
survives any error: it logs it and tries again next round. `kick()` starts a round early (a
shard was registered, say).

Only one sharding server per registry monitors (`leadership.py`): before each round the
monitor asks for the lead, and a server without it only asks again (every
`STANDBY_POLL_SECONDS` at most) and shows the health the topology records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import timedelta

from prometheus_client import CollectorRegistry, Gauge, Histogram

from servers.mesh.errors import DomainError
from servers.mesh.leadership import Leadership, SoleLeadership
from servers.sharding.domain import HealthState, Node, NodeRole, Shard
from servers.sharding.failover import CheckResult, HealthPolicy, NodeHealth, needs_failover
from servers.sharding.nodes import NodeError, NodeOperations, Observation
from servers.sharding.regions import SCORE_WINDOW
from servers.sharding.registry import Clock, TopologyRegistry, utc_now
from servers.sharding.topology import Topology

log = logging.getLogger(__name__)

STANDBY_POLL_SECONDS = 2.0
"""How often a server without the lead asks for it (at most)."""

PrimaryDown = Callable[[Shard], Awaitable[object]]
RoundChecked = Callable[[Mapping[str, NodeHealth]], Awaitable[set[str]]]
"""After each round's health is written: region rules; returns shards it takes over (no shard failover)."""
WritableReplica = Callable[[Shard, Node], Awaitable[object]]


class MonitorMetrics:
    """Health gauges per node, replication lag per replica, check durations."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("shard", "node", "role")
        self.up = Gauge(
            "shieldx_sharding_node_up", "1 if the node's last health check passed, else 0", labels, registry=registry
        )
        self.healthy = Gauge(
            "shieldx_sharding_node_healthy",
            "1 if the node is HEALTHY (takes traffic), else 0 (unchecked, suspect or down)",
            labels,
            registry=registry,
        )
        self.failures = Gauge(
            "shieldx_sharding_node_consecutive_failures",
            "Failed health checks in a row",
            labels,
            registry=registry,
        )
        self.lag_bytes = Gauge(
            "shieldx_sharding_replication_lag_bytes",
            "WAL bytes the primary has written and the replica has not replayed",
            ("shard", "node"),
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "shieldx_sharding_replication_lag_seconds",
            "Age of the replica's last replayed transaction while it is behind (0 when caught up)",
            ("shard", "node"),
            registry=registry,
        )
        self.check_seconds = Histogram(
            "shieldx_sharding_health_check_seconds",
            "Duration of one node health check",
            ("role", "outcome"),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.leader = Gauge(
            "shieldx_sharding_monitor_leader",
            "1 while this server runs the registry's health monitor (one server per registry does)",
            registry=registry,
        )
        self._node_labels: set[tuple[str, str, str]] = set()
        self._lag_labels: set[tuple[str, str]] = set()

    def record(self, topology: Topology, health: Mapping[str, NodeHealth]) -> None:
        """Set every gauge from the latest health; drop the series of nodes no longer registered."""
        node_labels: set[tuple[str, str, str]] = set()
        lag_labels: set[tuple[str, str]] = set()
        for shard in topology.shards:
            for node in shard.nodes:
                known = health.get(node.node_id)
                if known is None:
                    continue
                labels = (shard.shard_id, node.node_id, node.role.value)
                node_labels.add(labels)
                self.up.labels(*labels).set(1 if known.consecutive_failures == 0 and known.last_ok_at else 0)
                self.healthy.labels(*labels).set(1 if known.state is HealthState.HEALTHY else 0)
                self.failures.labels(*labels).set(known.consecutive_failures)
                if node.role is NodeRole.REPLICA and known.lag_bytes is not None:
                    lag_labels.add((shard.shard_id, node.node_id))
                    self.lag_bytes.labels(shard.shard_id, node.node_id).set(known.lag_bytes)
                    lag = known.lag or timedelta(0)
                    self.lag_seconds.labels(shard.shard_id, node.node_id).set(lag.total_seconds())
        for stale in self._node_labels - node_labels:
            for gauge in (self.up, self.healthy, self.failures):
                with contextlib.suppress(KeyError):
                    gauge.remove(*stale)
        for stale_lag in self._lag_labels - lag_labels:
            for gauge in (self.lag_bytes, self.lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(*stale_lag)
        self._node_labels, self._lag_labels = node_labels, lag_labels


class HealthMonitor:
    """Checks nodes, keeps their `NodeHealth`, writes health changes, triggers failovers."""

    def __init__(
        self,
        registry: TopologyRegistry,
        nodes: NodeOperations,
        policy: HealthPolicy,
        metrics: MonitorMetrics,
        *,
        leadership: Leadership | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.registry = registry
        self.nodes = nodes
        self.policy = policy
        self.metrics = metrics
        self.leadership: Leadership = leadership or SoleLeadership()
        self.clock = clock
        self.on_primary_down: PrimaryDown | None = None
        self.on_writable_replica: WritableReplica | None = None
        self.on_round: RoundChecked | None = None
        self._health: dict[str, NodeHealth] = {}
        self._recent: dict[str, deque[bool]] = {}
        self._writable_replicas: dict[str, list[Node]] = {}
        self._kicked = asyncio.Event()

    def health(self, node: Node) -> NodeHealth:
        """What the checks know about a node (its topology health until first checked)."""
        known = self._health.get(node.node_id)
        return known if known is not None else NodeHealth(node.node_id, state=node.health)

    def recent(self, node_id: str) -> tuple[bool, ...]:
        """Outcomes of the node's last checks, oldest first (True: passed)."""
        return tuple(self._recent.get(node_id, ()))

    def mark_down(self, node_id: str) -> None:
        """Keep a failed-over primary DOWN: it must be rebuilt before any check may clear it."""
        known = self._health.get(node_id) or NodeHealth(node_id)
        self._health[node_id] = replace(
            known,
            state=HealthState.DOWN,
            consecutive_failures=max(known.consecutive_failures, self.policy.failure_threshold),
        )

    def kick(self) -> None:
        """Start the next round now."""
        self._kicked.set()

    async def run(self) -> None:
        """Check every `check_interval` while leading, until cancelled; errors are logged and the loop goes on."""
        interval = self.policy.check_interval.total_seconds()
        leading = False
        try:
            while True:
                started = time.monotonic()
                leading = await self._lead(leading)
                if leading:
                    try:
                        await self.check_round()
                    except Exception:
                        log.exception("health round failed; next round as planned")
                pause = interval if leading else min(interval, STANDBY_POLL_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kicked.wait(), max(0.0, pause - (time.monotonic() - started)))
                self._kicked.clear()
        finally:
            self.metrics.leader.set(0)
            await asyncio.shield(self.leadership.release())

    async def _lead(self, leading: bool) -> bool:
        now_leading = await self.leadership.lead(self.policy.check_timeout.total_seconds())
        if now_leading and not leading:
            log.info("this server now runs the registry's health monitor")
        elif leading and not now_leading:
            log.warning("this server no longer runs the registry's health monitor")
            self._health.clear()  # another server's checks are the news now; show the topology's
            self.metrics.record(self.registry.current, self._health)
        self.metrics.leader.set(1 if now_leading else 0)
        return now_leading

    async def check_round(self) -> None:
        """Check every node once, write health changes, fail over primaries that are down."""
        topology = self.registry.current
        await asyncio.gather(*(self.check_shard(shard) for shard in topology.shards))
        await self._write_health_changes()
        self.metrics.record(self.registry.current, self._health)
        taken_over: set[str] = set()
        if self.on_round is not None:
            try:
                taken_over = await self.on_round(self._health)
            except Exception:
                log.exception("region checks failed; shards fail over one by one this round")
        down = [
            shard
            for shard in self.registry.current.shards
            if shard.shard_id not in taken_over and needs_failover(shard, self.health(shard.primary), self.policy)
        ]
        if down and self.on_primary_down is not None:
            await asyncio.gather(*(self._fail_over(shard) for shard in down))
        if self.on_writable_replica is not None:
            await asyncio.gather(
                *(
                    self._guarded(self.on_writable_replica(shard, node), f"fencing {node.node_id}")
                    for shard in topology.shards
                    for node in self._writable_replicas.get(shard.shard_id, ())
                )
            )

    async def check_shard(self, shard: Shard) -> dict[str, NodeHealth]:
        """Check all nodes of a shard at once; returns their health afterwards, by node id."""
        looks = await asyncio.gather(*(self._observe(node) for node in shard.nodes))
        primary_look = looks[0]
        primary_lsn = (
            primary_look.lsn if isinstance(primary_look, Observation) and not primary_look.in_recovery else None
        )
        for node, look in zip(shard.nodes, looks, strict=True):
            result = self._judge(node, look, primary_lsn)
            self._health[node.node_id] = self.health(node).record(result, self.policy)
            self._recent.setdefault(node.node_id, deque(maxlen=SCORE_WINDOW)).append(result.ok)
        self._writable_replicas[shard.shard_id] = [
            node
            for node, look in zip(shard.nodes, looks, strict=True)
            if node.role is NodeRole.REPLICA
            and isinstance(look, Observation)
            and not look.in_recovery
            and not look.read_only
        ]
        return {node.node_id: self._health[node.node_id] for node in shard.nodes}

    async def _observe(self, node: Node) -> Observation | str:
        timeout = min(self.policy.check_timeout, self.policy.check_interval).total_seconds()
        started = time.perf_counter()
        try:
            look: Observation | str = await self.nodes.observe(node, timeout)
        except NodeError as error:
            look = str(error)
        except Exception as error:
            log.exception("health check of %s raised unexpectedly", node.node_id)
            look = f"check failed: {type(error).__name__}"
        outcome = "error" if isinstance(look, str) else "answered"
        self.metrics.check_seconds.labels(node.role.value, outcome).observe(time.perf_counter() - started)
        return look

    def _judge(self, node: Node, look: Observation | str, primary_lsn: int | None) -> CheckResult:
        now = self.clock()
        if isinstance(look, str):
            return CheckResult(node.node_id, ok=False, checked_at=now, error=look)
        if node.role is NodeRole.PRIMARY:
            if look.in_recovery:
                return CheckResult(node.node_id, False, now, error="primary is in recovery (a replica, or starting)")
            return CheckResult(node.node_id, True, now, lsn=look.lsn)
        if not look.in_recovery:
            return CheckResult(node.node_id, False, now, error="replica is not in recovery (promoted or stand-alone)")
        lag_bytes = None
        lag = None
        if primary_lsn is not None and look.lsn is not None:
            lag_bytes = max(0, primary_lsn - look.lsn)
            lag = timedelta(0) if lag_bytes == 0 else look.replay_age
        return CheckResult(node.node_id, True, now, lsn=look.lsn, lag_bytes=lag_bytes, lag=lag)

    async def _write_health_changes(self) -> None:
        changes = {
            node.node_id: self._health[node.node_id].state
            for shard in self.registry.current.shards
            for node in shard.nodes
            if node.node_id in self._health and self._health[node.node_id].state is not node.health
        }
        if not changes:
            return
        for node_id, state in changes.items():
            health = self._health[node_id]
            level = logging.INFO if state is HealthState.HEALTHY else logging.WARNING
            log.log(
                level,
                "node %s is %s",
                node_id,
                state.value,
                extra={"node_id": node_id, "failures": health.consecutive_failures, "error": health.last_error},
            )
        now = self.clock()

        def apply(topology: Topology) -> Topology:
            for node_id, state in changes.items():
                try:
                    topology = topology.with_node_health(node_id, state, now=now)
                except DomainError:
                    continue  # removed meanwhile
            return topology

        await self.registry.commit(apply)

    async def _fail_over(self, shard: Shard) -> None:
        assert self.on_primary_down is not None
        try:
            await self.on_primary_down(shard)
        except DomainError as refusal:
            log.warning(
                "automatic failover of %s not possible: %s",
                shard.shard_id,
                refusal.message,
                extra={"shard_id": shard.shard_id, "reason": refusal.reason},
            )
        except Exception:
            log.exception("automatic failover of %s failed; retried next round", shard.shard_id)

    @staticmethod
    async def _guarded(action: Awaitable[object], what: str) -> None:
        try:
            await action
        except Exception:
            log.exception("%s failed; tried again next round", what)
