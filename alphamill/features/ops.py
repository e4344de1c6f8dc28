"""Qlib's expression operators, vectorised over a dense (day, instrument) grid.

Every array here has shape ``(n_days, n_instruments)``: one row per calendar day, one
column per instrument, NaN outside the instrument's listing span. Rolling windows run
down axis 0 and count calendar rows (a halted day is a NaN cell that takes a slot).
The arithmetic follows Qlib 0.9.7 to the bit where it matters (shared/alpha158.md):

* element-wise operators keep float32 inputs float32 (numpy's own float32 ``log``);
* rolling operators widen to float64, use ``min_periods=1`` and treat ±inf as missing;
* Slope/Rsquare/Resi replay Qlib's running-sum regression (§5.12) in float64.

Window sums, moments and extremes use block prefix/suffix scans (van Herk/Gil-Werman):
each window is the tail of one block of ``N`` rows plus the head of the next, so a cell
costs O(1) whatever the window, and sums never cancel against a long cumulative sum
(a window of equal values gives exactly zero deviation). Quantile sorts strided window
views in bounded chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Upper bound (bytes) of one window-view temporary; instrument chunks are sized to it.
CHUNK_BYTES = 32 * 1024 * 1024

#: Qlib's absolute threshold below which a rolling std blanks Rsquare and Corr.
STD_MASK_ATOL = 2e-5


@dataclass(frozen=True)
class Grid:
    """Where each instrument is listed on the dense (day, instrument) grid.

    ``first``/``last`` are the row indices of each column's first and last listed day;
    ``inside`` is the boolean mask of listed cells (every day from first to last).
    """

    first: np.ndarray
    last: np.ndarray
    inside: np.ndarray

    @classmethod
    def from_present(cls, present: np.ndarray) -> Grid:
        """Spans from the cells that hold a row (days in between count as listed)."""
        t, n = present.shape
        any_ = present.any(axis=0)
        first = np.where(any_, present.argmax(axis=0), t)
        last = np.where(any_, t - 1 - present[::-1].argmax(axis=0), -1)
        rows = np.arange(t)[:, None]
        inside = (rows >= first[None, :]) & (rows <= last[None, :])
        return cls(first=first.astype(np.int64), last=last.astype(np.int64), inside=inside)


# ----------------------------------------------------------------------------------
# block scans


def _usable(x: np.ndarray, grid: Grid) -> np.ndarray:
    """A rolling operator's float64 input: booleans are 0/1 inside the span (NaN
    outside), and ±inf become NaN (pandas treats them as missing)."""
    if x.dtype == np.bool_:
        y = x.astype(np.float64)
        y[~grid.inside] = np.nan
        return y
    y = np.array(x, dtype=np.float64, copy=True)
    y[np.isinf(y)] = np.nan
    return y


class _Blocks:
    """Row bookkeeping of the block scans for one window size.

    Rows are padded with ``window - 1`` empty rows on top (so day ``s`` of the output
    is the window ending at padded row ``s + window - 1``) and to a multiple of
    ``window`` at the bottom.
    """

    def __init__(self, t: int, window: int):
        self.t = t
        self.w = window
        self.nb = -(-(t + window - 1) // window)
        self.length = self.nb * window

    def pad(self, x: np.ndarray, fill) -> np.ndarray:
        """(blocks, window, n) view of the padded array."""
        out = np.full((self.length,) + x.shape[1:], fill, dtype=x.dtype)
        out[self.w - 1 : self.w - 1 + self.t] = x
        return out.reshape((self.nb, self.w) + x.shape[1:])

    def scan(self, blocks: np.ndarray, ufunc) -> tuple[np.ndarray, np.ndarray]:
        """(tail, head) of every window: ufunc-reduction of the older block's part
        (from the window's first row to the block end) and of the newer block's part
        (from the block start to the window's last row)."""
        return self.tail(blocks, ufunc, zero=False), self.head(blocks, ufunc)

    def head(self, blocks: np.ndarray, ufunc=np.add) -> np.ndarray:
        """Reduction of each window's newer part (block start .. window end)."""
        w = self.w
        pre = np.empty_like(blocks)
        pre[:, 0] = blocks[:, 0]
        for k in range(1, w):
            ufunc(pre[:, k - 1], blocks[:, k], out=pre[:, k])
        return pre.reshape((self.length,) + blocks.shape[2:])[w - 1 : w - 1 + self.t]

    def tail(self, blocks: np.ndarray, ufunc=np.add, zero: bool = True) -> np.ndarray:
        """Reduction of each window's older part (window start .. block end); with
        ``zero`` the part is emptied (0) where the window is exactly one block."""
        w = self.w
        suf = np.empty_like(blocks)
        suf[:, w - 1] = blocks[:, w - 1]
        for k in range(w - 2, -1, -1):
            ufunc(suf[:, k + 1], blocks[:, k], out=suf[:, k])
        out = suf.reshape((self.length,) + blocks.shape[2:])[: self.t]
        if zero:
            out[::w] = 0
        return out

    def sums(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(older part, newer part) sums; the older part is empty when the window is
        exactly one block."""
        return self.tail(blocks), self.head(blocks)

    def per_window(self, per_block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Broadcast per-block values to (older block, newer block) of every window."""
        rep = np.repeat(per_block, self.w, axis=0)
        return rep[: self.t], rep[self.w - 1 : self.w - 1 + self.t]


def _sum_count(y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Window sum of the non-NaN values of ``y`` and their count."""
    bl = _Blocks(y.shape[0], window)
    blocks = bl.pad(y, 0.0)
    blocks[np.isnan(blocks)] = 0.0
    s_old, s_new = bl.sums(blocks)
    s_old += s_new
    return s_old, window_count(~np.isnan(y), window)


def window_count(ok: np.ndarray, window: int) -> np.ndarray:
    """Number of True cells in every window (exact integer cumulative sums)."""
    cs = np.empty((ok.shape[0] + 1,) + ok.shape[1:], dtype=np.int32)
    cs[0] = 0
    np.cumsum(ok, axis=0, dtype=np.int32, out=cs[1:])
    out = cs[1:].astype(np.float64)
    out[window:] -= cs[1 : len(cs) - window]
    return out


def _moments(values: list[np.ndarray], ok: np.ndarray, window: int):
    """Windowed count and centred (co)moments of aligned series over the ``ok`` cells.

    Each part of a window is summed around one of its own values (the older block's
    last valid value, the newer block's first), so a flat window has exactly zero
    deviation; the two parts are merged with Chan's formula, as accurate as a two-pass
    computation. Returns (n, M) with M[(i, j)] = Σ (x_i − mean_i)(x_j − mean_j).
    """
    t = ok.shape[0]
    bl = _Blocks(t, window)
    okb = bl.pad(ok, False)
    notb = ~okb
    has = okb.any(axis=1)
    i_first = np.argmax(okb, axis=1)[:, None, :]
    i_last = (window - 1 - np.argmax(okb[:, ::-1], axis=1))[:, None, :]
    # counts from an exact integer cumulative sum over the padded rows
    cs = np.zeros((bl.length + 1, ok.shape[1]), dtype=np.int32)
    np.cumsum(okb.reshape(bl.length, -1), axis=0, dtype=np.int32, out=cs[1:])
    ends = np.arange(window - 1, window - 1 + t)  # padded row of each window's last day
    n = (cs[ends + 1] - cs[ends + 1 - window]).astype(np.float64)
    n2 = (cs[ends + 1] - cs[(ends // window) * window]).astype(np.float64)
    n1 = n - n2
    del cs
    inv1 = 1.0 / np.maximum(n1, 1.0)
    inv2 = 1.0 / np.maximum(n2, 1.0)
    frac = n1 * n2
    frac /= np.maximum(n, 1.0)
    y_pre, y_suf, sums, diffs = [], [], [], []
    for v in values:
        vb = bl.pad(v, 0.0)
        vb[notb] = 0.0
        first = np.take_along_axis(vb, i_first, axis=1)[:, 0]
        last = np.take_along_axis(vb, i_last, axis=1)[:, 0]
        first[~has] = 0.0
        last[~has] = 0.0
        yp = vb - first[:, None]
        yp[notb] = 0.0
        vb -= last[:, None]
        vb[notb] = 0.0
        ys = vb
        s1 = bl.tail(ys)
        s2 = bl.head(yp)
        m1 = s1 * inv1
        m2 = s2 * inv2
        a_old = bl.per_window(last)[0]
        a_new = bl.per_window(first)[1]
        d = a_old + m1
        d -= a_new
        d -= m2
        y_pre.append(yp)
        y_suf.append(ys)
        sums.append((s1, s2, m1, m2))
        diffs.append(d)
    moments = {}
    k = len(values)
    for i in range(k):
        for j in range(i, k):
            last_use = i == j == k - 1 or (k == 1)
            if i == j and last_use:
                pp = np.square(y_pre[i], out=y_pre[i])
                ss = np.square(y_suf[i], out=y_suf[i])
            else:
                pp = y_pre[i] * y_pre[j]
                ss = y_suf[i] * y_suf[j]
            c = bl.tail(ss)
            c -= sums[i][0] * sums[j][2]
            c += bl.head(pp)
            c -= sums[i][1] * sums[j][3]
            c += diffs[i] * diffs[j] * frac
            moments[(i, j)] = c
    return n, moments


# ----------------------------------------------------------------------------------
# element-wise operators


def ref(x: np.ndarray, k: int) -> np.ndarray:
    """``Ref(x, k)``: the value k calendar rows earlier (k < 0: later); NaN beyond."""
    if k == 0:
        raise ValueError("Ref(x, 0) is not supported")
    if x.dtype == np.bool_:
        x = x.astype(np.float64)
    out = np.full_like(x, np.nan)
    t = x.shape[0]
    if abs(k) >= t:
        return out
    if k > 0:
        out[k:] = x[:-k]
    else:
        out[:k] = x[-k:]
    return out


def greater(a, b):
    """``Greater(a, b)``: element-wise maximum, NaN propagates (np.maximum)."""
    return np.maximum(a, b)


def less(a, b):
    """``Less(a, b)``: element-wise minimum, NaN propagates (np.minimum)."""
    return np.minimum(a, b)


def abs_(x):
    """``Abs(x)`` in the input dtype."""
    return np.abs(x)


def log(x: np.ndarray) -> np.ndarray:
    """``Log(x)`` with numpy's own kernel on a contiguous array of the input dtype.

    numpy's SIMD float32 log is not correctly rounded; Qlib's values carry its exact
    rounding, so the input must stay float32 and contiguous to hit the same kernel.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.ascontiguousarray(x))


# ----------------------------------------------------------------------------------
# rolling operators (float64 results)


def rolling_sum(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Sum(x, N)``: sum of the usable values; NaN when there are none."""
    s, c = _sum_count(_usable(x, grid), window)
    s[c == 0] = np.nan
    return s


def rolling_mean(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Mean(x, N)``: mean of the usable values (booleans count as 0/1)."""
    s, c = _sum_count(_usable(x, grid), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        s /= c
    return s


def rolling_std(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Std(x, N)``: sample std (ddof 1) of the usable values; NaN below 2 values."""
    y = _usable(x, grid)
    n, mom = _moments([y], ~np.isnan(y), window)
    m2 = np.maximum(mom[(0, 0)], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt(m2 / (n - 1.0))
    out[n < 2] = np.nan
    return out


def rolling_var(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Var(x, N)``: sample variance (ddof 1)."""
    s = rolling_std(x, window, grid)
    return s * s


def _extreme(x: np.ndarray, window: int, grid: Grid, ufunc) -> np.ndarray:
    y = _usable(x, grid)
    bl = _Blocks(y.shape[0], window)
    tail, head = bl.scan(bl.pad(y, np.nan), ufunc)
    return ufunc(tail, head)


def rolling_max(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Max(x, N)``: largest usable value (±inf ignored)."""
    return _extreme(x, window, grid, np.fmax)


def rolling_min(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Min(x, N)``: smallest usable value (±inf ignored)."""
    return _extreme(x, window, grid, np.fmin)


def _narrow(x: np.ndarray, grid: Grid) -> np.ndarray:
    """Input of the comparison-based operators in its own (exact) float dtype, ±inf → NaN."""
    if x.dtype == np.bool_:
        return _usable(x, grid)
    y = np.array(x, copy=True, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    y[np.isinf(y)] = np.nan
    return y


def rolling_quantiles(x: np.ndarray, window: int, qs: list[float], grid: Grid) -> list[np.ndarray]:
    """``Quantile(x, N, q)`` for several q at once (one sort serves them all).

    Linear interpolation between order statistics, pandas' default: with n usable values
    p = q·(n−1), result v[⌊p⌋] + (v[⌊p⌋+1] − v[⌊p⌋])·frac(p).
    """
    y = _narrow(x, grid)
    t, n = y.shape
    outs = [np.full((t, n), np.nan) for _ in qs]
    cnt = window_count(~np.isnan(y), window)
    yp = np.full((t + window - 1, n), np.nan, dtype=y.dtype)
    yp[window - 1 :] = y
    step = max(1, CHUNK_BYTES // max(1, t * window * y.itemsize * 2))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        view = sliding_window_view(yp[:, lo:hi], window, axis=0)  # (t, cols, window)
        srt = np.sort(view, axis=2)
        c = cnt[:, lo:hi]
        full = c == window
        part = ~full & (c > 0)
        for q, out in zip(qs, outs, strict=True):
            # full windows (almost all cells): the same two order statistics everywhere
            p_full = q * (window - 1.0)
            i_full = min(int(np.floor(p_full)), window - 1)
            f_full = p_full - i_full
            vi = srt[:, :, i_full].astype(np.float64)
            if f_full == 0:
                res = vi
            else:
                vj = srt[:, :, min(i_full + 1, window - 1)].astype(np.float64)
                res = vi + (vj - vi) * f_full
            res[~full] = np.nan
            if part.any():  # partial windows and windows with missing values
                cc = c[part]
                p = q * (cc - 1.0)
                i = np.floor(p).astype(np.intp)
                f = p - i
                j = np.minimum(i + 1, window - 1)
                rows = srt[part]
                vi = np.take_along_axis(rows, i[:, None], axis=1)[:, 0].astype(np.float64)
                vj = np.take_along_axis(rows, j[:, None], axis=1)[:, 0].astype(np.float64)
                with np.errstate(invalid="ignore"):
                    res[part] = np.where(f == 0, vi, vi + (vj - vi) * f)
            out[:, lo:hi] = res
    return outs


def rolling_quantile(x: np.ndarray, window: int, q: float, grid: Grid) -> np.ndarray:
    """``Quantile(x, N, q)``."""
    return rolling_quantiles(x, window, [q], grid)[0]


def rolling_rank(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Rank(x, N)``: percentile rank of today's value in its window, ties averaged;
    NaN when today's value is missing."""
    y = _narrow(x, grid)
    t = y.shape[0]
    less_ = np.zeros(y.shape, dtype=np.int16)
    equal = np.zeros(y.shape, dtype=np.int16)
    for k in range(1, min(window, t)):
        past, today = y[:-k], y[k:]
        less_[k:] += past < today
        equal[k:] += past == today
    cnt = window_count(~np.isnan(y), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (less_ + (equal + 2) / 2.0) / cnt  # today equals itself: +1 in equal
    r[np.isnan(y)] = np.nan
    return r


def _argext(x: np.ndarray, window: int, grid: Grid, is_max: bool) -> np.ndarray:
    """1-based position (from the window's oldest row) of the first extreme, or of the
    first missing value if the window has one (numpy's argmax stops at NaN)."""
    y = _usable(x, grid)
    t, n = y.shape
    rows = np.arange(t, dtype=np.float64)[:, None]
    nan = np.isnan(y)
    # cells before the first listed day are not in any window: they never win
    pre = rows < grid.first[None, :]
    key = -y if not is_max else y.copy()
    key[nan] = -np.inf
    key[pre] = -np.inf
    # the extreme: value and row of its first occurrence, via block scans of (value, row)
    bl = _Blocks(t, window)
    kb = bl.pad(key, -np.inf)
    rb = bl.pad(np.broadcast_to(rows, (t, n)), np.inf)
    w = window
    pre_v = np.empty_like(kb)
    pre_r = np.empty_like(rb)
    suf_v = np.empty_like(kb)
    suf_r = np.empty_like(rb)
    pre_v[:, 0], pre_r[:, 0] = kb[:, 0], rb[:, 0]
    for k in range(1, w):
        better = kb[:, k] > pre_v[:, k - 1]  # later rows win only when strictly larger
        pre_v[:, k] = np.where(better, kb[:, k], pre_v[:, k - 1])
        pre_r[:, k] = np.where(better, rb[:, k], pre_r[:, k - 1])
    suf_v[:, w - 1], suf_r[:, w - 1] = kb[:, w - 1], rb[:, w - 1]
    for k in range(w - 2, -1, -1):
        better = kb[:, k] >= suf_v[:, k + 1]  # earlier rows win ties
        suf_v[:, k] = np.where(better, kb[:, k], suf_v[:, k + 1])
        suf_r[:, k] = np.where(better, rb[:, k], suf_r[:, k + 1])
    shape = (bl.length, n)
    hv = pre_v.reshape(shape)[w - 1 : w - 1 + t]
    hr = pre_r.reshape(shape)[w - 1 : w - 1 + t]
    tv = suf_v.reshape(shape)[:t]
    tr = suf_r.reshape(shape)[:t]
    best_row = np.where(tv >= hv, tr, hr)
    # the first missing (in-span NaN) row of each window, if any
    miss_row = np.where(nan & ~pre, rows, np.inf)
    mb = bl.pad(miss_row, np.inf)
    m_tail, m_head = bl.scan(mb, np.fmin)
    first_miss = np.fmin(m_tail, m_head)
    win_start = np.maximum(rows - (window - 1), grid.first[None, :].astype(np.float64))
    pos_row = np.where(np.isfinite(first_miss), first_miss, best_row)
    out = pos_row - win_start + 1.0
    out[window_count(~nan, window) == 0] = np.nan
    return out


def rolling_idxmax(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``IdxMax(x, N)``: 1-based position of the maximum from the window's oldest row;
    the oldest occurrence wins; the first missing value's position if there is one."""
    return _argext(x, window, grid, True)


def rolling_idxmin(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``IdxMin(x, N)``: as :func:`rolling_idxmax` for the minimum."""
    return _argext(x, window, grid, False)


def rolling_corr(
    a: np.ndarray,
    b: np.ndarray,
    window: int,
    grid: Grid,
    std_a: np.ndarray | None = None,
    std_b: np.ndarray | None = None,
) -> np.ndarray:
    """``Corr(a, b, N)``: Pearson correlation over pairwise-complete rows, NaN below two
    pairs or with zero variance, and blanked where either series' own rolling std is
    ≤ 2e-5 (Qlib's mask). ``std_a``/``std_b`` may pass those stds if already computed."""
    x = _usable(a, grid)
    y = _usable(b, grid)
    ok = ~np.isnan(x) & ~np.isnan(y)
    n, mom = _moments([x, y], ok, window)
    vx, vy, cxy = mom[(0, 0)], mom[(1, 1)], mom[(0, 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cxy / np.sqrt(vx * vy)
    r[(n < 2) | ~(vx > 0) | ~(vy > 0)] = np.nan
    if std_a is None:
        std_a = _own_std(a, x, vx, n, window, grid)
    if std_b is None:
        std_b = _own_std(b, y, vy, n, window, grid)
    r[(np.abs(std_a) <= STD_MASK_ATOL) | (np.abs(std_b) <= STD_MASK_ATOL)] = np.nan
    return r


def _own_std(raw, usable, m2_pairs, n_pairs, window, grid):
    """A series' own rolling std, taken from the pairwise moments wherever its valid
    rows in the window are exactly the pairwise-complete ones (almost always)."""
    own_n = window_count(~np.isnan(usable), window)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(np.maximum(m2_pairs, 0.0) / (n_pairs - 1.0))
    std[n_pairs < 2] = np.nan
    differ = own_n != n_pairs
    if differ.any():
        full = rolling_std(raw, window, grid)
        std[differ] = full[differ]
    return std


@dataclass
class RegressionSums:
    """Qlib's running regression state after each row, for one window size."""

    n: np.ndarray
    a: np.ndarray
    b: np.ndarray
    y: np.ndarray
    q: np.ndarray
    p: np.ndarray
    window: int


def regression_sums(x: np.ndarray, windows: list[int]) -> dict[int, RegressionSums]:
    """Replay Qlib's running-sum regression (alpha158.md §5.12) for several windows.

    Y = Σy, Q = Σy² and P = Σx·y get Qlib's update sequence, in float64, so
    ill-conditioned windows round exactly as Qlib does. The count m and the position
    sums A = Σx, B = Σx² are integers, so they come from exact integer window sums.
    """
    xs = np.asarray(x, dtype=np.float64)
    t, n = xs.shape
    valid = ~np.isnan(xs)
    v = np.where(valid, xs, 0.0)  # a NaN adds nothing
    ys, qs, ps = [], [], []
    for win in windows:
        # the value leaving the window at each step (0 if none or NaN)
        u = np.zeros_like(v)
        u[win:] = v[:-win]
        # Qlib's per-step updates Y <- (Y - u) + v, Q <- (Q - u*u) + v*v and
        # P <- (P - Y_prev) + N*v are sequential sums over the interleaved steps, so a
        # cumulative sum over [-u_0, v_0, -u_1, v_1, ...] rounds exactly as they do.
        inter = np.empty((2 * t, n))
        inter[0::2] = -u
        inter[1::2] = v
        y = np.cumsum(inter, axis=0)[1::2]
        inter[0::2] = -(u * u)
        inter[1::2] = v * v
        q = np.cumsum(inter, axis=0)[1::2]
        inter[0, :] = 0.0
        inter[2::2] = -y[:-1]
        inter[1::2] = win * v
        p = np.cumsum(inter, axis=0)[1::2]
        ys.append(y)
        qs.append(q)
        ps.append(p)
    rows = np.arange(t, dtype=np.int64)[:, None]
    j1 = np.cumsum(np.where(valid, rows, 0), axis=0)
    j2 = np.cumsum(np.where(valid, rows * rows, 0), axis=0)
    res = {}
    for w, win in enumerate(windows):
        cnt = window_count(valid, win)
        sj = j1.astype(np.float64)
        sj[win:] -= j1[:-win]
        sjj = j2.astype(np.float64)
        sjj[win:] -= j2[:-win]
        off = (win - rows).astype(np.float64)  # day j sits in slot j + (win - t) on day t
        a = off * cnt + sj
        b = off * off * cnt + 2.0 * off * sj + sjj
        res[win] = RegressionSums(n=cnt, a=a, b=b, y=ys[w], q=qs[w], p=ps[w], window=win)
    return res


def slope_from(s: RegressionSums) -> np.ndarray:
    """``Slope`` from the running sums: (nP − AY)/(nB − A²); NaN below two points."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s.n * s.p - s.a * s.y) / (s.n * s.b - s.a * s.a)


def rsquare_from(s: RegressionSums, std: np.ndarray) -> np.ndarray:
    """``Rsquare`` from the running sums, blanked where the rolling std is ≤ 2e-5."""
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (s.n * s.p - s.a * s.y) / np.sqrt((s.n * s.b - s.a * s.a) * (s.n * s.q - s.y * s.y))
        r2 = r * r
    r2[np.abs(std) <= STD_MASK_ATOL] = np.nan
    return r2


def resi_from(s: RegressionSums, today: np.ndarray) -> np.ndarray:
    """``Resi``: today's value minus the fitted line at slot N."""
    slope = slope_from(s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return today.astype(np.float64) - (slope * s.window + (s.y / s.n - slope * (s.a / s.n)))


def _regression_input(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) if x.dtype == np.bool_ else x


def rolling_slope(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Slope(x, N)``: OLS slope against slot positions (gaps keep their positions)."""
    return slope_from(regression_sums(_regression_input(x), [window])[window])


def rolling_rsquare(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Rsquare(x, N)``: r² of the same regression, masked by the rolling std."""
    s = regression_sums(_regression_input(x), [window])[window]
    return rsquare_from(s, rolling_std(x, window, grid))


def rolling_resi(x: np.ndarray, window: int, grid: Grid) -> np.ndarray:
    """``Resi(x, N)``: residual of today's point."""
    xi = _regression_input(x)
    return resi_from(regression_sums(xi, [window])[window], xi)
