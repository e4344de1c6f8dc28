"""A folder of per-instrument CSV or Parquet files.

Each file holds one instrument: columns ``date, open, high, low, close, volume``, and
optionally ``vwap``, ``factor``, ``change`` and ``symbol`` (any order, case-insensitive;
other columns are ignored but must be the same in every file). The symbol is the
``symbol`` column, or the file name without its extension. Files and folders whose name
starts with ``_`` or ``.`` (e.g. ``_benchmark/``) and ``meta.json`` are not instruments.

* The listing span of an instrument is its first..last row; the calendar is the union of
  all dates. A calendar day inside a span without a row is a halted day (a NaN row).
* Without a ``vwap`` column the ``vwap`` field is all NaN (Alpha158's ``VWAP0`` is then
  NaN, as in Qlib when ``$vwap`` is missing).
* Prices are used as they are (already adjusted, as in Qlib's data); ``factor`` and
  ``change`` can be loaded as fields when every file has them.
* Bad data raises :class:`~alphamill.errors.DataError` naming the file (and line): missing
  column, unparsable date, duplicate date, negative or infinite price/volume, non-numeric
  value, files with different columns, a file with several symbols, two files for one
  symbol, an empty folder. Nothing is silently dropped.

Values are parsed as float64 and stored as float32 (what Qlib's ``dump_bin`` stores).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from alphamill.data.base import FIELDS, NON_NEGATIVE, DataSource, Plan, Span, to_calendar
from alphamill.errors import DataError

REQUIRED = ("date", "open", "high", "low", "close", "volume")
OPTIONAL_FIELDS = ("vwap", "factor", "change")
NUMERIC = ("open", "high", "low", "close", "volume", "vwap", "factor", "change")
SUFFIXES = (".csv", ".parquet")
#: Above this many bytes the fingerprint hashes file stats instead of contents.
CONTENT_HASH_LIMIT = 16 * 1024 * 1024

_MEMO: OrderedDict[tuple[str, str], _Parsed] = OrderedDict()
_MEMO_LOCK = threading.Lock()
_MEMO_SIZE = 4


@dataclass
class _Parsed:
    calendar: pd.DatetimeIndex
    fields: tuple[str, ...]
    blocks: dict[str, tuple[int, np.ndarray]]  # symbol -> (first calendar position, rows x fields)
    spans: dict[str, list[Span]]
    files: dict[str, Path]


def data_files(folder: Path) -> list[Path]:
    """The instrument files of ``folder`` (sorted; ``_``/``.`` names skipped)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list the data folder ({e.strerror or e})") from None
    return [
        Path(e.path)
        for e in entries
        if e.is_file()
        and not e.name.startswith(("_", "."))
        and os.path.splitext(e.name)[1].lower() in SUFFIXES
    ]


