"""Qlib's binary data directory, read directly (no Qlib needed), and a writer for it.

Layout (``~/.qlib/qlib_data/cn_data`` and what Qlib's ``dump_bin.py`` writes)::

    calendars/day.txt                 one date per line, sorted
    instruments/<market>.txt          SYMBOL<TAB>start<TAB>end, several lines per symbol allowed
    features/<symbol lower>/<field>.day.bin
                                      little-endian float32: [start index in the calendar,
                                      value, value, ...] for consecutive calendar days

Listing spans come from ``instruments/all.txt`` (or, without it, from each instrument's
``close`` file coverage). A calendar day inside a span that the ``.bin`` file does not
cover, or stores as NaN, is a halted day (a NaN row). ``vwap`` may be absent (Qlib's public
``cn_data`` has none): the field is then NaN. Any other missing or corrupt file raises a
:class:`~alphamill.errors.DataError` naming it.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from alphamill.data.base import FIELDS, NON_NEGATIVE, DataSource, Plan, Span, to_calendar
from alphamill.data.universe import read_instruments_file, write_instruments_file
from alphamill.errors import DataError

#: Fields that may be missing from a Qlib data set (read as NaN).
OPTIONAL = frozenset({"vwap"})
#: Windows reserved names that Qlib's ``code_to_fname`` prefixes with ``_qlib_``.
_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)} | {f"LPT{i}" for i in range(10)}


def code_to_fname(code: str) -> str:
    """Qlib's folder name for an instrument code (lower-case; reserved names prefixed)."""
    return ("_qlib_" + code if code.upper() in _RESERVED else code).lower()


def is_qlib_dir(path: str | os.PathLike, freq: str = "day") -> bool:
    """True when ``path`` looks like a Qlib data folder (a calendar and a features folder)."""
    p = Path(path)
    return (p / "calendars" / f"{freq}.txt").is_file() and (p / "features").is_dir()


