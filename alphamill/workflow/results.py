"""The results of an experiment, as DataFrames: what a researcher reads after a run.

:class:`ExperimentResults` holds each collected window's prediction and label, keyed
``(model class, variant, window)`` (see :func:`~alphamill.workflow.collect.default_rec_key`),
and derives:

* ``predictions`` - the merged signal of each variant (its windows merged by
  :class:`~alphamill.ens.RollingEnsemble`: the later window wins where windows overlap), one
  column per variant, plus an ``ensemble`` column combining the variants when the ensemble is
  ``average`` (per-day z-score mean) or ``ic_weighted`` (weights from each variant's trailing
  realised IC, no look-ahead); each variant is evaluated against its own label (horizons
  differ), the ensemble against the first variant's;
* ``windows`` - per window: test span, days, IC, ICIR, Rank IC, Rank ICIR (from that window's
  own stored prediction and label) and the run id;
* ``summary`` - the same four figures for each merged signal;
* ``daily_ic`` - the daily IC and Rank IC of the headline signal;
* ``backtest`` - the top-k dropout backtest of each merged signal, run as ``PortAnaRecord``
  runs it (:mod:`alphamill.workflow.port_analysis`: same defaults, each signal traded at the
  next close, annualised with Qlib's 238 trading days unless ``collect: backtest:`` sets
  ``signal_lag`` / ``ann_scaler``), with the annualised return, information ratio and maximum
  drawdown of the excess return with and without cost, simple (``sum``) and compounded
  (``product``); ``backtest_settings`` says the timing and scaler used;
* ``selection()`` - with several signals, their ranking by the deflated Sharpe ratio, the
  probability of backtest overfitting and a paired IC test against a baseline, counting every
  variant tried (:mod:`alphamill.workflow.selection`);
* ``report(path)`` - a single-file HTML report.

IC definitions are :mod:`alphamill.evaluate`'s (Qlib's): daily Pearson / Spearman correlation
across instruments, IC = mean, ICIR = mean / std (not annualised).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

__all__ = ["ExperimentResults", "ic_table"]

ENSEMBLE_COLUMN = "ensemble"


def _score(value: Any) -> pd.Series:
    if isinstance(value, pd.DataFrame):
        value = value["score"] if "score" in value.columns else value.iloc[:, 0]
    return value.astype("float64").rename("score").sort_index()


def _label(value: Any) -> pd.Series:
    if isinstance(value, pd.DataFrame):
        value = value.iloc[:, 0]
    return value.astype("float64").rename("label").sort_index()


def ic_table(pred: pd.Series, label: pd.Series) -> tuple[dict[str, float], pd.DataFrame]:
    """``({"IC", "ICIR", "Rank IC", "Rank ICIR", "days"}, daily DataFrame[IC, Rank IC])``."""
    from alphamill.evaluate import calc_ic, ic_summary

    ic, ric = calc_ic(pred, label)
    summary = ic_summary(ic, ric) if len(ic.dropna()) > 1 else {
        "IC": float(ic.mean()), "ICIR": float("nan"), "Rank IC": float(ric.mean()), "Rank ICIR": float("nan")}
    summary["days"] = int(ic.notna().sum())
    return summary, pd.DataFrame({"IC": ic, "Rank IC": ric})


def _variant_name(key: tuple) -> str:
    """``("LGBModel", "lr=0.1")`` -> ``"LGBModel lr=0.1"``."""
    return " ".join(str(k) for k in key if k not in ("", None)) or "model"


class ExperimentResults:
    """Predictions, per-window and merged IC figures, backtest summary and report of a run.

    ``preds`` / ``labels`` map ``(model, variant, window)`` keys to each window's stored
    prediction and raw label; ``run_ids`` maps them to run ids. ``backtest`` is a dict of
    keyword arguments for :func:`alphamill.backtest` (``None``: no backtest). ``selection``
    holds the settings of :func:`~alphamill.workflow.selection.select` (``True``: the
    defaults; ``False``/``None``: no ranking)
    and ``trials`` the pool's ``{variant: {status: count}}`` of the experiment.
    """

    def __init__(
        self,
        experiment_name: str,
        preds: Mapping[tuple, Any],
        labels: Mapping[tuple, Any],
        run_ids: Mapping[tuple, str] | None = None,
        *,
        ensemble: str = "rolling",
        backtest: Mapping[str, Any] | None = None,
        ic_window: int = 20,
        label_delay: int = 2,
        data: Any = None,
        selection: Mapping[str, Any] | bool | None = True,
        trials: Mapping[str, Mapping[str, int]] | None = None,
    ):
        if not preds:
            raise ConfigError(f"experiment {experiment_name!r}: nothing collected (no finished run with a "
                              "prediction)", "results")
        if ensemble not in ("rolling", "average", "ic_weighted"):
            raise ConfigError(f"expected rolling, average or ic_weighted, got {ensemble!r}", "ensemble")
        self.experiment_name = experiment_name
        self.preds = {k: _score(v) for k, v in preds.items()}
        self.labels = {k: _label(v) for k, v in labels.items()}
        self.run_ids = dict(run_ids or {})
        self.ensemble = ensemble
        if backtest is not None:
            from alphamill.workflow.port_analysis import check_settings

            backtest = check_settings(backtest)
        self.backtest_kwargs = None if backtest is None else dict(backtest)
        self.ic_window = ic_window
        self.label_delay = label_delay
        self.data = data
        from alphamill.workflow.selection import check_settings

        self.selection_settings = check_settings(selection)
        self.trials = None if trials is None else {str(k): dict(v) for k, v in trials.items()}
        self.timings: dict[str, float] = {}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_recorders(cls, experiment_name: str, recorders: Sequence[Any] | None = None, *,
                       duplicate: str = "error", **kwargs: Any) -> ExperimentResults:
        """Collect predictions and labels of ``recorders`` (default: every finished run of the
        experiment) with :class:`~alphamill.workflow.collect.RecorderCollector`."""
        from alphamill.workflow.collect import RecorderCollector, task_of

        collector = RecorderCollector(
            experiment_name,
            artifacts_path={"pred": "pred.pkl", "label": "label.pkl"},
            artifacts_key=["pred", "label", RecorderCollector.ART_KEY_RAW],
            duplicate=duplicate,
            recorders=recorders,
        )
        got = collector.collect()
        raws = got[RecorderCollector.ART_KEY_RAW]
        run_ids = {k: r.id for k, r in raws.items()}
        data = None
        for rec in raws.values():  # the market the records used (SignalRecord's tag, else the task's)
            data = rec.list_tags().get("alphamill.data")
            if data is None:
                handler = task_of(rec).get("dataset", {}).get("kwargs", {}).get("handler", {})
                data = (handler.get("kwargs") or {}).get("data") if isinstance(handler, Mapping) else None
            break
        return cls(experiment_name, got["pred"], got["label"], run_ids, data=data, **kwargs)

    # -- derived tables ----------------------------------------------------------------------
    @cached_property
    def groups(self) -> dict[str, dict[Any, pd.Series]]:
        """``{variant name: {window: prediction}}``."""
        out: dict[str, dict[Any, pd.Series]] = {}
        for key in sorted(self.preds, key=lambda k: tuple(str(x) for x in k[:-1]) + (k[-1],)):
            out.setdefault(_variant_name(key[:-1]), {})[key[-1]] = self.preds[key]
        return out

    @cached_property
    def variant_labels(self) -> dict[str, pd.Series]:
        """Each variant's raw label over its windows (a multi-horizon run has one per horizon)."""
        out: dict[str, pd.Series] = {}
        for key, label in self.labels.items():
            out.setdefault(_variant_name(key[:-1]), []).append(label)
        merged = {}
        for name, parts in out.items():
            parts.sort(key=lambda s: s.index.get_level_values(0).min())
            cat = pd.concat(parts)
            merged[name] = cat[~cat.index.duplicated(keep="last")].sort_index()
        return merged

    @property
    def label(self) -> pd.Series:
        """The label the ensemble is judged (and IC-weighted) against: the first variant's."""
        return next(iter(self.variant_labels.values()))

    def label_for(self, signal: str) -> pd.Series:
        """The label a merged signal is evaluated against (its own variant's, else ``label``)."""
        return self.variant_labels.get(signal, self.label)

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """Merged prediction of each variant (plus ``ensemble``), indexed (datetime, instrument)."""
        from alphamill.ens import AverageEnsemble, ICWeightedEnsemble, RollingEnsemble

        merged = {name: RollingEnsemble()(windows)["score"] for name, windows in self.groups.items()}
        out = pd.DataFrame(merged)
        if self.ensemble != "rolling" and len(merged) > 1:
            if self.ensemble == "average":
                ens = AverageEnsemble()
            else:
                ens = ICWeightedEnsemble(self.label, window=self.ic_window, label_delay=self.label_delay)
            out[ENSEMBLE_COLUMN] = ens(merged)["score"]
        out.index.names = ["datetime", "instrument"]
        return out.sort_index()

    @property
    def headline(self) -> str:
        """The signal the report leads with: the ensemble, else the only (or first) variant."""
        cols = list(self.predictions.columns)
        return ENSEMBLE_COLUMN if ENSEMBLE_COLUMN in cols else cols[0]

    @property
    def pred(self) -> pd.DataFrame:
        """The headline merged prediction as a one-column ``score`` DataFrame."""
        return self.predictions[self.headline].dropna().to_frame("score")

    @cached_property
    def windows(self) -> pd.DataFrame:
        """One row per window: variant, window, test start/end, days, IC, ICIR, Rank IC,
        Rank ICIR and run id."""
        rows = []
        for key in sorted(self.preds, key=lambda k: tuple(str(x) for x in k[:-1]) + (k[-1],)):
            pred = self.preds[key]
            label = self.labels.get(key, self.label_for(_variant_name(key[:-1])))
            summary, _ = ic_table(pred, label)
            dates = pred.index.get_level_values("datetime")
            rows.append({
                "variant": _variant_name(key[:-1]),
                "window": key[-1],
                "test_start": dates.min().date().isoformat() if len(dates) else None,
                "test_end": dates.max().date().isoformat() if len(dates) else None,
                **summary,
                "run_id": self.run_ids.get(key, ""),
            })
        df = pd.DataFrame(rows)
        cols = ["variant", "window", "test_start", "test_end", "days", "IC", "ICIR", "Rank IC", "Rank ICIR",
                "run_id"]
        return df[cols].set_index(["variant", "window"])

    @cached_property
    def _merged_ic(self) -> dict[str, tuple[dict[str, float], pd.DataFrame]]:
        return {c: ic_table(self.predictions[c].dropna(), self.label_for(c)) for c in self.predictions.columns}

    @property
    def summary(self) -> pd.DataFrame:
        """IC, ICIR, Rank IC, Rank ICIR (and days, test span) of each merged signal."""
        rows = {}
        for col, (s, _) in self._merged_ic.items():
            dates = self.predictions[col].dropna().index.get_level_values("datetime")
            rows[col] = {"test_start": dates.min().date().isoformat(), "test_end": dates.max().date().isoformat(),
                         **s}
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "signal"
        return df[["test_start", "test_end", "days", "IC", "ICIR", "Rank IC", "Rank ICIR"]]

    @property
    def daily_ic(self) -> pd.DataFrame:
        """Daily IC and Rank IC of the headline signal, indexed by date."""
        return self._merged_ic[self.headline][1]

    # -- backtest ----------------------------------------------------------------------------
    @cached_property
    def _backtests(self) -> dict[str, Any]:
        if self.backtest_kwargs is None:
            return {}
        return {c: _run_backtest(self.predictions[c].dropna().to_frame("score"), self.data, self.backtest_kwargs)
                for c in self.predictions.columns}

    @property
    def backtest(self) -> pd.DataFrame | None:
        """Risk figures of each merged signal's top-k dropout backtest.

        Rows ``(signal, series, metric)`` with series ``excess_return_without_cost`` /
        ``excess_return_with_cost``; columns ``simple`` (sum) and ``compounded`` (product).
        """
        if not self._backtests:
            return None
        frames = []
        for col, bt in self._backtests.items():
            frames.append(bt["summary"].assign(signal=col).set_index("signal", append=True)
                          .reorder_levels([2, 0, 1]))
        return pd.concat(frames)

    @property
    def backtest_settings(self) -> dict[str, Any] | None:
        """The timing and annualisation the backtest tables used: ``{"timing", "signal_lag",
        "ann_scaler"}`` (None without a backtest)."""
        if self.backtest_kwargs is None:
            return None
        from alphamill.backtest import DEFAULT_SIGNAL_LAG, timing
        from alphamill.evaluate import ANN_SCALER

        lag = int(self.backtest_kwargs.get("signal_lag", DEFAULT_SIGNAL_LAG))
        return {"timing": timing(lag), "signal_lag": lag,
                "ann_scaler": float(self.backtest_kwargs.get("ann_scaler", ANN_SCALER))}

    def backtest_caption(self) -> str | None:
        """One line for the backtest tables: ``top-k dropout; signals traded at the next close;
        annualised with 238 trading days``."""
        s = self.backtest_settings
        if s is None:
            return None
        return f"top-k dropout; {s['timing']}; annualised with {s['ann_scaler']:g} trading days a year"

    def backtest_report(self, signal: str | None = None) -> pd.DataFrame | None:
        """The daily backtest report of a merged signal (default: the headline)."""
        bt = self._backtests.get(signal or self.headline)
        return None if bt is None else bt["report"]

    @property
    def excess_return(self) -> pd.DataFrame | None:
        """Daily excess return of the headline signal, without and with cost."""
        bt = self._backtests.get(self.headline)
        return None if bt is None else bt["excess"]

    # -- selection among variants ------------------------------------------------------------
    @cached_property
    def _selection(self) -> Any:
        from alphamill.workflow.selection import select

        if self.selection_settings is None:
            return None
        return select(self, trials=self.trials, **self.selection_settings)

    def selection(self, **settings: Any) -> Any:
        """The :class:`~alphamill.workflow.selection.Selection` ranking of the merged signals
        (``None`` with a single signal or when turned off); ``settings`` override the
        configured ones (baseline, partitions, ic_by, correction)."""
        if not settings:
            return self._selection
        from alphamill.workflow.selection import DEFAULTS, select

        return select(self, trials=self.trials, **{**DEFAULTS, **(self.selection_settings or {}), **settings})

    def compute(self) -> ExperimentResults:
        """Compute every table now (they are otherwise computed on first use)."""
        _ = self.windows, self.summary, self.backtest, self.selection()
        return self

    # -- output ------------------------------------------------------------------------------
    def report(self, path: str | Path, title: str | None = None, notes: Mapping[str, str] | None = None) -> Path:
        """Write the HTML report (tables, daily IC, cumulative excess return); return its path."""
        from alphamill.report import write_html_report

        bt = self.backtest
        if bt is not None:
            bt = bt.copy()
            bt.index = [" · ".join(str(x) for x in idx) for idx in bt.index]
        windows = self.windows.reset_index()
        sel = self.selection()
        return write_html_report(
            path,
            title=title or f"alphamill experiment {self.experiment_name}",
            summary=self.summary,
            windows=windows,
            daily_ic=self.daily_ic,
            backtest_summary=bt,
            backtest_caption=self.backtest_caption(),
            excess_return=self.excess_return,
            selection=None if sel is None else sel.table,
            selection_notes=None if sel is None else sel.lines(),
            notes={"experiment": self.experiment_name, "windows": str(len(self.preds)),
                   "ensemble": self.ensemble, **(notes or {})},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form of the tables (for ``alphamill run --json``)."""

        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, (np.floating, np.integer)):
                return clean(x.item())
            return x

        def records(df: pd.DataFrame | None) -> list[dict[str, Any]]:
            if df is None:
                return []
            flat = df.reset_index()
            return [{str(k): clean(v) for k, v in row.items()} for row in flat.to_dict("records")]

        return {
            "experiment": self.experiment_name,
            "ensemble": self.ensemble,
            "headline": self.headline,
            "summary": records(self.summary),
            "windows": records(self.windows),
            "backtest": records(self.backtest),
            "selection": None if self.selection() is None else self.selection().to_dict(),
            "backtest_settings": self.backtest_settings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)


BACKTEST_SERIES = ("excess_return_without_cost", "excess_return_with_cost")
BACKTEST_METRICS = ("annualized_return", "information_ratio", "max_drawdown")


def _run_backtest(pred: pd.DataFrame, data: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Top-k dropout backtest of one signal through
    :func:`~alphamill.workflow.port_analysis.run_backtest`, as ``PortAnaRecord`` runs it: its
    defaults (topk 50, n_drop 5, costs 0.0005 / 0.0015, min cost 5, deal at close,
    equal-weight benchmark, each signal traded at the next close, annualised with 238 days)
    unless ``settings`` (``collect: backtest:``) say otherwise.

    Returns ``{"summary", "excess", "report", "analysis", "ann_scaler", "signal_lag",
    "timing"}``; the summary has rows ``(series, metric)`` and columns ``simple`` /
    ``compounded`` (the analysis' ``risk`` / ``risk_compounded``), plus the mean daily turnover.
    """
    from alphamill.data import open_data
    from alphamill.workflow.port_analysis import run_backtest

    out = run_backtest(pred, open_data(data), settings)
    report, analysis = out["report"], out["analysis"]
    rows = {}
    for series in BACKTEST_SERIES:
        for metric in BACKTEST_METRICS:
            row = analysis.loc[(series, metric)]
            rows[(series, metric)] = {"simple": float(row["risk"]), "compounded": float(row["risk_compounded"])}
    turnover = float(report["turnover"].mean())
    rows[("turnover", "mean_daily")] = {"simple": turnover, "compounded": turnover}
    summary = pd.DataFrame.from_dict(rows, orient="index")
    summary.index = pd.MultiIndex.from_tuples(summary.index, names=["series", "metric"])
    excess = report[list(BACKTEST_SERIES)].rename(
        columns={"excess_return_without_cost": "without cost", "excess_return_with_cost": "with cost"})
    return {**out, "summary": summary, "excess": excess}
