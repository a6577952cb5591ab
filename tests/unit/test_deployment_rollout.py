"""Progressive delivery: the canary, blue-green and rolling state machines, driven by events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from servers.deployment.analysis import AnalysisOutcome, AnalysisThresholds, Verdict
from servers.deployment.domain import Transition, apply, start
from servers.deployment.events import (
    Abort,
    Action,
    AnalysisCompleted,
    Event,
    InstancesReady,
    Pause,
    Promote,
    Resume,
    ScaleVersion,
    SetWeights,
    TimerElapsed,
)
from servers.deployment.plans import DeploymentPlan, PauseMode, Strategy, new_plan
from servers.deployment.progress import Deployment, PauseReason, State
from servers.deployment.snapshots import deployment_document, deployment_from_document
from servers.mesh.errors import FailedPrecondition, InvalidArgument

T0 = datetime(2030, 1, 1, tzinfo=UTC)
PASS = AnalysisCompleted(AnalysisOutcome(Verdict.PASS, 500, 2, 0.004, 0.08, 1.0, ()))
FAIL = AnalysisCompleted(AnalysisOutcome(Verdict.FAIL, 500, 60, 0.12, 0.08, 1.0, ("ERROR_RATE_TOO_HIGH: 0.12 > 0.05",)))
UNSURE = AnalysisCompleted(
    AnalysisOutcome(Verdict.INCONCLUSIVE, 3, 0, 0.0, None, 1.0, ("INSUFFICIENT_REQUESTS: 3 < 20",))
)


def plan(strategy: Strategy = Strategy.CANARY, **changes: object) -> DeploymentPlan:
    request: dict[str, object] = {
        "service": "credits",
        "from_version": "v1",
        "to_version": "v2",
        "strategy": strategy,
        "pause": 60.0,
        "analysis": AnalysisThresholds(interval=10.0, failure_limit=2),
        "registered_replicas": 3,
    }
    request.update(changes)
    return new_plan(**request)  # type: ignore[arg-type]


class Run:
    """A deployment driven through events, keeping every action it asked for."""

    def __init__(self, planned: DeploymentPlan) -> None:
        self.now = T0
        first = start("dep-1", planned, self.now, "alice")
        self.deployment: Deployment = first.deployment
        self.actions: list[Action] = list(first.actions)
        self.transitions: list[Transition] = [first]

    def send(self, event: Event, after: float = 0.0) -> Transition:
        self.now += timedelta(seconds=after)
        transition = apply(self.deployment, event, self.now)
        self.deployment = transition.deployment
        self.actions.extend(transition.actions)
        self.transitions.append(transition)
        return transition

    def state(self) -> State:
        """The current state (a call, so type checkers do not pin it between events)."""
        return self.deployment.state

    def pass_step(self) -> None:
        """A healthy step: an analysis passes, then the pause runs out."""
        self.send(PASS, after=10)
        self.send(TimerElapsed(), after=50)

    def weights(self) -> list[int]:
        """The new version's share (percent) in every SetWeights so far."""
        return [a.weights["v2"] // 100 for a in self.actions if isinstance(a, SetWeights)]


def test_a_healthy_canary_walks_10_25_50_100_and_is_promoted() -> None:
    run = Run(plan())
    assert (run.deployment.state, run.deployment.weight_percent) == (State.PROGRESSING, 10)
    for _ in range(4):
        run.pass_step()
    assert run.state() is State.SUCCEEDED
    assert run.weights() == [10, 25, 50, 100]
    assert run.actions[-1] == ScaleVersion("credits", "v1", 0)  # the old version drains last
    assert [(e.to_state, e.weight_percent) for e in run.deployment.history if e.event == "TIMER"] == [
        (State.PROGRESSING, 25),
        (State.PROGRESSING, 50),
        (State.PROGRESSING, 100),
        (State.SUCCEEDED, 100),
    ]
    assert not run.deployment.active
    assert run.deployment.next_analysis_at is None


def test_a_failing_canary_rolls_back_weights_first_then_scales_down() -> None:
    run = Run(plan())
    run.pass_step()
    assert run.deployment.weight_percent == 25
    run.send(FAIL, after=10)
    assert (run.deployment.state, run.deployment.consecutive_failures) == (State.PROGRESSING, 1)
    rollback = run.send(FAIL, after=10)
    assert run.state() is State.ROLLED_BACK
    assert rollback.actions == (
        SetWeights("credits", {"v1": 10_000, "v2": 0}),
        ScaleVersion("credits", "v2", 0),
    )
    assert rollback.entry is not None
    assert (rollback.entry.event, rollback.entry.verdict, rollback.entry.actor) == (
        "ANALYSIS",
        Verdict.FAIL,
        "controller",
    )
    assert "ERROR_RATE_TOO_HIGH" in rollback.entry.detail
    assert run.deployment.weight_percent == 0


def test_a_pass_between_failures_resets_the_count() -> None:
    run = Run(plan())
    for verdict in (FAIL, PASS, FAIL, PASS, FAIL):
        run.send(verdict, after=10)
    assert run.state() is State.PROGRESSING
    assert run.deployment.consecutive_failures == 1


def test_failures_roll_back_even_while_paused() -> None:
    run = Run(plan())
    run.send(Pause("bob", "checking dashboards"), after=5)
    run.send(FAIL, after=10)
    run.send(FAIL, after=10)
    assert run.state() is State.ROLLED_BACK


def test_an_inconclusive_analysis_when_the_step_ends_pauses_for_a_person() -> None:
    run = Run(plan())
    run.send(UNSURE, after=10)
    assert run.state() is State.PROGRESSING  # early doubt is only noted
    run.send(TimerElapsed(), after=50)
    assert (run.deployment.state, run.deployment.pause_reason) == (State.PAUSED, PauseReason.ANALYSIS_INCONCLUSIVE)
    run.send(PASS, after=10)
    assert run.state() is State.PAUSED  # a pause is lifted by a person
    run.send(Resume("bob"), after=1)
    assert (run.deployment.state, run.deployment.weight_percent) == (State.PROGRESSING, 10)
    run.send(PASS, after=10)
    assert run.deployment.weight_percent == 25


def test_a_step_whose_pause_ended_waits_for_its_first_verdict() -> None:
    run = Run(plan(analysis=AnalysisThresholds(interval=120.0)))
    run.send(TimerElapsed(), after=60)
    assert (run.deployment.state, run.deployment.weight_percent, run.deployment.gate_open) == (
        State.PROGRESSING,
        10,
        True,
    )
    run.send(PASS, after=60)
    assert run.deployment.weight_percent == 25


def test_manual_pauses_wait_for_promotion_after_the_analysis_passes() -> None:
    run = Run(plan(pause_mode=PauseMode.MANUAL))
    assert run.deployment.timer_at is None
    run.send(PASS, after=10)
    assert (run.deployment.state, run.deployment.pause_reason) == (State.PAUSED, PauseReason.AWAITING_PROMOTION)
    with pytest.raises(FailedPrecondition) as caught:
        run.send(Resume("bob"))
    assert caught.value.reason == "DEPLOYMENT_AWAITING_PROMOTION"
    run.send(FAIL, after=10)  # it passed, now it does not: no longer ready to promote
    assert (run.deployment.state, run.deployment.pause_reason) == (State.PROGRESSING, None)
    run.send(PASS, after=10)
    promoted = run.send(Promote("bob"), after=1)
    assert (run.deployment.state, run.deployment.weight_percent) == (State.PROGRESSING, 25)
    assert promoted.entry is not None and promoted.entry.actor == "bob"


def test_a_manual_pause_keeps_the_remaining_time_of_the_step() -> None:
    run = Run(plan())
    run.send(Pause("bob"), after=20)
    assert (run.deployment.state, run.deployment.timer_at, run.deployment.timer_remaining) == (State.PAUSED, None, 40.0)
    with pytest.raises(FailedPrecondition) as caught:
        run.send(Pause("bob"))
    assert caught.value.reason == "DEPLOYMENT_NOT_PROGRESSING"
    run.send(Resume("bob"), after=300)
    assert run.deployment.timer_at == run.now + timedelta(seconds=40)
    assert not run.deployment.timer_due(run.now + timedelta(seconds=39))
    assert run.deployment.timer_due(run.now + timedelta(seconds=40))


def test_promoting_overrides_the_analysis_and_full_promotion_ends_a_canary() -> None:
    run = Run(plan())
    run.send(Promote("bob"), after=1)
    assert run.deployment.weight_percent == 25
    finished = run.send(Promote("bob", full=True), after=1)
    assert run.state() is State.SUCCEEDED
    assert finished.actions == (SetWeights("credits", {"v1": 0, "v2": 10_000}), ScaleVersion("credits", "v1", 0))


def test_abort_rolls_back_and_ended_deployments_refuse_commands() -> None:
    run = Run(plan())
    run.pass_step()
    aborted = run.send(Abort("bob", "wrong build"), after=5)
    assert run.state() is State.ABORTED
    assert [type(a) for a in aborted.actions] == [SetWeights, ScaleVersion]
    assert aborted.entry is not None and (aborted.entry.actor, aborted.entry.detail) == ("bob", "wrong build")
    for command in (Promote("bob"), Pause("bob"), Resume("bob"), Abort("bob")):
        with pytest.raises(FailedPrecondition) as caught:
            run.send(command)
        assert caught.value.reason == "DEPLOYMENT_ENDED"
    assert run.send(PASS).actions == ()  # late observations change nothing


def test_the_history_keeps_every_visible_transition_and_skips_repeats() -> None:
    run = Run(plan())
    for _ in range(3):
        run.send(PASS, after=10)  # the second and third change nothing visible
    history = run.deployment.history
    assert [e.event for e in history] == ["CREATED", "ANALYSIS"]
    assert history[0].from_state is None and history[0].actor == "alice"
    assert run.deployment.revision == 4
    assert run.deployment.last_analysis == PASS.outcome


def test_analysis_and_timers_come_due_on_schedule() -> None:
    run = Run(plan())
    assert not run.deployment.analysis_due(T0 + timedelta(seconds=9))
    assert run.deployment.analysis_due(T0 + timedelta(seconds=10))
    assert run.deployment.timer_due(T0 + timedelta(seconds=60))
    run.send(PASS, after=12)
    assert run.deployment.next_analysis_at == T0 + timedelta(seconds=22)
    stale = run.send(TimerElapsed(), after=1)  # not due yet: nothing happens
    assert (stale.actions, stale.entry, stale.deployment.revision) == ((), None, 2)


# -- blue-green ---------------------------------------------------------------------------------------------


def test_blue_green_warms_the_new_colour_then_switches_and_keeps_the_old_one_warm() -> None:
    run = Run(plan(Strategy.BLUE_GREEN, steps=[(50, 0), (100, 0)], keep_previous_for=300.0))
    assert run.state() is State.WARMING
    assert run.actions == [SetWeights("credits", {"v1": 10_000, "v2": 0}), ScaleVersion("credits", "v2", 3)]
    with pytest.raises(FailedPrecondition) as caught:
        run.send(Promote("bob"))
    assert caught.value.reason == "DEPLOYMENT_WARMING"
    run.send(InstancesReady("v2", 2), after=20)
    assert run.state() is State.WARMING
    run.send(InstancesReady("v2", 3), after=10)
    assert (run.deployment.state, run.deployment.weight_percent) == (State.PROGRESSING, 50)
    run.pass_step()
    run.pass_step()
    assert (run.deployment.state, run.deployment.weight_percent) == (State.STABILIZING, 100)
    assert not any(isinstance(a, ScaleVersion) and a.version == "v1" for a in run.actions)  # old colour still warm
    run.send(TimerElapsed(), after=300)
    assert run.state() is State.SUCCEEDED
    assert run.actions[-1] == ScaleVersion("credits", "v1", 0)


def test_blue_green_rolls_back_instantly_while_the_old_colour_is_warm() -> None:
    run = Run(plan(Strategy.BLUE_GREEN, steps=[(100, 0)]))
    run.send(InstancesReady("v2", 3), after=10)
    run.pass_step()
    assert run.state() is State.STABILIZING
    run.send(FAIL, after=10)
    back = run.send(FAIL, after=10)
    assert run.state() is State.ROLLED_BACK
    assert back.actions == (SetWeights("credits", {"v1": 10_000, "v2": 0}), ScaleVersion("credits", "v2", 0))


def test_unhealthy_new_instances_roll_back_before_any_traffic() -> None:
    run = Run(plan(Strategy.BLUE_GREEN))
    run.send(FAIL, after=10)
    run.send(FAIL, after=10)
    assert (run.deployment.state, run.deployment.step) == (State.ROLLED_BACK, -1)


def test_instances_that_never_get_ready_time_out_into_a_rollback() -> None:
    run = Run(plan(Strategy.BLUE_GREEN))
    run.send(InstancesReady("v2", 1), after=100)
    timed_out = run.send(TimerElapsed(), after=500)
    assert run.state() is State.ROLLED_BACK
    assert timed_out.entry is not None and "not ready" in timed_out.entry.detail


# -- rolling ------------------------------------------------------------------------------------------------


class Fleet:
    """Instances as an executor would run them: scale-downs are immediate, scale-ups become
    ready only when told, and weights apply at once."""

    def __init__(self, old: int) -> None:
        self.ready = {"v1": old, "v2": 0}
        self.wanted = dict(self.ready)
        self.share = 0

    def perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, ScaleVersion):
                self.wanted[action.version] = action.replicas
                self.ready[action.version] = min(self.ready[action.version], action.replicas)
            else:
                self.share = action.weights["v2"]

    def start_pending(self) -> int:
        self.ready["v2"] = self.wanted["v2"]
        return self.ready["v2"]


