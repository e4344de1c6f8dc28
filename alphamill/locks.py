"""One inter-process file lock for everything built once and shared by several processes
(the demo market, the feature cache, the local MLflow store)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from alphamill.errors import AlphamillError


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: POSIX ``flock`` (released by the kernel if the
    holder dies), else an ``O_EXCL`` lock file waited for up to ``timeout`` seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if fcntl is not None:
        with open(path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return
    deadline = time.monotonic() + timeout
    while True:  # pragma: no cover - Windows
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise AlphamillError(f"{path}: timed out after {timeout:g}s waiting for the lock") from None
            time.sleep(0.2)
    try:  # pragma: no cover - Windows
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
