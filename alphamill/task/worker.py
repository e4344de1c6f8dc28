"""Worker processes that drain a task pool: ``alphamill worker -t POOL --jobs N``.

Each process claims tasks under a lease (renewed by a heartbeat thread while the task runs),
runs ``module:function`` on the definition (or on the stored result of a ``part_done``
task), commits the result with a compare-and-set on the lease, and periodically re-queues
tasks whose lease expired (workers that died). The same command started on many machines
against one PostgreSQL or MongoDB pool is how alphamill scales out.

SIGTERM/SIGINT: stop claiming; the running task may finish within ``grace`` seconds, else it
is handed back (its attempt not counted); prefetched tasks not yet started are handed back at
once; the process exits 0. A second signal hands the running task back immediately.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alphamill import threads
from alphamill.config import redact_url
from alphamill.errors import ConfigError, LeaseLost, PoolUnavailable
from alphamill.limits import MAX_CLAIM, check_jobs, check_seconds
from alphamill.task.forkserver import (  # noqa: F401 - start_worker_server is re-exported
    adopt_parent_state,
    start_worker_server,
    worker_context,
)
from alphamill.task.manage import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RETRY_BACKOFF,
    TaskManager,
    execute_task,
)
from alphamill.task.query import Query, parse_query
from alphamill.task.status import CLAIMABLE, COMMITTABLE, DONE, RUNNING, WAITING

logger = logging.getLogger("alphamill.worker")

DEFAULT_FUNC = "alphamill.trainer:pool_train"
DEFAULT_GRACE = 30.0


def load_func(spec: str) -> Callable[..., Any]:
    """The worker's task function ``module:function`` (``module.function`` also accepted).

    A worker runs whatever its pool holds, so the function it applies must be declared for
    that: defined in a trusted public module and decorated with
    :func:`alphamill.kinds.task_function` (``alphamill.trainer:pool_train`` is). The module
    is checked before it is imported. Errors name the spec.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"expected 'module:function', got {spec!r}", "func")
    module, sep, name = spec.partition(":")
    if not sep:
        module, _, name = spec.rpartition(".")
    if not module or not name:
        raise ConfigError(f"expected 'module:function', got {spec!r}", "func")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: the project's own modules are importable
    from alphamill.instance import resolve_callable
    from alphamill.kinds import TASK_FUNCTION

    return resolve_callable(f"{module}.{name}", TASK_FUNCTION, path="func")


@dataclass
class WorkerConfig:
    """Everything one worker process needs (picklable, sent to spawned children)."""

    task_pool: str
    url: str | None = None
    func: str = DEFAULT_FUNC
    query: dict[str, Any] = field(default_factory=dict)
    max_tasks: int | None = None
    until_empty: bool = False
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    heartbeat_interval: float | None = None
    prefetch: int | str = "auto"
    grace: float = DEFAULT_GRACE
    retry_backoff: float = DEFAULT_RETRY_BACKOFF
    before_status: str = WAITING
    after_status: str = DONE
    kwargs: dict[str, Any] = field(default_factory=dict)
    idle_sleep: float = 1.0
    #: logging level set up in spawned children (they do not inherit the parent's handlers)
    log_level: int | None = None
    force_release: bool = False


class _GraceExpired(BaseException):
    """Raised inside the running task when the shutdown grace period is over."""


class _Shutdown:
    """Signal handling of one worker process: first signal stops claiming, then a grace timer."""

    def __init__(self, grace: float):
        self.grace = grace
        self.requested = False
        self.in_task = False
        self._installed: dict[int, Any] = {}

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            self._installed[sig] = signal.signal(sig, self._on_signal)
        self._installed[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)

    def uninstall(self) -> None:
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, old in self._installed.items():
            signal.signal(sig, old)
        self._installed.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        first = not self.requested
        self.requested = True
        if not self.in_task:
            return
        if first and self.grace > 0:
            logger.warning(
                "signal %s: finishing the running task (up to %gs), then exiting", signum, self.grace
            )
            signal.setitimer(signal.ITIMER_REAL, self.grace)
            return
        raise _GraceExpired

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self.in_task:
            raise _GraceExpired

    def task(self) -> _Shutdown:
        """Marks the task function's run: only there may the grace timer interrupt."""
        return self

    def __enter__(self) -> None:
        self.in_task = True
        if self.requested and self.grace <= 0:
            self.in_task = False
            raise _GraceExpired

    def __exit__(self, *exc: object) -> None:
        self.in_task = False
        if self.requested and self._installed:  # the timer only runs after a signal
            signal.setitimer(signal.ITIMER_REAL, 0)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))


AUTO_PREFETCH_MAX = 16
#: ``prefetch="auto"`` holds at most this much expected work claimed but not yet started.
AUTO_PREFETCH_SECONDS = 0.05


