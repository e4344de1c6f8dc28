"""Alpha158: Qlib's 158 price/volume features and its default label, without Qlib.

The expressions are built exactly as Qlib's ``Alpha158DL.get_feature_config`` builds
them (same names, same order, same strings), then evaluated by
:mod:`alphamill.features.expr` on a dense (instrument, day) float32 grid. Results are
float32, indexed (datetime, instrument), one row per instrument and calendar day inside
its listing span, halted days included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError, DataError
from alphamill.features import expr as ex
from alphamill.features import ops

WINDOWS = (5, 10, 20, 30, 60)
FIELDS = ("open", "high", "low", "close", "volume", "vwap")
DEFAULT_LABEL_EXPR = "Ref($close, -2)/Ref($close, -1) - 1"
DEFAULT_LABEL_NAME = "LABEL0"


def _feature_config() -> tuple[list[str], list[str]]:
    """(expressions, names) in Qlib's order (Alpha158DL default config)."""
    fields = [
        "($close-$open)/$open",
        "($high-$low)/$open",
        "($close-$open)/($high-$low+1e-12)",
        "($high-Greater($open, $close))/$open",
        "($high-Greater($open, $close))/($high-$low+1e-12)",
        "(Less($open, $close)-$low)/$open",
        "(Less($open, $close)-$low)/($high-$low+1e-12)",
        "(2*$close-$high-$low)/$open",
        "(2*$close-$high-$low)/($high-$low+1e-12)",
    ]
    names = ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2"]
    for f in ("OPEN", "HIGH", "LOW", "VWAP"):
        fields.append(f"${f.lower()}/$close")
        names.append(f"{f}0")
    w = WINDOWS
    rolling: list[tuple[str, str]] = [
        ("ROC", "Ref($close, %d)/$close"),
        ("MA", "Mean($close, %d)/$close"),
        ("STD", "Std($close, %d)/$close"),
        ("BETA", "Slope($close, %d)/$close"),
        ("RSQR", "Rsquare($close, %d)"),
        ("RESI", "Resi($close, %d)/$close"),
        ("MAX", "Max($high, %d)/$close"),
        ("MIN", "Min($low, %d)/$close"),
        ("QTLU", "Quantile($close, %d, 0.8)/$close"),
        ("QTLD", "Quantile($close, %d, 0.2)/$close"),
        ("RANK", "Rank($close, %d)"),
        ("RSV", "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)"),
        ("IMAX", "IdxMax($high, %d)/%d"),
        ("IMIN", "IdxMin($low, %d)/%d"),
        ("IMXD", "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}"),
        ("CORR", "Corr($close, Log($volume+1), %d)"),
        ("CORD", "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), %d)"),
        ("CNTP", "Mean($close>Ref($close, 1), %d)"),
        ("CNTN", "Mean($close<Ref($close, 1), %d)"),
        ("CNTD", "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})"),
        (
            "SUMP",
            "Sum(Greater($close-Ref($close, 1), 0), {d})/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)",
        ),
        (
            "SUMN",
            "Sum(Greater(Ref($close, 1)-$close, 0), {d})/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)",
        ),
        (
            "SUMD",
            "(Sum(Greater($close-Ref($close, 1), 0), {d})-Sum(Greater(Ref($close, 1)-$close, 0), {d}))"
            "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)",
        ),
        ("VMA", "Mean($volume, %d)/($volume+1e-12)"),
        ("VSTD", "Std($volume, %d)/($volume+1e-12)"),
        (
            "WVMA",
            "Std(Abs($close/Ref($close, 1)-1)*$volume, {d})"
            "/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {d})+1e-12)",
        ),
        (
            "VSUMP",
            "Sum(Greater($volume-Ref($volume, 1), 0), {d})/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)",
        ),
        (
            "VSUMN",
            "Sum(Greater(Ref($volume, 1)-$volume, 0), {d})/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)",
        ),
        (
            "VSUMD",
            "(Sum(Greater($volume-Ref($volume, 1), 0), {d})-Sum(Greater(Ref($volume, 1)-$volume, 0), {d}))"
            "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)",
        ),
    ]
    for name, tpl in rolling:
        for d in w:
            if "{d}" in tpl:
                fields.append(tpl.format(d=d))
            else:
                fields.append(tpl % ((d,) * tpl.count("%d")))
            names.append(f"{name}{d}")
    return fields, names


