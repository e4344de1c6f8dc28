"""Top-k dropout backtest (Qlib's ``TopkDropoutStrategy`` on a daily exchange), in numpy.

Timing, row by row. Row ``t`` of the result is one trading day of the price calendar:

1. the account is valued at the deal price (close by default) of day ``t``: ``account``;
2. the signal of the previous trading day (``signal_lag=1``, the default, Qlib's timing: a
   prediction computed from the close of ``t-1`` is traded at the next close, ``t``; with
   ``signal_lag=0`` the predictions dated ``t`` themselves, traded at the close they were
   computed from, which is optimistic) decides the trades, which are executed at the deal
   price of day ``t``; their fees are ``cost`` and their traded value (buys + sells) is
   ``turnover``, both as fractions of ``account``;
3. the resulting holdings earn the price change from day ``t`` to the next trading day ``t+1``:
   ``return`` = earnings / ``account`` (before fees, as Qlib reports it), so
   ``account[t+1] = account[t] * (1 + return[t] - cost[t])``.

Hence the last day of the price data has no row: nothing traded there can earn a return. When
the predictions reach that day, its signal is dropped (``result.attrs["dropped_last_day"]``
names it). Days without any prediction trade nothing; the holdings just drift.

Selection, as Qlib (``method_sell="bottom"``, ``method_buy="top"``, ``hold_thresh=1``): rank
the current holdings by today's score (holdings without a score rank last); take the best
``n_drop + topk - len(holdings)`` instruments not held; among holdings ∪ those, the
``n_drop`` lowest-ranked that are held are sold; the best
``len(sold) + topk - len(holdings)`` of the candidates are bought. Instruments without a
deal price that day (halted, not yet listed, delisted), with zero volume (when a ``volume``
column is given), or - with ``limit_threshold`` - whose price moved by at least that fraction
since the previous day, cannot be traded that day: a sell is skipped (kept in the book), a buy
is skipped (its slot stays empty). Sells raise cash (value - fee); the cash available
times ``risk_degree`` is split equally over the buy list (Qlib's default keeps 5 % in cash).
Holdings are not rebalanced. ``n_drop=0`` means no dropout (Qlib would still sell one).

Fees: ``max(value * open_cost, min_cost)`` per buy and ``max(value * close_cost, min_cost)``
per sell, ``min_cost`` in currency on an account of ``account`` currency units. Shares are
fractional unless ``trade_unit`` is given (buys are then rounded down to a multiple of
``trade_unit`` shares at the deal price). A held instrument that stops trading keeps its last
price until it trades again.

Benchmark ``bench[t]`` is the return from ``t`` to ``t+1`` of: the equal-weight portfolio of
every instrument of the price panel priced on both days (``benchmark=None``), an instrument
of the panel (``benchmark="SH000300"``), or a given Series of daily returns indexed by date
(the value at date ``d`` is the return from the previous trading day to ``d``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

__all__ = [
    "DEFAULT_SIGNAL_LAG",
    "REPORT_COLUMNS",
    "TIMING",
    "timing",
    "topk_dropout_backtest",
    "price_panel",
]

#: Trading days between a prediction's date and the close it is traded at, unless a backtest
#: sets ``signal_lag`` itself: 1 is Qlib's timing (the signal computed from the close of ``t``
#: is traded at the close of ``t+1``). Every backtest alphamill runs takes its default here.
DEFAULT_SIGNAL_LAG = 1

#: How each ``signal_lag`` is said in tables and reports.
TIMING = {
    0: "signals traded at the close they were computed from",
    1: "signals traded at the next close",
}


def timing(signal_lag: int = DEFAULT_SIGNAL_LAG) -> str:
    """The words a table or report uses for ``signal_lag``."""
    return TIMING[int(signal_lag)]


REPORT_COLUMNS = [
    "return",
    "turnover",
    "cost",
    "bench",
    "excess_return_without_cost",
    "excess_return_with_cost",
    "account",
    "value",
    "cash",
    "n_holdings",
]


def _deal_column(deal_price: str) -> str:
    name = str(deal_price).lstrip("$").lower()
    if not name:
        raise ConfigError("expected a price field such as 'close'", "deal_price")
    return name


def price_panel(prices: Any, deal_price: str = "close") -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(deal prices, volumes or None) as wide DataFrames: dates × instruments, float64.

    ``prices`` is a wide DataFrame of deal prices, a Series indexed (datetime, instrument), or a
    long DataFrame indexed (datetime, instrument) with a ``deal_price`` column (``$close`` and
    ``close`` both work) and optionally ``volume``.
    """
    col = _deal_column(deal_price)
    volume = None
    if isinstance(prices, (pd.Series, pd.DataFrame)) and isinstance(prices.index, pd.MultiIndex):
        names = list(prices.index.names)
        if "datetime" in names and names.index("datetime") != 0:  # Qlib's (instrument, datetime)
            prices = prices.swaplevel(0, names.index("datetime"))
    if isinstance(prices, pd.Series):
        if not isinstance(prices.index, pd.MultiIndex):
            raise ConfigError("a price Series needs an index (datetime, instrument)", "prices")
        wide = prices.unstack(level=-1)
    elif isinstance(prices, pd.DataFrame) and isinstance(prices.index, pd.MultiIndex):
        cols = {str(c).lstrip("$").lower(): c for c in prices.columns}
        if col not in cols:
            raise ConfigError(
                f"the price panel has no {col!r} column (columns: {list(prices.columns)})",
                "deal_price",
            )
        wide = prices[cols[col]].unstack(level=-1)
        if "volume" in cols:
            volume = prices[cols["volume"]].unstack(level=-1).astype("float64")
    elif isinstance(prices, pd.DataFrame):
        wide = prices
    else:
        raise ConfigError(
            f"expected a price DataFrame or Series, got {type(prices).__name__}", "prices"
        )
    try:
        wide.index = pd.DatetimeIndex(wide.index)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the price panel's dates cannot be read: {e}", "prices") from None
    if not wide.index.is_monotonic_increasing or wide.index.has_duplicates:
        wide = wide[~wide.index.duplicated(keep="last")].sort_index()
    wide = wide.astype("float64")
    if volume is not None:
        volume.index = pd.DatetimeIndex(volume.index)
        volume = volume.reindex(index=wide.index, columns=wide.columns)
    return wide, volume


