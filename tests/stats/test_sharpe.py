"""PSR, expected maximum Sharpe ratio and DSR against the paper's example and a public
implementation, plus the properties the formulas must have."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alphamill.stats import (
    EULER_MASCHERONI,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_stats,
)


def test_deflated_sharpe_paper_numerical_example():
    # Bailey & López de Prado (2014), numerical example: N = 100 trials whose annualised
    # Sharpe ratios have variance 1/2; the best has annualised SR 2.5 over 5 years of daily
    # returns (T = 1250, 250 days a year), skewness -3, kurtosis 10. The paper gives
    # SR_0 = 0.1132 (per day) and DSR = 0.9004.
    days = 250
    sr0 = expected_max_sharpe(100, 0.5 / days)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(days), 1250, 100, 0.5 / days, skew=-3, kurtosis=10)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_against_mlfinlab_reference_numbers():
    # mlfinlab's tests (backtest_statistics): PSR(SR=1.14, SR*=1, T=250, normal) = 0.95727 and
    # DSR of 1.14 among trials [3.5, 1.01, 1.02] (population std, N = 3) = 0.95836
    assert probabilistic_sharpe_ratio(1.14, 250, 0, 3, sr_benchmark=1) == pytest.approx(
        0.95727, abs=1e-5
    )
    assert deflated_sharpe_ratio(1.14, 250, 3, np.var([3.5, 1.01, 1.02])) == pytest.approx(
        0.95836, abs=1e-5
    )


def test_psr_formula_by_hand():
    # (0.1 - 0.05) * sqrt(99) / sqrt(1 - 0.5 * 0.1 + (5 - 1) / 4 * 0.01) = 0.05 * 9.9499 / sqrt(0.96)
    z = 0.05 * math.sqrt(99) / math.sqrt(0.96)
    got = probabilistic_sharpe_ratio(0.1, 100, skew=0.5, kurtosis=5, sr_benchmark=0.05)
    assert got == pytest.approx(stats.norm.cdf(z), rel=1e-12)


def test_expected_max_formula_terms_and_monte_carlo():
    n = 50
    z = (1 - EULER_MASCHERONI) * stats.norm.ppf(1 - 1 / n) + EULER_MASCHERONI * stats.norm.ppf(
        1 - 1 / (n * math.e)
    )
    assert expected_max_sharpe(n, 4.0, sr_mean=1.0) == pytest.approx(1.0 + 2.0 * z)
    # the approximation (derived for N >> 1) is close to the simulated mean maximum of N
    # standard normals
    rng = np.random.default_rng(7)
    for n in (100, 1000):
        simulated = rng.standard_normal((4000, n)).max(axis=1).mean()
        assert expected_max_sharpe(n, 1.0) == pytest.approx(simulated, rel=0.02)


def test_edge_cases():
    assert expected_max_sharpe(1, 0.3, sr_mean=0.2) == 0.2  # one trial: no selection
    assert math.isnan(expected_max_sharpe(0, 0.3))
    assert math.isnan(probabilistic_sharpe_ratio(0.1, 1))  # one observation
    assert math.isnan(probabilistic_sharpe_ratio(0.5, 100, skew=5, kurtosis=3))  # variance term < 0
    assert deflated_sharpe_ratio(0.1, 100, 1, 0.5) == probabilistic_sharpe_ratio(0.1, 100)


def test_sharpe_stats_matches_numpy_and_scipy():
    r = np.array([0.01, -0.02, 0.03, 0.0, 0.015, -0.005, np.nan])
    got = sharpe_stats(r)
    x = r[:-1]
    assert got.n_obs == 6
    assert got.sharpe == pytest.approx(x.mean() / x.std(ddof=1))
    assert got.skew == pytest.approx(stats.skew(x))
    assert got.kurtosis == pytest.approx(stats.kurtosis(x) + 3)
    assert math.isnan(sharpe_stats([0.01, 0.01, 0.01]).sharpe)
    assert math.isnan(sharpe_stats([0.01]).sharpe)


def test_negative_skew_and_fat_tails_lower_the_psr():
    normal = probabilistic_sharpe_ratio(0.1, 500)
    assert probabilistic_sharpe_ratio(0.1, 500, skew=-2) < normal
    assert probabilistic_sharpe_ratio(0.1, 500, kurtosis=12) < normal


sr_ = st.floats(-0.5, 0.5)
t_ = st.integers(2, 5000)
var_ = st.floats(1e-6, 0.1)
skew_ = st.floats(-1, 1)
kurt_ = st.floats(1, 20)


@settings(max_examples=200, deadline=None)
@given(
    sr=sr_,
    t=t_,
    var=var_,
    skew=skew_,
    kurt=kurt_,
    n=st.integers(1, 10_000),
    more=st.integers(1, 10_000),
)
def test_dsr_is_a_probability_that_falls_as_trials_grow(sr, t, var, skew, kurt, n, more):
    a = deflated_sharpe_ratio(sr, t, n, var, skew, kurt)
    b = deflated_sharpe_ratio(sr, t, n + more, var, skew, kurt)
    if math.isnan(a):  # undefined moments: undefined for every N
        assert math.isnan(b)
        return
    assert 0.0 <= b <= a <= 1.0
    assert expected_max_sharpe(n + more, var) > expected_max_sharpe(n, var)


@settings(max_examples=200, deadline=None)
@given(sr=sr_, t=t_, skew=skew_, kurt=kurt_, lo=st.floats(-0.5, 0.5), step=st.floats(1e-3, 0.5))
def test_psr_falls_as_the_benchmark_rises(sr, t, skew, kurt, lo, step):
    a = probabilistic_sharpe_ratio(sr, t, skew, kurt, lo)
    b = probabilistic_sharpe_ratio(sr, t, skew, kurt, lo + step)
    if not math.isnan(a):
        assert b <= a


def test_arrays_broadcast():
    got = deflated_sharpe_ratio(np.array([0.05, 0.1]), 1000, np.array([10, 100]), 0.001)
    assert got.shape == (2,)
    assert got[0] == pytest.approx(deflated_sharpe_ratio(0.05, 1000, 10, 0.001))
