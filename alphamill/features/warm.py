"""Filling the feature cache in a background process while the rest of a run starts.

A run's tasks are validated, stored and their workers started while Alpha158 is computed
for their data; the workers wait on the cache entry's lock and then read the finished entry.
The computation runs in a child process (not daemonic) rather than a thread: it forks helpers
of its own (forking beside a thread that imports is unsafe, and a daemonic process may not have
children), it does not hold the parent's GIL while the parent validates, and its large
transient heap is returned to the system when it exits. The child is forked when the parent
is single-threaded (it then starts at once, with the parent's imports and parsed data), else
spawned.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from alphamill.errors import AlphamillError, DataError
from alphamill.features.sets import DEFAULT_SET

#: One cache entry to fill: ``{"data": ..., "label": ..., "cache_dir": ..., "features": ...}``
#: (None or missing = the default; ``features`` names the feature set, alpha158 by default).
Spec = Mapping[str, Any]


def fill(specs: Sequence[Spec]) -> float:
    """Compute every missing entry of ``specs`` in this process; returns the seconds taken."""
    from alphamill.data import open_data
    from alphamill.features.cache import ensure_cached

    t0 = time.perf_counter()
    for spec in specs:
        ensure_cached(open_data(spec.get("data")), label=spec.get("label"), cache_dir=spec.get("cache_dir"),
                      features=spec.get("features") or DEFAULT_SET)
    return time.perf_counter() - t0


def missing(specs: Sequence[Spec]) -> list[Spec]:
    """The specs whose cache entry is not finished yet (cheap: fingerprints, no computing)."""
    from alphamill.data import open_data
    from alphamill.features.cache import cached_entry

    return [s for s in specs
            if cached_entry(open_data(s.get("data")), label=s.get("label"), cache_dir=s.get("cache_dir"),
                            features=s.get("features") or DEFAULT_SET) is None]


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds, so multiprocessing stops this process's helpers


def _child(specs: list[Spec], conn: Any) -> None:
    signal.signal(signal.SIGTERM, _stop)
    try:
        seconds = fill(specs)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
        try:
            conn.send(("error", e, traceback.format_exc()))
        except Exception:  # an exception that cannot be pickled: its text
            conn.send(("error", None, traceback.format_exc()))
        return
    conn.send(("ok", seconds, ""))


class CacheFiller:
    """Computes the missing entries of ``specs`` in one child process.

    ``start()`` returns at once; ``wait()`` blocks until the entries exist and returns the
    seconds the computation took (0 when nothing was missing), or raises the error it met;
    ``cancel()`` stops it (an entry is only ever renamed into place whole, so a cancelled
    computation leaves nothing half-written).
    """

    def __init__(self, specs: Sequence[Spec]):
        self.specs = [dict(s) for s in specs]
        self._proc: Any = None
        self._conn: Any = None
        #: How the computing process was started ("fork" or "spawn"; None: nothing to compute).
        self.start_method: str | None = None

    def start(self) -> CacheFiller:
        todo = missing(self.specs)
        if todo:
            from alphamill.features.alpha158 import can_fork

            self.start_method = "fork" if can_fork() else "spawn"
            ctx = multiprocessing.get_context(self.start_method)
            self._conn, child_conn = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(target=_child, args=(todo, child_conn), name="alphamill-features")
            self._proc.start()
            child_conn.close()
        return self

    @property
    def running(self) -> bool:
        """Whether a computation was started and not yet waited for or cancelled."""
        return self._proc is not None

    def wait(self) -> float:
        if self._proc is None:
            return 0.0
        try:
            try:
                kind, value, tb = self._conn.recv()
            except EOFError:
                self._proc.join()
                raise DataError(
                    f"computing the features failed: the process exited with code {self._proc.exitcode}"
                ) from None
            self._proc.join()
        finally:
            self._conn.close()
            self._proc = None
        if kind == "ok":
            return float(value)
        if isinstance(value, AlphamillError):
            raise value
        raise DataError(f"computing the features failed:\n{tb}")

    def cancel(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(10)
            self._conn.close()
            self._proc = None
