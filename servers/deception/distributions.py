"""Target distributions of synthetic data: one object both samples a column and gives its exact CDF.

The generator draws every numeric column from one of these and the quality report tests the
column against the same object, so what is generated and what it is judged against cannot
drift apart. CDFs are exact (math.erf for the normal family, closed forms otherwise, a
cumulative table for Poisson); `cdf_left` is P(X < x), which differs from `cdf` only at the
atoms of discrete or clipped distributions and lets the Kolmogorov-Smirnov statistic be exact
for them too.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

_erf = np.frompyfunc(math.erf, 1, 1)


def standard_normal_cdf(z: ArrayLike) -> FloatArray:
    """Φ(z) elementwise, from math.erf (exact to double precision)."""
    values = np.asarray(z, dtype=np.float64)
    erf = np.asarray(_erf(values / math.sqrt(2.0)), dtype=np.float64)
    result: FloatArray = 0.5 * (1.0 + erf)
    return result


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _require(condition: bool, rule: str) -> None:
    # Distributions are configuration, not request input: a bad one is a programming error.
    if not condition:
        raise ValueError(f"invalid distribution parameters: {rule}")


class Distribution(ABC):
    """A univariate distribution with an exact CDF."""

    @abstractmethod
    def cdf(self, x: FloatArray) -> FloatArray:
        """P(X <= x) elementwise."""

    def cdf_left(self, x: FloatArray) -> FloatArray:
        """P(X < x) elementwise; equal to `cdf` where the distribution has no atom."""
        return self.cdf(x)

    @abstractmethod
    def describe(self) -> str:
        """The distribution in a few words, e.g. `LogNormal(mu=8.4, sigma=1.6)`."""


@dataclass(frozen=True)
class Uniform(Distribution):
    """Continuous uniform on [low, high)."""

    low: float
    """Lower bound (inclusive)."""
    high: float
    """Upper bound (exclusive); above `low`."""

    def __post_init__(self) -> None:
        _require(math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high, "Uniform: low < high")

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """`size` draws."""
        return rng.uniform(self.low, self.high, size)

    def cdf(self, x: FloatArray) -> FloatArray:
        return np.clip((x - self.low) / (self.high - self.low), 0.0, 1.0)

    def describe(self) -> str:
        return f"Uniform(low={self.low:g}, high={self.high:g})"


@dataclass(frozen=True)
class TruncatedNormal(Distribution):
    """Normal(mean, std) conditioned on [low, high): the normal shape without pile-ups at the bounds."""

    mean: float
    """Mean of the untruncated normal."""
    std: float
    """Standard deviation of the untruncated normal; positive."""
    low: float
    """Smallest value (inclusive)."""
    high: float
    """Upper bound (exclusive); above `low`."""

    def __post_init__(self) -> None:
        _require(_positive(self.std) and math.isfinite(self.mean), "TruncatedNormal: std > 0")
        _require(self.low < self.high, "TruncatedNormal: low < high")
        # Rejection sampling must accept a fair share of draws.
        inside = float(standard_normal_cdf((self.high - self.mean) / self.std)) - float(
            standard_normal_cdf((self.low - self.mean) / self.std)
        )
        _require(inside > 0.01, "TruncatedNormal: [low, high) must hold at least 1 % of the mass")

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """`size` draws by rejection (cheap while the interval holds most of the mass)."""
        result = np.empty(size, dtype=np.float64)
        filled = 0
        while filled < size:
            missing = size - filled
            draws = rng.normal(self.mean, self.std, missing + missing // 4 + 16)
            inside = draws[(draws >= self.low) & (draws < self.high)][:missing]
            result[filled : filled + inside.size] = inside
            filled += inside.size
        return result

    def cdf(self, x: FloatArray) -> FloatArray:
        lower = float(standard_normal_cdf((self.low - self.mean) / self.std))
        upper = float(standard_normal_cdf((self.high - self.mean) / self.std))
        inner = standard_normal_cdf((np.clip(x, self.low, self.high) - self.mean) / self.std)
        return np.clip((inner - lower) / (upper - lower), 0.0, 1.0)

    def describe(self) -> str:
        return f"TruncatedNormal(mean={self.mean:g}, std={self.std:g}, low={self.low:g}, high={self.high:g})"


@dataclass(frozen=True)
class Exponential(Distribution):
    """Exponential with the given mean, optionally clipped at `upper` (an atom of the overflow there)."""

    scale: float
    """Mean; positive."""
    upper: float = math.inf
    """Values above are set to it (inf: no clipping)."""

    def __post_init__(self) -> None:
        _require(_positive(self.scale) and self.upper > 0, "Exponential: scale > 0 and upper > 0")

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """`size` draws."""
        draws = rng.exponential(self.scale, size)
        if math.isfinite(self.upper):
            np.minimum(draws, self.upper, out=draws)
        return draws

    def cdf(self, x: FloatArray) -> FloatArray:
        values = -np.expm1(-np.maximum(x, 0.0) / self.scale)
        return np.where(x >= self.upper, 1.0, values)

    def cdf_left(self, x: FloatArray) -> FloatArray:
        values = -np.expm1(-np.maximum(x, 0.0) / self.scale)
        return np.where(x > self.upper, 1.0, values)

    def describe(self) -> str:
        clip = f", clipped at {self.upper:g}" if math.isfinite(self.upper) else ""
        return f"Exponential(mean={self.scale:g}{clip})"


@dataclass(frozen=True)
class LogNormal(Distribution):
    """exp(Normal(mu, sigma))."""

    mu: float
    """Mean of the logarithm (the median is exp(mu))."""
    sigma: float
    """Standard deviation of the logarithm; positive."""

    def __post_init__(self) -> None:
        _require(math.isfinite(self.mu) and _positive(self.sigma), "LogNormal: finite mu, sigma > 0")

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """`size` draws."""
        return rng.lognormal(self.mu, self.sigma, size)

    def from_standard_normal(self, z: FloatArray) -> FloatArray:
        """The values whose logarithm is mu + sigma * z (for correlated draws through a copula)."""
        return np.exp(self.mu + self.sigma * z)

    def cdf(self, x: FloatArray) -> FloatArray:
        positive = np.maximum(x, np.finfo(np.float64).tiny)
        return np.where(x > 0, standard_normal_cdf((np.log(positive) - self.mu) / self.sigma), 0.0)

    def describe(self) -> str:
        return f"LogNormal(mu={self.mu:g}, sigma={self.sigma:g})"


@dataclass(frozen=True)
class BoundedPareto(Distribution):
    """Pareto(shape) from `scale` up, truncated at `upper` so sums never overflow.

    With shape ≈ 1.16 the top 20 % of draws carry about 80 % of the total (share = p^(1-1/shape)).
    """

    shape: float
    """Tail index alpha; positive."""
    scale: float
    """Smallest value; positive."""
    upper: float
    """Largest value; above `scale`."""

    def __post_init__(self) -> None:
        _require(_positive(self.shape) and _positive(self.scale), "Pareto: shape > 0 and scale > 0")
        _require(self.upper > self.scale, "Pareto: upper > scale")

    @property
    def _truncated_mass(self) -> float:
        return float((self.scale / self.upper) ** self.shape)

    def sample(self, rng: np.random.Generator, size: int) -> FloatArray:
        """`size` draws by inverting the CDF."""
        u = rng.random(size)
        tail = 1.0 - u * (1.0 - self._truncated_mass)
        return self.scale * tail ** (-1.0 / self.shape)

    def cdf(self, x: FloatArray) -> FloatArray:
        clipped = np.clip(x, self.scale, self.upper)
        values = (1.0 - (self.scale / clipped) ** self.shape) / (1.0 - self._truncated_mass)
        return np.clip(values, 0.0, 1.0)

    def describe(self) -> str:
        return f"Pareto(shape={self.shape:g}, scale={self.scale:g}, upper={self.upper:g})"


@dataclass(frozen=True)
class ShiftedPoisson(Distribution):
    """`shift` + Poisson(lam): counts that are never below `shift` (a flow has at least one packet)."""

    lam: float
    """Poisson mean; positive."""
    shift: int = 1
    """Added to every draw."""
    _table: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require(_positive(self.lam) and self.lam < 1e6, "Poisson: 0 < lambda < 1e6")
        # P(K <= k) up to far beyond the mean; past the table the CDF is 1 to double precision.
        top = int(self.lam + 12.0 * math.sqrt(self.lam) + 30.0)
        k = np.arange(top + 1, dtype=np.float64)
        log_pmf = k * math.log(self.lam) - self.lam - np.array([math.lgamma(v + 1.0) for v in k])
        table = np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)
        table[-1] = 1.0
        object.__setattr__(self, "_table", table)

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.int64]:
        """`size` draws."""
        return rng.poisson(self.lam, size).astype(np.int64) + self.shift

    def quantile(self, u: FloatArray) -> NDArray[np.int64]:
        """The smallest k with P(X <= k) >= u, elementwise (for correlated draws through a copula)."""
        index = np.searchsorted(self._table, u, side="left")
        return np.minimum(index, self._table.size - 1).astype(np.int64) + self.shift

    def cdf(self, x: FloatArray) -> FloatArray:
        k = np.floor(np.asarray(x, dtype=np.float64) - self.shift)
        index = np.clip(k, 0, self._table.size - 1).astype(np.int64)
        return np.where(k < 0, 0.0, np.where(k >= self._table.size, 1.0, self._table[index]))

    def cdf_left(self, x: FloatArray) -> FloatArray:
        return self.cdf(np.ceil(np.asarray(x, dtype=np.float64)) - 1.0)

    def describe(self) -> str:
        return f"{self.shift} + Poisson(lambda={self.lam:g})"


@dataclass(frozen=True)
class Floored(Distribution):
    """floor(X) for a continuous X: integer columns such as age in years or cents."""

    base: Distribution
    """The continuous distribution before flooring."""

    def cdf(self, x: FloatArray) -> FloatArray:
        return self.base.cdf_left(np.floor(x) + 1.0)

    def cdf_left(self, x: FloatArray) -> FloatArray:
        return self.base.cdf_left(np.ceil(x))

    def describe(self) -> str:
        return f"floor({self.base.describe()})"


@dataclass(frozen=True)
class Categorical:
    """A finite set of labels with weights (normalised on use)."""

    labels: tuple[str, ...]
    """The categories, in a fixed order (sampling is by index in this order)."""
    weights: tuple[float, ...]
    """Relative weights, one per label; non-negative with a positive sum."""

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.weights) or not self.labels:
            raise ValueError("a categorical needs one weight per label and at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("categorical labels must be distinct")
        if any(not (w >= 0.0 and math.isfinite(w)) for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("categorical weights must be finite, non-negative and not all zero")

    @property
    def probabilities(self) -> FloatArray:
        """The weights normalised to sum to one."""
        weights = np.asarray(self.weights, dtype=np.float64)
        result: FloatArray = weights / weights.sum()
        return result

    def sample_index(self, rng: np.random.Generator, size: int) -> NDArray[np.intp]:
        """`size` indices into `labels`, drawn by the weights."""
        cumulative = np.cumsum(self.probabilities)
        cumulative[-1] = 1.0
        return np.searchsorted(cumulative, rng.random(size), side="right")

    def sample(self, rng: np.random.Generator, size: int) -> NDArray[np.str_]:
        """`size` labels, drawn by the weights."""
        return np.asarray(self.labels)[self.sample_index(rng, size)]

    def describe(self) -> str:
        """The categories and their probabilities, most likely first."""
        pairs = sorted(zip(self.labels, self.probabilities.tolist(), strict=True), key=lambda p: -p[1])
        return (
            "Categorical("
            + ", ".join(f"{label}={p:.3f}" for label, p in pairs[:6])
            + (", ...)" if len(pairs) > 6 else ")")
        )
