"""Trainers: run many tasks and hand back their recorders (Qlib's ``qlib.model.trainer``).

* :class:`TrainerR` trains in this process, in order, with a progress bar
  (``call_in_subproc=True``: each task in one fresh child process, so memory is released).
* :class:`TrainerRM` stores the tasks in a task pool and trains them in this process
  (``n_jobs=1``) or ``n_jobs`` local worker processes, or leaves them to external
  ``alphamill worker`` processes on other
  machines (``skip_run_task=True``); it waits with a progress display and returns the
  recorders in task order.
* :class:`DelayTrainerR` / :class:`DelayTrainerRM`: two stages as in Qlib. ``train`` only
  records each task (:func:`~alphamill.workflow.task_train.begin_task_train`; a pool task
  goes ``waiting -> part_done``); ``end_train`` fits and records
  (:func:`~alphamill.workflow.task_train.end_task_train`; ``part_done -> done``), for
  :class:`DelayTrainerRM` in separate worker processes.

Pool results are JSON: the worker-side function :func:`pool_train` (the default ``--func`` of
``alphamill worker``) trains a task and returns its recorder reference
``{"experiment_id", "run_id", "experiment_name"}``; given the stored reference of a
``part_done`` task it runs stage two. The experiment travels with the task:
:class:`TrainerRM` sets ``task["meta"]["experiment_name"]`` before storing it, so one task
in two experiments is two pool tasks (different content hashes), and a rerun of the same
experiment finds its tasks ``done`` and trains nothing new. Tasks that failed in an
earlier run are put back to ``waiting`` by a rerun.

Worker processes started by a trainer share the machine's cores: a worker training a task
uses cores // (workers training now) LightGBM threads, re-read at every boosting iteration,
so LightGBM in two processes does not oversubscribe the CPU and the last window takes every
core once the other workers have run out of tasks (:mod:`alphamill.threads`;
``ALPHAMILL_NUM_THREADS`` fixes the count instead).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alphamill.errors import AlphamillError, ConfigError
from alphamill.kinds import task_function
from alphamill.limits import check_jobs
from alphamill.task.status import DONE, FAILED, PART_DONE, RUNNING, WAITING

logger = logging.getLogger("alphamill.trainer")

#: ``module:function`` of the worker-side training function.
POOL_TRAIN_FUNC = "alphamill.trainer:pool_train"
#: ``module:function`` of stage one of delayed training, for ``alphamill worker --func``.
POOL_BEGIN_FUNC = "alphamill.trainer:pool_begin_train"
#: Where the experiment name travels inside a pool task.
EXPERIMENT_META_KEY = "experiment_name"

__all__ = [
    "Trainer",
    "TrainerR",
    "TrainerRM",
    "DelayTrainerR",
    "DelayTrainerRM",
    "TrainingFailed",
    "pool_train",
    "pool_begin_train",
    "POOL_TRAIN_FUNC",
    "POOL_BEGIN_FUNC",
]


class TrainingFailed(AlphamillError):
    """Some tasks ended ``failed``; the message names them and their last error line."""

    exit_code = 1


# -- helpers ----------------------------------------------------------------------------------


def _recorder_cls() -> Any:
    from alphamill.workflow.recorder import Recorder

    return Recorder


def _to_ref(rec: Any) -> dict[str, str]:
    from alphamill.workflow.task_train import recorder_ref

    return recorder_ref(rec)


def _from_ref(ref: Mapping[str, Any]) -> Any:
    return _recorder_cls().from_ref(dict(ref))


def _is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and "run_id" in value and "model" not in value


def _spec_of(func: Callable[..., Any] | str) -> str:
    """``module:qualname`` of a function, so worker processes can import it."""
    if isinstance(func, str):
        return func
    module, name = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not module or not name or "<" in name or module == "__main__":
        raise ConfigError(
            f"{func!r} cannot be imported by worker processes; pass a module-level function "
            "of an importable module, or its 'module:function' string",
            "train_func",
        )
    return f"{module}:{name}"


def _load(spec: Callable[..., Any] | str) -> Callable[..., Any]:
    """The train function a trainer was given, imported again in a worker process.

    It is named by the training program itself (``TrainerR(train_func=...)``), never by a
    task or a pool row, so it is imported as named; a worker's own task function is held to
    the stricter rule of :func:`alphamill.task.worker.load_func`.
    """
    if callable(spec):
        return spec
    module, sep, name = spec.partition(":")
    if not sep:
        module, _, name = spec.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import {spec!r}: {e}", "train_func") from None
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable", "train_func")
    return obj


def _experiment_of(task: Any, experiment_name: str | None) -> str:
    if experiment_name:
        return experiment_name
    meta = task.get("meta") if isinstance(task, Mapping) else None
    name = meta.get(EXPERIMENT_META_KEY) if isinstance(meta, Mapping) else None
    if isinstance(task, Mapping) and not name:
        name = task.get("experiment_name")
    if not name:
        raise ConfigError(
            "no experiment name: expected task['meta']['experiment_name'] (set by TrainerRM) "
            "or the experiment_name argument",
            "task.meta.experiment_name",
        )
    return str(name)


def _tag_status(rec: Any, status: str) -> None:
    """Qlib's ``train_status`` tag (begin_task_train / end_task_train) on a recorder."""
    with contextlib.suppress(AttributeError):
        rec.set_tags(**{Trainer.STATUS_KEY: status})


