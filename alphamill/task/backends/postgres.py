"""PostgreSQL task pool (psycopg 3): safe for many workers on many machines.

Layout (created on first use in the connection's current schema; the schema named first in
``search_path`` is created when it does not exist, so ``?options=-csearch_path%3Dmy_schema``
selects a private namespace):

* ``task_pools(name, codec, created_at)``: one row per pool;
* ``tasks``: every task of every pool, ``UNIQUE (pool, hash)`` for race-free dedupe, jsonb
  ``definition``/``result``/``metadata``, and ``tasks_claim_idx (pool, status, priority DESC,
  id)`` serving claims.

Claims lock candidates with ``FOR UPDATE SKIP LOCKED`` inside one ``UPDATE ... RETURNING``
statement, so concurrent workers never wait on each other nor get the same task. Every time
(lease expiry, heartbeats, backoff, created/started/finished) comes from the server's
``clock_timestamp()`` and is stored as epoch seconds (``double precision``).

Connections: one per backend object (and per process: a forked child opens its own). A
connection error (server restart, ``pg_terminate_backend``, network) closes it and the
operation is retried on a new connection with bounded exponential backoff; when the server
stays unreachable for ``retry_seconds`` the operation raises :class:`PoolUnavailable` naming
the URL with its password redacted. An operation whose commit was lost with the connection is
re-run: inserts are idempotent (``ON CONFLICT DO NOTHING``), a re-run commit or release
recognises its own earlier success through ``done_token``, and a re-run claim may leave the
first claim's task leased to nobody until its lease expires (at-least-once execution).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from alphamill.errors import PoolError, PoolUnavailable
from alphamill.redact import redact_url, scrub
from alphamill.task import status as st
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
from alphamill.task.query import (
    COMPARISONS,
    EQ,
    EXISTS,
    GT,
    GTE,
    IN,
    LT,
    LTE,
    NE,
    NIN,
    Condition,
    Query,
    parse_query,
)

T = TypeVar("T")

_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # fullmatch: names, never a newline
_NEG_INDEX_RE = re.compile(r"-\d+")
_NUL_RE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash
_MAX_BIGINT = 2**63 - 1
_INSERT_CHUNK = 5000
#: Connection failures that are the URL's fault (credentials, names), not the network's.
_PERMANENT_CONNECT_ERROR = re.compile(
    r"authentication failed|does not exist|no pg_hba\.conf entry|not permitted to log in|"
    r"permission denied|invalid (?:URI|connection option|integer value)|missing \"=\""
)
_SELECT_CHUNK = 50_000

#: Columns read into a TaskRecord, in TaskRecord's field order.
_COLUMNS: tuple[str, ...] = (
    "id",
    "pool",
    "definition",
    "hash",
    "status",
    "priority",
    "result",
    "attempts",
    "max_attempts",
    "lease_owner",
    "lease_token",
    "lease_expires",
    "heartbeat_at",
    "claimed_from",
    "not_before",
    "created_at",
    "started_at",
    "finished_at",
    "last_error",
    "worker_host",
    "worker_pid",
    "metadata",
)
_EXPECTED_INDEXES = ("tasks_pkey", "tasks_pool_hash_key", "tasks_claim_idx", "tasks_lease_idx")

_NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
_CLEAR_LEASE = "lease_token = NULL, lease_owner = NULL, lease_expires = NULL, heartbeat_at = NULL"

_DDL = """
CREATE TABLE IF NOT EXISTS {pools} (
    name text PRIMARY KEY,
    codec text NOT NULL,
    created_at double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS {tasks} (
    id bigserial PRIMARY KEY,
    pool text NOT NULL,
    definition jsonb NOT NULL,
    hash text NOT NULL,
    status text NOT NULL DEFAULT 'waiting',
    priority integer NOT NULL DEFAULT 0,
    result jsonb,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    lease_owner text,
    lease_token text,
    lease_expires double precision,
    heartbeat_at double precision,
    claimed_from text,
    not_before double precision,
    created_at double precision NOT NULL,
    started_at double precision,
    finished_at double precision,
    last_error text,
    worker_host text,
    worker_pid integer,
    metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    done_token text,
    CONSTRAINT tasks_pool_hash_key UNIQUE (pool, hash)
);
CREATE INDEX IF NOT EXISTS tasks_claim_idx ON {tasks} (pool, status, priority DESC, id);
CREATE INDEX IF NOT EXISTS tasks_lease_idx ON {tasks} (pool, lease_expires)
    WHERE status = 'running';
"""


def _dumps(value: Any, where: str) -> str:
    """JSON text for a jsonb parameter; a clear error when the value is not JSON data."""
    return _check_nul(to_json(value, where), where)


def _check_nul(text: str, where: str) -> str:
    if "\\u0000" in text and _NUL_RE.search(text):
        raise PoolError(f"{where}: PostgreSQL jsonb cannot store the character U+0000")
    return text


def _sql_id(task_id: Any) -> int | None:
    """The bigint id of ``task_id`` (``"17"`` or ``17``), or ``None`` if it cannot be one."""
    if isinstance(task_id, bool):
        return None
    if isinstance(task_id, int):
        return task_id if 0 < task_id <= _MAX_BIGINT else None
    if isinstance(task_id, str) and task_id.isascii() and task_id.isdigit():
        n = int(task_id)
        return n if str(n) == task_id and 0 < n <= _MAX_BIGINT else None
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -- query translation -----------------------------------------------------------------------


class _Where:
    """Builds a parameterised WHERE fragment for a Query on alias ``t``.

    Placeholders are named (``%(q0)s``), so one jsonb path expression can appear several
    times in the fragment with its parameters bound once.
    """

    _SQL_OPS = {GT: ">", GTE: ">=", LT: "<", LTE: "<="}

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def p(self, value: Any) -> str:
        name = f"q{len(self.params)}"
        self.params[name] = value
        return f"%({name})s"

    def query(self, query: Query) -> str:
        parts = [self.condition(c) for c in query.conditions]
        return " AND ".join(f"({x})" for x in parts) if parts else "TRUE"

    def condition(self, c: Condition) -> str:
        if c.target == "field":
            return self.field(c)
        return self.json_path(c)

    # top-level columns ------------------------------------------------------------------
    def field(self, c: Condition) -> str:
        name = c.path[0]
        if c.op in (NE, NIN):
            pos = self.field_positive(name, EQ if c.op == NE else IN, c.value)
            return f"NOT ({pos})"
        return self.field_positive(name, c.op, c.value)

    def field_positive(self, name: str, op: str, value: Any) -> str:
        values = list(value) if op == IN else [value]
        if name == "id":
            ids = [i for i in (_sql_id(v) for v in values) if i is not None]
            return f"t.id = ANY({self.p(ids)}::bigint[])" if ids else "FALSE"
        if name in ("status", "hash"):
            strs = [v for v in values if isinstance(v, str)]
            return f"t.{name} = ANY({self.p(strs)}::text[])" if strs else "FALSE"
        # priority / attempts: integer columns compared with numbers only
        if op in COMPARISONS:
            if not _is_number(value):
                return "FALSE"
            return f"t.{name} {self._SQL_OPS[op]} {self.p(value)}::numeric"
        # Sent as text: a list mixing ints and floats has no single array type.
        nums = [repr(v) for v in values if _is_number(v)]
        return f"t.{name} = ANY({self.p(nums)}::text[]::numeric[])" if nums else "FALSE"

    # JSON paths -----------------------------------------------------------------------------
    def json_path(self, c: Condition) -> str:
        x = self.path_expr(c)
        if c.op == EXISTS:
            return f"{x} IS NOT NULL" if c.value else f"{x} IS NULL"
        if c.op in (NE, NIN):
            pos = self.json_positive(x, EQ if c.op == NE else IN, c.value)
            return f"NOT COALESCE({pos}, FALSE)"
        return f"COALESCE({self.json_positive(x, c.op, c.value)}, FALSE)"

    def path_expr(self, c: Condition) -> str:
        """The jsonb at the path, SQL NULL when missing (paths step into objects only)."""
        column = "t.definition" if c.target == "def" else "t.metadata"
        expr = f"({column} #> {self.p(list(c.path))}::text[])"
        # `#>` indexes arrays with "-1"-like components; such a step must land in an object.
        guards = [
            f"jsonb_typeof({column} #> {self.p(list(c.path[:i]))}::text[]) = 'object'"
            for i, part in enumerate(c.path)
            if _NEG_INDEX_RE.fullmatch(part)
        ]
        if guards:
            return f"(CASE WHEN {' AND '.join(guards)} THEN {expr} END)"
        return expr

    def json_positive(self, x: str, op: str, value: Any) -> str:
        if op in COMPARISONS:
            return self.json_compare(x, op, value)
        values = list(value) if op == IN else [value]
        docs = [_dumps(v, "query value") for v in values]
        if not docs:
            return "FALSE"
        arr = self.p(docs)
        # Equal JSON values (numbers numerically, never bool == number), or a stored array
        # holding an equal element (one level), or null matching a missing path.
        parts = [
            f"{x} = ANY({arr}::text[]::jsonb[])",
            f"(jsonb_typeof({x}) = 'array' AND EXISTS (SELECT 1 FROM jsonb_array_elements({x}) "
            f"AS e(v) WHERE e.v = ANY({arr}::text[]::jsonb[])))",
        ]
        if any(v is None for v in values):
            parts.append(f"{x} IS NULL")
        return "(" + " OR ".join(parts) + ")"

    def json_compare(self, x: str, op: str, value: Any) -> str:
        sop = self._SQL_OPS[op]
        if _is_number(value):
            test = f"jsonb_typeof(e.v) = 'number' AND e.v {sop} {self.p(_dumps(value, 'query value'))}::jsonb"
        elif isinstance(value, str):
            test = f"jsonb_typeof(e.v) = 'string' AND (e.v #>> '{{}}') COLLATE \"C\" {sop} {self.p(value)}"
        else:
            return "FALSE"
        return (
            f"EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({x}) = 'array' "
            f"THEN {x} ELSE jsonb_build_array({x}) END) AS e(v) WHERE {test})"
        )


def where_clause(query: Any) -> tuple[str, dict[str, Any]]:
    """SQL condition on alias ``t`` and its parameters for a query (dict, Query or None)."""
    w = _Where()
    text = w.query(parse_query(query))
    return text, w.params


# -- the backend -----------------------------------------------------------------------------


class PostgresBackend(Backend):
    """Task pools in one PostgreSQL schema; see the module docstring for the guarantees."""

    schemes = ("postgresql", "postgres")

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        retry_seconds: float = 30.0,
        max_backoff: float = 2.0,
        first_connect_seconds: float = 3.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise PoolError(
                f"pool URL {redact_url(str(url))!r}: expected postgresql://user@host:port/db"
            )
        self.url = url
        self.connect_timeout = connect_timeout
        self.retry_seconds = retry_seconds
        self.max_backoff = max_backoff
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._orphans: list[psycopg.Connection] = []  # inherited across fork; never closed here
        self._schema: str | None = None
        self._server_version = 0
        self._q: dict[str, str] = {}
        # Fail fast on an unreachable server or a bad schema instead of at the first task: a
        # mistyped URL is reported within ``first_connect_seconds``; only a server that was
        # reachable once is waited for (``retry_seconds``), as during a restart.
        try:
            self._run(lambda conn, retry: None, retry_seconds=first_connect_seconds)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresBackend({redact_url(self.url)!r})"

    # -- connection handling ------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._pid != os.getpid():
            # A forked child must not use (nor close: that would end the parent's session)
            # the parent's socket.
            if self._conn is not None:
                self._orphans.append(self._conn)
            self._conn = None
            self._pid = os.getpid()
        conn = self._conn
        if conn is None or conn.closed:
            try:
                conn = psycopg.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, round(self.connect_timeout)),
                    application_name="alphamill",
                )
            except psycopg.OperationalError as e:
                if _PERMANENT_CONNECT_ERROR.search(str(e)):  # retrying cannot help
                    raise PoolError(
                        f"pool {redact_url(self.url)}: cannot connect: {scrub(str(e), self.url).strip()}"
                    ) from None
                raise
            self._conn = conn
            if self._schema is None:
                self._setup(conn)
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # The connection may already be broken; there is nothing more to release then.
            with contextlib.suppress(Exception):
                conn.close()

    def _run(
        self, fn: Callable[[psycopg.Connection, bool], T], retry_seconds: float | None = None
    ) -> T:
        """Run ``fn(conn, retrying)``, reconnecting with backoff on connection errors."""
        retry_seconds = self.retry_seconds if retry_seconds is None else retry_seconds
        deadline: float | None = None
        delay = 0.05
        retrying = False
        while True:
            with self._lock:
                try:
                    return fn(self._connection(), retrying)
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    self._discard()
                    error = e
                except psycopg.Error as e:
                    # e.g. missing privileges: a user-facing error naming the (redacted) pool.
                    raise PoolError(
                        f"pool {redact_url(self.url)}: {scrub(str(e), self.url).strip()}"
                    ) from e
            now = time.monotonic()
            if deadline is None:
                deadline = now + retry_seconds
            if now + delay > deadline:
                raise PoolUnavailable(
                    f"pool {redact_url(self.url)}: PostgreSQL unavailable after retrying for "
                    f"{retry_seconds:g}s: {scrub(str(error), self.url).strip()}"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
            retrying = True

    def _setup(self, conn: psycopg.Connection) -> None:
        """Find (or create) the schema, create the tables and indexes when missing."""
        self._server_version = conn.info.server_version
        row = conn.execute(
            "SELECT current_schema(), current_setting('search_path'), current_user"
        ).fetchone()
        assert row is not None
        schema, search_path, user = row
        if schema is None:
            token = search_path.split(",")[0].strip()
            # Unquoted names in search_path are folded to lower case, as in SQL.
            first = token[1:-1] if token.startswith('"') and token.endswith('"') else token.lower()
            if first == "$user":
                first = user
            if not _SCHEMA_RE.fullmatch(first):
                raise PoolError(
                    f"pool {redact_url(self.url)}: search_path schema {first!r} is not a valid "
                    "name; expected letters, digits and underscores"
                )
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('alphamill.schema'))")
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(first)))
            schema = first
        if not _SCHEMA_RE.fullmatch(schema):
            raise PoolError(f"pool {redact_url(self.url)}: unsupported schema name {schema!r}")
        pools = sql.Identifier(schema, "task_pools").as_string(conn)
        tasks = sql.Identifier(schema, "tasks").as_string(conn)
        present = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = ANY(%s)",
            (schema, list(_EXPECTED_INDEXES)),
        ).fetchone()
        if not present or present[0] < len(_EXPECTED_INDEXES) or not conn.execute(
            "SELECT to_regclass(%s)", (pools,)
        ).fetchone()[0]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('alphamill.schema'))")
                conn.execute(_DDL.format(pools=pools, tasks=tasks))
        self._schema = schema
        self._q = {"pools": pools, "tasks": tasks}

    @property
    def _tasks(self) -> str:
        return self._q["tasks"]

    @property
    def _pools(self) -> str:
        return self._q["pools"]

    def _token_expr(self) -> str:
        if self._server_version >= 130000:
            return "replace(gen_random_uuid()::text, '-', '')"
        return "md5(random()::text || clock_timestamp()::text || t.id::text)"

    def _select_cols(self, with_definition: bool = True) -> str:
        cols = [f"t.{c}" if (c != "definition" or with_definition) else "NULL" for c in _COLUMNS]
        return ", ".join(cols)

    @staticmethod
    def _record(row: Sequence[Any]) -> TaskRecord:
        values = dict(zip(_COLUMNS, row, strict=True))
        values["id"] = str(values["id"])
        if values["metadata"] is None:
            values["metadata"] = {}
        return TaskRecord(**values)

    # -- pools ---------------------------------------------------------------------------------
    def ensure_pool(self, pool: str, *, codec: str = "json") -> PoolInfo:
        validate_pool_name(pool)
        check_codec(codec)

        def op(conn: psycopg.Connection, retry: bool) -> PoolInfo:
            conn.execute(
                f"INSERT INTO {self._pools} (name, codec, created_at) VALUES (%s, %s, {_NOW}) "
                "ON CONFLICT (name) DO NOTHING",
                (pool, codec),
            )
            info = self._pool_info(conn, pool)
            assert info is not None
            return info

        return self._run(op)

    def _pool_info(self, conn: psycopg.Connection, pool: str) -> PoolInfo | None:
        row = conn.execute(
            f"SELECT name, codec, created_at FROM {self._pools} WHERE name = %s", (pool,)
        ).fetchone()
        return PoolInfo(*row) if row else None

    def pool_info(self, pool: str) -> PoolInfo | None:
        validate_pool_name(pool)
        return self._run(lambda conn, retry: self._pool_info(conn, pool))

    def list_pools(self) -> list[str]:
        return self._run(
            lambda conn, retry: [
                r[0] for r in conn.execute(f"SELECT name FROM {self._pools} ORDER BY name")
            ]
        )

    def drop_pool(self, pool: str) -> None:
        validate_pool_name(pool)

        def op(conn: psycopg.Connection, retry: bool) -> None:
            with conn.transaction():
                conn.execute(f"DELETE FROM {self._tasks} WHERE pool = %s", (pool,))
                conn.execute(f"DELETE FROM {self._pools} WHERE name = %s", (pool,))

        self._run(op)

    # -- inserting -------------------------------------------------------------------------------
    def insert_tasks(self, pool: str, tasks: Sequence[NewTask]) -> list[InsertResult]:
        validate_pool_name(pool)
        tasks = list(tasks)
        if not tasks:
            return []
        # Validate and encode the whole batch first: a bad task stores nothing.
        first: dict[str, int] = {}  # hash -> index of its first occurrence in the batch
        rows: dict[str, tuple[str, int, int, str]] = {}
        for i, t in enumerate(tasks):
            check_new_task(t, i)
            definition = (
                _check_nul(t.definition_json, f"tasks[{i}].definition")
                if t.definition_json is not None
                else _dumps(t.definition, f"tasks[{i}].definition")
            )
            metadata = _dumps(t.metadata, f"tasks[{i}].metadata")
            if t.hash not in first:
                first[t.hash] = i
                rows[t.hash] = (definition, t.priority, t.max_attempts, metadata)
        hashes = list(first)
        select = f"SELECT hash, id FROM {self._tasks} WHERE pool = %s AND hash = ANY(%b::text[])"
        insert = (
            f"INSERT INTO {self._tasks} (pool, definition, hash, priority, max_attempts, "
            "metadata, status, created_at) "
            "SELECT %s, u.d::jsonb, u.h, u.p, u.m, u.md::jsonb, 'waiting', n.t "
            f"FROM (SELECT {_NOW} AS t) n, "
            "unnest(%b::text[], %b::text[], %b::int[], %b::int[], %b::text[]) "
            "WITH ORDINALITY AS u(d, h, p, m, md, o) ORDER BY u.o "
            "ON CONFLICT (pool, hash) DO NOTHING RETURNING hash, id"
        )

        def op(conn: psycopg.Connection, retry: bool) -> tuple[dict[str, int], dict[str, int]]:
            ids: dict[str, int] = {}
            created: dict[str, int] = {}
            try:
                # Known hashes cost one indexed lookup and no payload; only new ones are sent.
                for s in range(0, len(hashes), _SELECT_CHUNK):
                    ids.update(conn.execute(select, (pool, hashes[s : s + _SELECT_CHUNK])))
                new = [h for h in hashes if h not in ids]
                with conn.transaction():
                    conn.execute(
                        f"INSERT INTO {self._pools} (name, codec, created_at) "
                        f"VALUES (%s, 'json', {_NOW}) ON CONFLICT (name) DO NOTHING",
                        (pool,),
                    )
                    for s in range(0, len(new), _INSERT_CHUNK):
                        chunk = new[s : s + _INSERT_CHUNK]
                        defs, prios, maxes, metas = zip(*(rows[h] for h in chunk), strict=True)
                        params = (pool, list(defs), chunk, list(prios), list(maxes), list(metas))
                        created.update(conn.execute(insert, params))
                    # Hashes inserted meanwhile by a concurrent batch (ON CONFLICT skipped them).
                    raced = [h for h in new if h not in created]
                    for s in range(0, len(raced), _SELECT_CHUNK):
                        ids.update(conn.execute(select, (pool, raced[s : s + _SELECT_CHUNK])))
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as e:
                raise PoolError(
                    f"task_pool {pool!r}: cannot store tasks: {str(e).strip()}"
                ) from None
            ids.update(created)
            return created, ids

        created, ids = self._run(op)
        return [
            InsertResult(str(ids[t.hash]), t.hash in created and first[t.hash] == i)
            for i, t in enumerate(tasks)
        ]

    def replace_definition(self, pool: str, task_id: str, definition: Any, hash: str) -> bool:
        validate_pool_name(pool)
        if not isinstance(hash, str) or not hash:
            raise PoolError(f"hash: expected a non-empty string, got {hash!r}")
        doc = _dumps(definition, "definition")
        tid = _sql_id(task_id)
        if tid is None:
            return False

        def op(conn: psycopg.Connection, retry: bool) -> bool:
            try:
                cur = conn.execute(
                    f"UPDATE {self._tasks} SET definition = %s::jsonb, hash = %s "
                    "WHERE pool = %s AND id = %s",
                    (doc, hash, pool, tid),
                )
            except psycopg.errors.UniqueViolation:
                raise PoolError(
                    f"task_pool {pool!r}: another task already has hash {hash!r}"
                ) from None
            return cur.rowcount > 0

        return self._run(op)

    # -- the worker's operations ----------------------------------------------------------------
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
        where, qparams = where_clause(query)
        stmt = (
            f"WITH n AS (SELECT {_NOW} AS t), "
            f"c AS MATERIALIZED (SELECT t.id FROM {self._tasks} t, n "
            "WHERE t.pool = %(pool)s AND t.status = %(from)s "
            "AND (t.not_before IS NULL OR t.not_before <= n.t) "
            f"AND ({where}) ORDER BY t.priority DESC, t.id LIMIT %(limit)s "
            "FOR UPDATE OF t SKIP LOCKED) "
            f"UPDATE {self._tasks} t SET status = 'running', claimed_from = t.status, "
            f"attempts = t.attempts + 1, lease_token = {self._token_expr()}, "
            "lease_owner = %(owner)s, lease_expires = n.t + %(lease)s, heartbeat_at = n.t, "
            "started_at = n.t, worker_host = %(host)s, worker_pid = %(pid)s, not_before = NULL, "
            "done_token = NULL "
            f"FROM c, n WHERE t.id = c.id RETURNING {self._select_cols()}"
        )
        params = {
            **qparams,
            "pool": pool,
            "from": from_status,
            "limit": int(limit),
            "owner": worker.owner,
            "lease": float(lease_seconds),
            "host": worker.host,
            "pid": int(worker.pid),
        }
        rows = self._run(lambda conn, retry: conn.execute(stmt, params).fetchall())
        records = [self._record(r) for r in rows]
        records.sort(key=lambda r: (-r.priority, int(r.id)))
        return records

    def heartbeat(self, pool: str, task_id: str, token: str, lease_seconds: float) -> bool:
        validate_pool_name(pool)
        lease_seconds = check_lease_seconds(lease_seconds)
        tid = _sql_id(task_id)
        if tid is None or not token:
            return False
        stmt = (
            f"UPDATE {self._tasks} t SET lease_expires = n.t + %s, heartbeat_at = n.t "
            f"FROM (SELECT {_NOW} AS t) n "
            "WHERE t.pool = %s AND t.id = %s AND t.lease_token = %s AND t.status = 'running'"
        )
        params = (float(lease_seconds), pool, tid, token)
        return self._run(lambda conn, retry: conn.execute(stmt, params).rowcount > 0)

    def _finished_before(self, conn: psycopg.Connection, pool: str, tid: int, token: str) -> bool:
        """After a retry: whether this token's lease was already ended by the lost attempt."""
        row = conn.execute(
            f"SELECT 1 FROM {self._tasks} WHERE pool = %s AND id = %s AND done_token = %s",
            (pool, tid, token),
        ).fetchone()
        return row is not None

    def complete_task(self, pool: str, task_id: str, token: str, *, status: str, result: Any) -> bool:
        validate_pool_name(pool)
        check_commit_status(status)
        tid = _sql_id(task_id)
        if tid is None or not token:
            return False
        doc = _dumps(result, "result")
        stmt = (
            f"UPDATE {self._tasks} t SET status = %s, result = %s::jsonb, finished_at = n.t, "
            f"claimed_from = NULL, not_before = NULL, {_CLEAR_LEASE}, done_token = t.lease_token "
            f"FROM (SELECT {_NOW} AS t) n "
            "WHERE t.pool = %s AND t.id = %s AND t.lease_token = %s AND t.status = 'running'"
        )

        def op(conn: psycopg.Connection, retry: bool) -> bool:
            if conn.execute(stmt, (status, doc, pool, tid, token)).rowcount > 0:
                return True
            return retry and self._finished_before(conn, pool, tid, token)

        return self._run(op)

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
        retry_delay = check_retry_delay(retry_delay)
        tid = _sql_id(task_id)
        if tid is None or not token:
            return False
        # A plain return (no error, not giving up) gives the attempt back; an error returns
        # the task to the status it was claimed from while attempts remain.
        back = 1 if error is None and not give_up else 0
        returns = (
            "(NOT %(give_up)s AND (%(error)s::text IS NULL OR t.attempts < t.max_attempts))"
        )
        stmt = (
            f"UPDATE {self._tasks} t SET "
            f"status = CASE WHEN {returns} THEN (CASE WHEN t.claimed_from IN ('waiting', "
            "'part_done') THEN t.claimed_from ELSE 'waiting' END) ELSE 'failed' END, "
            "attempts = GREATEST(t.attempts - %(back)s, 0), "
            f"not_before = CASE WHEN {returns} AND %(delay)s > 0 THEN n.t + %(delay)s END, "
            f"finished_at = CASE WHEN {returns} THEN t.finished_at ELSE n.t END, "
            "last_error = COALESCE(%(error)s, t.last_error), claimed_from = NULL, "
            f"{_CLEAR_LEASE}, done_token = t.lease_token "
            f"FROM (SELECT {_NOW} AS t) n "
            "WHERE t.pool = %(pool)s AND t.id = %(id)s AND t.lease_token = %(token)s "
            "AND t.status = 'running'"
        )
        params = {
            "give_up": bool(give_up),
            "back": back,
            "delay": retry_delay,
            "error": stored_error(error),
            "pool": pool,
            "id": tid,
            "token": token,
        }

        def op(conn: psycopg.Connection, retry: bool) -> bool:
            if conn.execute(stmt, params).rowcount > 0:
                return True
            return retry and self._finished_before(conn, pool, tid, token)

        return self._run(op)

    def requeue_expired(self, pool: str) -> int:
        validate_pool_name(pool)
        out = "t.attempts >= t.max_attempts"
        stmt = (
            f"UPDATE {self._tasks} t SET "
            f"status = CASE WHEN {out} THEN 'failed' WHEN t.claimed_from IN ('waiting', "
            "'part_done') THEN t.claimed_from ELSE 'waiting' END, "
            f"last_error = CASE WHEN {out} THEN %s || ' (' || t.attempts || ' of ' || "
            "t.max_attempts || '; last owner ' || COALESCE(t.lease_owner, '?') || ')' "
            "ELSE t.last_error END, "
            f"finished_at = CASE WHEN {out} THEN n.t ELSE t.finished_at END, "
            f"claimed_from = NULL, not_before = NULL, {_CLEAR_LEASE} "
            f"FROM (SELECT {_NOW} AS t) n "
            "WHERE t.pool = %s AND t.status = 'running' AND t.lease_expires < n.t"
        )
        params = (LEASE_EXPIRED_ERROR, pool)
        return self._run(lambda conn, retry: conn.execute(stmt, params).rowcount)

    # -- reading ------------------------------------------------------------------------------------
    def get_tasks(self, pool: str, ids: Sequence[str]) -> list[TaskRecord]:
        validate_pool_name(pool)
        wanted = [_sql_id(i) for i in normalize_ids(ids)]
        valid = sorted({i for i in wanted if i is not None})
        if not valid:
            return []
        stmt = (
            f"SELECT {self._select_cols()} FROM {self._tasks} t "
            "WHERE t.pool = %s AND t.id = ANY(%s::bigint[])"
        )
        rows = self._run(lambda conn, retry: conn.execute(stmt, (pool, valid)).fetchall())
        by_id = {int(r[0]): self._record(r) for r in rows}
        return [by_id[i] for i in wanted if i in by_id]

    def find_tasks(
        self, pool: str, query: Any, *, limit: int | None = None, with_definition: bool = True
    ) -> list[TaskRecord]:
        validate_pool_name(pool)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise PoolError(f"limit: expected a non-negative integer or None, got {limit!r}")
        where, params = where_clause(query)
        stmt = (
            f"SELECT {self._select_cols(with_definition)} FROM {self._tasks} t "
            f"WHERE t.pool = %(pool)s AND ({where}) ORDER BY t.id"
        )
        args = {**params, "pool": pool}
        if limit is not None:
            stmt += " LIMIT %(limit)s"
            args["limit"] = limit
        rows = self._run(lambda conn, retry: conn.execute(stmt, args).fetchall())
        return [self._record(r) for r in rows]

    def count_tasks(self, pool: str, query: Any) -> dict[str, int]:
        validate_pool_name(pool)
        where, params = where_clause(query)
        stmt = (
            f"SELECT t.status, count(*) FROM {self._tasks} t "
            f"WHERE t.pool = %(pool)s AND ({where}) GROUP BY t.status"
        )
        args = {**params, "pool": pool}
        rows = self._run(lambda conn, retry: conn.execute(stmt, args).fetchall())
        return {status: int(n) for status, n in rows}

    # -- administration -------------------------------------------------------------------------------
    def delete_tasks(self, pool: str, query: Any) -> int:
        validate_pool_name(pool)
        where, params = where_clause(query)
        stmt = f"DELETE FROM {self._tasks} t WHERE t.pool = %(pool)s AND ({where})"
        args = {**params, "pool": pool}
        return self._run(lambda conn, retry: conn.execute(stmt, args).rowcount)

    def set_status(self, pool: str, query: Any, to_status: str) -> int:
        validate_pool_name(pool)
        check_admin_status(to_status)
        where, params = where_clause(query)
        # Back to a claimable status: fresh attempts, not finished; otherwise keep (or set)
        # the finishing time.
        fresh = to_status in st.CLAIMABLE
        stmt = (
            f"UPDATE {self._tasks} t SET status = %(to)s, {_CLEAR_LEASE}, not_before = NULL, "
            "claimed_from = NULL, attempts = CASE WHEN %(fresh)s THEN 0 ELSE t.attempts END, "
            "finished_at = CASE WHEN %(fresh)s THEN NULL ELSE COALESCE(t.finished_at, n.t) END "
            f"FROM (SELECT {_NOW} AS t) n WHERE t.pool = %(pool)s AND ({where})"
        )
        args = {**params, "to": to_status, "pool": pool, "fresh": fresh}
        return self._run(lambda conn, retry: conn.execute(stmt, args).rowcount)

    def set_priority(self, pool: str, query: Any, priority: int) -> int:
        validate_pool_name(pool)
        check_priority(priority)
        where, params = where_clause(query)
        stmt = (
            f"UPDATE {self._tasks} t SET priority = %(priority)s "
            f"WHERE t.pool = %(pool)s AND ({where})"
        )
        args = {**params, "priority": priority, "pool": pool}
        return self._run(lambda conn, retry: conn.execute(stmt, args).rowcount)

    # -- the store ------------------------------------------------------------------------------------
    def now(self) -> float:
        return self._run(lambda conn, retry: float(conn.execute(f"SELECT {_NOW}").fetchone()[0]))

    def doctor(self) -> dict[str, Any]:
        def op(conn: psycopg.Connection, retry: bool) -> dict[str, Any]:
            schema = self._schema
            version, user, db = conn.execute(
                "SELECT current_setting('server_version'), current_user, current_database()"
            ).fetchone()
            privs = conn.execute(
                "SELECT has_schema_privilege(%s, 'USAGE'), has_schema_privilege(%s, 'CREATE'), "
                "has_table_privilege(%s, 'SELECT'), has_table_privilege(%s, 'INSERT'), "
                "has_table_privilege(%s, 'UPDATE'), has_table_privilege(%s, 'DELETE')",
                (schema, schema, *([self._tasks] * 4)),
            ).fetchone()
            indexes = sorted(
                r[0]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = %s "
                    "AND tablename IN ('tasks', 'task_pools')",
                    (schema,),
                )
            )
            pools = conn.execute(f"SELECT count(*) FROM {self._pools}").fetchone()[0]
            return {
                "version": version,
                "user": user,
                "database": db,
                "privs": privs,
                "indexes": indexes,
                "pools": pools,
            }

        try:
            info = self._run(op)
        except PoolUnavailable as e:
            return {"backend": "postgresql", "url": redact_url(self.url), "ok": False,
                    "problems": [str(e)]}
        names = ("schema_usage", "schema_create", "select", "insert", "update", "delete")
        privileges = dict(zip(names, info["privs"], strict=True))
        missing = [i for i in _EXPECTED_INDEXES if i not in info["indexes"]]
        problems = [f"missing index {i}" for i in missing]
        problems += [
            f"missing privilege {p} on tasks"
            for p in ("select", "insert", "update", "delete")
            if not privileges[p]
        ]
        return {
            "backend": "postgresql",
            "url": redact_url(self.url),
            "ok": not problems,
            "server_version": info["version"],
            "user": info["user"],
            "database": info["database"],
            "schema": self._schema,
            "privileges": privileges,
            "indexes": info["indexes"],
            "pools": info["pools"],
            "problems": problems,
        }

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._discard()
            else:
                self._conn = None


__all__ = ["PostgresBackend", "where_clause"]
