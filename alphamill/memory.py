"""Handing freed memory back to the operating system between large steps.

A window's float32 frames and LightGBM's binning sample are freed once LightGBM holds its
bins, but glibc keeps much of the freed heap (many arenas, raised mmap threshold) for reuse,
so the process would carry its largest footprint into training and into every later task.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

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
