"""Progressive delivery as a pure state machine: (deployment, event, now) → (deployment, actions).

The events and actions are in `events`, the plan a deployment follows in `plans`, and the
state it is in (`Deployment`) in `progress`. Nothing here waits, sleeps or reads a clock, so
every path is tested by feeding events.

The rules, for every strategy:
- a step ends when its gate opens (the pause elapsed, or an operator promoted) and the
  latest analysis of the step passed; an inconclusive analysis at that moment pauses the
  deployment for a person to look;
- `failure_limit` failed analyses in a row roll back at once, whatever the state: traffic
  goes back to the old version first, then the new one is scaled down;
- new instances come before old ones go (blue-green warms the whole new colour first;
  rolling adds one new instance, waits until it is ready, shifts traffic, and only then
  removes an old one), so capacity never drops;
- every transition that changes something a person would notice is kept in the history.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from servers.deployment.analysis import AnalysisOutcome, Verdict
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
from servers.deployment.plans import WARMUP_TIMEOUT, DeploymentPlan, PauseMode, Strategy
from servers.deployment.progress import Deployment, HistoryEntry, PauseReason, State
from servers.deployment.routes import split_weights
from servers.mesh.errors import FailedPrecondition

CONTROLLER = "controller"
"""The actor of transitions caused by analyses, timers and instance readiness."""


@dataclass(frozen=True)
class Transition:
    """The outcome of an event."""

    deployment: Deployment
    """The deployment after it (the same object if nothing changed)."""
    actions: tuple[Action, ...]
    """What the controller must do, in this order."""
    entry: HistoryEntry | None
    """The history entry recorded; None when nothing a person would notice changed."""


# -- the machine ---------------------------------------------------------------------------------


def _at(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


def start(deployment_id: str, plan: DeploymentPlan, now: datetime, actor: str) -> Transition:
    """A new deployment and its first actions (the first traffic step, or warming up)."""
    base = Deployment(
        id=deployment_id,
        plan=plan,
        state=State.WARMING,
        created_at=now,
        updated_at=now,
        next_analysis_at=_at(now, plan.analysis.interval),
    )
    if plan.strategy is Strategy.CANARY:
        deployment, actions = _enter_step(base, 0, now)
        detail = f"canary to {plan.to_version} at {plan.steps[0].weight_percent} %"
    else:
        first_batch = plan.replicas if plan.strategy is Strategy.BLUE_GREEN else 1
        deployment = replace(
            base,
            ready_needed=first_batch,
            from_replicas=plan.replicas,
            to_replicas=first_batch,
            timer_at=_at(now, WARMUP_TIMEOUT),
        )
        actions = (
            SetWeights(plan.service, split_weights(plan.from_version, plan.to_version, 0)),
            ScaleVersion(plan.service, plan.to_version, first_batch),
        )
        detail = f"warming {first_batch} instance(s) of {plan.to_version}"
    entry = HistoryEntry(
        now, None, deployment.state, deployment.step, deployment.weight_percent, "CREATED", actor, detail
    )
    return Transition(replace(deployment, history=(entry,)), actions, entry)


def apply(deployment: Deployment, event: Event, now: datetime) -> Transition:
    """Apply `event` at `now`. Commands that do not fit the state raise FailedPrecondition."""
    if not deployment.active:
        if isinstance(event, Promote | Pause | Resume | Abort):
            raise FailedPrecondition(
                f"deployment {deployment.id} has ended ({deployment.state.value})", reason="DEPLOYMENT_ENDED"
            )
        return Transition(deployment, (), None)
    verdict: Verdict | None = None
    match event:
        case AnalysisCompleted(outcome=outcome):
            updated, actions, name, actor, detail = _on_analysis(deployment, outcome, now)
            verdict = outcome.verdict
        case InstancesReady():
            updated, actions, name, actor, detail = _on_instances_ready(deployment, event, now)
        case TimerElapsed():
            updated, actions, name, actor, detail = _on_timer(deployment, now)
        case Promote():
            updated, actions, name, actor, detail = _on_promote(deployment, event, now)
        case Pause():
            updated, actions, name, actor, detail = _on_pause(deployment, event, now)
        case Resume():
            updated, actions, name, actor, detail = _on_resume(deployment, event, now)
        case Abort():
            updated, actions, name, actor, detail = _on_abort(deployment, event)
    return _record(deployment, updated, actions, now, name, actor, detail, verdict)


def _record(
    before: Deployment,
    after: Deployment,
    actions: tuple[Action, ...],
    now: datetime,
    event: str,
    actor: str,
    detail: str,
    verdict: Verdict | None,
) -> Transition:
    if after == before and not actions:  # an observation that changed nothing (e.g. a stale timer)
        return Transition(before, (), None)
    visible = (after.state, after.step, after.pause_reason, after.consecutive_failures, after.step_verdict)
    previous = (before.state, before.step, before.pause_reason, before.consecutive_failures, before.step_verdict)
    entry = None
    history = before.history
    if visible != previous or actions or event not in ("ANALYSIS", "TIMER", "INSTANCES_READY"):
        entry = HistoryEntry(
            now, before.state, after.state, after.step, after.weight_percent, event, actor, detail, verdict
        )
        history = (*history, entry)
    changed = replace(after, history=history, updated_at=now, revision=before.revision + 1)
    return Transition(changed, actions, entry)


Outcome = tuple[Deployment, tuple[Action, ...], str, str, str]
"""(deployment, actions, event name, actor, detail)."""


def _enter_step(deployment: Deployment, index: int, now: datetime) -> tuple[Deployment, tuple[Action, ...]]:
    plan = deployment.plan
    step = plan.steps[index]
    timed = plan.pause_mode is PauseMode.TIMED
    entered = replace(
        deployment,
        state=State.PROGRESSING,
        step=index,
        weight_percent=step.weight_percent,
        pause_reason=None,
        step_verdict=None,
        gate_open=False,
        ready_needed=0,
        timer_at=_at(now, step.pause) if timed else None,
        timer_remaining=None,
        next_analysis_at=_at(now, plan.analysis.interval),
    )
    return entered, (SetWeights(plan.service, entered.weights),)


def _advance(deployment: Deployment, now: datetime) -> tuple[Deployment, tuple[Action, ...]]:
    """Leave the current step: the next step, warming for it, or the end."""
    plan = deployment.plan
    following = deployment.step + 1
    if following >= len(plan.steps):
        return _finish(deployment, now)
    if plan.strategy is not Strategy.ROLLING:
        return _enter_step(deployment, following, now)
    # Rolling: one old instance goes (the new one of this step is ready), one new one comes.
    old_left, new_wanted = plan.replicas - following, following + 1
    warming = replace(
        deployment,
        state=State.WARMING,
        pause_reason=None,
        gate_open=False,
        ready_needed=new_wanted,
        from_replicas=old_left,
        to_replicas=new_wanted,
        timer_at=_at(now, WARMUP_TIMEOUT),
        timer_remaining=None,
    )
    return warming, (
        ScaleVersion(plan.service, plan.from_version, old_left),
        ScaleVersion(plan.service, plan.to_version, new_wanted),
    )


def _finish(deployment: Deployment, now: datetime) -> tuple[Deployment, tuple[Action, ...]]:
    plan = deployment.plan
    full = split_weights(plan.from_version, plan.to_version, 100)
    if plan.strategy is Strategy.BLUE_GREEN and deployment.state is not State.STABILIZING:
        stabilizing = replace(
            deployment,
            state=State.STABILIZING,
            step=len(plan.steps) - 1,
            weight_percent=100,
            pause_reason=None,
            gate_open=False,
            timer_at=_at(now, plan.keep_previous_for),
            timer_remaining=None,
        )
        actions: tuple[Action, ...] = () if deployment.weight_percent == 100 else (SetWeights(plan.service, full),)
        return stabilizing, actions
    done = replace(
        deployment,
        state=State.SUCCEEDED,
        step=len(plan.steps) - 1,
        weight_percent=100,
        pause_reason=None,
        from_replicas=0,
        timer_at=None,
        timer_remaining=None,
        next_analysis_at=None,
    )
    weights: tuple[Action, ...] = () if deployment.weight_percent == 100 else (SetWeights(plan.service, full),)
    return done, (*weights, ScaleVersion(plan.service, plan.from_version, 0))


def _rollback(deployment: Deployment, state: State) -> tuple[Deployment, tuple[Action, ...]]:
    """Traffic back on the old version first, then the new version scaled down."""
    plan = deployment.plan
    actions: list[Action] = []
    if plan.strategy is Strategy.ROLLING and deployment.from_replicas < plan.replicas:
        actions.append(ScaleVersion(plan.service, plan.from_version, plan.replicas))
    actions.append(SetWeights(plan.service, split_weights(plan.from_version, plan.to_version, 0)))
    actions.append(ScaleVersion(plan.service, plan.to_version, 0))
    rolled_back = replace(
        deployment,
        state=state,
        weight_percent=0,
        pause_reason=None,
        from_replicas=plan.replicas,
        to_replicas=0,
        timer_at=None,
        timer_remaining=None,
        next_analysis_at=None,
    )
    return rolled_back, tuple(actions)


def _gate(deployment: Deployment, now: datetime) -> tuple[Deployment, tuple[Action, ...]]:
    """The step's gate is open: move on, pause, or keep waiting for a verdict."""
    if deployment.step_verdict is Verdict.PASS:
        return _advance(deployment, now)
    if deployment.step_verdict is Verdict.INCONCLUSIVE:
        return replace(deployment, state=State.PAUSED, pause_reason=PauseReason.ANALYSIS_INCONCLUSIVE), ()
    return deployment, ()


