"""Data handlers: raw features and labels plus the processors that turn them into model input.

:class:`DataHandlerLP` keeps Qlib's three views of one panel:

* ``raw``   - the data as loaded;
* ``infer`` - the infer processors applied to ``raw`` (what a model predicts on);
* ``learn`` - with ``process_type="append"`` (Qlib's PTYPE_A, the default) the learn processors
  applied to ``infer``; with ``"independent"`` (PTYPE_I) applied to ``raw``.

Processors are fitted once, in order, on the rows of ``[fit_start_time, fit_end_time]`` of the
output of the previous processor, then applied to every row, exactly as Qlib's
``DataHandlerLP.process_data(with_fit=True)`` does. Columns are a two-level index
``(group, name)`` with groups ``"feature"`` and ``"label"``; rows are indexed
``(datetime, instrument)`` and sorted by datetime.

:class:`Alpha158` (and ``Alpha360`` in :mod:`alphamill.dataset.alpha360`) load Qlib's features
and label through the on-disk feature cache, so the rolling windows of one experiment and every
rerun reuse one computation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

#: Qlib's default learn processors of the Alpha158 handler.
DEFAULT_LEARN_PROCESSORS: list[dict[str, Any]] = [
    {"class": "DropnaLabel"},
    {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}},
]

HANDLER_PATH = "dataset.kwargs.handler.kwargs"


def to_timestamp(value: Any, path: str) -> pd.Timestamp | None:
    """Parse a date given in a config (str, date, Timestamp or None); errors name ``path``."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return value
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ConfigError(f"expected a date like '2015-01-01', got {value!r}", path) from None
    if ts is pd.NaT:
        raise ConfigError(f"expected a date like '2015-01-01', got {value!r}", path)
    return ts


