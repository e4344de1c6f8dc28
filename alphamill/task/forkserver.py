"""The preloading fork server local workers start from, and calls run in its children.

Local worker processes are forked from one server process that imported LightGBM, MLflow's
store, pandas and alphamill once (multiprocessing's "forkserver"), so each of N workers does
not spend seconds importing them again. An orchestrating process that has started the server
also hands it the calls that need those libraries (:func:`call_preloaded`: checking LightGBM
parameters, collecting the runs), so the run imports each of them once, not once more in the
orchestrator.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from alphamill.errors import AlphamillError

T = TypeVar("T")

#: What a training worker imports; a module that fails to import there is simply imported by
#: the worker itself.
WORKER_PRELOAD = [
    "alphamill.task.worker",
    "alphamill.trainer",
    "alphamill.workflow.task_train",
    "alphamill.workflow.recorder",
    "alphamill.workflow.record_temp",
    "alphamill.workflow.results",
    "alphamill.workflow.collect",
    "alphamill.dataset",
    "alphamill.dataset.handler",
    "alphamill.features.cache",
    "alphamill.features.processors",
    "alphamill.model.gbdt",
    "alphamill.evaluate",
    "alphamill.backtest",
    "alphamill.ens",
    "mlflow.tracking",
    "mlflow.artifacts",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.db.utils",
    "mlflow.store.artifact.local_artifact_repo",
    "alembic.runtime.migration",
    "alembic.script",
]

_started = False


def worker_context() -> Any:
    """The multiprocessing context local workers start from: the preloading fork server
    where the platform has one, else fresh spawned interpreters."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(WORKER_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server() -> None:
    """Start the fork server now, so that its imports overlap what the caller does next.
    From then on :func:`call_preloaded` runs its calls in the server's children."""
    global _started
    if worker_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
        _started = True


def server_started() -> bool:
    """Whether this process started the worker server (and :func:`call_preloaded` uses it)."""
    return _started


def adopt_parent_state(env: dict[str, str] | None, cwd: str | None = None, path: list[str] | None = None) -> None:
    """Give a child of the fork server its caller's environment, working directory and
    ``sys.path``: the server keeps those of the moment it started."""
    if env is not None and env != os.environ:
        os.environ.clear()
        os.environ.update(env)
    if cwd is not None and cwd != os.getcwd():
        os.chdir(cwd)
    if path is not None:
        sys.path[:] = path


def _child(conn: Any, state: tuple, func: Callable[..., Any], warm: Callable[..., Any] | None,
           warm_args: tuple) -> None:
    adopt_parent_state(*state)
    if warm is not None:
        with contextlib.suppress(Exception):  # only a head start: the call meets any real problem
            warm(*warm_args)
    try:
        message = conn.recv()
    except EOFError:  # cancelled
        return
    if message is None:
        return
    args, kwargs = message
    try:
        result = func(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
        text = traceback.format_exc()
        try:
            payload: bytes | None = pickle.dumps(e)
            pickle.loads(payload)  # an exception that does not round-trip goes back as text
        except Exception:
            payload = None
        conn.send(("error", payload, text))
        return
    conn.send(("ok", result, ""))


class PreloadedCall:
    """``func`` called in a child of the worker server that is started before the arguments
    are known: ``warm(*warm_args)`` runs there at once (opening a store, reading data), and
    calling this object (once) sends the arguments and returns ``func``'s result. Results
    and exceptions come back pickled; ``func`` and ``warm`` must be importable. Without a
    server started by this process, ``func`` simply runs here when called (no ``warm``).
    """

    def __init__(self, func: Callable[..., T], warm: Callable[..., Any] | None = None, *warm_args: Any,
                 always_child: bool = False):
        self.func = func
        self._proc: Any = None
        self._conn: Any = None
        if _started or always_child:  # without a server, worker_context() spawns
            ctx = worker_context()
            self._conn, child = ctx.Pipe()
            state = (dict(os.environ), os.getcwd(), list(sys.path))
            self._proc = ctx.Process(target=_child, args=(child, state, func, warm, warm_args),
                                     name="alphamill-call")
            self._proc.start()
            child.close()

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        if self._proc is None:
            return self.func(*args, **kwargs)
        name = getattr(self.func, "__qualname__", self.func)
        try:
            try:
                self._conn.send((args, kwargs))
                kind, value, text = self._conn.recv()
            except (EOFError, BrokenPipeError):
                self._proc.join()
                raise RuntimeError(f"{name} failed: its process exited with code {self._proc.exitcode}") from None
        finally:
            self.cancel()
        if kind == "ok":
            return value
        error = pickle.loads(value) if value is not None else None
        if isinstance(error, BaseException):
            if not isinstance(error, AlphamillError):  # a bug: keep where it happened
                error.add_note(f"raised in a worker-server process:\n{text}")
            raise error
        raise RuntimeError(f"{name} failed:\n{text}")

    def cancel(self) -> None:
        """Stop the child if it still runs (nothing happens once the call returned)."""
        if self._proc is None:
            return
        self._conn.close()  # a waiting child sees the end of the pipe and leaves at once
        self._proc.join(1)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()
        self._proc = None


def call_in_child(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)`` in a fresh child process (its memory goes back to the system
    when it ends): forked from the worker server, started if needed, or spawned where the
    platform has no fork server."""
    start_worker_server()
    return PreloadedCall(func, always_child=True)(*args, **kwargs)


def call_preloaded(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``, in a child of the worker server if this process started one
    (else here). Its result and exceptions come back pickled; ``func`` must be importable."""
    return PreloadedCall(func)(*args, **kwargs)
