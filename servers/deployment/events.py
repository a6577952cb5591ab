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
    """Instances of a version are registered and serving."""

    version: str
    """The version."""
    ready: int
    """How many of its instances are ready now (not how many became ready)."""


@dataclass(frozen=True)
class AnalysisCompleted:
    """An analysis of the new version finished."""

    outcome: AnalysisOutcome
    """Its verdict and numbers."""


@dataclass(frozen=True)
class TimerElapsed:
    """The deployment's timer (`timer_at`) is due."""


@dataclass(frozen=True)
class Promote:
    """An operator moves on to the next step now."""

    actor: str
    """Who."""
    full: bool = False
    """Skip the remaining steps."""


@dataclass(frozen=True)
class Pause:
    """An operator holds the deployment."""

    actor: str
    """Who."""
    reason: str = ""
    """Why, for the history."""


@dataclass(frozen=True)
class Resume:
    """An operator lets a paused deployment continue."""

    actor: str
    """Who."""


@dataclass(frozen=True)
class Abort:
    """An operator stops the deployment and rolls it back."""

    actor: str
    """Who."""
    reason: str = ""
    """Why, for the history."""


Event = InstancesReady | AnalysisCompleted | TimerElapsed | Promote | Pause | Resume | Abort


@dataclass(frozen=True)
class SetWeights:
    """Publish these route weights for the service."""

    service: str
    """The service."""
    weights: Mapping[str, int]
    """Basis points per version, summing to 10000."""


@dataclass(frozen=True)
class ScaleVersion:
    """Run this many instances of a version of the service.

    Scaling up completes when the instances are ready, which the controller reports with
    InstancesReady; scaling to 0 drains the version (it has no weight by then) and stops it.
    """

    service: str
    """The service."""
    version: str
    """The version."""
    replicas: int
    """Instances wanted."""


Action = SetWeights | ScaleVersion
