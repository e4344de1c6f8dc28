"""Universes: which instruments, over which date ranges.

A universe is given as

* ``"all"``: every instrument over its listing spans;
* a list (or tuple) of symbols;
* a market name: ``instruments/<market>.txt`` of a Qlib data folder (e.g. ``"csi300"``);
* a path to a Qlib instruments file (``SYMBOL<TAB>start<TAB>end`` per line, several lines
  per symbol allowed), whose ranges are honoured: no row outside them is loaded;
* Qlib's ``D.instruments(market)`` dict ``{"market": ..., "filter_pipe": []}``.

Resolution returns ``{symbol: [(start, end), ...]}``; an empty universe or an unknown
symbol is a :class:`~alphamill.errors.DataError`, never silently dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError, DataError

if TYPE_CHECKING:
    from alphamill.data.base import DataSource, Span

_FAR_PAST = pd.Timestamp("1677-09-22")
_FAR_FUTURE = pd.Timestamp("2262-04-10")


def read_instruments_file(path: str | os.PathLike) -> dict[str, list[Span]]:
    """Parse a Qlib instruments file: ``SYMBOL<TAB>start<TAB>end`` lines (blank lines skipped)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise DataError(f"{p}: cannot read instruments file ({e.strerror or e})") from None
    out: dict[str, list[Span]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        parts = [x.strip() for x in parts]
        if len(parts) != 3 or not parts[0]:
            raise DataError(
                f"{p}, line {lineno}: expected 'SYMBOL<TAB>start<TAB>end', got {line!r}"
            )
        sym, a, b = parts
        try:
            start, end = pd.Timestamp(a), pd.Timestamp(b)
        except (ValueError, TypeError):
            raise DataError(f"{p}, line {lineno}: cannot parse dates {a!r} and {b!r}") from None
        if start is pd.NaT or end is pd.NaT:
            raise DataError(f"{p}, line {lineno}: cannot parse dates {a!r} and {b!r}")
        if start > end:
            raise DataError(f"{p}, line {lineno}: start {a} is after end {b}")
        out.setdefault(sym, []).append((start, end))
    for v in out.values():
        v.sort()
    return out


def write_instruments_file(spans: Mapping[str, list[Span]], path: str | os.PathLike) -> None:
    """Write spans in Qlib's instruments format (one line per range, dates as YYYY-MM-DD)."""
    lines = [
        f"{sym}\t{a:%Y-%m-%d}\t{b:%Y-%m-%d}"
        for sym in sorted(spans)
        for a, b in sorted(spans[sym])
    ]
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""))


def _from_symbols(source: DataSource, symbols: list[Any], what: str) -> dict[str, list[Span]]:
    listing = source.spans()
    lower: dict[str, list[str]] = {}
    for k in listing:
        lower.setdefault(k.lower(), []).append(k)
    out: dict[str, list[Span]] = {}
    unknown = []
    for s in symbols:
        if not isinstance(s, str) or not s.strip():
            raise ConfigError(f"instrument names must be non-empty strings, got {s!r}", "instruments")
        s = s.strip()
        hits = lower.get(s.lower(), [])
        sym = s if s in listing else (hits[0] if len(hits) == 1 else None)
        if sym is None:
            unknown.append(s)
            continue
        out[sym] = [(_FAR_PAST, _FAR_FUTURE)]
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(f"{what}: {len(unknown)} instrument(s) not in the data at {source.path}: {shown}")
    return out


def _case_insensitive(listing: Mapping[str, Any], sym: str) -> str | None:
    low = sym.lower()
    hits = [k for k in listing if k.lower() == low]
    return hits[0] if len(hits) == 1 else None


def _from_file(source: DataSource, path: Path) -> dict[str, list[Span]]:
    ranges = read_instruments_file(path)
    _from_symbols(source, list(ranges), f"instruments file {path}")  # raises on unknown symbols
    listing = source.spans()
    lower = {k.lower(): k for k in listing}
    out: dict[str, list[Span]] = {}
    for orig, rs in ranges.items():
        sym = orig if orig in listing else lower[orig.lower()]
        out.setdefault(sym, []).extend(rs)
    return out


def resolve_universe(source: DataSource, instruments: Any = "all") -> dict[str, list[Span]]:
    """``{symbol: [(start, end), ...]}`` of a universe spec on ``source`` (see module doc)."""
    if isinstance(instruments, Mapping):
        market = instruments.get("market")
        if instruments.get("filter_pipe"):
            raise ConfigError("dynamic instrument filters (filter_pipe) are not supported", "instruments")
        if not isinstance(market, str):
            raise ConfigError(f"expected a 'market' name, got {dict(instruments)!r}", "instruments")
        instruments = market
    if isinstance(instruments, os.PathLike):
        instruments = os.fspath(instruments)
    if instruments is None:
        instruments = "all"
    if isinstance(instruments, str):
        spec = instruments.strip()
        if not spec:
            raise ConfigError("empty universe name", "instruments")
        market_file = _market_file(source, spec)
        if spec.lower() == "all" and market_file is None:
            out = {sym: [(_FAR_PAST, _FAR_FUTURE)] for sym in source.spans()}
        elif market_file is not None:
            out = _from_file(source, market_file)
        elif os.path.isfile(spec):
            out = _from_file(source, Path(spec))
        elif _case_insensitive(source.spans(), spec) is not None or spec in source.spans():
            out = _from_symbols(source, [spec], "instruments")
        else:
            raise DataError(
                f"universe {spec!r} is neither 'all', a market of {source.path} "
                f"(instruments/<market>.txt), an instruments file nor a symbol"
            )
    elif isinstance(instruments, (list, tuple, set, frozenset, pd.Index, np.ndarray)):
        out = _from_symbols(source, sorted(instruments, key=str), "instruments")
    else:
        raise ConfigError(
            f"expected 'all', a list of symbols, a market name or an instruments file, "
            f"got {type(instruments).__name__}",
            "instruments",
        )
    if not out:
        raise DataError(f"universe {instruments!r} on {source.path} is empty")
    return out


def _market_file(source: DataSource, name: str) -> Path | None:
    """``instruments/<name>.txt`` inside a Qlib data folder, if the source has one."""
    finder = getattr(source, "market_file", None)
    return finder(name) if finder is not None else None
