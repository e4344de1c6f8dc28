"""Qlib's record templates: what a task stores in its recorder after training.

* :class:`SignalRecord`: test-segment predictions ``pred.parquet`` (column ``score``, index
  (datetime, instrument)) and raw labels ``label.parquet``. Qlib's names ``pred.pkl`` /
  ``label.pkl`` are accepted by ``load_object`` and mean the same artifacts.
* :class:`SigAnaRecord`: daily IC and rank IC (``sig_analysis/ic.parquet``, ``ric.parquet``)
  and the metrics ``IC``, ``ICIR``, ``Rank IC``, ``Rank ICIR`` (optionally long-short).
* :class:`PortAnaRecord`: the top-k dropout backtest (:mod:`alphamill.backtest`) of the
  predictions, ``portfolio_analysis/report_normal_1day.parquet`` (daily report) and
  ``port_analysis_1day.parquet`` (risk analysis of the excess returns, simple ``risk`` and
  compounded ``risk_compounded`` columns), with metrics such as
  ``1day.excess_return_with_cost.annualized_return`` (simple, Qlib's) and
  ``1day.excess_return_with_cost.compounded.annualized_return``.

A template that depends on another (``depend_cls``) reads that one's artifacts: ``load`` looks
under its own ``artifact_path`` first, then under the parent's, as Qlib does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from alphamill.backtest import DEFAULT_SIGNAL_LAG
from alphamill.config import redact_url
from alphamill.errors import ConfigError
from alphamill.evaluate import (
    ANN_SCALER,
    SIG_ANN_SCALER,
    calc_ic,
    check_ann_scaler,
    ic_summary,
    long_short_returns,
)
from alphamill.workflow.port_analysis import analyse, check_settings, run_backtest
from alphamill.workflow.recorder import ArtifactNotFound, Recorder

__all__ = ["PortAnaRecord", "RecordTemp", "SigAnaRecord", "SignalRecord"]

DATA_TAG = "alphamill.data"


class RecordTemp:
    """Base of the record templates: a recorder, an artifact folder and a parent template."""

    artifact_path: str | None = None
    depend_cls: type[RecordTemp] | None = None

    def __init__(self, recorder: Recorder | None = None):
        self._recorder = recorder

    @property
    def recorder(self) -> Recorder:
        if self._recorder is None:
            raise ConfigError(f"{type(self).__name__} has no recorder", "recorder")
        return self._recorder

    @classmethod
    def get_path(cls, path: str | None = None) -> str:
        return "/".join(p for p in (cls.artifact_path, path) if p)

    def save(self, **kwargs: Any) -> list[str]:
        return self.recorder.save_objects(artifact_path=self.artifact_path, **kwargs)

    def load(self, name: str, parents: bool = True) -> Any:
        """An artifact of this template, or else of its parents (Qlib's lookup order)."""
        cls: type[RecordTemp] | None = type(self)
        first: ArtifactNotFound | None = None
        while cls is not None:
            try:
                return self.recorder.load_object(cls.get_path(name))
            except ArtifactNotFound as e:
                first = first or e
            cls = cls.depend_cls if parents else None
        assert first is not None
        raise first

    def list(self) -> list[str]:
        """Artifacts this template writes (relative to its ``artifact_path``)."""
        return []

    def check(self, include_self: bool = False, parents: bool = True) -> None:
        """Raise :class:`ArtifactNotFound` unless the needed artifacts exist."""
        present = set(self.recorder.list_artifacts())
        classes: list[type[RecordTemp]] = [type(self)] if include_self else []
        cls = type(self).depend_cls
        while cls is not None and parents:
            classes.append(cls)
            cls = cls.depend_cls
        for klass in classes:
            for name in klass.list(self):  # type: ignore[arg-type]
                path = klass.get_path(name)
                if path not in present:
                    raise ArtifactNotFound(
                        f"run {self.recorder.id} has no artifact {path!r} (needed by "
                        f"{type(self).__name__}; run {klass.__name__} first)"
                    )

    def generate(self, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__}.generate")


class SignalRecord(RecordTemp):
    """Predictions and raw labels of the dataset's test segment."""

    def __init__(self, model: Any = None, dataset: Any = None, recorder: Recorder | None = None):
        super().__init__(recorder)
        self.model = model
        self.dataset = dataset

    def list(self) -> list[str]:
        return ["pred.parquet", "label.parquet"]

    @staticmethod
    def generate_label(dataset: Any) -> pd.DataFrame | None:
        """Raw (unprocessed) labels of the test segment, or None if the data has none."""
        try:
            label = dataset.prepare("test", col_set="label", data_key="raw")
        except (KeyError, ValueError, TypeError):
            return None
        if isinstance(label, pd.Series):
            label = label.to_frame()
        if not isinstance(label, pd.DataFrame) or label.shape[1] == 0:
            return None
        if isinstance(label.columns, pd.MultiIndex):
            label.columns = label.columns.get_level_values(-1)
        return label

    def generate(self, **kwargs: Any) -> None:
        if self.model is None or self.dataset is None:
            raise ConfigError("SignalRecord needs a fitted model and its dataset", "record")
        pred = self.model.predict(self.dataset)
        if isinstance(pred, pd.Series):
            pred = pred.to_frame("score")
        if not isinstance(pred, pd.DataFrame) or not isinstance(pred.index, pd.MultiIndex):
            raise ConfigError(
                "the model's predict() must return a Series indexed (datetime, instrument)",
                "model",
            )
        self.save(**{"pred.pkl": pred})
        label = self.generate_label(self.dataset)
        if label is not None:
            self.save(**{"label.pkl": label})
        spec = _data_spec_of(self.dataset)
        if spec is not None:
            self.recorder.set_tags(**{DATA_TAG: redact_url(str(spec))})


class SigAnaRecord(RecordTemp):
    """Daily IC / rank IC of the predictions against the raw labels (Qlib's ``SigAnaRecord``).

    With ``ana_long_short`` it logs Qlib's figures under Qlib's names, annualised with
    ``ann_scaler`` periods a year (252 by default, as Qlib): "Long-Short Ann Return" / "Ann
    Sharpe" of the daily (top quantile - bottom quantile) / 2, and "Long-Avg Ann Return" /
    "Ann Sharpe" of the daily *average* label return (Qlib's ``long_avg_r``, the market's
    return, not an excess). alphamill's own top-quantile excess over that average is logged
    as "Long-Minus-Avg Ann Return" / "Ann Sharpe" (``long_minus_avg_r.parquet``). The scaler
    used is tagged ``alphamill.sig_analysis.ann_scaler``.
    """

    artifact_path = "sig_analysis"
    depend_cls = SignalRecord

    def __init__(
        self,
        recorder: Recorder | None = None,
        ana_long_short: bool = False,
        ann_scaler: float = SIG_ANN_SCALER,
        label_col: int | str = 0,
        skip_existing: bool = False,
    ):
        super().__init__(recorder)
        self.ana_long_short = ana_long_short
        self.ann_scaler = check_ann_scaler(ann_scaler, "ann_scaler")
        self.label_col = label_col
        self.skip_existing = skip_existing

    def list(self) -> list[str]:
        paths = ["ic.parquet", "ric.parquet"]
        if self.ana_long_short:
            paths += ["long_short_r.parquet", "long_avg_r.parquet", "long_minus_avg_r.parquet"]
        return paths

    def generate(self, **kwargs: Any) -> None:
        if self.skip_existing:
            present = set(self.recorder.list_artifacts(self.artifact_path))
            if all(self.get_path(p) in present for p in self.list()):
                return
        pred = self.load("pred.pkl")
        label = self.load("label.pkl")
        if not isinstance(label, pd.DataFrame) or label.empty:
            raise ConfigError(f"run {self.recorder.id}: label.parquet is empty", "label")
        if isinstance(self.label_col, int):
            if not -label.shape[1] <= self.label_col < label.shape[1]:
                raise ConfigError(
                    f"label has {label.shape[1]} columns, no column {self.label_col}", "label_col"
                )
            lab = label.iloc[:, self.label_col]
        elif self.label_col in label.columns:
            lab = label[self.label_col]
        else:
            raise ConfigError(f"no label column {self.label_col!r}", "label_col")
        score = pred.iloc[:, 0]
        ic, ric = calc_ic(score, lab)
        metrics = ic_summary(ic, ric)
        objects: dict[str, Any] = {"ic.pkl": ic.rename("ic"), "ric.pkl": ric.rename("ric")}
        if self.ana_long_short:
            ls = long_short_returns(score, lab)
            n = self.ann_scaler
            series = {
                "Long-Short": ("long_short_r", ls["long_short"]),
                "Long-Avg": ("long_avg_r", ls["avg"]),  # Qlib's meaning: the average label
                "Long-Minus-Avg": ("long_minus_avg_r", ls["long_minus_avg"]),
            }
            for name, (artifact, r) in series.items():
                metrics[f"{name} Ann Return"] = float(r.mean() * n)
                metrics[f"{name} Ann Sharpe"] = float(r.mean() / r.std() * np.sqrt(n))
                objects[f"{artifact}.pkl"] = r.rename(artifact)
            self.recorder.set_tags(**{"alphamill.sig_analysis.ann_scaler": f"{n:g}"})
        self.recorder.log_metrics(**metrics)
        self.save(**objects)


class PortAnaRecord(RecordTemp):
    """Top-k dropout backtest of the predictions and its risk analysis.

    ``config`` has Qlib's shape::

        {"strategy": {"class": "TopkDropoutStrategy",
                      "kwargs": {"topk": 50, "n_drop": 5, "signal": "<PRED>"}},
         "backtest": {"start_time": ..., "end_time": ..., "account": 1e8,
                      "benchmark": None,
                      "exchange_kwargs": {"open_cost": 0.0005, "close_cost": 0.0015,
                                          "min_cost": 5, "deal_price": "close"}}}

    (every key optional; those values are the defaults; ``benchmark`` None is the
    equal-weight universe, a code is read as Qlib reads it, also an index that is not a listed
    instrument: see :mod:`alphamill.workflow.port_analysis`). Extra backtest keys:
    ``exchange_kwargs.limit_threshold``, ``exchange_kwargs.trade_unit``,
    ``backtest.signal_lag`` (default :data:`~alphamill.backtest.DEFAULT_SIGNAL_LAG` = 1, Qlib's
    timing: the signal computed at the close of t is traded at the next close, as the default
    label assumes; 0 trades at the close of t itself, which is optimistic).

    Prices come from, in order: ``data`` (a price panel DataFrame, or a data source / folder),
    the ``dataset`` the task trained on, the recorder's ``alphamill.data`` tag (written by
    :class:`SignalRecord`), the recorded ``task.json``, and finally the configured data.
    ``ann_scaler`` (default :data:`~alphamill.evaluate.ANN_SCALER` = 238, what Qlib's
    ``risk_analysis`` uses for daily returns, so the ``1day.*`` metrics mean what Qlib's do)
    annualises both the simple and the compounded analysis. The tags
    ``alphamill.port_analysis.ann_scaler`` and ``alphamill.port_analysis.timing`` say which
    scaler and timing the stored figures used.
    """

    artifact_path = "portfolio_analysis"
    depend_cls = SignalRecord

    _STRATEGY_DEFAULTS = {
        "topk": 50,
        "n_drop": 5,
        "signal": "<PRED>",
        "risk_degree": 0.95,
        "method_sell": "bottom",
        "method_buy": "top",
        "hold_thresh": 1,
        "only_tradable": False,
        "forbid_all_trade_at_limit": True,
    }
    _EXCHANGE_DEFAULTS = {
        "open_cost": 0.0005,
        "close_cost": 0.0015,
        "min_cost": 5.0,
        "deal_price": "close",
        "limit_threshold": None,
        "trade_unit": None,
        "freq": "day",
        "codes": None,
    }

    def __init__(
        self,
        recorder: Recorder | None = None,
        config: Mapping[str, Any] | None = None,
        risk_analysis_freq: Any = None,
        indicator_analysis_freq: Any = None,
        indicator_analysis_method: Any = None,
        skip_existing: bool = False,
        model: Any = None,
        dataset: Any = None,
        data: Any = None,
        ann_scaler: float = ANN_SCALER,
        **kwargs: Any,
    ):
        super().__init__(recorder)
        if kwargs:
            raise ConfigError(
                "unknown PortAnaRecord argument; expected config, risk_analysis_freq, "
                "skip_existing, data, ann_scaler",
                f"record.kwargs.{sorted(kwargs)[0]}",
            )
        for name, value in (
            ("indicator_analysis_freq", indicator_analysis_freq),
            ("indicator_analysis_method", indicator_analysis_method),
        ):
            if value is not None:
                raise ConfigError("trade indicator analysis is not supported", name)
        freqs = risk_analysis_freq if isinstance(risk_analysis_freq, list) else [risk_analysis_freq]
        for f in freqs:
            if f not in (None, "day", "1day", "1d"):
                raise ConfigError(
                    f"only daily analysis is supported, got {f!r}", "risk_analysis_freq"
                )
        self.ann_scaler = check_ann_scaler(ann_scaler, "ann_scaler")
        self.config = dict(config or {})
        self.skip_existing = skip_existing
        self.dataset = dataset
        self.data = data
        self.strategy_kwargs, self.backtest_kwargs = self._parse_config(self.config)
        # the timing and the benchmark's form are checked now, not after the model is fitted
        check_settings(self.backtest_kwargs, "config.backtest", self._PATHS)

    def list(self) -> list[str]:
        return ["report_normal_1day.parquet", "port_analysis_1day.parquet"]

    # --- configuration ----------------------------------------------------------------------
    def _parse_config(self, config: Mapping[str, Any]) -> tuple[dict, dict]:
        unknown = set(config) - {"strategy", "backtest", "executor"}
        if unknown:
            raise ConfigError(
                "expected strategy, backtest, executor", f"config.{sorted(unknown)[0]}"
            )
        strategy = config.get("strategy") or {}
        if not isinstance(strategy, Mapping):
            raise ConfigError("expected a mapping", "config.strategy")
        klass = str(strategy.get("class", "TopkDropoutStrategy"))
        if klass.rsplit(".", 1)[-1] != "TopkDropoutStrategy":
            raise ConfigError(
                f"only TopkDropoutStrategy is supported, got {klass}", "config.strategy.class"
            )
        skw = dict(self._STRATEGY_DEFAULTS)
        for k, v in dict(strategy.get("kwargs") or {}).items():
            if k not in skw:
                raise ConfigError(
                    "unknown TopkDropoutStrategy argument", f"config.strategy.kwargs.{k}"
                )
            skw[k] = v
        for k in (
            "method_sell",
            "method_buy",
            "hold_thresh",
            "only_tradable",
            "forbid_all_trade_at_limit",
        ):
            if skw[k] != self._STRATEGY_DEFAULTS[k]:
                raise ConfigError(
                    f"only {self._STRATEGY_DEFAULTS[k]!r} is supported, got {skw[k]!r}",
                    f"config.strategy.kwargs.{k}",
                )
        executor = config.get("executor") or {}
        ekw = executor.get("kwargs", {}) if isinstance(executor, Mapping) else {}
        if ekw.get("time_per_step", "day") not in ("day", "1day", "1d"):
            raise ConfigError(
                "only daily steps are supported", "config.executor.kwargs.time_per_step"
            )
        bt = dict(config.get("backtest") or {})
        allowed = {
            "start_time",
            "end_time",
            "account",
            "benchmark",
            "exchange_kwargs",
            "signal_lag",
            "verbose",
        }
        for k in bt:
            if k not in allowed:
                raise ConfigError(
                    f"expected one of {', '.join(sorted(allowed))}", f"config.backtest.{k}"
                )
        ex = dict(self._EXCHANGE_DEFAULTS)
        for k, v in dict(bt.get("exchange_kwargs") or {}).items():
            if k not in ex:
                raise ConfigError(
                    "unknown exchange argument", f"config.backtest.exchange_kwargs.{k}"
                )
            ex[k] = v
        if ex.pop("freq") not in ("day", "1day", "1d"):
            raise ConfigError(
                "only daily data is supported", "config.backtest.exchange_kwargs.freq"
            )
        if ex.pop("codes") not in (None, "all"):
            raise ConfigError(
                "restrict the universe through the predictions, not the exchange",
                "config.backtest.exchange_kwargs.codes",
            )
        account = bt.get("account", 1e8)
        if isinstance(account, Mapping):  # Qlib also accepts {"cash": ...}
            account = account.get("cash", 1e8)
        kwargs = {
            "topk": int(skw["topk"]),
            "n_drop": int(skw["n_drop"]),
            "risk_degree": float(skw["risk_degree"]),
            "account": float(account),
            "benchmark": bt.get("benchmark"),
            "start_time": bt.get("start_time"),
            "end_time": bt.get("end_time"),
            "signal_lag": bt.get("signal_lag", DEFAULT_SIGNAL_LAG),
            **ex,
        }
        return skw, kwargs

    # --- prices -------------------------------------------------------------------------------
    def _source(self) -> Any:
        from alphamill.data import handler_data, open_data
        from alphamill.data.base import DataSource

        if self.data is not None and not isinstance(self.data, (pd.DataFrame, pd.Series)):
            return open_data(self.data)
        handler = getattr(self.dataset, "handler", None)
        source = getattr(handler, "source", None)
        if isinstance(source, DataSource):
            return source
        tags = self.recorder.list_tags()
        if tags.get(DATA_TAG):
            return open_data(tags[DATA_TAG])
        try:
            task = self.recorder.load_object("task.json")
        except ArtifactNotFound:
            task = None
        return open_data(handler_data(task))

    # --- run ----------------------------------------------------------------------------------
    #: where each backtest setting is written in a PortAnaRecord config (for error messages)
    _PATHS = {
        **{k: f"config.strategy.kwargs.{k}" for k in ("topk", "n_drop", "risk_degree")},
        **{k: f"config.backtest.exchange_kwargs.{k}" for k in _EXCHANGE_DEFAULTS},
        "ann_scaler": "ann_scaler",
    }

    def generate(self, **kwargs: Any) -> None:
        if self.skip_existing:
            present = set(self.recorder.list_artifacts(self.artifact_path))
            if all(self.get_path(p) in present for p in self.list()):
                return
        signal = self.strategy_kwargs.get("signal")
        if isinstance(signal, (pd.Series, pd.DataFrame)):
            pred = signal if isinstance(signal, pd.DataFrame) else signal.to_frame("score")
        else:
            pred = self.load("pred.pkl")
        source = self.data if isinstance(self.data, (pd.DataFrame, pd.Series)) else self._source()
        settings = {**self.backtest_kwargs, "ann_scaler": self.ann_scaler}
        result = run_backtest(pred, source, settings, "config.backtest", self._PATHS)
        report, analysis = result["report"], result["analysis"]
        metrics: dict[str, float] = {}
        for (key, metric), row in analysis.iterrows():
            metrics[f"1day.{key}.{metric}"] = float(row["risk"])
            metrics[f"1day.{key}.compounded.{metric}"] = float(row["risk_compounded"])
        metrics["1day.turnover"] = float(report["turnover"].mean())
        metrics["1day.cost"] = float(report["cost"].mean())
        self.recorder.log_metrics(**{k: v for k, v in metrics.items() if np.isfinite(v)})
        self.recorder.set_tags(
            **{
                "alphamill.port_analysis.ann_scaler": f"{result['ann_scaler']:g}",
                "alphamill.port_analysis.timing": result["timing"],
            }
        )
        self.save(**{"report_normal_1day.pkl": report, "port_analysis_1day.pkl": analysis})

    @staticmethod
    def analyse(report: pd.DataFrame, ann_scaler: float = ANN_SCALER) -> pd.DataFrame:
        """Risk analysis of the excess returns (rows (series, metric); simple and compounded)."""
        return analyse(report, ann_scaler)


def _data_spec_of(dataset: Any) -> Any:
    """The data folder a dataset's handler reads (None when it is not a plain path)."""
    handler = getattr(dataset, "handler", None)
    spec = getattr(handler, "data_spec", None)
    if spec is None:
        source = getattr(handler, "source", None)
        spec = getattr(source, "path", None)
    return spec if isinstance(spec, (str,)) or hasattr(spec, "__fspath__") else None
