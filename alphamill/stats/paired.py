"""Paired tests of each variant against a baseline over the same units (windows, months),
corrected for testing several variants at once.

Sources:

* the paired t-test (Student 1908) and the Wilcoxon signed-rank test (F. Wilcoxon,
  "Individual Comparisons by Ranking Methods", Biometrics Bulletin 1(6), 1945), as
  ``scipy.stats.ttest_rel`` and ``scipy.stats.wilcoxon`` compute them (two-sided; the
  Wilcoxon test drops zero differences and is exact for small samples without ties);
* S. Holm, "A Simple Sequentially Rejective Multiple Test Procedure", Scandinavian Journal
  of Statistics 6(2), 1979: step-down adjusted p-values
  ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the m p-values sorted
  ascending; controls the family-wise error rate under any dependence between the tests
  (the variants share the baseline, so their tests are dependent). The default.
* Y. Benjamini, Y. Hochberg, "Controlling the False Discovery Rate", Journal of the Royal
  Statistical Society B 57(1), 1995: step-up adjusted p-values
  ``p~_(i) = min_{j >= i} min(1, m p_(j) / j)`` (``scipy.stats.false_discovery_control``);
  controls the false discovery rate, valid under independence or positive dependence;
  more power than Holm when many variants are compared.

The paired t-test assumes roughly normal differences; the Wilcoxon test only symmetry. With
few units (e.g. 2 rolling windows) both have little power, which the ``n`` column shows.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from alphamill.errors import ConfigError

__all__ = ["CORRECTIONS", "adjust_pvalues", "paired_tests"]

CORRECTIONS = ("holm", "bh", "none")


def adjust_pvalues(pvalues: Any, method: str = "holm") -> np.ndarray:
    """Multiple-testing adjusted p-values (``holm``, ``bh`` or ``none``); NaN entries are
    left out of the family and stay NaN."""
    if method not in CORRECTIONS:
        raise ConfigError(f"expected one of {', '.join(CORRECTIONS)}, got {method!r}", "correction")
    p = np.asarray(pvalues, dtype="float64").ravel()
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    q = p[ok]
    if np.any((q < 0) | (q > 1)):
        raise ConfigError("p-values must lie in [0, 1]", "pvalues")
    if method == "none":
        adj = q.copy()
    elif method == "bh":
        adj = stats.false_discovery_control(q, method="bh")
    else:
        m = len(q)
        order = np.argsort(q, kind="stable")
        stepped = np.minimum(1.0, (m - np.arange(m)) * q[order])
        adj = np.empty(m)
        adj[order] = np.maximum.accumulate(stepped)
    out[ok] = adj
    return out


def paired_tests(table: pd.DataFrame, baseline: str, correction: str = "holm") -> pd.DataFrame:
    """Test every column of ``table`` against the ``baseline`` column, paired on rows.

    ``table``: rows are the units (e.g. rolling windows), columns the variants, values the
    figure compared (e.g. each window's IC). Only rows where both values exist are paired.
    Returns one row per variant (baseline excluded), indexed ``variant``, with columns
    ``n`` (pairs), ``mean``, ``baseline_mean``, ``mean_diff`` (variant - baseline),
    ``t_stat``, ``t_pvalue``, ``t_pvalue_adj``, ``wilcoxon_stat``, ``wilcoxon_pvalue``,
    ``wilcoxon_pvalue_adj``; the adjustment (``correction``) is applied across the
    variants, separately for each test. Fewer than 2 pairs give NaN statistics.
    """
    if correction not in CORRECTIONS:
        raise ConfigError(
            f"expected one of {', '.join(CORRECTIONS)}, got {correction!r}", "correction"
        )
    if baseline not in table.columns:
        raise ConfigError(
            f"{baseline!r} is not one of the variants: {', '.join(map(str, table.columns))}",
            "baseline",
        )
    base = table[baseline].astype("float64")
    rows = []
    for name in table.columns:
        if name == baseline:
            continue
        both = pd.concat([table[name].astype("float64"), base], axis=1).dropna()
        x, y = both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy()
        n = len(x)
        t_stat = t_p = w_stat = w_p = float("nan")
        if n >= 2:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                t = stats.ttest_rel(x, y)
                w = stats.wilcoxon(x - y)
            t_stat, t_p = float(t.statistic), float(t.pvalue)
            w_stat, w_p = float(w.statistic), float(w.pvalue)
        rows.append(
            {
                "variant": name,
                "n": n,
                "mean": float(x.mean()) if n else float("nan"),
                "baseline_mean": float(y.mean()) if n else float("nan"),
                "mean_diff": float((x - y).mean()) if n else float("nan"),
                "t_stat": t_stat,
                "t_pvalue": t_p,
                "wilcoxon_stat": w_stat,
                "wilcoxon_pvalue": w_p,
            }
        )
    cols = [
        "n",
        "mean",
        "baseline_mean",
        "mean_diff",
        "t_stat",
        "t_pvalue",
        "t_pvalue_adj",
        "wilcoxon_stat",
        "wilcoxon_pvalue",
        "wilcoxon_pvalue_adj",
    ]
    if not rows:
        return pd.DataFrame(columns=cols, index=pd.Index([], name="variant"))
    df = pd.DataFrame(rows).set_index("variant")
    df["t_pvalue_adj"] = adjust_pvalues(df["t_pvalue"], correction)
    df["wilcoxon_pvalue_adj"] = adjust_pvalues(df["wilcoxon_pvalue"], correction)
    return df[cols]