def _progress(total: int, label: str, enabled: bool = True):
    """A rich progress bar counting tasks, with elapsed and remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        console=_stderr_console(),
    )
    return progress, total


def _stderr_console() -> Any:
    """Progress goes to stderr, so ``--json`` output on stdout stays parseable."""
    from rich.console import Console

    return Console(stderr=True)


# -- worker-side functions --------------------------------------------------------------------


@task_function
def pool_train(
    task_or_result: dict[str, Any],
    experiment_name: str | None = None,
    train_func: str | None = None,
    recorder_name: str | None = None,
) -> dict[str, str]:
    """Train one pool task and return its recorder reference (JSON).

    A task definition is trained from start to end (``train_func``, default
    :func:`~alphamill.workflow.task_train.task_train`) in the experiment named by its
    ``meta.experiment_name``; a recorder reference (the stored result of a ``part_done``
    task) is finished by :func:`~alphamill.workflow.task_train.end_task_train`.
    """
    if _is_ref(task_or_result):
        from alphamill.workflow.task_train import end_task_train

        name = experiment_name or task_or_result.get("experiment_name")
        rec = end_task_train(dict(task_or_result), _experiment_of({}, name))
        _tag_status(rec, Trainer.STATUS_END)
        return _to_ref(rec)
    if not isinstance(task_or_result, Mapping):
        raise ConfigError(
            f"expected a task dict or a recorder reference, got {type(task_or_result).__name__}",
            "task",
        )
    name = _experiment_of(task_or_result, experiment_name)
    if train_func is None:
        from alphamill.workflow.task_train import task_train as func
    else:
        func = _load(train_func)
    rec = func(dict(task_or_result), name, recorder_name) if recorder_name else func(dict(task_or_result), name)
    _tag_status(rec, Trainer.STATUS_END)
    return _to_ref(rec)


@task_function
def pool_begin_train(task: dict[str, Any], experiment_name: str | None = None) -> dict[str, str]:
    """Stage one of delayed training for a pool task: record it, return the reference.

    Run it with ``alphamill worker --func alphamill.trainer:pool_begin_train --to-status
    part_done``; stage two is the default worker with ``--from-status part_done``.
    """
    from alphamill.workflow.task_train import begin_task_train

    rec = begin_task_train(dict(task), _experiment_of(task, experiment_name))
    _tag_status(rec, Trainer.STATUS_BEGIN)
    return _to_ref(rec)


def _call_ref(func_spec: str, task: dict[str, Any], experiment_name: str) -> dict[str, str]:
    """Child-process entry of ``TrainerR(call_in_subproc=True)``: train, return the ref."""
    return _to_ref(_load(func_spec)(task, experiment_name))


# -- trainers ---------------------------------------------------------------------------------


class Trainer:
    """Base class: ``train(tasks) -> recorders``, ``end_train(recorders) -> recorders``."""

    STATUS_KEY = "train_status"
    STATUS_BEGIN = "begin_task_train"
    STATUS_END = "end_task_train"

    def __init__(self) -> None:
        self.delay = False

    def train(self, tasks: Sequence[dict], *args: Any, **kwargs: Any) -> list[Any]:
        raise NotImplementedError

    def end_train(self, models: Sequence[Any], *args: Any, **kwargs: Any) -> list[Any]:
        return list(models)

    def is_delay(self) -> bool:
        """Whether ``end_train`` still has to run for the models to be usable."""
        return self.delay

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.end_train(self.train(*args, **kwargs))

    def has_worker(self) -> bool:
        return False

    def worker(self) -> None:
        """Start a worker draining this trainer's tasks (only for pool trainers)."""
        raise NotImplementedError(f"{type(self).__name__} has no worker")