def _signal(pred: Any) -> pd.Series:
    if isinstance(pred, pd.DataFrame):
        if "score" in pred.columns:
            pred = pred["score"]
        elif pred.shape[1] >= 1:
            pred = pred.iloc[:, 0]
        else:
            raise ConfigError("the prediction DataFrame has no column", "pred")
    if not isinstance(pred, pd.Series) or not isinstance(pred.index, pd.MultiIndex):
        raise ConfigError("expected predictions indexed by (datetime, instrument)", "pred")
    names = list(pred.index.names)
    if "datetime" in names and names.index("datetime") != 0:
        pred = pred.swaplevel(0, names.index("datetime"))
    return pred.astype("float64")


def topk_dropout_backtest(
    pred: pd.Series | pd.DataFrame,
    prices: Any,
    topk: int = 50,
    n_drop: int = 5,
    open_cost: float = 0.0005,
    close_cost: float = 0.0015,
    min_cost: float = 5.0,
    deal_price: str = "close",
    benchmark: Any = None,
    account: float = 1e8,
    start_time: Any = None,
    end_time: Any = None,
    risk_degree: float = 0.95,
    signal_lag: int = DEFAULT_SIGNAL_LAG,
    limit_threshold: float | None = None,
    trade_unit: float | None = None,
) -> pd.DataFrame:
    """Run the strategy described in the module docstring; one row per trading day.

    Columns: ``return``, ``turnover``, ``cost``, ``bench``, ``excess_return_without_cost``
    (return - bench), ``excess_return_with_cost`` (return - bench - cost), ``account`` (value
    before the day's trades), ``value`` (holdings after them), ``cash``, ``n_holdings``.
    """
    _check(topk, n_drop, open_cost, close_cost, min_cost, account, risk_degree, signal_lag)
    sig = _signal(pred)
    px, vol = price_panel(prices, deal_price)
    cal = px.index
    wide_sig = sig.unstack(level=-1)
    wide_sig.index = pd.DatetimeIndex(wide_sig.index)
    wide_sig = wide_sig.sort_index()
    sig_dates = wide_sig.index
    if len(sig_dates) == 0:
        raise ConfigError("no predictions to backtest", "pred")
    unknown = sig_dates.difference(cal)
    if len(unknown):
        raise ConfigError(
            f"{len(unknown)} prediction dates are not in the price calendar "
            f"(first: {unknown[0].date()}); the prices must cover the predictions",
            "pred",
        )
    extra = wide_sig.columns.difference(px.columns)
    if len(extra):  # predicted instruments without any price: never tradable
        px = px.reindex(columns=px.columns.append(pd.Index(extra)))
        if vol is not None:
            vol = vol.reindex(columns=px.columns)

    first = cal.get_loc(sig_dates[0]) + signal_lag
    last = cal.get_loc(sig_dates[-1]) + signal_lag
    if start_time is not None:
        first = max(first, int(cal.searchsorted(pd.Timestamp(start_time), side="left")))
    if end_time is not None:
        last = min(last, int(cal.searchsorted(pd.Timestamp(end_time), side="right")) - 1)
    dropped = None
    if last >= len(cal) - 1:
        # the last day of data has no next price: a trade there cannot earn anything
        dropped = cal[len(cal) - 1]
        last = len(cal) - 2
    if last < first:
        raise ConfigError(
            "no trading day with a next-day price inside the prediction range "
            f"{sig_dates[0].date()}..{sig_dates[-1].date()}",
            "pred",
        )
    window = cal[first : last + 2]  # trade days plus the day after the last one
    T, n_inst = len(window) - 1, px.shape[1]

    raw = px.reindex(window).to_numpy(dtype="float64")
    before = px.iloc[max(first - 1, 0) : first].reindex(columns=px.columns)
    valid = np.isfinite(raw) & (raw > 0)
    if vol is not None:
        v = vol.reindex(window).to_numpy(dtype="float64")
        valid &= np.isfinite(v) & (v > 0)
    priced = np.where(valid, raw, np.nan)
    filled = pd.DataFrame(np.vstack([before.to_numpy(dtype="float64"), priced]))
    filled = filled.ffill().to_numpy()[len(before) :]
    growth = filled[1:] / filled[:-1]
    growth = np.where(np.isfinite(growth), growth, 1.0)
    tradable = valid[:T].copy()
    if limit_threshold is not None:
        prev = np.vstack([filled[:1] * np.nan, filled[:-1]])
        if len(before):
            prev[0] = pd.DataFrame(before.to_numpy()).ffill().to_numpy()[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            change = raw / prev - 1
        tradable &= ~(np.abs(np.nan_to_num(change[:T])) >= float(limit_threshold) - 1e-12)

    signal_dates = cal[first - signal_lag : last - signal_lag + 1]
    scores = wide_sig.reindex(index=signal_dates, columns=px.columns)
    S = scores.to_numpy(dtype="float64")
    fin_all = np.isfinite(S)
    key_all = np.where(fin_all, S, -np.inf)
    has_signal = fin_all.any(axis=1)
    bench = _benchmark(benchmark, px, window, valid)

    out = np.zeros((T, 7))
    cash = float(account)
    h = np.zeros(n_inst)
    held = np.zeros(n_inst, dtype=bool)
    for t in range(T):
        acct = cash + h.sum()
        cost = traded = 0.0
        if has_signal[t]:
            sell, buy = _select(key_all[t], fin_all[t], held, topk, n_drop)
            sell = sell[tradable[t, sell]]
            if len(sell):
                proceeds = h[sell]
                fees = np.maximum(proceeds * close_cost, min_cost)
                cash += float(proceeds.sum() - fees.sum())
                cost += float(fees.sum())
                traded += float(proceeds.sum())
                h[sell] = 0.0
                held[sell] = False
            if len(buy):
                per = cash * risk_degree / len(buy)
                buy = buy[tradable[t, buy]]
                if len(buy) and per > 0:
                    c, tv, cash = _buy(buy, per, raw[t], cash, open_cost, min_cost, trade_unit, h)
                    held[buy[tv > 0]] = True
                    cost += c
                    traded += float(tv.sum())
        earn = float((h * (growth[t] - 1.0)).sum())
        out[t] = (earn / acct, traded / acct, cost / acct, acct, h.sum(), cash, held.sum())
        h *= growth[t]

    df = pd.DataFrame(
        out,
        index=pd.DatetimeIndex(window[:T], name="datetime"),
        columns=["return", "turnover", "cost", "account", "value", "cash", "n_holdings"],
    )
    df["bench"] = bench
    df["excess_return_without_cost"] = df["return"] - df["bench"]
    df["excess_return_with_cost"] = df["return"] - df["bench"] - df["cost"]
    df["n_holdings"] = df["n_holdings"].astype("int64")
    df = df[REPORT_COLUMNS]
    df.attrs["dropped_last_day"] = None if dropped is None else str(dropped.date())
    return df


def _check(
    topk: int,
    n_drop: int,
    open_cost: float,
    close_cost: float,
    min_cost: float,
    account: float,
    risk_degree: float,
    signal_lag: int,
) -> None:
    if not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ConfigError(f"expected a positive integer, got {topk!r}", "topk")
    if not isinstance(n_drop, (int, np.integer)) or n_drop < 0:
        raise ConfigError(f"expected an integer >= 0, got {n_drop!r}", "n_drop")
    for name, v in (("open_cost", open_cost), ("close_cost", close_cost), ("min_cost", min_cost)):
        if not np.isfinite(v) or v < 0:
            raise ConfigError(f"expected a non-negative number, got {v!r}", name)
    if not account > 0:
        raise ConfigError(f"expected a positive amount, got {account!r}", "account")
    if not 0 < risk_degree <= 1:
        raise ConfigError(f"expected 0 < risk_degree <= 1, got {risk_degree!r}", "risk_degree")
    if signal_lag not in (0, 1):
        raise ConfigError(f"expected 0 or 1, got {signal_lag!r}", "signal_lag")


def _select(
    key: np.ndarray, fin: np.ndarray, held: np.ndarray, topk: int, n_drop: int
) -> tuple[np.ndarray, np.ndarray]:
    """(instruments to sell, instruments to buy in order) for one day's scores.

    ``key`` is the score with -inf where it is missing; sorts are stable, so ties go to the
    instrument that comes first in the panel.
    """
    held_idx = np.flatnonzero(held)
    last = held_idx[np.argsort(-key[held_idx], kind="stable")]
    cand = np.flatnonzero(fin & ~held)
    n_today = max(n_drop + topk - len(last), 0)
    today = cand[np.argsort(-key[cand], kind="stable")][:n_today]
    if n_drop > 0 and len(last):
        comb = np.concatenate([last, today])
        comb = comb[np.argsort(-key[comb], kind="stable")]
        bottom = np.zeros(len(key), dtype=bool)
        bottom[comb[-n_drop:]] = True
        sell = last[bottom[last]]
    else:
        sell = last[:0]
    n_buy = max(len(sell) + topk - len(last), 0)
    return sell, today[:n_buy]


def _buy(
    buy: np.ndarray,
    per: float,
    price: np.ndarray,
    cash: float,
    open_cost: float,
    min_cost: float,
    trade_unit: float | None,
    h: np.ndarray,
) -> tuple[float, np.ndarray, float]:
    """Buy ``per`` of each instrument (fewer if cash runs out); returns (fees, values, cash)."""
    tv = np.full(len(buy), per)
    if trade_unit:
        lot = price[buy] * float(trade_unit)
        tv = np.floor(tv / lot) * lot
    fees = np.where(tv > 0, np.maximum(tv * open_cost, min_cost), 0.0)
    if (tv + fees).sum() > cash:  # rare: risk_degree 1 or a large min_cost - go one by one
        for j in range(len(buy)):
            if tv[j] <= 0:
                continue
            fee = max(tv[j] * open_cost, min_cost)
            if tv[j] + fee > cash:
                tv[j] = max(min(cash / (1 + open_cost), cash - min_cost), 0.0)
                if trade_unit:
                    tv[j] = (
                        np.floor(tv[j] / (price[buy[j]] * trade_unit)) * price[buy[j]] * trade_unit
                    )
                fee = max(tv[j] * open_cost, min_cost) if tv[j] > 0 else 0.0
            fees[j] = fee
            cash -= tv[j] + fee
    else:
        cash -= float((tv + fees).sum())
    h[buy] += tv
    return float(fees.sum()), tv, cash


def _benchmark(
    benchmark: Any, px: pd.DataFrame, window: pd.DatetimeIndex, valid: np.ndarray
) -> np.ndarray:
    T = len(window) - 1
    if benchmark is None:
        raw = px.reindex(window).to_numpy(dtype="float64")
        both = valid[:-1] & valid[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(both, raw[1:] / raw[:-1] - 1.0, np.nan)
        n = both.sum(axis=1)
        total = np.nansum(r, axis=1)
        return np.where(n > 0, total / np.maximum(n, 1), 0.0)
    if isinstance(benchmark, str):
        if benchmark not in px.columns:
            raise ConfigError(
                f"benchmark {benchmark!r} is not an instrument of the price panel; pass its "
                "daily returns as a Series, or None for the equal-weight universe",
                "benchmark",
            )
        p = px[benchmark].reindex(window).ffill().to_numpy(dtype="float64")
        r = p[1:] / p[:-1] - 1.0
        return np.where(np.isfinite(r), r, 0.0)
    if isinstance(benchmark, pd.DataFrame) and benchmark.shape[1] == 1:
        benchmark = benchmark.iloc[:, 0]
    if isinstance(benchmark, pd.Series):
        series = benchmark.copy()
        series.index = pd.DatetimeIndex(series.index)
        r = series.reindex(window[1:]).to_numpy(dtype="float64")
        if np.isnan(r).any():
            miss = window[1:][np.isnan(r)][0]
            raise ConfigError(f"no benchmark return for {miss.date()}", "benchmark")
        return r[:T]
    raise ConfigError(
        f"expected None, an instrument code or a Series of returns, got {type(benchmark).__name__}",
        "benchmark",
    )
