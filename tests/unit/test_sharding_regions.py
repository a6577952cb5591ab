"""Region rules: replication settings per mode, region states from checks, health scores, RPO promises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from servers.mesh.errors import DomainError, FailedPrecondition, InvalidArgument
from servers.sharding.domain import HealthState, NodeSpec, Reason, RegionState, ReplicationMode
from servers.sharding.failover import CheckResult, HealthPolicy, NodeHealth
from servers.sharding.regions import (
    check_mode_possible,
    node_score,
    promised_rpo,
    promotion_region,
    region_states,
    standby_names,
    target_regions,
    waitable_replicas,
)
from servers.sharding.topology import Topology

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = HealthPolicy(check_interval=timedelta(seconds=1), check_timeout=timedelta(seconds=1), failure_threshold=3)


def spec(node_id: str, region: str) -> NodeSpec:
    return NodeSpec(node_id, f"postgresql://u@{node_id}.db:5432/credits", region)


def two_regions() -> Topology:
    """shard-a: primary and a replica in east, a replica in west; shard-b the mirror image."""
    topology = Topology().put_region("east", 1, now=NOW).put_region("west", 2, now=NOW)
    topology = topology.register_shard(
        "shard-a", spec("a-p", "east"), [spec("a-r1", "east"), spec("a-r2", "west")], now=NOW
    )
    return topology.register_shard(
        "shard-b", spec("b-p", "west"), [spec("b-r1", "west"), spec("b-r2", "east")], now=NOW
    )


def checked(node_id: str, *outcomes: bool, lsn: int = 100, lag_bytes: int | None = None) -> NodeHealth:
    health = NodeHealth(node_id)
    for i, ok in enumerate(outcomes):
        health = health.record(
            CheckResult(
                node_id,
                ok,
                NOW + timedelta(seconds=i),
                lsn=lsn if ok else None,
                lag_bytes=lag_bytes if ok else None,
                lag=timedelta(seconds=2) if ok and lag_bytes else None,
            ),
            POLICY,
        )
    return health


def test_each_mode_waits_for_the_replicas_it_promises() -> None:
    shard = two_regions().shard("shard-a")
    primary, replicas = shard.primary, list(shard.replicas)
    assert standby_names(ReplicationMode.SYNCHRONOUS, primary, replicas) == 'ANY 2 ("a-r1", "a-r2")', (
        "two acknowledgements out of one local and one remote replica always include the remote one"
    )
    assert standby_names(ReplicationMode.SEMI_SYNCHRONOUS, primary, replicas) == 'ANY 1 ("a-r1")'
    assert standby_names(ReplicationMode.ASYNCHRONOUS, primary, replicas) == ""
    assert standby_names(ReplicationMode.SYNCHRONOUS, primary, replicas[1:]) == 'ANY 1 ("a-r2")'
    assert standby_names(ReplicationMode.SYNCHRONOUS, primary, []) == "", "nothing to wait for never blocks commits"


def test_modes_a_shard_cannot_give_are_refused() -> None:
    topology = two_regions().register_shard("shard-c", spec("c-p", "east"), [spec("c-r1", "west")], now=NOW)
    topology = topology.register_shard("shard-d", spec("d-p", "east"), now=NOW)
    with pytest.raises(FailedPrecondition) as lonely:
        check_mode_possible(topology.shard("shard-d"), ReplicationMode.ASYNCHRONOUS)
    assert lonely.value.reason == Reason.NO_REPLICAS
    with pytest.raises(FailedPrecondition) as remote_only:
        check_mode_possible(topology.shard("shard-c"), ReplicationMode.SEMI_SYNCHRONOUS)
    assert remote_only.value.reason == Reason.NO_SAME_REGION_REPLICA
    check_mode_possible(topology.shard("shard-c"), ReplicationMode.SYNCHRONOUS)


def test_a_standby_region_or_a_down_replica_is_never_waited_for() -> None:
    topology = two_regions().with_region_states({"west": RegionState.STANDBY}, now=NOW)
    shard = topology.shard("shard-a")
    regions = {r.region_id: r for r in topology.regions}
    assert [r.node_id for r in waitable_replicas(shard, regions)] == ["a-r1"]
    topology = topology.with_node_health("a-r1", HealthState.DOWN, now=NOW)
    assert waitable_replicas(topology.shard("shard-a"), regions) == []


def test_regions_are_declared_with_a_priority_and_placement_needs_a_declared_region() -> None:
    topology = two_regions()
    assert [(r.region_id, r.priority, r.state) for r in topology.regions] == [
        ("east", 1, RegionState.ACTIVE),
        ("west", 2, RegionState.ACTIVE),
    ]
    placed = topology.place_shard("shard-a", "west", now=NOW)
    assert placed.shard("shard-a").preferred_region == "west" and placed.version == topology.version + 1
    assert topology.put_region("east", 1, now=NOW) is topology, "the same declaration makes no new version"
    with pytest.raises(FailedPrecondition) as unknown:
        topology.place_shard("shard-a", "mars", now=NOW)
    assert unknown.value.reason == Reason.UNKNOWN_REGION
    for bad in (lambda: topology.put_region("East!", 1, now=NOW), lambda: topology.put_region("east", 0, now=NOW)):
        with pytest.raises(InvalidArgument):
            bad()
    standby = topology.with_region_states({"east": RegionState.STANDBY}, now=NOW)
    assert standby.put_region("east", 1, now=NOW).region("east").state is RegionState.ACTIVE, "declared again: active"


def test_a_region_degrades_on_the_first_failure_and_is_lost_only_when_every_node_reached_the_threshold() -> None:
    topology = two_regions()
    ok = {n.node_id: checked(n.node_id, True) for s in topology.shards for n in s.nodes}
    states, lost = region_states(topology.regions, topology.shards, ok, 3)
    assert states == {"east": RegionState.ACTIVE, "west": RegionState.ACTIVE} and lost == []

    one_failure = {**ok, "a-p": checked("a-p", True, False)}
    states, lost = region_states(topology.regions, topology.shards, one_failure, 3)
    assert states["east"] is RegionState.DEGRADED and lost == []

    east_down = {**ok, **{n: checked(n, True, False, False, False) for n in ("a-p", "a-r1", "b-r2")}}
    states, lost = region_states(topology.regions, topology.shards, east_down, 3)
    assert lost == ["east"] and states["west"] is RegionState.ACTIVE

    flapping = {**ok, **{n: checked(n, False, False, True, False, False) for n in ("a-p", "a-r1", "b-r2")}}
    _, lost = region_states(topology.regions, topology.shards, flapping, 3)
    assert lost == [], "failures that never reach the threshold in a row are no region loss"


def test_health_scores_fall_with_failures_error_rate_and_lag() -> None:
    objective = timedelta(seconds=10)
    steady = checked("n", True, True)
    assert node_score(steady, (True, True), rpo_objective=objective) == 1.0
    suspect = checked("n", True, False)
    assert node_score(suspect, (True, False), rpo_objective=objective) == 0.5, "no connection, half the checks failed"
    recovered = checked("n", True, False, True)
    assert 0.5 < node_score(recovered, (True, False, True), rpo_objective=objective) < 1
    lagging = checked("n", True, lag_bytes=10_000)
    assert node_score(lagging, (True,), rpo_objective=objective) == pytest.approx((1 + 1 + 0.8) / 3, abs=1e-3)
    assert node_score(checked("n", False, False, False), (False,) * 3, rpo_objective=objective) == 0.0


def test_the_promised_rpo_follows_the_mode_and_the_remote_lag() -> None:
    topology = two_regions()
    regions = {r.region_id: r for r in topology.regions}
    health = {
        "a-p": checked("a-p", True, lsn=500),
        "a-r1": checked("a-r1", True, lsn=500, lag_bytes=0),
        "a-r2": checked("a-r2", True, lsn=400, lag_bytes=100),
    }
    shard = topology.shard("shard-a")
    assert promised_rpo(shard, health, regions) == (timedelta(seconds=2), 100), "async: the remote replica's lag"
    synchronous = topology.with_replication_mode("shard-a", ReplicationMode.SYNCHRONOUS, now=NOW).shard("shard-a")
    assert promised_rpo(synchronous, health, regions) == (timedelta(0), 0)
    without_remote = {k: v for k, v in health.items() if k != "a-r2"}
    assert promised_rpo(shard, without_remote, regions)[0] == timedelta.max, "no other region: unbounded"


def test_failover_goes_to_the_next_region_by_priority_that_has_a_healthy_replica() -> None:
    topology = two_regions().put_region("south", 3, now=NOW)
    assert target_regions(topology.regions, "east") == ["west", "south"]
    assert target_regions(topology.regions, "east", "south") == ["south"]
    shard = topology.shard("shard-a")
    health = {"a-r2": checked("a-r2", True)}
    assert promotion_region(shard, health, ["west", "south"]) == "west"
    assert promotion_region(shard, {"a-r2": checked("a-r2", False)}, ["west"]) is None


def test_domain_errors_are_typed() -> None:
    with pytest.raises(DomainError):
        Topology().region("nowhere")