class _Prefetch:
    """How many tasks to claim per transaction.

    A fixed number, or ``"auto"``: one at first, then as many as fit in
    :data:`AUTO_PREFETCH_SECONDS` of the recent task duration (up to
    :data:`AUTO_PREFETCH_MAX`). Tiny tasks are then claimed in batches, so the claim no
    longer dominates; tasks of 50 ms or more are claimed one by one, so a worker never
    holds work that another worker could start sooner.
    """

    def __init__(self, prefetch: int | str):
        self.auto = prefetch == "auto"
        self.fixed = 1 if self.auto else int(prefetch)
        self.avg: float | None = None

    def record(self, seconds: float) -> None:
        self.avg = seconds if self.avg is None else 0.8 * self.avg + 0.2 * seconds

    def limit(self) -> int:
        if not self.auto:
            return self.fixed
        if self.avg is None:
            return 1
        return max(1, min(AUTO_PREFETCH_MAX, int(AUTO_PREFETCH_SECONDS / max(self.avg, 1e-6))))


def _drained(tm: TaskManager, query: Query, before_status: str) -> bool:
    """Nothing left that this worker could ever claim (claimable or running elsewhere)."""
    stat = tm.task_stat(query)
    return not stat.get(before_status) and not stat.get(RUNNING)


def work(cfg: WorkerConfig, shutdown: _Shutdown | None = None) -> int:
    """The loop of one worker process; returns how many tasks it ran.

    ``shutdown`` is given when the caller handles signals; otherwise SIGTERM/SIGINT
    handlers are installed for the duration of the loop (main thread only).
    """
    func = load_func(cfg.func)
    own_signals = shutdown is None
    if shutdown is None:
        shutdown = _Shutdown(cfg.grace)
        shutdown.install()
    tm = TaskManager(
        cfg.task_pool,
        cfg.url,
        lease_seconds=cfg.lease_seconds,
        heartbeat_interval=cfg.heartbeat_interval,
        retry_backoff=cfg.retry_backoff,
    )
    query = parse_query(cfg.query)  # once, not per claim
    requeue_every = min(max(cfg.lease_seconds / 2, 0.2), 30.0)
    last_requeue = -requeue_every
    idle = 0.02
    ran = 0
    logger.info("worker %s on %r started", tm.identity.owner, cfg.task_pool)
    backoff = 0.5
    pacer = _Prefetch(cfg.prefetch)
    batch: list[dict[str, Any]] = []
    try:
        while not shutdown.requested and (cfg.max_tasks is None or ran < cfg.max_tasks):
            try:
                now = time.monotonic()
                if now - last_requeue >= requeue_every:
                    n = tm.requeue_expired()
                    if n:
                        logger.warning("re-queued %d tasks whose lease expired", n)
                    last_requeue = now
                limit = pacer.limit() if cfg.max_tasks is None else min(pacer.limit(), cfg.max_tasks - ran)
                batch = tm.fetch_tasks(query, status=cfg.before_status, limit=limit)
                if not batch:
                    if cfg.until_empty and _drained(tm, query, cfg.before_status):
                        break
                    shutdown.sleep(idle)
                    idle = min(idle * 2, cfg.idle_sleep)
                    continue
                idle = 0.02
                for i, task in enumerate(batch):
                    if shutdown.requested:
                        _give_back(tm, batch[i:])
                        break
                    started = time.perf_counter()
                    with threads.busy():  # sibling workers' share of the cores shrinks meanwhile
                        execute_task(
                            tm,
                            task,
                            func,
                            cfg.kwargs,
                            after_status=cfg.after_status,
                            force_release=cfg.force_release,
                            guard=shutdown.task,
                        )
                    pacer.record(time.perf_counter() - started)
                    ran += 1
                backoff = 0.5
            except _GraceExpired:
                logger.warning("grace period over: running task handed back")
                _give_back(tm, batch)
                break
            except PoolUnavailable as e:
                # the store restarts or the network drops: keep the process, retry with backoff;
                # a result that could not be committed is re-run once its lease expires
                logger.warning("pool unavailable, retrying in %.1f s: %s", backoff, redact_url(str(e)))
                shutdown.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        with contextlib.suppress(PoolUnavailable):
            tm.release_held()
        tm.close()
        if own_signals:
            shutdown.uninstall()
    logger.info("worker %s stopped after %d tasks", tm.identity.owner, ran)
    return ran


def _give_back(tm: TaskManager, tasks: list[dict[str, Any]]) -> None:
    """Return tasks still held (prefetched or interrupted) without using up their attempt."""
    for task in tasks:
        if tm.holds(task):
            with contextlib.suppress(LeaseLost):
                tm.return_task(task, status=task.get("claimed_from") or WAITING)