def _on_analysis(deployment: Deployment, outcome: AnalysisOutcome, now: datetime) -> Outcome:
    limits = deployment.plan.analysis
    analysed = replace(deployment, last_analysis=outcome, next_analysis_at=_at(now, limits.interval))
    detail = "; ".join(outcome.reasons) or f"{outcome.requests} calls, error rate {outcome.error_rate:.4f}"
    if outcome.verdict is Verdict.FAIL:
        failures = deployment.consecutive_failures + 1
        failed = replace(analysed, consecutive_failures=failures, step_verdict=Verdict.FAIL)
        if failed.pause_reason is PauseReason.AWAITING_PROMOTION:  # it passed, now it does not
            failed = replace(failed, state=State.PROGRESSING, pause_reason=None)
        if failures >= limits.failure_limit:
            rolled_back, actions = _rollback(failed, State.ROLLED_BACK)
            return (
                rolled_back,
                actions,
                "ANALYSIS",
                CONTROLLER,
                f"rolled back after {failures} failed analyses: {detail}",
            )
        return failed, (), "ANALYSIS", CONTROLLER, detail
    analysed = replace(analysed, consecutive_failures=0)
    if deployment.state in (State.WARMING, State.STABILIZING):
        return analysed, (), "ANALYSIS", CONTROLLER, detail
    judged = replace(analysed, step_verdict=outcome.verdict)
    if deployment.state is State.PAUSED:
        return judged, (), "ANALYSIS", CONTROLLER, detail
    if deployment.plan.pause_mode is PauseMode.MANUAL and outcome.verdict is Verdict.PASS and not judged.gate_open:
        awaiting = replace(judged, state=State.PAUSED, pause_reason=PauseReason.AWAITING_PROMOTION)
        return awaiting, (), "ANALYSIS", CONTROLLER, detail
    if judged.gate_open:
        gated, actions = _gate(judged, now)
        return gated, actions, "ANALYSIS", CONTROLLER, detail
    return judged, (), "ANALYSIS", CONTROLLER, detail


