"""Statistics for choosing among many backtests honestly: the deflated Sharpe ratio, the
probability of backtest overfitting (CSCV) and paired tests against a baseline with a
multiple-testing correction. Pure functions of arrays and DataFrames; each module cites
the papers its formulas come from."""

from alphamill.stats.paired import CORRECTIONS, adjust_pvalues, paired_tests
from alphamill.stats.pbo import PBOResult, probability_of_backtest_overfitting
from alphamill.stats.sharpe import (
    EULER_MASCHERONI,
    SharpeStats,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    sharpe_stats,
)

__all__ = [
    "CORRECTIONS",
    "EULER_MASCHERONI",
    "PBOResult",
    "SharpeStats",
    "adjust_pvalues",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "paired_tests",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "sharpe_stats",
]
