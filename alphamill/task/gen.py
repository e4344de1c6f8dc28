"""Task generators: turn one task template into many (Qlib's ``qlib.workflow.task.gen``).

``task_generator(tasks, [g1, g2])`` applies each generator in turn to every task the
previous one produced (the cartesian product), never mutating its input. Every generated
task records what made it under ``task["meta"]`` (``meta["rolling"]``, ``meta["horizon"]``,
``meta["grid"]``); chained generators add their own entries to the same dict, so
collectors and reports can group results by window, horizon or hyper-parameters.

Generated segments are ISO date strings (``"2020-01-31"``) so tasks stay plain JSON;
template segments may be strings, dates or timestamps.

Calendars: :class:`RollingGen` and :class:`MultiHorizonGen` count trading days on a
calendar given as ``calendar=`` (a sequence of dates). Without one they call
:func:`default_calendar`, the hook through which the data layer supplies the dataset's
own calendar (``alphamill.data.calendar_for_task``).

Deliberate differences from Qlib's ``RollingGen`` (everything else follows Qlib):

* the last window's test segment ends at the requested test end (the template's test
  end, or ``test_end=``) instead of running ``step`` days past it; the first window's
  too, if the whole test span is shorter than ``step``;
* an open-ended test end (``None``) explicitly means "up to the last calendar date": the
  windows then stop at the calendar's end, and the last window's end is that date (not
  ``None``), so a task never depends on data that appears later;
* ``handler_mod`` also moves the processors' fit window (``fit_start_time`` /
  ``fit_end_time`` of the handler and of processors that declare them) to each window's
  train segment, so normalisation statistics never see valid or test data;
* ``embargo=N`` leaves at least N trading days between the end of train and the start of
  valid, and between the end of valid and the start of test, in every window;
* a segment that holds no trading day, or a truncation/embargo that empties a segment,
  is a :class:`~alphamill.errors.ConfigError` naming the segment (Qlib asserts or
  silently produces ``None`` bounds).
"""

from __future__ import annotations

import abc
import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from alphamill.errors import ConfigError
from alphamill.task.utils import TimeAdjuster, to_timestamp

__all__ = [
    "TaskGen",
    "task_generator",
    "RollingGen",
    "MultiHorizonGen",
    "GridGen",
    "handler_mod",
    "trunc_segments",
    "default_calendar",
]

SEGMENTS_PATH = "task.dataset.kwargs.segments"
HANDLER_PATH = "task.dataset.kwargs.handler"


def default_calendar(task: dict) -> Sequence[Any]:
    """The trading calendar of ``task``'s dataset, used when no ``calendar=`` is given."""
    try:
        from alphamill.data import calendar_for_task  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(
            "no trading calendar: pass calendar=[...] (a sequence of trading dates) to the "
            "generator; the data layer does not provide a default calendar "
            "(alphamill.data.calendar_for_task)",
            "calendar",
        ) from None
    return calendar_for_task(task)


def task_generator(
    tasks: dict | Iterable[dict], generators: TaskGen | Iterable[TaskGen]
) -> list[dict]:
    """Apply each generator in turn to every task (3 templates x 2 x 3 tasks -> 18 tasks).

    ``tasks`` is one task dict or a list of them; ``generators`` one :class:`TaskGen` or a
    list. The input is deep-copied first and never modified.
    """
    if isinstance(tasks, Mapping):
        tasks = [tasks]
    elif isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise ConfigError(
            f"expected a task dict or a list of them, got {type(tasks).__name__}", "tasks"
        )
    tasks = list(tasks)
    for i, t in enumerate(tasks):
        if not isinstance(t, Mapping):
            raise ConfigError(f"expected a task dict, got {type(t).__name__}", f"tasks[{i}]")
    if isinstance(generators, TaskGen):
        generators = [generators]
    elif not isinstance(generators, Iterable):
        raise ConfigError(
            f"expected a TaskGen or a list of them, got {type(generators).__name__}", "generators"
        )
    generators = list(generators)
    for i, g in enumerate(generators):
        if not isinstance(g, TaskGen):
            raise ConfigError(f"expected a TaskGen, got {type(g).__name__}", f"generators[{i}]")
    out = [copy.deepcopy(dict(t)) for t in tasks]
    for gen in generators:
        out = [new for t in out for new in gen.generate(t)]
    return out


