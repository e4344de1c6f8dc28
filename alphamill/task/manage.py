"""TaskManager and run_task: Qlib's task-pool API on alphamill's crash-safe pool.

Names and meanings follow ``qlib.workflow.task.manage`` so Qlib code ports by changing the
import. What differs is safety: a fetched task is held under a *lease* that a background
heartbeat renews while the task runs; a worker that dies stops renewing and the task is
re-offered once the lease expires (judged by the database's clock). Commits and returns are
compare-and-set on the lease token, so a zombie worker can never overwrite a newer result:
its late commit raises :class:`~alphamill.errors.LeaseLost`. Payloads are canonical JSON
unless the pool was created with the signed pickle codec (see :mod:`alphamill.task.codec`).

Task dicts have Qlib's shape: ``{"_id", "def", "filter", "status", "res", "priority", ...}``
plus ``meta`` (the generator's metadata), ``attempts``, ``last_error`` and, for a fetched
task, ``lease_token``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from alphamill.config import get_setting, redact_url
from alphamill.errors import CanonicalError, ConfigError, LeaseLost, PoolError, PoolUnavailable
from alphamill.limits import check_int32, check_seconds
from alphamill.task.backends import open_backend
from alphamill.task.backends.base import (
    Backend,
    NewTask,
    TaskRecord,
    WorkerIdentity,
    validate_pool_name,
)
from alphamill.task.codec import Codec, check_codec
from alphamill.task.query import Query, parse_query
from alphamill.task.status import (
    CLAIMABLE,
    COMMITTABLE,
    DONE,
    FAILED,
    PART_DONE,
    RUNNING,
    STATUSES,
    WAITING,
    check_status,
    check_transition,
)

logger = logging.getLogger("alphamill.task")

#: Defaults for production: minutes-long leases renewed every minute.
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_HEARTBEAT_INTERVAL = 60.0
DEFAULT_RETRY_BACKOFF = 5.0
MAX_RETRY_DELAY = 600.0
#: Hashes per lookup when ``create_task`` counts new tasks in a dry run.
INSERT_BATCH = 5000
#: Statuses that mean "still to do" for ``wait``.
UNDONE: tuple[str, ...] = (WAITING, RUNNING, PART_DONE)


def _positive(value: Any, field: str) -> float:
    return check_seconds(value, field, positive=True)


def worker_identity() -> WorkerIdentity:
    """A fresh lease owner ``host:pid:uuid`` for this process."""
    host = socket.gethostname()
    pid = os.getpid()
    return WorkerIdentity(owner=f"{host}:{pid}:{uuid.uuid4().hex[:12]}", host=host, pid=pid)


def _ensure_sqlite_dir(url: str) -> None:
    """The default pool lives under ``.alphamill/``; create the folder on first use."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        return
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if path and path != ":memory:":
        parent = os.path.dirname(path)
        if parent:
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as e:
                raise PoolUnavailable(
                    f"pool URL {redact_url(url)!r}: cannot create the folder {parent!r}: {e.strerror}"
                ) from None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small objects (bulk create_task).

    Each batch allocates hundreds of thousands of dicts and strings that live until the
    insert; without the pause the collector re-scans them over and over (measured: ~40% of
    the time of creating 10k tasks). Nothing created here forms reference cycles.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Heartbeat:
    """Background thread renewing every lease this process holds.

    Leases are short enough that a dead worker's task comes back soon, so a running task must
    be renewed without the task function's help. The thread uses its own connection (SQL
    connections are not shared across threads) and never raises: a failed renewal is logged,
    and a renewal refused by the store marks the lease as lost so the commit is not attempted
    blindly.
    """

    def __init__(
        self,
        open_store: Callable[[], Backend],
        pool: str,
        lease_seconds: float,
        interval: float,
        shared: bool = False,
    ):
        self._open_store = open_store
        self._shared = shared
        self.pool = pool
        self.lease_seconds = lease_seconds
        self.interval = interval
        self._held: dict[str, str] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.beats = 0

    def add(self, task_id: str, token: str) -> None:
        with self._lock:
            self._held[task_id] = token
            self._lost.discard(task_id)
        if self._thread is None or self._pid != os.getpid():
            self._start()

    def discard(self, task_id: str) -> None:
        with self._lock:
            self._held.pop(task_id, None)

    def holds(self, task_id: str, token: str | None) -> bool:
        with self._lock:
            return token is not None and self._held.get(task_id) == token

    def lost(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._lost

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self._held)

    def _start(self) -> None:
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"alphamill-heartbeat-{self.pool}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        store: Backend | None = None
        try:
            while not self._stop.wait(self.interval):
                held = self.held()
                if not held:
                    continue
                if store is None:
                    try:
                        store = self._open_store()
                    except Exception as e:  # the store may be restarting: retry next beat
                        logger.warning("heartbeat: cannot open the pool store: %s", redact_url(str(e)))
                        continue
                for task_id, token in held.items():
                    try:
                        ok = store.heartbeat(self.pool, task_id, token, self.lease_seconds)
                    except Exception as e:
                        logger.warning("heartbeat of task %s failed: %s", task_id, redact_url(str(e)))
                        continue
                    self.beats += 1
                    if not ok:
                        with self._lock:  # a task committed since the snapshot is no loss
                            lost = self._held.get(task_id) == token
                            if lost:
                                self._held.pop(task_id, None)
                                self._lost.add(task_id)
                        if lost:
                            logger.warning(
                                "task %s: lease lost (expired or reset); its result will be refused",
                                task_id,
                            )
        finally:
            if store is not None and not self._shared:
                with contextlib.suppress(Exception):
                    store.close()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.interval))


