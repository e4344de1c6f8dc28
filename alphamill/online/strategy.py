"""Online strategies: which tasks to train when, and which trained models go online.

Qlib's ``OnlineStrategy`` interface (``prepare_tasks``, ``prepare_online_models``,
``first_tasks``, ``get_collector``). A strategy's ``name_id`` names both its experiment (where
its runs are recorded) and its entry in the online-state store; the
:class:`~alphamill.online.manager.OnlineManager` binds the store with :meth:`bind`.

:class:`RollingStrategy` rolls a task template with a :class:`~alphamill.task.gen.RollingGen`
over the trading calendar **as known at** ``cur_time`` (the calendar cut at ``cur_time``), so a
window is generated once ``cur_time`` reaches its first test day - i.e. once ``cur_time``
passes the current window's test end - and never sees later dates. Its segments are those of
the offline rolling run over the same calendar, except that the newest window's test segment
ends at ``cur_time`` (its predictions are then extended day by day by
:class:`~alphamill.online.update.PredUpdater`); training segments are identical, so the models
are the same as offline.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from alphamill.errors import ConfigError
from alphamill.task.gen import RollingGen, default_calendar, task_generator

__all__ = ["OnlineStrategy", "RollingStrategy", "OnlineCollector", "model_ref"]

SIGNAL_RECORD = "SignalRecord"


def model_ref(rec: Any, task: Mapping[str, Any]) -> dict[str, Any]:
    """What the state stores about a trained model: its recorder reference plus its window."""
    from alphamill.canonical import task_hash
    from alphamill.workflow.task_train import recorder_ref

    rolling = (task.get("meta") or {}).get("rolling") or {}
    segs = rolling.get("segments") or task["dataset"]["kwargs"].get("segments") or {}
    test = segs.get("test") or [None, None]
    return {
        **recorder_ref(rec),
        "window": int(rolling.get("index", 0)),
        "test_start": None if test[0] is None else str(test[0]),
        "task_hash": task_hash(task),
    }


class OnlineStrategy:
    """Base class: decides the tasks to train and the models to put online."""

    def __init__(self, name_id: str):
        if not isinstance(name_id, str) or not name_id.strip():
            raise ConfigError(f"expected a non-empty name, got {name_id!r}", "name_id")
        self.name_id = name_id
        self.store: Any = None

    def bind(self, store: Any) -> None:
        """Give the strategy the online-state store (done by the manager)."""
        self.store = store

    def state(self) -> Any:
        if self.store is None:
            raise ConfigError(f"strategy {self.name_id!r} is not bound to an online manager", "strategy")
        return self.store.get_state(self.name_id)

    def first_tasks(self, cur_time: Any = None) -> list[dict]:
        """Tasks to train before going online."""
        return []

    def prepare_tasks(self, cur_time: Any, **kwargs: Any) -> list[dict]:
        """Tasks to train now (none if nothing is due)."""
        return []

    def prepare_online_models(self, trained_models: Sequence[dict], cur_time: Any = None) -> list[dict]:
        """Which of the trained model references go online (default: all of them)."""
        return list(trained_models)

    def get_collector(self) -> Any:
        return OnlineCollector(self)


class OnlineCollector:
    """Collects a strategy's predictions: every trained window's recorded predictions plus
    their online extension, keyed ``(model class, variant, window)`` and merged per model with
    :class:`~alphamill.ens.RollingGroup` (the later window wins where windows overlap).

    Only runs the strategy's state lists as trained are read, so a run left behind by a
    routine killed half-way is never collected. Returns ``{"pred": {(model, variant): df}}``.
    """

    def __init__(self, strategy: OnlineStrategy, process_list: Any = None):
        from alphamill.ens import RollingGroup

        self.strategy = strategy
        self.process_list = [RollingGroup()] if process_list is None else list(process_list)

    def collect(self) -> dict[str, dict]:
        from alphamill.online.update import online_predictions
        from alphamill.workflow.collect import default_rec_key
        from alphamill.workflow.recorder import Recorder

        preds: dict[Any, Any] = {}
        for ref in self.strategy.state().trained:
            rec = Recorder.from_ref({k: ref[k] for k in ("experiment_id", "run_id", "experiment_name")})
            preds[default_rec_key(rec)] = online_predictions(rec, self.strategy.store)
        return {"pred": preds}

    def __call__(self) -> dict[str, Any]:
        out = {}
        for art, value in self.collect().items():
            for process in self.process_list:
                value = process(value) if value else value
            out[art] = value
        return out


def _only_signal_record(task: dict) -> dict:
    recs = task.get("record") or []
    if isinstance(recs, Mapping):
        recs = [recs]
    kept = [r for r in recs if isinstance(r, Mapping) and str(r.get("class", "")).endswith(SIGNAL_RECORD)]
    task["record"] = kept or [{"class": SIGNAL_RECORD, "module_path": "alphamill.workflow.record_temp",
                               "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>"}}]
    return task


class RollingStrategy(OnlineStrategy):
    """Roll ``task_template`` (one task dict or a list) with ``rolling_gen`` as time passes.

    * ``first_tasks(cur_time)``: every window up to the one holding ``cur_time``;
    * ``prepare_tasks(cur_time)``: the windows after the newest trained one whose first test
      day is ``<= cur_time`` (normally the next one, once ``cur_time`` passes the current test
      window; several if routines were skipped);
    * ``prepare_online_models(trained)``: the models of the newest window among ``trained``
      (with ``online_newest_only=False``, all of them - Qlib's behaviour after first_train).

    Online tasks record only their predictions (``SignalRecord``) unless ``keep_records``: a
    newly trained window's test segment is a single day, too short for analysis records.
    """

    def __init__(self, name_id: str, task_template: dict | Sequence[dict], rolling_gen: RollingGen,
                 online_newest_only: bool = True, keep_records: bool = False):
        super().__init__(name_id)
        if isinstance(task_template, Mapping):
            task_template = [task_template]
        if isinstance(task_template, (str, bytes)) or not isinstance(task_template, Sequence) or not task_template:
            raise ConfigError("expected a task dict or a non-empty list of them", "task_template")
        for i, t in enumerate(task_template):
            if not isinstance(t, Mapping):
                raise ConfigError(f"expected a task dict, got {type(t).__name__}", f"task_template[{i}]")
        if not isinstance(rolling_gen, RollingGen):
            raise ConfigError(f"expected a RollingGen, got {type(rolling_gen).__name__}", "rolling_gen")
        self.task_template = [copy.deepcopy(dict(t)) for t in task_template]
        self.rolling_gen = rolling_gen
        self.online_newest_only = online_newest_only
        self.keep_records = keep_records

    # -- calendar -------------------------------------------------------------------------
    def calendar(self) -> pd.DatetimeIndex:
        """The full trading calendar of the template's data (or the generator's own)."""
        fixed = getattr(self.rolling_gen, "_fixed_ta", None)
        cal = fixed.cals if fixed is not None else default_calendar(self.task_template[0])
        return pd.DatetimeIndex(pd.to_datetime(list(cal))).sort_values()

    def _gen_until(self, cur_time: Any) -> RollingGen:
        rg = self.rolling_gen
        cal = self.calendar()
        cur = pd.Timestamp(cur_time)
        known = cal[cal <= cur]
        if not len(known):
            raise ConfigError(f"{cur.date()} is before the data's first trading day {cal[0].date()}", "cur_time")
        test_end = rg.test_end
        if test_end is not None and pd.Timestamp(test_end) > known[-1]:
            test_end = None
        return RollingGen(step=rg.step, rtype=rg.rtype, ds_extra_mod_func=rg.ds_extra_mod_func,
                          test_key=rg.test_key, train_key=rg.train_key, trunc_days=rg.trunc_days,
                          task_copy_func=rg.task_copy_func, calendar=known, embargo=rg.embargo,
                          test_end=test_end)

    def first_test_day(self) -> pd.Timestamp:
        return min(pd.Timestamp(w[self.rolling_gen.test_key][0])
                   for w in self.rolling_gen.windows(self.task_template[0]))

    def tasks_until(self, cur_time: Any) -> list[dict]:
        """Every window's tasks as known at ``cur_time`` (the newest clipped at ``cur_time``)."""
        cur = pd.Timestamp(cur_time)
        first = self.first_test_day()
        if cur < first:
            raise ConfigError(f"{cur.date()} is before the first test day {first.date()} of the "
                              "rolling windows: nothing can be online yet", "cur_time")
        tasks = task_generator(self.task_template, self._gen_until(cur))
        return tasks if self.keep_records else [_only_signal_record(t) for t in tasks]

    def boundaries(self, start: Any, end: Any) -> list[pd.Timestamp]:
        """First test days of the windows starting in ``(start, end]`` (retraining dates)."""
        s, e = pd.Timestamp(start), pd.Timestamp(end)
        days = {pd.Timestamp(w[self.rolling_gen.test_key][0])
                for t in self.task_template for w in self._gen_until(e).windows(t)}
        return sorted(d for d in days if s < d <= e)

    # -- Qlib's interface -------------------------------------------------------------------
    def first_tasks(self, cur_time: Any = None) -> list[dict]:
        cur = self.calendar()[-1] if cur_time is None else cur_time
        return self.tasks_until(cur)

    def prepare_tasks(self, cur_time: Any, **kwargs: Any) -> list[dict]:
        trained = self.state().trained
        newest = max((r["window"] for r in trained), default=-1)
        return [t for t in self.tasks_until(cur_time) if t["meta"]["rolling"]["index"] > newest]

    def prepare_online_models(self, trained_models: Sequence[dict], cur_time: Any = None) -> list[dict]:
        if not trained_models:
            return []
        if not self.online_newest_only:
            return list(trained_models)
        newest = max(r["window"] for r in trained_models)
        return [r for r in trained_models if r["window"] == newest]

    def __repr__(self) -> str:
        return f"RollingStrategy({self.name_id!r}, step={self.rolling_gen.step})"
