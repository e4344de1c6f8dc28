"""IC, rank IC, ICIR, long-short and risk analysis against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alphamill.errors import ConfigError
from alphamill.evaluate import (
    ANN_SCALER,
    ann_scaler_of,
    calc_ic,
    calc_long_short_return,
    ic_summary,
    long_short_returns,
    risk_analysis,
)

D1, D2, D3 = pd.Timestamp("2021-01-04"), pd.Timestamp("2021-01-05"), pd.Timestamp("2021-01-06")


def _series(rows: list[tuple[pd.Timestamp, str, float]]) -> pd.Series:
    idx = pd.MultiIndex.from_tuples([(d, i) for d, i, _ in rows], names=["datetime", "instrument"])
    return pd.Series([v for *_, v in rows], index=idx)


PRED = _series(
    [
        (D1, "A", 1.0),
        (D1, "B", 2.0),
        (D1, "C", 3.0),
        (D1, "D", 4.0),
        (D2, "A", 0.5),
        (D2, "B", 0.1),
        (D2, "C", 0.9),
        (D2, "D", np.nan),
        (D3, "A", 1.0),
        (D3, "B", 1.0),
        (D3, "C", 1.0),
        (D3, "D", 1.0),
    ]
)
LABEL = _series(
    [
        (D1, "A", 0.01),
        (D1, "B", 0.03),
        (D1, "C", 0.02),
        (D1, "D", 0.05),
        (D2, "A", -0.02),
        (D2, "B", 0.01),
        (D2, "C", 0.04),
        (D2, "D", 0.08),
        (D3, "A", 0.01),
        (D3, "B", 0.02),
        (D3, "C", 0.03),
        (D3, "D", 0.04),
    ]
)


def test_daily_ic_and_rank_ic() -> None:
    ic, ric = calc_ic(PRED, LABEL)
    # day 1: pearson of (1,2,3,4) and (.01,.03,.02,.05) by hand
    x, y = np.array([1, 2, 3, 4.0]), np.array([0.01, 0.03, 0.02, 0.05])
    dx, dy = x - x.mean(), y - y.mean()
    assert ic[D1] == pytest.approx((dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum()))
    assert ic[D1] == pytest.approx(0.8315218406)
    assert ric[D1] == pytest.approx(stats.spearmanr(x, y).statistic) == pytest.approx(0.8)
    # day 2: D has no prediction, so only A, B, C count
    x2, y2 = np.array([0.5, 0.1, 0.9]), np.array([-0.02, 0.01, 0.04])
    assert ic[D2] == pytest.approx(stats.pearsonr(x2, y2).statistic)
    assert ric[D2] == pytest.approx(0.5)
    # day 3: a constant prediction has no correlation
    assert np.isnan(ic[D3]) and np.isnan(ric[D3])
    assert list(ic.index) == [D1, D2, D3] and ic.index.name == "datetime"
    ic_d, ric_d = calc_ic(PRED, LABEL, dropna=True)
    assert list(ic_d.index) == [D1, D2]


def test_rank_ic_with_ties_matches_scipy() -> None:
    pred = _series([(D1, s, v) for s, v in zip("ABCDE", [1, 1, 2, 3, 3], strict=True)])
    label = _series([(D1, s, v) for s, v in zip("ABCDE", [5, 3, 3, 1, 2], strict=True)])
    _, ric = calc_ic(pred, label)
    expect = stats.spearmanr([1, 1, 2, 3, 3], [5, 3, 3, 1, 2]).statistic
    assert ric[D1] == pytest.approx(expect)


def test_ic_summary_is_mean_over_std() -> None:
    ic = pd.Series([0.1, 0.2, np.nan, 0.3])
    ric = pd.Series([0.05, 0.15, 0.1])
    out = ic_summary(ic, ric)
    assert out["IC"] == pytest.approx(0.2)
    assert out["ICIR"] == pytest.approx(0.2 / 0.1)  # sample std of .1 .2 .3 is .1
    assert out["Rank IC"] == pytest.approx(0.1)
    assert out["Rank ICIR"] == pytest.approx(0.1 / 0.05)
    assert set(out) == {"IC", "ICIR", "Rank IC", "Rank ICIR"}


def test_long_short() -> None:
    pred = _series([(D1, s, float(i)) for i, s in enumerate("ABCDEFGHIJ")])
    label = _series([(D1, s, 0.01 * i * (-1) ** i) for i, s in enumerate("ABCDEFGHIJ")])
    out = long_short_returns(pred, label, quantile=0.2)
    labels = [0.01 * i * (-1) ** i for i in range(10)]
    long, short = np.mean(labels[8:]), np.mean(labels[:2])  # top and bottom 2 of 10
    assert out.loc[D1, "long"] == pytest.approx(long)
    assert out.loc[D1, "short"] == pytest.approx(short)
    assert out.loc[D1, "long_short"] == pytest.approx((long - short) / 2)
    assert out.loc[D1, "long_minus_avg"] == pytest.approx(long - np.mean(labels))
    ls, avg = calc_long_short_return(pred, label)
    assert ls[D1] == pytest.approx((long - short) / 2) and avg[D1] == pytest.approx(np.mean(labels))
    with pytest.raises(ConfigError, match="quantile"):
        long_short_returns(pred, label, quantile=0.7)


def _qlib_long_short(pred: pd.Series, label: pd.Series, quantile: float = 0.2):
    """Qlib 0.9.7's definition written out with pandas: union of the two indexes, k counted
    over every row of the day, ``nlargest`` / ``nsmallest`` on the prediction, label means
    skipping NaN."""
    df = pd.DataFrame({"pred": pred, "label": label})
    long, short = {}, {}
    for day, x in df.groupby(level="datetime"):
        k = int(len(x) * quantile)
        long[day] = x.nlargest(k, columns="pred")["label"].mean()
        short[day] = x.nsmallest(k, columns="pred")["label"].mean()
    long, short = pd.Series(long), pd.Series(short)
    return (long - short) / 2, df.groupby(level="datetime")["label"].mean()


def test_long_short_counts_the_quantile_as_qlib_with_missing_values() -> None:
    """A missing label still counts toward k and a missing prediction is never picked, as in
    Qlib (a pairwise-complete count gives other quantiles and other figures)."""
    rng = np.random.default_rng(5)
    days = pd.bdate_range("2021-01-04", periods=30)
    insts = [f"S{i:02d}" for i in range(23)]
    idx = pd.MultiIndex.from_product([days, insts], names=["datetime", "instrument"])
    pred = pd.Series(rng.normal(size=len(idx)), index=idx)
    label = pd.Series(rng.normal(0.001, 0.02, size=len(idx)), index=idx)
    label[rng.random(len(idx)) < 0.15] = np.nan  # halted next day: no label
    pred[rng.random(len(idx)) < 0.05] = np.nan
    pred = pred.drop(pred.index[:7])  # a few rows the model did not predict
    ls, avg = calc_long_short_return(pred, label)
    want_ls, want_avg = _qlib_long_short(pred, label)
    np.testing.assert_allclose(ls.to_numpy(), want_ls.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(avg.to_numpy(), want_avg.to_numpy(), rtol=1e-12)
    assert list(ls.index) == list(want_ls.index)


def test_risk_analysis_defaults_to_qlibs_daily_scaler() -> None:
    r = pd.Series([0.01, -0.02, 0.03, 0.005])
    assert ANN_SCALER == 238 and ann_scaler_of("day") == 238 and ann_scaler_of("1day") == 238
    assert ann_scaler_of("week") == 50 and ann_scaler_of("month") == 12
    assert ann_scaler_of("5min") == 240 * 238 / 5
    res = risk_analysis(r)["risk"]
    assert res["annualized_return"] == pytest.approx(r.mean() * 238)
    assert res["information_ratio"] == pytest.approx(r.mean() / r.std() * math.sqrt(238))
    assert risk_analysis(r, freq="week")["risk"]["annualized_return"] == pytest.approx(
        r.mean() * 50
    )
    for bad in (0, -1, float("nan"), "252", True):
        with pytest.raises(ConfigError, match="N"):
            risk_analysis(r, N=bad)
    with pytest.raises(ConfigError, match="freq"):
        risk_analysis(r, freq="fortnight")


def test_risk_analysis_sum_mode() -> None:
    r = pd.Series([0.01, -0.02, 0.03, np.nan, 0.005])
    res = risk_analysis(r, N=252, mode="sum")["risk"]
    vals = [0.01, -0.02, 0.03, 0.005]
    mean = sum(vals) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 3)
    assert res["mean"] == pytest.approx(mean)
    assert res["std"] == pytest.approx(std)
    assert res["annualized_return"] == pytest.approx(mean * 252)
    assert res["information_ratio"] == pytest.approx(mean / std * math.sqrt(252))
    # cumsum .01 -.01 .02 .025: worst fall from a peak is .01 -> -.01
    assert res["max_drawdown"] == pytest.approx(-0.02)


def test_risk_analysis_product_mode() -> None:
    vals = [0.10, -0.20, 0.05]
    res = risk_analysis(pd.Series(vals), N=12, mode="product")["risk"]
    wealth = 1.1 * 0.8 * 1.05  # 0.924
    logs = [math.log(1 + v) for v in vals]
    lm = sum(logs) / 3
    lstd = math.sqrt(sum((v - lm) ** 2 for v in logs) / 2)
    assert res["mean"] == pytest.approx(wealth ** (1 / 3) - 1)
    assert res["std"] == pytest.approx(lstd)
    assert res["annualized_return"] == pytest.approx(wealth ** (12 / 3) - 1)
    assert res["information_ratio"] == pytest.approx((wealth ** (1 / 3) - 1) / lstd * math.sqrt(12))
    assert res["max_drawdown"] == pytest.approx(0.88 / 1.1 - 1)  # peak 1.1, trough 0.88
    assert list(res.index) == [
        "mean",
        "std",
        "annualized_return",
        "information_ratio",
        "max_drawdown",
    ]
    with pytest.raises(ConfigError, match="mode"):
        risk_analysis(pd.Series(vals), mode="log")
