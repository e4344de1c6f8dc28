"""Qlib's data processors (same names, arguments and semantics), without Qlib.

They work on DataFrames indexed (datetime, instrument) whose columns are two-level
``(group, name)`` pairs such as ``("feature", "KMID")`` and ``("label", "LABEL0")``.
``fields_group`` selects a first-level group; ``None`` means every column, the label
included. Processors that learn statistics (``ZScoreNorm``, ``RobustZScoreNorm``) learn
them on ``[fit_start_time, fit_end_time]`` only, so later dates never leak into them.
Fitted state round-trips through JSON (:meth:`Processor.to_state` /
:func:`from_state`) so a model's preprocessing can be saved and replayed online.

A processor may return a new frame or modify the one it is given (as in Qlib); pass a
copy if you need the input unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError
from alphamill.memory import reusable_empty

EPS = 1e-12

__all__ = [
    "CSRankNorm",
    "CSZScoreNorm",
    "DropnaLabel",
    "DropnaProcessor",
    "FilterCol",
    "Fillna",
    "ProcessInf",
    "Processor",
    "RobustZScoreNorm",
    "ZScoreNorm",
    "build_processor",
    "build_processors",
    "fit_transform",
    "from_state",
    "get_group_columns",
    "transform",
]


def get_group_columns(df: pd.DataFrame, group: str | None) -> pd.Index:
    """The columns of first-level group ``group`` (all columns when ``None``)."""
    if group is None:
        return df.columns
    if not isinstance(df.columns, pd.MultiIndex):
        raise ConfigError(
            f"fields_group={group!r} needs two-level (group, name) columns, "
            f"got single-level columns {list(df.columns)[:5]}",
            "fields_group",
        )
    groups = df.columns.get_level_values(0)
    if group not in set(groups):
        raise ConfigError(
            f"no column group {group!r}; groups are {sorted(set(map(str, groups)))}",
            "fields_group",
        )
    return df.columns[groups == group]


def _datetimes(df: pd.DataFrame) -> pd.Index:
    idx = df.index
    if isinstance(idx, pd.MultiIndex):
        name = "datetime" if "datetime" in idx.names else idx.names[0]
        return idx.get_level_values(name)
    return idx


def _day_codes(df: pd.DataFrame) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(_datetimes(df))
    return codes, len(uniques)


def _col_key(col) -> Any:
    return list(col) if isinstance(col, tuple) else col


def _col_from_key(key) -> Any:
    return tuple(key) if isinstance(key, list) else key


def _floats_to_json(values: Iterable[float]) -> list[float | None]:
    return [None if (v is None or not math.isfinite(float(v))) else float(v) for v in values]


def _floats_from_json(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


class Processor:
    """Base class: ``fit(df)`` learns parameters, ``__call__(df)`` applies them."""

    #: Constructor arguments saved by :meth:`to_state` (names of attributes).
    _params: tuple[str, ...] = ()

    def fit(self, df: pd.DataFrame | None = None) -> None:
        """Learn parameters from ``df`` (the previous processor's output)."""

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def is_for_infer(self) -> bool:
        """Whether the processor may be used on inference data (no label needed)."""
        return True

    def readonly(self) -> bool:
        """Whether the processor leaves its input frame untouched."""
        return False

    # -- serialisation ----------------------------------------------------------
    def _fitted_state(self) -> dict[str, Any]:
        return {}

    def _load_fitted(self, state: dict[str, Any]) -> None:
        """Restore the fitted state written by :meth:`_fitted_state`."""

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable description: class, constructor kwargs and fitted state."""
        kwargs = {}
        for p in self._params:
            v = getattr(self, p)
            if isinstance(v, pd.Timestamp):
                v = v.isoformat()
            kwargs[p] = v
        return {"class": type(self).__name__, "kwargs": kwargs, "state": self._fitted_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Processor:
        """Rebuild a processor (fitted, if it was) from :meth:`to_state` output."""
        return from_state(state)

    def __repr__(self) -> str:
        args = ", ".join(f"{p}={getattr(self, p)!r}" for p in self._params)
        return f"{type(self).__name__}({args})"


class DropnaProcessor(Processor):
    """Drop rows with a NaN in any column of ``fields_group``."""

    _params = ("fields_group",)

    def __init__(self, fields_group: str | None = None):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = get_group_columns(df, self.fields_group)
        keep = df[cols].notna().all(axis=1).to_numpy()
        if keep.all():
            return df.copy(deep=None)  # what dropna returns when nothing is dropped
        return take_rows(df, keep)

    def readonly(self) -> bool:
        return True


def take_rows(df: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The rows of ``df`` where ``keep`` (a boolean array), as a new frame.

    A frame of one dtype (a window of the feature cache) is gathered with one numpy boolean
    index along its stored layout, which is several times faster than pandas' row take on
    wide float frames. Columns stored contiguously (the cache's layout, also for a window of
    rows, which is not F-contiguous as a whole) are gathered column by column into a
    column-major result, which LightGBM reads without a copy.
    """
    if df.shape[1] and df.dtypes.nunique() == 1:
        values = df.to_numpy()
        if values.ndim == 2 and 0 < values.strides[0] <= values.strides[1]:
            # one 1-D gather per column: numpy's 2-D boolean index would lay the result out
            # row by row, whatever the source's layout
            cols = reusable_empty((values.shape[1], int(keep.sum())), values.dtype)
            for j in range(values.shape[1]):
                np.compress(keep, values[:, j], out=cols[j])
            out = cols.T
        else:
            out = values[keep]
        return pd.DataFrame(out, index=df.index[keep], columns=df.columns, copy=False)
    return df.loc[keep]


class DropnaLabel(DropnaProcessor):
    """Drop rows whose label is NaN (learn data only: inference has no label)."""

    def __init__(self, fields_group: str = "label"):
        super().__init__(fields_group=fields_group)

    def is_for_infer(self) -> bool:
        return False


class FilterCol(Processor):
    """Keep only ``col_list`` among the columns of ``fields_group`` (others untouched)."""

    _params = ("fields_group", "col_list")

    def __init__(self, fields_group: str = "feature", col_list: Sequence[str] = ()):
        self.fields_group = fields_group
        self.col_list = list(col_list)

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = get_group_columns(df, self.fields_group)
        drop = [c for c in cols if (c[-1] if isinstance(c, tuple) else c) not in set(self.col_list)]
        return df.drop(columns=drop)

    def readonly(self) -> bool:
        return True


class ProcessInf(Processor):
    """Per day and column, replace ±inf by the mean of that day's finite-or-NaN values
    (NaN skipped); NaN when the day has no such value."""

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        codes, n_days = _day_codes(df)
        for col in df.columns:
            s = df[col]
            if not pd.api.types.is_float_dtype(s.dtype):
                continue
            x = s.to_numpy()
            inf = np.isinf(x)
            if not inf.any():
                continue
            ok = ~inf & ~np.isnan(x)
            sums = np.bincount(codes, weights=np.where(ok, x, 0.0).astype(np.float64), minlength=n_days)
            cnt = np.bincount(codes, weights=ok.astype(np.float64), minlength=n_days)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = sums / cnt
            y = x.copy()
            y[inf] = mean[codes[inf]].astype(x.dtype)
            df[col] = y
        return df


class Fillna(Processor):
    """Replace NaN by ``fill_value`` in ``fields_group`` (±inf are left as they are)."""

    _params = ("fields_group", "fill_value")

    def __init__(self, fields_group: str | None = None, fill_value: float = 0):
        self.fields_group = fields_group
        self.fill_value = fill_value

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = get_group_columns(df, self.fields_group)
        for c in cols:
            df[c] = df[c].fillna(self.fill_value)
        return df


class _FitWindow(Processor):
    """Shared fit-window handling of the normalisers fitted on a date range."""

    def __init__(self, fit_start_time, fit_end_time, fields_group: str | None = None):
        if fit_start_time is None or fit_end_time is None:
            raise ConfigError(
                f"{type(self).__name__} needs fit_start_time and fit_end_time", "kwargs"
            )
        try:
            self.fit_start_time = pd.Timestamp(fit_start_time)
            self.fit_end_time = pd.Timestamp(fit_end_time)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot parse the fit window dates: {e}", "kwargs") from None
        if self.fit_start_time > self.fit_end_time:
            raise ConfigError(
                f"fit_start_time {self.fit_start_time.date()} is after fit_end_time "
                f"{self.fit_end_time.date()}",
                "kwargs",
            )
        self.fields_group = fields_group
        self.cols: list | None = None

    def _fit_values(self, df: pd.DataFrame) -> np.ndarray:
        dt = _datetimes(df)
        mask = (dt >= self.fit_start_time) & (dt <= self.fit_end_time)
        if not mask.any():
            raise ConfigError(
                f"no rows between fit_start_time {self.fit_start_time.date()} and fit_end_time "
                f"{self.fit_end_time.date()} to fit {type(self).__name__} on",
                "kwargs",
            )
        cols = get_group_columns(df, self.fields_group)
        self.cols = list(cols)
        return df.loc[np.asarray(mask), cols].to_numpy()

    def _check_fitted(self) -> None:
        if self.cols is None:
            raise ConfigError(f"{type(self).__name__} must be fitted before use", "processors")


class ZScoreNorm(_FitWindow):
    """``(x − mean)/std`` with the NaN-skipping mean and population std (ddof 0) of each
    column over the fit window; columns whose std is 0 are left unchanged."""

    _params = ("fit_start_time", "fit_end_time", "fields_group")

    def fit(self, df: pd.DataFrame | None = None) -> None:
        x = self._fit_values(df)
        with np.errstate(invalid="ignore", divide="ignore"), _quiet():
            self.mean_train = np.nanmean(x, axis=0)
            self.std_train = np.nanstd(x, axis=0)
        self.ignore = self.std_train == 0

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        _require_columns(df, self.cols, type(self).__name__)
        for i, c in enumerate(self.cols):
            if self.ignore[i]:
                continue
            x = df[c].to_numpy()
            dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
            with np.errstate(invalid="ignore", divide="ignore"):
                df[c] = ((x - dt.type(self.mean_train[i])) / dt.type(self.std_train[i])).astype(dt)
        return df

    def _fitted_state(self) -> dict[str, Any]:
        if self.cols is None:
            return {}
        return {
            "cols": [_col_key(c) for c in self.cols],
            "mean": _floats_to_json(self.mean_train),
            "std": _floats_to_json(self.std_train),
        }

    def _load_fitted(self, state: dict[str, Any]) -> None:
        if state:
            self.cols = [_col_from_key(c) for c in state["cols"]]
            self.mean_train = _floats_from_json(state["mean"])
            self.std_train = _floats_from_json(state["std"])
            self.ignore = self.std_train == 0


class RobustZScoreNorm(_FitWindow):
    """``(x − median)/((MAD + 1e-12)·1.4826)`` fitted per column on the fit window, then
    clipped to [−3, 3] when ``clip_outlier``."""

    _params = ("fit_start_time", "fit_end_time", "fields_group", "clip_outlier")

    def __init__(self, fit_start_time, fit_end_time, fields_group=None, clip_outlier: bool = True):
        super().__init__(fit_start_time, fit_end_time, fields_group)
        self.clip_outlier = bool(clip_outlier)

    def fit(self, df: pd.DataFrame | None = None) -> None:
        x = self._fit_values(df)
        with np.errstate(invalid="ignore"), _quiet():
            self.mean_train = np.nanmedian(x, axis=0)
            self.std_train = np.nanmedian(np.abs(x - self.mean_train), axis=0)
        self.std_train = (self.std_train + EPS) * 1.4826

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        _require_columns(df, self.cols, type(self).__name__)
        for i, c in enumerate(self.cols):
            x = df[c].to_numpy()
            dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
            with np.errstate(invalid="ignore", divide="ignore"):
                y = (x - dt.type(self.mean_train[i])) / dt.type(self.std_train[i])
            if self.clip_outlier:
                y = np.clip(y, -3, 3)
            df[c] = y.astype(dt)
        return df

    def _fitted_state(self) -> dict[str, Any]:
        if self.cols is None:
            return {}
        return {
            "cols": [_col_key(c) for c in self.cols],
            "median": _floats_to_json(self.mean_train),
            "scale": _floats_to_json(self.std_train),
        }

    def _load_fitted(self, state: dict[str, Any]) -> None:
        if state:
            self.cols = [_col_from_key(c) for c in state["cols"]]
            self.mean_train = _floats_from_json(state["median"])
            self.std_train = _floats_from_json(state["scale"])


class CSZScoreNorm(Processor):
    """Per day and column: ``(x − mean)/std`` (sample std, ddof 1) with ``method=
    "zscore"``, or ``(x − median)/(MAD·1.4826)`` clipped to [−3, 3] with ``"robust"``.
    One valid value or all-equal values on a day give NaN."""

    _params = ("fields_group", "method")

    def __init__(self, fields_group: str | list[str] | None = None, method: str = "zscore"):
        if method not in ("zscore", "robust"):
            raise ConfigError(f"method must be 'zscore' or 'robust', got {method!r}", "method")
        self.fields_group = fields_group
        self.method = method

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        groups = self.fields_group if isinstance(self.fields_group, list) else [self.fields_group]
        codes, _ = _day_codes(df)
        for g in groups:
            cols = list(get_group_columns(df, g))
            if self.method == "zscore":
                by_dtype: dict[np.dtype, list] = {}
                for c in cols:
                    by_dtype.setdefault(np.dtype(df[c].dtype), []).append(c)
                for dt, cs in by_dtype.items():
                    block = df[cs].to_numpy(dtype=dt if dt.kind == "f" else np.float64)
                    res = _cs_zscore(block, codes)
                    for i, c in enumerate(cs):
                        df[c] = res[:, i]
            else:
                for c in cols:
                    x = df[c].to_numpy()
                    dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
                    df[c] = _cs_robust(df[c].astype(np.float64), codes).astype(dt)
        return df


def _cs_zscore(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """pandas' ``(x - x.mean()).div(x.std())`` per day for the columns of ``x`` (rows,
    cols), in pandas' dtypes: for float32 the mean is a float32 pairwise sum over a
    float32 count, the ddof-1 variance is accumulated in float64 and rounded to float32,
    and the arithmetic is float32. One loop step per day, vectorised over columns."""
    dt = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    x = x.astype(dt, copy=False)
    order = np.argsort(codes, kind="stable")
    cs = codes[order]
    xt = np.ascontiguousarray(x[order].T)  # (cols, rows): each day's values contiguous
    out = np.empty_like(xt)
    bounds = np.flatnonzero(np.diff(cs)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [len(cs)]]).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        for a, b in zip(starts, ends, strict=True):
            if b <= a:
                continue
            v = xt[:, a:b]
            ok = ~np.isnan(v)
            n = ok.sum(axis=1)
            v0 = np.where(ok, v, dt.type(0))
            mean = v0.sum(axis=1, dtype=dt) / n.astype(dt)
            avg = v0.sum(axis=1, dtype=np.float64) / n
            sq = np.where(ok, (avg[:, None] - v0.astype(np.float64)) ** 2, 0.0)
            std = np.sqrt((sq.sum(axis=1, dtype=np.float64) / (n - 1)).astype(dt))
            lo = np.where(ok, v, np.inf).min(axis=1)
            hi = np.where(ok, v, -np.inf).max(axis=1)
            std[(n < 2) | (lo == hi)] = np.nan  # one value or all equal: NaN
            out[:, a:b] = (v - mean[:, None]) / std[:, None]
    res = np.empty_like(x)
    res[order] = out.T
    return res


def _cs_robust(s: pd.Series, codes: np.ndarray) -> np.ndarray:
    g = s.groupby(codes)
    dev = s - g.transform("median")
    mad = dev.abs().groupby(codes).transform("median")
    with np.errstate(invalid="ignore", divide="ignore"):
        y = dev.to_numpy() / (mad.to_numpy() * 1.4826)
    return np.clip(y, -3, 3)


class CSRankNorm(Processor):
    """Per day and column: percentile rank (ties averaged, NaN kept), then
    ``(r − 0.5)·3.46``. The result is float64, as in Qlib."""

    _params = ("fields_group",)

    def __init__(self, fields_group: str | None = None):
        self.fields_group = fields_group

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        cols = list(get_group_columns(df, self.fields_group))
        codes, _ = _day_codes(df)
        for c in cols:
            r = df[c].astype(np.float64).groupby(codes).rank(pct=True)
            df[c] = (r.to_numpy() - 0.5) * 3.46
        return df


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings for all-NaN columns."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _require_columns(df: pd.DataFrame, cols: list, who: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"{who} was fitted on columns missing from the data: {missing[:5]}", "processors")


# ----------------------------------------------------------------------------------
# construction

PROCESSORS: dict[str, type[Processor]] = {
    cls.__name__: cls
    for cls in (
        DropnaProcessor,
        DropnaLabel,
        FilterCol,
        ProcessInf,
        Fillna,
        ZScoreNorm,
        RobustZScoreNorm,
        CSZScoreNorm,
        CSRankNorm,
    )
}
#: Module paths whose processor names map onto this module's classes.
KNOWN_MODULES = ("alphamill.features.processors", "qlib.data.dataset.processor")

_FIT_WINDOW = (ZScoreNorm, RobustZScoreNorm)


def build_processor(spec, fit_start_time=None, fit_end_time=None, where: str = "processor") -> Processor:
    """A processor from an instance, a class name or ``{"class", "kwargs", "module_path"}``.

    ``fit_start_time``/``fit_end_time`` fill in the fit window of the normalisers that
    need one and were not given one (as Qlib's handler does).
    """
    if isinstance(spec, Processor):
        return spec
    if isinstance(spec, str):
        spec = {"class": spec}
    if not isinstance(spec, dict) or "class" not in spec:
        raise ConfigError(
            f'expected a processor instance, name or {{"class": ..., "kwargs": {{...}}}}, got {spec!r}',
            where,
        )
    module = spec.get("module_path")
    if module is not None and module not in KNOWN_MODULES:
        raise ConfigError(
            f"unknown processor module {module!r}; expected one of {', '.join(KNOWN_MODULES)}",
            f"{where}.module_path",
        )
    name = spec["class"]
    cls = PROCESSORS.get(name)
    if cls is None:
        raise ConfigError(
            f"unknown processor {name!r}; available: {', '.join(sorted(PROCESSORS))}", f"{where}.class"
        )
    kwargs = dict(spec.get("kwargs") or {})
    if cls in _FIT_WINDOW:
        kwargs.setdefault("fit_start_time", fit_start_time)
        kwargs.setdefault("fit_end_time", fit_end_time)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments for {name}: {e}", f"{where}.kwargs") from None


def build_processors(specs, fit_start_time=None, fit_end_time=None, where: str = "processors") -> list[Processor]:
    """Build a processor list (see :func:`build_processor`)."""
    if specs is None:
        return []
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"expected a list of processors, got {type(specs).__name__}", where)
    return [
        build_processor(s, fit_start_time, fit_end_time, where=f"{where}[{i}]")
        for i, s in enumerate(specs)
    ]


def fit_transform(processors: Sequence[Processor], df: pd.DataFrame) -> pd.DataFrame:
    """Fit each processor on the previous one's output, then apply it (Qlib's order)."""
    for p in processors:
        p.fit(df)
        df = p(df)
    return df


def transform(processors: Sequence[Processor], df: pd.DataFrame, for_infer: bool = False) -> pd.DataFrame:
    """Apply already fitted processors; with ``for_infer`` skip those not meant for
    inference data (e.g. ``DropnaLabel``)."""
    for p in processors:
        if for_infer and not p.is_for_infer():
            continue
        df = p(df)
    return df


def from_state(state: dict[str, Any]) -> Processor:
    """Rebuild a processor from :meth:`Processor.to_state` output."""
    if not isinstance(state, dict) or "class" not in state:
        raise ConfigError(f"expected a saved processor state with a 'class', got {state!r}", "state")
    proc = build_processor({"class": state["class"], "kwargs": state.get("kwargs") or {}})
    proc._load_fitted(state.get("state") or {})
    return proc