class CsvFolderSource(DataSource):
    """Per-instrument CSV/Parquet files in one folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise DataError(f"{self.path}: data folder does not exist")
        self._state: _Parsed | None = None
        self._state_fp: str | None = None
        self._pinned = 0

    # -- interface ------------------------------------------------------------------------
    def calendar(self) -> pd.DatetimeIndex:
        return self._parsed().calendar

    def spans(self) -> dict[str, list[Span]]:
        return {k: list(v) for k, v in self._parsed().spans.items()}

    def available_fields(self) -> tuple[str, ...]:
        return self._parsed().fields

    def fingerprint(self) -> str:
        files = data_files(self.path)
        h = hashlib.sha256(b"alphamill.csv_folder/1\0")
        stats = [(p, p.stat()) for p in files]
        small = sum(st.st_size for _, st in stats) <= CONTENT_HASH_LIMIT
        for p, st in stats:
            h.update(f"{p.name}\0{st.st_size}\0".encode())
            if small:
                h.update(hashlib.sha256(p.read_bytes()).digest())
            else:
                h.update(f"{st.st_mtime_ns}\0".encode())
        return h.hexdigest()[:24]

    def describe(self) -> str:
        st = self._parsed()
        n_rows = sum(len(b) for _, b in st.blocks.values())
        vwap = "present" if any(
            not np.isnan(b[:, st.fields.index("vwap")]).all() for _, b in st.blocks.values()
        ) else "absent (NaN)"
        return f"{super().describe()}; {n_rows} rows incl. halted days; vwap {vwap}"

    def _read(self, plan: Plan, fields: list[str]) -> dict[str, np.ndarray]:
        st = self._parsed()
        cols = [st.fields.index(f) for f in fields]
        parts = []
        for sym, ranges in plan.items():
            first, block = st.blocks[sym]
            for lo, hi in ranges:
                parts.append(block[lo - first : hi - first + 1, cols])
        stacked = np.concatenate(parts) if parts else np.empty((0, len(cols)), np.float32)
        return {f: stacked[:, i] for i, f in enumerate(fields)}

    @contextlib.contextmanager
    def _consistent(self) -> Iterator[None]:
        self._parsed()
        self._pinned += 1
        try:
            yield
        finally:
            self._pinned -= 1

    # -- parsing --------------------------------------------------------------------------
    def _parsed(self) -> _Parsed:
        if self._pinned and self._state is not None:
            return self._state
        fp = self.fingerprint()
        if self._state is not None and self._state_fp == fp:
            return self._state
        key = (str(self.path.resolve()), fp)
        with _MEMO_LOCK:
            state = _MEMO.get(key)
            if state is not None:
                _MEMO.move_to_end(key)
        if state is None:
            cache = _cache_file(fp)
            state = _read_cache(cache, self.path) if cache is not None else None
            if state is None:
                state = _parse_folder(self.path)
                if cache is not None:
                    _write_cache(state, cache)
            with _MEMO_LOCK:
                _MEMO[key] = state
                while len(_MEMO) > _MEMO_SIZE:
                    _MEMO.popitem(last=False)
        self._state, self._state_fp = state, fp
        return state


# -- parsed-panel cache ------------------------------------------------------------------
def _cache_file(fp: str) -> Path | None:
    """Where the parsed panel of a folder with fingerprint ``fp`` is cached (None: no cache)."""
    from alphamill.config import get_setting

    try:
        root = get_setting("cache_dir")
    except Exception:  # a broken config must not stop data loading; caching is optional
        return None
    return Path(root) / "data" / f"csv-{fp}.parquet" if root else None


def _write_cache(state: _Parsed, path: Path) -> None:
    """Atomically write the parsed panel (a temp file renamed into place); failures are ignored."""
    syms = list(state.blocks)
    lengths = np.array([len(state.blocks[s][1]) for s in syms], dtype=np.int64)
    firsts = np.array([state.blocks[s][0] for s in syms], dtype=np.int64)
    values = np.concatenate([state.blocks[s][1] for s in syms])
    table = pa.table({f: values[:, j] for j, f in enumerate(state.fields)})
    meta = {
        "symbols": "\x1f".join(syms),
        "firsts": firsts.tobytes(),
        "lengths": lengths.tobytes(),
        "calendar": state.calendar.as_unit("us").asi8.tobytes(),
        "files": "\x1f".join(state.files[s].name for s in syms),
    }
    table = table.replace_schema_metadata({k.encode(): (v.encode() if isinstance(v, str) else v)
                                           for k, v in meta.items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            # no dictionary encoding: it made the write 4x slower for float columns
            pq.write_table(table, tmp, compression="lz4", use_dictionary=False)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return


def _read_cache(path: Path, folder: Path) -> _Parsed | None:
    """The cached parsed panel, or None when absent or unreadable (then the CSVs are parsed)."""
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = table.schema.metadata
        syms = meta[b"symbols"].decode().split("\x1f")
        names = meta[b"files"].decode().split("\x1f")
        firsts = np.frombuffer(meta[b"firsts"], dtype=np.int64)
        lengths = np.frombuffer(meta[b"lengths"], dtype=np.int64)
        cal = to_calendar(np.frombuffer(meta[b"calendar"], dtype=np.int64).astype("datetime64[us]"))
        fields = tuple(table.column_names)
        values = np.column_stack([table.column(f).to_numpy() for f in fields]).astype(np.float32)
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    if len(syms) != len(firsts) or int(lengths.sum()) != len(values):
        return None
    blocks, spans, files = {}, {}, {}
    at = 0
    for sym, name, first, n in zip(syms, names, firsts, lengths, strict=True):
        blocks[sym] = (int(first), values[at : at + n])
        spans[sym] = [(cal[int(first)], cal[int(first + n - 1)])]
        files[sym] = folder / name
        at += n
    return _Parsed(cal, fields, blocks, spans, files)


# ---------------------------------------------------------------------------------------
def _parse_folder(folder: Path) -> _Parsed:
    files = data_files(folder)
    if not files:
        raise DataError(
            f"{folder}: no instrument files (*.csv or *.parquet) in the data folder"
        )
    parsed = [_parse_file(p) for p in files]
    _check_same_columns(folder, [(p, cols) for p, (_, _, _, cols) in zip(files, parsed, strict=True)])
    by_symbol: dict[str, Path] = {}
    for p, (sym, _, _, _) in zip(files, parsed, strict=True):
        if sym in by_symbol:
            raise DataError(f"{folder}: symbol {sym!r} appears in two files: {by_symbol[sym].name} and {p.name}")
        by_symbol[sym] = p
    columns = parsed[0][3]
    extra = tuple(f for f in OPTIONAL_FIELDS if f != "vwap" and f in columns)
    fields = FIELDS + extra
    all_dates = np.unique(np.concatenate([d for _, d, _, _ in parsed]))
    cal = to_calendar(all_dates)
    cal_i8 = all_dates.astype("datetime64[us]").astype(np.int64)
    blocks: dict[str, tuple[int, np.ndarray]] = {}
    spans: dict[str, list[Span]] = {}
    for sym, dates, values, _ in sorted(parsed, key=lambda x: x[0]):
        pos = np.searchsorted(cal_i8, dates.astype("datetime64[us]").astype(np.int64))
        first, last = int(pos[0]), int(pos[-1])
        block = np.full((last - first + 1, len(fields)), np.nan, dtype=np.float32)
        for j, f in enumerate(fields):
            if f in values:
                block[pos - first, j] = values[f]
        blocks[sym] = (first, block)
        spans[sym] = [(cal[first], cal[last])]
    return _Parsed(cal, fields, blocks, spans, by_symbol)


def _check_same_columns(folder: Path, cols: list[tuple[Path, tuple[str, ...]]]) -> None:
    groups: dict[frozenset[str], list[Path]] = {}
    for p, c in cols:
        groups.setdefault(frozenset(c), []).append(p)
    if len(groups) <= 1:
        return
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    common = ranked[0][0]
    lines = []
    for colset, paths in ranked[1:]:
        missing, extra = sorted(common - colset), sorted(colset - common)
        names = ", ".join(p.name for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
        diff = "; ".join(
            s for s in (f"missing {missing}" if missing else "", f"extra {extra}" if extra else "") if s
        )
        lines.append(f"{names} ({diff})")
    raise DataError(
        f"{folder}: files have different columns; most have {sorted(common)} "
        f"({len(ranked[0][1])} files), but " + "; ".join(lines)
    )


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        row = next(csv.reader(f), None)
    if not row:
        raise DataError(f"{path}: empty file (no header line)")
    return [c.strip().lower() for c in row]


def _parse_file(path: Path) -> tuple[str, np.ndarray, dict[str, np.ndarray], tuple[str, ...]]:
    """(symbol, sorted dates as datetime64[us], {field: float64 values}, lower-case columns)."""
    if path.suffix.lower() == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: cannot read the Parquet file ({e})") from None
        table = table.rename_columns([c.strip().lower() for c in table.column_names])
        columns = tuple(table.column_names)
        _check_required(path, columns)
        line_offset = 1  # row i is "row i+1" of the table
        numeric = {}
        for c in NUMERIC:
            if c in columns:
                numeric[c] = _parquet_numeric(path, table.column(c), c)
    else:
        raw = _header(path)
        columns = tuple(raw)
        _check_required(path, columns)
        if len(set(raw)) != len(raw):
            dup = sorted({c for c in raw if raw.count(c) > 1})
            raise DataError(f"{path}: duplicate column(s) {dup}")
        want = {"date": pa.string(), "symbol": pa.string()}
        want.update({c: pa.float64() for c in NUMERIC})
        types = {c: want[c] for c in columns if c in want}
        try:
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(column_names=list(raw), skip_rows=1),
                convert_options=pacsv.ConvertOptions(
                    column_types=types, include_columns=list(types), strings_can_be_null=True
                ),
            )
        except pa.ArrowInvalid as e:
            _diagnose_csv(path, raw, e)
            raise  # _diagnose_csv always raises; kept for type checkers
        line_offset = 2  # data row i is on line i+2 (after the header)
        numeric = {c: table.column(c).to_numpy(zero_copy_only=False) for c in NUMERIC if c in columns}
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    dates = _dates(path, table.column("date"), line_offset)
    symbol = _symbol(path, table)
    order = np.argsort(dates, kind="stable")
    dates = dates[order]
    dup = np.flatnonzero(dates[1:] == dates[:-1])
    if dup.size:
        i = dup[0]
        a, b = sorted((int(order[i]), int(order[i + 1])))
        raise DataError(
            f"{path}: duplicate date {pd.Timestamp(dates[i]).date()} "
            f"({'lines' if line_offset == 2 else 'rows'} {a + line_offset} and {b + line_offset})"
        )
    values = {}
    for c, v in numeric.items():
        v = np.asarray(v, dtype=np.float64)
        if np.isinf(v).any():
            i = int(np.flatnonzero(np.isinf(v))[0])
            raise DataError(f"{path}, {'line' if line_offset == 2 else 'row'} {i + line_offset}: {c} is infinite")
        if c in NON_NEGATIVE:
            neg = np.flatnonzero(v < 0)
            if neg.size:
                i = int(neg[0])
                what = "price" if c != "volume" else "volume"
                raise DataError(
                    f"{path}, {'line' if line_offset == 2 else 'row'} {i + line_offset}: "
                    f"negative {what} in column {c!r} ({v[i]})"
                )
        values[c] = v[order]
    return symbol, dates, values, columns


def _check_required(path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found {list(columns)} "
            f"(expected date, open, high, low, close, volume[, vwap, factor, change, symbol])"
        )


def _diagnose_csv(path: Path, header: list[str], err: Exception) -> None:
    """Find the offending line after a fast-path parse failure and raise a precise error."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {lineno}: expected {len(header)} values, found {len(row)}"
                )
            for name, cell in zip(header, row, strict=True):
                if name in NUMERIC and cell.strip() not in ("", "nan", "NaN", "NA", "null"):
                    try:
                        float(cell)
                    except ValueError:
                        raise DataError(
                            f"{path}, line {lineno}: non-numeric value {cell!r} in column {name!r}"
                        ) from None
    raise DataError(f"{path}: cannot parse the CSV file ({err})")