def datetime_slice(df: pd.DataFrame, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Rows of ``df`` (sorted by its first index level) with start <= datetime <= end.

    A positional slice, so with copy-on-write no data is copied.
    """
    if start is None and end is None:
        return df
    dates = df.index.get_level_values(0)
    lo = 0 if start is None else dates.searchsorted(pd.Timestamp(start), side="left")
    hi = len(df) if end is None else dates.searchsorted(pd.Timestamp(end), side="right")
    return df.iloc[lo:hi]


def fetch_df_by_col(df: pd.DataFrame, col_set: str | Sequence[str]) -> pd.DataFrame:
    """Select column groups with Qlib's rules.

    ``"__raw"`` keeps the two-level columns, ``"__all"`` drops the group level, one group name
    returns that group with one-level columns, a list of groups keeps two levels.
    """
    if not isinstance(df.columns, pd.MultiIndex) or col_set == DataHandlerLP.CS_RAW:
        return df
    if col_set == DataHandlerLP.CS_ALL:
        return df.droplevel(0, axis=1)
    top = df.columns.get_level_values(0)
    groups = list(top.unique())
    wanted = [col_set] if isinstance(col_set, str) else list(col_set)
    unknown = [g for g in wanted if g not in groups]
    if unknown:
        raise ConfigError(
            f"unknown column group {unknown[0]!r}; expected one of {groups} or '__all'", "col_set"
        )
    # Groups are contiguous column blocks: select them by position, which is a view (no copy).
    mask = np.isin(np.asarray(top, dtype=object), wanted)
    pos = np.flatnonzero(mask)
    if len(pos) and pos[-1] - pos[0] + 1 == len(pos):
        out = df.iloc[:, pos[0] : pos[-1] + 1]
        if isinstance(col_set, str):
            out = out.copy(deep=False)
            out.columns = out.columns.droplevel(0)
        return out
    if isinstance(col_set, str):
        return df.loc[:, col_set]
    return df.loc[:, wanted]


def _dates_sorted(index: pd.MultiIndex) -> bool:
    """Whether the datetime level is non-decreasing (all that date slicing needs).

    Checked on the level codes: ``MultiIndex.is_monotonic_increasing`` takes seconds on a
    panel of a few hundred thousand rows.
    """
    level = index.levels[0]
    codes = np.asarray(index.codes[0])
    if not level.is_monotonic_increasing or (codes < 0).any():
        return bool(index.get_level_values(0).is_monotonic_increasing)
    return bool((np.diff(codes) >= 0).all())


def _row_local(proc: Any) -> bool:
    """Whether ``proc`` transforms each row, or each day, independently of other days.

    alphamill's processors all do (fitted ones apply fixed parameters); a custom processor can
    say so with a ``row_local = True`` attribute. Others are treated as needing the whole panel.
    """
    flag = getattr(proc, "row_local", None)
    if flag is not None:
        return bool(flag)
    from alphamill.features import processors as procs

    return type(proc) in procs.PROCESSORS.values()


def _needs_fit(proc: Any) -> bool:
    """Whether ``proc`` learns anything in ``fit`` (the processor base class's fit does not)."""
    from alphamill.features.processors import Processor

    return not (isinstance(proc, Processor) and type(proc).fit is Processor.fit)


def _own(df: pd.DataFrame) -> pd.DataFrame:
    """A frame processors may modify without touching ``df``.

    With copy-on-write (pandas >= 3) a shallow copy suffices; older pandas needs a real copy.
    """
    if _COW:
        return df.copy(deep=False)
    return df.copy()


_COW = int(pd.__version__.split(".")[0]) >= 3 or bool(
    getattr(pd.options.mode, "copy_on_write", False) is True
)


class DataHandler:
    """Marker base class (Qlib's ``DataHandler``) accepted where a handler is expected."""


class DataHandlerLP(DataHandler):
    """A panel with infer/learn processing (Qlib's ``DataHandlerLP``).

    ``data`` is a DataFrame indexed ``(datetime, instrument)`` with columns ``(group, name)``.
    Processors are instances or ``{"class", "module_path", "kwargs"}`` configs (Qlib's names map
    onto ``alphamill.features.processors``). ``lazy`` chooses how the views are kept (see
    :meth:`process_data`): ``None`` decides from the processors, ``False`` materialises them.
    """

    DK_R = "raw"
    DK_I = "infer"
    DK_L = "learn"
    CS_ALL = "__all"
    CS_RAW = "__raw"
    PTYPE_A = "append"
    PTYPE_I = "independent"

    def __init__(
        self,
        data: pd.DataFrame | None = None,
        start_time: Any = None,
        end_time: Any = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        infer_processors: Sequence[Any] = (),
        learn_processors: Sequence[Any] = (),
        process_type: str = PTYPE_A,
        drop_raw: bool = False,
        lazy: bool | None = None,
        path: str = HANDLER_PATH,
    ):
        self.path = path
        self._lazy_option = lazy
        self.lazy = False
        if not isinstance(drop_raw, bool):
            raise ConfigError(f"expected true or false, got {drop_raw!r}", f"{path}.drop_raw")
        self.drop_raw = drop_raw
        self.start_time = to_timestamp(start_time, f"{path}.start_time")
        self.end_time = to_timestamp(end_time, f"{path}.end_time")
        self.fit_start_time = to_timestamp(fit_start_time, f"{path}.fit_start_time")
        self.fit_end_time = to_timestamp(fit_end_time, f"{path}.fit_end_time")
        for a, b, name in (
            (self.start_time, self.end_time, "end_time"),
            (self.fit_start_time, self.fit_end_time, "fit_end_time"),
        ):
            if a is not None and b is not None and a > b:
                raise ConfigError(f"{b.date()} is before the start {a.date()}", f"{path}.{name}")
        if process_type not in (self.PTYPE_A, self.PTYPE_I):
            raise ConfigError(
                f"expected 'append' or 'independent', got {process_type!r}", f"{path}.process_type"
            )
        self.process_type = process_type
        self.infer_processors = self._build_processors(infer_processors, "infer_processors")
        self.learn_processors = self._build_processors(learn_processors, "learn_processors")
        for i, proc in enumerate(self.infer_processors):
            if hasattr(proc, "is_for_infer") and not proc.is_for_infer():
                raise ConfigError(
                    f"{type(proc).__name__} drops or changes rows, so it cannot be used for "
                    "inference; move it to learn_processors",
                    f"{path}.infer_processors.{i}",
                )
        self._data: pd.DataFrame | None = None
        self._calendar: pd.DatetimeIndex | None = None
        self._infer: pd.DataFrame | None = None
        self._learn: pd.DataFrame | None = None
        if data is not None:
            self.setup_data(data)

    # -- building -------------------------------------------------------------------------
    def _build_processors(self, procs: Sequence[Any] | None, field: str) -> list[Any]:
        if procs is None:
            return []
        if isinstance(procs, (dict, str)) or not isinstance(procs, Sequence):
            raise ConfigError("expected a list of processors", f"{self.path}.{field}")
        out = []
        for i, proc in enumerate(procs):
            where = f"{self.path}.{field}.{i}"
            if isinstance(proc, (dict, str)):
                proc = self._processor_from_config(proc, where)
            if not callable(proc) or not hasattr(proc, "fit"):
                raise ConfigError(
                    f"expected a processor (with fit(df) and __call__(df)), got {type(proc).__name__}",
                    where,
                )
            out.append(proc)
        return out

    def _processor_from_config(self, config: dict | str, where: str) -> Any:
        """Build one processor, giving it the handler's fit window (Qlib's check_transform_proc).

        Qlib's processor names (with no module, ``alphamill.features.processors`` or
        ``qlib.data.dataset.processor``) map onto alphamill's processors; other modules are
        imported through the trusted-module rules of ``init_instance_by_config``.
        """
        from alphamill.features import processors as procs

        if isinstance(config, str):
            config = {"class": config}
        module = config.get("module_path") if isinstance(config, dict) else None
        window = {
            name: None if value is None else str(value.date())
            for name, value in (
                ("fit_start_time", self.fit_start_time),
                ("fit_end_time", self.fit_end_time),
            )
        }
        if module is None or module in procs.KNOWN_MODULES:
            cls = procs.PROCESSORS.get(str(config.get("class")))
            given = config.get("kwargs") or {}
            if cls is not None and cls in procs._FIT_WINDOW:
                for name, value in window.items():
                    if value is None and given.get(name) is None:
                        raise ConfigError(
                            f"{cls.__name__} is fitted on a window: set fit_start_time and "
                            "fit_end_time in the handler (or in the processor's kwargs)",
                            f"{self.path}.{name}",
                        )
            return procs.build_processor(config, where=where, **window)
        from alphamill.instance import init_instance_by_config
        from alphamill.kinds import PROCESSOR

        return init_instance_by_config(config, try_kwargs=window, path=where, kind=PROCESSOR)

    def setup_data(self, data: pd.DataFrame) -> None:
        """Install raw data (trimmed to [start_time, end_time]), then fit and apply processors."""
        if not isinstance(data.index, pd.MultiIndex) or data.index.nlevels != 2:
            raise ConfigError("handler data must be indexed by (datetime, instrument)", self.path)
        if not isinstance(data.columns, pd.MultiIndex):
            raise ConfigError("handler data must have two-level (group, name) columns", self.path)
        if not _dates_sorted(data.index):
            data = data.sort_index()
        codes = np.unique(np.asarray(data.index.codes[0]))
        self._calendar = pd.DatetimeIndex(data.index.levels[0][codes[codes >= 0]]).sort_values()
        self._data = _own(datetime_slice(data, self.start_time, self.end_time))
        self.process_data(with_fit=True)

    def _fit_view(self, df: pd.DataFrame) -> pd.DataFrame:
        return datetime_slice(df, self.fit_start_time, self.fit_end_time)

    def process_data(self, with_fit: bool = False) -> None:
        """Fit the processors and prepare the infer and learn views (Qlib's semantics).

        When every processor works row by row or day by day (all of alphamill's do), the views
        are computed on demand for the dates fetched, which gives the same rows as processing
        the whole panel but never holds a second copy of it: processors are fitted here on the
        fit window, each on the previous one's output, and applied at fetch time. Otherwise
        (a custom processor, or ``lazy=False``) both views are materialised now, as Qlib does.
        """
        if self._data is None:
            raise RuntimeError("no data loaded")
        procs = [*self.infer_processors, *self.learn_processors]
        self.lazy = (
            all(_row_local(p) for p in procs) if self._lazy_option is None else self._lazy_option
        )
        if self.lazy:
            self._infer = self._learn = None
            if with_fit:
                self._fit_on_window()
            return
        infer = _own(self._data) if self.infer_processors else self._data
        for proc in self.infer_processors:
            if with_fit:
                proc.fit(self._fit_view(infer))
            infer = proc(infer)
        self._infer = infer
        learn = infer if self.process_type == self.PTYPE_A else self._data
        if self.learn_processors:
            learn = _own(learn)
        for proc in self.learn_processors:
            if with_fit:
                proc.fit(self._fit_view(learn))
            learn = proc(learn)
        self._learn = learn
        if self.drop_raw:
            self._data = None

    def _fit_on_window(self) -> None:
        """Fit each processor on the fit window as transformed by the processors before it."""

        def fit_chain(procs: list[Any], df: pd.DataFrame, feed_on: bool) -> pd.DataFrame | None:
            last = max((i for i, p in enumerate(procs) if _needs_fit(p)), default=-1)
            if last < 0 and not feed_on:
                return None
            for i, proc in enumerate(procs):
                if i > last and not feed_on:
                    break
                proc.fit(df)
                df = proc(df)
            return df

        base = _own(self._fit_view(self._data))
        learn_fits = any(_needs_fit(p) for p in self.learn_processors)
        appended = self.process_type == self.PTYPE_A
        out = fit_chain(self.infer_processors, base, feed_on=learn_fits and appended)
        if learn_fits:
            fit_chain(self.learn_processors, out if appended else base, feed_on=False)

    # -- access -----------------------------------------------------------------------------
    def _view(self, data_key: str, start: Any = None, end: Any = None) -> pd.DataFrame:
        """Rows of ``[start, end]`` of one view (raw, infer or learn)."""
        if data_key not in (self.DK_R, self.DK_I, self.DK_L):
            raise ConfigError(
                f"unknown data_key {data_key!r}; expected 'raw', 'infer' or 'learn'", "data_key"
            )
        if data_key == self.DK_R and self.drop_raw:
            raise ConfigError(
                "the raw data was dropped after processing (drop_raw=true)", f"{self.path}.drop_raw"
            )
        if not self.lazy:
            df = {self.DK_R: self._data, self.DK_I: self._infer, self.DK_L: self._learn}[data_key]
            if df is None:
                raise RuntimeError("no data loaded")
            return datetime_slice(df, start, end)
        if self._data is None:
            raise RuntimeError("no data loaded")
        raw = datetime_slice(self._data, start, end)
        if data_key == self.DK_R:
            return raw
        infer = _own(raw) if self.infer_processors else raw
        for proc in self.infer_processors:
            infer = proc(infer)
        if data_key == self.DK_I:
            return infer
        learn = infer if self.process_type == self.PTYPE_A else _own(raw)
        for proc in self.learn_processors:
            learn = proc(learn)
        return learn

    def fetch(
        self,
        selector: Any = slice(None, None),
        level: str | int = "datetime",
        col_set: str | Sequence[str] = CS_ALL,
        data_key: str = DK_I,
        squeeze: bool = False,
    ) -> pd.DataFrame | pd.Series:
        """Rows selected on the datetime level (a slice of dates or one date), columns by group."""
        if level not in ("datetime", 0):
            raise ConfigError("only the datetime level can be selected", "level")
        if isinstance(selector, slice):
            start, end = selector.start, selector.stop
        elif isinstance(selector, (tuple, list)) and len(selector) == 2:
            start, end = selector
        else:
            start = end = pd.Timestamp(selector)
        df = fetch_df_by_col(self._view(data_key, start, end), col_set)
        if squeeze and df.shape[1] == 1:
            return df.iloc[:, 0]
        return df

    def get_cols(self, col_set: str | Sequence[str] = CS_ALL, data_key: str = DK_I) -> list:
        cal = self.calendar()
        day = cal[0] if len(cal) else None
        return list(fetch_df_by_col(self._view(data_key, day, day), col_set).columns)

    def processor_state(self) -> dict[str, list[dict[str, Any]]]:
        """The fitted processors as JSON-compatible dicts (class name plus ``to_state()``)."""

        def state(proc: Any) -> dict[str, Any]:
            saved = proc.to_state() if hasattr(proc, "to_state") else None
            if isinstance(saved, dict) and "class" in saved:
                return saved
            out: dict[str, Any] = {
                "class": type(proc).__name__,
                "module_path": type(proc).__module__,
            }
            if saved is not None:
                out["state"] = saved
            return out

        return {
            "infer": [state(p) for p in self.infer_processors],
            "learn": [state(p) for p in self.learn_processors],
        }

    def calendar(self) -> pd.DatetimeIndex:
        """Trading days of the data given (before trimming to start_time/end_time)."""
        if self._calendar is None:
            raise RuntimeError("no data loaded")
        return self._calendar

    def calendar_range(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """First and last trading day of the data (``None`` when empty)."""
        cal = self.calendar()
        if len(cal) == 0:
            return None
        return pd.Timestamp(cal[0]), pd.Timestamp(cal[-1])


class _FeatureSetHandler(DataHandlerLP):
    """A handler whose features are a named feature set read through the on-disk feature
    cache (Qlib's ``Alpha158`` / ``Alpha360`` family), plus the label.

    Accepts Qlib's kwargs. ``label`` is Qlib's ``(exprs, names)`` pair; ``data`` is a data
    source spec (a folder of CSV/Parquet files or a Qlib data directory; ``None`` = the
    configured data, the demo market by default); ``cache_dir`` overrides the feature cache.
    Subclasses name their ``FEATURE_SET`` and Qlib's default processors.
    """

    FEATURE_SET = "alpha158"
    DEFAULT_INFER_PROCESSORS: list[dict[str, Any]] = []
    DEFAULT_LEARN_PROCESSORS: list[dict[str, Any]] = DEFAULT_LEARN_PROCESSORS

    def __init__(
        self,
        instruments: Any = "all",
        start_time: Any = None,
        end_time: Any = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        infer_processors: Sequence[Any] | None = None,
        learn_processors: Sequence[Any] | None = None,
        label: Any = None,
        data: Any = None,
        cache_dir: Any = None,
        process_type: str = DataHandlerLP.PTYPE_A,
        freq: str = "day",
        filter_pipe: Any = None,
        inst_processors: Any = None,
        drop_raw: bool = False,
        path: str = HANDLER_PATH,
        **kwargs: Any,
    ):
        if kwargs:
            name = sorted(kwargs)[0]
            raise ConfigError(
                f"unknown {type(self).__name__} argument; expected one of instruments, "
                "start_time, end_time, fit_start_time, fit_end_time, infer_processors, "
                "learn_processors, label, data, cache_dir, process_type",
                f"{path}.{name}",
            )
        if freq != "day":
            raise ConfigError(f"only daily data is supported, got {freq!r}", f"{path}.freq")
        for name, value in (("filter_pipe", filter_pipe), ("inst_processors", inst_processors)):
            if value:
                raise ConfigError(
                    "not supported; select instruments with `instruments` (a list or a Qlib "
                    "instruments file)",
                    f"{path}.{name}",
                )
        if infer_processors is None:
            infer_processors = copy.deepcopy(self.DEFAULT_INFER_PROCESSORS)
        if learn_processors is None:
            learn_processors = copy.deepcopy(self.DEFAULT_LEARN_PROCESSORS)
        super().__init__(
            None,
            start_time=start_time,
            end_time=end_time,
            fit_start_time=fit_start_time,
            fit_end_time=fit_end_time,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            process_type=process_type,
            drop_raw=drop_raw,
            path=path,
        )
        self.instruments = instruments
        self.label = label
        self.data_spec = data
        self.cache_dir = cache_dir
        self.source = self._open_source(data)
        self.setup_data(self._load())

    def _open_source(self, spec: Any) -> Any:
        from alphamill.data import open_data

        return open_data(spec)

    def _load(self) -> pd.DataFrame:
        from alphamill.features.cache import load_features

        flat = load_features(
            self.source,
            instruments=self.instruments,
            start=None if self.start_time is None else str(self.start_time.date()),
            end=None if self.end_time is None else str(self.end_time.date()),
            label=self.label,
            cache_dir=self.cache_dir,
            features=self.FEATURE_SET,
        )
        return to_two_level(flat, label_names=label_names(self.label))

    def calendar(self) -> pd.DatetimeIndex:
        """The data source's whole calendar (not only the loaded window)."""
        return pd.DatetimeIndex(self.source.calendar())

    def fingerprint(self) -> str:
        """The data source's fingerprint (logged with every run)."""
        return str(self.source.fingerprint())


class Alpha158(_FeatureSetHandler):
    """Qlib's ``Alpha158`` handler: 158 price/volume features and the 2-day forward return label.

    Default processors as Qlib's: no infer processors; learn ``DropnaLabel`` then
    ``CSZScoreNorm`` of the label.
    """

    FEATURE_SET = "alpha158"


def label_names(label: Any) -> list[str]:
    """Column names of the label group for Qlib's ``(exprs, names)`` label config."""
    if label is None:
        return ["LABEL0"]
    if isinstance(label, (list, tuple)) and len(label) == 2 and isinstance(label[1], (list, tuple)):
        return [str(n) for n in label[1]]
    if isinstance(label, str):
        return ["LABEL0"]
    if isinstance(label, (list, tuple)) and all(isinstance(x, str) for x in label):
        return [f"LABEL{i}" for i in range(len(label))]
    raise ConfigError(
        "expected Qlib's label form ([expressions], [names]), e.g. "
        "[['Ref($close, -2)/Ref($close, -1) - 1'], ['LABEL0']]",
        f"{HANDLER_PATH}.label",
    )


def to_two_level(flat: pd.DataFrame, label_names: Sequence[str] = ("LABEL0",)) -> pd.DataFrame:
    """Turn a flat feature+label frame into ``(group, name)`` columns, features first."""
    if isinstance(flat.columns, pd.MultiIndex):
        return flat
    names = set(label_names)
    labels = [c for c in flat.columns if c in names]
    feats = [c for c in flat.columns if c not in names]
    cols = pd.MultiIndex.from_tuples(
        [("feature", c) for c in feats] + [("label", c) for c in labels]
    )
    # Labels usually come last already; then relabel the columns without copying the data.
    out = flat.copy(deep=False) if list(flat.columns) == feats + labels else flat[feats + labels]
    out.columns = cols
    return out


__all__ = [
    "DEFAULT_LEARN_PROCESSORS",
    "Alpha158",
    "DataHandler",
    "DataHandlerLP",
    "datetime_slice",
    "fetch_df_by_col",
    "label_names",
    "to_two_level",
    "to_timestamp",
]
