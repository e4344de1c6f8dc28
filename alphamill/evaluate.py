"""Signal and return analysis with Qlib's definitions (``qlib.contrib.eva.alpha`` and
``qlib.contrib.evaluate.risk_analysis``), vectorised over the whole panel.

* :func:`calc_ic`: per day, the Pearson (IC) and Spearman (rank IC) correlation between the
  prediction and the label across instruments, on the pairs where both are present. A day with
  fewer than two pairs, or with a constant prediction or label, has a NaN IC.
* :func:`ic_summary`: IC = mean daily IC, ICIR = mean / standard deviation (ddof=1, NaN days
  skipped; not annualised, as in Qlib's ``SigAnaRecord``), the same for the rank IC.
* :func:`risk_analysis`: mean, std, annualized_return, information_ratio, max_drawdown of a
  daily return series, ``mode="sum"`` (simple: mean*N, mean/std*sqrt(N), drawdown of the
  cumulative sum) or ``mode="product"`` (compounded: see the function).
* :func:`long_short_returns`: daily mean label of the top and bottom quantile by prediction.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

__all__ = [
    "calc_ic",
    "calc_long_short_return",
    "ic_summary",
    "long_short_returns",
    "risk_analysis",
]


def _as_series(x: pd.Series | pd.DataFrame, name: str, col: int | str = 0) -> pd.Series:
    if isinstance(x, pd.DataFrame):
        if x.shape[1] == 0:
            raise ConfigError("has no columns", name)
        x = x[col] if not isinstance(col, int) else x.iloc[:, col]
    if not isinstance(x, pd.Series):
        raise ConfigError(f"expected a pandas Series, got {type(x).__name__}", name)
    if not isinstance(x.index, pd.MultiIndex) or x.index.nlevels < 2:
        raise ConfigError("expected an index (datetime, instrument)", name)
    return x


def _pairs(pred: pd.Series, label: pd.Series, date_level: str | int) -> tuple[pd.DataFrame, str]:
    pred = _as_series(pred, "pred")
    label = _as_series(label, "label")
    df = pd.DataFrame(
        {"pred": pred.astype("float64"), "label": label.reindex(pred.index).astype("float64")}
    )
    df = df[np.isfinite(df["pred"]) & np.isfinite(df["label"])]
    level = date_level if isinstance(date_level, str) else pred.index.names[date_level]
    if level not in df.index.names:
        level = df.index.names[0]
    return df, level


def _daily_pearson(x: pd.Series, y: pd.Series, keys: pd.Index) -> pd.Series:
    """Per-group Pearson correlation from centred sums (one pass, no Python loop)."""
    gx = x.groupby(keys, sort=True)
    gy = y.groupby(keys, sort=True)
    dx = x - gx.transform("mean")
    dy = y - gy.transform("mean")
    sxy = (dx * dy).groupby(keys, sort=True).sum()
    sxx = (dx * dx).groupby(keys, sort=True).sum()
    syy = (dy * dy).groupby(keys, sort=True).sum()
    n = gx.size()
    denom = np.sqrt(sxx * syy)
    # a constant side gives a zero (or rounding-noise) variance: no correlation that day
    tiny = (sxx <= 1e-20 * (x * x).groupby(keys, sort=True).sum()) | (
        syy <= 1e-20 * (y * y).groupby(keys, sort=True).sum()
    )
    ic = (sxy / denom).where((n >= 2) & ~tiny & (denom > 0))
    return ic.clip(-1.0, 1.0)


def calc_ic(
    pred: pd.Series | pd.DataFrame,
    label: pd.Series | pd.DataFrame,
    date_col: str = "datetime",
    dropna: bool = False,
) -> tuple[pd.Series, pd.Series]:
    """Daily Pearson IC and Spearman rank IC across instruments (Qlib's ``calc_ic``).

    ``pred`` and ``label`` are indexed by (datetime, instrument); the label is aligned on the
    prediction's index. ``dropna`` drops the days whose IC is NaN.
    """
    df, level = _pairs(pred, label, date_col)
    keys = df.index.get_level_values(level)
    ic = _daily_pearson(df["pred"], df["label"], keys)
    by_day = df.groupby(keys, sort=True)
    rp = by_day["pred"].rank(method="average")
    rl = by_day["label"].rank(method="average")
    ric = _daily_pearson(rp, rl, keys)
    ic.index.name = ric.index.name = level
    if dropna:
        return ic.dropna(), ric.dropna()
    return ic, ric


def ic_summary(ic: pd.Series, ric: pd.Series) -> dict[str, float]:
    """``{"IC", "ICIR", "Rank IC", "Rank ICIR"}`` as Qlib's ``SigAnaRecord`` logs them."""
    return {
        "IC": float(ic.mean()),
        "ICIR": float(ic.mean() / ic.std()),
        "Rank IC": float(ric.mean()),
        "Rank ICIR": float(ric.mean() / ric.std()),
    }


def long_short_returns(
    pred: pd.Series | pd.DataFrame,
    label: pd.Series | pd.DataFrame,
    quantile: float = 0.2,
    date_col: str = "datetime",
) -> pd.DataFrame:
    """Per day: mean label of the top / bottom ``int(n * quantile)`` instruments by prediction.

    Columns ``long``, ``short``, ``avg`` (all instruments), ``long_short`` = (long - short) / 2
    (Qlib's long-short return) and ``long_avg`` = long - avg. Ties in the prediction are broken
    by instrument order. Days with fewer than ``1 / quantile`` instruments have NaN long/short.
    """
    if not 0 < quantile <= 0.5:
        raise ConfigError(f"expected 0 < quantile <= 0.5, got {quantile}", "quantile")
    df, level = _pairs(pred, label, date_col)
    keys = df.index.get_level_values(level)
    g = df.groupby(keys, sort=True)
    n = g["pred"].transform("size")
    k = np.floor(n * quantile).astype(int)
    rank_desc = g["pred"].rank(method="first", ascending=False)
    rank_asc = g["pred"].rank(method="first", ascending=True)
    long = df["label"].where(rank_desc <= k).groupby(keys, sort=True).mean()
    short = df["label"].where(rank_asc <= k).groupby(keys, sort=True).mean()
    avg = g["label"].mean()
    out = pd.DataFrame({"long": long, "short": short, "avg": avg})
    out["long_short"] = (out["long"] - out["short"]) / 2
    out["long_avg"] = out["long"] - out["avg"]
    out.index.name = level
    return out


def calc_long_short_return(
    pred: pd.Series | pd.DataFrame,
    label: pd.Series | pd.DataFrame,
    date_col: str = "datetime",
    quantile: float = 0.2,
    dropna: bool = False,
) -> tuple[pd.Series, pd.Series]:
    """Qlib's ``calc_long_short_return``: ((long - short) / 2, daily average label)."""
    out = long_short_returns(pred, label, quantile=quantile, date_col=date_col)
    if dropna:
        out = out.dropna(subset=["long_short"])
    return out["long_short"], out["avg"]


def risk_analysis(
    returns: pd.Series, N: int = 252, mode: Literal["sum", "product"] = "sum"
) -> pd.DataFrame:
    """Qlib's ``risk_analysis`` of daily returns (NaN days are dropped first).

    ``sum``: mean and std (ddof=1) of the returns, annualized_return = mean * N,
    information_ratio = mean / std * sqrt(N), max_drawdown = min of (cumsum - running max of
    cumsum).

    ``product``: with the wealth curve W = cumprod(1 + r) over n days, mean = W_n^(1/n) - 1
    (geometric mean), std = std(log(1 + r)) (ddof=1), annualized_return = W_n^(N/n) - 1,
    information_ratio = mean / std * sqrt(N), max_drawdown = min of (W / running max of W - 1).

    Returns a one-column DataFrame (column ``risk``) indexed by those five names, like Qlib.
    """
    if mode not in ("sum", "product"):
        raise ConfigError(f"expected 'sum' or 'product', got {mode!r}", "mode")
    if not isinstance(N, (int, float, np.integer, np.floating)) or N <= 0:
        raise ConfigError(f"expected a positive number of periods per year, got {N!r}", "N")
    if isinstance(returns, pd.DataFrame):
        if returns.shape[1] != 1:
            raise ConfigError("expected a Series of returns", "returns")
        returns = returns.iloc[:, 0]
    r = pd.Series(returns, dtype="float64").dropna()
    if mode == "sum":
        mean = r.mean()
        std = r.std(ddof=1)
        annualized_return = mean * N
        cum = r.cumsum()
        max_drawdown = (cum - cum.cummax()).min()
    else:
        curve = (1 + r).cumprod()
        n = len(r)
        final = curve.iloc[-1] if n else np.nan
        mean = final ** (1 / n) - 1 if n else np.nan
        std = np.log1p(r).std(ddof=1)
        annualized_return = final ** (N / n) - 1 if n else np.nan
        max_drawdown = (curve / curve.cummax() - 1).min()
    information_ratio = mean / std * np.sqrt(N) if std and np.isfinite(std) else np.nan
    data = {
        "mean": mean,
        "std": std,
        "annualized_return": annualized_return,
        "information_ratio": information_ratio,
        "max_drawdown": max_drawdown,
    }
    return pd.Series(data, dtype="float64").to_frame("risk")
