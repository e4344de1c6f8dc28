"""CSCV and the probability of backtest overfitting: hand-checked cases, a literal
step-by-step implementation of the paper's procedure as the reference, and properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alphamill.errors import ConfigError
from alphamill.stats import probability_of_backtest_overfitting as pbo_of


def reference_pbo(
    m: np.ndarray, s: int, metric
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Bailey, Borwein, López de Prado & Zhu (2017), section 2, step by step: blocks, every
    combination of S/2 of them concatenated in time order, the statistic on J and J-bar,
    n* = argmax, relative OOS rank / (N + 1), logit, PBO = share of logits <= 0."""
    t, n = m.shape
    size = t // s
    m = m[t - s * size :]
    blocks = [m[i * size : (i + 1) * size] for i in range(s)]
    logits, is_perf, oos_perf = [], [], []
    for combo in itertools.combinations(range(s), s // 2):
        train = np.concatenate([blocks[i] for i in combo])
        test = np.concatenate([blocks[i] for i in range(s) if i not in combo])
        r, r_bar = metric(train), metric(test)
        best = int(np.argmax(r))
        w = stats.rankdata(r_bar)[best] / (n + 1)
        logits.append(math.log(w / (1 - w)))
        is_perf.append(r[best])
        oos_perf.append(r_bar[best])
    logits = np.array(logits)
    return float(np.mean(logits <= 0)), logits, np.array(is_perf), np.array(oos_perf)


def sharpe(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0) / x.std(axis=0, ddof=1)


def mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0)


def test_hand_checked_anti_persistent_case():
    # 4 blocks of one row, 3 trials, each trial's total is 6, so out of sample = 3 - in sample
    # (means): whatever wins in sample loses out of sample.
    m = np.array([[3, 1, 2], [1, 2, 0], [0, 3, 1], [2, 0, 3]], dtype=float)
    got = pbo_of(m, 4, "mean")
    # splits {0,1} {0,2} {0,3} {1,2} {1,3} {2,3}: in-sample means [2,1.5,1] [1.5,2,1.5] [2.5,.5,2.5]
    # [.5,2.5,.5] [1.5,1,1.5] [1,1.5,2] -> chosen 0,1,0,1,0,2 (first on ties); out of sample that
    # trial ranks 1 of 3, or 1.5 when tied with another -> w = 1/4 or 1.5/4
    third, tie = math.log(1 / 3), math.log(0.375 / 0.625)
    np.testing.assert_allclose(got.logits, [third, third, tie, third, tie, third])
    np.testing.assert_array_equal(got.selected, [0, 1, 0, 1, 0, 2])
    np.testing.assert_allclose(got.is_performance, [2, 2, 2.5, 2.5, 1.5, 2])
    np.testing.assert_allclose(got.oos_performance, [1, 1, 0.5, 0.5, 1.5, 1])
    assert got.pbo == 1.0
    assert got.slope == pytest.approx(-1.0) and got.intercept == pytest.approx(3.0)
    assert got.prob_oos_loss == 0.0
    assert got.n_combinations == 6 and got.dropped_rows == 0


def test_hand_checked_dominant_trial():
    # trial 2 is the best in every block: chosen every time, best out of sample (rank 3 of 3)
    m = np.array([[0, 1, 2], [1, 0, 2], [0, 1, 3], [1, 0, 2]], dtype=float)
    got = pbo_of(m, 4, "mean")
    np.testing.assert_allclose(got.logits, math.log(3))
    assert got.pbo == 0.0 and got.selected_counts() == {"0": 0, "1": 0, "2": 6}


@pytest.mark.parametrize("metric, func", [("sharpe", sharpe), ("mean", mean)])
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 7),
    s=st.sampled_from([2, 4, 6, 8]),
    extra=st.integers(0, 7),
    drift=st.floats(0, 0.5),
)
def test_matches_the_literal_procedure(metric, func, seed, n, s, extra, drift):
    rng = np.random.default_rng(seed)
    extra %= s  # rows left over when cutting into S equal blocks
    m = rng.standard_normal((s * 5 + extra, n)) + drift * np.arange(n)
    want_pbo, want_logits, want_is, want_oos = reference_pbo(m, s, func)
    for got in (pbo_of(m, s, metric), pbo_of(m, s, func)):
        assert got.pbo == want_pbo
        np.testing.assert_allclose(got.logits, want_logits, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.is_performance, want_is, rtol=1e-9)
        np.testing.assert_allclose(got.oos_performance, want_oos, rtol=1e-9)
        assert got.dropped_rows == extra and got.n_obs == s * 5


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), s=st.sampled_from([2, 4, 6, 8, 10]))
def test_properties(seed, n, s):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((s * 4, n))
    got = pbo_of(m, s)
    assert 0.0 <= got.pbo <= 1.0
    assert got.n_combinations == math.comb(s, s // 2)
    assert np.isfinite(got.logits).all()
    # the trials' order does not matter (continuous data: no ties)
    perm = rng.permutation(n)
    assert pbo_of(m[:, perm], s).pbo == got.pbo
    # a trial better in every observation is never overfit
    boosted = m.copy()
    boosted[:, 0] = m.max(axis=1) + 1.0 + rng.random(len(m))
    assert pbo_of(boosted, s, "mean").pbo == 0.0


def test_noise_gives_about_one_half():
    # without skill, the in-sample winner is as likely below the median out of sample as above
    # (with odd N the median itself counts: (N + 1) / (2N))
    for n, want in ((4, 0.5), (10, 0.5), (5, 0.6)):
        values = [
            pbo_of(np.random.default_rng(seed).standard_normal((160, n)), 8).pbo
            for seed in range(150)
        ]
        assert np.mean(values) == pytest.approx(want, abs=0.05)


def test_a_skilled_trial_among_noise_is_not_overfit():
    rng = np.random.default_rng(3)
    m = rng.normal(0, 0.01, (1000, 10))
    m[:, 4] += 0.003
    got = pbo_of(pd.DataFrame(m, columns=[f"v{i}" for i in range(10)]), 16)
    assert got.pbo < 0.05 and max(got.selected_counts(), key=got.selected_counts().get) == "v4"
    assert got.n_combinations == 12870 and got.dropped_rows == 1000 - 16 * 62


def test_undefined_statistic_counts_as_worst():
    m = np.random.default_rng(0).standard_normal((16, 3))
    m[:, 1] = 0.5  # constant: no Sharpe ratio anywhere
    got = pbo_of(m, 4)
    assert not (got.selected == 1).any()


@pytest.mark.parametrize(
    "args, field",
    [
        ((np.zeros((16, 3)), 3), "n_partitions"),
        ((np.zeros((16, 3)), 0), "n_partitions"),
        ((np.zeros((16, 3)), 26), "n_partitions"),
        ((np.zeros((16, 1)), 4), "performance"),
        ((np.zeros(16), 4), "performance"),
        ((np.array([[0.1, np.nan]] * 8), 4), "performance"),
        ((np.zeros((3, 2)), 4), "n_partitions"),
        ((np.zeros((16, 2)), 4, "median"), "metric"),
    ],
)
def test_bad_input_names_the_argument(args, field):
    with pytest.raises(ConfigError) as err:
        pbo_of(*args)
    assert err.value.path == field
