"""Rebalance plans (which accounts move where) and the per-account move workflow."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from servers.mesh.errors import FailedPrecondition, InvalidArgument, NotFound
from servers.sharding.domain import Reason
from servers.sharding.rebalance import (
    AccountMove,
    AccountState,
    RebalanceConfig,
    RebalancePhase,
    RebalancePlan,
    RebalanceWorkflow,
    plan_rebalance,
)
from servers.sharding.ring import HashRing, RingMember, choose_placement_seed

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ACCOUNTS = [f"acct-{i:05d}" for i in range(20_000)]


def grow(shard_ids: list[str], ring: HashRing | None = None) -> HashRing:
    ring = ring or HashRing()
    for shard_id in shard_ids:
        ring = ring.with_member(RingMember(shard_id, 1.0, choose_placement_seed(ring, shard_id)))
    return ring


FOUR = grow([f"shard-{i}" for i in range(4)])
FIVE = grow(["shard-4"], FOUR)


def test_adding_a_fifth_shard_moves_about_a_fifth_of_the_accounts_onto_it() -> None:
    plan = plan_rebalance(FOUR, FIVE, ACCOUNTS)
    assert plan.total_accounts == len(ACCOUNTS)
    assert 0.85 / 5 <= plan.moved_fraction <= 1.15 / 5
    assert plan.moved_fraction == pytest.approx(plan.expected_moved_fraction, abs=0.01)
    assert {m.target_shard for m in plan.moves} == {"shard-4"}
    assert {source for source, _ in plan.flows()} == {"shard-0", "shard-1", "shard-2", "shard-3"}
    assert sum(plan.flows().values()) == len(plan.moves)
    for move in plan.moves[:50]:
        assert FOUR.locate(move.account_id) == move.source_shard
        assert FIVE.locate(move.account_id) == move.target_shard
    assert [m.account_id for m in plan.moves] == sorted(m.account_id for m in plan.moves)


def test_removing_a_shard_moves_exactly_its_accounts() -> None:
    without = FIVE.without_shard("shard-2")
    plan = plan_rebalance(FIVE, without, ACCOUNTS)
    on_removed = {a for a in ACCOUNTS if FIVE.locate(a) == "shard-2"}
    assert {m.account_id for m in plan.moves} == on_removed
    assert {m.source_shard for m in plan.moves} == {"shard-2"}
    assert "shard-2" not in {m.target_shard for m in plan.moves}


def test_a_plan_counts_duplicate_accounts_once() -> None:
    plan = plan_rebalance(FOUR, FIVE, ACCOUNTS[:100] * 3)
    assert plan.total_accounts == 100
    assert len({m.account_id for m in plan.moves}) == len(plan.moves)


def test_an_unchanged_ring_moves_nothing() -> None:
    plan = plan_rebalance(FOUR, FOUR, ACCOUNTS[:1000])
    assert plan.moves == ()
    assert plan.expected_moved_fraction == 0.0
    empty = plan_rebalance(FOUR, FIVE, [])
    assert (empty.total_accounts, empty.moved_fraction) == (0, 0.0)


def test_planning_needs_shards_and_valid_account_ids() -> None:
    with pytest.raises(FailedPrecondition) as no_shards:
        plan_rebalance(HashRing(), FOUR, ["acct-1"])
    assert no_shards.value.reason == Reason.NO_SHARDS
    with pytest.raises(InvalidArgument) as bad:
        plan_rebalance(FOUR, FIVE, ["acct-1", ""])
    assert bad.value.metadata["field"] == "account_ids[1]"


def small_plan() -> RebalancePlan:
    moves = tuple(AccountMove(f"acct-{i}", "shard-0", "shard-1") for i in range(5))
    return RebalancePlan(moves, 20, 0.25)


def walk(workflow: RebalanceWorkflow, account_id: str, until: AccountState) -> None:
    for state in (AccountState.VERIFYING, AccountState.FENCED, AccountState.CUT_OVER, AccountState.DONE):
        workflow.advance(account_id, state, now=NOW)
        if state is until:
            return


def test_an_account_goes_through_copy_verify_fence_cut_over_and_done() -> None:
    workflow = RebalanceWorkflow.start("r1", small_plan(), now=NOW, config=RebalanceConfig(batch_size=2))
    batch = workflow.next_batch(now=NOW)
    assert [m.account_id for m in batch] == ["acct-0", "acct-1"]
    assert workflow.account("acct-0").state is AccountState.COPYING
    assert workflow.account("acct-0").attempts == 1

    walk(workflow, "acct-0", AccountState.FENCED)
    walk(workflow, "acct-1", AccountState.DONE)
    routing = workflow.routing()
    assert routing.rebalance_id == "r1"
    assert routing.fenced == {"acct-0"}
    assert routing.moved == {"acct-1"}
    assert not routing.fence_unplanned

    progress = workflow.progress()
    assert progress.total == 5
    assert progress.count(AccountState.PENDING) == 3
    assert progress.count(AccountState.FENCED) == 1
    assert progress.count(AccountState.DONE) == 1
    assert progress.fraction_done == pytest.approx(0.2)


def test_a_step_cannot_be_skipped() -> None:
    workflow = RebalanceWorkflow.start("r1", small_plan(), now=NOW)
    workflow.next_batch(now=NOW)
    with pytest.raises(FailedPrecondition) as caught:
        workflow.advance("acct-0", AccountState.CUT_OVER, now=NOW)
    assert caught.value.reason == Reason.INVALID_TRANSITION
    assert caught.value.metadata == {"from": "copying", "to": "cut_over"}
    with pytest.raises(NotFound) as missing:
        workflow.advance("acct-99", AccountState.VERIFYING, now=NOW)
    assert missing.value.reason == Reason.ACCOUNT_NOT_IN_REBALANCE


def test_a_failed_attempt_retries_then_gives_up_and_keeps_the_account_on_its_source() -> None:
    plan = RebalancePlan((AccountMove("acct-0", "shard-0", "shard-1"),), 1, 1.0)
    workflow = RebalanceWorkflow.start("r1", plan, now=NOW, config=RebalanceConfig(max_attempts=2))
    workflow.next_batch(now=NOW)
    walk(workflow, "acct-0", AccountState.FENCED)
    assert workflow.fail("acct-0", "checksum mismatch", now=NOW) is AccountState.PENDING
    assert workflow.routing().fenced == frozenset()  # the fence is lifted with the failure
    workflow.next_batch(now=NOW)
    assert workflow.fail("acct-0", "checksum mismatch", now=NOW) is AccountState.FAILED
    assert workflow.account("acct-0").last_error == "checksum mismatch"
    assert workflow.next_batch(now=NOW) == []
    assert workflow.routing().moved == frozenset()

    assert workflow.retry_failed(now=NOW) == 1
    assert [m.account_id for m in workflow.next_batch(now=NOW)] == ["acct-0"]


def test_a_failed_cleanup_after_cut_over_does_not_undo_the_move() -> None:
    workflow = RebalanceWorkflow.start("r1", small_plan(), now=NOW)
    workflow.next_batch(now=NOW)
    walk(workflow, "acct-0", AccountState.CUT_OVER)
    assert workflow.fail("acct-0", "delete timed out", now=NOW) is AccountState.CUT_OVER
    assert "acct-0" in workflow.routing().moved


def test_a_fence_held_too_long_is_lifted() -> None:
    workflow = RebalanceWorkflow.start(
        "r1", small_plan(), now=NOW, config=RebalanceConfig(fence_timeout=timedelta(seconds=2))
    )
    workflow.next_batch(now=NOW)
    walk(workflow, "acct-0", AccountState.FENCED)
    assert workflow.expire_fences(now=NOW + timedelta(seconds=2)) == []
    assert workflow.expire_fences(now=NOW + timedelta(seconds=3)) == ["acct-0"]
    assert workflow.account("acct-0").state is AccountState.PENDING
    assert workflow.routing().fenced == frozenset()


def test_completion_waits_for_every_account_and_the_straggler_sweep() -> None:
    workflow = RebalanceWorkflow.start("r1", small_plan(), now=NOW)
    with pytest.raises(FailedPrecondition) as early:
        workflow.begin_finalizing()
    assert early.value.reason == Reason.REBALANCE_UNFINISHED
    assert early.value.metadata["unfinished"] == "5"

    while batch := workflow.next_batch(now=NOW):
        for move in batch:
            walk(workflow, move.account_id, AccountState.DONE)
    with pytest.raises(FailedPrecondition) as not_finalizing:
        workflow.complete(now=NOW)
    assert not_finalizing.value.reason == Reason.INVALID_TRANSITION

    workflow.begin_finalizing()
    assert workflow.phase is RebalancePhase.FINALIZING
    assert workflow.routing().fence_unplanned
    straggler = AccountMove("acct-new", "shard-0", "shard-1")
    assert workflow.add_accounts([straggler, straggler], now=NOW) == 1
    with pytest.raises(FailedPrecondition):
        workflow.complete(now=NOW)
    for move in workflow.next_batch(now=NOW):
        walk(workflow, move.account_id, AccountState.DONE)
    workflow.complete(now=NOW + timedelta(minutes=1))
    phase: RebalancePhase = workflow.phase  # a fresh read: mypy keeps the earlier narrowing
    assert phase is RebalancePhase.COMPLETED
    assert workflow.finished_at == NOW + timedelta(minutes=1)
    with pytest.raises(FailedPrecondition):
        workflow.next_batch(now=NOW)


def test_a_workflow_restored_from_stored_accounts_continues_where_it_stopped() -> None:
    first = RebalanceWorkflow.start("r1", small_plan(), now=NOW)
    first.next_batch(now=NOW)
    walk(first, "acct-0", AccountState.DONE)
    restored = RebalanceWorkflow("r1", first.accounts(), started_at=NOW)
    assert restored.progress() == first.progress()
    assert restored.routing() == first.routing()


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: RebalanceConfig(batch_size=0), "batch_size"),
        (lambda: RebalanceConfig(max_attempts=0), "max_attempts"),
        (lambda: RebalanceConfig(fence_timeout=timedelta(0)), "fence_timeout"),
        (lambda: RebalanceWorkflow("", [], started_at=NOW), "rebalance_id"),
    ],
)
def test_bad_rebalance_settings_name_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build()
    assert caught.value.metadata["field"] == field
