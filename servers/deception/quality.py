"""Quality reports of synthetic data: how closely each column follows its target distribution.

Numeric columns score 1 − D, D the Kolmogorov–Smirnov statistic against the exact target CDF
(exact for discrete and clipped targets too: the empirical CDF is compared with both P(X ≤ v)
and P(X < v) at every observed value). Categorical columns score 1 − the total variation
distance between observed and target frequencies (values outside the target count fully).

The overall score is the mean of the column scores, as the contract says; the report also
keeps the worst column so a single bad column is not hidden by the average. KS and TV shrink
like 1/sqrt(n), so scores of tiny chunks are dominated by sampling noise: with the default
profiles a chunk of a few thousand rows already scores above 0.95 on every column, and
`p_value` (Kolmogorov's asymptotic distribution) says whether a numeric column's distance is
more than chance.

A whole batch is scored by `BatchQualityAccumulator` without keeping its rows: categorical
counts are exact, and each numeric column is counted at 2,048 quantiles of its target, which
bounds the batch statistic to within 1/2048 of the exact one.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from servers.deception.distributions import Categorical, Distribution, FloatArray
from servers.deception.profiles import ColumnTarget

GRID_POINTS = 2048
"""Target quantiles a batch accumulator counts each numeric column at."""


class QualityMetric(enum.Enum):
    """The statistic a column's score comes from; the value is the contract's QualityMetric number."""

    KOLMOGOROV_SMIRNOV = 1
    TOTAL_VARIATION = 2


@dataclass(frozen=True)
class ColumnQuality:
    """How one column compares with its target."""

    column: str
    """Column name, as in the chunk."""
    metric: QualityMetric
    """The statistic used."""
    statistic: float
    """KS statistic or total variation distance, in [0, 1]."""
    target: str
    """The target distribution, described."""
    p_value: float | None = None
    """For KS: the asymptotic probability of a distance at least this large by chance."""

    @property
    def score(self) -> float:
        """1 − statistic."""
        return 1.0 - self.statistic


@dataclass(frozen=True)
class QualityReport:
    """Per-column scores of some rows and their mean."""

    row_count: int
    """Rows the report covers."""
    columns: tuple[ColumnQuality, ...]
    """One entry per scored column, in the profile's order."""

    @property
    def overall_score(self) -> float:
        """Mean of the column scores (1 when nothing was scored)."""
        if not self.columns:
            return 1.0
        return float(np.mean([c.score for c in self.columns]))

    @property
    def worst(self) -> ColumnQuality | None:
        """The lowest-scoring column."""
        return min(self.columns, key=lambda c: c.score, default=None)

    def column(self, name: str) -> ColumnQuality:
        """The entry of column `name`; KeyError if it was not scored."""
        for entry in self.columns:
            if entry.column == name:
                return entry
        raise KeyError(name)


def kolmogorov_p_value(statistic: float, n: int) -> float:
    """P(D_n ≥ statistic) under the null, by Kolmogorov's limit law with Stephens' correction."""
    if n <= 0:
        return 1.0
    root = math.sqrt(n)
    scaled = (root + 0.12 + 0.11 / root) * statistic
    if scaled < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * scaled * scaled)
        total += term
        if abs(term) < 1e-12:
            break
    return min(1.0, max(0.0, total))


def ks_statistic(sample: NDArray[Any], target: Distribution) -> float:
    """sup |F_n − F| of `sample` against `target`, exact for continuous, discrete and mixed targets."""
    values = np.asarray(sample, dtype=np.float64)
    if values.size == 0:
        return 0.0
    if not np.isfinite(values).all():
        return 1.0
    distinct, counts = np.unique(values, return_counts=True)
    at_or_below = np.cumsum(counts) / values.size
    below = at_or_below - counts / values.size
    above_gap = np.abs(at_or_below - target.cdf(distinct))
    below_gap = np.abs(below - target.cdf_left(distinct))
    return float(max(above_gap.max(), below_gap.max()))


def category_counts(sample: NDArray[Any], keys: Sequence[str | int]) -> tuple[NDArray[np.int64], int]:
    """How many elements of `sample` equal each key (in key order), and how many match none.

    A binary search per element against the few sorted keys, instead of sorting the sample:
    the column may hold a hundred thousand strings, the target a few dozen categories.
    """
    values = np.asarray(sample)
    if values.size == 0:
        return np.zeros(len(keys), dtype=np.int64), 0
    labels = np.asarray(keys)
    if labels.dtype.kind != values.dtype.kind and not (labels.dtype.kind in "iu" and values.dtype.kind in "iu"):
        return np.zeros(len(keys), dtype=np.int64), int(values.size)
    order = np.argsort(labels, kind="stable")
    ordered = labels[order]
    position = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    matched = ordered[position] == values
    per_sorted = np.bincount(position[matched], minlength=ordered.size)
    counts = np.empty(ordered.size, dtype=np.int64)
    counts[order] = per_sorted
    return counts, int(values.size - int(matched.sum()))


def total_variation(sample: NDArray[Any], target: Categorical, values: Sequence[str | int] | None = None) -> float:
    """½ Σ |observed − expected| over the target's categories, plus all mass outside them."""
    counts, outside = category_counts(sample, list(values) if values is not None else list(target.labels))
    return _total_variation(counts, outside, target)