class TaskGen(metaclass=abc.ABCMeta):
    """Base class of generators: one task template in, a list of tasks out."""

    @abc.abstractmethod
    def generate(self, task: dict) -> list[dict]:
        """Return the tasks generated from ``task`` (which must not be modified)."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[dict]:
        return self.generate(*args, **kwargs)


# ---------------------------------------------------------------- helpers


def _writable(task: dict, keys: Sequence[str], where: str = "task") -> dict:
    """Copy the dicts along ``keys`` and return the innermost copy.

    Writing into it changes ``task`` only, even when ``task`` is a shallow copy sharing its
    nested dicts with the template (``task_copy_func=copy.copy``).
    """
    node = task
    for k in keys:
        where = f"{where}.{k}"
        child = node.get(k)
        if not isinstance(child, dict):
            raise ConfigError(f"expected a mapping, got {type(child).__name__}", where)
        child = dict(child)
        node[k] = child
        node = child
    return node


def _meta(task: dict) -> dict:
    meta = task.get("meta")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ConfigError(f"expected a dict of metadata, got {type(meta).__name__}", "task.meta")
    return dict(meta)


def _segments(task: dict) -> dict[str, Sequence[Any]]:
    if not isinstance(task, dict):
        raise ConfigError(f"expected a task dict, got {type(task).__name__}", "task")
    node: Any = task
    where = "task"
    for k in ("dataset", "kwargs", "segments"):
        where = f"{where}.{k}"
        if not isinstance(node, dict) or k not in node:
            raise ConfigError(
                "missing; a task needs dataset.kwargs.segments such as "
                "{'train': [start, end], 'valid': [start, end], 'test': [start, end]}",
                where,
            )
        node = node[k]
    if not isinstance(node, dict) or not node:
        raise ConfigError(f"expected a non-empty mapping of segments, got {node!r}", SEGMENTS_PATH)
    for k, seg in node.items():
        if not isinstance(seg, (list, tuple)) or len(seg) != 2:
            raise ConfigError(f"expected a [start, end] pair, got {seg!r}", f"{SEGMENTS_PATH}.{k}")
    return node


def _check_int(value: Any, name: str, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"expected an integer >= {minimum}, got {value!r}", name)


def _calendar(ta: TimeAdjuster | None, task: dict) -> TimeAdjuster:
    return ta if ta is not None else TimeAdjuster(default_calendar(task))


def _align(ta: TimeAdjuster, segs: Mapping[str, Sequence[Any]]) -> dict[str, list[int]]:
    """Calendar indices of every segment; ``None`` start/end mean the calendar's ends."""
    last = len(ta) - 1
    out: dict[str, list[int]] = {}
    for k, (s, e) in segs.items():
        where = f"{SEGMENTS_PATH}.{k}"
        si = 0 if s is None else ta.align_idx(s, "start", f"{where}[0]")
        ei = last if e is None else ta.align_idx(e, "end", f"{where}[1]")
        if si > ei:
            raise ConfigError(
                f"[{s}, {e}] holds no trading day of the calendar ({ta.iso(0)} .. {ta.iso(-1)})",
                where,
            )
        out[k] = [si, ei]
    return out


def _truncate(
    ta: TimeAdjuster, aligned: dict[str, list[int]], test_key: str, days: int, why: str
) -> None:
    """Qlib's ``trunc_segments`` on indices: cap every non-test bound at test start - days."""
    test_start = aligned[test_key][0]
    cut = test_start - days
    for k, seg in aligned.items():
        if k == test_key:
            continue
        if cut < 0:
            raise ConfigError(
                f"{why} leaves no trading day before the test start "
                f"{ta.iso(test_start)} (the calendar starts {ta.iso(0)})",
                f"{SEGMENTS_PATH}.{k}",
            )
        aligned[k] = [min(seg[0], cut), min(seg[1], cut)]


def trunc_segments(ta: TimeAdjuster, segments: dict, days: int, test_key: str = "test") -> None:
    """Qlib's helper: truncate non-test segments ``days`` trading days before the test start.

    Changes ``segments`` in place (as Qlib); bounds become ISO date strings.
    """
    aligned = _align(ta, segments)
    if test_key not in aligned:
        raise ConfigError(f"no {test_key!r} segment", SEGMENTS_PATH)
    _truncate(ta, aligned, test_key, days, f"trunc_days={days}")
    for k, (s, e) in aligned.items():
        if k != test_key:
            segments[k] = [ta.iso(s), ta.iso(e)]


