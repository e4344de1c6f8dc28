"""The embedded default task store: one SQLite file, safe for many processes on one machine.

Design, in short:

* WAL journal, ``synchronous=NORMAL``: readers never block the writer and a commit costs no
  fsync, so claims run at thousands per second.
* One ``tasks`` table for every pool (a ``pool`` column, ``UNIQUE(pool, hash)``) plus a
  ``pools`` table; JSON columns are TEXT queried with ``json_extract``/``json_type``.
* Every write is one ``BEGIN IMMEDIATE`` transaction, claims are ``UPDATE ... RETURNING``,
  so two processes can never claim the same task.
* Times come from SQLite's clock (``julianday('now')``), never from Python's.
* ``database is locked`` never reaches the user: busy statements are retried with a bounded
  backoff and only after ``busy_limit`` seconds raise :class:`PoolUnavailable`.
* One connection per process (re-opened after ``fork``), shared by threads under a lock.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from alphamill.config import redact_url
from alphamill.errors import PoolError, PoolUnavailable
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
    SQLiteQueryCompiler,
    check_admin_status,
    check_claim_args,
    check_codec,
    check_commit_status,
    check_lease_seconds,
    check_new_task,
    check_priority,
    check_retry_delay,
    from_json,
    normalize_ids,
    stored_error,
    to_json,
)
from alphamill.task.query import parse_query
from alphamill.task.status import CLAIMABLE, FAILED, RUNNING, WAITING

T = TypeVar("T")

#: The database clock as UTC epoch seconds (``unixepoch('subsec')`` needs SQLite 3.42).
NOW = "((julianday('now') - 2440587.5) * 86400.0)"

#: Rows per ``IN (...)`` list; well under SQLite's bound-parameter limit.
CHUNK = 500

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS pools (
        name TEXT PRIMARY KEY,
        codec TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pool TEXT NOT NULL,
        hash TEXT NOT NULL,
        definition TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        lease_owner TEXT,
        lease_token TEXT,
        lease_expires REAL,
        heartbeat_at REAL,
        claimed_from TEXT,
        not_before REAL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        last_error TEXT,
        worker_host TEXT,
        worker_pid INTEGER,
        metadata TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS tasks_pool_hash ON tasks (pool, hash)",
    "CREATE INDEX IF NOT EXISTS tasks_claim ON tasks (pool, status, priority DESC, id)",
]
EXPECTED_INDEXES = ("tasks_pool_hash", "tasks_claim")

COLUMNS = (
    "id", "pool", "definition", "hash", "status", "priority", "result", "attempts",
    "max_attempts", "lease_owner", "lease_token", "lease_expires", "heartbeat_at",
    "claimed_from", "not_before", "created_at", "started_at", "finished_at", "last_error",
    "worker_host", "worker_pid", "metadata",
)
SELECT_COLS = ", ".join(COLUMNS)
SELECT_COLS_NO_DEF = SELECT_COLS.replace("definition", "NULL AS definition")

_CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, lease_expires = NULL, heartbeat_at = NULL"


def _row_to_record(row: Sequence[Any]) -> TaskRecord:
    d = dict(zip(COLUMNS, row, strict=True))
    d["id"] = str(d["id"])
    d["definition"] = from_json(d["definition"])
    d["result"] = from_json(d["result"])
    d["metadata"] = from_json(d["metadata"]) or {}
    return TaskRecord(**d)


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


#: Upper bound of ``busy_limit``/``busy_timeout`` in a URL (a day): beyond it a typo, not a wish.
MAX_BUSY_SECONDS = 86400.0


def _seconds(url: str, name: str, value: Any) -> float:
    """``?busy_limit=`` / ``?busy_timeout=``: finite seconds in ``[0, MAX_BUSY_SECONDS]``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if not (0 <= x <= MAX_BUSY_SECONDS):  # also false for NaN
        raise PoolError(
            f"pool URL {redact_url(url)!r}: {name} must be a number of seconds between 0 and "
            f"{MAX_BUSY_SECONDS:g}, got {value!r}"
        )
    return x


