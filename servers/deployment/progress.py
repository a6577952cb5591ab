"""Where a deployment is: its state, step, traffic share, counters, timers and history.

`domain` moves a `Deployment` from one of these snapshots to the next; `snapshots` stores
them as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from servers.deployment.analysis import AnalysisOutcome, Verdict
from servers.deployment.plans import DeploymentPlan
from servers.deployment.routes import split_weights


class State(StrEnum):
    """Where a deployment is in its life."""

    WARMING = "WARMING"
    PROGRESSING = "PROGRESSING"
    PAUSED = "PAUSED"
    STABILIZING = "STABILIZING"
    SUCCEEDED = "SUCCEEDED"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"


TERMINAL_STATES = frozenset({State.SUCCEEDED, State.ROLLED_BACK, State.ABORTED})


class PauseReason(StrEnum):
    """Why a deployment is paused."""

    MANUAL = "MANUAL"
    ANALYSIS_INCONCLUSIVE = "ANALYSIS_INCONCLUSIVE"
    AWAITING_PROMOTION = "AWAITING_PROMOTION"


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded transition."""

    at: datetime
    """When."""
    from_state: State | None
    """State before (None for the creation)."""
    to_state: State
    """State after."""
    step: int
    """Step index after."""
    weight_percent: int
    """New version's share of traffic after."""
    event: str
    """What caused it: CREATED, INSTANCES_READY, ANALYSIS, TIMER, PROMOTE, PAUSE, RESUME or ABORT."""
    actor: str
    """Who: an operator, or `controller`."""
    detail: str = ""
    """A sentence for people."""
    verdict: Verdict | None = None
    """The verdict, for ANALYSIS."""


@dataclass(frozen=True)
class Deployment:
    """A deployment's full state."""

    id: str
    """Identifier."""
    plan: DeploymentPlan
    """What it intends."""
    state: State
    """Where it is."""
    created_at: datetime
    """When it was created."""
    updated_at: datetime
    """When it last changed."""
    step: int = -1
    """Index of the current traffic step; -1 before the first."""
    weight_percent: int = 0
    """Current share of traffic on the new version."""
    pause_reason: PauseReason | None = None
    """Why it is paused (PAUSED only)."""
    step_verdict: Verdict | None = None
    """Latest analysis verdict since the step began (or the deployment resumed)."""
    gate_open: bool = False
    """The step's pause is over (or was promoted); it ends at the next passing analysis."""
    consecutive_failures: int = 0
    """Failed analyses in a row."""
    last_analysis: AnalysisOutcome | None = None
    """The most recent analysis."""
    ready_needed: int = 0
    """While WARMING: ready new instances needed to go on."""
    full_promotion: bool = False
    """While WARMING after a full promotion (rolling): finish once all new instances are ready."""
    from_replicas: int = 0
    """Instances of the old version last asked for (blue-green, rolling)."""
    to_replicas: int = 0
    """Instances of the new version last asked for (blue-green, rolling)."""
    timer_at: datetime | None = None
    """When TimerElapsed is due: end of the step's pause, warm-up deadline or end of stabilization."""
    timer_remaining: float | None = None
    """Seconds left on the timer when an operator paused."""
    next_analysis_at: datetime | None = None
    """When the next analysis is due; None in terminal states."""
    history: tuple[HistoryEntry, ...] = field(default_factory=tuple)
    """Every recorded transition, oldest first."""
    revision: int = 1
    """Increases with every transition."""

    @property
    def active(self) -> bool:
        """True until the deployment succeeded, rolled back or was aborted."""
        return self.state not in TERMINAL_STATES

    @property
    def weights(self) -> dict[str, int]:
        """The route weights this deployment wants now."""
        return split_weights(self.plan.from_version, self.plan.to_version, self.weight_percent)

    def timer_due(self, now: datetime) -> bool:
        """True if TimerElapsed should be applied now."""
        return self.timer_at is not None and now >= self.timer_at

    def analysis_due(self, now: datetime) -> bool:
        """True if the new version should be analysed now."""
        return self.next_analysis_at is not None and now >= self.next_analysis_at