def _set_fit_window(handler_kwargs: dict, train: Sequence[Any]) -> None:
    """Fit the handler's processors on the train segment only."""
    handler_kwargs["fit_start_time"], handler_kwargs["fit_end_time"] = train[0], train[1]
    for key in ("infer_processors", "learn_processors"):
        procs = handler_kwargs.get(key)
        if not isinstance(procs, list):
            continue
        new = []
        for p in procs:
            if (
                isinstance(p, dict)
                and isinstance(p.get("kwargs"), dict)
                and {"fit_start_time", "fit_end_time"} & p["kwargs"].keys()
            ):
                p = {
                    **p,
                    "kwargs": {**p["kwargs"], "fit_start_time": train[0], "fit_end_time": train[1]},
                }
            new.append(p)
        handler_kwargs[key] = new


def _handler_kwargs(task: dict) -> dict | None:
    """A writable copy of the handler's kwargs, or None if the handler is not a config dict."""
    ds_kwargs = task["dataset"]["kwargs"]
    handler = ds_kwargs.get("handler")
    if not isinstance(handler, dict):
        return None
    if handler.get("kwargs") is None:
        _writable(task, ("dataset", "kwargs", "handler"))["kwargs"] = {}
    return _writable(task, ("dataset", "kwargs", "handler", "kwargs"))


def handler_mod(task: dict, rolling_gen: RollingGen) -> None:
    """Fit a rolled task's handler to its window (Qlib's ``handler_mod``, extended).

    * ``end_time`` is extended to the window's test end when it ends earlier (``None``
      means "no end" and is kept);
    * ``fit_start_time``/``fit_end_time`` (of the handler and of processors that declare
      them) become the window's train segment. Every handler of alphamill (and Qlib's
      Alpha158/Alpha360) accepts them; for a handler that does not, pass
      ``ds_extra_mod_func=None`` or a function of your own.

    A handler given as a name, path or instance is left as is (as Qlib).
    """
    hk = _handler_kwargs(task)
    if hk is None:
        return
    segs = task["dataset"]["kwargs"]["segments"]
    test_end = segs[rolling_gen.test_key][1]
    end = hk.get("end_time")
    if (
        end is not None
        and test_end is not None
        and to_timestamp(end, f"{HANDLER_PATH}.kwargs.end_time")
        < to_timestamp(test_end, "test end")
    ):
        hk["end_time"] = test_end
    train = segs.get(rolling_gen.train_key)
    if train is not None:
        _set_fit_window(hk, train)


# ---------------------------------------------------------------- RollingGen


