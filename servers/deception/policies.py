"""Decoy selection policies: Thompson sampling and UCB1 over discounted evidence, per attacker context.

Each context bucket (a coarse summary of the attacker: stage, tool, target) keeps, per decoy,
discounted counts of engagements and non-engagements. On every feedback in a bucket the old
evidence of all its decoys is multiplied by γ (`discount`) before the new reward is added, so
the policy forgets at a steady rate and follows attackers whose preferences change (γ = 1 is
the classic stationary bandit). Thompson sampling draws from Beta(prior + evidence); UCB1
ranks decoys by mean + sqrt(c · ln N / n) on the same discounted counts. `BanditCore` holds
the evidence and decides; `bandit.DecoySelector` logs and locks around it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from servers.mesh.errors import InvalidArgument

OVERFLOW_BUCKET = "*"
"""Bucket shared by contexts that arrive after `max_buckets` distinct ones exist."""

_PROPENSITY_DRAWS = 512
# Thompson's probability of choosing each decoy has no closed form; it is estimated from this
# many extra posterior draws (standard error below 2.5 %), from a stream apart from the choice.


class SelectionPolicy(enum.Enum):
    """A decoy selection policy; the value is the contract's SelectionPolicy number."""

    THOMPSON = 1
    UCB1 = 2
    RANDOM = 3