def _check_tasks(tasks: Any) -> list[dict]:
    if isinstance(tasks, Mapping):
        tasks = [tasks]
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
        raise ConfigError(f"expected a list of task dicts, got {type(tasks).__name__}", "tasks")
    for i, t in enumerate(tasks):
        if not isinstance(t, Mapping):
            raise ConfigError(f"expected a task dict, got {type(t).__name__}", f"tasks[{i}]")
    return [dict(t) for t in tasks]


class TrainerR(Trainer):
    """Train tasks in this process, one after the other, with a progress bar.

    ``train_func(task, experiment_name) -> Recorder`` (default ``task_train``; a callable or
    ``"module:function"``). ``call_in_subproc=True`` runs each task in one fresh child
    process (memory is returned to the system after each task), forked from the workers'
    preloading server, so it does not import LightGBM and MLflow again for every task.
    """

    def __init__(
        self,
        experiment_name: str | None = None,
        train_func: Callable[..., Any] | str | None = None,
        call_in_subproc: bool = False,
        default_rec_name: str | None = None,
        progress: bool = True,
    ):
        super().__init__()
        self.experiment_name = experiment_name
        if train_func is None:
            from alphamill.workflow.task_train import task_train

            train_func = task_train
        self.train_func = train_func
        self.call_in_subproc = call_in_subproc
        self.default_rec_name = default_rec_name
        self.progress = progress

    def _name(self, experiment_name: str | None) -> str:
        name = experiment_name or self.experiment_name
        if not name:
            raise ConfigError("expected an experiment name", "experiment_name")
        return name

    def _run_one(self, func: Callable[..., Any] | str, task: dict, name: str, subproc: bool) -> Any:
        if not subproc:
            return _load(func)(task, name)
        from alphamill.task.forkserver import call_in_child

        return _from_ref(call_in_child(_call_ref, _spec_of(func), task, name))

    def _loop(self, tasks: list[dict], func: Callable[..., Any] | str, name: str, label: str, status: str) -> list[Any]:
        from alphamill.memory import training_here

        recs = []
        progress, total = _progress(len(tasks), label, self.progress)
        with progress, (contextlib.nullcontext() if self.call_in_subproc else training_here()):
            bar = progress.add_task(label, total=total)
            for task in tasks:
                rec = self._run_one(func, task, name, self.call_in_subproc)
                _tag_status(rec, status)
                recs.append(rec)
                progress.advance(bar)
        return recs

    def train(self, tasks: Sequence[dict], train_func: Callable[..., Any] | None = None,
              experiment_name: str | None = None, **kwargs: Any) -> list[Any]:
        """Train every task in order; return their recorders (tagged ``end_task_train``)."""
        tasks = _check_tasks(tasks)
        name = self._name(experiment_name)
        return self._loop(tasks, train_func or self.train_func, name, "training", self.STATUS_END)


