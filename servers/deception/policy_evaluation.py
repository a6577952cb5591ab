"""Offline evaluation of decoy selection policies: replay of logged rounds, and simulated attackers.

`replay` estimates how a policy would have done on logged traffic with Li et al.'s rejection
sampling (WSDM 2011): the policy is asked to choose for each logged context, and the round
counts only if it picks the decoy that was actually shown. That is unbiased when the log was
made by uniformly random choice; for logs of other policies each match is further accepted
with probability (1/K) / propensity, which turns them into uniform logs wherever the logging
policy gave the decoy at least 1/K (rounds below that are accepted always, a bias towards the
logging policy that the report's `logged_rounds` vs `rounds` makes visible). The random and
best-fixed baselines come from the whole log, with rewards weighted by 1 / propensity.

`simulate` runs a policy against attackers whose engagement probabilities are known (and may
switch mid-run), and measures pseudo-regret exactly, against the per-round best decoy, the
best fixed decoy per context in hindsight, and random choice, on common random numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from servers.deception.policies import BanditConfig, BanditCore, SelectionPolicy
from servers.mesh.errors import InvalidArgument


@dataclass(frozen=True)
class LoggedRound:
    """One logged selection with its feedback."""

    context: str
    """Context bucket the decoy was chosen for."""
    decoy_id: str
    """The decoy shown."""
    reward: float
    """Engagement reward received, in [0, 1]."""
    propensity: float
    """Probability the logging policy had of showing this decoy (1/K for random)."""


@dataclass(frozen=True)
class RegretPoint:
    """Cumulative regrets after a number of replayed rounds."""

    round: int
    """Rounds replayed so far."""
    regret_vs_best_fixed: float
    """The policy's cumulative regret against the best fixed decoy."""
    random_regret_vs_best_fixed: float
    """Random choice's cumulative regret against the best fixed decoy."""


@dataclass(frozen=True)
class ReplayReport:
    """What a replay measured."""

    policy: SelectionPolicy
    """The policy evaluated."""
    seed: int
    """Seed of the replay's draws."""
    logged_rounds: int
    """Logged rounds offered to the policy."""
    rounds: int
    """Rounds accepted (where the policy agreed with the log)."""
    policy_reward: float
    """Total reward the policy collected in the accepted rounds."""
    random_reward: float
    """Expected total reward of random choice over as many rounds."""
    best_fixed_decoy_id: str
    """The decoy with the highest estimated engagement over the whole log ("" without data)."""
    best_fixed_reward: float
    """Expected total reward of always showing it over as many rounds."""
    curve: tuple[RegretPoint, ...]
    """Cumulative regret along the replay, sampled."""

    @property
    def regret_vs_best_fixed(self) -> float:
        """best_fixed_reward − policy_reward."""
        return self.best_fixed_reward - self.policy_reward

    @property
    def regret_vs_random(self) -> float:
        """random_reward − policy_reward (negative: the policy beat random)."""
        return self.random_reward - self.policy_reward


def _check_round(entry: LoggedRound, index: int) -> None:
    if not (math.isfinite(entry.reward) and 0.0 <= entry.reward <= 1.0):
        raise InvalidArgument(f"logged_rounds[{index}].reward", "must be in [0, 1]")
    if not (math.isfinite(entry.propensity) and 0.0 < entry.propensity <= 1.0):
        raise InvalidArgument(f"logged_rounds[{index}].propensity", "must be in (0, 1]")


def decoy_engagement(logged: Sequence[LoggedRound], decoy_ids: Sequence[str]) -> NDArray[np.float64]:
    """Estimated engagement rate per decoy from the whole log (self-normalised 1/propensity weights).

    NaN for a decoy that was never shown.
    """
    index = {decoy: i for i, decoy in enumerate(decoy_ids)}
    weighted = np.zeros(len(decoy_ids))
    weights = np.zeros(len(decoy_ids))
    for position, entry in enumerate(logged):
        _check_round(entry, position)
        arm = index.get(entry.decoy_id)
        if arm is None:
            continue
        weighted[arm] += entry.reward / entry.propensity
        weights[arm] += 1.0 / entry.propensity
    with np.errstate(invalid="ignore", divide="ignore"):
        result: NDArray[np.float64] = np.where(weights > 0, weighted / np.maximum(weights, 1e-300), np.nan)
    return result


