"""Top-k dropout backtest on tiny hand-made markets, every figure computed by hand."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from alphamill.backtest import _select, topk_dropout_backtest
from alphamill.errors import ConfigError

#: The hand computations below trade each day's signal at the close it is dated
#: (``signal_lag=0``) to keep the arithmetic short; the default, next-close timing is tested
#: in tests/workflow/test_backtest_timing.py.
_same_close = functools.partial(topk_dropout_backtest, signal_lag=0)

DAYS = pd.to_datetime(["2021-01-04", "2021-01-05", "2021-01-06", "2021-01-07"])
PRICES = pd.DataFrame(
    {"A": [10.0, 11.0, 11.0, 12.1], "B": [20.0, 19.0, 20.9, 20.9], "C": [5.0, 5.5, 5.0, 5.0]},
    index=DAYS,
)


def _pred(scores: dict[pd.Timestamp, dict[str, float]]) -> pd.Series:
    rows = [(d, i, v) for d, row in scores.items() for i, v in row.items()]
    idx = pd.MultiIndex.from_tuples([r[:2] for r in rows], names=["datetime", "instrument"])
    return pd.Series([r[2] for r in rows], index=idx, name="score")


SCORES = {
    DAYS[0]: {"A": 3.0, "B": 2.0, "C": 1.0},  # buy A
    DAYS[1]: {"A": 1.0, "B": 3.0, "C": 2.0},  # A falls to the bottom: sell A, buy B
    DAYS[2]: {"A": 2.0, "B": 3.0, "C": 1.0},  # B still best: hold
    DAYS[3]: {"A": 3.0, "B": 1.0, "C": 2.0},  # last day of data: no next price
}


def test_topk1_by_hand() -> None:
    out = _same_close(
        _pred(SCORES),
        PRICES,
        topk=1,
        n_drop=1,
        open_cost=0.001,
        close_cost=0.002,
        min_cost=0.0,
        account=1000.0,
    )
    assert list(out.index) == list(DAYS[:3])  # the last day is dropped, and said so
    assert out.attrs["dropped_last_day"] == "2021-01-07"
    # day 0: buy A with 95 % of 1000; fee 0.1 %; A then gains 10 %
    cash0 = 1000 - 950 - 0.95
    assert out["account"].iloc[0] == pytest.approx(1000)
    assert out["turnover"].iloc[0] == pytest.approx(0.95)
    assert out["cost"].iloc[0] == pytest.approx(0.95 / 1000)
    assert out["return"].iloc[0] == pytest.approx(95 / 1000)
    assert out["bench"].iloc[0] == pytest.approx((0.1 - 0.05 + 0.1) / 3)
    assert out["cash"].iloc[0] == pytest.approx(cash0)
    # day 1: A is worth 1045; sell it (fee 0.2 %), buy B with 95 % of the cash, B gains 10 %
    acct1 = cash0 + 1045
    cash_after_sell = cash0 + 1045 - 2.09
    buy_b = cash_after_sell * 0.95
    fees1 = 2.09 + buy_b * 0.001
    assert out["account"].iloc[1] == pytest.approx(acct1)
    assert out["turnover"].iloc[1] == pytest.approx((1045 + buy_b) / acct1)
    assert out["cost"].iloc[1] == pytest.approx(fees1 / acct1)
    assert out["return"].iloc[1] == pytest.approx(buy_b * 0.1 / acct1)
    assert out["bench"].iloc[1] == pytest.approx((0.0 + 0.1 + (5 / 5.5 - 1)) / 3)
    # day 2: no trade, B flat
    acct2 = cash_after_sell - buy_b - buy_b * 0.001 + buy_b * 1.1
    assert out["account"].iloc[2] == pytest.approx(acct2)
    assert out["turnover"].iloc[2] == 0 and out["cost"].iloc[2] == 0
    assert out["return"].iloc[2] == pytest.approx(0.0)
    assert out["bench"].iloc[2] == pytest.approx(0.1 / 3)
    # bookkeeping: account(t+1) = account(t) * (1 + return - cost)
    a = out["account"].to_numpy()
    growth = 1 + out["return"].to_numpy() - out["cost"].to_numpy()
    assert a[1:] == pytest.approx(a[:-1] * growth[:-1])
    e = out["excess_return_with_cost"]
    assert e.to_numpy() == pytest.approx((out["return"] - out["bench"] - out["cost"]).to_numpy())
    assert out["excess_return_without_cost"].to_numpy() == pytest.approx(
        (out["return"] - out["bench"]).to_numpy()
    )
    assert out["n_holdings"].tolist() == [1, 1, 1]


def test_min_cost_is_in_currency() -> None:
    out = _same_close(
        _pred(SCORES),
        PRICES,
        topk=1,
        n_drop=1,
        open_cost=0.001,
        close_cost=0.002,
        min_cost=5.0,
        account=1000.0,
    )
    assert out["cost"].iloc[0] == pytest.approx(5 / 1000)  # 0.95 < 5
    cash0 = 1000 - 950 - 5
    acct1 = cash0 + 1045
    cash_after_sell = cash0 + 1045 - 5  # 2.09 < 5
    buy_b = cash_after_sell * 0.95
    assert out["cost"].iloc[1] == pytest.approx((5 + 5) / acct1)  # buy fee 1.04 < 5 too
    assert out["return"].iloc[1] == pytest.approx(buy_b * 0.1 / acct1)
    # the same trades on a 100x larger account: proportional fees dominate
    big = _same_close(
        _pred(SCORES),
        PRICES,
        topk=1,
        n_drop=1,
        open_cost=0.001,
        close_cost=0.002,
        min_cost=5.0,
        account=100000.0,
    )
    assert big["cost"].iloc[0] == pytest.approx(0.00095)


def test_topk2_selection_and_turnover() -> None:
    days = pd.bdate_range("2021-03-01", periods=3)
    prices = pd.DataFrame(
        {"A": [1.0] * 3, "B": [1.0] * 3, "C": [1.0] * 3, "D": [1.0] * 3}, index=days
    )
    scores = {
        days[0]: {"A": 4.0, "B": 3.0, "C": 2.0, "D": 1.0},  # buy A, B
        days[1]: {"A": 1.0, "B": 4.0, "C": 3.0, "D": 2.0},  # drop A (worst of A,B,C), buy C
    }
    out = _same_close(
        _pred(scores),
        prices,
        topk=2,
        n_drop=1,
        open_cost=0.0,
        close_cost=0.0,
        min_cost=0.0,
        account=100.0,
    )
    assert out.attrs["dropped_last_day"] is None  # predictions stop before the last day
    assert list(out.index) == list(days[:2])
    assert out["turnover"].iloc[0] == pytest.approx(0.95)  # 47.5 each in A and B
    # sell A (47.5), cash 5 + 47.5 = 52.5, buy C with 95 % of it
    assert out["turnover"].iloc[1] == pytest.approx((47.5 + 52.5 * 0.95) / 100)
    assert out["n_holdings"].tolist() == [2, 2]
    assert out["return"].abs().max() == 0 and out["bench"].abs().max() == 0


def test_select_rules() -> None:
    s = np.array([1.0, 4.0, 3.0, 2.0])  # A B C D
    held = np.array([True, True, False, False])
    key, fin = np.where(np.isfinite(s), s, -np.inf), np.isfinite(s)
    sell, buy = _select(key, fin, held, topk=2, n_drop=1)
    assert sell.tolist() == [0] and buy.tolist() == [2]
    # a held instrument that is still better than every candidate is kept
    s = np.array([5.0, 4.0, 3.0, 2.0])
    sell, buy = _select(np.where(np.isfinite(s), s, -np.inf), np.isfinite(s), held, 2, 1)
    assert sell.tolist() == [] and buy.tolist() == []
    # a held instrument without a score ranks last and is dropped first
    s = np.array([np.nan, 4.0, 3.0, 2.0])
    sell, buy = _select(np.where(np.isfinite(s), s, -np.inf), np.isfinite(s), held, 2, 1)
    assert sell.tolist() == [0] and buy.tolist() == [2]
    # n_drop=0: never sell
    sell, buy = _select(np.where(np.isfinite(s), s, -np.inf), np.isfinite(s), held, 2, 0)
    assert sell.tolist() == [] and buy.tolist() == []


def test_halted_instruments_cannot_trade() -> None:
    prices = PRICES.copy()
    prices.loc[DAYS[1], "A"] = np.nan  # A halted on day 1: cannot be sold
    out = _same_close(
        _pred(SCORES),
        prices,
        topk=1,
        n_drop=1,
        open_cost=0.0,
        close_cost=0.0,
        min_cost=0.0,
        account=1000.0,
    )
    # day 1: the sell of A is skipped but its slot is still refilled (Qlib's rule): A and B held;
    # day 2: A trades again and is dropped
    assert out["n_holdings"].tolist() == [1, 2, 1]
    # A kept its day-0 price (10) while halted: it is valued at 950 on day 1
    assert out["account"].iloc[1] == pytest.approx(1000)
    assert out["turnover"].iloc[1] == pytest.approx(50 * 0.95 / 1000)  # only B bought
    # the halted day's move is earned when it trades again (10 -> 11 on day 2)
    assert out["return"].iloc[1] == pytest.approx((950 * 0.1 + 47.5 * 0.1) / 1000)
    # B halted on day 1: cannot be bought, the cash stays
    prices = PRICES.copy()
    prices.loc[DAYS[1], "B"] = np.nan
    out = _same_close(
        _pred(SCORES),
        prices,
        topk=1,
        n_drop=1,
        open_cost=0.0,
        close_cost=0.0,
        min_cost=0.0,
        account=1000.0,
    )
    assert out["n_holdings"].tolist() == [1, 0, 1]  # day 2 buys the best non-held, B
    assert out["return"].iloc[1] == 0
    # zero volume also means no trading
    long = PRICES.stack().rename("close").to_frame()
    long.index.names = ["datetime", "instrument"]
    long["volume"] = 100.0
    long.loc[(DAYS[0], "A"), "volume"] = 0.0
    out = _same_close(_pred(SCORES), long, topk=1, n_drop=1, account=1000.0, min_cost=0.0)
    assert out["n_holdings"].iloc[0] == 0


def test_signal_lag_and_last_day() -> None:
    lagged = topk_dropout_backtest(
        _pred(SCORES), PRICES, topk=1, n_drop=1, account=1000.0, min_cost=0.0, signal_lag=1
    )
    # Qlib's timing: day-0 signal is traded on day 1 (buy A there), nothing on day 0
    assert list(lagged.index) == list(DAYS[1:3])
    assert lagged["turnover"].iloc[0] == pytest.approx(0.95)
    assert lagged["return"].iloc[0] == pytest.approx(0.0)  # A flat 11 -> 11
    assert lagged.attrs["dropped_last_day"] == "2021-01-07"
    # an end_time before the last day: nothing dropped
    cut = _same_close(
        _pred(SCORES), PRICES, topk=1, n_drop=1, account=1000.0, end_time="2021-01-05"
    )
    assert list(cut.index) == list(DAYS[:2]) and cut.attrs["dropped_last_day"] is None
    # only the last day predicted: nothing can be backtested
    with pytest.raises(ConfigError, match="next-day price"):
        _same_close(_pred({DAYS[3]: SCORES[DAYS[3]]}), PRICES, topk=1)


def test_benchmarks_and_inputs() -> None:
    bench = pd.Series([0.0, 0.01, 0.02, 0.03], index=DAYS)  # return up to each date
    out = _same_close(_pred(SCORES), PRICES, topk=1, benchmark=bench)
    assert out["bench"].tolist() == pytest.approx([0.01, 0.02, 0.03])
    out = _same_close(_pred(SCORES), PRICES, topk=1, benchmark="C")
    assert out["bench"].tolist() == pytest.approx([0.1, 5 / 5.5 - 1, 0.0])
    with pytest.raises(ConfigError, match="SH000300"):
        _same_close(_pred(SCORES), PRICES, topk=1, benchmark="SH000300")
    with pytest.raises(ConfigError, match="no benchmark return"):
        _same_close(_pred(SCORES), PRICES, topk=1, benchmark=bench.iloc[:2])
    # a long (datetime, instrument) panel with a "$close" column gives the same result
    long = PRICES.stack().rename("$close").to_frame()
    long.index.names = ["datetime", "instrument"]
    a = _same_close(_pred(SCORES), long, topk=1, deal_price="$close")
    b = _same_close(_pred(SCORES), PRICES, topk=1)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ConfigError, match="'vwap'"):
        _same_close(_pred(SCORES), long, topk=1, deal_price="vwap")
    with pytest.raises(ConfigError, match="not in the price calendar"):
        _same_close(_pred({pd.Timestamp("2021-02-01"): {"A": 1.0}}), PRICES)
    with pytest.raises(ConfigError, match="topk"):
        _same_close(_pred(SCORES), PRICES, topk=0)
    frame = _pred(SCORES).to_frame("score")
    pd.testing.assert_frame_equal(_same_close(frame, PRICES, topk=1), b)


def test_trade_unit_and_limit() -> None:
    out = _same_close(
        _pred(SCORES),
        PRICES,
        topk=1,
        n_drop=1,
        open_cost=0.0,
        close_cost=0.0,
        min_cost=0.0,
        account=1000.0,
        trade_unit=10,
    )
    # 950 at price 10 in lots of 10 shares (100 currency): 900
    assert out["turnover"].iloc[0] == pytest.approx(0.9)
    out = _same_close(
        _pred(SCORES),
        PRICES,
        topk=1,
        n_drop=1,
        open_cost=0.0,
        close_cost=0.0,
        min_cost=0.0,
        account=1000.0,
        limit_threshold=0.095,
    )
    # day 1: A (+10 %) is at its limit: it cannot be sold, so A and B are both held
    assert out["n_holdings"].tolist() == [1, 2, 1]  # day 2: A is dropped again, and can be