class DelayTrainerR(TrainerR):
    """Two stages in this process: ``train`` records the tasks, ``end_train`` fits them."""

    def __init__(
        self,
        experiment_name: str | None = None,
        train_func: Callable[..., Any] | str | None = None,
        end_train_func: Callable[..., Any] | str | None = None,
        call_in_subproc: bool = False,
        progress: bool = True,
    ):
        from alphamill.workflow.task_train import begin_task_train, end_task_train

        super().__init__(experiment_name, train_func or begin_task_train, call_in_subproc, progress=progress)
        self.end_train_func = end_train_func or end_task_train
        self.delay = True

    def train(self, tasks: Sequence[dict], train_func: Callable[..., Any] | None = None,
              experiment_name: str | None = None, **kwargs: Any) -> list[Any]:
        """Stage one: record every task (tagged ``begin_task_train``)."""
        tasks = _check_tasks(tasks)
        name = self._name(experiment_name)
        return self._loop(tasks, train_func or self.train_func, name, "recording", self.STATUS_BEGIN)

    def end_train(self, models: Sequence[Any], end_train_func: Callable[..., Any] | None = None,
                  experiment_name: str | None = None, **kwargs: Any) -> list[Any]:
        """Stage two: fit and record every recorder that is not finished yet."""
        name = self._name(experiment_name)
        func = end_train_func or self.end_train_func
        out = []
        todo = [r for r in models if self._tag(r) != self.STATUS_END]
        progress, total = _progress(len(todo), "training", self.progress)
        with progress:
            bar = progress.add_task("training", total=total)
            for rec in models:
                if self._tag(rec) == self.STATUS_END:
                    out.append(rec)
                    continue
                new = self._run_one(func, rec if not self.call_in_subproc else _to_ref(rec), name, self.call_in_subproc)
                _tag_status(new, self.STATUS_END)
                out.append(new)
                progress.advance(bar)
        return out

    def _tag(self, rec: Any) -> str | None:
        tags = getattr(rec, "list_tags", None)
        if callable(tags):
            with contextlib.suppress(Exception):
                return tags().get(self.STATUS_KEY)
        return None