def test_rolling_adds_a_new_instance_before_removing_an_old_one_and_never_loses_capacity() -> None:
    run = Run(plan(Strategy.ROLLING, replicas=3))
    fleet = Fleet(old=3)
    fleet.perform(run.actions)
    shares = []
    while run.deployment.active:
        assert sum(fleet.ready.values()) >= 3, f"capacity dropped: {fleet.ready}"
        if run.state() is State.WARMING:
            transition = run.send(InstancesReady("v2", fleet.start_pending()), after=15)
        else:
            shares.append(fleet.share)
            run.send(PASS, after=10)
            transition = run.send(TimerElapsed(), after=50)
        fleet.perform(transition.actions)
    assert run.state() is State.SUCCEEDED
    assert shares == [3300, 6700, 10_000]
    assert fleet.ready == {"v1": 0, "v2": 3}
    assert [s.weight_percent for s in run.deployment.plan.steps] == [33, 67, 100]


def test_a_rolling_rollback_restores_the_old_instances_before_moving_traffic() -> None:
    run = Run(plan(Strategy.ROLLING, replicas=3))
    run.send(InstancesReady("v2", 1), after=10)
    run.pass_step()
    assert run.deployment.from_replicas == 2
    back = run.send(Abort("bob"), after=5)
    assert back.actions == (
        ScaleVersion("credits", "v1", 3),
        SetWeights("credits", {"v1": 10_000, "v2": 0}),
        ScaleVersion("credits", "v2", 0),
    )


