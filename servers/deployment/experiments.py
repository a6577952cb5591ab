"""A/B tests: arms bound to a flag or a route, exposure and conversion counts, and their
Beta-Binomial analysis.

Each arm's conversion rate has the posterior Beta(1 + conversions, 1 + exposures -
conversions) (a uniform prior). Probabilities of beating the control, of being best, and
the expected loss are estimated from one seeded, vectorised Monte Carlo draw of all
posteriors, so the same counts and seed always give the same numbers. No winner is called
before every arm has the minimum number of exposures: early peeks at small samples are
where A/B tests most often fool people.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

import numpy as np

from clients.bucketing import murmur3_x86_32
from servers.deployment.flags import FlagDefinition, FlagState, check_name
from servers.mesh.errors import FailedPrecondition, InvalidArgument

DEFAULT_MIN_EXPOSURES = 1000
"""Exposures every arm needs before a winner may be declared, unless the experiment says otherwise."""
DEFAULT_WIN_PROBABILITY = 0.95
"""Probability of beating the control a winner needs, unless the experiment says otherwise."""
DEFAULT_DRAWS = 100_000
"""Monte Carlo draws per arm."""
MAX_ARMS = 20
"""Most arms (control included) an experiment may have."""
MAX_COUNT = 2**62
"""Ceiling on any arm's exposures, so sums never overflow int64 in storage."""
CREDIBLE_MASS = 0.95
"""Mass of the reported credible intervals (equal-tailed)."""


class ExperimentState(StrEnum):
    """Where an experiment is in its life."""

    RUNNING = "RUNNING"
    CONCLUDED = "CONCLUDED"


class BindingKind(StrEnum):
    """What the arms of an experiment are."""

    FLAG = "FLAG"
    """Variants of a flag."""
    ROUTE = "ROUTE"
    """Versions of a service."""


class Decision(StrEnum):
    """What the results say at the experiment's threshold."""

    SAMPLE_GUARD_NOT_MET = "SAMPLE_GUARD_NOT_MET"
    NO_WINNER_YET = "NO_WINNER_YET"
    VARIANT_WINS = "VARIANT_WINS"
    CONTROL_WINS = "CONTROL_WINS"


@dataclass(frozen=True)
class Experiment:
    """An A/B test."""

    id: str
    """Identifier."""
    name: str
    """A name for people."""
    control: str
    """The control arm."""
    variants: tuple[str, ...]
    """The other arms."""
    binding: BindingKind
    """What the arms are."""
    target: str
    """The flag key (FLAG) or the service (ROUTE)."""
    min_exposures_per_arm: int
    """Fewest exposures every arm needs before a winner is declared."""
    win_probability: float
    """Probability of beating the control (or, for the control, every variant) a winner needs."""
    created_at: datetime
    """When it was created."""
    state: ExperimentState = ExperimentState.RUNNING
    """RUNNING or CONCLUDED."""
    winner: str = ""
    """The deployed winner, once concluded."""
    concluded_at: datetime | None = None
    """When the winner was deployed."""

    @property
    def arms(self) -> tuple[str, ...]:
        """Control first, then the variants."""
        return (self.control, *self.variants)


@dataclass(frozen=True)
class ArmCounts:
    """Exposures and conversions of one arm."""

    exposures: int = 0
    """Units that saw the arm."""
    conversions: int = 0
    """Of those, units that reached the goal."""


def check_win_probability(value: float, field_name: str) -> float:
    """`value` (0 → the default) if it is a usable threshold, else InvalidArgument."""
    if value == 0:
        return DEFAULT_WIN_PROBABILITY
    if not math.isfinite(value) or not 0.5 < value < 1:
        raise InvalidArgument(field_name, "must be above 0.5 and below 1")
    return value


