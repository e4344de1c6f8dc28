"""Probability of backtest overfitting by combinatorially symmetric cross-validation (CSCV).

Source: D. H. Bailey, J. M. Borwein, M. López de Prado, Q. J. Zhu, "The Probability of
Backtest Overfitting", Journal of Computational Finance 20(4), 2017, pp. 39-69 (SSRN
2326253, 2013-2015), section 2 ("the CSCV procedure"):

1. M is a T x N matrix: column n holds the performance series (e.g. daily returns) of
   trial n over the same T observations.
2. M is cut across rows into S (even) contiguous blocks of equal size T / S.
3. Every combination c of S / 2 blocks is a training set J (the blocks in time order), its
   complement the test set J-bar; there are C(S, S/2) of them, each split appearing once
   as J and once as J-bar (the symmetry that gives the method its name).
4. For each c: R and R-bar are the trials' performance statistics (e.g. Sharpe ratios) on
   J and J-bar; n* = argmax R is the trial chosen in sample; w_c = rank of R-bar[n*] among
   R-bar / (N + 1) is its relative rank out of sample (rank 1 = worst), and the logit
   lambda_c = ln(w_c / (1 - w_c)) is positive when the chosen trial beats the median trial
   out of sample.
5. PBO = the fraction of combinations with lambda_c <= 0: how often the in-sample winner
   does no better than the median out of sample.

The same paper's "performance degradation" is the regression of R-bar[n*] on R[n*] over the
combinations (a negative slope: the better a trial looked in sample, the worse it did out of
sample) and the "probability of loss" is the fraction of combinations where R-bar[n*] < 0.

Choices where the paper leaves room: the first T mod S rows are dropped so the blocks are
equal (as the public ``pypbo`` implementation does); ties out of sample get their average
rank, ties in sample pick the first trial; a statistic that is undefined on a set (e.g. the
Sharpe ratio of a constant series) counts as the worst value. With an odd N the median trial
has lambda = 0 and counts as overfit, so pure noise gives PBO ~ (N + 1) / (2N), not 1/2.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from alphamill.errors import ConfigError

__all__ = ["PBOResult", "probability_of_backtest_overfitting", "MAX_PARTITIONS"]

#: C(24, 12) = 2.7 million combinations is the most that is computed.
MAX_PARTITIONS = 24
METRICS = ("sharpe", "mean")


@dataclass(frozen=True)
class PBOResult:
    """The outcome of CSCV; arrays have one entry per combination (in lexicographic order
    of the training blocks)."""

    pbo: float
    logits: np.ndarray
    is_performance: np.ndarray
    oos_performance: np.ndarray
    selected: np.ndarray
    n_partitions: int
    n_trials: int
    n_obs: int
    dropped_rows: int
    trials: tuple[str, ...] = field(default=())
    slope: float = float("nan")
    intercept: float = float("nan")
    prob_oos_loss: float = float("nan")

    @property
    def n_combinations(self) -> int:
        return len(self.logits)

    def selected_counts(self) -> dict[str, int]:
        """How often each trial was the in-sample winner."""
        names = self.trials or tuple(str(i) for i in range(self.n_trials))
        counts = np.bincount(self.selected, minlength=self.n_trials)
        return {names[i]: int(c) for i, c in enumerate(counts)}

    def summary(self) -> dict[str, Any]:
        """The headline figures as plain numbers (for tables and JSON)."""
        q = np.quantile(self.logits, [0.05, 0.5, 0.95]) if len(self.logits) else [float("nan")] * 3
        return {
            "pbo": self.pbo,
            "partitions": self.n_partitions,
            "combinations": self.n_combinations,
            "trials": self.n_trials,
            "observations": self.n_obs,
            "dropped_rows": self.dropped_rows,
            "logit_p05": float(q[0]),
            "logit_median": float(q[1]),
            "logit_p95": float(q[2]),
            "degradation_slope": self.slope,
            "degradation_intercept": self.intercept,
            "prob_oos_loss": self.prob_oos_loss,
        }


def _combinations(s: int) -> np.ndarray:
    """(C(S, S/2), S) 0/1 matrix: row c marks the training blocks of combination c."""
    combos = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(s), s // 2)), dtype=np.int64
    ).reshape(-1, s // 2)
    ind = np.zeros((len(combos), s), dtype="float64")
    np.put_along_axis(ind, combos, 1.0, axis=1)
    return ind


def _block_metric(
    blocks: np.ndarray, ind: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The metric of every trial on each combination's training and test sets, from
    per-block sums (the sets are unions of whole blocks, so no row is read twice)."""
    s, length, _ = blocks.shape
    count = (s // 2) * length
    # centring each column first keeps the variance from cancelling in sum-of-squares form
    centre = blocks.mean(axis=(0, 1))
    x = blocks - centre
    sums = x.sum(axis=1)
    out = []
    for w in (ind, 1.0 - ind):
        mean = (w @ sums) / count
        if metric == "mean":
            out.append(mean + centre)
            continue
        sq = w @ (x**2).sum(axis=1)
        var = (sq - count * mean**2) / (count - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.sqrt(np.where(var > 0, var, np.nan))
            out.append((mean + centre) / sd)
    return out[0], out[1]


def _callable_metric(
    blocks: np.ndarray, ind: np.ndarray, metric: Callable[[np.ndarray], Any]
) -> tuple[np.ndarray, np.ndarray]:
    n = blocks.shape[2]
    r_is = np.empty((len(ind), n))
    r_oos = np.empty((len(ind), n))
    for c, row in enumerate(ind.astype(bool)):
        for target, mask in ((r_is, row), (r_oos, ~row)):
            value = np.asarray(metric(blocks[mask].reshape(-1, n)), dtype="float64").ravel()
            if value.shape != (n,):
                raise ConfigError(
                    f"expected the metric to return one value per trial ({n}), got shape "
                    f"{value.shape}",
                    "metric",
                )
            target[c] = value
    return r_is, r_oos


def probability_of_backtest_overfitting(
    performance: Any,
    n_partitions: int = 16,
    metric: str | Callable[[np.ndarray], Any] = "sharpe",
    trials: Sequence[str] | None = None,
) -> PBOResult:
    """PBO of choosing the best of N trials by CSCV (see the module docstring).

    ``performance``: T x N array or DataFrame (rows in time order, one column per trial,
    no NaN: align the series first). ``n_partitions``: S, even, 2..24 (the paper suggests
    16). ``metric``: ``"sharpe"`` (mean / std, ddof=1, per observation), ``"mean"``, or a
    function of a (rows x N) array returning N values (slower: called for every set).
    """
    names = tuple(str(c) for c in performance.columns) if hasattr(performance, "columns") else None
    m = np.asarray(performance, dtype="float64")
    if m.ndim != 2:
        raise ConfigError(
            f"expected a T x N matrix (rows = observations, columns = trials), got {m.ndim} "
            "dimension(s)",
            "performance",
        )
    t, n = m.shape
    if n < 2:
        raise ConfigError(
            f"expected at least 2 trials (columns) to choose among, got {n}", "performance"
        )
    if not np.isfinite(m).all():
        bad = int((~np.isfinite(m)).any(axis=1).sum())
        raise ConfigError(
            f"{bad} row(s) hold NaN or infinite values: align the trials on common observations "
            "first",
            "performance",
        )
    if (
        isinstance(n_partitions, bool)
        or not isinstance(n_partitions, (int, np.integer))
        or n_partitions < 2
        or n_partitions % 2
        or n_partitions > MAX_PARTITIONS
    ):
        raise ConfigError(
            f"expected an even integer from 2 to {MAX_PARTITIONS}, got {n_partitions!r}",
            "n_partitions",
        )
    s = int(n_partitions)
    if not callable(metric) and metric not in METRICS:
        raise ConfigError(
            f"expected one of {', '.join(METRICS)} or a function, got {metric!r}", "metric"
        )
    length = t // s
    if length < 1 or (metric == "sharpe" and (s // 2) * length < 2):
        raise ConfigError(f"{t} observations are too few for {s} partitions", "n_partitions")
    if trials is not None:
        names = tuple(str(x) for x in trials)
        if len(names) != n:
            raise ConfigError(f"expected {n} trial names, got {len(names)}", "trials")
    dropped = t - s * length
    blocks = m[dropped:].reshape(s, length, n)
    ind = _combinations(s)
    if callable(metric):
        r_is, r_oos = _callable_metric(blocks, ind, metric)
    else:
        r_is, r_oos = _block_metric(blocks, ind, metric)
    # an undefined statistic is the worst value, both when choosing and when ranking
    r_is = np.where(np.isnan(r_is), -np.inf, r_is)
    r_oos = np.where(np.isnan(r_oos), -np.inf, r_oos)
    rows = np.arange(len(ind))
    chosen = np.argmax(r_is, axis=1)
    value = r_oos[rows, chosen][:, None]
    rank = (r_oos < value).sum(axis=1) + ((r_oos == value).sum(axis=1) + 1) / 2.0
    w = rank / (n + 1.0)
    logits = np.log(w / (1.0 - w))
    is_perf = r_is[rows, chosen]
    oos_perf = r_oos[rows, chosen]
    finite = np.isfinite(is_perf) & np.isfinite(oos_perf)
    slope = intercept = float("nan")
    if finite.sum() > 2 and np.ptp(is_perf[finite]) > 0:
        fit = stats.linregress(is_perf[finite], oos_perf[finite])
        slope, intercept = float(fit.slope), float(fit.intercept)
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        is_performance=is_perf,
        oos_performance=oos_perf,
        selected=chosen,
        n_partitions=s,
        n_trials=n,
        n_obs=s * length,
        dropped_rows=dropped,
        trials=names or (),
        slope=slope,
        intercept=intercept,
        prob_oos_loss=float(np.mean(oos_perf < 0)),
    )