def _total_variation(counts: NDArray[np.int64], outside: int, target: Categorical) -> float:
    n = int(counts.sum()) + outside
    if n == 0:
        return 0.0
    distance = float(np.abs(counts / n - target.probabilities).sum()) + outside / n
    return float(min(1.0, distance / 2.0))


def _column_values(columns: Mapping[str, NDArray[Any]], target: ColumnTarget) -> NDArray[Any]:
    column = columns[target.column]
    if target.domain_part:
        domains: NDArray[np.str_] = np.strings.partition(column, "@")[2]
        return domains
    return column


def assess(columns: Mapping[str, NDArray[Any]], targets: Sequence[ColumnTarget]) -> QualityReport:
    """The quality report of one chunk's `columns` against `targets` (exact statistics)."""
    entries = []
    row_count = len(next(iter(columns.values()))) if columns else 0
    for target in targets:
        values = _column_values(columns, target)
        if isinstance(target.target, Categorical):
            distance = total_variation(values, target.target, target.values)
            entries.append(
                ColumnQuality(target.column, QualityMetric.TOTAL_VARIATION, distance, target.target.describe())
            )
        else:
            statistic = ks_statistic(values, target.target)
            entries.append(
                ColumnQuality(
                    target.column,
                    QualityMetric.KOLMOGOROV_SMIRNOV,
                    statistic,
                    target.target.describe(),
                    kolmogorov_p_value(statistic, len(values)),
                )
            )
    return QualityReport(row_count, tuple(entries))


def quantile_grid(target: Distribution, points: int = GRID_POINTS) -> FloatArray:
    """The smallest x with F(x) ≥ j/points for j = 1..points−1 (distinct), by vectorised bisection."""
    probabilities = np.arange(1, points, dtype=np.float64) / points
    low = np.full(probabilities.size, -1.0)
    high = np.full(probabilities.size, 1.0)
    for _ in range(1100):
        short = target.cdf(low) >= probabilities
        if not short.any():
            break
        low[short] *= 2.0
    for _ in range(1100):
        over = target.cdf(high) < probabilities
        if not over.any():
            break
        high[over] *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if np.array_equal(middle, low) or np.array_equal(middle, high):
            break
        reached = target.cdf(middle) >= probabilities
        high = np.where(reached, middle, high)
        low = np.where(reached, low, middle)
    return np.unique(high)


class _NumericTally:
    """Counts of values ≤ and < each grid point, over every chunk seen."""

    def __init__(self, target: Distribution) -> None:
        self.target = target
        self.grid = quantile_grid(target)
        self.at_or_below = np.zeros(self.grid.size, dtype=np.int64)
        self.below = np.zeros(self.grid.size, dtype=np.int64)
        self.count = 0
        self.finite = True

    def add(self, values: NDArray[Any]) -> None:
        ordered = np.sort(np.asarray(values, dtype=np.float64))
        if not np.isfinite(ordered).all():
            self.finite = False
        self.at_or_below += np.searchsorted(ordered, self.grid, side="right")
        self.below += np.searchsorted(ordered, self.grid, side="left")
        self.count += ordered.size

    def statistic(self) -> float:
        if self.count == 0:
            return 0.0
        if not self.finite:
            return 1.0
        above_gap = np.abs(self.at_or_below / self.count - self.target.cdf(self.grid))
        below_gap = np.abs(self.below / self.count - self.target.cdf_left(self.grid))
        return float(max(above_gap.max(), below_gap.max()))


class BatchQualityAccumulator:
    """Scores a whole batch chunk by chunk, in memory independent of the batch's size."""

    def __init__(self, targets: Sequence[ColumnTarget]) -> None:
        """An accumulator for the batch-level `targets` (time windows spanning the whole batch)."""
        self._targets = tuple(targets)
        self._numeric: dict[str, _NumericTally] = {}
        self._categorical: dict[str, tuple[NDArray[np.int64], int]] = {}
        for target in self._targets:
            if isinstance(target.target, Categorical):
                self._categorical[target.column] = (np.zeros(len(target.target.labels), dtype=np.int64), 0)
            else:
                self._numeric[target.column] = _NumericTally(target.target)
        self._rows = 0

    def add(self, columns: Mapping[str, NDArray[Any]]) -> None:
        """Count one chunk's columns."""
        for target in self._targets:
            values = _column_values(columns, target)
            if target.column in self._numeric:
                self._numeric[target.column].add(values)
                continue
            assert isinstance(target.target, Categorical)
            keys = list(target.values) if target.values is not None else list(target.target.labels)
            counts, outside = category_counts(values, keys)
            total, total_outside = self._categorical[target.column]
            self._categorical[target.column] = (total + counts, total_outside + outside)
        self._rows += len(next(iter(columns.values()))) if columns else 0

    def report(self) -> QualityReport:
        """The report of every chunk added so far."""
        entries = []
        for target in self._targets:
            if isinstance(target.target, Categorical):
                distance = _total_variation(*self._categorical[target.column], target.target)
                entries.append(
                    ColumnQuality(target.column, QualityMetric.TOTAL_VARIATION, distance, target.target.describe())
                )
                continue
            tally = self._numeric[target.column]
            statistic = tally.statistic()
            entries.append(
                ColumnQuality(
                    target.column,
                    QualityMetric.KOLMOGOROV_SMIRNOV,
                    statistic,
                    target.target.describe(),
                    kolmogorov_p_value(statistic, tally.count),
                )
            )
        return QualityReport(self._rows, tuple(entries))
