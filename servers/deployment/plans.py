"""What a deployment intends: its strategy, steps, pauses and limits, validated from a request.

A `DeploymentPlan` is fixed when the deployment is created; `domain` moves through it.
Durations are seconds; traffic steps are percentages of the service's calls on the new
version (routes carry them as basis points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from servers.deployment.analysis import AnalysisThresholds
from servers.deployment.routes import check_service, check_version
from servers.mesh.errors import InvalidArgument

DEFAULT_STEPS = (10, 25, 50, 100)
"""Canary and blue-green traffic steps, in percent."""
DEFAULT_PAUSE = 60.0
"""Seconds each step is held (timed pauses) unless the step says otherwise."""
DEFAULT_KEEP_PREVIOUS = 300.0
"""Seconds the old colour stays warm after a blue-green switch."""
WARMUP_TIMEOUT = 600.0
"""Seconds new instances get to become ready before the deployment is rolled back."""
MAX_STEPS = 20
"""Most traffic steps a canary or blue-green deployment may have."""
MAX_REPLICAS = 1000
"""Most instances per version a blue-green or rolling deployment may manage."""
MAX_DURATION = 24 * 3600.0
"""Longest pause or keep-warm period, in seconds."""


class Strategy(StrEnum):
    """How traffic and instances move from the old version to the new one."""

    CANARY = "CANARY"
    BLUE_GREEN = "BLUE_GREEN"
    ROLLING = "ROLLING"


class PauseMode(StrEnum):
    """What ends a step once its analysis passed."""

    TIMED = "TIMED"
    """The step's pause elapses."""
    MANUAL = "MANUAL"
    """An operator promotes."""


@dataclass(frozen=True)
class Step:
    """One traffic step."""

    weight_percent: int
    """Share of calls on the new version, 1..100."""
    pause: float
    """Seconds to hold it (timed pauses)."""


@dataclass(frozen=True)
class DeploymentPlan:
    """A validated CreateDeployment request."""

    service: str
    """The service deployed."""
    from_version: str
    """The version with the traffic at the start."""
    to_version: str
    """The version rolled out."""
    strategy: Strategy
    """The strategy."""
    steps: tuple[Step, ...]
    """Traffic steps; the last is 100 %. For rolling, one per instance."""
    pause_mode: PauseMode
    """What ends a step."""
    pause: float
    """Default seconds per step."""
    analysis: AnalysisThresholds
    """When the new version passes."""
    replicas: int
    """Instances per version (blue-green, rolling); 0 for canary."""
    keep_previous_for: float
    """Seconds the old colour stays warm after the switch (blue-green)."""


def _duration(value: float, default: float, field_name: str) -> float:
    if value == 0:
        return default
    if not math.isfinite(value) or value < 0 or value > MAX_DURATION:
        raise InvalidArgument(field_name, f"must be positive and at most {MAX_DURATION:g} s")
    return value


def _traffic_steps(steps: Sequence[tuple[int, float]], pause: float) -> tuple[Step, ...]:
    if not steps:
        return tuple(Step(weight, pause) for weight in DEFAULT_STEPS)
    if len(steps) > MAX_STEPS:
        raise InvalidArgument("steps", f"at most {MAX_STEPS} steps")
    checked: list[Step] = []
    for i, (weight, step_pause) in enumerate(steps):
        if not 1 <= weight <= 100:
            raise InvalidArgument(f"steps[{i}].weight_percent", "must be from 1 to 100")
        if checked and weight <= checked[-1].weight_percent:
            raise InvalidArgument(f"steps[{i}].weight_percent", "steps must increase")
        checked.append(Step(weight, _duration(step_pause, pause, f"steps[{i}].pause")))
    if checked[-1].weight_percent != 100:
        raise InvalidArgument(f"steps[{len(checked) - 1}].weight_percent", "the last step must be 100")
    return tuple(checked)


def rolling_steps(replicas: int, pause: float) -> tuple[Step, ...]:
    """One step per instance: after i of n new instances, i/n of the traffic (rounded)."""
    return tuple(Step(round(100 * (i + 1) / replicas), pause) for i in range(replicas))


def new_plan(
    *,
    service: str,
    from_version: str,
    to_version: str,
    strategy: Strategy | None = None,
    steps: Sequence[tuple[int, float]] = (),
    pause_mode: PauseMode | None = None,
    pause: float = 0.0,
    analysis: AnalysisThresholds | None = None,
    replicas: int = 0,
    registered_replicas: int = 0,
    keep_previous_for: float = 0.0,
) -> DeploymentPlan:
    """Validate a CreateDeployment request; errors name the request field.

    `steps` are (weight percent, pause seconds; 0 = default) pairs. `registered_replicas` is
    the number of registered instances of `from_version`, used when `replicas` is 0.
    """
    check_service(service)
    check_version(from_version, "from_version")
    check_version(to_version, "to_version")
    if from_version == to_version:
        raise InvalidArgument("to_version", "must differ from from_version")
    strategy = strategy or Strategy.CANARY
    step_pause = _duration(pause, DEFAULT_PAUSE, "pause_duration")
    planned_replicas = 0
    if strategy is Strategy.CANARY:
        planned_steps = _traffic_steps(steps, step_pause)
    else:
        if replicas < 0 or replicas > MAX_REPLICAS:
            raise InvalidArgument("replicas", f"must be from 0 to {MAX_REPLICAS}")
        planned_replicas = replicas or min(registered_replicas, MAX_REPLICAS)
        if planned_replicas < 1:
            raise InvalidArgument("replicas", "no instance of from_version is registered; give replicas")
        planned_steps = (
            rolling_steps(planned_replicas, step_pause)
            if strategy is Strategy.ROLLING
            else _traffic_steps(steps, step_pause)
        )
    return DeploymentPlan(
        service=service,
        from_version=from_version,
        to_version=to_version,
        strategy=strategy,
        steps=planned_steps,
        pause_mode=pause_mode or PauseMode.TIMED,
        pause=step_pause,
        analysis=analysis or AnalysisThresholds(),
        replicas=planned_replicas,
        keep_previous_for=_duration(keep_previous_for, DEFAULT_KEEP_PREVIOUS, "keep_previous_for"),
    )
