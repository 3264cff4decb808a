"""Small statistics, without scipy: chi-square goodness of fit, Wilson score
intervals, Jain's fairness index.

The chi-square p-value is the regularized upper incomplete gamma function
Q(k/2, x/2), computed as in Numerical Recipes (series below a+1, Lentz's
continued fraction above); it matches tabulated critical values to ~1e-10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 10_000


def _lower_series(a: float, x: float) -> float:
    """P(a, x) by its power series (converges fast for x < a + 1)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _upper_fraction(a: float, x: float) -> float:
    """Q(a, x) by its continued fraction (modified Lentz; for x >= a + 1)."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a)."""
    if a <= 0:
        raise ValueError("a must be positive")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_series(a, x))
    return min(1.0, _upper_fraction(a, x))


def chi2_sf(statistic: float, df: int) -> float:
    """P(X >= statistic) for X ~ chi-square with df degrees of freedom."""
    if df <= 0:
        return float("nan")
    if math.isnan(statistic):
        return float("nan")
    return gamma_q(df / 2.0, statistic / 2.0)


@dataclass
class ChiSquare:
    statistic: float
    df: int
    p_value: float
    min_expected: float
    # Observations where nothing was expected: the promise is broken outright.
    impossible: int

    @property
    def reliable(self) -> bool:
        """The chi-square approximation wants every expected count >= 5."""
        return self.min_expected >= 5

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "statistic": self.statistic,
            "df": self.df,
            "p_value": self.p_value,
            "min_expected": self.min_expected,
            "reliable": self.reliable,
            "impossible_observations": self.impossible,
        }


def chi_square_gof(observed: Sequence[float], expected: Sequence[float]) -> ChiSquare:
    """Goodness of fit of observed counts to expected counts (same total).
    Categories expected 0 and observed 0 carry no information and are left
    out; observed > 0 where 0 was expected makes the p-value 0."""
    pairs = [(float(o), float(e)) for o, e in zip(observed, expected, strict=True)]
    impossible = sum(1 for o, e in pairs if e <= 0 and o > 0)
    used = [(o, e) for o, e in pairs if e > 0]
    df = len(used) - 1
    if impossible:
        return ChiSquare(
            float("inf"), max(df, 0), 0.0, min((e for _, e in used), default=0.0), impossible
        )
    if df <= 0:
        return ChiSquare(0.0, 0, float("nan"), min((e for _, e in used), default=0.0), 0)
    stat = sum((o - e) ** 2 / e for o, e in used)
    return ChiSquare(stat, df, chi2_sf(stat, df), min(e for _, e in used), 0)


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 0.95 -> 1.95996..."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (nan, nan) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all equal, 1/n when one takes all."""
    xs = [float(v) for v in values]
    if not xs:
        return float("nan")
    squares = sum(x * x for x in xs)
    if squares == 0:
        return float("nan")
    return sum(xs) ** 2 / (len(xs) * squares)