class TrainerRM(Trainer):
    """Train tasks through a task pool, with local worker processes or external workers.

    ``task_pool`` names the pool inside the store at ``url`` (default: the ``pool_url``
    setting, the embedded SQLite pool). ``train`` stores the tasks (deduplicated by content
    hash, with ``meta.experiment_name`` set; tasks already ``done`` are not trained again,
    ``failed`` ones are put back to ``waiting``), trains them - in this process when
    ``n_jobs=1`` (as Qlib's TrainerRM), else in ``n_jobs`` spawned worker processes; with
    ``skip_run_task`` (or ``n_jobs=0``) ``alphamill worker`` processes elsewhere do the work -
    waits showing done / running / failed with elapsed and remaining time, and returns the
    recorders in task order. A task that still failed raises :class:`TrainingFailed`.

    ``lease_seconds``/``heartbeat_interval``/``max_attempts`` are passed to the pool;
    ``train_func`` (default ``task_train``) must be importable (``module:function``) since
    it runs in other processes.
    """

    #: Worker function of the stage this trainer's ``train`` runs.
    _stage_func = POOL_TRAIN_FUNC

    def __init__(
        self,
        experiment_name: str | None = None,
        task_pool: str | None = None,
        train_func: Callable[..., Any] | str | None = None,
        skip_run_task: bool = False,
        n_jobs: int = 1,
        url: str | None = None,
        *,
        lease_seconds: float | None = None,
        heartbeat_interval: float | None = None,
        max_attempts: int = 3,
        retry_backoff: float | None = None,
        poll_interval: float = 0.5,
        progress: bool = True,
        timeout: float | None = None,
    ):
        super().__init__()
        check_jobs(n_jobs, "n_jobs", minimum=0)
        self.experiment_name = experiment_name
        self.task_pool = task_pool or experiment_name
        if not self.task_pool:
            raise ConfigError("expected a task pool name (or an experiment name to use as one)", "task_pool")
        self.train_func = None if train_func is None else _spec_of(train_func)
        self.skip_run_task = skip_run_task or n_jobs == 0
        self.n_jobs = max(n_jobs, 1)
        self.url = url
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = heartbeat_interval
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.poll_interval = poll_interval
        self.progress = progress
        self.timeout = timeout
        #: Counts of the last ``train``/``end_train``: tasks given, new in the pool, trained here.
        self.last_stats: dict[str, int] = {}
        #: Called once when tasks are about to be trained here: after the local worker processes
        #: are started (so their start-up overlaps it), or before training in this process. The
        #: experiment runner computes the feature cache there; workers wait on the cache's lock.
        self.prepare_func: Callable[[], Any] | None = None
        self._reaper: threading.Thread | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _manager(self) -> Any:
        from alphamill.task.manage import TaskManager

        kwargs: dict[str, Any] = {"max_attempts": self.max_attempts}
        if self.lease_seconds is not None:
            kwargs["lease_seconds"] = self.lease_seconds
        if self.heartbeat_interval is not None:
            kwargs["heartbeat_interval"] = self.heartbeat_interval
        if self.retry_backoff is not None:
            kwargs["retry_backoff"] = self.retry_backoff
        return TaskManager(self.task_pool, self.url, **kwargs)

    def _name(self, experiment_name: str | None) -> str:
        name = experiment_name or self.experiment_name
        if not name:
            raise ConfigError("expected an experiment name", "experiment_name")
        return name

    def _worker_kwargs(self) -> dict[str, Any]:
        return {"train_func": self.train_func} if self.train_func else {}

    def _worker_config(self, url: str, query: dict[str, Any], before: str, after: str, func: str) -> Any:
        from alphamill.task.worker import WorkerConfig

        cfg = WorkerConfig(
            task_pool=self.task_pool,
            url=url,
            func=func,
            query=query,
            until_empty=True,
            before_status=before,
            after_status=after,
            kwargs=self._worker_kwargs() if func == POOL_TRAIN_FUNC else {},
        )
        if self.lease_seconds is not None:
            cfg.lease_seconds = self.lease_seconds
        if self.heartbeat_interval is not None:
            cfg.heartbeat_interval = self.heartbeat_interval
        if self.retry_backoff is not None:
            cfg.retry_backoff = self.retry_backoff
        return cfg

    def prepare_tasks(self, tasks: Sequence[dict], experiment_name: str | None = None) -> list[dict]:
        """Copies of ``tasks`` carrying ``meta.experiment_name`` (what is stored in the pool)."""
        name = self._name(experiment_name)
        out = []
        for t in _check_tasks(tasks):
            t = copy.deepcopy(t)
            meta = t.get("meta") or {}
            if not isinstance(meta, Mapping):
                raise ConfigError(f"expected a dict of metadata, got {type(meta).__name__}", "task.meta")
            t["meta"] = {**meta, EXPERIMENT_META_KEY: name}
            out.append(t)
        return out

    def _create(self, tm: Any, tasks: list[dict]) -> list[str]:
        ids = tm.create_task(tasks)
        self.last_stats = {"tasks": len(tasks), "new": tm.last_new}
        unique = sorted(set(ids))
        n = tm.reset_status({"_id": {"$in": unique}, "status": FAILED}, WAITING)
        if n:
            logger.warning("%d tasks had failed in an earlier run: put back to waiting", n)
        return ids

    def _run_and_wait(self, tm: Any, ids: list[str], before: str, after: str, func: str,
                      on_all_claimed: Callable[[], Any] | None = None) -> dict[str, int]:
        """Start local workers (unless skip_run_task), wait for every task to leave ``before``;
        ``on_all_claimed`` is called once, when the last tasks run (default: open the
        experiment store meanwhile, since their recorders are read here next)."""
        on_all_claimed = on_all_claimed or _warm_recorder_store
        unique = sorted(set(ids))
        query = {"_id": {"$in": unique}}
        stat = tm.task_stat(query)
        todo = stat.get(before, 0) + stat.get(RUNNING, 0) + (stat.get(WAITING, 0) if before == PART_DONE else 0)
        self.last_stats["trained"] = stat.get(before, 0)
        if not todo:
            return stat
        n = min(self.n_jobs, max(stat.get(before, 0), 1))
        if not self.skip_run_task and n == 1:
            self._prepare()
            return self._run_here(tm, query, len(unique), before, after, func)
        procs: list[Any] = []
        finished = False
        try:
            if not self.skip_run_task:
                from alphamill.task.worker import check_config

                cfg = self._worker_config(tm.url, query, before, after, func)
                check_config(cfg, n)
                procs = _start_workers(cfg, n)
                self._prepare()
            stat = _wait(tm, query, len(unique), self.poll_interval, self.progress, self.timeout, procs, after,
                         on_all_claimed=on_all_claimed)
            finished = True
            return stat
        finally:
            if finished and procs:
                # the workers leave on their own once the pool is drained; collecting the
                # results need not wait for their interpreters to shut down
                self._reaper = threading.Thread(target=_stop_workers, args=(procs,), name="alphamill-reaper")
                self._reaper.start()
            else:
                _stop_workers(procs)

    def join_workers(self) -> None:
        """Wait until the local worker processes of the last ``train`` have exited."""
        if self._reaper is not None:
            self._reaper.join()
            self._reaper = None

    def _prepare(self) -> None:
        if self.prepare_func is not None:
            self.prepare_func()

    def _run_here(self, tm: Any, query: dict[str, Any], total: int, before: str, after: str,
                  func: str) -> dict[str, int]:
        """One worker: this process (as Qlib's TrainerRM), with the same progress display."""
        from alphamill.memory import training_here
        from alphamill.task.manage import execute_task

        fn = _load(func)
        kwargs = self._worker_kwargs() if func == POOL_TRAIN_FUNC else {}
        display = _PoolProgress(total, self.progress, after)
        with display, training_here():
            while True:
                stat = tm.task_stat(query)
                display.update(stat)
                task = tm.fetch_task(query=query, status=before)
                if task is None:
                    if stat.get(before):  # a failed attempt waiting for its retry backoff
                        time.sleep(min(0.5, max(tm.retry_backoff, 0.01)))
                        tm.requeue_expired()
                        continue
                    break
                execute_task(tm, task, fn, kwargs, after_status=after)
        if stat.get(RUNNING):  # claimed by workers elsewhere: wait for them
            return _wait(tm, query, total, self.poll_interval, self.progress, self.timeout, [], after)
        return tm.task_stat(query)

    def _refs(self, tm: Any, ids: list[str], accept: tuple[str, ...] = (DONE,)) -> list[dict[str, Any]]:
        by_id = {t["_id"]: t for t in tm.query({"_id": {"$in": sorted(set(ids))}})}
        bad = [t for t in by_id.values() if t["status"] not in accept]
        if bad:
            raise TrainingFailed(_failure_message(self.task_pool, bad))
        return [dict(by_id[i]["res"]) for i in ids]

    def _recorders(self, tm: Any, ids: list[str], accept: tuple[str, ...] = (DONE,)) -> list[Any]:
        return [_from_ref(r) for r in self._refs(tm, ids, accept)]

    # -- API -------------------------------------------------------------------------------
    def train(self, tasks: Sequence[dict], train_func: Any = None, experiment_name: str | None = None,
              **kwargs: Any) -> list[Any]:
        """Store, train (or wait for external workers) and return recorders in task order."""
        if train_func is not None:
            self.train_func = _spec_of(train_func)
        return [_from_ref(r) for r in self._train(tasks, experiment_name)]

    def train_refs(self, tasks: Sequence[dict], train_func: Any = None, experiment_name: str | None = None,
                   on_all_claimed: Callable[[], Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """As :meth:`train`, returning each recorder's reference (``recorder_ref``: plain
        data) instead of the recorder. ``on_all_claimed`` is called once, when the last tasks
        run (default: open the experiment store here meanwhile; another callable lets
        whoever reads the runs start instead)."""
        if train_func is not None:
            self.train_func = _spec_of(train_func)
        return self._train(tasks, experiment_name, on_all_claimed)

    def _train(self, tasks: Sequence[dict], experiment_name: str | None,
               on_all_claimed: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
        name = self._name(experiment_name)
        tasks = self.prepare_tasks(tasks, name)
        with self._manager() as tm:
            ids = self._create(tm, tasks)
            self._run_and_wait(tm, ids, WAITING, DONE, POOL_TRAIN_FUNC, on_all_claimed)
            return self._refs(tm, ids)

    def has_worker(self) -> bool:
        return True

    def worker(self, train_func: Any = None, experiment_name: str | None = None, jobs: int | None = None) -> int:
        """Drain this trainer's pool with ``jobs`` worker processes here (Qlib's ``worker``)."""
        from alphamill.task.worker import run_worker

        if train_func is not None:
            self.train_func = _spec_of(train_func)
        query = {"meta.experiment_name": experiment_name} if experiment_name else {}
        return run_worker(self.task_pool, self.url, func=POOL_TRAIN_FUNC, jobs=jobs or self.n_jobs,
                          query=query, until_empty=True, **self._worker_kwargs())


class DelayTrainerRM(TrainerRM):
    """Two-stage training through the pool (Qlib's ``DelayTrainerRM``).

    ``train`` stores the tasks and runs stage one (record the task: ``waiting ->
    part_done``) in this process, which is quick, and returns the stage-one recorders;
    ``end_train`` runs stage two (fit and record: ``part_done -> done``) in ``n_jobs``
    separate worker processes, or waits for external ``alphamill worker --from-status
    part_done`` processes when ``skip_run_task``. With ``skip_run_task`` stage one is left
    to external workers too (``alphamill worker --func alphamill.trainer:pool_begin_train
    --to-status part_done``). Tasks already ``done`` are returned as they are.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.delay = True

    def train(self, tasks: Sequence[dict], train_func: Any = None, experiment_name: str | None = None,
              **kwargs: Any) -> list[Any]:
        """Store the tasks and record each (stage one); return recorders in task order."""
        from alphamill.task.manage import run_task

        name = self._name(experiment_name)
        tasks = self.prepare_tasks(tasks, name)
        with self._manager() as tm:
            ids = self._create(tm, tasks)
            query = {"_id": {"$in": sorted(set(ids))}}
            if self.skip_run_task:
                _wait(tm, query, len(set(ids)), self.poll_interval, self.progress, self.timeout, [], PART_DONE,
                      undone=(WAITING, RUNNING))
            else:
                run_task(pool_begin_train, tm, query=query, after_status=PART_DONE)
            self._stage_one_ids = ids
            return self._recorders(tm, ids, accept=(PART_DONE, DONE))

    def train_refs(self, tasks: Sequence[dict], train_func: Any = None, experiment_name: str | None = None,
                   on_all_claimed: Callable[[], Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """Stage one, as :meth:`train`, returning the recorders' references."""
        return [_to_ref(r) for r in self.train(tasks, train_func, experiment_name, **kwargs)]

    def end_train(self, models: Sequence[Any] | None = None, experiment_name: str | None = None,
                  **kwargs: Any) -> list[Any]:
        """Stage two for every ``part_done`` task of this experiment; recorders in task order.

        ``models`` are the recorders ``train`` returned; the tasks they belong to are found
        by their run ids in the pool.
        """
        name = self._name(experiment_name)
        with self._manager() as tm:
            if models is None:
                ids = [t["_id"] for t in tm.query({"meta.experiment_name": name})]
            else:
                run_ids = [_to_ref(m)["run_id"] for m in models]
                found = {}
                for t in tm.query({"meta.experiment_name": name}):
                    if isinstance(t["res"], Mapping) and "run_id" in t["res"]:
                        found.setdefault(t["res"]["run_id"], t["_id"])
                missing = [r for r in run_ids if r not in found]
                if missing:
                    raise ConfigError(
                        f"recorders {missing} are not stage-one results of pool {self.task_pool!r} "
                        f"for experiment {name!r}",
                        "models",
                    )
                ids = [found[r] for r in run_ids]
            self._run_and_wait(tm, ids, PART_DONE, DONE, POOL_TRAIN_FUNC)
            return self._recorders(tm, ids)


# -- local worker processes -------------------------------------------------------------------


def _start_workers(cfg: Any, n: int) -> list[Any]:
    from alphamill import threads
    from alphamill.task.worker import _child_main, worker_context

    ctx = worker_context()
    busy = threads.new_counter(ctx)  # the workers share the cores (see alphamill.threads)
    state = (dict(os.environ), os.getcwd(), list(sys.path))
    procs = [ctx.Process(target=_child_main, args=(cfg, busy, *state), name=f"alphamill-trainer-{i}")
             for i in range(n)]
    for p in procs:
        p.start()
        p.alphamill_busy = busy  # start() drops its args; the shared counter must outlive the children
    return procs


def _stop_workers(procs: list[Any], grace: float = 10.0) -> None:
    """Ask still-running workers to stop (SIGTERM: they hand their task back), then join."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


class _PoolProgress:
    """Progress of pool tasks: a bar with done / running / failed, elapsed and remaining time."""

    def __init__(self, total: int, enabled: bool, target: str = DONE):
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.target = target
        self.bar = Progress(
            TextColumn("[bold]tasks"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("done {task.fields[done]} running {task.fields[running]} failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not enabled,
            console=_stderr_console(),
        )
        self.task = self.bar.add_task("tasks", total=total, done=0, running=0, failed=0)

    def __enter__(self) -> _PoolProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, stat: Mapping[str, int]) -> None:
        done = stat.get(self.target, 0) + (stat.get(DONE, 0) if self.target != DONE else 0)
        self.bar.update(self.task, completed=done + stat.get(FAILED, 0), done=done,
                        running=stat.get(RUNNING, 0), failed=stat.get(FAILED, 0))


#: The poll of the pool while waiting costs at most about 1/POLL_COST_RATIO of the waiting time.
POLL_COST_RATIO = 20
MIN_POLL = 0.05


def _warm_recorder_store() -> threading.Thread:
    """Open the experiment store (importing MLflow) in the background, while the last tasks
    run, so that collecting their recorders does not start with it."""
    def warm() -> None:
        with contextlib.suppress(Exception):  # a real problem shows when the recorders are read
            from alphamill.workflow.recorder import open_client

            open_client()

    t = threading.Thread(target=warm, name="alphamill-warm-store", daemon=True)
    t.start()
    return t


def _wait(tm: Any, query: dict[str, Any], total: int, poll: float, progress: bool, timeout: float | None,
          procs: list[Any], target: str, undone: tuple[str, ...] = (WAITING, RUNNING, PART_DONE),
          on_all_claimed: Callable[[], threading.Thread | None] | None = None) -> dict[str, int]:
    """Poll the pool until no matching task is undone; show done / running / failed.

    The poll is quick (``MIN_POLL``) while counting the tasks is cheap and slows down to
    ``poll`` as the count gets expensive (large pools), so the end of the last task is seen
    at once without the poll loading the store. ``on_all_claimed`` is called once, when no
    task is left waiting (the last ones run); a thread it returns is joined before returning.
    """
    start = time.monotonic()
    if target == PART_DONE:
        undone = tuple(s for s in undone if s != PART_DONE)
    warm: threading.Thread | None = None
    last_requeue = start
    try:
        with _PoolProgress(total, progress, target) as display:
            while True:
                t0 = time.monotonic()
                stat = tm.task_stat(query)
                cost = time.monotonic() - t0
                display.update(stat)
                if not any(stat.get(s) for s in undone):
                    return stat
                if procs and not any(p.is_alive() for p in procs) and not stat.get(RUNNING):
                    return stat  # the local workers are gone and nothing is running: report what is left
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"task_pool {tm.task_pool!r}: tasks still undone after {timeout:g} s: {stat}")
                if on_all_claimed is not None and not any(stat.get(s) for s in (WAITING, PART_DONE) if s in undone):
                    warm, on_all_claimed = on_all_claimed(), None
                time.sleep(min(poll, max(MIN_POLL, POLL_COST_RATIO * cost)))
                if time.monotonic() - last_requeue >= poll:
                    tm.requeue_expired()
                    last_requeue = time.monotonic()
    finally:
        if warm is not None:
            warm.join()


def _failure_message(pool: str, bad: list[dict]) -> str:
    lines = [f"task_pool {pool!r}: {len(bad)} task(s) did not finish:"]
    for t in bad[:5]:
        err = (t.get("last_error") or "").strip().splitlines()
        meta = t.get("meta") or {}
        where = meta.get("rolling", {}).get("index") if isinstance(meta.get("rolling"), dict) else None
        label = f"task {t['_id']}" + (f" (window {where})" if where is not None else "")
        lines.append(f"  {label}: {t['status']}" + (f": {err[-1]}" if err else ""))
    lines.append(f"see `alphamill -t {pool} query '{{\"status\": \"failed\"}}'` for the tracebacks")
    return "\n".join(lines)