def _on_instances_ready(deployment: Deployment, event: InstancesReady, now: datetime) -> Outcome:
    plan = deployment.plan
    if deployment.state is not State.WARMING or event.version != plan.to_version:
        return deployment, (), "INSTANCES_READY", CONTROLLER, ""
    detail = f"{event.ready} instance(s) of {event.version} ready"
    if event.ready < deployment.ready_needed:
        return deployment, (), "INSTANCES_READY", CONTROLLER, detail
    if deployment.full_promotion:
        done, actions = _finish(deployment, now)
        return done, actions, "INSTANCES_READY", CONTROLLER, detail
    entered, actions = _enter_step(deployment, deployment.step + 1, now)
    return entered, actions, "INSTANCES_READY", CONTROLLER, detail


def _on_timer(deployment: Deployment, now: datetime) -> Outcome:
    if deployment.timer_at is None or now < deployment.timer_at:
        return deployment, (), "TIMER", CONTROLLER, ""
    if deployment.state is State.WARMING:
        rolled_back, actions = _rollback(deployment, State.ROLLED_BACK)
        detail = f"new instances not ready within {WARMUP_TIMEOUT:g} s"
        return rolled_back, actions, "TIMER", CONTROLLER, detail
    if deployment.state is State.STABILIZING:
        done, actions = _finish(deployment, now)
        return done, actions, "TIMER", CONTROLLER, f"{deployment.plan.from_version} drained"
    opened = replace(deployment, gate_open=True, timer_at=None)
    gated, actions = _gate(opened, now)
    return gated, actions, "TIMER", CONTROLLER, "step pause over"


