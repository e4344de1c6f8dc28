"""The Sharpe ratio of a backtest, judged against how many backtests were tried.

Sources:

* [BLdP12] D. H. Bailey, M. López de Prado, "The Sharpe Ratio Efficient Frontier", Journal
  of Risk 15(2), 2012: the standard error of an estimated Sharpe ratio under non-normal
  returns and the probabilistic Sharpe ratio (PSR).
* [BLdP14] D. H. Bailey, M. López de Prado, "The Deflated Sharpe Ratio: Correcting for
  Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio Management
  40(5), 2014, pp. 94-107: the expected maximum Sharpe ratio of N trials and the deflated
  Sharpe ratio (DSR = PSR against that maximum).

Every Sharpe ratio here is per observation (not annualised): the formulas count
observations, so a daily series gives a daily Sharpe ratio. Kurtosis is Pearson's (3 for
a normal distribution), as in the papers. Inputs broadcast like numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "EULER_MASCHERONI",
    "SharpeStats",
    "sharpe_stats",
    "probabilistic_sharpe_ratio",
    "expected_max_sharpe",
    "deflated_sharpe_ratio",
]

#: The Euler-Mascheroni constant gamma of [BLdP14]'s expected-maximum formula.
EULER_MASCHERONI = float(np.euler_gamma)


@dataclass(frozen=True)
class SharpeStats:
    """Per-observation Sharpe ratio of a return series with the moments the PSR needs."""

    sharpe: float
    skew: float
    kurtosis: float
    n_obs: int


def sharpe_stats(returns: Any) -> SharpeStats:
    """Sharpe ratio (mean / std, ddof=1), skewness and Pearson kurtosis of ``returns``
    (NaN dropped). Fewer than two observations, or no variation, give NaN figures."""
    r = np.asarray(returns, dtype="float64").ravel()
    r = r[np.isfinite(r)]
    n = int(r.size)
    if n < 2:
        return SharpeStats(float("nan"), float("nan"), float("nan"), n)
    std = r.std(ddof=1)
    if not std > 0:
        return SharpeStats(float("nan"), float("nan"), float("nan"), n)
    return SharpeStats(
        sharpe=float(r.mean() / std),
        skew=float(stats.skew(r, bias=True)),
        kurtosis=float(stats.kurtosis(r, fisher=False, bias=True)),
        n_obs=n,
    )


def probabilistic_sharpe_ratio(
    sr: Any, n_obs: Any, skew: Any = 0.0, kurtosis: Any = 3.0, sr_benchmark: Any = 0.0
) -> Any:
    """PSR: the probability that the true Sharpe ratio exceeds ``sr_benchmark``.

    [BLdP12] eq. (9), [BLdP14] eq. (2)::

        PSR(SR*) = Z[ (SR - SR*) * sqrt(T - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2) ]

    with SR the estimated (per-observation) Sharpe ratio over T observations, g3 the
    skewness and g4 the (Pearson) kurtosis of the returns, Z the standard normal CDF. The
    denominator is the estimator's standard error under non-normal returns (Mertens 2002),
    so negative skew and fat tails lower the PSR of the same SR. NaN where it is undefined
    (T < 2, or a non-positive variance term from extreme moments).
    """
    sr, n_obs, skew, kurtosis, sr_benchmark = np.broadcast_arrays(
        *(np.asarray(x, dtype="float64") for x in (sr, n_obs, skew, kurtosis, sr_benchmark))
    )
    var_term = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    ok = (n_obs >= 2) & (var_term > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (
            (sr - sr_benchmark)
            * np.sqrt(np.where(ok, n_obs - 1.0, np.nan))
            / np.sqrt(np.where(ok, var_term, np.nan))
        )
    out = stats.norm.cdf(z)
    return float(out) if out.ndim == 0 else out


def expected_max_sharpe(n_trials: Any, sr_variance: Any, sr_mean: Any = 0.0) -> Any:
    """The expected maximum of ``n_trials`` estimated Sharpe ratios that are normally
    distributed with mean ``sr_mean`` and variance ``sr_variance`` ([BLdP14] eq. (5); the
    "False Strategy Theorem" of Bailey, Borwein, López de Prado and Zhu, Notices of the AMS
    61(5), 2014)::

        E[max SR_n] ~ E[SR_n] + sqrt(V[SR_n]) * ((1 - gamma) * Z^-1[1 - 1/N] + gamma * Z^-1[1 - 1/(N e)])

    gamma is the Euler-Mascheroni constant, Z^-1 the standard normal quantile, e Euler's
    number. The approximation is derived for N >> 1; for N = 1 the maximum is the one trial,
    whose expectation is ``sr_mean`` (the formula would give minus infinity). N < 1 is NaN.
    """
    n, var, mean = np.broadcast_arrays(
        *(np.asarray(x, dtype="float64") for x in (n_trials, sr_variance, sr_mean))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        safe_n = np.where(n > 1, n, 2.0)
        z = (1.0 - EULER_MASCHERONI) * stats.norm.ppf(
            1.0 - 1.0 / safe_n
        ) + EULER_MASCHERONI * stats.norm.ppf(1.0 - 1.0 / (safe_n * np.e))
        z = np.where(n > 1, z, np.where(n == 1, 0.0, np.nan))
        out = mean + np.sqrt(np.where(var >= 0, var, np.nan)) * z
    return float(out) if out.ndim == 0 else out


def deflated_sharpe_ratio(
    sr: Any, n_obs: Any, n_trials: Any, sr_variance: Any, skew: Any = 0.0, kurtosis: Any = 3.0
) -> Any:
    """DSR: the PSR of ``sr`` against the Sharpe ratio expected from the best of
    ``n_trials`` skill-less trials ([BLdP14] eq. (4))::

        DSR = PSR(SR_0),  SR_0 = sqrt(V[SR_n]) * ((1 - gamma) * Z^-1[1 - 1/N] + gamma * Z^-1[1 - 1/(N e)])

    ``sr_variance`` is V[SR_n], the variance of the N trials' (per-observation) Sharpe
    ratios; ``skew``/``kurtosis`` are those of the selected strategy's returns. The DSR is
    the probability that the selected strategy's true Sharpe ratio is positive after
    accounting for selection among N trials, non-normal returns and the track record's
    length; it falls as N grows. [BLdP14]'s numerical example (N = 100, V = 1/2 annualised,
    annualised SR 2.5 over T = 1250 daily observations, skew -3, kurtosis 10, 250 days a
    year) gives SR_0 = 0.1132 per day and DSR = 0.9004.
    """
    sr0 = expected_max_sharpe(n_trials, sr_variance)
    return probabilistic_sharpe_ratio(sr, n_obs, skew, kurtosis, sr0)