class QlibBinSource(DataSource):
    """A Qlib data directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, freq: str = "day"):
        self.path = Path(path).expanduser()
        self.freq = freq
        if not self.path.is_dir():
            raise DataError(f"{self.path}: Qlib data folder does not exist")
        if not (self.path / "calendars" / f"{freq}.txt").is_file():
            raise DataError(f"{self.path}: not a Qlib data folder (no calendars/{freq}.txt)")
        if not (self.path / "features").is_dir():
            raise DataError(f"{self.path}: not a Qlib data folder (no features/ folder)")

    # -- calendar and spans ---------------------------------------------------------------
    @cached_property
    def _calendar(self) -> pd.DatetimeIndex:
        p = self.path / "calendars" / f"{self.freq}.txt"
        lines = [ln.strip() for ln in p.read_text().splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise DataError(f"{p}: empty calendar")
        parsed = pd.to_datetime(pd.Series(lines, dtype=object), format="ISO8601", errors="coerce")
        bad = np.flatnonzero(parsed.isna().to_numpy())
        if bad.size:
            raise DataError(f"{p}, line {bad[0] + 1}: cannot parse date {lines[bad[0]]!r}")
        cal = pd.DatetimeIndex(parsed)
        if cal.tz is not None:
            cal = cal.tz_localize(None)
        i8 = cal.as_unit("us").asi8
        step = np.diff(i8)
        if (step == 0).any():
            i = int(np.flatnonzero(step == 0)[0])
            raise DataError(f"{p}, line {i + 2}: duplicate date {lines[i + 1]}")
        if (step < 0).any():
            i = int(np.flatnonzero(step < 0)[0])
            raise DataError(f"{p}, line {i + 2}: dates are not sorted ({lines[i + 1]} after {lines[i]})")
        return to_calendar(cal)

    def calendar(self) -> pd.DatetimeIndex:
        return self._calendar

    @cached_property
    def _spans(self) -> dict[str, list[Span]]:
        all_file = self.market_file("all")
        if all_file is not None:
            return read_instruments_file(all_file)
        spans: dict[str, list[Span]] = {}
        cal = self.calendar()
        for d in sorted(os.scandir(self.path / "features"), key=lambda e: e.name):
            if not d.is_dir():
                continue
            f = Path(d.path) / f"close.{self.freq}.bin"
            if not f.is_file():
                raise DataError(f"{f}: missing (needed for the listing span; no instruments/all.txt)")
            start, n = self._header(f)
            if n == 0:
                continue
            name = d.name[len("_qlib_"):] if d.name.startswith("_qlib_") else d.name
            spans[name.upper()] = [(cal[start], cal[start + n - 1])]
        if not spans:
            raise DataError(f"{self.path / 'features'}: no instrument data")
        return spans

    def spans(self) -> dict[str, list[Span]]:
        return {k: list(v) for k, v in self._spans.items()}

    def market_file(self, name: str) -> Path | None:
        """``instruments/<name>.txt`` if it exists (exact name first, then lower-case)."""
        base = self.path / "instruments"
        for cand in (name, name.lower()):
            if "/" in cand or "\\" in cand or cand.startswith("."):
                return None
            p = base / f"{cand}.txt"
            if p.is_file():
                return p
        return None

    def available_fields(self) -> tuple[str, ...]:
        extra = set()
        feats = self.path / "features"
        first = next((d for d in sorted(os.scandir(feats), key=lambda e: e.name) if d.is_dir()), None)
        if first is not None:
            suffix = f".{self.freq}.bin"
            extra = {
                e.name[: -len(suffix)] for e in os.scandir(first.path) if e.name.endswith(suffix)
            }
        return FIELDS + tuple(sorted(extra - set(FIELDS)))

    def fingerprint(self) -> str:
        """Digest of path, size and mtime of the calendar, instruments and every .bin file."""
        h = hashlib.sha256(f"alphamill.qlib_bin/1\0{self.freq}\0".encode())
        for sub in ("calendars", "instruments"):
            d = self.path / sub
            if d.is_dir():
                for e in sorted(os.scandir(d), key=lambda e: e.name):
                    if e.is_file():
                        st = e.stat()
                        h.update(f"{sub}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        for d in sorted(os.scandir(self.path / "features"), key=lambda e: e.name):
            if not d.is_dir():
                continue
            for e in sorted(os.scandir(d.path), key=lambda e: e.name):
                st = e.stat()
                h.update(f"{d.name}/{e.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return h.hexdigest()[:24]

    # -- reading --------------------------------------------------------------------------
    def _code_values(self, code: str, field: str) -> pd.Series:
        """Also a code with a ``features/`` folder but no line in ``instruments/all.txt``: Qlib
        reads an index (``SH000300`` in ``features/sh000300/``) as any other code, over the
        days its ``.bin`` file covers."""
        spans = self.spans()
        if code in spans or code.upper() in spans:
            return super()._code_values(code.upper() if code not in spans else code, field)
        path = self._file(code, field)
        if not path.is_file():
            raise DataError(
                f"{code!r} is neither an instrument of {self.path} (instruments/all.txt) nor stored "
                f"under features/ ({path} is missing)"
            )
        start, n = self._header(path)
        vals = np.fromfile(path, dtype="<f4", count=n, offset=4).astype("float64")
        return pd.Series(vals, index=self.calendar()[start : start + n])

    def _file(self, sym: str, field: str) -> Path:
        return self.path / "features" / code_to_fname(sym) / f"{field}.{self.freq}.bin"

    def _header(self, f: Path) -> tuple[int, int]:
        """(start index, number of values) of a .bin file, validated against the calendar."""
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(4)
        except OSError as e:
            raise DataError(f"{f}: cannot read ({e.strerror or e})") from None
        if size < 4 or size % 4:
            raise DataError(
                f"{f}: truncated or corrupt .bin file ({size} bytes; expected a 4-byte start "
                f"index followed by float32 values, i.e. a multiple of 4)"
            )
        start = float(np.frombuffer(head, dtype="<f4")[0])
        n = size // 4 - 1
        ncal = len(self.calendar())
        if not np.isfinite(start) or start != int(start) or start < 0:
            raise DataError(f"{f}: corrupt header, start index {start} is not a calendar position")
        start_i = int(start)
        if start_i >= ncal:
            raise DataError(f"{f}: start index {start_i} is out of range (calendar has {ncal} days)")
        if start_i + n > ncal:
            raise DataError(
                f"{f}: start index {start_i} with {n} values runs past the calendar "
                f"({ncal} days in calendars/{self.freq}.txt)"
            )
        return start_i, n

    def _read(self, plan: Plan, fields: list[str]) -> dict[str, np.ndarray]:
        total = sum(hi - lo + 1 for ranges in plan.values() for lo, hi in ranges)
        out = {f: np.full(total, np.nan, dtype=np.float32) for f in fields}
        for f in fields:
            at = 0
            for sym, ranges in plan.items():
                path = self._file(sym, f)
                if not path.is_file():
                    if f in OPTIONAL:
                        at += sum(hi - lo + 1 for lo, hi in ranges)
                        continue
                    raise DataError(f"{path}: missing ({sym} has no {f!r} data)")
                start, n = self._header(path)
                for lo, hi in ranges:
                    a, b = max(lo, start), min(hi, start + n - 1)
                    if a <= b:
                        vals = np.fromfile(path, dtype="<f4", count=b - a + 1, offset=4 * (1 + a - start))
                        if f in NON_NEGATIVE and (vals < 0).any():
                            i = int(np.flatnonzero(vals < 0)[0])
                            day = self.calendar()[a + i].date()
                            raise DataError(f"{path}: negative {f} ({vals[i]}) on {day}")
                        out[f][at + a - lo : at + b - lo + 1] = vals
                    at += hi - lo + 1
        return out


def write_qlib_bin(panel: pd.DataFrame | DataSource, out_dir: str | os.PathLike, freq: str = "day") -> Path:
    """Write a panel (or a whole :class:`DataSource`) as a Qlib data directory.

    ``panel`` is indexed by ``(datetime, instrument)``; each column becomes a field. The
    calendar is the panel's dates; each instrument's listing ranges are its runs of
    consecutive calendar days (so NaN rows inside a run stay halted days, and a gap between
    runs becomes a second line in ``instruments/all.txt``). Qlib reads the result.
    """
    if isinstance(panel, DataSource):
        src = panel
        panel = src.load(fields=src.available_fields())
    if not isinstance(panel.index, pd.MultiIndex) or panel.index.nlevels != 2:
        raise DataError("write_qlib_bin: expected a panel indexed by (datetime, instrument)")
    out = Path(out_dir)
    dates = pd.DatetimeIndex(panel.index.get_level_values(0))
    cal = to_calendar(np.unique(dates.as_unit("us").to_numpy()))
    (out / "calendars").mkdir(parents=True, exist_ok=True)
    (out / "instruments").mkdir(parents=True, exist_ok=True)
    fmt = "%Y-%m-%d" if (cal == cal.normalize()).all() else "%Y-%m-%d %H:%M:%S"
    (out / "calendars" / f"{freq}.txt").write_text("".join(f"{d:{fmt}}\n" for d in cal))
    pos_all = cal.searchsorted(dates)
    inst_index = panel.index.remove_unused_levels()
    inst_codes = np.asarray(inst_index.codes[1], dtype=np.int64)
    level = inst_index.levels[1]
    rank = np.empty(len(level), dtype=np.int64)
    rank[np.argsort(level.astype(str))] = np.arange(len(level))
    key = rank[inst_codes]  # instruments in name order
    order = np.lexsort((pos_all, key))
    spans: dict[str, list[Span]] = {}
    values = {c: panel[c].to_numpy(dtype=np.float32) for c in panel.columns}
    syms = level.astype(str)[np.argsort(level.astype(str))]
    bounds = np.searchsorted(key[order], np.arange(len(level) + 1))
    for k, sym in enumerate(syms):
        rows = order[bounds[k] : bounds[k + 1]]
        if len(rows) == 0:
            continue
        pos = pos_all[rows]
        first, last = int(pos[0]), int(pos[-1])
        breaks = np.flatnonzero(np.diff(pos) > 1)
        run_starts = [first] + [int(pos[i + 1]) for i in breaks]
        run_ends = [int(pos[i]) for i in breaks] + [last]
        spans[str(sym)] = [(cal[a], cal[b]) for a, b in zip(run_starts, run_ends, strict=True)]
        d = out / "features" / code_to_fname(str(sym))
        d.mkdir(parents=True, exist_ok=True)
        for c, v in values.items():
            series = np.full(last - first + 2, np.nan, dtype="<f4")
            series[0] = first
            series[1 + pos - first] = v[rows]
            series.tofile(d / f"{str(c).lstrip('$').lower()}.{freq}.bin")
    write_instruments_file(spans, out / "instruments" / "all.txt")
    return out
