"""The storage interface of the task pool: one method per named operation.

The worker loop, :class:`~alphamill.task.manage.TaskManager` and the CLI talk to storage
only through these operations, so SQLite, PostgreSQL, MongoDB and the in-memory backend are
interchangeable and one conformance suite (``tests/pool/test_conformance.py``) checks them all.

Conventions every backend follows:

* Values crossing the interface are plain data: ``definition``, ``result`` and ``metadata``
  are JSON-compatible (dict/list/str/int/float/bool/None). Encoding (JSON by default, signed
  pickle only on explicit opt-in) happens above this layer, in the codec.
* Task ids are strings (``"17"`` for SQL backends, an ObjectId hex for MongoDB).
* Times are UTC epoch seconds (float) taken **from the database's clock**
  (:meth:`Backend.now`); workers never compare their own clocks with the store's.
* Every operation that changes a running task is a compare-and-set on the lease token:
  when the token no longer matches (the lease expired and the task was re-offered, or an
  admin reset it), the operation changes nothing and returns ``False``.
* Pool names are validated with :func:`validate_pool_name` before any statement uses them.
* Every statement is parameterised; no user value is ever formatted into SQL.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from alphamill.errors import PoolError

#: Matched whole (``fullmatch``): ``$`` would also accept a name ending in a newline.
POOL_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")


def validate_pool_name(pool: str) -> str:
    """Return ``pool`` if it is a safe namespace name, else raise :class:`PoolError`."""
    if not isinstance(pool, str) or not POOL_NAME_RE.fullmatch(pool):
        raise PoolError(
            f"task_pool: invalid pool name {pool!r}; expected a letter followed by up to 62 "
            "letters, digits or underscores"
        )
    return pool


@dataclass(frozen=True)
class WorkerIdentity:
    """Who holds a lease: a readable owner string plus host and pid for `list` and `doctor`."""

    owner: str
    host: str
    pid: int


@dataclass(frozen=True)
class NewTask:
    """A task to insert. ``hash`` is the content hash of the canonical definition."""

    definition: Any
    hash: str
    priority: int = 0
    max_attempts: int = 3
    metadata: dict[str, Any] = field(default_factory=dict)
    #: The definition as compact JSON text, when the caller already encoded it (the codec
    #: does, to hash it): SQL backends store it as is instead of encoding it again.
    definition_json: str | None = None


@dataclass(frozen=True)
class InsertResult:
    id: str
    created: bool  # False when a task with the same hash already existed in the pool


@dataclass(frozen=True)
class PoolInfo:
    name: str
    codec: str  # "json" (default) or "pickle" (explicit opt-in, signed)
    created_at: float


@dataclass
class TaskRecord:
    """Everything the pool knows about one task."""

    id: str
    pool: str
    definition: Any
    hash: str
    status: str
    priority: int = 0
    result: Any = None
    attempts: int = 0
    max_attempts: int = 3
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_expires: float | None = None
    heartbeat_at: float | None = None
    claimed_from: str | None = None  # status the running task was claimed from
    not_before: float | None = None  # retry backoff: not claimable before this time
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None  # message and traceback of the last failure
    worker_host: str | None = None
    worker_pid: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """One task store (a database) holding any number of named pools."""

    #: URL schemes this backend serves, e.g. ("sqlite",).
    schemes: tuple[str, ...] = ()

    # -- pools -------------------------------------------------------------------------
    @abstractmethod
    def ensure_pool(self, pool: str, *, codec: str = "json") -> PoolInfo:
        """Create the pool (and the schema/indexes it needs) if missing; return its info.

        ``codec`` is only used when the pool is created; an existing pool keeps its codec.
        """

    @abstractmethod
    def pool_info(self, pool: str) -> PoolInfo | None:
        """Info of an existing pool, or ``None``."""

    @abstractmethod
    def list_pools(self) -> list[str]:
        """Names of the pools in this store, sorted."""

    @abstractmethod
    def drop_pool(self, pool: str) -> None:
        """Delete a pool and all its tasks (used by tests and `remove --all --drop`)."""

    # -- inserting -----------------------------------------------------------------------
    @abstractmethod
    def insert_tasks(self, pool: str, tasks: Sequence[NewTask]) -> list[InsertResult]:
        """Insert tasks, deduplicated on ``hash`` within the pool, atomically.

        Returns one result per input, in order. A hash already in the pool (or repeated in
        the batch) yields the existing id with ``created=False``. Race-free: concurrent
        inserts of the same hashes from many processes leave exactly one task per hash.
        The whole batch is one transaction: on error nothing of it is stored.
        """

    @abstractmethod
    def replace_definition(self, pool: str, task_id: str, definition: Any, hash: str) -> bool:
        """Replace a task's definition and hash (``TaskManager.replace_task``)."""

    # -- the worker's operations -----------------------------------------------------------
    @abstractmethod
    def claim_tasks(
        self,
        pool: str,
        *,
        worker: WorkerIdentity,
        query: Any,
        from_status: str,
        lease_seconds: float,
        limit: int = 1,
    ) -> list[TaskRecord]:
        """Atomically claim up to ``limit`` tasks; never hand one task to two callers.

        Candidates: ``status == from_status``, ``not_before`` unset or ``<= now``, matching
        ``query`` (a :class:`alphamill.task.query.Query`). Order: priority descending, then
        creation order. Each claimed task gets: status ``running``, ``claimed_from =
        from_status``, ``attempts += 1``, a new unique ``lease_token``, ``lease_owner``,
        ``lease_expires = now + lease_seconds``, ``heartbeat_at = now``, ``started_at = now``,
        ``worker_host``/``worker_pid``. Returns the claimed records (after the update).
        """

    @abstractmethod
    def heartbeat(self, pool: str, task_id: str, token: str, lease_seconds: float) -> bool:
        """Extend the lease to ``now + lease_seconds`` if ``token`` still holds it."""

    @abstractmethod
    def complete_task(self, pool: str, task_id: str, token: str, *, status: str, result: Any) -> bool:
        """Commit a result (status ``done`` or ``part_done``) if ``token`` still holds the lease.

        Clears the lease, sets ``finished_at = now`` and stores ``result``. Returns ``False``
        (and changes nothing) for a stale token: exactly-once commit.
        """

    @abstractmethod
    def release_task(
        self,
        pool: str,
        task_id: str,
        token: str,
        *,
        error: str | None = None,
        retry_delay: float = 0.0,
        give_up: bool = False,
    ) -> bool:
        """Hand a running task back if ``token`` still holds the lease.

        Without ``give_up`` and with ``attempts < max_attempts`` the task returns to
        ``claimed_from`` and is not claimable before ``now + retry_delay``; otherwise it
        becomes ``failed``. ``error`` (message and traceback) is stored in ``last_error``.
        A plain return without error (worker shutting down) should pass ``error=None``;
        the backend then also gives the attempt back (``attempts -= 1``).
        """

    @abstractmethod
    def requeue_expired(self, pool: str) -> int:
        """Put every running task whose lease expired back to ``claimed_from``.

        A task that has used ``max_attempts`` becomes ``failed`` with ``last_error``
        saying that its lease expired (worker lost). Returns how many tasks changed.
        """

    # -- reading -----------------------------------------------------------------------------
    @abstractmethod
    def get_tasks(self, pool: str, ids: Sequence[str]) -> list[TaskRecord]:
        """The records of these ids (unknown ids are skipped), in the order given."""

    @abstractmethod
    def find_tasks(
        self, pool: str, query: Any, *, limit: int | None = None, with_definition: bool = True
    ) -> list[TaskRecord]:
        """Records matching ``query``, in creation order."""

    @abstractmethod
    def count_tasks(self, pool: str, query: Any) -> dict[str, int]:
        """Number of tasks per status for ``query``, counted by the database."""

    # -- administration ------------------------------------------------------------------------
    @abstractmethod
    def delete_tasks(self, pool: str, query: Any) -> int:
        """Delete matching tasks; return how many."""

    @abstractmethod
    def set_status(self, pool: str, query: Any, to_status: str) -> int:
        """Administrative reset of matching tasks to ``to_status``; clears leases and backoff."""

    @abstractmethod
    def set_priority(self, pool: str, query: Any, priority: int) -> int:
        """Set the priority of matching tasks; return how many."""

    # -- the store -------------------------------------------------------------------------------
    @abstractmethod
    def now(self) -> float:
        """The database's clock, as UTC epoch seconds."""

    @abstractmethod
    def doctor(self) -> dict[str, Any]:
        """Connectivity, permissions, server version and indexes, for ``alphamill doctor``."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
