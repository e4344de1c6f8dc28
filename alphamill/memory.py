"""Handing memory back to the operating system between large steps.

A window's float32 frames and LightGBM's binning sample are freed once LightGBM holds its
bins, but glibc keeps much of the freed heap (many arenas, raised mmap threshold) for reuse,
so the process would carry its largest footprint into training and into every later task.
Likewise the pages of the memory-mapped feature cache that were read to build a window's
frames stay mapped (and counted in the process's resident set) after the frames are copies.

The frames themselves are the exception (:func:`reusable_empty`): their memory is kept for the
next window, because memory handed back and asked for again is not free on every machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import mmap
import sys
import threading
import weakref
from typing import Any

import numpy as np

#: Only mappings of these files (the feature cache's blocks) are released.
_RELEASABLE_SUFFIXES = (".npy",)
_MADV_DONTNEED = 4

_TRIM: Any = False


def _malloc_trim() -> Any:
    global _TRIM
    if _TRIM is False:
        name = ctypes.util.find_library("c")
        try:
            _TRIM = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        except OSError:
            _TRIM = None
    return _TRIM


def release_memory() -> bool:
    """Collect garbage and return the free heap to the OS (glibc's ``malloc_trim``).

    Returns whether memory could be trimmed; where ``malloc_trim`` does not exist (macOS,
    musl) this only collects garbage. Takes milliseconds.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def freeze_long_lived() -> None:
    """Collect garbage once, then exclude every object alive now from later collections.

    Called when a worker process is about to run tasks: what exists then (imported modules,
    mostly) lives as long as the process, and leaving it out makes each later ``gc.collect``
    (one per window in :func:`release_memory`) take microseconds instead of a tenth of a
    second, and keeps a forked worker from copying pages the collector would touch.
    """
    gc.collect()
    gc.freeze()


_frozen_depth = 0


@contextlib.contextmanager
def gc_frozen() -> Any:
    """Leave the objects alive now out of garbage collection while the block runs.

    For tasks trained in this process: each collects garbage twice (:func:`release_memory`),
    and a full collection over a process that imported MLflow, LightGBM and pandas takes
    0.2 s, where the objects created since take microseconds. Afterwards (outermost block)
    everything is collected as usual again. A process already frozen (a worker) is left as is.
    """
    global _frozen_depth
    if _frozen_depth == 0 and gc.get_freeze_count() == 0:  # a freeze made by others stays theirs
        gc.collect()
        gc.freeze()
        _frozen_depth = 1
    elif _frozen_depth:
        _frozen_depth += 1
    try:
        yield
    finally:
        if _frozen_depth:
            _frozen_depth -= 1
            if _frozen_depth == 0:
                gc.unfreeze()


@contextlib.contextmanager
def training_here() -> Any:
    """Around tasks trained in this process: older objects are frozen out of garbage
    collection while they run (:func:`gc_frozen`), and the frame buffers kept from one window
    to the next are unmapped afterwards, since the process may go on with other work."""
    try:
        with gc_frozen():
            yield
    finally:
        drop_pool()


def release_file_pages(min_bytes: int = 16 << 20) -> int:
    """Unmap the resident pages of unmodified ``.npy`` file mappings; returns the bytes released.

    Only a mapping none of whose pages was ever written (no anonymous or swapped pages in
    ``/proc/self/smaps``) is touched, so nothing can be lost: its pages stay in the page cache,
    shared with other processes, and are mapped again from the file when read. Linux only
    (elsewhere returns 0); mappings smaller than ``min_bytes`` resident are left alone.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for start, end, path, fields in _mappings(text):
        if not path.endswith(_RELEASABLE_SUFFIXES):
            continue
        # a written page of a private file mapping becomes an anonymous page (Swap once
        # swapped out); "Dirty" alone may be the page cache not yet flushed to disk
        written = fields.get("Anonymous", 0) + fields.get("Swap", 0)
        rss = fields.get("Rss", 0) * 1024
        if written or rss < min_bytes:
            continue
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += rss
    return released


def _mappings(text: str) -> list[tuple[int, int, str, dict[str, int]]]:
    """``/proc/self/smaps`` as (start, end, path, {field: kB}) per private file mapping."""
    out: list[tuple[int, int, str, dict[str, int]]] = []
    current: dict[str, int] | None = None
    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):
            parts = line.split(None, 5)
            current = None
            if len(parts) == 6 and parts[1].endswith("p") and parts[5].startswith("/"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                current = {}
                out.append((lo, hi, parts[5].strip(), current))
        elif current is not None and head.endswith(":"):
            value = rest.split()
            if value and value[0].isdigit():
                current[head[:-1]] = int(value[0])
    return out


# -- large buffers reused from one window to the next -----------------------------------------

#: Arrays smaller than this come from numpy's allocator as usual.
POOL_MIN_BYTES = 32 << 20
#: Buffers are sized in steps of this, so windows of slightly different sizes share them.
POOL_GRANULE = 16 << 20
#: At most this many bytes of idle buffers are kept; beyond it a freed buffer is unmapped.
POOL_KEEP_BYTES = 1 << 30

_pool_lock = threading.Lock()
_spares: list[mmap.mmap] = []


def reusable_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array whose memory comes back to this process, not to the OS, once
    the last view of it is gone, and is handed out again by the next call of similar size.

    A window's training frames are hundreds of MB, allocated again for every window. Memory
    unmapped and mapped again is not free: the kernel zeroes every page, and on virtual
    machines that give freed pages back to the host (free-page reporting) the first touch of
    each page costs several microseconds more, which made gathering a window's rows 3-4x
    slower than the copy itself. At most :data:`POOL_KEEP_BYTES` are kept idle.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    with _pool_lock:
        fits = [m for m in _spares if len(m) >= nbytes]
        buf = min(fits, key=len) if fits else None
        if buf is not None:
            _spares.remove(buf)
    if buf is None:
        buf = mmap.mmap(-1, -(-nbytes // POOL_GRANULE) * POOL_GRANULE)
    owner = np.frombuffer(buf, dtype=np.uint8, count=nbytes)
    weakref.finalize(owner, _give_back, buf)
    return owner.view(dtype).reshape(shape)


def _give_back(buf: mmap.mmap) -> None:
    with _pool_lock:
        if sum(len(m) for m in _spares) + len(buf) <= POOL_KEEP_BYTES:
            _spares.append(buf)
    # else the buffer is dropped here and unmapped when its last reference goes


def pooled_bytes() -> int:
    """Bytes of idle buffers kept for reuse."""
    with _pool_lock:
        return sum(len(m) for m in _spares)


def drop_pool() -> None:
    """Unmap the idle buffers (the memory returns to the OS)."""
    with _pool_lock:
        spares = list(_spares)
        _spares.clear()
    for m in spares:
        with contextlib.suppress(BufferError):  # still exported by a dying array: unmapped with it
            m.close()