ALPHA158_EXPRESSIONS, ALPHA158_NAMES = _feature_config()
ALPHA158_NAMES: list[str]
ALPHA158_EXPRESSIONS: list[str]


@dataclass
class DenseGrid:
    """A panel as dense float32 arrays: one (day, instrument) array per field.

    ``present`` marks the panel's rows; ``grid.inside`` spans each instrument from its
    first to its last row, so days between two listing ranges are evaluated as missing
    data (as in Qlib, whose stored series is contiguous) but are not output.
    """

    calendar: pd.DatetimeIndex
    instruments: np.ndarray
    fields: dict[str, np.ndarray]
    grid: ops.Grid
    present: np.ndarray

    def index(self) -> pd.MultiIndex:
        """(datetime, instrument) of every panel row, sorted."""
        day_idx, inst_idx = np.nonzero(self.present)
        return pd.MultiIndex(
            levels=[self.calendar, pd.Index(self.instruments, dtype="str", name="instrument")],
            codes=[day_idx, inst_idx],
            names=["datetime", "instrument"],
            verify_integrity=False,
        )


def _sorted_level(index: pd.MultiIndex, level: int) -> tuple[pd.Index, np.ndarray]:
    lev = index.levels[level]
    codes = np.asarray(index.codes[level], dtype=np.int64)
    if not lev.is_monotonic_increasing:
        order = np.argsort(lev.values, kind="stable")
        remap = np.empty(len(order), dtype=np.int64)
        remap[order] = np.arange(len(order))
        lev = lev[order]
        codes = remap[codes]
    return lev, codes


def to_dense(panel: pd.DataFrame) -> DenseGrid:
    """Lay a (datetime, instrument) panel out as (day, instrument) float32 arrays.

    The calendar is the sorted union of the panel's dates; each instrument's listing span
    runs from its first to its last row, and every day in between is a row (NaN when the
    panel has no value there: a halted day).
    """
    if not isinstance(panel, pd.DataFrame) or not isinstance(panel.index, pd.MultiIndex):
        raise DataError("expected a DataFrame indexed by (datetime, instrument)")
    if panel.index.nlevels != 2:
        raise DataError("expected a two-level (datetime, instrument) index")
    if list(panel.index.names) == ["instrument", "datetime"]:
        panel = panel.swaplevel().sort_index()
    idx = panel.index.remove_unused_levels()
    cal, day_codes = _sorted_level(idx, 0)
    inst, inst_codes = _sorted_level(idx, 1)
    try:
        calendar = pd.DatetimeIndex(cal)
    except (TypeError, ValueError) as e:
        raise DataError(f"the panel's first index level must hold dates: {e}") from None
    t, n = len(calendar), len(inst)
    flat = day_codes * n + inst_codes
    present = np.zeros(t * n, dtype=bool)
    present[flat] = True
    if int(present.sum()) != len(flat):
        raise DataError("the panel has duplicate (datetime, instrument) rows")
    grid = ops.Grid.from_present(present.reshape(t, n))
    cols = {str(c).lstrip("$").lower(): c for c in panel.columns}
    fields = {}
    for name, c in cols.items():
        if name in FIELDS or pd.api.types.is_numeric_dtype(panel[c]):
            arr = np.full(t * n, np.nan, dtype=np.float32)
            arr[flat] = panel[c].to_numpy(dtype=np.float32, na_value=np.nan)
            fields[name] = arr.reshape(t, n)
    for f in FIELDS:
        if f not in fields:
            if f != "vwap":
                raise DataError(f"the panel has no {f!r} column (columns: {list(panel.columns)})")
            fields[f] = np.full((t, n), np.nan, dtype=np.float32)
    return DenseGrid(
        calendar=calendar,
        instruments=np.asarray(inst, dtype=object),
        fields=fields,
        grid=grid,
        present=present.reshape(t, n),
    )


