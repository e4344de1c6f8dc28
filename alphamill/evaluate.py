"""Signal and return analysis with Qlib's definitions (``qlib.contrib.eva.alpha`` and
``qlib.contrib.evaluate.risk_analysis``), vectorised over the whole panel.

* :func:`calc_ic`: per day, the Pearson (IC) and Spearman (rank IC) correlation between the
  prediction and the label across instruments, on the pairs where both are present. A day with
  fewer than two pairs, or with a constant prediction or label, has a NaN IC.
* :func:`ic_summary`: IC = mean daily IC, ICIR = mean / standard deviation (ddof=1, NaN days
  skipped; not annualised, as in Qlib's ``SigAnaRecord``), the same for the rank IC.
* :func:`risk_analysis`: mean, std, annualized_return, information_ratio, max_drawdown of a
  daily return series, ``mode="sum"`` (simple: mean*N, mean/std*sqrt(N), drawdown of the
  cumulative sum) or ``mode="product"`` (compounded: see the function). ``N`` defaults to
  Qlib's scaler for the frequency: 238 trading days a year for daily returns.
* :func:`calc_long_short_return` / :func:`long_short_returns`: Qlib's daily long-short return
  ((top quantile - bottom quantile) / 2) and average label return, plus alphamill's own
  long-minus-average (top quantile - average).

Annualisation: Qlib annualises a backtest's risk analysis with 238 trading days
(:data:`ANN_SCALER`, what ``PortAnaRecord`` and the merged backtest use by default) and
``SigAnaRecord``'s long-short figures with ``ann_scaler=252`` (:data:`SIG_ANN_SCALER`).
Both are settings; every table says which one it used.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

#: Periods per year of Qlib's ``risk_analysis`` by frequency (``cal_risk_analysis_scaler``).
FREQ_SCALERS = {"minute": 240 * 238, "day": 238, "week": 50, "month": 12}
#: Trading days a year a backtest's risk analysis is annualised with (Qlib's daily scaler).
ANN_SCALER = FREQ_SCALERS["day"]
#: ``SigAnaRecord``'s default ``ann_scaler`` (Qlib's) for the long-short figures.
SIG_ANN_SCALER = 252

_FREQ_ALIASES = {
    "min": "minute",
    "minute": "minute",
    "day": "day",
    "d": "day",
    "week": "week",
    "w": "week",
    "month": "month",
    "m": "month",
}


def ann_scaler_of(freq: str) -> float:
    """Qlib's periods per year for ``freq`` ("day", "1day", "5min", "week", ...)."""
    text = str(freq).strip().lower()
    digits = len(text) - len(text.lstrip("0123456789"))
    count = int(text[:digits]) if digits else 1
    unit = _FREQ_ALIASES.get(text[digits:])
    if unit is None or count < 1:
        raise ConfigError(
            f"expected a frequency such as day, week, month or 5min, got {freq!r}", "freq"
        )
    return FREQ_SCALERS[unit] / count


def check_ann_scaler(value: object, where: str) -> float:
    """``value`` as a positive number of periods per year, else a ConfigError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"expected a positive number of periods per year, got {value!r}", where)
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"expected a positive number of periods per year, got {value!r}", where)
    return float(value)


__all__ = [
    "ANN_SCALER",
    "SIG_ANN_SCALER",
    "ann_scaler_of",
    "check_ann_scaler",
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
    dropna: bool = False,
) -> pd.DataFrame:
    """Per day, the mean label of the top and bottom quantile by prediction, as Qlib counts them.

    Qlib's ``calc_long_short_return`` joins prediction and label on their index (union), takes
    ``k = int(rows that day * quantile)``, the ``k`` highest and ``k`` lowest predictions
    (missing predictions never selected; ties go to the instrument met first) and the mean of
    their labels (missing labels skipped); with ``dropna`` the rows missing either are dropped
    first. Columns: ``long``, ``short``, ``avg`` (mean label of the day), ``long_short`` =
    (long - short) / 2 and ``long_minus_avg`` = long - avg (alphamill's own measure: Qlib's
    "long-avg" series is ``avg`` itself).
    """
    if not 0 < quantile <= 0.5:
        raise ConfigError(f"expected 0 < quantile <= 0.5, got {quantile}", "quantile")
    pred = _as_series(pred, "pred").astype("float64")
    label = _as_series(label, "label").astype("float64")
    df = pd.DataFrame({"pred": pred, "label": label})
    if dropna:
        df = df.dropna()
    level = date_col if date_col in df.index.names else df.index.names[0]
    keys = df.index.get_level_values(level)
    g = df.groupby(keys, sort=True)
    k = np.floor(g["pred"].transform("size") * quantile).astype(int)  # Python int(), as Qlib
    rank_desc = g["pred"].rank(method="first", ascending=False)  # NaN predictions: no rank
    rank_asc = g["pred"].rank(method="first", ascending=True)
    long = df["label"].where(rank_desc <= k).groupby(keys, sort=True).mean()
    short = df["label"].where(rank_asc <= k).groupby(keys, sort=True).mean()
    avg = g["label"].mean()
    out = pd.DataFrame({"long": long, "short": short, "avg": avg})
    out["long_short"] = (out["long"] - out["short"]) / 2
    out["long_minus_avg"] = out["long"] - out["avg"]
    out.index.name = level
    return out


def calc_long_short_return(
    pred: pd.Series | pd.DataFrame,
    label: pd.Series | pd.DataFrame,
    date_col: str = "datetime",
    quantile: float = 0.2,
    dropna: bool = False,
) -> tuple[pd.Series, pd.Series]:
    """Qlib's ``calc_long_short_return``: ((long - short) / 2, the day's average label).

    The second series is what Qlib calls ``long_avg_r`` and annualises as "Long-Avg": the plain
    average label return of each day, not the top quantile's excess over it.
    """
    out = long_short_returns(pred, label, quantile=quantile, date_col=date_col, dropna=dropna)
    return out["long_short"], out["avg"]


def risk_analysis(
    returns: pd.Series,
    N: float | None = None,
    freq: str | None = "day",
    mode: Literal["sum", "product"] = "sum",
) -> pd.DataFrame:
    """Qlib's ``risk_analysis`` of daily returns (NaN days are dropped first).

    ``N`` periods per year; without it, Qlib's scaler for ``freq`` (238 for ``day``, 50 for
    ``week``, 12 for ``month``: :func:`ann_scaler_of`).

    ``sum``: mean and std (ddof=1) of the returns, annualized_return = mean * N,
    information_ratio = mean / std * sqrt(N), max_drawdown = min of (cumsum - running max of
    cumsum); std is the per-period standard deviation, not annualised (as in Qlib).

    ``product``: with the wealth curve W = cumprod(1 + r) over n days, mean = W_n^(1/n) - 1
    (geometric mean), std = std(log(1 + r)) (ddof=1), annualized_return = W_n^(N/n) - 1,
    information_ratio = mean / std * sqrt(N), max_drawdown = min of (W / running max of W - 1).

    Returns a one-column DataFrame (column ``risk``) indexed by those five names, like Qlib.
    """
    if mode not in ("sum", "product"):
        raise ConfigError(f"expected 'sum' or 'product', got {mode!r}", "mode")
    if N is None:
        if freq is None:
            raise ConfigError("expected N or freq (at least one)", "N")
        N = ann_scaler_of(freq)
    N = check_ann_scaler(N, "N")
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
