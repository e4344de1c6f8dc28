"""The online loop (Qlib's ``OnlineManager``): train, switch, extend predictions, make signals.

``OnlineManager(strategies, trainer=None, begin_time=None, freq="day")`` keeps Qlib's names and
meaning, with the state in the task-pool store (:mod:`alphamill.online.state`) instead of
recorder tags:

* :meth:`first_train` trains each strategy's first tasks and puts online only the newest
  window's models (configurable on the strategy);
* :meth:`routine` (``cur_time`` default: the data's last day) under a store-wide lock:
  trains what is due, extends the outgoing models' predictions up to the day before the new
  window, switches atomically, extends the online models to ``cur_time``, then appends the new
  dates of the signal. Every step is idempotent: a finished training is found again by its
  task hash (not retrained), prediction and signal rows are written once per date, and the
  switch is a compare-and-set. So a rerun for the same day changes nothing, and a routine
  killed half-way and rerun ends in the same state as one that was never interrupted;
* :meth:`simulate` replays ``[begin_time, end_time]`` but retrains only at window boundaries
  and extends predictions in one batch between them, which gives the same models and merged
  predictions as the offline rolling run over the same windows;
* :meth:`prepare_signals` / :meth:`get_signals`: the signal is ``prepare_func`` (default
  :class:`~alphamill.ens.AverageEnsemble`) over every strategy's merged predictions; only dates
  after the signal watermark are appended (``over_write=True`` rebuilds it), each stored with
  the run ids of the models that produced it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from alphamill.errors import AlphamillError, ConfigError
from alphamill.online.state import OnlineStateStore, open_state_store
from alphamill.online.strategy import OnlineStrategy, model_ref
from alphamill.online.update import frame_to_rows, rows_to_frame, update_online_pred

__all__ = ["OnlineManager", "OnlineBusy", "OnlineConflict", "SIGNAL_KEY", "ROUTINE_LOCK"]

logger = logging.getLogger("alphamill.online")

SIGNAL_KEY = "signal"
ROUTINE_LOCK = "routine"
DEFAULT_POOL = "online"


class OnlineBusy(AlphamillError):
    """Another routine holds the lock (the message says who and until when)."""


class OnlineConflict(AlphamillError):
    """The online state changed under this routine (another writer switched first)."""


def _day(value: Any) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"expected a date like 2020-01-31, got {value!r}", "cur_time") from None
    if ts is pd.NaT:
        raise ConfigError(f"expected a date like 2020-01-31, got {value!r}", "cur_time")
    return ts.normalize()


def _iso(ts: pd.Timestamp) -> str:
    return f"{pd.Timestamp(ts).date()}"


class OnlineManager:
    """Serve ``strategies`` online (see the module docstring).

    ``trainer`` (default :class:`~alphamill.trainer.TrainerR` without a progress bar) trains in
    each strategy's experiment (``name_id``). The state lives under ``pool`` in the store at
    ``url`` (default: the ``pool_url`` setting), or in ``store``. ``lock_ttl`` bounds how long
    a routine may hold the lock (judged by the store's clock); ``lock_wait`` is how long a
    second routine waits for it before raising :class:`OnlineBusy`.
    """

    def __init__(
        self,
        strategies: OnlineStrategy | Sequence[OnlineStrategy],
        trainer: Any = None,
        begin_time: Any = None,
        freq: str = "day",
        *,
        pool: str = DEFAULT_POOL,
        url: str | None = None,
        store: OnlineStateStore | None = None,
        lock_ttl: float = 6 * 3600.0,
        lock_wait: float = 0.0,
    ):
        if freq != "day":
            raise ConfigError(f"only daily routines are supported, got {freq!r}", "freq")
        if isinstance(strategies, OnlineStrategy):
            strategies = [strategies]
        strategies = list(strategies)
        names = [s.name_id for s in strategies if isinstance(s, OnlineStrategy)]
        if len(names) != len(strategies) or not strategies:
            raise ConfigError("expected one or more OnlineStrategy objects", "strategies")
        if len(set(names)) != len(names):
            raise ConfigError(f"strategy names repeat: {names}", "strategies")
        if trainer is None:
            from alphamill.trainer import TrainerR

            trainer = TrainerR(progress=False)
        self.trainer = trainer
        self.freq = freq
        self.store = store if store is not None else open_state_store(pool, url)
        self.strategies: list[OnlineStrategy] = []
        self.begin_time = None if begin_time is None else _day(begin_time)
        self.lock_ttl = float(lock_ttl)
        self.lock_wait = float(lock_wait)
        self.cur_time: pd.Timestamp | None = None
        self._models: dict[str, Any] = {}
        self.add_strategy(strategies)

    # -- strategies ---------------------------------------------------------------------------
    def add_strategy(self, strategies: OnlineStrategy | Sequence[OnlineStrategy]) -> None:
        """Add strategies (Qlib: they are first-trained when the manager already runs)."""
        if isinstance(strategies, OnlineStrategy):
            strategies = [strategies]
        for s in strategies:
            if any(s.name_id == o.name_id for o in self.strategies):
                raise ConfigError(f"a strategy named {s.name_id!r} is already managed", "strategies")
            s.bind(self.store)
            self.strategies.append(s)

    def _calendar(self) -> pd.DatetimeIndex:
        cal = getattr(self.strategies[0], "calendar", None)
        if not callable(cal):
            raise ConfigError("the strategies give no trading calendar; pass cur_time", "cur_time")
        return cal()

    def _trading_day(self, value: Any) -> pd.Timestamp:
        """The last trading day on or before ``value`` (default: the data's last day)."""
        cal = self._calendar()
        if value is None:
            return cal[-1]
        d = _day(value)
        known = cal[cal <= d]
        if not len(known):
            raise ConfigError(f"{d.date()} is before the data's first trading day {cal[0].date()}",
                              "cur_time")
        return known[-1]

    # -- training and switching -----------------------------------------------------------------
    def _find_trained(self, name: str, hashes: set[str]) -> dict[str, Any]:
        """Finished runs of ``name`` by task hash, so a rerun never trains a task twice."""
        from alphamill.workflow.recorder import R, TrackingError

        try:
            exp = R.get_exp(experiment_name=name, create=False)
        except TrackingError:
            return {}
        found = {}
        for rec in exp.list_recorders("FINISHED").values():
            tags = rec.list_tags()
            h = tags.get("alphamill.task_hash")
            if h in hashes and tags.get("alphamill.stage", "done") == "done" and h not in found:
                found[h] = rec
        return found

    def _train(self, strategy: OnlineStrategy, tasks: list[dict]) -> list[dict]:
        from alphamill.canonical import task_hash

        if not tasks:
            return []
        hashes = [task_hash(t) for t in tasks]
        found = self._find_trained(strategy.name_id, set(hashes))
        todo = [t for t, h in zip(tasks, hashes, strict=True) if h not in found]
        if todo:
            logger.info("%s: training %d task(s)", strategy.name_id, len(todo))
            recs = self.trainer.train(todo, experiment_name=strategy.name_id)
            if self.trainer.is_delay():
                recs = self.trainer.end_train(recs, experiment_name=strategy.name_id)
            for t, rec in zip(todo, recs, strict=True):
                found[task_hash(t)] = rec
        return [model_ref(found[h], t) for t, h in zip(tasks, hashes, strict=True)]

    def _switch(self, strategy: OnlineStrategy, trained: list[dict], cur: pd.Timestamp,
                action: str) -> bool:
        """Record ``trained`` and put the strategy's choice online: one compare-and-set."""
        st = strategy.state()
        known = {r["run_id"] for r in st.trained}
        new = [r for r in trained if r["run_id"] not in known]
        online = strategy.prepare_online_models(trained, cur)
        if not new and {r["run_id"] for r in online} == {r["run_id"] for r in st.online}:
            return False
        entry = {
            "action": action,
            "cur_time": _iso(cur),
            "online": [r["run_id"] for r in online],
            "windows": sorted({r["window"] for r in online}),
            "previous": [r["run_id"] for r in st.online],
        }
        info = {**st.info, "last_switch": _iso(cur)}
        if not self.store.switch(strategy.name_id, st.version, online, st.trained + new, info, entry):
            raise OnlineConflict(
                f"strategy {strategy.name_id!r}: the online state changed while this routine ran "
                "(another routine switched first); run the routine again")
        return True

    def first_train(self, strategies: Sequence[OnlineStrategy] | None = None,
                    model_kwargs: dict | None = None, cur_time: Any = None) -> None:
        """Train each strategy's first tasks and put its chosen models online.

        A strategy that already has a stored state is left as it is (first_train is
        idempotent). Training happens as of ``cur_time`` (default ``begin_time``, else the
        data's last day); predictions are extended to that day.
        """
        cur = self._trading_day(cur_time if cur_time is not None else self.begin_time)
        self.cur_time = cur
        for s in strategies or self.strategies:
            if s.state().version:
                continue
            trained = self._train(s, s.first_tasks(cur))
            if not trained:
                raise ConfigError(f"strategy {s.name_id!r} has no task to train at {cur.date()}",
                                  "strategies")
            self._switch(s, trained, cur, "first_train")
        self.update_online_pred(cur)

    def routine(self, cur_time: Any = None, task_kwargs: dict | None = None,
                model_kwargs: dict | None = None, signal_kwargs: dict | None = None) -> dict[str, Any]:
        """One day of online work for ``cur_time`` (see the module docstring).

        Returns a summary: ``{"date", "trained": {strategy: n}, "switched": [...], "signal_dates": n}``.
        """
        cur = self._trading_day(cur_time)
        with self._routine_lock():
            return self._routine(cur, task_kwargs or {}, signal_kwargs or {})

    def _routine(self, cur: pd.Timestamp, task_kwargs: dict, signal_kwargs: dict) -> dict[str, Any]:
        self.cur_time = cur
        summary: dict[str, Any] = {"date": _iso(cur), "trained": {}, "switched": []}
        for s in self.strategies:
            if not s.state().version:
                self.first_train([s], cur_time=cur)
                summary["switched"].append(s.name_id)
                continue
            tasks = s.prepare_tasks(cur, **task_kwargs)
            trained = self._train(s, tasks)
            summary["trained"][s.name_id] = len(trained)
            if not trained:
                continue
            starts = [pd.Timestamp(r["test_start"]) for r in s.prepare_online_models(trained, cur)
                      if r.get("test_start")]
            if starts:  # the outgoing models cover every day before the new window
                self._update(s.state().online, min(starts) - pd.Timedelta(days=1))
            if self._switch(s, trained, cur, "switch"):
                summary["switched"].append(s.name_id)
        self.update_online_pred(cur)
        summary["signal_dates"] = self.prepare_signals(**signal_kwargs)
        return summary

    class _Lock:
        def __init__(self, mgr: OnlineManager):
            self.mgr = mgr

        def __enter__(self) -> None:
            store, deadline = self.mgr.store, time.monotonic() + self.mgr.lock_wait
            while not store.acquire_lock(ROUTINE_LOCK, ttl=self.mgr.lock_ttl):
                if time.monotonic() >= deadline:
                    h = store.lock_holder(ROUTINE_LOCK) or {}
                    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(h.get("expires", 0)))
                    raise OnlineBusy(
                        f"another routine is running on pool {store.pool!r} (host {h.get('host')}, "
                        f"pid {h.get('pid')}, lock held until {until}); this one did nothing - "
                        "run it again later or pass --wait SECONDS")
                time.sleep(0.2)

        def __exit__(self, *exc: object) -> None:
            self.mgr.store.release_lock(ROUTINE_LOCK)

    def _routine_lock(self) -> OnlineManager._Lock:
        return OnlineManager._Lock(self)

    # -- predictions and signals ---------------------------------------------------------------
    def _update(self, refs: Sequence[dict], to_date: Any) -> dict[str, int]:
        return update_online_pred(refs, self.store, to_date, models=self._models)

    def update_online_pred(self, to_date: Any = None) -> dict[str, int]:
        """Extend every online model's predictions to ``to_date`` (default ``cur_time``)."""
        to = self._trading_day(to_date if to_date is not None else self.cur_time)
        out: dict[str, int] = {}
        for s in self.strategies:
            out.update(self._update(s.state().online, to))
        return out

    def get_collector(self) -> Callable[[], dict]:
        """``() -> {(strategy, model, variant): merged predictions}`` over all strategies."""

        def collect() -> dict:
            out = {}
            for s in self.strategies:
                for key, pred in s.get_collector()()["pred"].items():
                    out[(s.name_id, *(key if isinstance(key, tuple) else (key,)))] = pred
            return out

        return collect

    def _producers(self) -> list[tuple[pd.Timestamp, str, str]]:
        out = []
        for s in self.strategies:
            for r in s.state().trained:
                if r.get("test_start"):
                    out.append((pd.Timestamp(r["test_start"]), s.name_id, r["run_id"]))
        return sorted(out)

    def prepare_signals(self, prepare_func: Callable[[dict], Any] | None = None,
                        over_write: bool = False) -> int:
        """Append the signal's new dates (after the watermark); returns how many were added."""
        from alphamill.ens import AverageEnsemble

        prepare_func = prepare_func or AverageEnsemble()
        collected = self.get_collector()()
        if not collected:
            return 0
        signal = prepare_func(collected)
        if isinstance(signal, pd.Series):
            signal = signal.to_frame("score")
        if over_write:
            self.store.delete_rows(SIGNAL_KEY)
            mark = None
        else:
            mark = self.store.get_watermark(SIGNAL_KEY)
        if self.cur_time is not None:
            signal = signal[signal.index.get_level_values("datetime") <= self.cur_time]
        if mark is not None:
            signal = signal[signal.index.get_level_values("datetime") > pd.Timestamp(mark)]
        rows = frame_to_rows(signal)
        producers = self._producers()
        for day, row in rows.items():
            d = pd.Timestamp(day)
            latest: dict[str, tuple[pd.Timestamp, str]] = {}
            for start, name, run_id in producers:
                if start <= d and (name not in latest or start > latest[name][0]):
                    latest[name] = (start, run_id)
            row["models"] = {name: [rid for st, n, rid in producers if n == name and st == v[0]]
                             for name, v in latest.items()}
        added = self.store.put_rows(SIGNAL_KEY, rows)
        if rows:
            self.store.set_watermark(SIGNAL_KEY, max(rows))
        return added

    def get_signals(self, start: Any = None, end: Any = None) -> pd.DataFrame:
        """The stored signal (column ``score``, index (datetime, instrument))."""
        rows = self.store.get_rows(SIGNAL_KEY, None if start is None else _iso(_day(start)),
                                   None if end is None else _iso(_day(end)))
        return rows_to_frame(rows)

    def signal_models(self, date: Any) -> dict[str, list[str]]:
        """Run ids that produced the stored signal of ``date`` (per strategy)."""
        d = _iso(_day(date))
        row = self.store.get_rows(SIGNAL_KEY, d, d).get(d)
        return {} if row is None else row.get("models", {})

    # -- simulation ----------------------------------------------------------------------------
    def simulate(self, end_time: Any, begin_time: Any = None, frequency: str = "day",
                 task_kwargs: dict | None = None, model_kwargs: dict | None = None,
                 signal_kwargs: dict | None = None) -> pd.DataFrame:
        """Replay ``[begin_time, end_time]``: retrain only at window boundaries, extend the
        predictions in one batch between them, and return the signals.

        Equivalent to running :meth:`routine` on every trading day (every step is idempotent
        and nothing but the boundaries trains), at the cost of one routine per window.
        """
        if frequency != "day":
            raise ConfigError(f"only daily simulation is supported, got {frequency!r}", "frequency")
        if begin_time is not None:
            self.begin_time = _day(begin_time)
        if self.begin_time is None:
            raise ConfigError("simulate needs a begin_time (here or in the manager)", "begin_time")
        begin = self._trading_day(self.begin_time)
        end = self._trading_day(end_time)
        if end < begin:
            raise ConfigError(f"{end.date()} is before begin_time {begin.date()}", "end_time")
        with self._routine_lock():
            self.first_train()
            self.prepare_signals(**(signal_kwargs or {}))
            bounds: set[pd.Timestamp] = set()
            for s in self.strategies:
                fn = getattr(s, "boundaries", None)
                if callable(fn):
                    bounds.update(fn(begin, end))
            cal = self._calendar()
            for b in sorted(bounds):
                prev = cal[cal < b]
                if len(prev) and prev[-1] > begin:
                    self.cur_time = prev[-1]
                    self.update_online_pred(prev[-1])
                self._routine(b, task_kwargs or {}, signal_kwargs or {})
            self._routine(end, task_kwargs or {}, signal_kwargs or {})
        return self.get_signals(begin, end)

    def status(self) -> list[dict[str, Any]]:
        """Per strategy: version, online runs and windows, last switch, next retrain date."""
        out = []
        for s in self.strategies:
            st = s.state()
            nxt = None
            fn = getattr(s, "boundaries", None)
            if callable(fn) and st.online:
                cal = self._calendar()
                last = max(pd.Timestamp(r["test_start"]) for r in st.online if r.get("test_start"))
                step = getattr(getattr(s, "rolling_gen", None), "step", None)
                if step is not None:
                    i = int(cal.searchsorted(last)) + int(step)
                    nxt = _iso(cal[i]) if i < len(cal) else f"{int(step)} trading days after {_iso(last)}"
            out.append({
                "strategy": s.name_id,
                "version": st.version,
                "online": [{"run_id": r["run_id"], "window": r["window"], "test_start": r.get("test_start")}
                           for r in st.online],
                "trained": len(st.trained),
                "last_switch": st.info.get("last_switch"),
                "next_retrain": nxt,
            })
        return out

    def close(self) -> None:
        self.store.close()
