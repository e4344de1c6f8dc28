"""In-process task store (``memory://``) for unit tests of the TaskManager and the workers.

It implements every operation of :class:`~alphamill.task.backends.base.Backend` with the
same semantics as the database backends (it passes the same conformance suite), guarded by
one lock so threads can share it. ``memory://`` gives a private store; ``memory://NAME``
gives a store shared by every backend opened with that name in this process.
Values are copied through JSON on the way in and out, exactly as a database would store them.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from alphamill.errors import PoolError
from alphamill.task.backends.base import (
    Backend,
    InsertResult,
    NewTask,
    PoolInfo,
    TaskRecord,
    WorkerIdentity,
    validate_pool_name,
)
from alphamill.task.backends.sqlbase import (
    LEASE_EXPIRED_ERROR,
    check_admin_status,
    check_claim_args,
    check_codec,
    check_commit_status,
    check_lease_seconds,
    check_new_task,
    check_priority,
    check_retry_delay,
    normalize_ids,
    stored_error,
    to_json,
)
from alphamill.task.query import Query, parse_query
from alphamill.task.status import CLAIMABLE, FAILED, RUNNING, WAITING


class _Store:
    """The data of one memory store: pools, records and an id counter, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pools: dict[str, PoolInfo] = {}
        self.tasks: dict[str, dict[str, TaskRecord]] = {}  # pool -> id -> record (insertion order)
        self.by_hash: dict[str, dict[str, str]] = {}  # pool -> hash -> id
        self.next_id = 1


_SHARED: dict[str, _Store] = {}
_SHARED_LOCK = threading.Lock()


def _copy_json(value: Any, where: str) -> Any:
    return json.loads(to_json(value, where))


