"""Adaptive decoy selection: the selector that logs every choice and learns from feedback.

The policies themselves (Thompson sampling and UCB1 over discounted evidence per attacker
context) are in `policies.py`. Every choice is made by a Generator seeded with a recorded seed
(given by the caller or drawn from the selector's own seeded stream), and logged with its draw
number, the scores and the propensity of the chosen decoy, so any selection can be replayed and
the log evaluated offline (see `policy_evaluation`).
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from servers.deception.policies import ArmScore, BanditConfig, BanditCore, SelectionPolicy
from servers.mesh.errors import FailedPrecondition, InvalidArgument, NotFound


@dataclass(frozen=True)
class Selection:
    """A logged decoy selection."""

    selection_id: str
    """Id to pass to `submit_feedback`."""
    bucket: str
    """The context bucket it was made for."""
    decoy_id: str
    """The chosen decoy."""
    policy: SelectionPolicy
    """The policy that chose it."""
    seed: int
    """Seed of the Generator that made the draw; with the posteriors it reproduces the choice."""
    draw: int
    """Sequence number of the selection in this selector's log, from 0."""
    scores: tuple[ArmScore, ...]
    """Every decoy's score at selection time."""
    propensity: float
    """Probability the policy had of choosing this decoy (1/K for random)."""
    select_time: float
    """When it was made, seconds since the epoch."""


@dataclass(frozen=True)
class DecoyStats:
    """Selection statistics of one decoy (within a bucket, or summed over buckets)."""

    decoy_id: str
    """The decoy."""
    selections: int
    """Times it was selected."""
    feedbacks: int
    """Selections that received feedback."""
    reward_sum: float
    """Sum of the rewards received."""
    posterior_alpha: float
    """Alpha of the discounted Beta posterior."""
    posterior_beta: float
    """Beta of the discounted Beta posterior."""

    @property
    def engagement_rate(self) -> float:
        """reward_sum / feedbacks (0 without feedback)."""
        return self.reward_sum / self.feedbacks if self.feedbacks else 0.0

    @property
    def posterior_mean(self) -> float:
        """alpha / (alpha + beta)."""
        return self.posterior_alpha / (self.posterior_alpha + self.posterior_beta)


@dataclass(frozen=True)
class SelectionCounts:
    """Persisted totals of one decoy in one bucket, to rebuild a selector's statistics."""

    bucket: str
    """The context bucket."""
    decoy_id: str
    """The decoy."""
    selections: int
    """Times it was selected in the bucket."""
    feedbacks: int
    """Selections that received feedback."""
    reward_sum: float
    """Sum of the rewards received."""


@dataclass
class _Pending:
    selection: Selection
    arm: int
    answered: bool = False