class RollingGen(TaskGen):
    """Roll a task over time: one task per test window of ``step`` trading days.

    The first window is the template's own segments with the test segment cut to its
    first ``step`` trading days; each following window moves every segment ``step``
    trading days forward (``ROLL_SD``, sliding), or every segment but the train start
    (``ROLL_EX``, expanding: the train segment grows). Windows continue until the test
    windows together cover the requested test span exactly: from the template's test start
    to ``test_end`` if given, else to the template's test end, where ``None`` means the
    last calendar date (an end past the calendar is cut there too). The last window is
    clipped to that end. Regenerating after the calendar grows keeps every earlier
    window's task (and hash) unchanged except the last, clipped one.

    ``trunc_days=d`` caps every bound of the non-test segments at the ``d``-th trading day
    before the test start (Qlib's ``TimeAdjuster.truncate``: index ``test_start - d``). A label
    that reads the close ``h`` days ahead (``h = 2`` for Alpha158's default
    ``Ref($close, -2)/Ref($close, -1) - 1``) then reads up to ``h - d`` days past the test
    start, so ``d = h + 1`` keeps every training label strictly before the test window (the
    rule of Qlib's docstring, "2 + 1 == 3", and of :class:`MultiHorizonGen`), while
    ``d = h`` (what Qlib's rolling benchmark passes) lets the last label end at the first test
    day's close. ``embargo=n`` (n > 0) additionally ends every non-test
    segment at least ``n`` trading days before the next segment starts (train -> valid,
    valid -> test). Both are applied to the first window and move with it.

    ``ds_extra_mod_func(task, rolling_gen)`` is called on each generated task
    (default :func:`handler_mod`); ``task_copy_func`` copies the template per window.
    """

    ROLL_EX = TimeAdjuster.SHIFT_EX
    ROLL_SD = TimeAdjuster.SHIFT_SD

    def __init__(
        self,
        step: int = 40,
        rtype: str = ROLL_EX,
        ds_extra_mod_func: Callable[[dict, RollingGen], None] | None = handler_mod,
        test_key: str = "test",
        train_key: str = "train",
        trunc_days: int | None = None,
        task_copy_func: Callable[[dict], dict] = copy.deepcopy,
        calendar: Iterable[Any] | None = None,
        embargo: int = 0,
        test_end: Any = None,
    ):
        _check_int(step, "step", 1)
        if rtype not in (self.ROLL_EX, self.ROLL_SD):
            raise ConfigError(
                f"expected RollingGen.ROLL_EX ({self.ROLL_EX!r}) or RollingGen.ROLL_SD "
                f"({self.ROLL_SD!r}), got {rtype!r}",
                "rtype",
            )
        _check_int(trunc_days, "trunc_days", 0, allow_none=True)
        _check_int(embargo, "embargo", 0)
        if test_end is not None:
            to_timestamp(test_end, "test_end")
        self.step = step
        self.rtype = rtype
        self.ds_extra_mod_func = ds_extra_mod_func
        self.test_key = test_key
        self.train_key = train_key
        self.trunc_days = trunc_days
        self.task_copy_func = task_copy_func
        self.embargo = embargo
        self.test_end = test_end
        self._fixed_ta = TimeAdjuster(calendar) if calendar is not None else None
        #: the calendar of the task being generated (Qlib's attribute, used by handler_mod)
        self.ta: TimeAdjuster | None = self._fixed_ta

    def _update_task_segs(self, task: dict, segs: dict) -> None:
        _writable(task, ("dataset", "kwargs"))["segments"] = copy.deepcopy(segs)
        if self.ds_extra_mod_func is not None:
            self.ds_extra_mod_func(task, self)

    def _first_window(self, task: dict, ta: TimeAdjuster) -> tuple[dict[str, list[int]], int]:
        """Calendar indices of the first window's segments and of the last test day."""
        segs = _segments(task)
        if self.test_key not in segs:
            raise ConfigError(
                f"no {self.test_key!r} segment to roll (test_key={self.test_key!r}); "
                f"segments are {sorted(segs)}",
                SEGMENTS_PATH,
            )
        aligned = _align(ta, segs)
        test_start, end = aligned[self.test_key]
        if self.test_end is not None:
            end = ta.align_idx(self.test_end, "end", "test_end")
            if end < test_start:
                raise ConfigError(
                    f"{self.test_end} is before the first test day {ta.iso(test_start)}",
                    "test_end",
                )
        if self.trunc_days is not None:
            _truncate(ta, aligned, self.test_key, self.trunc_days, f"trunc_days={self.trunc_days}")
        if self.embargo:
            starts = {k: s for k, (s, _) in aligned.items() if k != self.test_key}
            for k, (s, e) in list(aligned.items()):
                if k == self.test_key:
                    continue
                nxt = [test_start] + [s2 for k2, s2 in starts.items() if k2 != k and s2 > s]
                limit = min(nxt) - 1 - self.embargo
                if limit < s:
                    raise ConfigError(
                        f"embargo={self.embargo} leaves this segment no trading day: it starts "
                        f"{ta.iso(s)} and must end {self.embargo} trading days before "
                        f"the next segment starts ({ta.iso(min(nxt))})",
                        f"{SEGMENTS_PATH}.{k}",
                    )
                aligned[k] = [s, min(e, limit)]
        return aligned, end

    def windows(self, task: dict) -> list[dict[str, tuple[Any, Any]]]:
        """The ``(start, end)`` trading days of every window's segments, as Timestamps."""
        ta = _calendar(self._fixed_ta, task)
        return [
            {k: (ta.cals[s], ta.cals[e]) for k, (s, e) in w.items()}
            for w in self._index_windows(*self._first_window(task, ta), len(ta))
        ]

    def _index_windows(
        self, first: dict[str, list[int]], end: int, n: int
    ) -> list[dict[str, tuple[int, int]]]:
        last = n - 1
        test_start = first[self.test_key][0]
        out = []
        i = 0
        while test_start + i * self.step <= end:
            shift = i * self.step
            w: dict[str, tuple[int, int]] = {}
            for k, (s, e) in first.items():
                if k == self.test_key:
                    w[k] = (test_start + shift, min(test_start + shift + self.step - 1, end))
                elif k == self.train_key and self.rtype == self.ROLL_EX:
                    w[k] = (s, min(e + shift, last))
                else:
                    w[k] = (min(s + shift, last), min(e + shift, last))
            out.append(w)
            i += 1
        return out

    def generate(self, task: dict) -> list[dict]:
        """One task per rolling window (see the class docstring)."""
        ta = _calendar(self._fixed_ta, task)
        self.ta = ta
        first, end = self._first_window(task, ta)
        res = []
        for i, w in enumerate(self._index_windows(first, end, len(ta))):
            segments = {k: [ta.iso(s), ta.iso(e)] for k, (s, e) in w.items()}
            t = self.task_copy_func(task)
            self._update_task_segs(t, segments)
            meta = _meta(t)
            meta["rolling"] = {
                "index": i,
                "segments": copy.deepcopy(segments),
                "step": self.step,
                "rtype": self.rtype,
            }
            t["meta"] = meta
            res.append(t)
        return res