def default_threads() -> int:
    """Threads for feature computation: ``ALPHAMILL_FEATURE_THREADS`` or the CPU count
    (at most 4: beyond that memory bandwidth, not cores, is the limit)."""
    env = os.environ.get("ALPHAMILL_FEATURE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(f"expected a positive integer, got {env!r}", "ALPHAMILL_FEATURE_THREADS") from None
    return max(1, min(4, os.cpu_count() or 1))


def can_fork() -> bool:
    """Fork only from a single-threaded process (a fork copies no other thread, so a
    lock held by one could never be released in the child)."""
    import multiprocessing as mp
    import threading

    return (
        "fork" in mp.get_all_start_methods()
        and threading.active_count() == 1
        and not mp.current_process().daemon  # daemonic processes may not have children
    )


def _run_forked(run_chunk, starts: list[int], n_workers: int) -> None:
    """Run chunks in forked worker processes that write into the shared output buffer.

    Processes, unlike threads, also spread numpy's per-call Python overhead over the
    cores. A chunk whose worker fails is recomputed in this process.
    """
    import multiprocessing as mp

    groups = [starts[i::n_workers] for i in range(n_workers)]

    def work(group: list[int]) -> None:
        code = 0
        try:
            for lo in group:
                run_chunk(lo)
        except BaseException:  # reported through the exit code; the parent redoes it
            code = 1
        os._exit(code)

    ctx = mp.get_context("fork")
    started, failed = [], []
    for g in groups:
        p = ctx.Process(target=work, args=(g,), daemon=True)
        try:
            p.start()
        except (OSError, AssertionError):  # cannot fork here: this process does it
            failed.extend(g)
            continue
        started.append((p, g))
    for p, g in started:
        p.join()
        if p.exitcode != 0:
            failed.extend(g)
    for lo in failed:
        run_chunk(lo)


#: Instruments evaluated together: small enough for the working arrays to stay in the
#: CPU cache, large enough that numpy's per-call overhead stays small.
CHUNK_INSTRUMENTS = 64


def evaluate(
    dense: DenseGrid,
    expressions: Sequence[str],
    names: Sequence[str],
    chunk: int | None = None,
    threads: int | None = None,
    alloc: Callable[[int, tuple[int, int]], np.ndarray] | None = None,
) -> pd.DataFrame:
    """Evaluate Qlib expressions on a dense grid into a float32 DataFrame.

    Instruments are independent, so they are evaluated in column chunks of ``chunk``
    instruments, on ``threads`` workers (default: :func:`default_threads`). ``alloc(size,
    shape)`` may provide the working buffer (``size`` float32s, shared with forked processes,
    e.g. a file mapping); the result is its first ``shape`` (columns x rows) values.
    """
    if len(expressions) != len(names):
        raise ConfigError(
            f"got {len(expressions)} expressions but {len(names)} names", "expressions"
        )
    roots = [ex.parse(e, f"expressions[{i}]") for i, e in enumerate(expressions)]
    present = dense.present
    t, n = present.shape
    # Results land in a dense (column, day, instrument) buffer, filled chunk by chunk
    # with plain strided copies; then each column is compacted in place to the panel's
    # rows (day-major, i.e. (datetime, instrument) order): column i moves to
    # [i*n_rows, (i+1)*n_rows), never past the start of its own dense slot.
    step = max(1, int(chunk or CHUNK_INSTRUMENTS))
    starts = list(range(0, n, step))
    n_rows = int(present.sum())
    k = len(roots)
    n_workers = max(1, min(int(threads or default_threads()), len(starts)))
    forked = n_workers > 1 and can_fork()
    if alloc is not None:
        flat = alloc(k * t * n, (k, n_rows))
    elif forked:  # anonymous shared mapping: forked workers write their chunks into it
        import mmap

        flat = np.frombuffer(mmap.mmap(-1, max(1, k * t * n * 4)), dtype=np.float32)[: k * t * n]
    else:
        flat = np.empty(k * t * n, dtype=np.float32)
    dense_out = flat.reshape(k, t, n)

    def run_chunk(lo: int) -> None:
        hi = min(n, lo + step)
        grid = ops.Grid(
            first=dense.grid.first[lo:hi],
            last=dense.grid.last[lo:hi],
            inside=np.ascontiguousarray(dense.grid.inside[:, lo:hi]),
        )
        fields = {f: np.ascontiguousarray(v[:, lo:hi]) for f, v in dense.fields.items()}

        def sink(i: int, value) -> None:
            dense_out[i, :, lo:hi] = value

        ex.Evaluator(fields, grid).evaluate_many(roots, sink)

    if n_workers == 1:
        for lo in starts:
            run_chunk(lo)
    elif forked:
        _run_forked(run_chunk, starts, n_workers)
    else:
        # numpy releases the GIL inside its loops, so chunks still overlap on threads
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            list(pool.map(run_chunk, starts))
    for i in range(k):
        flat[i * n_rows : (i + 1) * n_rows] = dense_out[i][present]
    buf = flat[: k * n_rows].reshape(k, n_rows)
    return pd.DataFrame(buf.T, index=dense.index(), columns=list(names), copy=False)


def compute_alpha158(panel: pd.DataFrame | DenseGrid) -> pd.DataFrame:
    """The 158 Alpha158 features (float32, Qlib's names and order)."""
    dense = panel if isinstance(panel, DenseGrid) else to_dense(panel)
    return evaluate(dense, ALPHA158_EXPRESSIONS, ALPHA158_NAMES)


def label_config(label=None, horizon: int | None = None) -> tuple[list[str], list[str]]:
    """Normalise a label spec to (expressions, names).

    Accepts ``None`` (Qlib's default, or ``horizon`` h: ``Ref($close, -(h+1))/Ref($close,
    -1) - 1``), one expression string, a list of expressions (named ``LABEL0``, ``LABEL1``,
    ...), or Qlib's ``(["expr", ...], ["NAME", ...])`` pair.
    Labels must look into the future only through ``Ref`` of the stored fields.
    """
    if label is None:
        if horizon is None:
            return [DEFAULT_LABEL_EXPR], [DEFAULT_LABEL_NAME]
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ConfigError(f"expected a positive integer horizon, got {horizon!r}", "label.horizon")
        return [f"Ref($close, -{int(horizon) + 1})/Ref($close, -1) - 1"], [DEFAULT_LABEL_NAME]
    if isinstance(label, str):
        exprs, names = [label], [DEFAULT_LABEL_NAME]
    elif (
        isinstance(label, (list, tuple))
        and len(label) == 2
        and isinstance(label[0], (list, tuple))
        and isinstance(label[1], (list, tuple))
    ):
        exprs, names = [str(e) for e in label[0]], [str(n) for n in label[1]]
    elif isinstance(label, (list, tuple)) and label and all(isinstance(e, str) for e in label):
        # Qlib's benchmark configs give the expressions alone (["Ref($close, -2) / ..."])
        exprs, names = list(label), [f"LABEL{i}" for i in range(len(label))]
    else:
        raise ConfigError(
            'expected a label expression or (["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]), '
            f"got {label!r}",
            "label",
        )
    if not exprs or len(exprs) != len(names):
        raise ConfigError("label expressions and names must be non-empty and of equal length", "label")
    for i, e in enumerate(exprs):
        ex.parse(e, f"label[0][{i}]")
    return exprs, names


def compute_label(panel: pd.DataFrame | DenseGrid, horizon: int | None = None, label=None) -> pd.DataFrame:
    """The label column(s), LABEL0 = ``Ref($close,-2)/Ref($close,-1)-1`` by default."""
    exprs, names = label_config(label, horizon)
    dense = panel if isinstance(panel, DenseGrid) else to_dense(panel)
    return evaluate(dense, exprs, names)


def compute_features_and_label(
    panel: pd.DataFrame | DenseGrid, label=None, horizon: int | None = None
) -> pd.DataFrame:
    """Alpha158 + label in one pass (shared sub-expressions, one output buffer)."""
    exprs, names = label_config(label, horizon)
    dense = panel if isinstance(panel, DenseGrid) else to_dense(panel)
    return evaluate(dense, ALPHA158_EXPRESSIONS + exprs, ALPHA158_NAMES + names)