def new_experiment(
    *,
    experiment_id: str,
    name: str,
    control: str,
    variants: Sequence[str],
    binding: BindingKind,
    target: str,
    created_at: datetime,
    min_exposures_per_arm: int = 0,
    win_probability: float = 0.0,
    available_arms: Collection[str] | None = None,
) -> Experiment:
    """Validate a CreateExperiment request into a RUNNING experiment.

    `available_arms` are the flag's variants or the route's versions; when given, every arm
    must be one of them.
    """
    if not name.strip():
        raise InvalidArgument("name", "is required")
    check_name(target, "flag.flag_key" if binding is BindingKind.FLAG else "route.service")
    if not control:
        raise InvalidArgument("control", "is required")
    if not variants:
        raise InvalidArgument("variants", "needs at least one variant besides the control")
    arms = [control, *variants]
    if len(arms) > MAX_ARMS:
        raise InvalidArgument("variants", f"at most {MAX_ARMS} arms in all")
    for i, arm in enumerate(variants):
        if not arm:
            raise InvalidArgument(f"variants[{i}]", "is empty")
        if arm in arms[: i + 1]:
            raise InvalidArgument(f"variants[{i}]", f"{arm!r} appears twice (or is the control)")
    if available_arms is not None:
        for field_name, arm in [("control", control), *((f"variants[{i}]", a) for i, a in enumerate(variants))]:
            if arm not in available_arms:
                raise InvalidArgument(field_name, f"{arm!r} is not one of {sorted(available_arms)}")
    if min_exposures_per_arm < 0:
        raise InvalidArgument("min_exposures_per_arm", "must not be negative")
    return Experiment(
        id=experiment_id,
        name=name.strip(),
        control=control,
        variants=tuple(variants),
        binding=binding,
        target=target,
        min_exposures_per_arm=min_exposures_per_arm or DEFAULT_MIN_EXPOSURES,
        win_probability=check_win_probability(win_probability, "win_probability"),
        created_at=created_at,
    )


def _batch(experiment: Experiment, entries: Sequence[tuple[str, int]], field_name: str) -> dict[str, int]:
    if experiment.state is not ExperimentState.RUNNING:
        raise FailedPrecondition(f"experiment {experiment.id} is concluded", reason="EXPERIMENT_CONCLUDED")
    if not entries:
        raise InvalidArgument(field_name, "needs at least one count")
    totals: dict[str, int] = {}
    for i, (arm, count) in enumerate(entries):
        if arm not in experiment.arms:
            raise InvalidArgument(f"{field_name}[{i}].arm", f"{arm!r} is not an arm of this experiment")
        if count < 1 or count > MAX_COUNT:
            raise InvalidArgument(f"{field_name}[{i}].count", f"must be from 1 to {MAX_COUNT}")
        totals[arm] = totals.get(arm, 0) + count
    return totals


def add_exposures(
    experiment: Experiment, counts: Mapping[str, ArmCounts], exposures: Sequence[tuple[str, int]]
) -> dict[str, ArmCounts]:
    """The counts after a RecordExposure batch of (arm, count) pairs."""
    updated = {arm: counts.get(arm, ArmCounts()) for arm in experiment.arms}
    for arm, added in _batch(experiment, exposures, "exposures").items():
        total = updated[arm].exposures + added
        if total > MAX_COUNT:
            raise InvalidArgument("exposures", f"{arm!r} would pass {MAX_COUNT} exposures")
        updated[arm] = replace(updated[arm], exposures=total)
    return updated


def add_conversions(
    experiment: Experiment, counts: Mapping[str, ArmCounts], conversions: Sequence[tuple[str, int]]
) -> dict[str, ArmCounts]:
    """The counts after a RecordOutcome batch; an arm never converts more units than it exposed."""
    updated = {arm: counts.get(arm, ArmCounts()) for arm in experiment.arms}
    for arm, added in _batch(experiment, conversions, "conversions").items():
        total = updated[arm].conversions + added
        if total > updated[arm].exposures:
            raise FailedPrecondition(
                f"arm {arm!r} would have {total} conversions for {updated[arm].exposures} exposures",
                reason="CONVERSIONS_EXCEED_EXPOSURES",
                metadata={"arm": arm},
            )
        updated[arm] = replace(updated[arm], conversions=total)
    return updated


@dataclass(frozen=True)
class ArmResult:
    """The analysis of one arm."""

    arm: str
    """The arm."""
    control: bool
    """True for the control."""
    exposures: int
    """Units exposed."""
    conversions: int
    """Units converted."""
    posterior_mean: float
    """Mean of the Beta posterior of its conversion rate."""
    credible_interval: tuple[float, float]
    """Equal-tailed 95 % credible interval of its conversion rate."""
    probability_to_beat_control: float
    """P(rate > control's rate); 0.5 for the control itself."""
    probability_best: float
    """P(its rate is the highest of all arms)."""
    expected_loss: float
    """E[best rate - its rate]: what choosing it costs in expectation."""
    sample_guard_met: bool
    """Whether it has the minimum number of exposures."""


@dataclass(frozen=True)
class ExperimentResults:
    """The analysis of an experiment and what it decides."""

    arms: tuple[ArmResult, ...]
    """Control first."""
    decision: Decision
    """What the results say."""
    winner: str
    """The winning arm with VARIANT_WINS / CONTROL_WINS, else empty."""
    draws: int
    """Monte Carlo draws per arm."""
    seed: int
    """Seed of the draws."""


def default_seed(experiment_id: str) -> int:
    """A fixed seed per experiment, so repeated reads of unchanged counts agree exactly."""
    return murmur3_x86_32(experiment_id)