def check_sqlite_url(url: str, busy_limit: float = 120.0, busy_timeout: float = 2.0) -> tuple[float, float]:
    """``(busy_limit, busy_timeout)`` of a valid SQLite pool URL (nothing is opened)."""
    _, params = parse_sqlite_url(url)
    return (
        _seconds(url, "busy_limit", params.get("busy_limit", busy_limit)),
        _seconds(url, "busy_timeout", params.get("busy_timeout", busy_timeout)),
    )


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///rel/path.db`` -> ``rel/path.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        raise PoolError(
            f"pool URL {redact_url(url)!r}: expected sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
    path = unquote(parts.path)
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise PoolError(f"pool URL {redact_url(url)!r}: no database file given; expected sqlite:///path.db")
    return path, dict(parse_qsl(parts.query))


class SQLiteBackend(Backend):
    """Task store in one SQLite file (WAL); see the module docstring for the guarantees."""

    schemes = ("sqlite",)

    def __init__(self, url: str, *, busy_limit: float = 120.0, busy_timeout: float = 2.0, **_: Any):
        path, params = parse_sqlite_url(url)
        self.url = url
        self.memory = path == ":memory:"
        self.path = path if self.memory else os.path.abspath(os.path.expanduser(path))
        self.busy_limit, self.busy_timeout = check_sqlite_url(url, busy_limit, busy_timeout)
        if not self.memory:
            parent = os.path.dirname(self.path)
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise PoolUnavailable(f"sqlite pool {self.path!r}: cannot create folder {parent!r}: {exc}") from exc
        self._lock = threading.RLock()
        self._lock_pid = os.getpid()
        self._conn_obj: sqlite3.Connection | None = None
        self._pid = -1
        self._abandoned: list[sqlite3.Connection] = []
        self._compiler = SQLiteQueryCompiler()
        # a read first, so an existing pool opens even where the file is read-only (doctor)
        have = self._run(
            lambda c: {r[0] for r in c.execute("SELECT name FROM sqlite_master")}, write=False, single=True
        )
        if not {"pools", "tasks", *EXPECTED_INDEXES} <= have:
            self._run(self._create_schema, write=True)

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r})"

    # -- connection and retries -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise PoolUnavailable(f"sqlite pool {self.path!r}: cannot open database: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not self.memory:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise PoolUnavailable(f"sqlite pool {self.path!r}: cannot switch to WAL (journal mode {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise  # retried by _run like any busy statement
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise PoolError(
                    f"sqlite pool {self.path!r}: the file is not an SQLite database (or is corrupt): {exc}"
                ) from None
            raise PoolUnavailable(f"sqlite pool {self.path!r}: cannot open database: {exc}") from None
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        """This process's connection; a child after ``fork`` opens its own."""
        pid = os.getpid()
        if self._conn_obj is None or self._pid != pid:
            if self._conn_obj is not None:
                # never close a connection inherited from the parent: it could release the
                # parent's locks; keep it referenced so it is not finalised either
                self._abandoned.append(self._conn_obj)
            self._conn_obj = self._connect()
            self._pid = pid
        return self._conn_obj

    def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool, single: bool = False) -> T:
        """Run ``fn`` in one transaction (``BEGIN IMMEDIATE`` for writes), retrying when busy.

        ``single``: ``fn`` runs one statement, which SQLite already makes atomic (a writing
        statement takes the write lock when it starts), so no explicit transaction is opened;
        this halves the round trips of claims and commits.
        """
        deadline = time.monotonic() + self.busy_limit
        delay = 0.005
        if self._lock_pid != os.getpid():  # a lock copied by fork may be held by a dead thread
            self._lock = threading.RLock()
            self._lock_pid = os.getpid()
        with self._lock:
            while True:
                try:
                    conn = self._conn  # opening it may meet a busy lock too (journal mode)
                    if single:
                        return fn(conn)
                    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    try:
                        out = fn(conn)
                        conn.execute("COMMIT")
                        return out
                    except BaseException:
                        if conn.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        raise
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise PoolUnavailable(f"sqlite pool {self.path!r}: {exc}") from exc
                    if time.monotonic() >= deadline:
                        raise PoolUnavailable(
                            f"sqlite pool {self.path!r}: database stayed busy (locked by other "
                            f"processes) for {self.busy_limit:.0f} s; check for a stuck process "
                            "holding a write transaction"
                        ) from exc
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.25)
                except sqlite3.Error as exc:
                    raise PoolUnavailable(f"sqlite pool {self.path!r}: {exc}") from exc

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        for stmt in SCHEMA:
            conn.execute(stmt)

    def _where(self, pool: str, query: Any) -> tuple[str, list[Any]]:
        validate_pool_name(pool)
        sql, params = self._compiler.compile(parse_query(query))
        return f"pool = ? AND ({sql})", [pool, *params]

    # -- pools -----------------------------------------------------------------------------------
    def ensure_pool(self, pool: str, *, codec: str = "json") -> PoolInfo:
        validate_pool_name(pool)
        check_codec(codec)

        def op(conn: sqlite3.Connection) -> PoolInfo:
            conn.execute(
                f"INSERT INTO pools (name, codec, created_at) VALUES (?, ?, {NOW}) "
                "ON CONFLICT(name) DO NOTHING",
                (pool, codec),
            )
            row = conn.execute("SELECT name, codec, created_at FROM pools WHERE name = ?", (pool,)).fetchone()
            return PoolInfo(*row)

        return self._run(op, write=True)

    def pool_info(self, pool: str) -> PoolInfo | None:
        validate_pool_name(pool)

        def op(conn: sqlite3.Connection) -> PoolInfo | None:
            row = conn.execute("SELECT name, codec, created_at FROM pools WHERE name = ?", (pool,)).fetchone()
            return PoolInfo(*row) if row else None

        return self._run(op, write=False)

    def list_pools(self) -> list[str]:
        return self._run(
            lambda c: [r[0] for r in c.execute("SELECT name FROM pools ORDER BY name")], write=False
        )

    def drop_pool(self, pool: str) -> None:
        validate_pool_name(pool)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM tasks WHERE pool = ?", (pool,))
            conn.execute("DELETE FROM pools WHERE name = ?", (pool,))

        self._run(op, write=True)

    # -- inserting -------------------------------------------------------------------------------
    @staticmethod
    def _ids_by_hash(conn: sqlite3.Connection, pool: str, hashes: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(hashes), CHUNK):
            chunk = hashes[i : i + CHUNK]
            marks = ",".join("?" * len(chunk))
            for h, tid in conn.execute(
                f"SELECT hash, id FROM tasks WHERE pool = ? AND hash IN ({marks})", (pool, *chunk)
            ):
                found[h] = str(tid)
        return found

    def insert_tasks(self, pool: str, tasks: Sequence[NewTask]) -> list[InsertResult]:
        validate_pool_name(pool)
        by_hash: dict[str, tuple[int, NewTask]] = {}
        hashes: list[str] = []
        for i, t in enumerate(tasks):
            check_new_task(t, i)
            hashes.append(t.hash)
            by_hash.setdefault(t.hash, (i, t))
        if not hashes:
            return []
        unique = list(by_hash)
        # hashes already stored need no encoding; finding them needs no write lock
        known = self._run(lambda c: self._ids_by_hash(c, pool, unique), write=False)
        rows = {}
        for h in unique:
            if h not in known:
                i, t = by_hash[h]
                rows[h] = (
                    pool, h, t.definition_json or to_json(t.definition, f"tasks[{i}].definition"), WAITING,
                    t.priority, t.max_attempts, to_json(t.metadata, f"tasks[{i}].metadata"),
                )

        def op(conn: sqlite3.Connection) -> list[InsertResult]:
            conn.execute(
                f"INSERT INTO pools (name, codec, created_at) VALUES (?, 'json', {NOW}) "
                "ON CONFLICT(name) DO NOTHING",
                (pool,),
            )
            existing = dict(known)
            # another process may have inserted some of them since the read above
            existing.update(self._ids_by_hash(conn, pool, list(rows)))
            new = [h for h in rows if h not in existing]
            if new:
                now = conn.execute(f"SELECT {NOW}").fetchone()[0]
                conn.executemany(
                    "INSERT INTO tasks (pool, hash, definition, status, priority, max_attempts, "
                    "metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(pool, hash) DO NOTHING",
                    (rows[h] + (now,) for h in new),
                )
            created = self._ids_by_hash(conn, pool, new)
            seen: set[str] = set()
            out = []
            for h in hashes:
                if h in existing:
                    out.append(InsertResult(existing[h], False))
                else:
                    out.append(InsertResult(created[h], h not in seen))
                    seen.add(h)
            return out

        return self._run(op, write=True)

    def replace_definition(self, pool: str, task_id: str, definition: Any, hash: str) -> bool:
        validate_pool_name(pool)
        if not isinstance(hash, str) or not hash:
            raise PoolError(f"hash: expected a non-empty string, got {hash!r}")
        text = to_json(definition, "definition")
        (tid,) = normalize_ids([task_id])
        if not tid.isdigit():
            return False

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT id FROM tasks WHERE pool = ? AND hash = ?", (pool, hash)).fetchone()
            if row is not None and str(row[0]) != tid:
                raise PoolError(
                    f"task_pool {pool}: cannot replace task {tid}: task {row[0]} already has hash {hash!r}"
                )
            cur = conn.execute(
                "UPDATE tasks SET definition = ?, hash = ? WHERE pool = ? AND id = ?",
                (text, hash, pool, int(tid)),
            )
            return cur.rowcount == 1

        return self._run(op, write=True)

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
        where, params = self._where(pool, query)
        sql = (
            f"UPDATE tasks SET status = '{RUNNING}', claimed_from = status, attempts = attempts + 1, "
            "lease_token = lower(hex(randomblob(16))), lease_owner = ?, "
            f"lease_expires = {NOW} + ?, heartbeat_at = {NOW}, started_at = {NOW}, "
            "not_before = NULL, worker_host = ?, worker_pid = ? "
            "WHERE id IN (SELECT id FROM tasks WHERE "
            f"{where} AND status = ? AND (not_before IS NULL OR not_before <= {NOW}) "
            "ORDER BY priority DESC, id LIMIT ?) "
            f"RETURNING {SELECT_COLS}"
        )
        args = (worker.owner, float(lease_seconds), worker.host, int(worker.pid), *params,
                from_status, limit)
        rows = self._run(lambda c: c.execute(sql, args).fetchall(), write=True, single=True)
        recs = [_row_to_record(r) for r in rows]
        recs.sort(key=lambda r: (-r.priority, int(r.id)))
        return recs

    def _cas(self, sql: str, args: Sequence[Any]) -> bool:
        return self._run(lambda c: c.execute(sql, args).rowcount == 1, write=True, single=True)

    @staticmethod
    def _tid(task_id: Any) -> int | None:
        (tid,) = normalize_ids([task_id])
        return int(tid) if tid.isdigit() else None

    def heartbeat(self, pool: str, task_id: str, token: str, lease_seconds: float) -> bool:
        validate_pool_name(pool)
        lease = check_lease_seconds(lease_seconds)
        tid = self._tid(task_id)
        if tid is None or not token:
            return False
        return self._cas(
            f"UPDATE tasks SET heartbeat_at = {NOW}, lease_expires = {NOW} + ? "
            f"WHERE pool = ? AND id = ? AND status = '{RUNNING}' AND lease_token = ?",
            (lease, pool, tid, token),
        )

    def complete_task(self, pool: str, task_id: str, token: str, *, status: str, result: Any) -> bool:
        validate_pool_name(pool)
        check_commit_status(status)
        text = to_json(result, "result")
        tid = self._tid(task_id)
        if tid is None or not token:
            return False
        return self._cas(
            f"UPDATE tasks SET status = ?, result = ?, finished_at = {NOW}, claimed_from = NULL, "
            f"not_before = NULL, {_CLEAR_LEASE} "
            f"WHERE pool = ? AND id = ? AND status = '{RUNNING}' AND lease_token = ?",
            (status, text, pool, tid, token),
        )

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
        validate_pool_name(pool)
        delay = check_retry_delay(retry_delay)
        tid = self._tid(task_id)
        if tid is None or not token:
            return False
        plain = error is None and not give_up
        fail = "(:give_up OR (:has_error AND attempts >= max_attempts))"
        back = f"CASE WHEN claimed_from IN ({','.join(repr(s) for s in sorted(CLAIMABLE))}) " \
               f"THEN claimed_from ELSE '{WAITING}' END"
        sql = (
            "UPDATE tasks SET "
            "last_error = COALESCE(:error, last_error), "
            "attempts = CASE WHEN :plain THEN MAX(attempts - 1, 0) ELSE attempts END, "
            f"status = CASE WHEN {fail} THEN '{FAILED}' ELSE {back} END, "
            f"finished_at = CASE WHEN {fail} THEN {NOW} ELSE finished_at END, "
            f"not_before = CASE WHEN {fail} OR :delay <= 0 THEN NULL ELSE {NOW} + :delay END, "
            f"claimed_from = NULL, {_CLEAR_LEASE} "
            f"WHERE pool = :pool AND id = :id AND status = '{RUNNING}' AND lease_token = :token"
        )
        args = {
            "error": stored_error(error), "plain": plain, "give_up": bool(give_up),
            "has_error": error is not None, "delay": delay, "pool": pool, "id": tid, "token": token,
        }
        return self._cas(sql, args)

    def requeue_expired(self, pool: str) -> int:
        validate_pool_name(pool)
        back = f"CASE WHEN claimed_from IN ({','.join(repr(s) for s in sorted(CLAIMABLE))}) " \
               f"THEN claimed_from ELSE '{WAITING}' END"
        used = "attempts >= max_attempts"
        sql = (
            f"UPDATE tasks SET status = CASE WHEN {used} THEN '{FAILED}' ELSE {back} END, "
            f"finished_at = CASE WHEN {used} THEN {NOW} ELSE finished_at END, "
            f"last_error = CASE WHEN {used} THEN ? || ' (' || attempts || ' of ' || max_attempts "
            "|| '; last owner ' || COALESCE(lease_owner, '?') || ')' ELSE last_error END, "
            f"claimed_from = NULL, not_before = NULL, {_CLEAR_LEASE} "
            f"WHERE pool = ? AND status = '{RUNNING}' AND lease_expires < {NOW}"
        )
        return self._run(lambda c: c.execute(sql, (LEASE_EXPIRED_ERROR, pool)).rowcount, write=True,
                         single=True)

    # -- reading ---------------------------------------------------------------------------------
    def get_tasks(self, pool: str, ids: Sequence[str]) -> list[TaskRecord]:
        validate_pool_name(pool)
        wanted = normalize_ids(ids)
        ints = sorted({int(i) for i in wanted if i.isdigit() and len(i) < 19})

        def op(conn: sqlite3.Connection) -> dict[str, TaskRecord]:
            found: dict[str, TaskRecord] = {}
            for k in range(0, len(ints), CHUNK):
                chunk = ints[k : k + CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                    f"SELECT {SELECT_COLS} FROM tasks WHERE pool = ? AND id IN ({marks})", (pool, *chunk)
                ):
                    rec = _row_to_record(row)
                    found[rec.id] = rec
            return found

        found = self._run(op, write=False) if ints else {}
        return [found[str(int(i))] for i in wanted if i.isdigit() and len(i) < 19 and str(int(i)) in found]

    def find_tasks(
        self, pool: str, query: Any, *, limit: int | None = None, with_definition: bool = True
    ) -> list[TaskRecord]:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise PoolError(f"limit: expected a non-negative integer or None, got {limit!r}")
        where, params = self._where(pool, query)
        cols = SELECT_COLS if with_definition else SELECT_COLS_NO_DEF
        sql = f"SELECT {cols} FROM tasks WHERE {where} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = self._run(lambda c: c.execute(sql, params).fetchall(), write=False, single=True)
        return [_row_to_record(r) for r in rows]

    def count_tasks(self, pool: str, query: Any) -> dict[str, int]:
        where, params = self._where(pool, query)
        sql = f"SELECT status, COUNT(*) FROM tasks WHERE {where} GROUP BY status"
        return dict(self._run(lambda c: c.execute(sql, params).fetchall(), write=False, single=True))

    # -- administration --------------------------------------------------------------------------
    def delete_tasks(self, pool: str, query: Any) -> int:
        where, params = self._where(pool, query)
        return self._run(lambda c: c.execute(f"DELETE FROM tasks WHERE {where}", params).rowcount,
                         write=True, single=True)

    def set_status(self, pool: str, query: Any, to_status: str) -> int:
        check_admin_status(to_status)
        where, params = self._where(pool, query)
        claimable = to_status in CLAIMABLE
        sql = (
            "UPDATE tasks SET status = ?, claimed_from = NULL, not_before = NULL, "
            f"{_CLEAR_LEASE}, attempts = CASE WHEN ? THEN 0 ELSE attempts END, "
            f"finished_at = CASE WHEN ? THEN NULL ELSE COALESCE(finished_at, {NOW}) END "
            f"WHERE {where}"
        )
        args = [to_status, claimable, claimable, *params]
        return self._run(lambda c: c.execute(sql, args).rowcount, write=True, single=True)

    def set_priority(self, pool: str, query: Any, priority: int) -> int:
        check_priority(priority)
        where, params = self._where(pool, query)
        return self._run(
            lambda c: c.execute(f"UPDATE tasks SET priority = ? WHERE {where}", [priority, *params]).rowcount,
            write=True, single=True,
        )

    # -- the store -------------------------------------------------------------------------------
    def now(self) -> float:
        return float(self._run(lambda c: c.execute(f"SELECT {NOW}").fetchone()[0], write=False,
                               single=True))

    def doctor(self) -> dict[str, Any]:
        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            indexes = sorted(
                r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' "
                    "AND name NOT LIKE 'sqlite_autoindex%'"
                )
            )
            return {
                "backend": "sqlite",
                "url": redact_url(self.url),
                "path": self.path,
                "sqlite_version": sqlite3.sqlite_version,
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                    conn.execute("PRAGMA synchronous").fetchone()[0], "?"),
                "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0],
                "indexes": indexes,
                "missing_indexes": [i for i in EXPECTED_INDEXES if i not in indexes],
                "pools": [r[0] for r in conn.execute("SELECT name FROM pools ORDER BY name")],
                "size_bytes": None if self.memory else os.path.getsize(self.path),
            }

        info = self._run(op, write=False)
        try:  # a write transaction proves the file (and its -wal/-shm) are writable
            self._run(lambda c: None, write=True)
            info["writable"] = True
        except PoolUnavailable as exc:
            info["writable"] = False
            info["write_error"] = str(exc)
        info["ok"] = info["writable"] and not info["missing_indexes"]
        return info

    def close(self) -> None:
        with self._lock:
            if self._conn_obj is not None and self._pid == os.getpid():
                self._conn_obj.close()
            self._conn_obj = None
            self._pid = -1


__all__ = ["SQLiteBackend", "parse_sqlite_url"]