def _on_promote(deployment: Deployment, event: Promote, now: datetime) -> Outcome:
    plan = deployment.plan
    if deployment.state is State.WARMING:
        raise FailedPrecondition("new instances are still warming up", reason="DEPLOYMENT_WARMING")
    detail = "promoted to the end" if event.full else "promoted to the next step"
    if not event.full or deployment.state is State.STABILIZING:
        advanced, actions = (
            _finish(deployment, now) if deployment.state is State.STABILIZING else _advance(deployment, now)
        )
        return advanced, actions, "PROMOTE", event.actor, detail
    if plan.strategy is not Strategy.ROLLING:
        done, actions = _finish(deployment, now)
        return done, actions, "PROMOTE", event.actor, detail
    warming = replace(
        deployment,
        state=State.WARMING,
        pause_reason=None,
        ready_needed=plan.replicas,
        full_promotion=True,
        to_replicas=plan.replicas,
        timer_at=_at(now, WARMUP_TIMEOUT),
        timer_remaining=None,
    )
    return warming, (ScaleVersion(plan.service, plan.to_version, plan.replicas),), "PROMOTE", event.actor, detail


def _on_pause(deployment: Deployment, event: Pause, now: datetime) -> Outcome:
    if deployment.state is not State.PROGRESSING:
        raise FailedPrecondition(
            f"only a progressing deployment can be paused, this one is {deployment.state.value}",
            reason="DEPLOYMENT_NOT_PROGRESSING",
        )
    remaining = (deployment.timer_at - now).total_seconds() if deployment.timer_at else None
    paused = replace(
        deployment,
        state=State.PAUSED,
        pause_reason=PauseReason.MANUAL,
        timer_at=None,
        timer_remaining=max(remaining, 0.0) if remaining is not None else None,
    )
    return paused, (), "PAUSE", event.actor, event.reason


def _on_resume(deployment: Deployment, event: Resume, now: datetime) -> Outcome:
    if deployment.state is not State.PAUSED:
        raise FailedPrecondition(f"deployment {deployment.id} is not paused", reason="DEPLOYMENT_NOT_PAUSED")
    if deployment.pause_reason is PauseReason.AWAITING_PROMOTION:
        raise FailedPrecondition("this step waits for PromoteDeployment", reason="DEPLOYMENT_AWAITING_PROMOTION")
    resumed = replace(deployment, state=State.PROGRESSING, pause_reason=None)
    if deployment.pause_reason is PauseReason.ANALYSIS_INCONCLUSIVE:
        return replace(resumed, step_verdict=None), (), "RESUME", event.actor, "re-analysing the step"
    if deployment.timer_remaining is not None:
        resumed = replace(resumed, timer_at=_at(now, deployment.timer_remaining), timer_remaining=None)
    if resumed.gate_open:
        gated, actions = _gate(resumed, now)
        return gated, actions, "RESUME", event.actor, ""
    return resumed, (), "RESUME", event.actor, ""


def _on_abort(deployment: Deployment, event: Abort) -> Outcome:
    aborted, actions = _rollback(deployment, State.ABORTED)
    return aborted, actions, "ABORT", event.actor, event.reason
