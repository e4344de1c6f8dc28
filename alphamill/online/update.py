"""Extend an online model's predictions to new dates (Qlib's ``PredUpdater``), incrementally.

A trained run holds the predictions of its test segment (``pred.pkl`` from ``SignalRecord``).
:class:`PredUpdater` adds the trading days after the last predicted one, up to ``to_date``:

* the fitted infer processors are **reused**, never refitted: their state
  (``DataHandlerLP.processor_state()``) is computed once per run - by rebuilding the run's
  handler, which fits them on the same fit window - and kept in the online-state store (key
  ``processors:<run_id>``); handlers without infer processors (Alpha158's default) skip that;
* only the new dates are loaded: the run's handler class is built for ``[first new day,
  to_date]`` with no processors, which for Alpha158 slices the whole-history feature cache
  (features of a day never depend on the loaded window), then the saved processors are
  applied and the run's model predicts;
* the new rows go to the state store under ``pred:<run_id>``, one row per date, written once:
  rerunning an update for the same dates changes nothing and a date never appears twice
  (a crash mid-update leaves whole dates only; the rerun adds the rest).

:func:`online_predictions` returns a run's recorded predictions followed by its stored
extension - what collectors and signals read.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from alphamill.errors import ConfigError

__all__ = ["PredUpdater", "online_predictions", "update_online_pred", "pred_key", "rows_to_frame"]

PRED_ARTIFACT = "pred.pkl"


def pred_key(run_id: str) -> str:
    return f"pred:{run_id}"


def _proc_key(run_id: str) -> str:
    return f"processors:{run_id}"


def _recorder(rec: Any) -> Any:
    from alphamill.workflow.recorder import Recorder
    from alphamill.workflow.task_train import recorder_ref

    if isinstance(rec, Mapping):
        return Recorder.from_ref(recorder_ref(rec))
    return rec


def frame_to_rows(pred: pd.Series | pd.DataFrame) -> dict[str, dict[str, list]]:
    """``{ISO date: {"i": instruments, "s": scores}}`` of a (datetime, instrument) prediction."""
    if isinstance(pred, pd.DataFrame):
        pred = pred.iloc[:, 0]
    out: dict[str, dict[str, list]] = {}
    for day, s in pred.groupby(level="datetime", sort=True):
        out[f"{pd.Timestamp(day).date()}"] = {
            "i": [str(x) for x in s.index.get_level_values("instrument")],
            "s": [None if pd.isna(v) else float(v) for v in s.to_numpy()],
        }
    return out


def rows_to_frame(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The inverse of :func:`frame_to_rows`: a ``score`` DataFrame indexed (datetime, instrument)."""
    dates, insts, scores = [], [], []
    for day, row in rows.items():
        n = len(row["i"])
        dates += [pd.Timestamp(day)] * n
        insts += list(row["i"])
        scores += [float("nan") if v is None else v for v in row["s"]]
    idx = pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex(dates, name="datetime").astype("datetime64[us]"),
         pd.Index(insts, dtype="str", name="instrument")])
    return pd.DataFrame({"score": pd.Series(scores, index=idx, dtype="float64")})


def _base_predictions(rec: Any) -> pd.DataFrame:
    pred = rec.load_object(PRED_ARTIFACT)
    if isinstance(pred, pd.Series):
        pred = pred.to_frame("score")
    return pred


def online_predictions(rec: Any, store: Any) -> pd.DataFrame:
    """A run's recorded predictions plus the dates added online (in date order)."""
    rec = _recorder(rec)
    base = _base_predictions(rec)
    extra = store.get_rows(pred_key(rec.id))
    if not extra:
        return base
    ext = rows_to_frame(extra)
    ext.columns = base.columns[:1]
    base_days = base.index.get_level_values("datetime")
    last = base_days.max() if len(base) else None
    if last is not None:
        ext = ext[ext.index.get_level_values("datetime") > last]
    dtype = base.index.levels[0].dtype
    ext = ext.set_axis(ext.index.set_levels(ext.index.levels[0].astype(dtype), level=0))
    return pd.concat([base, ext])


class _FrameDataset:
    """Just enough of a ``DatasetH`` for ``model.predict``: one processed frame."""

    def __init__(self, df: pd.DataFrame):
        self.df = df

    def prepare(self, segments: Any = "test", col_set: Any = "__all", data_key: str = "infer",
                **kwargs: Any) -> pd.DataFrame:
        from alphamill.dataset.handler import fetch_df_by_col

        return fetch_df_by_col(self.df, list(col_set) if isinstance(col_set, tuple) else col_set)


