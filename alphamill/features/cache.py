"""A feature set (Alpha158, Alpha360) + label computed once per data set and kept on disk.

Features at a date never depend on the query window (each instrument is evaluated over
its whole listing span), so the full table is computed once, stored under
``cache_dir/<feature set>/<key>/``, and every later request (another rolling window, a rerun,
another worker) only slices it. The key digests the data's fingerprint, the feature and
label expressions and the feature code itself, so a changed data file or a code change
gives a new entry instead of stale numbers.

Storage is one float32 ``.npy`` block (columns × rows, the layout pandas keeps
internally) plus the row codes, so a reload is a read of contiguous memory with no
parsing. Concurrent builders are safe: one process computes under a file lock while the
others wait, the entry is written to a temporary folder and renamed into place
atomically, and a reader never sees a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import DataError
from alphamill.features import alpha158 as A
from alphamill.features.sets import DEFAULT_SET, FEATURE_SETS, feature_config
from alphamill.locks import file_lock

#: Bump when the stored layout changes.
CACHE_FORMAT = 1
_CODE_FILES = ("ops.py", "expr.py", "alpha158.py", "cache.py")


def code_version() -> str:
    """Digest of the feature code, so a change to any formula invalidates old entries."""
    h = hashlib.sha256(str(CACHE_FORMAT).encode())
    here = Path(__file__).resolve().parent
    for name in _CODE_FILES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def cache_key(
    fingerprint: str, label_exprs: list[str], label_names: list[str], features: str = DEFAULT_SET
) -> str:
    """Key of one cache entry: data fingerprint + feature/label configuration + code."""
    exprs, names = feature_config(features)
    payload = {
        "fingerprint": fingerprint,
        "features": list(zip(names, exprs, strict=True)),
        "label": list(zip(label_names, label_exprs, strict=True)),
        "code": code_version(),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def compute_table(
    source, label_exprs: list[str], label_names: list[str], alloc: Any = None,
    features: str = DEFAULT_SET,
) -> pd.DataFrame:
    """The full feature + label table of a data source (every listed row); ``alloc`` as in
    :func:`alphamill.features.alpha158.evaluate`."""
    exprs, names = feature_config(features)
    panel = source.load("all")
    if panel.empty:
        raise DataError(f"{source.path}: the data has no rows")
    return A.evaluate(
        A.to_dense(panel), exprs + list(label_exprs), names + list(label_names), alloc=alloc
    )


class _NpyFileBuffer:
    """The working buffer of :func:`compute_table` as the mapped ``values.npy`` file itself.

    The file gets the header of the final (columns x rows) block, then room for the larger
    working buffer; the computation (and its forked helpers) writes straight into the file's
    pages, and ``finish()`` cuts the file to the final block. Saving the finished table
    would otherwise copy half a gigabyte once more, at the end of the computation.
    """

    def __init__(self, path: Path):
        self.path = path
        self.size: int | None = None

    def __call__(self, n: int, shape: tuple[int, int]) -> np.ndarray:
        import mmap

        with open(self.path, "w+b") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                    "shape": tuple(int(x) for x in shape)})
            offset = f.tell()
            f.truncate(offset + max(n, 1) * 4)
            mm = mmap.mmap(f.fileno(), offset + max(n, 1) * 4)  # shared: helpers' writes land here
        self.size = offset + int(shape[0]) * int(shape[1]) * 4
        return np.frombuffer(mm, dtype=np.float32, count=n, offset=offset)

    def finish(self) -> None:
        if self.size is not None:
            os.truncate(self.path, self.size)


def _write_entry(table: pd.DataFrame, folder: Path, values_written: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=values_written)
    idx = table.index
    assert isinstance(idx, pd.MultiIndex)
    if not values_written:
        values = np.ascontiguousarray(table.to_numpy(dtype=np.float32).T)
        np.save(folder / "values.npy", values, allow_pickle=False)
    days = pd.DatetimeIndex(idx.levels[0])
    np.savez(
        folder / "index.npz",
        day_codes=np.asarray(idx.codes[0], dtype=np.int32),
        inst_codes=np.asarray(idx.codes[1], dtype=np.int32),
        days=days.as_unit("us").asi8,
        instruments=np.asarray(idx.levels[1], dtype=str),
    )
    (folder / "meta.json").write_text(
        json.dumps({"format": CACHE_FORMAT, "columns": list(map(str, table.columns))})
    )


def _read_entry(folder: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    meta = json.loads((folder / "meta.json").read_text())
    # copy-on-write mapping: no read up front, and callers may still modify the frame
    values = np.load(folder / "values.npy", mmap_mode="c", allow_pickle=False).view(np.ndarray)
    with np.load(folder / "index.npz", allow_pickle=False) as z:
        index = {k: z[k] for k in z.files}
    return values, index, meta["columns"]


def _entry_path(src, label, cache_dir, features: str) -> tuple[Path, str, list[str], list[str]]:
    from alphamill.config import get_setting

    exprs, names = A.label_config(label)
    root = Path(get_setting("cache_dir", cache_dir)).expanduser() / features
    key = cache_key(src.fingerprint(), exprs, names, features)
    return root, key, exprs, names


def cached_entry(source, label=None, cache_dir=None, features: str = DEFAULT_SET) -> Path | None:
    """Path of the finished cache entry for ``source``, ``label`` and the feature set, or None."""
    from alphamill.data import open_data

    root, key, _, _ = _entry_path(open_data(source), label, cache_dir, features)
    entry = root / key
    return entry if (entry / "meta.json").is_file() else None


def ensure_cached(source, label=None, cache_dir=None, features: str = DEFAULT_SET) -> Path:
    """Path of the cache entry for ``source``, ``label`` and the feature set ``features``
    (``alpha158`` or ``alpha360``), computing it if needed."""
    from alphamill.data import open_data

    src = open_data(source)
    root, key, exprs, names = _entry_path(src, label, cache_dir, features)
    entry = root / key
    if (entry / "meta.json").is_file():
        return entry
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f"{key}.lock"):
        if (entry / "meta.json").is_file():  # built by another process meanwhile
            return entry
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            (tmp / "entry").mkdir()
            buffer = _NpyFileBuffer(tmp / "entry" / "values.npy")
            table = compute_table(src, exprs, names, alloc=buffer, features=features)
            buffer.finish()
            _write_entry(table, tmp / "entry", values_written=True)
            del table
            try:
                os.rename(tmp / "entry", entry)
            except OSError:
                if not (entry / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def load_features(
    source: Any,
    instruments: Any = "all",
    start: Any = None,
    end: Any = None,
    label: Any = None,
    cache_dir: str | os.PathLike | None = None,
    features: str = DEFAULT_SET,
) -> pd.DataFrame:
    """The feature set's columns (Alpha158's 158 or Alpha360's 360, Qlib's order) + label
    column(s), float32, indexed by sorted (datetime, instrument), restricted to
    ``instruments``' listing ranges within ``[start, end]``.

    ``source`` is anything :func:`alphamill.data.open_data` accepts; ``label`` is ``None``
    (LABEL0), an expression or Qlib's ``(["expr"], ["NAME"])`` pair. The whole table is
    computed once per data fingerprint, feature set and label and cached under ``cache_dir``
    (the ``cache_dir`` setting by default).
    """
    from alphamill.data import open_data

    src = open_data(source)
    entry = ensure_cached(src, label=label, cache_dir=cache_dir, features=features)
    values, index, columns = _read_entry(entry)
    days = pd.DatetimeIndex(index["days"].astype("datetime64[us]"), name="datetime")
    insts = index["instruments"]
    day_codes = index["day_codes"]
    inst_codes = index["inst_codes"]
    whole = isinstance(instruments, str) and instruments == "all" and start is None and end is None
    keep = None if whole else _rows_allowed(src, instruments, start, end, days, insts, index)
    if keep is None or keep.all():
        block, dc, ic = values, day_codes, inst_codes
    else:
        rows = np.flatnonzero(keep)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # one date range: a view
            block = values[:, rows[0] : rows[-1] + 1]
        else:
            block = np.ascontiguousarray(values[:, rows])
        dc, ic = day_codes[rows], inst_codes[rows]
    idx = pd.MultiIndex(
        levels=[days, pd.Index(insts, dtype="str", name="instrument")],
        codes=[dc, ic],
        names=["datetime", "instrument"],
        verify_integrity=False,
    ).remove_unused_levels()
    return pd.DataFrame(block.T, index=idx, columns=columns, copy=False)


def _rows_allowed(src, instruments, start, end, days, insts, index) -> np.ndarray:
    """Mask of the cached rows inside the universe's listing ranges and the window."""
    cal = src.calendar()
    plan = src.plan(instruments, start, end)
    cal_pos = cal.searchsorted(days)
    if len(days) and (cal_pos.max() >= len(cal) or not (cal[cal_pos] == days).all()):
        raise DataError("the feature cache does not match the data calendar; clear the cache")
    sym_code = {s: i for i, s in enumerate(insts)}
    allowed = np.zeros((len(cal), len(insts)), dtype=bool)
    for sym, ranges in plan.items():
        j = sym_code.get(sym)
        if j is None:
            continue
        for lo, hi in ranges:
            allowed[lo : hi + 1, j] = True
    return allowed[cal_pos[index["day_codes"]], index["inst_codes"]]


def clear_cache(cache_dir: str | os.PathLike | None = None, older_than_s: float = 0.0) -> int:
    """Remove cache entries (optionally only those older than ``older_than_s`` seconds);
    returns how many were removed."""
    from alphamill.config import get_setting

    base = Path(get_setting("cache_dir", cache_dir)).expanduser()
    now = time.time()
    removed = 0
    for root in (base / name for name in FEATURE_SETS):
        if not root.is_dir():
            continue
        for p in root.iterdir():
            if p.is_dir() and now - p.stat().st_mtime >= older_than_s:
                shutil.rmtree(p, ignore_errors=True)
                removed += 1
    return removed