def replay(
    logged: Sequence[LoggedRound],
    decoy_ids: Sequence[str],
    policy: SelectionPolicy,
    *,
    config: BanditConfig | None = None,
    seed: int = 0,
    max_rounds: int = 0,
    curve_points: int = 50,
) -> ReplayReport:
    """Replay `logged` (oldest first) through a fresh `policy`; rounds naming unknown decoys are skipped."""
    if max_rounds < 0:
        raise InvalidArgument("max_rounds", "must not be negative")
    core = BanditCore(decoy_ids, config or BanditConfig())
    engagement = decoy_engagement(logged, decoy_ids)
    known = ~np.isnan(engagement)
    random_rate = float(np.mean(engagement[known])) if known.any() else 0.0
    best = int(np.nanargmax(engagement)) if known.any() else -1
    best_rate = float(engagement[best]) if best >= 0 else 0.0
    index = {decoy: i for i, decoy in enumerate(decoy_ids)}
    rng = np.random.default_rng(seed)
    uniform = 1.0 / len(decoy_ids)
    accepted = 0
    collected = 0.0
    trace: list[tuple[int, float]] = []
    for entry in logged:
        arm = index.get(entry.decoy_id)
        if arm is None:
            continue
        bucket = core.bucket(entry.context)
        picked = core.pick(bucket, policy, rng)
        if picked != arm or rng.random() >= min(1.0, uniform / entry.propensity):
            continue
        core.update(bucket, arm, entry.reward)
        accepted += 1
        collected += entry.reward
        trace.append((accepted, collected))
        if accepted == max_rounds:
            break
    step = max(1, math.ceil(len(trace) / max(curve_points, 1)))
    sampled = trace[step - 1 :: step]
    if trace and (not sampled or sampled[-1] != trace[-1]):
        sampled.append(trace[-1])
    curve = tuple(RegretPoint(t, t * best_rate - reward, t * (best_rate - random_rate)) for t, reward in sampled)
    return ReplayReport(
        policy=policy,
        seed=seed,
        logged_rounds=len(logged),
        rounds=accepted,
        policy_reward=collected,
        random_reward=accepted * random_rate,
        best_fixed_decoy_id=decoy_ids[best] if best >= 0 else "",
        best_fixed_reward=accepted * best_rate,
        curve=curve,
    )


@dataclass(frozen=True)
class AttackerPopulation:
    """Simulated attackers: how often each context occurs and how likely each decoy engages it."""

    contexts: tuple[str, ...]
    """Context buckets."""
    frequencies: tuple[float, ...]
    """Relative frequency of each context."""
    engagement: tuple[tuple[float, ...], ...]
    """Engagement probability per context (rows) and decoy (columns)."""
    switch_round: int | None = None
    """Round from which `engagement_after` applies (None: preferences never change)."""
    engagement_after: tuple[tuple[float, ...], ...] | None = None
    """Engagement probabilities after the switch."""

    def probabilities(self, switched: bool) -> NDArray[np.float64]:
        """The engagement matrix before or after the switch."""
        table = self.engagement_after if switched and self.engagement_after is not None else self.engagement
        return np.asarray(table, dtype=np.float64)


@dataclass(frozen=True)
class SimulationResult:
    """Cumulative (pseudo-)regrets of one simulated run, one entry per round."""

    policy: SelectionPolicy
    """The policy simulated."""
    regret: NDArray[np.float64]
    """Cumulative regret against the best decoy of each round (the oracle)."""
    regret_vs_best_fixed: NDArray[np.float64]
    """Cumulative regret against the best fixed decoy per context in hindsight."""
    random_regret: NDArray[np.float64]
    """Cumulative oracle regret of uniformly random choice on the same rounds."""
    reward: NDArray[np.float64]
    """Cumulative reward collected."""

    @property
    def rounds(self) -> int:
        """Rounds simulated."""
        return int(self.regret.size)


def simulate(
    population: AttackerPopulation,
    decoy_ids: Sequence[str],
    policy: SelectionPolicy,
    rounds: int,
    *,
    config: BanditConfig | None = None,
    seed: int = 0,
) -> SimulationResult:
    """Run `policy` for `rounds` against `population`; the same seed gives every policy the same attackers."""
    if rounds < 1:
        raise InvalidArgument("rounds", "must be at least 1")
    before = population.probabilities(False)
    after = population.probabilities(True)
    if before.shape != (len(population.contexts), len(decoy_ids)) or before.shape != after.shape:
        raise InvalidArgument("engagement", "needs one row per context and one column per decoy")
    core = BanditCore(decoy_ids, config or BanditConfig())
    world, chooser = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    frequencies = np.asarray(population.frequencies, dtype=np.float64)
    contexts = world.choice(len(population.contexts), size=rounds, p=frequencies / frequencies.sum())
    luck = world.random(rounds)
    switch = population.switch_round if population.switch_round is not None else rounds
    probabilities = np.empty((rounds, len(decoy_ids)))
    chosen = np.empty(rounds, dtype=np.int64)
    rewards = np.empty(rounds)
    for t in range(rounds):
        row = (after if t >= switch else before)[contexts[t]]
        bucket = population.contexts[contexts[t]]
        arm = core.pick(bucket, policy, chooser)
        reward = float(luck[t] < row[arm])
        core.update(bucket, arm, reward)
        probabilities[t] = row
        chosen[t] = arm
        rewards[t] = reward
    obtained = probabilities[np.arange(rounds), chosen]
    fixed = np.empty(rounds)
    for context in range(len(population.contexts)):
        mask = contexts == context
        if mask.any():
            fixed[mask] = probabilities[mask][:, int(np.argmax(probabilities[mask].sum(axis=0)))]
    return SimulationResult(
        policy=policy,
        regret=np.cumsum(probabilities.max(axis=1) - obtained),
        regret_vs_best_fixed=np.cumsum(fixed - obtained),
        random_regret=np.cumsum(probabilities.max(axis=1) - probabilities.mean(axis=1)),
        reward=np.cumsum(rewards),
    )