def analyse(
    experiment: Experiment,
    counts: Mapping[str, ArmCounts],
    *,
    draws: int = DEFAULT_DRAWS,
    seed: int | None = None,
    win_probability: float | None = None,
) -> ExperimentResults:
    """Posteriors of every arm and the decision at `win_probability` (default: the experiment's)."""
    if draws < 1000:
        raise InvalidArgument("draws", "must be at least 1000")
    seed = default_seed(experiment.id) if seed is None else seed
    threshold = experiment.win_probability if win_probability is None else win_probability
    arms = experiment.arms
    observed = [counts.get(arm, ArmCounts()) for arm in arms]
    exposures = np.array([c.exposures for c in observed], dtype=np.float64)
    conversions = np.array([min(c.conversions, c.exposures) for c in observed], dtype=np.float64)
    alpha = 1.0 + conversions
    beta = 1.0 + exposures - conversions

    rng = np.random.default_rng(seed)
    samples = rng.beta(alpha[:, None], beta[:, None], size=(len(arms), draws))
    beats_control = (samples > samples[0]).mean(axis=1)
    beats_control[0] = 0.5
    best = np.bincount(samples.argmax(axis=0), minlength=len(arms)) / draws
    loss = (samples.max(axis=0) - samples).mean(axis=1)
    tail = (1 - CREDIBLE_MASS) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=1)

    results = tuple(
        ArmResult(
            arm=arm,
            control=i == 0,
            exposures=observed[i].exposures,
            conversions=observed[i].conversions,
            posterior_mean=float(alpha[i] / (alpha[i] + beta[i])),
            credible_interval=(float(low[i]), float(high[i])),
            probability_to_beat_control=float(beats_control[i]),
            probability_best=float(best[i]),
            expected_loss=float(loss[i]),
            sample_guard_met=observed[i].exposures >= experiment.min_exposures_per_arm,
        )
        for i, arm in enumerate(arms)
    )
    decision, winner = decide(results, threshold)
    return ExperimentResults(results, decision, winner, draws, seed)


def decide(arms: Sequence[ArmResult], win_probability: float) -> tuple[Decision, str]:
    """The decision over analysed arms (control first) at `win_probability`.

    A variant wins when it beats the control with at least that probability (the most
    probable one, then the one with the lower expected loss); the control wins when no
    variant beats it with more than 1 - that probability. Nothing is decided before every
    arm meets the sample guard.
    """
    if not all(arm.sample_guard_met for arm in arms):
        return Decision.SAMPLE_GUARD_NOT_MET, ""
    control, variants = arms[0], arms[1:]
    winners = [arm for arm in variants if arm.probability_to_beat_control >= win_probability]
    if winners:
        best = max(winners, key=lambda arm: (arm.probability_to_beat_control, -arm.expected_loss))
        return Decision.VARIANT_WINS, best.arm
    if all(arm.probability_to_beat_control <= 1 - win_probability for arm in variants):
        return Decision.CONTROL_WINS, control.arm
    return Decision.NO_WINNER_YET, ""


def require_winner(results: ExperimentResults) -> str:
    """The arm to deploy; FailedPrecondition NO_WINNER while the results decide nothing."""
    if results.decision in (Decision.VARIANT_WINS, Decision.CONTROL_WINS):
        return results.winner
    raise FailedPrecondition(
        f"no winner: {results.decision.value.lower().replace('_', ' ')}",
        reason="NO_WINNER",
        metadata={"decision": results.decision.value},
    )


def conclude(experiment: Experiment, winner: str, at: datetime) -> Experiment:
    """The experiment concluded with `winner` deployed."""
    if experiment.state is ExperimentState.CONCLUDED:
        raise FailedPrecondition(f"experiment {experiment.id} is concluded", reason="EXPERIMENT_CONCLUDED")
    if winner not in experiment.arms:
        raise InvalidArgument("winner", f"{winner!r} is not an arm of this experiment")
    return replace(experiment, state=ExperimentState.CONCLUDED, winner=winner, concluded_at=at)


def flag_with_winner(definition: FlagDefinition, winner: str) -> FlagDefinition:
    """A flag-bound winner: the flag serves `winner` to everyone (targeting dropped, enabled)."""
    if winner not in definition.variants:
        raise FailedPrecondition(
            f"flag {definition.key} has no variant {winner!r} any more", reason="WINNER_NOT_A_VARIANT"
        )
    return replace(definition, state=FlagState.ENABLED, default_variant=winner, targeting=None)


def route_weights_with_winner(winner: str) -> dict[str, int]:
    """A route-bound winner: all traffic (10000 basis points) on the winning version."""
    return {winner: 10_000}
