"""Task functions used by the TaskManager and worker tests (importable as module:function)."""

from __future__ import annotations

import os
import time

from alphamill.kinds import task_function


@task_function
def noop(task_def, **kwargs):
    """Return the task's number: the cheapest possible task."""
    return {"n": task_def.get("n")}


@task_function
def ledger(task_def, **kwargs):
    """Append ``n pid start end`` to the ledger file named in the environment, return pid."""
    start = time.time()
    sleep = task_def.get("sleep", 0)
    if sleep:
        time.sleep(sleep)
    end = time.time()
    path = os.environ["AM_TEST_LEDGER"]
    line = f"{task_def.get('n')} {os.getpid()} {start:.6f} {end:.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return {"n": task_def.get("n"), "pid": os.getpid()}


@task_function
def mark_start_then_sleep(task_def, **kwargs):
    """Write ``start n pid`` to the ledger, then sleep (a task to be killed mid-way)."""
    path = os.environ["AM_TEST_LEDGER"]
    with open(path, "a") as f:
        f.write(f"start {task_def.get('n')} {os.getpid()}\n")
    time.sleep(task_def.get("sleep", 1.0))
    with open(path, "a") as f:
        f.write(f"end {task_def.get('n')} {os.getpid()}\n")
    return {"n": task_def.get("n"), "pid": os.getpid()}


@task_function
def fail_if_asked(task_def, **kwargs):
    """Raise for tasks marked ``fail``; succeed otherwise."""
    if task_def.get("fail"):
        raise ValueError(f"task {task_def.get('n')} always fails")
    return {"n": task_def.get("n")}


@task_function
def pid(task_def, **kwargs):
    """Return the pid that ran the task (to check force_release uses a child)."""
    return {"pid": os.getpid(), "kw": kwargs}


@task_function
def second_stage(prev, **kwargs):
    """Second stage of two-stage training: receives the stored part_done result."""
    return {"stage": 2, "prev": prev}


@task_function
def first_stage(task_def, **kwargs):
    return {"stage": 1, "n": task_def.get("n")}


class Opaque:
    """Not JSON-compatible: a json pool refuses it as a result."""

    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.x == self.x


@task_function
def opaque(task_def, **kwargs):
    return Opaque(task_def.get("n"))


@task_function
def interrupt(task_def, **kwargs):
    raise KeyboardInterrupt


def create_same(url, pool, n, barrier, out_path):
    """Create the same ``n`` tasks as the other processes, all starting together."""
    from alphamill.task.manage import TaskManager

    defs = [{"model": {"class": "M", "kwargs": {"seed": i}}, "n": i} for i in range(n)]
    with TaskManager(pool, url) as tm:
        barrier.wait(timeout=60)
        ids = tm.create_task(defs)
    with open(out_path, "w") as f:
        f.write("\n".join(ids))


@task_function
def env_and_share(task_def, **kwargs):
    """What a worker process sees: the environment variable the task names, and its share of
    the cores while it runs the task."""
    from alphamill import threads

    return {"value": os.environ.get(task_def["var"]), "threads": threads.current(),
            "shared": threads.shared(), "pid": os.getpid()}


def where_am_i(var):
    """For call_preloaded: the process, an environment variable, the directory, sys.path."""
    import sys

    return os.getpid(), os.environ.get(var), os.getcwd(), list(sys.path)


def raise_config_error():
    from alphamill.errors import ConfigError

    raise ConfigError("expected a positive number", "task.model.kwargs.lr")


def raise_bug():
    return {}["missing"]


class _Unpicklable(Exception):
    def __init__(self, a, b):  # pickling keeps args=(text,): unpickling calls this with one
        super().__init__(f"{a} {b}")


def raise_unpicklable():
    raise _Unpicklable("odd", "error")


def die():
    os._exit(3)


_WARMED: list = []


def warm_up(value):
    _WARMED.append((os.getpid(), value))


def warmed():
    return list(_WARMED), os.getpid()


def warm_fails():
    raise OSError("no store here")
