"""Statistics checked against known values (tables, closed forms)."""

from __future__ import annotations

import math

import pytest

from tracer.analysis.stats import (
    chi2_sf,
    chi_square_gof,
    gamma_q,
    jain_index,
    wilson_interval,
    z_value,
)

# (statistic, df, upper-tail probability): standard chi-square table critical values.
CHI2_TABLE = [
    (3.841458820694124, 1, 0.05),
    (6.634896601021214, 1, 0.01),
    (10.827566170662733, 1, 0.001),
    (5.991464547107979, 2, 0.05),
    (9.210340371976182, 2, 0.01),
    (7.814727903251178, 3, 0.05),
    (11.070497693516351, 5, 0.05),
    (18.307038053275146, 10, 0.05),
    (23.209251158954356, 10, 0.01),
    (124.34211340400407, 100, 0.05),
    (0.003932140000019522, 1, 0.95),
    (2.705543454095404, 1, 0.10),
]


@pytest.mark.parametrize(("statistic", "df", "p"), CHI2_TABLE)
def test_chi2_sf_matches_table(statistic, df, p):
    assert chi2_sf(statistic, df) == pytest.approx(p, rel=1e-7)


def test_chi2_sf_closed_forms():
    # df=2: survival is exp(-x/2); df=1: erfc(sqrt(x/2)).
    for x in (0.1, 1.0, 7.5, 40.0):
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-10)
        assert chi2_sf(x, 1) == pytest.approx(math.erfc(math.sqrt(x / 2)), rel=1e-9)


def test_gamma_q_edges():
    assert gamma_q(3.0, 0.0) == 1.0
    assert gamma_q(3.0, math.inf) == 0.0
    assert 0 <= chi2_sf(1e4, 3) < 1e-300 or chi2_sf(1e4, 3) == 0.0
    with pytest.raises(ValueError):
        gamma_q(0, 1)


def test_goodness_of_fit_known_answer():
    # 60/40 against a promised 50/50 of 100: X^2 = (10^2 + 10^2) / 50 = 4, df 1.
    result = chi_square_gof([60, 40], [50, 50])
    assert result.statistic == pytest.approx(4.0)
    assert result.df == 1
    assert result.p_value == pytest.approx(0.0455002638963, rel=1e-8)
    assert result.reliable


def test_goodness_of_fit_perfect_and_impossible():
    assert chi_square_gof([25, 25, 50], [25, 25, 50]).p_value == pytest.approx(1.0)
    broken = chi_square_gof([10, 5], [15, 0])  # traffic to an endpoint promised nothing
    assert broken.p_value == 0.0 and broken.impossible == 1
    small = chi_square_gof([2, 1], [1.5, 1.5])
    assert not small.reliable


def test_goodness_of_fit_skewed_counts_reject():
    # 700/300 where 500/500 was promised: astronomically unlikely.
    assert chi_square_gof([700, 300], [500, 500]).p_value < 1e-30


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.40383153, 0.59616847), abs=1e-7)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.27753280, abs=1e-7)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert z_value(0.95) == pytest.approx(1.959963985)


def test_jain_index():
    assert jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)  # one-hot: 1/n
    assert jain_index([3, 1]) == pytest.approx(16 / 20)
    assert math.isnan(jain_index([]))