class MemoryBackend(Backend):
    """A thread-safe in-memory task store; clock: ``time.time()``."""

    schemes = ("memory",)

    def __init__(self, url: str = "memory://", **_: Any):
        name = urlsplit(url).netloc or urlsplit(url).path.strip("/")
        if name:
            with _SHARED_LOCK:
                self._store = _SHARED.setdefault(name, _Store())
        else:
            self._store = _Store()
        self.url = url

    def __repr__(self) -> str:
        return f"MemoryBackend({self.url!r})"

    # -- helpers ---------------------------------------------------------------------------------
    def _pool_tasks(self, pool: str) -> dict[str, TaskRecord]:
        validate_pool_name(pool)
        return self._store.tasks.get(pool, {})

    def _matching(self, pool: str, query: Any) -> list[TaskRecord]:
        q: Query = parse_query(query)
        return [r for r in self._pool_tasks(pool).values() if q.matches(r)]

    @staticmethod
    def _out(rec: TaskRecord, with_definition: bool = True) -> TaskRecord:
        out = copy.copy(rec)
        out.definition = copy.deepcopy(rec.definition) if with_definition else None
        out.result = copy.deepcopy(rec.result)
        out.metadata = copy.deepcopy(rec.metadata)
        return out

    def _running(self, pool: str, task_id: str, token: str) -> TaskRecord | None:
        rec = self._pool_tasks(pool).get(str(task_id))
        if rec is None or rec.status != RUNNING or token is None or rec.lease_token != token:
            return None
        return rec

    @staticmethod
    def _clear_lease(rec: TaskRecord) -> None:
        rec.lease_owner = None
        rec.lease_token = None
        rec.lease_expires = None
        rec.heartbeat_at = None

    # -- pools ---------------------------------------------------------------------------------
    def ensure_pool(self, pool: str, *, codec: str = "json") -> PoolInfo:
        validate_pool_name(pool)
        check_codec(codec)
        with self._store.lock:
            info = self._store.pools.get(pool)
            if info is None:
                info = PoolInfo(pool, codec, self.now())
                self._store.pools[pool] = info
                self._store.tasks.setdefault(pool, {})
                self._store.by_hash.setdefault(pool, {})
            return info

    def pool_info(self, pool: str) -> PoolInfo | None:
        validate_pool_name(pool)
        with self._store.lock:
            return self._store.pools.get(pool)

    def list_pools(self) -> list[str]:
        with self._store.lock:
            return sorted(self._store.pools)

    def drop_pool(self, pool: str) -> None:
        validate_pool_name(pool)
        with self._store.lock:
            self._store.pools.pop(pool, None)
            self._store.tasks.pop(pool, None)
            self._store.by_hash.pop(pool, None)

    # -- inserting -------------------------------------------------------------------------------
    def insert_tasks(self, pool: str, tasks: Sequence[NewTask]) -> list[InsertResult]:
        validate_pool_name(pool)
        # validate and encode everything first so a bad task stores nothing of the batch
        prepared = []
        for i, t in enumerate(tasks):
            check_new_task(t, i)
            prepared.append(
                (t, _copy_json(t.definition, f"tasks[{i}].definition"),
                 _copy_json(t.metadata, f"tasks[{i}].metadata"))
            )
        with self._store.lock:
            self.ensure_pool(pool)
            recs = self._store.tasks[pool]
            by_hash = self._store.by_hash[pool]
            now = self.now()
            out: list[InsertResult] = []
            for t, definition, metadata in prepared:
                existing = by_hash.get(t.hash)
                if existing is not None:
                    out.append(InsertResult(existing, False))
                    continue
                tid = str(self._store.next_id)
                self._store.next_id += 1
                recs[tid] = TaskRecord(
                    id=tid, pool=pool, definition=definition, hash=t.hash, status=WAITING,
                    priority=t.priority, max_attempts=t.max_attempts, created_at=now,
                    metadata=metadata,
                )
                by_hash[t.hash] = tid
                out.append(InsertResult(tid, True))
            return out

    def replace_definition(self, pool: str, task_id: str, definition: Any, hash: str) -> bool:
        if not isinstance(hash, str) or not hash:
            raise PoolError(f"hash: expected a non-empty string, got {hash!r}")
        definition = _copy_json(definition, "definition")
        with self._store.lock:
            rec = self._pool_tasks(pool).get(str(task_id))
            if rec is None:
                return False
            by_hash = self._store.by_hash[pool]
            other = by_hash.get(hash)
            if other is not None and other != rec.id:
                raise PoolError(
                    f"task_pool {pool}: cannot replace task {rec.id}: task {other} already has "
                    f"hash {hash!r}"
                )
            by_hash.pop(rec.hash, None)
            rec.definition, rec.hash = definition, hash
            by_hash[hash] = rec.id
            return True

    # -- the worker's operations -----------------------------------------------------------------
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
        check_claim_args(pool, from_status, lease_seconds, limit)
        q = parse_query(query)
        with self._store.lock:
            now = self.now()
            cands = [
                r for r in self._pool_tasks(pool).values()
                if r.status == from_status
                and (r.not_before is None or r.not_before <= now)
                and q.matches(r)
            ]
            # dicts keep insertion order, so a stable sort on priority keeps creation order
            cands.sort(key=lambda r: -r.priority)
            out = []
            for rec in cands[:limit]:
                rec.status = RUNNING
                rec.claimed_from = from_status
                rec.attempts += 1
                rec.lease_token = uuid.uuid4().hex
                rec.lease_owner = worker.owner
                rec.lease_expires = now + lease_seconds
                rec.heartbeat_at = now
                rec.started_at = now
                rec.not_before = None
                rec.worker_host = worker.host
                rec.worker_pid = worker.pid
                out.append(self._out(rec))
            return out

    def heartbeat(self, pool: str, task_id: str, token: str, lease_seconds: float) -> bool:
        check_lease_seconds(lease_seconds)
        with self._store.lock:
            rec = self._running(pool, task_id, token)
            if rec is None:
                return False
            now = self.now()
            rec.heartbeat_at = now
            rec.lease_expires = now + lease_seconds
            return True

    def complete_task(self, pool: str, task_id: str, token: str, *, status: str, result: Any) -> bool:
        check_commit_status(status)
        result = _copy_json(result, "result")
        with self._store.lock:
            rec = self._running(pool, task_id, token)
            if rec is None:
                return False
            rec.status = status
            rec.result = result
            rec.finished_at = self.now()
            rec.claimed_from = None
            rec.not_before = None
            self._clear_lease(rec)
            return True

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
        retry_delay = check_retry_delay(retry_delay)
        with self._store.lock:
            rec = self._running(pool, task_id, token)
            if rec is None:
                return False
            now = self.now()
            if error is not None:
                rec.last_error = stored_error(error)
            if error is None and not give_up:
                rec.attempts = max(rec.attempts - 1, 0)
            if give_up or (error is not None and rec.attempts >= rec.max_attempts):
                rec.status = FAILED
                rec.finished_at = now
                rec.not_before = None
            else:
                rec.status = rec.claimed_from if rec.claimed_from in CLAIMABLE else WAITING
                rec.not_before = now + retry_delay if retry_delay > 0 else None
            rec.claimed_from = None
            self._clear_lease(rec)
            return True

    def requeue_expired(self, pool: str) -> int:
        with self._store.lock:
            now = self.now()
            n = 0
            for rec in self._pool_tasks(pool).values():
                if rec.status != RUNNING or rec.lease_expires is None or rec.lease_expires >= now:
                    continue
                if rec.attempts >= rec.max_attempts:
                    rec.status = FAILED
                    rec.finished_at = now
                    rec.last_error = (
                        f"{LEASE_EXPIRED_ERROR} ({rec.attempts} of {rec.max_attempts}; "
                        f"last owner {rec.lease_owner})"
                    )
                else:
                    rec.status = rec.claimed_from if rec.claimed_from in CLAIMABLE else WAITING
                rec.claimed_from = None
                rec.not_before = None
                self._clear_lease(rec)
                n += 1
            return n

    # -- reading -------------------------------------------------------------------------------
    def get_tasks(self, pool: str, ids: Sequence[str]) -> list[TaskRecord]:
        ids = normalize_ids(ids)
        with self._store.lock:
            recs = self._pool_tasks(pool)
            return [self._out(recs[i]) for i in ids if i in recs]

    def find_tasks(
        self, pool: str, query: Any, *, limit: int | None = None, with_definition: bool = True
    ) -> list[TaskRecord]:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise PoolError(f"limit: expected a non-negative integer or None, got {limit!r}")
        with self._store.lock:
            found = self._matching(pool, query)
            if limit is not None:
                found = found[:limit]
            return [self._out(r, with_definition) for r in found]

    def count_tasks(self, pool: str, query: Any) -> dict[str, int]:
        with self._store.lock:
            counts: dict[str, int] = {}
            for r in self._matching(pool, query):
                counts[r.status] = counts.get(r.status, 0) + 1
            return counts

    # -- administration --------------------------------------------------------------------------
    def delete_tasks(self, pool: str, query: Any) -> int:
        with self._store.lock:
            found = self._matching(pool, query)
            recs = self._store.tasks.get(pool, {})
            by_hash = self._store.by_hash.get(pool, {})
            for r in found:
                del recs[r.id]
                by_hash.pop(r.hash, None)
            return len(found)

    def set_status(self, pool: str, query: Any, to_status: str) -> int:
        check_admin_status(to_status)
        with self._store.lock:
            found = self._matching(pool, query)
            now = self.now()
            for r in found:
                r.status = to_status
                r.claimed_from = None
                r.not_before = None
                self._clear_lease(r)
                if to_status in CLAIMABLE:
                    r.attempts = 0
                    r.finished_at = None
                elif r.finished_at is None:
                    r.finished_at = now
            return len(found)

    def set_priority(self, pool: str, query: Any, priority: int) -> int:
        check_priority(priority)
        with self._store.lock:
            found = self._matching(pool, query)
            for r in found:
                r.priority = priority
            return len(found)

    # -- the store -------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time()

    def doctor(self) -> dict[str, Any]:
        with self._store.lock:
            return {
                "backend": "memory",
                "url": self.url,
                "ok": True,
                "writable": True,
                "pools": sorted(self._store.pools),
                "tasks": sum(len(t) for t in self._store.tasks.values()),
            }

    def close(self) -> None:
        """Nothing to release; a shared store lives as long as the process."""


__all__ = ["MemoryBackend"]
