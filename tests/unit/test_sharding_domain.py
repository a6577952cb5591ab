"""Shard registry and topology versions, failover decisions and read routing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from servers.mesh.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from servers.sharding.domain import HealthState, NodeRole, NodeSpec, Reason, ShardState
from servers.sharding.failover import (
    CheckResult,
    FailoverRecord,
    FailoverTrigger,
    HealthPolicy,
    NodeHealth,
    choose_promotion_target,
    format_lsn,
    needs_failover,
    parse_lsn,
)
from servers.sharding.routing import ReadPolicy, ReadRouter, RoutingConfig
from servers.sharding.topology import MigrationRouting, Topology

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def spec(node_id: str, region: str = "eu-west-1") -> NodeSpec:
    return NodeSpec(node_id, f"postgresql://credits:pw-{node_id}@{node_id}.db:5432/credits", region)


def with_shards(*shard_ids: str, replicas: int = 0) -> Topology:
    topology = Topology()
    for shard_id in shard_ids:
        topology = topology.register_shard(
            shard_id,
            spec(f"{shard_id}-p"),
            [spec(f"{shard_id}-r{i}") for i in range(replicas)],
            now=NOW,
        )
    return topology


def healthy(topology: Topology, *node_ids: str) -> Topology:
    for node_id in node_ids:
        topology = topology.with_node_health(node_id, HealthState.HEALTHY, now=NOW)
    return topology


def reason_of(error: pytest.ExceptionInfo[DomainError]) -> str:
    return error.value.reason


# Registry and topology versions


def test_the_first_shard_serves_at_once_and_later_ones_join() -> None:
    topology = with_shards("shard-0", "shard-1")
    assert topology.version == 2
    assert topology.shard("shard-0").state is ShardState.ACTIVE
    assert topology.shard("shard-1").state is ShardState.JOINING
    assert topology.ring.shard_ids == ("shard-0",)
    assert topology.target_ring.shard_ids == ("shard-0", "shard-1")
    assert {topology.locate(f"acct-{i}").shard_id for i in range(200)} == {"shard-0"}
    assert topology.updated_at == NOW


def test_every_change_bumps_the_version_by_one_and_keeps_the_old_snapshot() -> None:
    v1 = with_shards("shard-0")
    v2 = v1.add_replica("shard-0", spec("shard-0-r1"), now=NOW)
    v3 = v2.with_node_health("shard-0-r1", HealthState.HEALTHY, now=NOW)
    v4 = v3.remove_replica("shard-0", "shard-0-r1", now=NOW)
    assert [v.version for v in (v1, v2, v3, v4)] == [1, 2, 3, 4]
    assert [n.node_id for n in v1.shard("shard-0").nodes] == ["shard-0-p"]
    assert [n.node_id for n in v2.shard("shard-0").nodes] == ["shard-0-p", "shard-0-r1"]
    assert v3.shard("shard-0").node("shard-0-r1").health is HealthState.HEALTHY
    assert [n.node_id for n in v4.shard("shard-0").nodes] == ["shard-0-p"]


def test_an_unchanged_health_state_is_not_a_new_version() -> None:
    topology = healthy(with_shards("shard-0", replicas=1), "shard-0-r0")
    assert topology.with_node_health("shard-0-r0", HealthState.HEALTHY, now=NOW) is topology


def test_registration_places_the_shard_with_a_chosen_seed_and_orders_nodes() -> None:
    topology = Topology().register_shard("shard-0", spec("p"), [spec("r-b"), spec("r-a")], weight=2.0, now=NOW)
    shard = topology.shard("shard-0")
    assert shard.weight == 2.0
    assert [n.node_id for n in shard.nodes] == ["p", "r-a", "r-b"]
    assert [n.role for n in shard.nodes] == [NodeRole.PRIMARY, NodeRole.REPLICA, NodeRole.REPLICA]
    assert all(n.health is HealthState.UNKNOWN for n in shard.nodes)
    assert shard.ring_member.placement_seed == shard.placement_seed


def test_removing_a_joining_shard_drops_it_and_an_active_one_leaves() -> None:
    topology = with_shards("shard-0", "shard-1", "shard-2")
    dropped = topology.remove_shard("shard-2", now=NOW)
    assert [s.shard_id for s in dropped.shards] == ["shard-0", "shard-1"]

    active = _activate(with_shards("shard-0", "shard-1"))
    leaving = active.remove_shard("shard-0", now=NOW)
    assert leaving.shard("shard-0").state is ShardState.LEAVING
    assert leaving.ring.shard_ids == ("shard-0", "shard-1")
    assert leaving.target_ring.shard_ids == ("shard-1",)


def _activate(topology: Topology) -> Topology:
    migrating = topology.with_migration(MigrationRouting("r0"), now=NOW)
    return migrating.complete_migration("r0", now=NOW)


def test_completing_a_migration_switches_to_the_target_ring() -> None:
    topology = _activate(with_shards("shard-0", "shard-1"))
    assert {s.state for s in topology.shards} == {ShardState.ACTIVE}
    leaving = topology.remove_shard("shard-1", now=NOW)
    done = _activate(leaving)
    assert [s.shard_id for s in done.shards] == ["shard-0"]
    assert done.migration is None
    assert done.version == leaving.version + 2


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        (lambda t: t.register_shard("shard-0", spec("x"), now=NOW), AlreadyExists, Reason.SHARD_EXISTS),
        (lambda t: t.register_shard("shard-9", spec("shard-0-p"), now=NOW), AlreadyExists, Reason.NODE_EXISTS),
        (
            lambda t: t.register_shard("shard-9", spec("x"), [spec("y"), spec("y")], now=NOW),
            AlreadyExists,
            Reason.NODE_EXISTS,
        ),
        (lambda t: t.add_replica("shard-0", spec("shard-0-r0"), now=NOW), AlreadyExists, Reason.NODE_EXISTS),
        (lambda t: t.add_replica("nope", spec("x"), now=NOW), NotFound, Reason.SHARD_NOT_FOUND),
        (lambda t: t.remove_shard("nope", now=NOW), NotFound, Reason.SHARD_NOT_FOUND),
        (lambda t: t.remove_replica("shard-0", "nope", now=NOW), NotFound, Reason.NODE_NOT_FOUND),
        (lambda t: t.with_node_health("nope", HealthState.DOWN, now=NOW), NotFound, Reason.NODE_NOT_FOUND),
        (
            lambda t: t.remove_replica("shard-0", "shard-0-p", now=NOW),
            FailedPrecondition,
            Reason.CANNOT_REMOVE_PRIMARY,
        ),
        (lambda t: t.remove_shard("shard-0", now=NOW), FailedPrecondition, Reason.LAST_SHARD),
        (lambda t: t.promote("shard-0", "shard-0-p", now=NOW), FailedPrecondition, Reason.ALREADY_PRIMARY),
        (
            lambda t: t.with_migration(MigrationRouting("r"), now=NOW),
            FailedPrecondition,
            Reason.NOTHING_TO_REBALANCE,
        ),
        (lambda t: t.complete_migration("r", now=NOW), FailedPrecondition, Reason.NO_REBALANCE_IN_PROGRESS),
    ],
)
def test_registry_refusals_carry_their_reason(
    change: Callable[[Topology], object], error: type[DomainError], reason: str
) -> None:
    topology = _activate(with_shards("shard-0", "shard-1", replicas=1)).remove_shard("shard-1", now=NOW)
    topology = _activate(topology)  # shard-0 alone, with one replica
    with pytest.raises(error) as caught:
        change(topology)
    assert reason_of(caught) == reason


def test_the_only_active_shard_can_leave_for_a_joining_one() -> None:
    topology = with_shards("shard-0", "shard-1").remove_shard("shard-0", now=NOW)
    assert topology.ring.shard_ids == ("shard-0",)
    assert topology.target_ring.shard_ids == ("shard-1",)
    done = _activate(topology)
    assert [(s.shard_id, s.state) for s in done.shards] == [("shard-1", ShardState.ACTIVE)]


def test_a_leaving_shard_cannot_be_removed_twice() -> None:
    topology = _activate(with_shards("shard-0", "shard-1")).remove_shard("shard-1", now=NOW)
    with pytest.raises(FailedPrecondition) as caught:
        topology.remove_shard("shard-1", now=NOW)
    assert reason_of(caught) == Reason.SHARD_ALREADY_LEAVING


def test_membership_is_frozen_while_a_rebalance_runs() -> None:
    topology = with_shards("shard-0", "shard-1").with_migration(MigrationRouting("r1"), now=NOW)
    changes: list[Callable[[], Topology]] = [
        lambda: topology.register_shard("shard-2", spec("x"), now=NOW),
        lambda: topology.remove_shard("shard-1", now=NOW),
    ]
    for change in changes:
        with pytest.raises(FailedPrecondition) as caught:
            change()
        assert reason_of(caught) == Reason.REBALANCE_IN_PROGRESS
        assert caught.value.metadata["rebalance_id"] == "r1"
    # Replicas may still change: they do not move the ring.
    assert topology.add_replica("shard-0", spec("r9"), now=NOW).version == topology.version + 1


def test_too_many_replicas_is_refused() -> None:
    topology = Topology().register_shard("shard-0", spec("p"), [spec(f"r{i}") for i in range(16)], now=NOW)
    with pytest.raises(FailedPrecondition) as caught:
        topology.add_replica("shard-0", spec("r16"), now=NOW)
    assert reason_of(caught) == Reason.TOO_MANY_REPLICAS


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Topology().register_shard("Shard 0", spec("p"), now=NOW), "shard_id"),
        (lambda: Topology().register_shard("shard-0", spec("p"), weight=0.0, now=NOW), "weight"),
        (lambda: Topology().register_shard("shard-0", NodeSpec("p", ""), now=NOW), "primary.dsn"),
        (lambda: Topology().register_shard("shard-0", NodeSpec("P!", "host=a"), now=NOW), "primary.node_id"),
        (
            lambda: Topology().register_shard("shard-0", NodeSpec("p", "host=a", "EU WEST"), now=NOW),
            "primary.region",
        ),
        (
            lambda: Topology().register_shard("shard-0", spec("p"), [spec("r0"), NodeSpec("r1", "mysql://x")], now=NOW),
            "replicas[1].dsn",
        ),
        (lambda: with_shards("shard-0").add_replica("shard-0", NodeSpec("r", "host=a port=0"), now=NOW), "replica.dsn"),
        (lambda: with_shards("shard-0").locate(""), "keys[0]"),
        (lambda: with_shards("shard-0").locate_many(["a"] * 10_001), "keys"),
    ],
)
def test_bad_registry_input_names_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build()
    assert caught.value.metadata["field"] == field


def test_locating_before_any_shard_is_refused() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        Topology().locate("acct-1")
    assert reason_of(caught) == Reason.NO_SHARDS


def test_locate_gives_the_primary_of_the_owning_shard() -> None:
    topology = _activate(with_shards("shard-0", "shard-1", "shard-2"))
    for location in topology.locate_many([f"acct-{i}" for i in range(100)]):
        assert location.shard_id == topology.ring.locate(location.key)
        assert location.primary.node_id == f"{location.shard_id}-p"
        assert location.primary.endpoint == f"{location.shard_id}-p.db:5432/credits"
        assert not location.write_fenced


def test_during_a_rebalance_moved_accounts_answer_from_the_new_shard_and_fenced_ones_refuse_writes() -> None:
    topology = with_shards("shard-0", "shard-1")  # shard-1 joining
    keys = [f"acct-{i}" for i in range(200)]
    moving = [k for k in keys if topology.target_ring.locate(k) == "shard-1"]
    staying = [k for k in keys if k not in moving]
    moved, fenced, untouched = moving[0], moving[1], moving[2]
    routed = topology.with_migration(
        MigrationRouting("r1", fenced=frozenset({fenced}), moved=frozenset({moved})), now=NOW
    )
    assert routed.locate(moved).shard_id == "shard-1"
    assert not routed.locate(moved).write_fenced
    assert routed.locate(fenced).shard_id == "shard-0"
    assert routed.locate(fenced).write_fenced
    assert routed.locate(untouched).shard_id == "shard-0"
    assert not routed.locate(untouched).write_fenced

    finalizing = routed.with_migration(MigrationRouting("r1", moved=frozenset({moved}), fence_unplanned=True), now=NOW)
    assert finalizing.locate(untouched).write_fenced  # would be created on a shard it is leaving
    assert not finalizing.locate(staying[0]).write_fenced
    assert not finalizing.locate(moved).write_fenced


def test_nodes_never_show_their_password_in_repr() -> None:
    topology = with_shards("shard-0", replicas=1)
    text = repr(topology)
    assert "pw-shard-0" not in text
    node = topology.shard("shard-0").primary
    assert node.redacted_dsn == "postgresql://credits:***@shard-0-p.db:5432/credits"


# Failover


POLICY = HealthPolicy(failure_threshold=3)


def check(node_id: str, ok: bool, at: datetime, lsn: int | None = None, lag_bytes: int | None = None) -> CheckResult:
    return CheckResult(node_id, ok, at, lsn=lsn, lag_bytes=lag_bytes, error="" if ok else "connection refused")


def test_three_failed_checks_in_a_row_make_a_primary_down_and_due_for_failover() -> None:
    shard = with_shards("shard-0", replicas=1).shard("shard-0")
    health = NodeHealth("shard-0-p").record(check("shard-0-p", True, NOW, lsn=100), POLICY)
    states = []
    for i in range(1, 4):
        health = health.record(check("shard-0-p", False, NOW + timedelta(seconds=30 * i)), POLICY)
        states.append((health.state, needs_failover(shard, health, POLICY)))
    assert states == [
        (HealthState.SUSPECT, False),
        (HealthState.SUSPECT, False),
        (HealthState.DOWN, True),
    ]
    assert health.failing_since == NOW + timedelta(seconds=30)
    assert health.last_error == "connection refused"
    assert health.lsn == 100  # the last known position survives failures
    assert not needs_failover(shard, health, HealthPolicy(automatic_failover=False))


def test_a_passing_check_resets_the_failure_streak() -> None:
    health = NodeHealth("n")
    for ok in (False, False, True, False):
        health = health.record(check("n", ok, NOW), POLICY)
    assert health.consecutive_failures == 1
    assert health.state is HealthState.SUSPECT


def test_the_most_up_to_date_healthy_replica_is_promoted() -> None:
    shard = with_shards("shard-0", replicas=3).shard("shard-0")
    health = {
        "shard-0-r0": NodeHealth("shard-0-r0", HealthState.HEALTHY, lsn=900, lag_bytes=100),
        "shard-0-r1": NodeHealth("shard-0-r1", HealthState.HEALTHY, lsn=1000, lag_bytes=0),
        "shard-0-r2": NodeHealth("shard-0-r2", HealthState.DOWN, lsn=5000),
    }
    assert choose_promotion_target(shard, health) == "shard-0-r1"
    health["shard-0-r0"] = NodeHealth("shard-0-r0", HealthState.HEALTHY, lsn=1000, lag_bytes=0)
    assert choose_promotion_target(shard, health) == "shard-0-r0"  # a tie goes to the smaller id


def test_failover_without_a_healthy_replica_is_refused() -> None:
    shard = with_shards("shard-0", replicas=2).shard("shard-0")
    health = {"shard-0-r0": NodeHealth("shard-0-r0", HealthState.SUSPECT, lsn=10)}
    with pytest.raises(FailedPrecondition) as caught:
        choose_promotion_target(shard, health)
    assert reason_of(caught) == Reason.NO_HEALTHY_REPLICA
    with pytest.raises(FailedPrecondition) as no_replicas:
        choose_promotion_target(with_shards("shard-0").shard("shard-0"), {})
    assert reason_of(no_replicas) == Reason.NO_HEALTHY_REPLICA


@pytest.mark.parametrize(
    ("target", "error", "reason"),
    [
        ("shard-0-r0", FailedPrecondition, Reason.REPLICA_BEHIND),
        ("shard-0-r2", FailedPrecondition, Reason.REPLICA_UNHEALTHY),
        ("shard-0-p", FailedPrecondition, Reason.ALREADY_PRIMARY),
        ("elsewhere", NotFound, Reason.NODE_NOT_FOUND),
    ],
)
def test_a_manual_target_must_be_a_healthy_replica_that_is_not_behind(
    target: str, error: type[DomainError], reason: str
) -> None:
    shard = with_shards("shard-0", replicas=3).shard("shard-0")
    health = {
        "shard-0-r0": NodeHealth("shard-0-r0", HealthState.HEALTHY, lsn=900),
        "shard-0-r1": NodeHealth("shard-0-r1", HealthState.HEALTHY, lsn=1000),
        "shard-0-r2": NodeHealth("shard-0-r2", HealthState.DOWN, lsn=1000),
    }
    assert choose_promotion_target(shard, health, target_node_id="shard-0-r1") == "shard-0-r1"
    with pytest.raises(error) as caught:
        choose_promotion_target(shard, health, target_node_id=target)
    assert reason_of(caught) == reason


def test_promotion_swaps_roles_and_keeps_the_old_primary_down() -> None:
    topology = healthy(with_shards("shard-0", replicas=2), "shard-0-p", "shard-0-r0", "shard-0-r1")
    after = topology.promote("shard-0", "shard-0-r1", now=NOW)
    shard = after.shard("shard-0")
    assert after.version == topology.version + 1
    assert shard.primary.node_id == "shard-0-r1"
    assert [(n.node_id, n.role, n.health) for n in shard.replicas] == [
        ("shard-0-p", NodeRole.REPLICA, HealthState.DOWN),
        ("shard-0-r0", NodeRole.REPLICA, HealthState.HEALTHY),
    ]
    assert after.locate("acct-1").primary.node_id == "shard-0-r1"


def test_a_failover_record_measures_recovery_from_the_first_failed_check() -> None:
    record = FailoverRecord(
        failover_id="f1",
        shard_id="shard-0",
        trigger=FailoverTrigger.AUTOMATIC,
        old_primary="shard-0-p",
        new_primary="shard-0-r0",
        promoted_lsn=1000,
        outage_started_at=NOW,
        completed_at=NOW + timedelta(seconds=63, milliseconds=250),
        topology_version=7,
    )
    assert record.recovery_time == timedelta(seconds=63, milliseconds=250)


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert format_lsn(0) == "0/0"
    with pytest.raises(InvalidArgument) as caught:
        parse_lsn("16-B374", "replay_lsn")
    assert caught.value.metadata["field"] == "replay_lsn"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: HealthPolicy(failure_threshold=0), "failure_threshold"),
        (lambda: HealthPolicy(check_interval=timedelta(0)), "check_interval"),
        (lambda: HealthPolicy(check_timeout=timedelta(minutes=5)), "check_timeout"),
        (lambda: CheckResult("n", True, NOW, lsn=-1), "lsn"),
        (lambda: CheckResult("n", True, NOW, lag_bytes=-1), "lag_bytes"),
        (lambda: CheckResult("n", True, NOW, lag=timedelta(seconds=-1)), "lag"),
        (lambda: NodeHealth("a").record(CheckResult("b", True, NOW), POLICY), "node_id"),
    ],
)
def test_bad_health_input_names_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build()
    assert caught.value.metadata["field"] == field


# Read routing


def test_round_robin_takes_healthy_replicas_in_turn() -> None:
    topology = healthy(with_shards("shard-0", replicas=3), "shard-0-r0", "shard-0-r1", "shard-0-r2")
    router = ReadRouter(RoutingConfig(ReadPolicy.ROUND_ROBIN))
    picks = [router.choose(topology.shard("shard-0")).node.node_id for _ in range(6)]
    assert picks == ["shard-0-r0", "shard-0-r1", "shard-0-r2"] * 2


def test_unhealthy_replicas_are_skipped() -> None:
    topology = healthy(with_shards("shard-0", replicas=3), "shard-0-r0", "shard-0-r2")
    topology = topology.with_node_health("shard-0-r1", HealthState.SUSPECT, now=NOW)
    for policy in ReadPolicy:
        router = ReadRouter(RoutingConfig(policy, seed=1))
        picks = {router.choose(topology.shard("shard-0")).node.node_id for _ in range(50)}
        assert picks == {"shard-0-r0", "shard-0-r2"}


def test_reads_fall_back_to_the_primary_without_a_healthy_replica() -> None:
    topology = with_shards("shard-0", replicas=2).with_node_health("shard-0-r0", HealthState.DOWN, now=NOW)
    for policy in ReadPolicy:
        target = ReadRouter(RoutingConfig(policy)).choose(topology.shard("shard-0"))
        assert target.node.node_id == "shard-0-p"
        assert target.fallback
    lone = ReadRouter().choose(healthy(with_shards("shard-0", replicas=1), "shard-0-r0").shard("shard-0"))
    assert (lone.node.node_id, lone.fallback) == ("shard-0-r0", False)


def test_power_of_two_choices_prefers_the_replica_with_fewer_reads_in_flight() -> None:
    topology = healthy(with_shards("shard-0", replicas=3), "shard-0-r0", "shard-0-r1", "shard-0-r2")
    shard = topology.shard("shard-0")
    router = ReadRouter(RoutingConfig(ReadPolicy.LEAST_CONNECTIONS, seed=7))
    for _ in range(5):
        router.begin("shard-0-r1")
    picks = Counter(router.choose(shard).node.node_id for _ in range(300))
    # Any pair containing the busy replica has a less busy partner, so it is never chosen.
    assert picks["shard-0-r1"] == 0
    assert picks["shard-0-r0"] > 100
    assert picks["shard-0-r2"] > 100


def test_power_of_two_choices_spreads_held_reads_evenly() -> None:
    topology = healthy(with_shards("shard-0", replicas=4), *(f"shard-0-r{i}" for i in range(4)))
    shard = topology.shard("shard-0")
    router = ReadRouter(RoutingConfig(ReadPolicy.LEAST_CONNECTIONS, seed=3))
    for _ in range(400):
        router.begin(router.choose(shard).node.node_id)
    loads = [router.in_flight(f"shard-0-r{i}") for i in range(4)]
    assert sum(loads) == 400
    assert max(loads) - min(loads) <= 4


def test_a_seeded_router_replays_its_choices() -> None:
    topology = healthy(with_shards("shard-0", replicas=4), *(f"shard-0-r{i}" for i in range(4)))
    shard = topology.shard("shard-0")
    first, second = (ReadRouter(RoutingConfig(seed=42)) for _ in range(2))
    assert [first.choose(shard).node.node_id for _ in range(50)] == [
        second.choose(shard).node.node_id for _ in range(50)
    ]


def test_a_read_counts_as_in_flight_only_while_it_runs() -> None:
    shard = healthy(with_shards("shard-0", replicas=2), "shard-0-r0", "shard-0-r1").shard("shard-0")
    router = ReadRouter(RoutingConfig(ReadPolicy.ROUND_ROBIN))
    with router.read(shard) as target:
        assert router.in_flight(target.node.node_id) == 1
    assert router.in_flight(target.node.node_id) == 0
    with pytest.raises(InvalidArgument):
        router.end(target.node.node_id)


def test_a_key_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        with_shards("shard-0").locate_many(["acct-1", "acct-\ud800"])
    assert caught.value.metadata["field"] == "keys[1]"
    assert with_shards("shard-0").locate("compte-é").shard_id == "shard-0"
