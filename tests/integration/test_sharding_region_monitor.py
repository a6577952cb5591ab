"""The health monitor's region rules on a real registry store, nodes answering as scripted: a flapping
region degrades and recovers without a failover; a region whose every node fails the threshold of
checks in a row is failed over, after it degraded.

The node operations are scripted (`ScriptedNodes`) because flapping on cue, check by check, is
what this test is about; the real operations against PostgreSQL are covered by the e2e tests.
"""

from __future__ import annotations

from collections import deque
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from servers.mesh.storage import open_database
from servers.sharding.domain import Node, NodeSpec, RegionState
from servers.sharding.failover import FailoverTrigger, HealthPolicy
from servers.sharding.monitor import HealthMonitor, MonitorMetrics
from servers.sharding.nodes import Divergence, NodeError, Observation
from servers.sharding.promotion import FailoverMetrics, Failovers
from servers.sharding.recovery import DisasterRecovery, DrMetrics
from servers.sharding.registry import TopologyRegistry, utc_now
from servers.sharding.store import ShardingStore

POLICY = HealthPolicy(check_interval=timedelta(seconds=1), check_timeout=timedelta(seconds=1), failure_threshold=3)


class ScriptedNodes:
    """`NodeOperations` whose `observe` answers are scripted per node: True answers, False fails."""

    def __init__(self) -> None:
        self.script: dict[str, deque[bool]] = {}
        self.promoted: list[str] = []
        self.standby_names: dict[str, str] = {}

    def answers(self, node_id: str, *outcomes: bool) -> None:
        self.script.setdefault(node_id, deque()).extend(outcomes)

    async def observe(self, node: Node, timeout: float) -> Observation:
        queue = self.script.get(node.node_id)
        ok = queue.popleft() if queue else True
        if not ok:
            raise NodeError("connection refused")
        in_recovery = node.node_id.endswith(("-r1", "-r2")) and node.node_id not in self.promoted
        return Observation(in_recovery=in_recovery, lsn=1000)

    async def promote(self, node: Node, timeout: float) -> int | None:
        self.promoted.append(node.node_id)
        return 1000

    async def fence(self, node: Node, timeout: float) -> int:
        return 1000

    async def unfence(self, node: Node, timeout: float) -> None:
        return None

    async def follow(self, replica: Node, primary: Node, timeout: float) -> None:
        return None

    async def set_standby_names(self, primary: Node, names: str, timeout: float) -> None:
        self.standby_names[primary.node_id] = names

    async def switch_point(self, primary: Node, timeout: float) -> int | None:
        return None

    async def divergence(self, node: Node, since: int, timeout: float) -> Divergence:
        return Divergence(since, since, 0)


async def test_a_flapping_region_degrades_without_failover_and_a_lost_one_is_failed_over(tmp_path: Path) -> None:
    database = await open_database(
        "sharding", data_dir=tmp_path, migrations=("servers.mesh.migrations", "servers.sharding.migrations")
    )
    store = ShardingStore(database)
    registry = TopologyRegistry(store)
    nodes = ScriptedNodes()
    metrics = CollectorRegistry()
    monitor = HealthMonitor(registry, nodes, POLICY, MonitorMetrics(metrics))
    failovers = Failovers(registry, store, monitor, nodes, FailoverMetrics(metrics))
    recovery = DisasterRecovery(registry, store, monitor, failovers, nodes, DrMetrics(metrics))
    monitor.on_primary_down = failovers.automatic
    monitor.on_round = recovery.after_round
    now = utc_now()
    await registry.commit(lambda t: t.put_region("east", 1, now=now).put_region("west", 2, now=now))
    await registry.commit(
        lambda t: t.register_shard(
            "shard-a",
            NodeSpec("a-p", "postgresql://u@a-p.invalid/db", "east"),
            [NodeSpec("a-r1", "postgresql://u@a-r1.invalid/db", "west")],
            now=now,
        )
    )

    async def round_states() -> RegionState:
        await monitor.check_round()
        return registry.current.region("east").state

    assert await round_states() is RegionState.ACTIVE
    nodes.answers("a-p", False, False, True, False, False, True, True)  # flapping: never 3 in a row
    seen = [await round_states() for _ in range(7)]
    assert RegionState.DEGRADED in seen and seen[-1] is RegionState.ACTIVE, seen
    assert registry.current.shard("shard-a").primary.node_id == "a-p", "a flapping primary is never failed over"
    assert not await store.recent_region_failovers()

    nodes.answers("a-p", *[False] * 8)
    states = [await round_states() for _ in range(3)]
    assert states[:2] == [RegionState.DEGRADED, RegionState.DEGRADED], "east degrades before it is failed over"
    assert states[2] is RegionState.STANDBY
    assert registry.current.shard("shard-a").primary.node_id == "a-r1"
    (record,) = await store.recent_region_failovers()
    assert record.region_id == "east" and record.trigger is FailoverTrigger.AUTOMATIC
    assert [f.new_primary for f in record.failovers] == ["a-r1"]
    assert [f.trigger for f in record.failovers] == [FailoverTrigger.AUTOMATIC], "one failover, by the region"
    assert nodes.promoted == ["a-r1"], "promoted once: the shard's own failover stood aside"