def test_full_promotion_of_a_rolling_deployment_waits_for_all_new_instances() -> None:
    run = Run(plan(Strategy.ROLLING, replicas=4))
    run.send(InstancesReady("v2", 1), after=10)
    promoted = run.send(Promote("bob", full=True), after=5)
    assert promoted.actions == (ScaleVersion("credits", "v2", 4),)
    assert run.state() is State.WARMING
    run.send(InstancesReady("v2", 3), after=5)
    done = run.send(InstancesReady("v2", 4), after=5)
    assert run.state() is State.SUCCEEDED
    assert done.actions == (SetWeights("credits", {"v1": 0, "v2": 10_000}), ScaleVersion("credits", "v1", 0))


# -- plans ---------------------------------------------------------------------------------------------------


def test_plans_fill_in_the_documented_defaults() -> None:
    canary = new_plan(service="credits", from_version="v1", to_version="v2")
    assert [s.weight_percent for s in canary.steps] == [10, 25, 50, 100]
    assert (canary.strategy, canary.pause_mode, canary.pause, canary.replicas) == (
        Strategy.CANARY,
        PauseMode.TIMED,
        60.0,
        0,
    )
    assert canary.analysis == AnalysisThresholds()
    custom = new_plan(service="credits", from_version="v1", to_version="v2", steps=[(5, 30), (100, 0)], pause=90)
    assert [(s.weight_percent, s.pause) for s in custom.steps] == [(5, 30.0), (100, 90.0)]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"service": "Credits!"}, "service"),
        ({"to_version": "v1"}, "to_version"),
        ({"from_version": ""}, "from_version"),
        ({"steps": [(50, 0), (40, 0), (100, 0)]}, "steps[1].weight_percent"),
        ({"steps": [(10, 0), (50, 0)]}, "steps[1].weight_percent"),
        ({"steps": [(0, 0), (100, 0)]}, "steps[0].weight_percent"),
        ({"steps": [(10, -5), (100, 0)]}, "steps[0].pause"),
        ({"steps": [(i, 0) for i in range(1, 101)]}, "steps"),
        ({"pause": -1.0}, "pause_duration"),
        ({"pause": float("inf")}, "pause_duration"),
        ({"strategy": Strategy.ROLLING, "registered_replicas": 0}, "replicas"),
        ({"strategy": Strategy.BLUE_GREEN, "replicas": -2}, "replicas"),
        ({"strategy": Strategy.BLUE_GREEN, "registered_replicas": 2, "keep_previous_for": 1e9}, "keep_previous_for"),
    ],
)
def test_invalid_plans_name_the_field(changes: dict[str, object], field: str) -> None:
    request: dict[str, object] = {"service": "credits", "from_version": "v1", "to_version": "v2"}
    request.update(changes)
    with pytest.raises(InvalidArgument) as caught:
        new_plan(**request)  # type: ignore[arg-type]
    assert caught.value.metadata["field"] == field


# -- storage documents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_deployment_survives_a_round_trip_through_its_json_document(strategy: Strategy) -> None:
    run = Run(plan(strategy, pause_mode=PauseMode.MANUAL))
    run.send(InstancesReady("v2", 3), after=10)
    run.send(UNSURE, after=10)
    run.send(PASS, after=10)
    run.send(FAIL, after=10)
    stored = json.loads(json.dumps(deployment_document(run.deployment)))
    assert deployment_from_document(stored) == run.deployment
    with pytest.raises(ValueError):
        deployment_from_document({**stored, "format": 99})