# ---------------------------------------------------------------- MultiHorizonGen


class MultiHorizonGen(TaskGen):
    """One task per prediction horizon, with the label and the truncation adjusted.

    ``label_leak_n`` is Qlib's: the number of future trading days the horizon-1 label
    needs (2 for ``Ref($close, -2)/Ref($close, -1) - 1``: predict after the close of T, buy
    at T+1, sell at T+2). For horizon ``h`` the label is bought ``label_leak_n - 1`` days
    after T and held ``h`` days::

        Ref($close, -(h + label_leak_n - 1))/Ref($close, -(label_leak_n - 1)) - 1

    (``Ref($close, -(h+1))/Ref($close, -1) - 1`` with the default), set as the handler's
    ``label=[[expr], ["LABEL0"]]`` (Qlib's Alpha158 label shape). A sample at day T thus
    reads prices up to T + h + label_leak_n - 1, so the non-test segments are truncated
    ``h + label_leak_n`` trading days before the test start (Qlib's formula): the last
    train/valid label is known strictly before the first test day.
    """

    def __init__(
        self,
        horizons: Sequence[int] = (5,),
        label_leak_n: int = 2,
        calendar: Iterable[Any] | None = None,
        test_key: str = "test",
        train_key: str = "train",
        label_name: str = "LABEL0",
    ):
        if isinstance(horizons, (str, bytes)) or not isinstance(horizons, Iterable):
            raise ConfigError(f"expected a list of horizons, got {horizons!r}", "horizons")
        horizons = list(horizons)
        if not horizons:
            raise ConfigError("expected at least one horizon", "horizons")
        for i, h in enumerate(horizons):
            _check_int(h, f"horizons[{i}]", 1)
        if len(set(horizons)) != len(horizons):
            raise ConfigError(f"horizons repeat: {horizons}", "horizons")
        _check_int(label_leak_n, "label_leak_n", 1)
        self.horizons = horizons
        self.label_leak_n = label_leak_n
        self.test_key = test_key
        self.train_key = train_key
        self.label_name = label_name
        self._fixed_ta = TimeAdjuster(calendar) if calendar is not None else None

    def label_expr(self, hr: int) -> str:
        """The label expression of horizon ``hr`` (see the class docstring)."""
        delay = self.label_leak_n - 1
        if delay == 0:
            return f"Ref($close, -{hr})/$close - 1"
        return f"Ref($close, -{hr + delay})/Ref($close, -{delay}) - 1"

    def trunc_days(self, hr: int) -> int:
        """Trading days cut before the test start for horizon ``hr``."""
        return hr + self.label_leak_n

    def set_horizon(self, task: dict, hr: int) -> None:
        """Set the handler's label for horizon ``hr`` (changes ``task`` in place)."""
        hk = _handler_kwargs(task)
        if hk is None:
            raise ConfigError(
                "expected a handler config {'class': ..., 'module_path': ..., 'kwargs': {...}} "
                "whose label can be set per horizon",
                HANDLER_PATH,
            )
        hk["label"] = [[self.label_expr(hr)], [self.label_name]]

    def generate(self, task: dict) -> list[dict]:
        segs = _segments(task)
        if self.test_key not in segs:
            raise ConfigError(
                f"no {self.test_key!r} segment (test_key={self.test_key!r})", SEGMENTS_PATH
            )
        ta = _calendar(self._fixed_ta, task)
        res = []
        for hr in self.horizons:
            aligned = _align(ta, segs)
            days = self.trunc_days(hr)
            _truncate(
                ta, aligned, self.test_key, days, f"horizon {hr} (truncating {days} trading days)"
            )
            new_segs = {}
            for k, (s, e) in aligned.items():
                end = segs[k][1]
                if k == self.test_key and end is None:
                    new_segs[k] = [ta.iso(s), None]  # open end stays open
                else:
                    new_segs[k] = [ta.iso(s), ta.iso(e)]
            t = copy.deepcopy(task)
            _writable(t, ("dataset", "kwargs"))["segments"] = new_segs
            self.set_horizon(t, hr)
            if self.train_key in new_segs:
                _set_fit_window(_handler_kwargs(t), new_segs[self.train_key])
            meta = _meta(t)
            meta["horizon"] = hr
            t["meta"] = meta
            res.append(t)
        return res