def configure_logging(level: int) -> None:
    """Log lines that say which process (host:pid) did what, on stderr."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(processName)s[%(process)d] %(levelname)s %(name)s: %(message)s"
    )


def _child_main(cfg: WorkerConfig, busy: Any = None, env: dict[str, str] | None = None,
                cwd: str | None = None, path: list[str] | None = None) -> None:
    """Entry point of a worker process: the parent forwards signals as SIGTERM; ``busy`` is
    the sibling workers' shared core budget (:mod:`alphamill.threads`); ``env``, ``cwd`` and
    ``path`` are the parent's environment, directory and ``sys.path`` (a fork server keeps
    those it started with)."""
    adopt_parent_state(env, cwd, path)
    if busy is not None:
        threads.install(busy)
    from alphamill.memory import freeze_long_lived

    freeze_long_lived()
    if cfg.log_level is not None:
        configure_logging(cfg.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which forwards it
    shutdown = _Shutdown(cfg.grace)
    shutdown.install((signal.SIGTERM,))
    try:
        work(cfg, shutdown)
    finally:
        shutdown.uninstall()


def check_config(cfg: WorkerConfig, jobs: int) -> None:
    """Refuse bad settings before any process starts (errors name the option)."""
    check_jobs(jobs, "jobs")
    if cfg.max_tasks is not None and (isinstance(cfg.max_tasks, bool) or cfg.max_tasks < 1):
        raise ConfigError(f"expected a positive integer, got {cfg.max_tasks!r}", "max_tasks")
    if cfg.prefetch != "auto" and (
        isinstance(cfg.prefetch, bool) or not isinstance(cfg.prefetch, int) or not 1 <= cfg.prefetch <= MAX_CLAIM
    ):
        raise ConfigError(f"expected an integer between 1 and {MAX_CLAIM} or 'auto', got {cfg.prefetch!r}", "prefetch")
    if cfg.before_status not in CLAIMABLE:
        raise ConfigError(f"expected one of {sorted(CLAIMABLE)}, got {cfg.before_status!r}", "before_status")
    if cfg.after_status not in COMMITTABLE:
        raise ConfigError(f"expected one of {sorted(COMMITTABLE)}, got {cfg.after_status!r}", "after_status")
    check_seconds(cfg.grace, "grace")
    check_seconds(cfg.retry_backoff, "retry_backoff")
    parse_query(cfg.query)
    load_func(cfg.func)
    # validates the pool name, URL, lease and heartbeat before spawning anything
    TaskManager(
        cfg.task_pool,
        cfg.url,
        lease_seconds=cfg.lease_seconds,
        heartbeat_interval=cfg.heartbeat_interval,
        retry_backoff=cfg.retry_backoff,
    ).close()


def run_worker(
    task_pool: str,
    url: str | None = None,
    func: str = DEFAULT_FUNC,
    jobs: int = 1,
    query: Mapping[str, Any] | None = None,
    max_tasks: int | None = None,
    until_empty: bool = False,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    heartbeat_interval: float | None = None,
    prefetch: int | str = "auto",
    *,
    grace: float = DEFAULT_GRACE,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    before_status: str = WAITING,
    after_status: str = DONE,
    force_release: bool = False,
    log_level: int | None = None,
    **kwargs: Any,
) -> int:
    """Run ``jobs`` worker processes on ``task_pool``; return the exit code (0 on success).

    ``jobs=1`` works in this process; more start worker processes (signals forwarded to them).
    ``max_tasks`` is per process. ``until_empty`` exits once nothing is waiting or running.
    ``prefetch`` > 1 claims several tasks per transaction (for tiny tasks); all their leases
    are renewed until each is run or handed back. ``"auto"`` (the default) claims one task at
    a time unless tasks take under 50 ms, then enough for about 50 ms of work (at most 16). ``kwargs`` are passed to the function.
    """
    cfg = WorkerConfig(
        task_pool=task_pool,
        url=url,
        func=func,
        query=dict(query or {}),
        max_tasks=max_tasks,
        until_empty=until_empty,
        lease_seconds=lease_seconds,
        heartbeat_interval=heartbeat_interval,
        prefetch=prefetch,
        grace=grace,
        retry_backoff=retry_backoff,
        before_status=before_status,
        after_status=after_status,
        kwargs=kwargs,
        force_release=force_release,
        log_level=log_level,
    )
    check_config(cfg, jobs)
    if jobs == 1:
        work(cfg)
        return 0
    ctx = worker_context()
    busy = threads.new_counter(ctx)  # the workers share the cores (see alphamill.threads)
    state = (dict(os.environ), os.getcwd(), list(sys.path))
    procs = [ctx.Process(target=_child_main, args=(cfg, busy, *state), name=f"alphamill-worker-{i}")
             for i in range(jobs)]

    def forward(signum: int, frame: Any) -> None:
        logger.warning("signal %s: asking %d workers to stop", signum, len(procs))
        for p in procs:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for p in procs:
            p.start()
        for p in procs:
            while p.is_alive():
                p.join(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        logger.error("%d of %d worker processes failed (exit codes %s)", len(bad), jobs, bad)
        return 1
    return 0


__all__ = ["run_worker", "work", "WorkerConfig", "load_func", "DEFAULT_FUNC"]
