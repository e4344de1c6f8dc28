"""How many threads a model may use now, when local worker processes share the machine.

A trainer's local workers share one counter of *busy* workers (a ``multiprocessing`` value
handed to each process at start). A worker's model may use ``cores // busy`` threads and
re-reads that share while it trains, so when one worker runs out of tasks and idles, the
others take over its cores at their next boosting iteration instead of leaving them idle
until the last window is done. For LightGBM the share is applied as its process-wide
thread cap (``LGBM_SetMaxThreads``), which changes without resetting the booster: the
trees are the same whatever the number of threads.

Precedence, from strongest: the model's own ``num_threads`` kwarg, ``ALPHAMILL_NUM_THREADS``
(a fixed count), the shared core budget (local workers), the library's default (every core).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from alphamill.errors import ConfigError

THREADS_ENV = "ALPHAMILL_NUM_THREADS"

_busy: Any = None  # multiprocessing.Value("i") shared by the local workers, or None
_cores = 1


def new_counter(ctx: Any) -> Any:
    """A busy-worker counter for processes started from the multiprocessing context ``ctx``."""
    return ctx.Value("i", 0)


def install(busy: Any, cores: int | None = None) -> None:
    """Join the core budget ``busy`` (called once in each local worker process)."""
    global _busy, _cores
    _busy = busy
    _cores = max(1, int(cores or os.cpu_count() or 1))


def fixed_threads() -> int | None:
    """``ALPHAMILL_NUM_THREADS`` as a count, or None when it is not set."""
    env = os.environ.get(THREADS_ENV)
    if not env:
        return None
    try:
        n = int(env)
    except ValueError:
        raise ConfigError(f"expected a non-negative integer, got {env!r}", THREADS_ENV) from None
    if n < 0:
        raise ConfigError(f"expected a non-negative integer, got {env!r}", THREADS_ENV)
    return n


def shared() -> bool:
    """Whether this process shares a core budget whose share may change while it trains."""
    return _busy is not None and fixed_threads() is None


def current() -> int | None:
    """Threads this process may use now: the fixed count, its share of the cores, or None
    (the library's default)."""
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    if _busy is None:
        return None
    return max(1, _cores // max(1, int(_busy.value)))


def cores() -> int:
    """The cores the budget divides (all of this machine's when no budget is installed)."""
    return _cores if _busy is not None else max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Count this process as busy (training a task) for the duration of the block."""
    if _busy is None:
        yield
        return
    with _busy.get_lock():
        _busy.value += 1
    try:
        yield
    finally:
        with _busy.get_lock():
            _busy.value = max(0, _busy.value - 1)


class ThreadCap:
    """Keeps LightGBM's process-wide thread cap at this process's share while a fit runs.

    ``start()`` applies the current share, the instance is a LightGBM callback that
    re-applies it after every iteration when it changed, and ``stop()`` lifts the cap.
    ``core_seconds`` adds up seconds x threads between calls, so parallel workers' LightGBM
    time can be set against the wall time and the cores.
    """

    def __init__(self, set_max_threads: Callable[[int], None], clock: Callable[[], float]):
        self._set = set_max_threads
        self._clock = clock
        self.threads = 1
        self.core_seconds = 0.0
        self._t = 0.0
        self.order = 0  # LightGBM callback order: before early stopping (which may raise)

    def start(self) -> None:
        self.threads = current() or cores()
        self._set(self.threads)
        self._t = self._clock()

    def _account(self) -> None:
        now = self._clock()
        self.core_seconds += (now - self._t) * self.threads
        self._t = now

    def __call__(self, env: Any = None) -> None:
        self._account()
        n = current() or cores()
        if n != self.threads:
            self.threads = n
            self._set(n)

    def stop(self) -> None:
        self._account()
        self._set(-1)
