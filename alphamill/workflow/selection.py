"""Honest selection among the variants of one experiment (grid, multi-horizon).

A grid of variants makes the best of them look better than it is: the more were tried, the
higher the best backtest by chance alone. :func:`select` ranks the merged signals of an
:class:`~alphamill.workflow.results.ExperimentResults` with measures that know how many
were tried (:mod:`alphamill.stats`):

* the **deflated Sharpe ratio** of each signal's daily excess return with cost (the
  backtest's ``excess_return_with_cost``), with N = the number of trials and V[SR] the
  variance of the signals' daily Sharpe ratios (ddof=1);
* the **probability of backtest overfitting** of picking the best signal, by CSCV over the
  signals' daily excess returns with cost on their common days (Sharpe ratio as the
  statistic; without a backtest: daily IC, IC mean / std), in S contiguous time blocks;
* a **paired test of each signal's IC against the baseline's** per rolling window (the mean
  daily IC of the merged signal over each window's test span) or per calendar month, with a
  Holm (default) or Benjamini-Hochberg correction across the signals.

What counts as a trial (N): every variant the experiment's pool rows hold, whatever their
status (done, failed, still waiting: tasks of earlier runs of the same experiment with other
settings count too, unless removed with ``--fresh``), plus every variant collected, plus each
derived signal shown beside them (the ``ensemble``): each is a candidate a researcher could
pick. Without the pool (results built from recorders alone) N is the number of signals
shown. V[SR] and the CSCV matrix can only use the signals with a backtest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

__all__ = [
    "DEFAULTS",
    "IC_UNITS",
    "Selection",
    "select",
    "check_settings",
    "trials_from_tasks",
    "task_variant",
    "template_variant",
]

IC_UNITS = ("window", "month")
DEFAULTS: dict[str, Any] = {
    "baseline": None,
    "partitions": 16,
    "ic_by": "window",
    "correction": "holm",
}
#: CSCV blocks hold at least this many days; fewer common days lower the partitions.
MIN_BLOCK_DAYS = 5
RETURN_BASIS = "excess_return_with_cost"


def task_variant(task: Mapping[str, Any]) -> str:
    """The signal name of a task's variant, as :class:`ExperimentResults` names it
    (model class and variant label, e.g. ``"LGBModel learning_rate=0.05 loss=mse"``)."""
    from alphamill.workflow.collect import _model_class, variant_label
    from alphamill.workflow.results import _variant_name

    return _variant_name((_model_class(task), variant_label(task)))


def trials_from_tasks(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """``{variant: {status: task count}}`` of pool rows (``{"def": task, "status": ...}``)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        task = row.get("def") if isinstance(row.get("def"), Mapping) else row
        counts = out.setdefault(task_variant(task), {})
        status = str(row.get("status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
    return out


def _dotted(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            return None
        obj = obj[part]
    return obj


def template_variant(
    template: Mapping[str, Any], grid: Mapping[str, Any] | None, tasks: Iterable[Mapping[str, Any]]
) -> str | None:
    """The variant whose grid values are the template's own (the configuration the grid
    explores around), if the grid contains it."""
    if not grid:
        return None
    for task in tasks:
        values = (task.get("meta") or {}).get("grid") or {}
        if all(_dotted(template, path) == values.get(path) for path in grid):
            return task_variant(task)
    return None


def check_settings(raw: Any, where: str = "collect.selection") -> dict[str, Any] | None:
    """Validate ``collect.selection``: a mapping of settings, ``true`` (the defaults) or
    ``false``/``None`` (no ranking)."""
    if raw is False or raw is None:
        return None
    if raw is True:
        return dict(DEFAULTS)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping of settings or false, got {raw!r}", where)
    for key in raw:
        if key not in DEFAULTS:
            raise ConfigError(
                f"unknown setting; expected one of {', '.join(DEFAULTS)}", f"{where}.{key}"
            )
    out = {**DEFAULTS, **raw}
    from alphamill.stats.paired import CORRECTIONS
    from alphamill.stats.pbo import MAX_PARTITIONS

    s = out["partitions"]
    if isinstance(s, bool) or not isinstance(s, int) or s < 2 or s % 2 or s > MAX_PARTITIONS:
        raise ConfigError(
            f"expected an even integer from 2 to {MAX_PARTITIONS}, got {s!r}", f"{where}.partitions"
        )
    if out["ic_by"] not in IC_UNITS:
        raise ConfigError(
            f"expected one of {', '.join(IC_UNITS)}, got {out['ic_by']!r}", f"{where}.ic_by"
        )
    if out["correction"] not in CORRECTIONS:
        raise ConfigError(
            f"expected one of {', '.join(CORRECTIONS)}, got {out['correction']!r}",
            f"{where}.correction",
        )
    if out["baseline"] is not None and not isinstance(out["baseline"], str):
        raise ConfigError(f"expected a variant name, got {out['baseline']!r}", f"{where}.baseline")
    return out


@dataclass
class Selection:
    """The ranking of an experiment's signals (see the module docstring).

    ``table`` has one row per signal, best first: ``rank``; with a backtest ``days``,
    ``sharpe`` (annualised: mean / std x sqrt(ann_scaler) of the daily excess return with
    cost, the backtest's simple information ratio of that series), ``skew``, ``kurtosis``
    (Pearson), ``psr`` (probability that the true Sharpe ratio is above 0) and ``dsr`` (above
    the best of N skill-less trials); ``ic`` (mean daily IC of the merged signal),
    ``ic_diff``, ``ic_units``, ``t_p_adj`` and ``wilcoxon_p_adj`` (the paired test against the
    baseline: mean difference of the per-unit IC, pairs, adjusted p-values; the full test is
    ``paired``) and ``pbo_picked`` (the share of CSCV splits in which the signal was the
    in-sample winner). Ranked by DSR (then Sharpe ratio), by IC without a backtest.
    """

    table: pd.DataFrame
    paired: pd.DataFrame
    pbo: Any
    n_trials: int
    trials: dict[str, dict[str, int]]
    baseline: str
    basis: str
    ic_by: str
    correction: str
    sr_variance: float = float("nan")
    expected_max_sharpe: float = float("nan")
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Experiment-level figures: trials, the Sharpe ratio the best of them would reach by
        chance (annualised), PBO and its CSCV details."""
        out: dict[str, Any] = {
            "trials": self.n_trials,
            "signals": len(self.table),
            "baseline": self.baseline,
            "basis": self.basis,
            "ic_by": self.ic_by,
            "correction": self.correction,
            "sharpe_variance": self.sr_variance,
            "expected_max_sharpe": self.expected_max_sharpe,
        }
        if self.pbo is not None:  # CSCV's own trial count is the signals with a backtest
            out.update(
                {("pbo_trials" if k == "trials" else k): v for k, v in self.pbo.summary().items()}
            )
        return out

    def lines(self) -> list[str]:
        """The summary as sentences (CLI and report)."""
        s = self.summary()
        out = [
            f"trials counted (N): {self.n_trials}; signals ranked: {len(self.table)}; "
            f"baseline of the IC test: {self.baseline}"
        ]
        if math.isfinite(self.expected_max_sharpe):
            out.append(
                f"expected best annualised Sharpe ratio of {self.n_trials} skill-less trials: "
                f"{self.expected_max_sharpe:.4f} (V[SR] of the signals: {self.sr_variance:.3g} per day^2)"
            )
        if self.pbo is not None:
            out.append(
                f"PBO {s['pbo']:.4f} ({self.basis}, {s['partitions']} blocks of {s['observations'] // s['partitions']} "
                f"days, {s['combinations']} splits); median logit {s['logit_median']:.3f}; performance "
                f"degradation slope {s['degradation_slope']:.3f}; P(out-of-sample loss) {s['prob_oos_loss']:.4f}"
            )
        out += self.notes
        return out

    def to_dict(self) -> dict[str, Any]:
        def clean(x: Any) -> Any:
            if isinstance(x, (np.floating, np.integer)):
                x = x.item()
            return None if isinstance(x, float) and not math.isfinite(x) else x

        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [
                {str(k): clean(v) for k, v in row.items()}
                for row in df.reset_index().to_dict("records")
            ]

        out = {k: clean(v) for k, v in self.summary().items()}
        out["table"] = records(self.table)
        out["paired"] = records(self.paired)
        out["trial_statuses"] = self.trials
        out["logits"] = [clean(x) for x in self.pbo.logits] if self.pbo is not None else []
        out["notes"] = list(self.notes)
        return out


def _ic_units(results: Any, ic: dict[str, pd.Series], by: str) -> pd.DataFrame:
    """units x signals: each signal's mean daily IC per window test span (or month)."""
    if by == "month":
        return pd.DataFrame({c: s.groupby(s.index.to_period("M")).mean() for c, s in ic.items()})
    spans = (
        results.windows.reset_index()
        .groupby("window")
        .agg(start=("test_start", "min"), end=("test_end", "max"))
    )
    rows = {}
    for w, span in spans.iterrows():
        lo, hi = pd.Timestamp(span["start"]), pd.Timestamp(span["end"])
        rows[w] = {c: s[(s.index >= lo) & (s.index <= hi)].mean() for c, s in ic.items()}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "window"
    return df


def select(
    results: Any,
    *,
    baseline: str | None = None,
    partitions: int = 16,
    ic_by: str = "window",
    correction: str = "holm",
    trials: Mapping[str, Mapping[str, int]] | None = None,
) -> Selection | None:
    """Rank the merged signals of ``results`` (None when there is only one signal).

    ``trials``: ``{variant: {status: count}}`` from the pool (:func:`trials_from_tasks`);
    ``baseline``: the signal the IC test compares against (default: the first variant).
    """
    from alphamill.stats import (
        deflated_sharpe_ratio,
        expected_max_sharpe,
        paired_tests,
        probabilistic_sharpe_ratio,
        probability_of_backtest_overfitting,
        sharpe_stats,
    )

    settings = check_settings(
        {"baseline": baseline, "partitions": partitions, "ic_by": ic_by, "correction": correction},
        "selection",
    )
    signals = list(results.predictions.columns)
    if len(signals) < 2:
        return None
    variants = list(results.groups)
    baseline = settings["baseline"] or variants[0]
    if baseline not in signals:
        raise ConfigError(
            f"{baseline!r} is not one of the signals: {', '.join(signals)}",
            "collect.selection.baseline",
        )
    pool = {str(k): dict(v) for k, v in (trials or {}).items()}
    derived = [c for c in signals if c not in results.groups]
    n_trials = len(set(pool) | set(variants)) + len(derived)
    notes: list[str] = []
    unseen = sorted(set(pool) - set(variants))
    if unseen:
        notes.append(
            f"{len(unseen)} more variant(s) of this experiment in the pool count as trials: "
            + "; ".join(
                f"{v} ({', '.join(f'{n} {s}' for s, n in sorted(pool[v].items()))})" for v in unseen
            )
        )
    if not pool:
        notes.append("trials counted from the signals shown (no pool rows given)")

    ic = {c: results._merged_ic[c][1]["IC"].dropna() for c in signals}
    paired = paired_tests(
        _ic_units(results, ic, settings["ic_by"]), baseline, settings["correction"]
    )

    table = pd.DataFrame(index=pd.Index(signals, name="signal"))
    table["ic"] = [float(ic[c].mean()) for c in signals]
    table["ic_diff"] = paired["mean_diff"].reindex(signals)
    table["ic_units"] = paired["n"].reindex(signals).astype("Int64")
    table["t_p_adj"] = paired["t_pvalue_adj"].reindex(signals)
    table["wilcoxon_p_adj"] = paired["wilcoxon_pvalue_adj"].reindex(signals)

    backtests = results._backtests
    sr_var = sr0 = float("nan")
    if backtests:
        ann = results.backtest_settings["ann_scaler"]  # what the backtest table used
        series = {
            c: backtests[c]["report"][RETURN_BASIS].astype("float64").dropna() for c in signals
        }
        st = {c: sharpe_stats(series[c]) for c in signals}
        srs = np.array([st[c].sharpe for c in signals])
        finite = srs[np.isfinite(srs)]
        sr_var = float(np.var(finite, ddof=1)) if len(finite) > 1 else float("nan")
        sr0 = float(expected_max_sharpe(n_trials, sr_var)) * math.sqrt(ann)
        table.insert(0, "days", [st[c].n_obs for c in signals])
        table.insert(1, "sharpe", srs * math.sqrt(ann))
        table.insert(2, "skew", [st[c].skew for c in signals])
        table.insert(3, "kurtosis", [st[c].kurtosis for c in signals])
        table.insert(
            4,
            "psr",
            [
                probabilistic_sharpe_ratio(st[c].sharpe, st[c].n_obs, st[c].skew, st[c].kurtosis)
                for c in signals
            ],
        )
        table.insert(
            5,
            "dsr",
            [
                deflated_sharpe_ratio(
                    st[c].sharpe, st[c].n_obs, n_trials, sr_var, st[c].skew, st[c].kurtosis
                )
                for c in signals
            ],
        )
        matrix = pd.DataFrame(series).dropna()
        basis = RETURN_BASIS
    else:
        matrix = pd.DataFrame(ic).dropna()
        basis = "IC"
        notes.append("no backtest: no deflated Sharpe ratio; PBO judges the daily IC (mean / std)")

    pbo = None
    s = settings["partitions"]
    fit = min(s, (len(matrix) // MIN_BLOCK_DAYS) // 2 * 2)
    if fit >= 2:
        if fit < s:
            notes.append(
                f"PBO: {fit} blocks instead of {s}: {len(matrix)} common days, at least "
                f"{MIN_BLOCK_DAYS} per block"
            )
        pbo = probability_of_backtest_overfitting(matrix, fit, "sharpe")
        picked = pbo.selected_counts()
        table["pbo_picked"] = [picked.get(c, 0) / pbo.n_combinations for c in signals]
    else:
        notes.append(f"PBO: {len(matrix)} common days are too few for CSCV")

    order = ("dsr", "sharpe") if "dsr" in table else ("ic",)
    table = table.sort_values(list(order), ascending=False, na_position="last")
    table.insert(0, "rank", range(1, len(table) + 1))
    return Selection(
        table=table,
        paired=paired,
        pbo=pbo,
        n_trials=n_trials,
        trials=pool,
        baseline=baseline,
        basis=basis,
        ic_by=settings["ic_by"],
        correction=settings["correction"],
        sr_variance=sr_var,
        expected_max_sharpe=sr0,
        notes=notes,
    )
