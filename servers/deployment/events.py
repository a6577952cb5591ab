"""What moves a deployment and what it asks for.

Events are what the controller observes (new instances ready, an analysis verdict, a timer)
and what operators command (promote, pause, resume, abort). Actions are what the controller
must do after a transition, in the order given: publish route weights, scale a version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from servers.deployment.analysis import AnalysisOutcome


@dataclass(frozen=True)
class InstancesReady:
    """`ready` instances of `version` are registered and serving."""

    version: str
    ready: int


@dataclass(frozen=True)
class AnalysisCompleted:
    """An analysis of the new version finished."""

    outcome: AnalysisOutcome


@dataclass(frozen=True)
class TimerElapsed:
    """The deployment's timer (`timer_at`) is due."""


@dataclass(frozen=True)
class Promote:
    """An operator moves on to the next step now (`full`: to the end)."""

    actor: str
    full: bool = False


@dataclass(frozen=True)
class Pause:
    """An operator holds the deployment."""

    actor: str
    reason: str = ""


@dataclass(frozen=True)
class Resume:
    """An operator lets a paused deployment continue."""

    actor: str


@dataclass(frozen=True)
class Abort:
    """An operator stops the deployment and rolls it back."""

    actor: str
    reason: str = ""


Event = InstancesReady | AnalysisCompleted | TimerElapsed | Promote | Pause | Resume | Abort


@dataclass(frozen=True)
class SetWeights:
    """Publish these route weights (basis points per version) for the service."""

    service: str
    weights: Mapping[str, int]


@dataclass(frozen=True)
class ScaleVersion:
    """Run this many instances of a version of the service (0: drain and stop them)."""

    service: str
    version: str
    replicas: int


Action = SetWeights | ScaleVersion