class DecoySelector:
    """Chooses decoys per context bucket, logs every choice and learns from feedback. Thread-safe."""

    def __init__(
        self,
        decoy_ids: Sequence[str],
        config: BanditConfig | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """A selector over `decoy_ids`; draws without a caller seed come from a stream seeded by `seed`."""
        self._core = BanditCore(decoy_ids, config or BanditConfig())
        self._seeds = np.random.default_rng(seed)
        self._clock = clock
        self._lock = threading.Lock()
        self._draws = 0
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        size = len(self._core.decoy_ids)
        self._selections: dict[str, NDArray[np.int64]] = {}
        self._feedbacks: dict[str, NDArray[np.int64]] = {}
        self._rewards: dict[str, NDArray[np.float64]] = {}
        self._size = size

    @property
    def decoy_ids(self) -> tuple[str, ...]:
        """The decoys chosen from."""
        return self._core.decoy_ids

    @property
    def config(self) -> BanditConfig:
        """The policies' settings."""
        return self._core.config

    @property
    def total_selections(self) -> int:
        """Selections made so far."""
        with self._lock:
            return self._draws

    def select(
        self,
        context: str,
        policy: SelectionPolicy = SelectionPolicy.THOMPSON,
        *,
        seed: int | None = None,
        selection_id: str | None = None,
    ) -> Selection:
        """Choose a decoy for the context bucket `context` and log the choice."""
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**64):
            raise InvalidArgument("seed", "must be an integer in [0, 2^64)")
        with self._lock:
            if selection_id is not None and selection_id in self._pending:
                raise FailedPrecondition(f"selection {selection_id!r} exists already", reason="SELECTION_EXISTS")
            bucket = self._core.bucket(context)
            if seed is None:
                seed = int(self._seeds.integers(0, 2**64, dtype=np.uint64))
            choice = self._core.choose(bucket, policy, np.random.default_rng(seed))
            selection = Selection(
                selection_id=selection_id or "sel_" + secrets.token_hex(8),
                bucket=bucket,
                decoy_id=self._core.decoy_ids[choice.arm],
                policy=policy,
                seed=seed,
                draw=self._draws,
                scores=choice.scores,
                propensity=choice.propensity,
                select_time=self._clock(),
            )
            self._draws += 1
            self._counter(self._selections, bucket)[choice.arm] += 1
            self._pending[selection.selection_id] = _Pending(selection, choice.arm)
            while len(self._pending) > self._core.config.max_pending:
                self._pending.popitem(last=False)
            return selection

    def submit_feedback(self, selection_id: str, reward: float) -> DecoyStats:
        """Record the engagement `reward` (in [0, 1]) of a selection; the chosen decoy's stats after it.

        NotFound(SELECTION_NOT_FOUND) for an unknown or forgotten selection,
        FailedPrecondition(FEEDBACK_ALREADY_SUBMITTED) for a second feedback.
        """
        if isinstance(reward, bool) or not (math.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise InvalidArgument("reward", "must be a number in [0, 1]")
        with self._lock:
            pending = self._pending.get(selection_id)
            if pending is None:
                raise NotFound("selection", selection_id, reason="SELECTION_NOT_FOUND")
            if pending.answered:
                raise FailedPrecondition(
                    f"selection {selection_id!r} already has feedback", reason="FEEDBACK_ALREADY_SUBMITTED"
                )
            pending.answered = True
            bucket = pending.selection.bucket
            self._core.update(bucket, pending.arm, float(reward))
            self._counter(self._feedbacks, bucket)[pending.arm] += 1
            rewards = self._rewards.setdefault(bucket, np.zeros(self._size))
            rewards[pending.arm] += reward
            return self._stats_locked((bucket,))[pending.arm]

    def snapshot(self) -> dict[str, tuple[list[float], list[float]]]:
        """The learned evidence per bucket (see `BanditCore.snapshot`), for persisting."""
        with self._lock:
            return self._core.snapshot()

    def restore(self, bucket: str, engaged: Sequence[float], ignored: Sequence[float]) -> None:
        """Put back persisted evidence of `bucket` (see `BanditCore.restore`)."""
        with self._lock:
            self._core.restore(bucket, engaged, ignored)

    def restore_history(
        self, counts: Iterable[SelectionCounts], recent: Iterable[tuple[Selection, bool]], draws: int
    ) -> None:
        """Put back what the store logged: per-bucket totals, the recent selections (oldest first,
        each with whether it has had its feedback) and the number of draws made so far.

        Evidence is restored separately (`restore`): discounting makes it depend on the order of
        the updates, so it is persisted as it is rather than recomputed. Decoys that are no longer
        configured are skipped; draw numbers continue from `draws`.
        """
        if draws < 0:
            raise InvalidArgument("draws", "must not be negative")
        arms = {decoy: arm for arm, decoy in enumerate(self._core.decoy_ids)}
        with self._lock:
            for entry in counts:
                arm = arms.get(entry.decoy_id)
                if arm is None:
                    continue
                self._counter(self._selections, entry.bucket)[arm] += entry.selections
                self._counter(self._feedbacks, entry.bucket)[arm] += entry.feedbacks
                self._rewards.setdefault(entry.bucket, np.zeros(self._size))[arm] += entry.reward_sum
            for selection, answered in recent:
                arm = arms.get(selection.decoy_id)
                if arm is None:
                    continue
                self._pending[selection.selection_id] = _Pending(selection, arm, answered)
                self._pending.move_to_end(selection.selection_id)
            while len(self._pending) > self._core.config.max_pending:
                self._pending.popitem(last=False)
            self._draws = max(self._draws, draws)

    def selection(self, selection_id: str) -> Selection:
        """A remembered selection; NotFound(SELECTION_NOT_FOUND) otherwise."""
        with self._lock:
            pending = self._pending.get(selection_id)
        if pending is None:
            raise NotFound("selection", selection_id, reason="SELECTION_NOT_FOUND")
        return pending.selection

    def stats(self, context: str | None = None) -> list[DecoyStats]:
        """Per-decoy statistics of one context bucket, or summed over all buckets (None)."""
        with self._lock:
            buckets = (self._core.bucket(context),) if context is not None else tuple(self._selections)
            return self._stats_locked(buckets)

    def _counter(self, table: dict[str, NDArray[np.int64]], bucket: str) -> NDArray[np.int64]:
        counts = table.get(bucket)
        if counts is None:
            counts = table[bucket] = np.zeros(self._size, dtype=np.int64)
        return counts

    def _stats_locked(self, buckets: Sequence[str]) -> list[DecoyStats]:
        selections = np.zeros(self._size, dtype=np.int64)
        feedbacks = np.zeros(self._size, dtype=np.int64)
        rewards = np.zeros(self._size)
        engaged = np.zeros(self._size)
        ignored = np.zeros(self._size)
        for bucket in buckets:
            selections += self._selections.get(bucket, 0)
            feedbacks += self._feedbacks.get(bucket, 0)
            rewards += self._rewards.get(bucket, 0.0)
            bucket_engaged, bucket_ignored = self._core.evidence(bucket)
            engaged += bucket_engaged
            ignored += bucket_ignored
        config = self._core.config
        return [
            DecoyStats(
                decoy_id=decoy,
                selections=int(selections[i]),
                feedbacks=int(feedbacks[i]),
                reward_sum=float(rewards[i]),
                posterior_alpha=config.prior_alpha + float(engaged[i]),
                posterior_beta=config.prior_beta + float(ignored[i]),
            )
            for i, decoy in enumerate(self._core.decoy_ids)
        ]


@dataclass(frozen=True)
class ContextBuckets:
    """Turns an attacker's features into a bucket key: the stage plus a few coarse features.

    Only the named features count and values are normalised and cut short, so an attacker
    cannot mint unbounded buckets by varying a user agent.
    """

    features: tuple[str, ...] = ("tool", "target_service")
    """Feature names that enter the key, in order."""
    max_value_length: int = 32
    """Characters of a feature value kept."""

    def key(self, stage: str, features: Mapping[str, str]) -> str:
        """E.g. `stage=banner_grab|tool=nmap|target_service=-`."""
        parts = [f"stage={self._clean(stage)}"]
        parts += [f"{name}={self._clean(features.get(name, ''))}" for name in self.features]
        return "|".join(parts)

    def _clean(self, value: str) -> str:
        text = "".join(c for c in value.strip().lower() if c.isprintable() and c not in "|=")
        return text[: self.max_value_length] or "-"