@dataclass(frozen=True)
class BanditConfig:
    """Settings of the selection policies."""

    discount: float = 0.998
    """γ in (0, 1]: factor applied to a bucket's old evidence on each update (1: never forget).

    The evidence of a bucket spans about 1 / (1 − γ) updates. 0.998 (~500) measured best
    against simulated attackers that switch preferences: 0.99 forgets so fast that even
    stationary attackers keep it exploring (regret ~10x that of γ = 1), while γ = 1 is slow
    to notice a switch."""
    prior_alpha: float = 1.0
    """Beta prior's alpha (pseudo-engagements) for every decoy."""
    prior_beta: float = 1.0
    """Beta prior's beta (pseudo-non-engagements) for every decoy."""
    exploration: float = 0.5
    """UCB1's c in mean + sqrt(c · ln N / n). Auer et al. use 2, which over-explores on discounted
    counts (they never grow past ~1 / (1 − γ)); 0.5 halved the simulated regret."""
    max_buckets: int = 1024
    """Distinct context buckets kept; later new contexts share OVERFLOW_BUCKET."""
    max_pending: int = 100_000
    """Selections remembered for feedback; the oldest are forgotten first."""

    def validate(self) -> None:
        """InvalidArgument naming the first setting that is out of range."""
        if not (math.isfinite(self.discount) and 0 < self.discount <= 1):
            raise InvalidArgument("discount", "must be in (0, 1]")
        for name in ("prior_alpha", "prior_beta", "exploration"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidArgument(name, "must be a positive finite number")
        if self.max_buckets < 1:
            raise InvalidArgument("max_buckets", "must be at least 1")
        if self.max_pending < 1:
            raise InvalidArgument("max_pending", "must be at least 1")


@dataclass(frozen=True)
class ArmScore:
    """A decoy's standing when a selection was made."""

    decoy_id: str
    """The decoy."""
    score: float
    """What the policy compared: a Thompson draw, a UCB1 index (inf: never tried) or 0 for random."""
    posterior_alpha: float
    """Alpha of the decoy's discounted Beta posterior."""
    posterior_beta: float
    """Beta of the decoy's discounted Beta posterior."""


@dataclass(frozen=True)
class Choice:
    """What a policy picked and why."""

    arm: int
    """Index of the chosen decoy."""
    scores: tuple[ArmScore, ...]
    """Every decoy's score, in decoy order."""
    propensity: float
    """Probability that the policy, in this state, picks this decoy (for off-policy evaluation)."""


class BanditCore:
    """Discounted per-bucket evidence and the three policies; no logging, no locking."""

    def __init__(self, decoy_ids: Sequence[str], config: BanditConfig) -> None:
        """A core over `decoy_ids` (distinct, non-empty)."""
        config.validate()
        if not decoy_ids:
            raise InvalidArgument("decoy_ids", "at least one decoy is needed to select from")
        if len(set(decoy_ids)) != len(decoy_ids) or not all(decoy_ids):
            raise InvalidArgument("decoy_ids", "decoy ids must be distinct and non-empty")
        self.decoy_ids = tuple(decoy_ids)
        """The decoys, in arm order."""
        self.config = config
        """The policies' settings."""
        self._engaged: dict[str, NDArray[np.float64]] = {}
        self._ignored: dict[str, NDArray[np.float64]] = {}

    def bucket(self, context: str) -> str:
        """The bucket `context` is kept in (OVERFLOW_BUCKET once `max_buckets` exist)."""
        if context in self._engaged or len(self._engaged) < self.config.max_buckets:
            return context
        return OVERFLOW_BUCKET

    def evidence(self, bucket: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Discounted (engagements, non-engagements) per decoy of `bucket` (zeros if unseen)."""
        engaged = self._engaged.get(bucket)
        ignored = self._ignored.get(bucket)
        if engaged is None or ignored is None:
            zeros = np.zeros(len(self.decoy_ids))
            return zeros, zeros.copy()
        return engaged, ignored

    def snapshot(self) -> dict[str, tuple[list[float], list[float]]]:
        """Bucket → (engagements, non-engagements) per decoy: everything the policies learned."""
        return {b: (self._engaged[b].tolist(), self._ignored[b].tolist()) for b in self._engaged}

    def restore(self, bucket: str, engaged: Sequence[float], ignored: Sequence[float]) -> None:
        """Set `bucket`'s discounted evidence, e.g. from a persisted `snapshot`."""
        values = np.asarray([engaged, ignored], dtype=np.float64)
        if values.shape != (2, len(self.decoy_ids)):
            raise InvalidArgument("evidence", "needs one engagement and one non-engagement count per decoy")
        if not (np.isfinite(values).all() and (values >= 0).all()):
            raise InvalidArgument("evidence", "counts must be finite and non-negative")
        self._engaged[bucket] = values[0].copy()
        self._ignored[bucket] = values[1].copy()

    def posterior(self, bucket: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Beta (alpha, beta) per decoy of `bucket`."""
        engaged, ignored = self.evidence(bucket)
        return self.config.prior_alpha + engaged, self.config.prior_beta + ignored

    def pick(self, bucket: str, policy: SelectionPolicy, rng: np.random.Generator) -> int:
        """The index of the decoy `policy` picks for `bucket`, drawing only from `rng` (the fast path)."""
        return self._decide(bucket, policy, rng)[0]

    def choose(self, bucket: str, policy: SelectionPolicy, rng: np.random.Generator) -> Choice:
        """Pick as `pick` does (same draws, same decoy) and report every score and the propensity."""
        arm, scores, ties = self._decide(bucket, policy, rng)
        alpha, beta = self.posterior(bucket)
        if policy is SelectionPolicy.THOMPSON:
            chance = self._thompson_propensity(alpha, beta, arm, rng)
        elif policy is SelectionPolicy.UCB1:
            chance = 1.0 / ties
        else:
            chance = 1.0 / len(self.decoy_ids)
        arms = tuple(
            ArmScore(decoy, float(s), float(a), float(b))
            for decoy, s, a, b in zip(self.decoy_ids, scores.tolist(), alpha.tolist(), beta.tolist(), strict=True)
        )
        return Choice(arm, arms, chance)

    def _decide(
        self, bucket: str, policy: SelectionPolicy, rng: np.random.Generator
    ) -> tuple[int, NDArray[np.float64], int]:
        """(arm, scores, number of decoys tied for the best score)."""
        if policy is SelectionPolicy.THOMPSON:
            alpha, beta = self.posterior(bucket)
            draws: NDArray[np.float64] = rng.beta(alpha, beta)
            return int(np.argmax(draws)), draws, 1
        if policy is SelectionPolicy.UCB1:
            indices = self._ucb_indices(bucket)
            best = np.flatnonzero(indices == indices.max())
            arm = int(best[rng.integers(best.size)]) if best.size > 1 else int(best[0])
            return arm, indices, int(best.size)
        return int(rng.integers(len(self.decoy_ids))), np.zeros(len(self.decoy_ids)), 1

    def update(self, bucket: str, arm: int, reward: float) -> None:
        """Discount `bucket`'s evidence by γ, then add `reward` (in [0, 1]) to decoy `arm`."""
        engaged = self._engaged.get(bucket)
        ignored = self._ignored.get(bucket)
        if engaged is None or ignored is None:
            engaged = self._engaged[bucket] = np.zeros(len(self.decoy_ids))
            ignored = self._ignored[bucket] = np.zeros(len(self.decoy_ids))
        gamma = self.config.discount
        if gamma < 1.0:
            engaged *= gamma
            ignored *= gamma
        engaged[arm] += reward
        ignored[arm] += 1.0 - reward

    def _ucb_indices(self, bucket: str) -> NDArray[np.float64]:
        engaged, ignored = self.evidence(bucket)
        pulls = engaged + ignored
        total = float(pulls.sum())
        tried = pulls > 1e-12
        indices = np.full(len(self.decoy_ids), math.inf)
        bonus = np.sqrt(self.config.exploration * math.log(max(total, 1.0)) / pulls[tried])
        indices[tried] = engaged[tried] / pulls[tried] + bonus
        return indices

    @staticmethod
    def _thompson_propensity(
        alpha: NDArray[np.float64], beta: NDArray[np.float64], arm: int, rng: np.random.Generator
    ) -> float:
        # A child stream keyed on the choice's own draw keeps the estimate reproducible without
        # shifting the numbers later choices see.
        estimator = np.random.default_rng(rng.integers(0, 2**63))
        draws = estimator.beta(alpha, beta, size=(_PROPENSITY_DRAWS, alpha.size))
        wins = np.bincount(np.argmax(draws, axis=1), minlength=alpha.size)
        # Never report 0: the choice did happen, and off-policy weights divide by this.
        return float(max(wins[arm], 1) / _PROPENSITY_DRAWS)
