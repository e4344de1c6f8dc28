"""The one interface every market-data source implements.

A source exposes a trading calendar, per-instrument listing spans and a loader that
returns a panel indexed by ``(datetime, instrument)`` with **exactly one row per
instrument and calendar day inside each listing span** (Qlib's data model, see
``alpha158.md`` §1.2): a halted day, i.e. a calendar day inside the span with no data,
is a row of NaN, because rolling windows count calendar rows, not observations. No row
ever falls outside a span, and no value is ever read from outside one.

Subclasses implement :meth:`DataSource.calendar`, :meth:`DataSource.spans`,
:meth:`DataSource.fingerprint`, :meth:`DataSource.available_fields` and
:meth:`DataSource._read`; the universe resolution, the date window and the row layout
are shared here so that the three sources cannot disagree about rows.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

#: The six stored fields Alpha158 reads (Qlib's ``$open`` ... ``$vwap``).
FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume", "vwap")

#: Fields whose values must never be negative (a negative one means corrupt data).
NON_NEGATIVE: frozenset[str] = frozenset({"open", "high", "low", "close", "volume", "vwap"})

Span = tuple[pd.Timestamp, pd.Timestamp]
#: Calendar positions to read per instrument: inclusive ``(lo, hi)`` pairs, sorted.
Plan = dict[str, list[tuple[int, int]]]


def to_calendar(values: Any) -> pd.DatetimeIndex:
    """A sorted, unique ``DatetimeIndex`` named ``datetime`` in microseconds (the fixtures' unit)."""
    idx = pd.DatetimeIndex(values)
    if idx.tz is not None:
        idx = idx.tz_localize(None)
    return pd.DatetimeIndex(idx.as_unit("us"), name="datetime")


def normalize_fields(fields: Iterable[str] | str, available: Sequence[str]) -> list[str]:
    """Field names without Qlib's ``$`` prefix, lower-case, checked against ``available``."""
    if isinstance(fields, str):
        fields = [fields]
    out: list[str] = []
    for f in fields:
        if not isinstance(f, str) or not f.strip():
            raise ConfigError(f"field names must be non-empty strings, got {f!r}", "fields")
        name = f.strip().lstrip("$").lower()
        if name not in available:
            raise ConfigError(
                f"unknown field {f!r}; this data has {', '.join(available)}", "fields"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError("at least one field is needed", "fields")
    return out


def _timestamp(value: Any, name: str) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot parse {value!r} as a date ({e})", name) from None
    if ts is pd.NaT:
        raise ConfigError(f"{value!r} is not a date", name)
    return ts.tz_localize(None) if ts.tz is not None else ts


class DataSource(ABC):
    """A market-data source: calendar, listing spans and a panel loader."""

    #: Where the data lives (a folder); used in messages and by ``describe``.
    path: Any = None

    # -- what subclasses provide ---------------------------------------------------------
    @abstractmethod
    def calendar(self) -> pd.DatetimeIndex:
        """Sorted union of the trading dates of the data set."""

    @abstractmethod
    def spans(self) -> dict[str, list[Span]]:
        """Listing spans per instrument (inclusive date pairs; several for some Qlib data)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A cheap digest that changes whenever any data file changes (for cache keys)."""

    @abstractmethod
    def available_fields(self) -> tuple[str, ...]:
        """Field names :meth:`load` accepts (always includes :data:`FIELDS`)."""

    @abstractmethod
    def _read(self, plan: Plan, fields: list[str]) -> dict[str, np.ndarray]:
        """Values for ``plan``: per field one float32 array with the plan's rows, in the
        order instruments are given, then ranges, then calendar position."""

    @contextlib.contextmanager
    def _consistent(self) -> Iterator[None]:
        """Within this block a source may skip re-checking its files (one ``load`` = one snapshot)."""
        yield

    # -- shared behaviour ----------------------------------------------------------------
    def instruments(self, universe: Any = "all") -> list[str]:
        """Sorted symbols of ``universe`` ("all", a list, a market name or an instruments file)."""
        from alphamill.data.universe import resolve_universe

        return sorted(resolve_universe(self, universe))

    def describe(self) -> str:
        """One human-readable paragraph: kind, place, calendar range, instruments, spans."""
        cal = self.calendar()
        spans = self.spans()
        n_ranges = sum(len(v) for v in spans.values())
        rng = f"{cal[0].date()}..{cal[-1].date()}" if len(cal) else "empty"
        return (
            f"{type(self).__name__} at {self.path}: calendar {rng} ({len(cal)} days), "
            f"{len(spans)} instruments ({n_ranges} listing ranges), "
            f"fields {', '.join(self.available_fields())}, fingerprint {self.fingerprint()}"
        )

    def plan(self, instruments: Any = "all", start: Any = None, end: Any = None) -> Plan:
        """Calendar positions each instrument contributes: universe ranges ∩ listing spans ∩ window."""
        from alphamill.data.universe import resolve_universe

        s, e = _timestamp(start, "start"), _timestamp(end, "end")
        if s is not None and e is not None and s > e:
            raise ConfigError(f"start {s.date()} is after end {e.date()}", "start")
        universe = resolve_universe(self, instruments)
        cal = self.calendar()
        listing = self.spans()
        lo_win = 0 if s is None else int(cal.searchsorted(s, side="left"))
        hi_win = len(cal) - 1 if e is None else int(cal.searchsorted(e, side="right")) - 1
        plan: Plan = {}
        for sym in sorted(universe):
            ranges: list[tuple[int, int]] = []
            for u0, u1 in universe[sym]:
                for l0, l1 in listing[sym]:
                    a, b = max(u0, l0), min(u1, l1)
                    if a > b:
                        continue
                    lo = max(int(cal.searchsorted(a, side="left")), lo_win)
                    hi = min(int(cal.searchsorted(b, side="right")) - 1, hi_win)
                    if lo <= hi:
                        ranges.append((lo, hi))
            plan[sym] = _merge(ranges)
        return plan

    def load(
        self,
        instruments: Any = "all",
        start: Any = None,
        end: Any = None,
        fields: Iterable[str] = FIELDS,
    ) -> pd.DataFrame:
        """Panel of ``fields`` (float32) indexed by sorted ``(datetime, instrument)``.

        One row per instrument and calendar day inside its listing span (and inside the
        universe's ranges, for an instruments file) within ``[start, end]``; halted days are
        NaN rows.
        """
        with self._consistent():
            return self._load(instruments, start, end, fields)

    def _load(self, instruments: Any, start: Any, end: Any, fields: Iterable[str]) -> pd.DataFrame:
        names = normalize_fields(fields, self.available_fields())
        plan = self.plan(instruments, start, end)
        cal = self.calendar()
        syms = list(plan)
        pos_parts, code_parts = [], []
        for code, sym in enumerate(syms):
            for lo, hi in plan[sym]:
                pos_parts.append(np.arange(lo, hi + 1, dtype=np.int64))
                code_parts.append(np.full(hi - lo + 1, code, dtype=np.int64))
        pos = np.concatenate(pos_parts) if pos_parts else np.empty(0, np.int64)
        codes = np.concatenate(code_parts) if code_parts else np.empty(0, np.int64)
        values = self._read({s: plan[s] for s in syms}, names)
        # rows are concatenated by instrument code, then position: a stable sort on the
        # position alone yields the (datetime, instrument) order
        order = np.argsort(pos, kind="stable")
        index = pd.MultiIndex(
            levels=[cal, pd.Index(syms, dtype="str", name="instrument")],
            codes=[pos[order], codes[order]],
            names=["datetime", "instrument"],
            verify_integrity=False,
        ).remove_unused_levels()
        data = {f: np.asarray(values[f], dtype=np.float32)[order] for f in names}
        return pd.DataFrame(data, index=index, columns=names)

    def series(
        self, code: str, field: str = "close", start: Any = None, end: Any = None
    ) -> pd.Series:
        """One field of one code on the calendar days in ``[start, end]`` (NaN where it has no
        value), float64, indexed by date. A backtest's benchmark is read this way."""
        name = normalize_fields([field], self.available_fields())[0]
        cal = self.calendar()
        s, e = _timestamp(start, "start"), _timestamp(end, "end")
        lo = 0 if s is None else int(cal.searchsorted(s, side="left"))
        hi = len(cal) if e is None else int(cal.searchsorted(e, side="right"))
        days = cal[lo:hi]
        values = self._code_values(code, name)
        return values.reindex(days).rename(code)

    def _code_values(self, code: str, field: str) -> pd.Series:
        """Every stored value of ``field`` for ``code``, indexed by date."""
        panel = self.load([code], fields=[field])
        return panel[field].droplevel("instrument").astype("float64")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping inclusive ranges (overlapping or touching ones joined)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
