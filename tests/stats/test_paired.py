"""Paired tests against a baseline and the multiple-testing corrections."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alphamill.errors import ConfigError
from alphamill.stats import adjust_pvalues, paired_tests


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03]
    # Holm: sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06])
    # BH: 3p/rank = 0.03, 0.045, 0.04 -> running min from the top 0.03, 0.04, 0.04
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.03, 0.04, 0.04])
    np.testing.assert_allclose(adjust_pvalues(p, "none"), p)
    # NaN stays NaN and is not part of the family (m = 2)
    np.testing.assert_allclose(adjust_pvalues([0.02, np.nan, 0.5], "holm"), [0.04, np.nan, 0.5])
    np.testing.assert_allclose(
        adjust_pvalues([0.4, 0.6], "holm"), [0.8, 0.8]
    )  # capped by monotonicity
    np.testing.assert_allclose(adjust_pvalues([0.6, 0.7, 0.9], "holm"), [1.0, 1.0, 1.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_adjusted_pvalues_properties(p):
    p = np.array(p)
    holm, bh = adjust_pvalues(p, "holm"), adjust_pvalues(p, "bh")
    for adj in (holm, bh):
        assert (adj >= p - 1e-15).all() and (adj <= 1).all()
        order = np.argsort(p, kind="stable")
        assert (np.diff(adj[order]) >= -1e-15).all()  # the order of the evidence is kept
    assert (holm >= bh - 1e-12).all()  # FWER control is the stricter


def test_paired_tests_against_scipy_and_by_hand():
    base = [0.02, 0.01, 0.03, 0.00, 0.04]
    a = [0.03, 0.02, 0.05, 0.01, 0.04]  # +0.01 +0.01 +0.02 +0.01 0
    b = [0.01, np.nan, 0.02, -0.01, 0.05]  # one window missing: 4 pairs
    table = pd.DataFrame({"base": base, "a": a, "b": b}, index=pd.RangeIndex(5, name="window"))
    got = paired_tests(table, "base", "holm")
    assert list(got.index) == ["a", "b"]
    assert got.loc["a", "n"] == 5 and got.loc["b", "n"] == 4
    assert got.loc["a", "mean_diff"] == pytest.approx(0.01)
    assert got.loc["b", "mean_diff"] == pytest.approx((-0.01 - 0.01 - 0.01 + 0.01) / 4)
    t = stats.ttest_rel(a, base)
    assert got.loc["a", "t_stat"] == pytest.approx(t.statistic) and got.loc[
        "a", "t_pvalue"
    ] == pytest.approx(t.pvalue)
    w = stats.wilcoxon(np.array(a) - np.array(base))
    assert got.loc["a", "wilcoxon_pvalue"] == pytest.approx(w.pvalue)
    tb = stats.ttest_rel([0.01, 0.02, -0.01, 0.05], [0.02, 0.03, 0.00, 0.04])
    assert got.loc["b", "t_pvalue"] == pytest.approx(tb.pvalue)
    np.testing.assert_allclose(got["t_pvalue_adj"], adjust_pvalues(got["t_pvalue"], "holm"))
    np.testing.assert_allclose(
        got["wilcoxon_pvalue_adj"], adjust_pvalues(got["wilcoxon_pvalue"], "holm")
    )


def test_too_few_pairs_give_nan():
    table = pd.DataFrame({"base": [0.1, np.nan], "a": [0.2, 0.3]})
    got = paired_tests(table, "base")
    assert (
        got.loc["a", "n"] == 1
        and math.isnan(got.loc["a", "t_pvalue"])
        and math.isnan(got.loc["a", "t_pvalue_adj"])
    )


def test_bad_input_names_the_setting():
    table = pd.DataFrame({"base": [0.1, 0.2], "a": [0.2, 0.3]})
    with pytest.raises(ConfigError, match="'nope' is not one of the variants") as err:
        paired_tests(table, "nope")
    assert err.value.path == "baseline"
    with pytest.raises(ConfigError) as err:
        paired_tests(table, "base", "bonferroni")
    assert err.value.path == "correction"