# ---------------------------------------------------------------- GridGen


def _set_dotted(task: dict, dotted: str, value: Any) -> None:
    """Set ``task[a][b][c] = value`` for ``"a.b.c"``, creating missing dicts on the way.

    A numeric part indexes into a list (``"record.0.kwargs.x"``).
    """
    parts = dotted.split(".")
    node: Any = task
    where = "task"
    for i, part in enumerate(parts):
        final = i == len(parts) - 1
        if isinstance(node, dict):
            if final:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit():
            idx = int(part)
            if not -len(node) <= idx < len(node):
                raise ConfigError(f"index {idx} is out of range for a list of {len(node)}", where)
            if final:
                node[idx] = value
                return
            node = node[idx]
        else:
            raise ConfigError(
                f"cannot set {dotted!r}: this is a {type(node).__name__}, not a mapping", where
            )
        where = f"{where}.{part}"


class GridGen(TaskGen):
    """One task per combination of values at dotted paths (same model, other settings).

    ``GridGen({"model.kwargs.learning_rate": [0.05, 0.1], "model.kwargs.loss": ["mse", "huber"]})``
    makes 4 tasks; combinations follow ``itertools.product`` over the keys in order (the
    last key varies fastest). Missing intermediate dicts are created; a path through a
    non-dict value is an error naming it. ``meta["grid"]`` records the values.
    """

    def __init__(self, grid: Mapping[str, Sequence[Any]]):
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError(
                "expected a non-empty mapping of dotted paths to lists of values, e.g. "
                "{'model.kwargs.learning_rate': [0.05, 0.1]}",
                "grid",
            )
        self.grid: dict[str, list[Any]] = {}
        for key, values in grid.items():
            if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
                raise ConfigError(
                    f"expected a dotted path such as 'model.kwargs.loss', got {key!r}", "grid"
                )
            if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
                raise ConfigError(f"expected a list of values, got {values!r}", f"grid.{key}")
            values = list(values)
            if not values:
                raise ConfigError("expected at least one value", f"grid.{key}")
            self.grid[key] = values

    def generate(self, task: dict) -> list[dict]:
        keys = list(self.grid)
        res = []
        for combo in itertools.product(*self.grid.values()):
            t = copy.deepcopy(task)
            for key, value in zip(keys, combo, strict=True):
                _set_dotted(t, key, copy.deepcopy(value))
            meta = _meta(t)
            prev = meta.get("grid") or {}
            if not isinstance(prev, dict):
                raise ConfigError(f"expected a dict, got {type(prev).__name__}", "task.meta.grid")
            meta["grid"] = {**prev, **copy.deepcopy(dict(zip(keys, combo, strict=True)))}
            t["meta"] = meta
            res.append(t)
        return res