def _parquet_numeric(path: Path, col: pa.ChunkedArray, name: str) -> np.ndarray:
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if pa.types.is_decimal(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    values = col.to_pylist()
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = np.nan if v is None or v == "" else float(v)
        except (TypeError, ValueError):
            raise DataError(f"{path}, row {i + 1}: non-numeric value {v!r} in column {name!r}") from None
    return out


def _dates(path: Path, col: pa.ChunkedArray, line_offset: int) -> np.ndarray:
    """Dates as sorted-ready datetime64[us]; any unparsable or empty value is an error."""
    where = "line" if line_offset == 2 else "row"
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        arr = col.cast(pa.timestamp("us")) if pa.types.is_date(col.type) else col
        out = pd.DatetimeIndex(arr.to_pandas()).tz_localize(None) if getattr(arr.type, "tz", None) else pd.DatetimeIndex(arr.to_pandas())
        if out.isna().any():
            i = int(np.flatnonzero(out.isna())[0])
            raise DataError(f"{path}, {where} {i + line_offset}: empty date")
        values = out.as_unit("us").to_numpy()
    else:
        strings = col.cast(pa.string())
        parsed = pc.strptime(strings, format="%Y-%m-%d", unit="us", error_is_null=True)
        if parsed.null_count:
            texts = strings.to_pylist()
            parsed_pd = pd.to_datetime(pd.Series(texts, dtype=object), format="ISO8601", errors="coerce")
            if parsed_pd.isna().any():
                compact = pd.to_datetime(pd.Series(texts, dtype=object), format="%Y%m%d", errors="coerce")
                parsed_pd = parsed_pd.fillna(compact)
            bad = np.flatnonzero(parsed_pd.isna().to_numpy())
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{path}, {where} {i + line_offset}: cannot parse date {texts[i]!r} "
                    f"(expected YYYY-MM-DD)"
                )
            idx = pd.DatetimeIndex(parsed_pd)
            if idx.tz is not None:
                idx = idx.tz_localize(None)
            values = idx.as_unit("us").to_numpy()
        else:
            values = parsed.to_numpy(zero_copy_only=False).astype("datetime64[us]")
    days = values.astype("datetime64[D]").astype("datetime64[us]")
    off = np.flatnonzero(days != values)
    if off.size:
        i = int(off[0])
        raise DataError(
            f"{path}, {where} {i + line_offset}: date {pd.Timestamp(values[i])} has a time of day; "
            f"daily data is expected"
        )
    return values


def _symbol(path: Path, table: pa.Table) -> str:
    if "symbol" not in table.column_names:
        return path.stem
    uniq = [s for s in pc.unique(table.column("symbol").cast(pa.string())).to_pylist() if s]
    uniq = sorted({s.strip() for s in uniq if s.strip()})
    if len(uniq) > 1:
        shown = ", ".join(uniq[:5]) + (" ..." if len(uniq) > 5 else "")
        raise DataError(
            f"{path}: the symbol column holds several symbols ({shown}); "
            f"expected one instrument per file"
        )
    return uniq[0] if uniq else path.stem
