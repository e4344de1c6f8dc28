"""The daily top-k dropout backtest of a signal on a data source, and its risk analysis.

``PortAnaRecord`` and the merged backtest of a run (:class:`~alphamill.workflow.results.
ExperimentResults`) both go through :func:`run_backtest`, so a signal gives the same report
and the same figures in both, with the same timing (``signal_lag``, default
:data:`~alphamill.backtest.DEFAULT_SIGNAL_LAG`: traded at the next close) and annualisation
(``ann_scaler``, default :data:`~alphamill.evaluate.ANN_SCALER`: Qlib's 238 trading days).

Prices: the deal price and volume of the predicted instruments from the first prediction date
to the trading day after the last one. Benchmark, as Qlib computes it: ``None`` is the
equal-weight universe of the predicted instruments; a code is that code's
``$close / Ref($close, 1) - 1`` on the data's calendar, missing days 0, read from the data even
when the code is not a listed instrument (an index stored under ``features/`` of a Qlib
directory); a Series is taken as daily returns indexed by date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from alphamill.backtest import DEFAULT_SIGNAL_LAG, timing, topk_dropout_backtest
from alphamill.errors import ConfigError, DataError
from alphamill.evaluate import ANN_SCALER, check_ann_scaler, risk_analysis

__all__ = ["BACKTEST_SETTINGS", "analyse", "benchmark_returns", "check_settings", "run_backtest"]

#: The settings of a backtest (``collect: backtest:`` of a run config): the keyword arguments
#: of :func:`~alphamill.backtest.topk_dropout_backtest` plus ``ann_scaler``.
BACKTEST_SETTINGS = (
    "topk",
    "n_drop",
    "open_cost",
    "close_cost",
    "min_cost",
    "deal_price",
    "benchmark",
    "account",
    "start_time",
    "end_time",
    "risk_degree",
    "signal_lag",
    "limit_threshold",
    "trade_unit",
    "ann_scaler",
)
SERIES = ("excess_return_without_cost", "excess_return_with_cost")


def _namer(where: str, paths: Mapping[str, str] | None) -> Any:
    """The config path of a setting in error messages (``where.key`` unless ``paths`` says)."""
    return lambda key: (paths or {}).get(key, f"{where}.{key}")


def check_settings(
    settings: Mapping[str, Any],
    where: str = "collect.backtest",
    paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The settings with their names checked and ``ann_scaler`` / ``signal_lag`` validated."""
    name = _namer(where, paths)
    out = dict(settings)
    for key in out:
        if key not in BACKTEST_SETTINGS:
            raise ConfigError(
                f"unknown backtest setting; expected one of {', '.join(BACKTEST_SETTINGS)}",
                name(key),
            )
    if "ann_scaler" in out:
        out["ann_scaler"] = check_ann_scaler(out["ann_scaler"], name("ann_scaler"))
    lag = out.get("signal_lag", DEFAULT_SIGNAL_LAG)
    if isinstance(lag, bool) or lag not in (0, 1):
        raise ConfigError(
            f"expected 0 (trade at the close the signal was computed from) or 1 (the next "
            f"close), got {lag!r}",
            name("signal_lag"),
        )
    bench = out.get("benchmark")
    if bench is not None and not isinstance(bench, (str, pd.Series, pd.DataFrame)):
        raise ConfigError(
            f"expected null (the equal-weight universe) or an instrument code, got {bench!r}",
            name("benchmark"),
        )
    return out


def benchmark_returns(
    source: Any, code: str, start: Any, end: Any, where: str = "benchmark"
) -> pd.Series:
    """Qlib's benchmark return of ``code``: close / previous close - 1 on each calendar day of
    ``[start, end]``, 0 where either close is missing; a ConfigError when it has none."""
    cal = source.calendar()
    start_pos = int(cal.searchsorted(pd.Timestamp(start), side="left"))
    first = max(start_pos - 1, 0)  # the day before: the first day's return needs its close
    try:
        close = source.series(code, "close", cal[first], end)
    except (ConfigError, DataError) as e:
        raise ConfigError(
            f"benchmark {code!r} cannot be loaded from the data: {e}", where
        ) from None
    if not np.isfinite(close.to_numpy()).any():
        raise ConfigError(
            f"benchmark {code!r} has no close price in {pd.Timestamp(start).date()}.."
            f"{pd.Timestamp(end).date()}",
            where,
        )
    r = close / close.shift(1) - 1
    return r.iloc[start_pos - first :].fillna(0.0)


def load_inputs(
    source: Any,
    pred: pd.DataFrame,
    deal_price: str,
    benchmark: Any,
    where: str = "collect.backtest",
    paths: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, Any]:
    """(price panel, benchmark) for backtesting ``pred`` on ``source``."""
    name = _namer(where, paths)
    deal = str(deal_price).lstrip("$").lower()
    if deal not in source.available_fields():
        raise ConfigError(
            f"the data has no {deal!r} field ({', '.join(source.available_fields())})",
            name("deal_price"),
        )
    dates = pred.index.get_level_values(0)
    cal = source.calendar()
    end = cal[min(int(cal.searchsorted(dates.max(), side="right")), len(cal) - 1)]
    insts = sorted(pred.index.get_level_values(-1).unique())
    panel = source.load(insts, dates.min(), end, fields=[deal, "volume"])
    if isinstance(benchmark, str):
        benchmark = benchmark_returns(source, benchmark, dates.min(), end, name("benchmark"))
    return panel, benchmark


def analyse(report: pd.DataFrame, ann_scaler: float = ANN_SCALER) -> pd.DataFrame:
    """Risk analysis of the excess returns: rows (series, metric), columns ``risk`` (simple,
    Qlib's) and ``risk_compounded``."""
    parts = {}
    for key in SERIES:
        simple = risk_analysis(report[key], N=ann_scaler, mode="sum")["risk"]
        compounded = risk_analysis(report[key], N=ann_scaler, mode="product")["risk"]
        parts[key] = pd.DataFrame({"risk": simple, "risk_compounded": compounded})
    return pd.concat(parts, names=["series", "metric"])


def run_backtest(
    pred: pd.DataFrame,
    source: Any,
    settings: Mapping[str, Any],
    where: str = "collect.backtest",
    paths: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Backtest ``pred`` on ``source`` (a data source, or a price panel DataFrame).

    ``settings`` are :data:`BACKTEST_SETTINGS`; errors name ``where.<setting>`` (or the path
    ``paths`` gives). Returns ``{"report", "analysis", "ann_scaler", "signal_lag", "timing"}``.
    """
    kwargs = check_settings(settings, where, paths)
    ann_scaler = kwargs.pop("ann_scaler", ANN_SCALER)
    kwargs.setdefault("signal_lag", DEFAULT_SIGNAL_LAG)
    bench = kwargs.pop("benchmark", None)
    if isinstance(source, (pd.DataFrame, pd.Series)):
        prices = source
    else:
        prices, bench = load_inputs(
            source, pred, kwargs.get("deal_price", "close"), bench, where, paths
        )
    report = topk_dropout_backtest(pred, prices, benchmark=bench, **kwargs)
    return {
        "report": report,
        "analysis": analyse(report, ann_scaler),
        "ann_scaler": ann_scaler,
        "signal_lag": int(kwargs["signal_lag"]),
        "timing": timing(kwargs["signal_lag"]),
    }
