"""Datasets: a handler cut into named time segments (Qlib's ``DatasetH``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from alphamill.dataset.handler import DataHandlerLP, to_timestamp
from alphamill.errors import ConfigError

DATASET_PATH = "dataset.kwargs"


class Dataset:
    """Marker base class (Qlib's ``Dataset``): something a model can ``prepare`` data from."""

    def prepare(self, segments: Any, **kwargs: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class DatasetH(Dataset):
    """A data handler plus named segments, e.g. ``{"train": (s, e), "valid": ..., "test": ...}``.

    ``handler`` is a handler instance or its ``{"class", "module_path", "kwargs"}`` config
    (default module ``alphamill.dataset``). Each segment is a ``(start, end)`` pair of dates,
    both inclusive; ``None`` means open-ended. Segments are checked when the dataset is built:
    start <= end, and the segment must overlap the data's calendar.
    """

    def __init__(
        self,
        handler: Any,
        segments: Mapping[str, Any],
        fetch_kwargs: Mapping[str, Any] | None = None,
        path: str = DATASET_PATH,
        **kwargs: Any,
    ):
        if kwargs:
            raise ConfigError(
                "unknown DatasetH argument; expected handler, segments, fetch_kwargs",
                f"{path}.{sorted(kwargs)[0]}",
            )
        self.path = path
        self.segments = self._parse_segments(segments)
        self.fetch_kwargs = dict(fetch_kwargs or {})
        self.handler = self._build_handler(handler)
        self._check_against_calendar()

    def _build_handler(self, handler: Any) -> DataHandlerLP:
        if isinstance(handler, DataHandlerLP):
            return handler
        if not isinstance(handler, Mapping):
            raise ConfigError(
                "expected a handler config {'class', 'module_path', 'kwargs'} or a handler, got "
                f"{type(handler).__name__}",
                f"{self.path}.handler",
            )
        from alphamill.instance import init_instance_by_config
        from alphamill.kinds import HANDLER

        return init_instance_by_config(
            dict(handler),
            accept_types=DataHandlerLP,
            default_module="alphamill.dataset",
            path=f"{self.path}.handler",
            kind=HANDLER,
        )

    def _parse_segments(self, segments: Any) -> dict[str, tuple[pd.Timestamp | None, ...]]:
        where = f"{self.path}.segments"
        if not isinstance(segments, Mapping) or not segments:
            raise ConfigError(
                "expected a mapping of segment names to (start, end), e.g. "
                "{'train': ['2010-01-01', '2014-12-31'], 'test': ['2015-01-01', '2015-12-31']}",
                where,
            )
        out: dict[str, tuple[pd.Timestamp | None, pd.Timestamp | None]] = {}
        for name, seg in segments.items():
            seg_path = f"{where}.{name}"
            if isinstance(seg, slice):
                seg = (seg.start, seg.stop)
            if isinstance(seg, (str, bytes)) or not isinstance(seg, Sequence) or len(seg) != 2:
                raise ConfigError(f"expected a (start, end) pair of dates, got {seg!r}", seg_path)
            start = to_timestamp(seg[0], f"{seg_path}.0")
            end = to_timestamp(seg[1], f"{seg_path}.1")
            if start is not None and end is not None and start > end:
                raise ConfigError(
                    f"start {start.date()} is after end {end.date()}; expected start <= end",
                    seg_path,
                )
            out[str(name)] = (start, end)
        return out

    def _check_against_calendar(self) -> None:
        """Each segment must hold trading days, all inside the handler's loaded window.

        A segment whose explicit bounds reach past the handler's ``start_time``/``end_time``
        would silently get fewer days (Qlib's behaviour); here it is an error naming both. An
        open bound (``None``) means "as far as the handler's data goes".
        """
        cal = self.handler.calendar()
        where = f"{self.path}.segments"
        if len(cal) == 0:
            raise ConfigError("the handler loaded no data (check its dates and instruments)", where)
        span = f"{cal[0].date()} .. {cal[-1].date()}"
        h_start = getattr(self.handler, "start_time", None)
        h_end = getattr(self.handler, "end_time", None)
        hpath = getattr(self.handler, "path", f"{self.path}.handler.kwargs")
        for name, (start, end) in self.segments.items():
            lo = 0 if start is None else int(cal.searchsorted(start, side="left"))
            hi = len(cal) if end is None else int(cal.searchsorted(end, side="right"))
            s = "..." if start is None else start.date()
            e = "..." if end is None else end.date()
            if lo >= hi:
                raise ConfigError(
                    f"segment {s} .. {e} holds no trading day of the data's calendar {span}",
                    f"{where}.{name}",
                )
            days = cal[lo:hi]
            if start is not None and h_start is not None and days[0] < h_start:
                raise ConfigError(
                    f"segment {s} .. {e} starts before the handler's start_time "
                    f"{h_start.date()} ({hpath}.start_time): its first days would be missing",
                    f"{where}.{name}",
                )
            if end is not None and h_end is not None and days[-1] > h_end:
                raise ConfigError(
                    f"segment {s} .. {e} ends after the handler's end_time {h_end.date()} "
                    f"({hpath}.end_time): its last days would be missing",
                    f"{where}.{name}",
                )

    def _segment(self, name: Any) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
        if isinstance(name, slice):
            return (name.start, name.stop)
        if name not in self.segments:
            raise ConfigError(
                f"unknown segment {name!r}; this dataset has {', '.join(self.segments)}",
                f"{self.path}.segments",
            )
        return self.segments[name]

    def prepare(
        self,
        segments: str | slice | Sequence[str],
        col_set: str | Sequence[str] = ("feature", "label"),
        data_key: str = DataHandlerLP.DK_I,
        **kwargs: Any,
    ) -> pd.DataFrame | list[pd.DataFrame]:
        """Data of one segment (a DataFrame) or of several (a list, in the order asked).

        ``col_set`` follows Qlib: one group name gives one-level columns, a list of groups keeps
        ``(group, name)`` columns, ``"__all"`` gives every column with one level.
        """
        if isinstance(col_set, tuple):
            col_set = list(col_set)
        fetch = {**self.fetch_kwargs, **kwargs, "col_set": col_set, "data_key": data_key}
        if isinstance(segments, (str, slice)):
            start, end = self._segment(segments)
            return self.handler.fetch(slice(start, end), **fetch)
        if isinstance(segments, Sequence):
            out = []
            for seg in segments:
                start, end = self._segment(seg)
                out.append(self.handler.fetch(slice(start, end), **fetch))
            return out
        raise ConfigError(
            f"expected a segment name or a list of them, got {type(segments).__name__}",
            "segments",
        )

    def fingerprint(self) -> str | None:
        """The handler's data fingerprint, if it has one."""
        fp = getattr(self.handler, "fingerprint", None)
        return fp() if callable(fp) else None
