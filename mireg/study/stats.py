"""The statistics of a study: means with t intervals, paired differences, the share of a gap.

Seeds draw the patient splits, and every method of a seed trains on the same split, so two methods
are compared by their paired differences over seeds (a paired t test and its interval), not by two
independent means.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats

__all__ = ["Estimate", "PairedDifference", "estimate", "gap_share", "paired_difference"]


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` values, their sample standard deviation and a t interval of the mean.

    ``std`` is 0 and the interval ``nan`` for a single value.
    """

    n: int
    mean: float
    std: float
    low: float
    high: float


def _t_interval(mean: float, std: float, n: int, level: float) -> tuple[float, float]:
    if n < 2:
        return math.nan, math.nan
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def estimate(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean, sample standard deviation and the ``level`` t interval of the mean of ``values``.

    Raises:
        ValueError: No values.
    """
    if not values:
        raise ValueError("no values")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    low, high = _t_interval(mean, std, len(values), level)
    return Estimate(len(values), mean, std, low, high)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired values: its estimate and the two-sided paired t test's p-value."""

    difference: Estimate
    p_value: float


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """The difference ``a - b`` of paired values (same seeds, same splits), with a t interval and
    the p-value of the two-sided paired t test (``nan`` below two pairs or when every difference is
    the same).

    Raises:
        ValueError: The sequences differ in length or are empty.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values of different lengths: {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    result = estimate(differences, level)
    p = math.nan
    if len(differences) > 1 and result.std > 1e-12:  # not float noise around equal differences
        t = result.mean / (result.std / math.sqrt(len(differences)))
        p = float(2 * _scipy_stats.t.sf(abs(t), len(differences) - 1))
    return PairedDifference(result, p)


def gap_share(method: float, partial: float, full: float) -> float:
    """The share of the partial-to-full gap a method closes: ``(method - partial) / (full - partial)``.

    ``nan`` when there is no gap (``full <= partial``).
    """
    if not full > partial:
        return math.nan
    return (method - partial) / (full - partial)