class TaskManager:
    """Qlib's TaskManager on an alphamill pool (SQLite, PostgreSQL, MongoDB or memory).

    ``task_pool`` names a namespace inside the store at ``url`` (default: the setting
    ``pool_url``, an embedded SQLite file under ``.alphamill/``). ``codec`` is used only when
    the pool is created (``"pickle"`` needs ``ALPHAMILL_PICKLE_KEY``); an existing pool keeps
    its own. ``lease_seconds``/``heartbeat_interval`` govern fetched tasks; ``max_attempts``
    applies to tasks created here; a failed attempt is retried after
    ``retry_backoff * 2**(attempt-1)`` seconds.
    """

    STATUS_WAITING = WAITING
    STATUS_RUNNING = RUNNING
    STATUS_PART_DONE = PART_DONE
    STATUS_DONE = DONE
    STATUS_FAILED = FAILED
    ENCODE_FIELDS_PREFIX = ["def", "res"]

    def __init__(
        self,
        task_pool: str,
        url: str | None = None,
        *,
        codec: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        heartbeat_interval: float | None = None,
        max_attempts: int = 3,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        backend: Backend | None = None,
    ):
        self.task_pool = validate_pool_name(task_pool)
        self.lease_seconds = _positive(lease_seconds, "lease_seconds")
        if heartbeat_interval is None:
            heartbeat_interval = min(DEFAULT_HEARTBEAT_INTERVAL, self.lease_seconds / 5)
        self.heartbeat_interval = _positive(heartbeat_interval, "heartbeat_interval")
        if self.heartbeat_interval >= self.lease_seconds:
            raise ConfigError(
                f"must be shorter than lease_seconds ({self.lease_seconds:g}) or leases expire "
                f"between beats, got {self.heartbeat_interval:g}",
                "heartbeat_interval",
            )
        if check_int32(max_attempts, "max_attempts") < 1:
            raise ConfigError(f"expected a positive integer, got {max_attempts!r}", "max_attempts")
        self.max_attempts = max_attempts
        self.retry_backoff = check_seconds(retry_backoff, "retry_backoff")
        self._requested_codec = check_codec(codec)
        if backend is not None:
            self.url = getattr(backend, "url", None) or f"{type(backend).__name__}"
            self.backend = backend
            self._owns_backend = False
        else:
            self.url = str(get_setting("pool_url", url))
            _ensure_sqlite_dir(self.url)
            self.backend = open_backend(self.url)
            self._owns_backend = True
        self._codec: Codec | None = None
        self._exists = False
        try:
            info = self.backend.pool_info(self.task_pool)
            if info is not None:
                self._exists = True
                if codec is not None and info.codec != codec:
                    raise PoolError(
                        f"task_pool {self.task_pool!r} already exists with codec {info.codec!r}; "
                        f"cannot open it with codec {codec!r} (a pool keeps the codec it was "
                        "created with)"
                    )
                self._codec = Codec(info.codec, self.task_pool)
            elif codec is not None:  # check the pickle key before the pool is created
                self._codec = Codec(codec, self.task_pool, require_key=True)
        except BaseException:
            if self._owns_backend:
                self.backend.close()
            raise
        self._identity: WorkerIdentity | None = None
        #: How many tasks the last ``create_task`` call inserted (or would insert, dry run).
        self.last_new = 0
        self._heartbeat = Heartbeat(
            self._open_heartbeat_store,
            self.task_pool,
            self.lease_seconds,
            self.heartbeat_interval,
            shared=self._shares_store(),
        )

    # -- plumbing ------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"TaskManager({self.task_pool!r}, url={redact_url(self.url)!r})"

    def __enter__(self) -> TaskManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the heartbeat and release connections (held leases simply expire)."""
        self._heartbeat.stop()
        if self._owns_backend:
            self.backend.close()

    def _shares_store(self) -> bool:
        return not self._owns_backend or urlsplit(self.url).scheme.lower() == "memory"

    def _open_heartbeat_store(self) -> Backend:
        if self._shares_store():
            return self.backend
        return open_backend(self.url)

    @property
    def identity(self) -> WorkerIdentity:
        """This process's lease owner (new after a fork, so children never share one)."""
        if self._identity is None or self._identity.pid != os.getpid():
            self._identity = worker_identity()
        return self._identity

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = Codec(self._requested_codec or "json", self.task_pool)
        return self._codec

    def _ensure(self) -> None:
        if not self._exists:
            info = self.backend.ensure_pool(self.task_pool, codec=self._requested_codec or "json")
            if self._codec is None or self._codec.name != info.codec:
                self._codec = Codec(info.codec, self.task_pool)
            self._exists = True

    def _pool_exists(self) -> bool:
        if not self._exists:
            info = self.backend.pool_info(self.task_pool)
            if info is not None:
                self._exists = True
                if self._codec is None or self._codec.name != info.codec:
                    self._codec = Codec(info.codec, self.task_pool)
        return self._exists

    def _decode(self, value: Any, where: str) -> Any:
        return self.codec.decode(value, where)

    def _to_task(self, rec: TaskRecord, decode: bool = True) -> dict[str, Any]:
        definition = self._decode(rec.definition, f"task {rec.id} definition") if decode else rec.definition
        result = self._decode(rec.result, f"task {rec.id} result") if decode else rec.result
        return {
            "_id": rec.id,
            "def": definition,
            "filter": definition,
            "status": rec.status,
            "res": result,
            "priority": rec.priority,
            "hash": rec.hash,
            "meta": rec.metadata,
            "attempts": rec.attempts,
            "max_attempts": rec.max_attempts,
            "claimed_from": rec.claimed_from,
            "lease_owner": rec.lease_owner,
            "lease_token": rec.lease_token,
            "lease_expires": rec.lease_expires,
            "heartbeat_at": rec.heartbeat_at,
            "not_before": rec.not_before,
            "created_at": rec.created_at,
            "started_at": rec.started_at,
            "finished_at": rec.finished_at,
            "last_error": rec.last_error,
            "worker_host": rec.worker_host,
            "worker_pid": rec.worker_pid,
        }

    @staticmethod
    def _task_id(task: Any) -> str:
        if type(task) is dict and "_id" in task:  # the hot path: a fetched task
            return str(task["_id"])
        if isinstance(task, Mapping):
            if "_id" not in task:
                raise ConfigError("expected a task dict with an '_id' (as returned by fetch_task/query)", "task")
            return str(task["_id"])
        if isinstance(task, (str, int)) and not isinstance(task, bool):
            return str(task)
        raise ConfigError(f"expected a task dict or a task id, got {type(task).__name__}", "task")

    # -- creating ------------------------------------------------------------------------------
    def _new_task(self, definition: Any, where: str, priority: int) -> NewTask:
        if not isinstance(definition, Mapping):
            raise ConfigError(f"a task definition is a dict, got {type(definition).__name__}", where)
        stored, content_hash, text = self.codec.prepare_text(definition, where)
        meta = definition.get("meta")
        if meta is None:
            metadata: dict[str, Any] = {}
        elif isinstance(meta, Mapping):
            metadata = dict(stored["meta"]) if isinstance(stored, dict) and isinstance(stored.get("meta"), dict) else {}
        else:
            raise ConfigError(f"expected a dict of metadata, got {type(meta).__name__}", f"{where}.meta")
        return NewTask(
            definition=stored,
            hash=content_hash,
            priority=priority,
            max_attempts=self.max_attempts,
            metadata=metadata,
            definition_json=text,
        )

    def create_task(
        self,
        task_def_l: Iterable[Mapping[str, Any]],
        dry_run: bool = False,
        print_nt: bool = False,
        priority: int = 0,
    ) -> list[str]:
        """Store new tasks, deduplicated on their content hash; return every task's id.

        Known tasks are not inserted again: their existing id is returned. All or nothing:
        every definition is checked first (errors name its index in ``task_def_l``), then
        the whole list is stored in one transaction (SQL backends; MongoDB takes back what
        it inserted), race-free across processes. ``dry_run``
        stores nothing and returns ``[]`` (Qlib's behaviour) after logging what is new;
        ``print_nt`` prints the new tasks.
        """
        check_int32(priority, "priority")
        if isinstance(task_def_l, Mapping):
            raise ConfigError("expected a list of task definitions, got a single dict", "task_def_l")
        defs = list(task_def_l)
        with _gc_paused():
            new = [self._new_task(d, f"task_def_l[{i}]", priority) for i, d in enumerate(defs)]
        return self._store_new(defs, new, dry_run, print_nt)

    def _store_new(self, defs: list[Any], new: list[NewTask], dry_run: bool, print_nt: bool) -> list[str]:
        if dry_run:
            known: set[str] = set()
            if self._pool_exists():
                hashes = sorted({t.hash for t in new})
                for start in range(0, len(hashes), INSERT_BATCH):
                    q = parse_query({"hash": {"$in": hashes[start : start + INSERT_BATCH]}})
                    known.update(r.hash for r in self.backend.find_tasks(self.task_pool, q, with_definition=False))
            seen: set[str] = set()
            fresh = []
            for d, t in zip(defs, new, strict=True):
                if t.hash not in known and t.hash not in seen:
                    fresh.append(d)
                seen.add(t.hash)
            self.last_new = len(fresh)
            logger.info("Total Tasks: %d, New Tasks: %d (dry run)", len(defs), len(fresh))
            if print_nt:
                for d in fresh:
                    print(d)
            return []
        self._ensure()
        with _gc_paused():  # one call: the backend stores the whole list or nothing
            results = self.backend.insert_tasks(self.task_pool, new)
        ids = [r.id for r in results]
        n_new = sum(r.created for r in results)
        new_defs = [d for d, r in zip(defs, results, strict=True) if r.created] if print_nt else []
        self.last_new = n_new
        logger.info("Total Tasks: %d, New Tasks: %d", len(defs), n_new)
        for d in new_defs:
            print(d)
        return ids

    def insert_task_def(self, task_def: Mapping[str, Any], priority: int = 0) -> str:
        """Insert one definition (deduplicated); return its id."""
        return self.create_task([task_def], priority=priority)[0]

    def insert_task(self, task: Mapping[str, Any]) -> str:
        """Insert a Qlib-shaped task dict (``{"def": ..., "priority": ...}``) as waiting."""
        if not isinstance(task, Mapping) or "def" not in task and "filter" not in task:
            raise ConfigError("expected a task dict with a 'def' (or 'filter') definition", "task")
        definition = task.get("def", task.get("filter"))
        priority = task.get("priority", 0)
        return self.create_task([definition], priority=priority)[0]

    def replace_task(self, task: Any, new_task: Mapping[str, Any]) -> None:
        """Replace the definition of ``task`` with ``new_task`` (a definition or a task dict)."""
        task_id = self._task_id(task)
        definition = new_task["def"] if isinstance(new_task, Mapping) and "def" in new_task else new_task
        if not isinstance(definition, Mapping):
            raise ConfigError(f"a task definition is a dict, got {type(definition).__name__}", "new_task")
        stored = self.codec.encode_definition(definition, "new_task")
        if not self._pool_exists() or not self.backend.replace_definition(
            self.task_pool, task_id, stored, self.codec.task_hash(definition)
        ):
            raise PoolError(f"task_pool {self.task_pool!r}: no task with id {task_id!r}")

    # -- claiming ------------------------------------------------------------------------------
    def fetch_tasks(
        self, query: Mapping[str, Any] | Query | None = None, status: str = WAITING, limit: int = 1
    ) -> list[dict[str, Any]]:
        """Claim up to ``limit`` tasks in one transaction (prefetch for tiny tasks).

        Every claimed lease is renewed by the heartbeat until the task is committed or
        returned. A task whose stored payload cannot be decoded (tampered pickle) is failed
        with the reason instead of being handed out.
        """
        if status not in CLAIMABLE:
            raise PoolError(
                f"status: cannot fetch tasks from {status!r}; expected one of {', '.join(sorted(CLAIMABLE))}"
            )
        q = parse_query(query or {})
        if not self._pool_exists():
            return []
        tasks: list[dict[str, Any]] = []
        while not tasks:
            recs = self.backend.claim_tasks(
                self.task_pool,
                worker=self.identity,
                query=q,
                from_status=status,
                lease_seconds=self.lease_seconds,
                limit=limit,
            )
            if not recs:
                break
            for rec in recs:
                try:
                    task = self._to_task(rec)
                except PoolError as e:
                    logger.error("task %s: %s", rec.id, e)
                    self.backend.release_task(
                        self.task_pool, rec.id, rec.lease_token, error=str(e), give_up=True
                    )
                    continue
                self._heartbeat.add(rec.id, rec.lease_token)
                tasks.append(task)
        return tasks

    def fetch_task(self, query: Mapping[str, Any] | None = None, status: str = WAITING) -> dict[str, Any] | None:
        """Claim one task (priority first, then creation order) under a lease, or ``None``."""
        tasks = self.fetch_tasks(query, status, limit=1)
        return tasks[0] if tasks else None

    @contextlib.contextmanager
    def safe_fetch_task(
        self, query: Mapping[str, Any] | None = None, status: str = WAITING
    ) -> Iterator[dict[str, Any] | None]:
        """Fetch a task; if the body raises (or is interrupted) give it back and re-raise."""
        task = self.fetch_task(query=query, status=status)
        try:
            yield task
        except (Exception, KeyboardInterrupt):
            if task is not None and self.holds(task):
                logger.info("Returning task %s before raising error", task["_id"])
                with contextlib.suppress(LeaseLost):
                    self.return_task(task, status=task.get("claimed_from") or status)
            raise

    def task_fetcher_iter(self, query: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield fetched tasks until none is left (each returned if the consumer raises)."""
        while True:
            with self.safe_fetch_task(query=query) as task:
                if task is None:
                    break
                yield task

    def holds(self, task: Mapping[str, Any]) -> bool:
        """Whether this manager still holds the lease of a fetched task."""
        return self._heartbeat.holds(str(task.get("_id")), task.get("lease_token"))

    def _token(self, task: Mapping[str, Any], action: str) -> tuple[str, str]:
        task_id = self._task_id(task)
        token = task.get("lease_token") if isinstance(task, Mapping) else None
        if not token:
            raise LeaseLost(
                f"task {task_id}: cannot {action} a task that is not held under a lease "
                "(fetch it with fetch_task first)"
            )
        return task_id, token

    def commit_task_res(self, task: dict[str, Any], res: Any, status: str = DONE) -> None:
        """Store the result of a fetched task (``done`` or ``part_done``), exactly once.

        Raises :class:`LeaseLost` (and logs it) when the lease is no longer held: the task
        expired and was re-offered, or an administrator reset it.
        """
        check_status(status)
        if status not in COMMITTABLE:
            check_transition(RUNNING, status)
            raise PoolError(f"status: commit_task_res stores {DONE!r} or {PART_DONE!r}, got {status!r}")
        task_id, token = self._token(task, "commit")
        stored = self.codec.encode_result(res, task_id)
        ok = self.backend.complete_task(self.task_pool, task_id, token, status=status, result=stored)
        self._heartbeat.discard(task_id)
        if not ok:
            logger.warning("task %s: result refused, lease %s no longer held", task_id, token)
            raise LeaseLost(f"task {task_id}: lease no longer held (expired or reset); result not committed")
        task.update(status=status, res=res, lease_token=None, lease_owner=None, lease_expires=None)

    def return_task(self, task: dict[str, Any], status: str | None = WAITING) -> None:
        """Give a fetched task back without using up an attempt.

        The task returns to the status it was claimed from; ``status=FAILED`` gives it up,
        and another claimable status is applied after the return.
        """
        task_id, token = self._token(task, "return")
        claimed_from = task.get("claimed_from") or WAITING
        target = status or claimed_from
        check_status(target)
        if target == FAILED:
            ok = self.backend.release_task(
                self.task_pool, task_id, token, error="returned as failed", give_up=True
            )
        elif target in CLAIMABLE:
            ok = self.backend.release_task(self.task_pool, task_id, token)
            if ok and target != claimed_from:
                self.backend.set_status(
                    self.task_pool, parse_query({"_id": task_id, "status": claimed_from}), target
                )
        else:
            raise PoolError(f"status: a task can be returned as {WAITING!r}, {PART_DONE!r} or {FAILED!r}, got {target!r}")
        self._heartbeat.discard(task_id)
        if not ok:
            logger.warning("task %s: return refused, lease %s no longer held", task_id, token)
            raise LeaseLost(f"task {task_id}: lease no longer held (expired or reset); not returned")
        task.update(status=target, lease_token=None, lease_owner=None, lease_expires=None)

    def fail_task(self, task: dict[str, Any], error: str, give_up: bool = False) -> str:
        """Record a failed attempt: retry after a backoff, or ``failed`` after the last one.

        Returns the status the task now has. Raises :class:`LeaseLost` if no longer held.
        """
        task_id, token = self._token(task, "fail")
        attempts = int(task.get("attempts") or 1)
        delay = min(self.retry_backoff * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)
        ok = self.backend.release_task(
            self.task_pool, task_id, token, error=error, retry_delay=delay, give_up=give_up
        )
        self._heartbeat.discard(task_id)
        if not ok:
            logger.warning("task %s: failure not recorded, lease %s no longer held", task_id, token)
            raise LeaseLost(f"task {task_id}: lease no longer held (expired or reset)")
        final = give_up or attempts >= int(task.get("max_attempts") or self.max_attempts)
        status = FAILED if final else (task.get("claimed_from") or WAITING)
        task.update(status=status, last_error=error, lease_token=None, lease_owner=None)
        return status

    def release_held(self) -> int:
        """Hand back every task this manager still holds (shutdown); attempts not counted."""
        n = 0
        for task_id, token in self._heartbeat.held().items():
            self._heartbeat.discard(task_id)
            with contextlib.suppress(Exception):
                n += bool(self.backend.release_task(self.task_pool, task_id, token))
        return n

    def requeue_expired(self) -> int:
        """Put back every task whose lease expired (dead workers); return how many."""
        if not self._pool_exists():
            return 0
        return self.backend.requeue_expired(self.task_pool)

    # -- reading -------------------------------------------------------------------------------
    def query(self, query: Mapping[str, Any] | None = None, decode: bool = True) -> Iterator[dict[str, Any]]:
        """Iterate over the tasks matching ``query`` (creation order)."""
        q = parse_query(query or {})
        if not self._pool_exists():
            return iter(())
        recs = self.backend.find_tasks(self.task_pool, q)
        return (self._to_task(r, decode) for r in recs)

    def re_query(self, task_id: Any) -> dict[str, Any]:
        """The current state of one task."""
        tid = self._task_id(task_id)
        recs = self.backend.get_tasks(self.task_pool, [tid]) if self._pool_exists() else []
        if not recs:
            raise PoolError(f"task_pool {self.task_pool!r}: no task with id {tid!r}")
        return self._to_task(recs[0])

    def task_stat(self, query: Mapping[str, Any] | Query | None = None) -> dict[str, int]:
        """Number of tasks per status (only statuses present), counted by the database."""
        q = parse_query(query or {})
        if not self._pool_exists():
            return {}
        counts = self.backend.count_tasks(self.task_pool, q)
        return {s: int(counts[s]) for s in STATUSES if counts.get(s)}

    # -- administration ------------------------------------------------------------------------
    def remove(self, query: Mapping[str, Any] | None = None, all: bool = False) -> int:  # noqa: A002
        """Delete the matching tasks; an empty query is refused unless ``all=True``."""
        q = parse_query(query or {})
        if q.is_empty and not all:
            raise PoolError(
                f"task_pool {self.task_pool!r}: refusing to remove every task with an empty "
                "query; pass a query, or all=True (--all) to empty the pool"
            )
        if not self._pool_exists():
            return 0
        return self.backend.delete_tasks(self.task_pool, q)

    def reset_status(self, query: Mapping[str, Any] | None, status: str) -> int:
        """Administrative reset of the matching tasks to ``status`` (clears leases)."""
        check_transition(WAITING, check_status(status), admin=True)
        q = parse_query(query or {})
        if not self._pool_exists():
            return 0
        return self.backend.set_status(self.task_pool, q, status)

    def reset_waiting(self, query: Mapping[str, Any] | None = None) -> int:
        """Qlib's reset: put the matching *running* tasks back to waiting."""
        query = dict(query or {})
        query["status"] = RUNNING
        return self.reset_status(query, WAITING)

    def prioritize(self, task: Any, priority: int) -> None:
        """Set the priority of one task (a task dict or an id); higher runs first."""
        task_id = self._task_id(task)
        check_int32(priority, "priority")
        n = self.backend.set_priority(self.task_pool, parse_query({"_id": task_id}), priority) if self._pool_exists() else 0
        if not n:
            raise PoolError(f"task_pool {self.task_pool!r}: no task with id {task_id!r}")
        if isinstance(task, dict):
            task["priority"] = priority

    def wait(
        self,
        query: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        *,
        poll_interval: float = 1.0,
        progress: bool = True,
    ) -> dict[str, int]:
        """Block until no matching task is waiting, running or part_done; return the counts.

        Shows a progress bar (done / running / failed, elapsed and remaining time). Expired
        leases are re-queued while waiting, so tasks of dead workers do not hang the wait.
        Raises :class:`TimeoutError` after ``timeout`` seconds.
        """
        parse_query(query or {})
        poll_interval = check_seconds(poll_interval, "poll_interval", positive=True)
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout")
        start = time.monotonic()
        stat = self.task_stat(query)
        if not any(stat.get(s) for s in UNDONE):
            return stat
        total = sum(stat.values())
        logger.warning("Waiting for %d undone tasks. Please make sure they are running.", sum(stat.get(s, 0) for s in UNDONE))
        display = _WaitDisplay(total, enabled=progress)
        try:
            while True:
                display.update(stat)
                if not any(stat.get(s) for s in UNDONE):
                    return stat
                if timeout is not None and time.monotonic() - start >= timeout:
                    raise TimeoutError(
                        f"task_pool {self.task_pool!r}: {sum(stat.get(s, 0) for s in UNDONE)} tasks "
                        f"still undone after {timeout:g} s"
                    )
                sleep = poll_interval
                if timeout is not None:
                    sleep = max(0.0, min(sleep, timeout - (time.monotonic() - start)))
                time.sleep(sleep)
                self.requeue_expired()
                stat = self.task_stat(query)
        finally:
            display.close()

    def list(self) -> list[str]:  # noqa: A003 - Qlib's name
        """Names of the pools in this store."""
        return self.backend.list_pools()

    def doctor(self) -> dict[str, Any]:
        """Connectivity, permissions and indexes of the store, plus this pool's state."""
        report = dict(self.backend.doctor())
        report["url"] = redact_url(self.url)
        info = self.backend.pool_info(self.task_pool)
        report["pool"] = self.task_pool
        report["pool_exists"] = info is not None
        if info is not None:
            report["codec"] = info.codec
            report["task_stat"] = self.task_stat()
        return report


class _WaitDisplay:
    """The progress bar of ``TaskManager.wait`` (rich; silent when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self._progress = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]tasks"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("done {task.fields[done]} running {task.fields[running]} failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar = self._progress.add_task("tasks", total=total, done=0, running=0, failed=0)
        self._progress.start()

    def update(self, stat: Mapping[str, int]) -> None:
        if self._progress is None:
            return
        finished = stat.get(DONE, 0) + stat.get(FAILED, 0)
        self._progress.update(
            self._bar,
            total=sum(stat.values()),
            completed=finished,
            done=stat.get(DONE, 0),
            running=stat.get(RUNNING, 0),
            failed=stat.get(FAILED, 0),
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# -- running tasks ------------------------------------------------------------------------------


def _call_in_child(task_func: Callable[..., Any], param: Any, kwargs: dict[str, Any]) -> Any:
    """Run one task in a fresh spawned process, so its memory is released afterwards."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(task_func, param, **kwargs).result()


def execute_task(
    tm: TaskManager,
    task: dict[str, Any],
    task_func: Callable[..., Any],
    kwargs: Mapping[str, Any] | None = None,
    *,
    after_status: str = DONE,
    force_release: bool = False,
    guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> str:
    """Run one fetched task and record its outcome; return the task's new status.

    A ``part_done`` task passes its stored result to ``task_func`` (Qlib's two-stage
    training); otherwise the definition. An exception stores the traceback and retries the
    task after a backoff (``failed`` after its last attempt). An interruption
    (``KeyboardInterrupt``, a worker's grace period running out) returns the task without
    using up the attempt and propagates. ``guard`` wraps only the call of ``task_func``.
    """
    kwargs = dict(kwargs or {})
    param = task["res"] if task.get("claimed_from") == PART_DONE else task["def"]
    logger.info("running task %s (attempt %s)", task["_id"], task.get("attempts"))
    started = time.perf_counter()
    try:
        with guard() if guard is not None else contextlib.nullcontext():
            if force_release:
                res = _call_in_child(task_func, param, kwargs)
            else:
                res = task_func(param, **kwargs)
    except Exception:
        tb = traceback.format_exc()
        try:
            status = tm.fail_task(task, tb)
        except LeaseLost:
            return RUNNING
        log = logger.error if status == FAILED else logger.warning
        log("task %s raised (attempt %s, now %s):\n%s", task["_id"], task.get("attempts"), status, tb)
        return status
    except BaseException:
        if tm.holds(task):
            with contextlib.suppress(Exception):
                tm.return_task(task, status=task.get("claimed_from") or WAITING)
        raise
    try:
        tm.commit_task_res(task, res, status=after_status)
    except LeaseLost:
        return RUNNING
    except CanonicalError as e:
        status = tm.fail_task(task, f"{e}\n{traceback.format_exc()}")
        logger.error("task %s: result not storable: %s", task["_id"], e)
        return status
    logger.info("task %s %s in %.2f s", task["_id"], after_status, time.perf_counter() - started)
    return after_status


def _waiting_in_backoff(tm: TaskManager, query: Mapping[str, Any] | None, status: str) -> bool:
    """Whether tasks of ``status`` remain that are only unclaimable because of a retry backoff."""
    return tm.task_stat({**dict(query or {}), "status": status}).get(status, 0) > 0


def run_task(
    task_func: Callable[..., Any],
    task_pool: str | TaskManager,
    query: Mapping[str, Any] | None = None,
    force_release: bool = False,
    before_status: str = WAITING,
    after_status: str = DONE,
    **kwargs: Any,
) -> bool:
    """Run tasks of ``task_pool`` until none is left; return whether any task ran (Qlib).

    ``task_func(task["def"], **kwargs)`` for waiting tasks, ``task_func(task["res"],
    **kwargs)`` for part_done ones; its return value is committed with ``after_status``.
    ``force_release`` runs every task in a fresh child process. A task that raises is retried
    after a backoff up to its attempt limit, then failed with its traceback; the loop goes
    on. ``task_pool`` may be a pool name (default store) or a :class:`TaskManager`.
    """
    if before_status not in CLAIMABLE:
        raise PoolError(
            f"before_status: the fetched task must be {WAITING!r} or {PART_DONE!r}, got {before_status!r}"
        )
    if after_status not in COMMITTABLE:
        raise PoolError(f"after_status: expected {DONE!r} or {PART_DONE!r}, got {after_status!r}")
    parse_query(query or {})
    own = not isinstance(task_pool, TaskManager)
    tm = TaskManager(task_pool) if own else task_pool
    ever_run = False
    try:
        tm.requeue_expired()
        while True:
            task = tm.fetch_task(query=query, status=before_status)
            if task is None:
                if _waiting_in_backoff(tm, query, before_status):
                    time.sleep(min(0.5, max(tm.retry_backoff, 0.01)))
                    tm.requeue_expired()
                    continue
                break
            execute_task(tm, task, task_func, kwargs, after_status=after_status, force_release=force_release)
            ever_run = True
    finally:
        if own:
            tm.close()
    return ever_run


__all__ = [
    "TaskManager",
    "Heartbeat",
    "run_task",
    "execute_task",
    "worker_identity",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_HEARTBEAT_INTERVAL",
]