class PredUpdater:
    """Extend one run's predictions to ``to_date`` (see the module docstring).

    ``record`` is a recorder or its reference dict; ``store`` the online-state store.
    ``from_date`` forces the first date to predict (default: the day after the last one
    predicted); dates already stored are never rewritten either way.
    """

    def __init__(self, record: Any, store: Any, to_date: Any, from_date: Any = None):
        self.rec = _recorder(record)
        self.store = store
        self.to_date = pd.Timestamp(to_date)
        self.from_date = None if from_date is None else pd.Timestamp(from_date)
        self._task: dict | None = None

    @property
    def task(self) -> dict:
        if self._task is None:
            from alphamill.workflow.collect import task_of

            self._task = task_of(self.rec)
        return self._task

    def _handler_config(self) -> dict:
        try:
            handler = self.task["dataset"]["kwargs"]["handler"]
        except (KeyError, TypeError):
            handler = None
        if not isinstance(handler, Mapping) or "class" not in handler:
            raise ConfigError(
                f"run {self.rec.id}: its task's handler is not a {{'class', 'kwargs'}} config, so "
                "its predictions cannot be extended", "task.dataset.kwargs.handler")
        return copy.deepcopy(dict(handler))

    def last_date(self) -> pd.Timestamp | None:
        """The last date predicted so far (recorded or added online)."""
        mark = self.store.get_watermark(pred_key(self.rec.id))
        if mark is not None:
            return pd.Timestamp(mark)
        base = _base_predictions(self.rec)
        return base.index.get_level_values("datetime").max() if len(base) else None

    def _calendar(self) -> pd.DatetimeIndex:
        from alphamill.data import calendar_for_task

        return pd.DatetimeIndex(calendar_for_task(self.task))

    def new_dates(self) -> pd.DatetimeIndex:
        cal = self._calendar()
        start = self.from_date
        if start is None:
            last = self.last_date()
            mask = cal <= self.to_date if last is None else (cal > last) & (cal <= self.to_date)
        else:
            mask = (cal >= start) & (cal <= self.to_date)
        days = cal[mask]
        if len(days) and self.from_date is not None:
            stored = set(self.store.get_rows(pred_key(self.rec.id), start=f"{days[0].date()}"))
            days = days[[f"{d.date()}" not in stored for d in days]]
        return days

    def infer_processors(self) -> list[Any]:
        """The run's fitted infer processors, rebuilt from their saved state."""
        from alphamill.features.processors import from_state

        cfg = self._handler_config()
        if not (cfg.get("kwargs") or {}).get("infer_processors"):
            return []
        key = _proc_key(self.rec.id)
        saved = self.store.get_rows(key).get("state")
        if saved is None:
            from alphamill.dataset.dataset import DatasetH

            ds = DatasetH(cfg, {"fit": [cfg["kwargs"].get("fit_start_time"),
                                        cfg["kwargs"].get("fit_end_time")]})
            saved = ds.handler.processor_state()
            self.store.put_rows(key, {"state": saved})
            saved = self.store.get_rows(key)["state"]
        return [from_state(s) for s in saved["infer"]]

    def _raw(self, days: pd.DatetimeIndex) -> pd.DataFrame:
        from alphamill.instance import init_instance_by_config
        from alphamill.kinds import HANDLER

        cfg = self._handler_config()
        kwargs = dict(cfg.get("kwargs") or {})
        kwargs.update(start_time=f"{days[0].date()}", end_time=f"{days[-1].date()}",
                      fit_start_time=None, fit_end_time=None, infer_processors=[],
                      learn_processors=[])
        cfg["kwargs"] = kwargs
        handler = init_instance_by_config(cfg, default_module="alphamill.dataset",
                                          path="task.dataset.kwargs.handler", kind=HANDLER)
        raw = handler.fetch(slice(None, None), col_set="__raw", data_key="raw")
        return raw[raw.index.get_level_values("datetime").isin(days)]

    def prepare_data(self, days: pd.DatetimeIndex) -> _FrameDataset:
        df = self._raw(days)
        for proc in self.infer_processors():
            df = proc(df)
        return _FrameDataset(df)

    def update(self, model: Any = None) -> int:
        """Predict the new dates and store them; returns how many dates were added."""
        days = self.new_dates()
        if not len(days):
            return 0
        if model is None:
            from alphamill.workflow.task_train import load_recorded_model

            model = load_recorded_model(self.rec)
        pred = model.predict(self.prepare_data(days), "test")
        added = self.store.put_rows(pred_key(self.rec.id), frame_to_rows(pred))
        # after the rows: a crash in between only makes the next update redo (and ignore) them
        self.store.set_watermark(pred_key(self.rec.id), f"{days[-1].date()}")
        return added


def update_online_pred(records: Iterable[Any], store: Any, to_date: Any,
                       models: dict[str, Any] | None = None) -> dict[str, int]:
    """Extend every run in ``records`` to ``to_date``; ``{run_id: dates added}``.

    ``models`` caches loaded models by run id across calls (filled as models are loaded).
    """
    out = {}
    for rec in records:
        up = PredUpdater(rec, store, to_date)
        days = up.new_dates()
        if not len(days):
            out[up.rec.id] = 0
            continue
        model = None if models is None else models.get(up.rec.id)
        if model is None:
            from alphamill.workflow.task_train import load_recorded_model

            model = load_recorded_model(up.rec)
            if models is not None:
                models[up.rec.id] = model
        out[up.rec.id] = up.update(model)
    return out
