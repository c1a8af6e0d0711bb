"""The statistics of studies, on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from mireg.study.stats import estimate, gap_share, paired_difference


def test_estimate_is_the_mean_the_sample_std_and_a_t_interval() -> None:
    e = estimate([1.0, 2.0, 3.0])
    assert (e.n, e.mean, e.std) == (3, 2.0, 1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) * std / sqrt(n)
    assert e.low == pytest.approx(2.0 - half) and e.high == pytest.approx(2.0 + half)
    single = estimate([0.7])
    assert (single.mean, single.std) == (0.7, 0.0) and math.isnan(single.low) and math.isnan(single.high)
    with pytest.raises(ValueError, match="no values"):
        estimate([])


def test_paired_difference_is_the_paired_t_test() -> None:
    d = paired_difference([0.8, 0.9, 0.7], [0.7, 0.7, 0.6])
    assert d.difference.mean == pytest.approx(0.4 / 3)
    assert d.difference.std == pytest.approx(math.sqrt(1 / 300))
    # t = mean / (std / sqrt(3)) = 4.0 with 2 degrees of freedom: p = 2 * P(T > 4) = 0.0572
    assert d.p_value == pytest.approx(0.05719, abs=1e-4)
    assert d.difference.low < 0 < d.difference.high  # the interval still holds zero at n = 3
    same = paired_difference([0.5, 0.6], [0.4, 0.5])  # every difference equal: no test
    assert same.difference.mean == pytest.approx(0.1) and math.isnan(same.p_value)
    with pytest.raises(ValueError, match="different lengths"):
        paired_difference([0.1], [0.1, 0.2])


def test_gap_share() -> None:
    assert gap_share(0.79, 0.69, 0.89) == pytest.approx(0.5)
    assert gap_share(0.65, 0.69, 0.89) == pytest.approx(-0.2)  # worse than the baseline
    assert math.isnan(gap_share(0.8, 0.9, 0.9)) and math.isnan(gap_share(0.8, 0.9, 0.85))


def test_equal_differences_up_to_float_noise_give_no_test() -> None:
    # 0.8 - 0.7, 0.9 - 0.8 and 0.3 - 0.2 differ in the last bits only: no p-value of 1e-31.
    d = paired_difference([0.8, 0.9, 0.3], [0.7, 0.8, 0.2])
    assert d.difference.mean == pytest.approx(0.1) and math.isnan(d.p_value)
