"""Trading-calendar arithmetic for task generators (Qlib's ``TimeAdjuster``).

Qlib's ``TimeAdjuster`` reads the calendar from its global data provider; here the
calendar is given explicitly (a sequence of dates), so generators stay pure functions of
their inputs and can be tested on a hand-written calendar. Method names and meanings are
Qlib's: a segment start is aligned forward to the first trading day on or after it, a
segment end backward to the last trading day on or before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from alphamill.errors import ConfigError

__all__ = ["TimeAdjuster", "to_timestamp"]


def to_timestamp(value: Any, path: str) -> pd.Timestamp:
    """Parse a date-like value (str, date, datetime, Timestamp, np.datetime64)."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(
            f"expected a date such as '2020-01-31', got {value!r} ({e})", path
        ) from None
    if pd.isna(ts):
        raise ConfigError(f"expected a date such as '2020-01-31', got {value!r}", path)
    if ts.tzinfo is not None:
        raise ConfigError(f"expected a timezone-naive date, got {value!r}", path)
    return ts


class TimeAdjuster:
    """Find and shift trading days on an explicit calendar."""

    SHIFT_SD = "sliding"
    SHIFT_EX = "expanding"

    def __init__(self, calendar: Iterable[Any], path: str = "calendar"):
        if isinstance(calendar, (str, bytes)):
            raise ConfigError("expected a sequence of trading dates, got a string", path)
        try:
            values = list(calendar)
        except TypeError:
            raise ConfigError(
                f"expected a sequence of trading dates, got {type(calendar).__name__}", path
            ) from None
        stamps = [to_timestamp(v, f"{path}[{i}]") for i, v in enumerate(values)]
        if not stamps:
            raise ConfigError("the calendar is empty; expected at least one trading date", path)
        self.cals = pd.DatetimeIndex(sorted(set(stamps)))
        self.path = path
        self._iso: list[str] | None = None

    def iso(self, idx: int) -> str:
        """Canonical ISO string of the trading day at ``idx`` (cached for the calendar)."""
        if self._iso is None:
            from alphamill.canonical import iso_time

            if (self.cals == self.cals.normalize()).all():
                self._iso = list(self.cals.strftime("%Y-%m-%d"))
            else:
                self._iso = [iso_time(ts) for ts in self.cals]
        return self._iso[idx]

    def __len__(self) -> int:
        return len(self.cals)

    def get(self, idx: int) -> pd.Timestamp | None:
        """The trading day at ``idx``; ``None`` outside the calendar (as Qlib)."""
        if idx < 0 or idx >= len(self.cals):
            return None
        return self.cals[idx]

    def max(self) -> pd.Timestamp:
        return self.cals[-1]

    def align_idx(self, time_point: Any, tp_type: str = "start", path: str = "time") -> int:
        """Index of the first day >= ``time_point`` (start) or last day <= it (end).

        The result may be ``len(calendar)`` (start after the last day) or ``-1`` (end before
        the first day); callers decide whether that is an error.
        """
        ts = to_timestamp(time_point, path)
        if tp_type == "start":
            return int(self.cals.searchsorted(ts, side="left"))
        if tp_type == "end":
            return int(self.cals.searchsorted(ts, side="right")) - 1
        raise ValueError(f"tp_type must be 'start' or 'end', got {tp_type!r}")

    def cal_interval(self, time_point_a: Any, time_point_b: Any) -> int:
        """Trading days from ``b`` to ``a`` (``a - b``)."""
        return self.align_idx(time_point_a) - self.align_idx(time_point_b)

    def align_time(
        self, time_point: Any, tp_type: str = "start", path: str = "time"
    ) -> pd.Timestamp | None:
        """Align to a trading day; ``None`` (an open bound) stays ``None`` (as Qlib)."""
        if time_point is None:
            return None
        idx = self.align_idx(time_point, tp_type, path)
        day = self.get(idx)
        if day is None:
            raise ConfigError(
                f"{time_point!r} has no trading day {'on or after' if tp_type == 'start' else 'on or before'} "
                f"it in the calendar ({self.cals[0].date()} .. {self.cals[-1].date()})",
                path,
            )
        return day

    def align_seg(self, segment: Any, path: str = "segments") -> Any:
        """Align a ``(start, end)`` pair, or a dict of them, to trading days."""
        if isinstance(segment, dict):
            return {k: self.align_seg(v, f"{path}.{k}") for k, v in segment.items()}
        if isinstance(segment, (tuple, list)) and len(segment) == 2:
            return (
                self.align_time(segment[0], "start", f"{path}[0]"),
                self.align_time(segment[1], "end", f"{path}[1]"),
            )
        raise ConfigError(f"expected a (start, end) pair, got {segment!r}", path)

    def truncate(self, segment: Sequence[Any], test_start: Any, days: int) -> tuple:
        """Cap both ends of ``segment`` at ``days`` trading days before ``test_start``."""
        test_idx = self.align_idx(test_start)
        out = []
        for tp in segment:
            idx = min(self.align_idx(tp), test_idx - days)
            if idx < 0:
                raise ConfigError(
                    f"truncating {days} trading days before {test_start} leaves no trading day "
                    "in the calendar",
                    self.path,
                )
            out.append(self.cals[idx])
        return tuple(out)

    def shift(self, seg: Sequence[Any], step: int, rtype: str = SHIFT_SD) -> tuple:
        """Move a segment ``step`` trading days (sliding) or only its end (expanding).

        Raises ``KeyError`` once the start leaves the calendar, as Qlib does; an end past
        the calendar becomes ``None``.
        """
        start_idx = self.align_idx(seg[0], "start")
        end_idx = self.align_idx(seg[1], "end")
        if rtype == self.SHIFT_SD:
            start_idx += step
            end_idx += step
        elif rtype == self.SHIFT_EX:
            end_idx += step
        else:
            raise ValueError(f"rtype must be {self.SHIFT_SD!r} or {self.SHIFT_EX!r}, got {rtype!r}")
        if start_idx >= len(self.cals):
            raise KeyError("The segment is out of valid calendar")
        return self.get(start_idx), self.get(end_idx)
