"""MongoDB task pool (pymongo 4): many workers on many machines against one database.

Layout: the database named in the URL (``mongodb://host:27017/db``; Qlib's ``task_url`` plus
``task_db_name`` map to it through :func:`alphamill.config.mongo_url_with_db`) holds two
collections shared by every pool:

* ``task_pools``: one document per pool (``_id`` = pool name, ``codec``, ``created_at``);
* ``tasks``: every task, with a ``pool`` field. One collection (rather than Qlib's one
  collection per pool) keeps a fixed set of indexes and lets ``doctor`` check them once:
  ``pool_hash`` (unique on ``pool, hash``: race-free dedupe), ``claim`` (``pool, status,
  priority desc, created_at, _id``) and ``lease`` (``pool, status, lease_expires``).

Claims are ``find_one_and_update`` calls (atomic per document, looped ``limit`` times), so two
workers never receive the same task; every later change of a running task is a
compare-and-set on its ``lease_token`` (uuid4 hex). Task ids are ObjectId hex strings.

Under mongomock (tests), whose writes are not atomic between threads, every operation holds
one process-wide lock.

Clock: times are epoch seconds from the **server's** clock, read with the ``hello`` command's
``localTime`` (millisecond resolution) once per operation that needs it. ``mongomock`` has no
server clock (nor ``hello``), so under mongomock the process clock (``time.time()``) stands in.

Inserts use ``insert_many(ordered=False)`` with client-chosen ObjectIds; duplicate-key errors
mean "already there" and the ids are then read back by hash in one query. MongoDB without a
replica set has no multi-document transaction, so when a batch fails for another reason the
documents this call inserted are deleted again before the error is raised.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pymongo
from bson import ObjectId
from bson.errors import BSONError
from pymongo import ReturnDocument
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from alphamill.errors import AlphamillError, PoolError, PoolUnavailable
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
    IN,
    NE,
    NIN,
    Condition,
    parse_query,
)

F = TypeVar("F", bound=Callable[..., Any])

TASKS = "tasks"
POOLS = "task_pools"
_DB_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")  # matched with fullmatch, as every name
_OID_RE = re.compile(r"[0-9a-f]{24}")
_INSERT_CHUNK = 10_000
_FIND_CHUNK = 50_000
_INDEXES: dict[str, tuple[list[tuple[str, int]], bool]] = {
    "pool_hash": ([("pool", 1), ("hash", 1)], True),
    "claim": ([("pool", 1), ("status", 1), ("priority", -1), ("created_at", 1), ("_id", 1)], False),
    "lease": ([("pool", 1), ("status", 1), ("lease_expires", 1)], False),
}
_ORDER = [("created_at", 1), ("_id", 1)]
_CLAIM_ORDER = [("priority", -1), ("created_at", 1), ("_id", 1)]
_FIELDS = (
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
_CLEAR_LEASE = {"lease_token": None, "lease_owner": None, "lease_expires": None, "heartbeat_at": None}

#: Filters that match nothing / everything (valid on MongoDB and mongomock alike).
_FALSE: dict[str, Any] = {"_id": {"$in": []}}
_TRUE: dict[str, Any] = {}


# -- stored form of JSON payloads -----------------------------------------------------------------
#
# MongoDB gives '.' and a leading '$' in field names special meanings (and older servers refuse
# them), so such keys are stored percent-escaped: '%' -> %25, '.' -> %2E, '$' -> %24. Query path
# components never contain these characters, so queries address stored keys unchanged.

_KEY_SPECIAL = re.compile(r"[%.$\x00]")
_KEY_ESCAPED = re.compile(r"%(25|2E|24|00)")
_KEY_UNESCAPE = {"25": "%", "2E": ".", "24": "$", "00": "\x00"}


def _escape_key(key: str) -> str:
    return _KEY_SPECIAL.sub(lambda m: f"%{ord(m.group()):02X}", key)


def _unescape_key(key: str) -> str:
    return _KEY_ESCAPED.sub(lambda m: _KEY_UNESCAPE[m.group(1)], key)


def _map_keys(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, dict):
        return {fn(k): _map_keys(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_keys(v, fn) for v in value]
    return value


def _to_stored(value: Any, where: str) -> Any:
    """Validate plain JSON data (as every backend does) and escape special keys."""
    text = to_json(value, where)
    data = json.loads(text)
    if any(c in text for c in "%.$") or "\\u0000" in text:
        data = _map_keys(data, _escape_key)
    return data


def _from_stored(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return _map_keys(value, _unescape_key)
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _object_id(task_id: Any) -> ObjectId | None:
    """The ObjectId of a task id string (lower-case hex, as the pool hands them out)."""
    if isinstance(task_id, ObjectId):
        return task_id
    if isinstance(task_id, str) and _OID_RE.fullmatch(task_id):
        return ObjectId(task_id)
    return None


# -- query translation -----------------------------------------------------------------------


def _and(parts: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [p for p in parts if p != _TRUE]
    if not parts:
        return _TRUE
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _or(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if any(p == _TRUE for p in parts):
        return _TRUE
    parts = [p for p in parts if p != _FALSE]
    if not parts:
        return _FALSE
    return parts[0] if len(parts) == 1 else {"$or": parts}


def _not(part: dict[str, Any]) -> dict[str, Any]:
    if part == _TRUE:
        return _FALSE
    if part == _FALSE:
        return _TRUE
    return {"$nor": [part]}


_INT64 = (-(2**63), 2**63 - 1)


def _bson_number(v: Any) -> Any:
    """A query number BSON can carry: ints beyond int64 become the float they equal (or None).

    No stored value is an int beyond int64 (BSON cannot hold one), so only a float can equal
    such a query value, and only when the float is exact; comparisons use the nearest float.
    """
    if isinstance(v, int) and not isinstance(v, bool) and not _INT64[0] <= v <= _INT64[1]:
        return float(v)
    return v


def _scalar_eq(path: str, q: Any) -> dict[str, Any]:
    """``path`` equals ``q`` (or is an array holding an equal element), never bool == number.

    MongoDB already keeps bools apart from numbers, but mongomock compares with Python's
    ``==`` (``True == 1``); the extra clauses, only used where that can matter (a bool, or
    the numbers 0 and 1), give the same answer on both.
    """
    if q is None or isinstance(q, str):
        return {path: q}
    if _bson_number(q) != q:  # a huge int no float equals exactly
        return _FALSE
    q = _bson_number(q)
    if isinstance(q, bool):
        return _or(
            [
                _and([{path: {"$not": {"$type": "array"}}}, {path: {"$type": "bool"}}, {path: q}]),
                {path: {"$elemMatch": {"$eq": q, "$type": "bool"}}},
            ]
        )
    if q not in (0, 1):
        return {path: q}
    return _or(
        [
            _and([{path: q}, {path: {"$not": {"$type": "bool"}}}]),
            {path: {"$elemMatch": {"$gte": q, "$lte": q, "$not": {"$type": "array"}}}},
        ]
    )


class _Translator:
    """Query conditions -> MongoDB filter with the semantics of ``Query.matches``."""

    def query(self, query: Any) -> dict[str, Any]:
        return _and([self.condition(c) for c in parse_query(query).conditions])

    def condition(self, c: Condition) -> dict[str, Any]:
        if c.target == "field":
            return self.field(c)
        return self.json_path(c)

    def field(self, c: Condition) -> dict[str, Any]:
        name = c.path[0]
        if c.op in (NE, NIN):
            return _not(self.field_positive(name, EQ if c.op == NE else IN, c.value))
        return self.field_positive(name, c.op, c.value)

    @staticmethod
    def field_positive(name: str, op: str, value: Any) -> dict[str, Any]:
        values = list(value) if op == IN else [value]
        if name == "id":
            oids = [o for o in (_object_id(v) for v in values) if o is not None]
            return {"_id": {"$in": oids}} if oids else _FALSE
        if op in COMPARISONS:
            return {name: {op: _bson_number(value)}}
        values = [_bson_number(v) for v in values if _bson_number(v) == v]
        return {name: {"$in": values}} if values else _FALSE

    def json_path(self, c: Condition) -> dict[str, Any]:
        root = "definition" if c.target == "def" else "metadata"
        parts = (root, *c.path)
        path = ".".join(parts)
        # Query.matches steps into objects only; MongoDB would also step through arrays, so
        # every proper prefix must not be an array for the path to be "present". The guards
        # come first in every $and/$or: mongomock evaluates in order and stops early, and
        # would otherwise index lists with components such as "-1".
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts))]
        through_array = _or([{p: {"$type": "array"}} for p in prefixes])
        not_through_array = _and([{p: {"$not": {"$type": "array"}}} for p in prefixes])
        # A prefix that is a scalar or null also makes the path missing (MongoDB knows this;
        # mongomock's null equality does not, hence the explicit clause).
        missing_prefix = _or(
            [through_array]
            + [{p: {"$exists": True, "$not": {"$type": "object"}}} for p in prefixes]
        )
        if c.op == EXISTS:
            present = _and([not_through_array, {path: {"$exists": True}}])
            return present if c.value else _not(present)
        if c.op in COMPARISONS:
            return _and([not_through_array, {path: {c.op: _bson_number(c.value)}}])
        values = list(c.value) if c.op in (IN, NIN) else [c.value]
        scalars = [v for v in values if v is not None]
        options = []
        if scalars:
            options.append(_and([not_through_array, _or([_scalar_eq(path, v) for v in scalars])]))
        if len(scalars) < len(values):  # null: stored null, an array holding null, or missing
            options.append(_or([missing_prefix, {path: None}]))
        positive = _or(options)
        return _not(positive) if c.op in (NE, NIN) else positive


def mongo_filter(query: Any) -> dict[str, Any]:
    """The MongoDB filter (without the pool) for a query dict, Query or None."""
    return _Translator().query(query)


# -- the backend -----------------------------------------------------------------------------


#: mongomock's find_one_and_update is not atomic between threads (a server's is); its
#: operations are serialised so that tests exercise the same guarantees.
_MOCK_LOCK = threading.RLock()


def _wrap_errors(method: F) -> F:
    """Turn driver errors into alphamill errors naming the redacted URL; retry lost connections."""

    @functools.wraps(method)
    def wrapper(self: MongoBackend, *args: Any, **kwargs: Any) -> Any:
        deadline: float | None = None
        delay = 0.05
        while True:
            try:
                if self.is_mongomock:
                    with _MOCK_LOCK:
                        return method(self, *args, **kwargs)
                result = method(self, *args, **kwargs)
                self._reached = True
                return result
            except AlphamillError:
                raise
            except ConnectionFailure as e:
                now = time.monotonic()
                # A server never reached (a mistyped URL) fails after one server-selection
                # timeout; one that answered before is waited for, as during a restart.
                budget = self.retry_seconds if self._reached else 0.0
                deadline = now + budget if deadline is None else deadline
                if now + delay > deadline:
                    raise PoolUnavailable(
                        f"pool {redact_url(self.url)}: MongoDB unavailable after retrying for "
                        f"{budget:g}s: {scrub(str(e), self.url)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except (BSONError, DocumentTooLarge, OverflowError) as e:
                raise PoolError(
                    f"pool {redact_url(self.url)}: value cannot be stored in MongoDB: {scrub(str(e), self.url)}"
                ) from None
            except PyMongoError as e:
                raise PoolError(f"pool {redact_url(self.url)}: {scrub(str(e), self.url)}") from None

    return wrapper  # type: ignore[return-value]


class MongoBackend(Backend):
    """Task pools in one MongoDB database; see the module docstring for the layout."""

    schemes = ("mongodb", "mongodb+srv")

    def __init__(
        self,
        url: str,
        client: Any = None,
        *,
        server_selection_timeout_ms: int = 5_000,
        retry_seconds: float = 30.0,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("mongodb://", "mongodb+srv://")):
            raise PoolError(f"pool URL {redact_url(str(url))!r}: expected mongodb://host:port/db")
        self.url = url
        self.db_name = self.parse_db_name(url)
        self.retry_seconds = retry_seconds
        self._timeout_ms = server_selection_timeout_ms
        self._own_client = client is None
        self._pid = os.getpid()
        self._client = client if client is not None else self._new_client()
        self.is_mongomock = type(self._client).__module__.split(".")[0] == "mongomock"
        self._indexes_ready = False
        self._reached = False

    @staticmethod
    def parse_db_name(url: str) -> str:
        """The database named by ``mongodb://host:port/<db>?...`` (required, validated)."""
        db = unquote(urlsplit(url).path.lstrip("/"))
        if not db:
            raise PoolError(
                f"pool URL {redact_url(url)!r}: no database name; expected mongodb://host:port/db "
                "(Qlib's task_db_name)"
            )
        if not _DB_NAME_RE.fullmatch(db):
            raise PoolError(
                f"pool URL {redact_url(url)!r}: invalid database name {db!r}; expected up to 63 "
                "letters, digits, '_' or '-'"
            )
        return db

    def _new_client(self) -> Any:
        try:
            return pymongo.MongoClient(
                self.url, serverSelectionTimeoutMS=self._timeout_ms, appname="alphamill", connect=False
            )
        except (PyMongoError, ValueError) as e:  # InvalidURI, ConfigurationError, bad options
            raise PoolError(f"pool URL {redact_url(self.url)!r}: {scrub(str(e), self.url)}") from None

    def __repr__(self) -> str:
        return f"MongoBackend({redact_url(self.url)!r})"

    @property
    def _db(self) -> Any:
        if self._own_client and self._pid != os.getpid():
            # MongoClient is not fork-safe: a forked child opens its own.
            self._client = self._new_client()
            self._pid = os.getpid()
        return self._client[self.db_name]

    @property
    def _tasks(self) -> Any:
        return self._db[TASKS]

    @property
    def _pools(self) -> Any:
        return self._db[POOLS]

    def _now(self) -> float:
        if self.is_mongomock:
            return time.time()
        try:
            reply = self._db.command("hello")
        except OperationFailure:  # servers older than 4.4.2
            reply = self._db.command("isMaster")
        local: datetime = reply["localTime"]
        if local.tzinfo is None:
            local = local.replace(tzinfo=timezone.utc)
        return local.timestamp()

    def _ensure_indexes(self) -> None:
        if self._indexes_ready:
            return
        for name, (keys, unique) in _INDEXES.items():
            self._tasks.create_index(keys, name=name, unique=unique)
        self._indexes_ready = True

    @staticmethod
    def _record(pool: str, doc: dict[str, Any]) -> TaskRecord:
        values = {f: doc.get(f) for f in _FIELDS}
        for name in ("definition", "result", "metadata"):
            values[name] = _from_stored(values[name])
        values["metadata"] = values["metadata"] or {}
        values["attempts"] = values["attempts"] or 0
        return TaskRecord(id=str(doc["_id"]), pool=pool, **values)

    def _filter(self, pool: str, query: Any, **extra: Any) -> dict[str, Any]:
        return _and([{"pool": pool, **extra}, mongo_filter(query)])

    # -- pools ---------------------------------------------------------------------------------
    @_wrap_errors
    def ensure_pool(self, pool: str, *, codec: str = "json") -> PoolInfo:
        validate_pool_name(pool)
        check_codec(codec)
        self._ensure_indexes()
        self._pools.update_one(
            {"_id": pool},
            {"$setOnInsert": {"codec": codec, "created_at": self._now()}},
            upsert=True,
        )
        info = self._pool_info(pool)
        assert info is not None
        return info

    def _pool_info(self, pool: str) -> PoolInfo | None:
        doc = self._pools.find_one({"_id": pool})
        return PoolInfo(pool, doc["codec"], doc["created_at"]) if doc else None

    @_wrap_errors
    def pool_info(self, pool: str) -> PoolInfo | None:
        validate_pool_name(pool)
        return self._pool_info(pool)

    @_wrap_errors
    def list_pools(self) -> list[str]:
        return sorted(d["_id"] for d in self._pools.find({}, {"_id": 1}))

    @_wrap_errors
    def drop_pool(self, pool: str) -> None:
        validate_pool_name(pool)
        self._tasks.delete_many({"pool": pool})
        self._pools.delete_one({"_id": pool})

    # -- inserting -------------------------------------------------------------------------------
    @_wrap_errors
    def insert_tasks(self, pool: str, tasks: Sequence[NewTask]) -> list[InsertResult]:
        validate_pool_name(pool)
        tasks = list(tasks)
        if not tasks:
            return []
        first: dict[str, int] = {}
        docs: list[dict[str, Any]] = []
        for i, t in enumerate(tasks):
            check_new_task(t, i)
            definition = _to_stored(t.definition, f"tasks[{i}].definition")
            metadata = _to_stored(t.metadata, f"tasks[{i}].metadata")
            if t.hash in first:
                continue
            first[t.hash] = i
            docs.append(
                {
                    "_id": ObjectId(),
                    "pool": pool,
                    "definition": definition,
                    "hash": t.hash,
                    "status": st.WAITING,
                    "priority": int(t.priority),
                    "result": None,
                    "attempts": 0,
                    "max_attempts": int(t.max_attempts),
                    "metadata": metadata,
                }
            )
        self.ensure_pool(pool)
        now = self._now()
        for d in docs:
            d["created_at"] = now
        mine = {d["hash"]: d["_id"] for d in docs}
        try:
            for s in range(0, len(docs), _INSERT_CHUNK):
                try:
                    self._tasks.insert_many(docs[s : s + _INSERT_CHUNK], ordered=False)
                except BulkWriteError as e:
                    others = [w for w in e.details.get("writeErrors", []) if w.get("code") != 11000]
                    if others or e.details.get("writeConcernErrors"):
                        raise PoolError(
                            f"task_pool {pool!r}: cannot store tasks: {others[0].get('errmsg') if others else e}"
                        ) from None
        except BaseException:
            # No transaction without a replica set: take back what this call inserted.
            self._tasks.delete_many({"_id": {"$in": list(mine.values())}})
            raise
        ids: dict[str, ObjectId] = {}
        hashes = list(first)
        for s in range(0, len(hashes), _FIND_CHUNK):
            cursor = self._tasks.find(
                {"pool": pool, "hash": {"$in": hashes[s : s + _FIND_CHUNK]}}, {"hash": 1}
            )
            ids.update((d["hash"], d["_id"]) for d in cursor)
        return [
            InsertResult(str(ids[t.hash]), ids[t.hash] == mine[t.hash] and first[t.hash] == i)
            for i, t in enumerate(tasks)
        ]

    @_wrap_errors
    def replace_definition(self, pool: str, task_id: str, definition: Any, hash: str) -> bool:
        validate_pool_name(pool)
        if not isinstance(hash, str) or not hash:
            raise PoolError(f"hash: expected a non-empty string, got {hash!r}")
        stored = _to_stored(definition, "definition")
        oid = _object_id(task_id)
        if oid is None:
            return False
        try:
            res = self._tasks.update_one(
                {"_id": oid, "pool": pool}, {"$set": {"definition": stored, "hash": hash}}
            )
        except DuplicateKeyError:
            raise PoolError(f"task_pool {pool!r}: another task already has hash {hash!r}") from None
        return res.matched_count > 0

    # -- the worker's operations ----------------------------------------------------------------
    @_wrap_errors
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
        qfilter = mongo_filter(query)
        now = self._now()
        filt = _and(
            [
                {"pool": pool, "status": from_status},
                {"$or": [{"not_before": None}, {"not_before": {"$lte": now}}]},
                qfilter,
            ]
        )
        claimed = []
        for _ in range(limit):
            doc = self._tasks.find_one_and_update(
                filt,
                {
                    "$set": {
                        "status": st.RUNNING,
                        "claimed_from": from_status,
                        "lease_token": uuid.uuid4().hex,
                        "lease_owner": worker.owner,
                        "lease_expires": now + float(lease_seconds),
                        "heartbeat_at": now,
                        "started_at": now,
                        "worker_host": worker.host,
                        "worker_pid": int(worker.pid),
                        "not_before": None,
                        "done_token": None,
                    },
                    "$inc": {"attempts": 1},
                },
                sort=_CLAIM_ORDER,
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(self._record(pool, doc))
        return claimed

    def _cas(self, pool: str, task_id: str, token: str) -> dict[str, Any] | None:
        oid = _object_id(task_id)
        if oid is None or not token:
            return None
        return {"_id": oid, "pool": pool, "lease_token": token, "status": st.RUNNING}

    @_wrap_errors
    def heartbeat(self, pool: str, task_id: str, token: str, lease_seconds: float) -> bool:
        validate_pool_name(pool)
        lease_seconds = check_lease_seconds(lease_seconds)
        cas = self._cas(pool, task_id, token)
        if cas is None:
            return False
        now = self._now()
        res = self._tasks.update_one(
            cas, {"$set": {"lease_expires": now + float(lease_seconds), "heartbeat_at": now}}
        )
        return res.matched_count > 0

    def _ended_by(self, pool: str, task_id: str, token: str) -> bool:
        """Whether ``token``'s lease was already ended (a retried write whose ack was lost)."""
        oid = _object_id(task_id)
        return self._tasks.find_one({"_id": oid, "pool": pool, "done_token": token}) is not None

    @_wrap_errors
    def complete_task(self, pool: str, task_id: str, token: str, *, status: str, result: Any) -> bool:
        validate_pool_name(pool)
        check_commit_status(status)
        stored = _to_stored(result, "result")
        cas = self._cas(pool, task_id, token)
        if cas is None:
            return False
        update = {
            "status": status,
            "result": stored,
            "finished_at": self._now(),
            "claimed_from": None,
            "not_before": None,
            "done_token": token,
            **_CLEAR_LEASE,
        }
        try:
            return self._tasks.update_one(cas, {"$set": update}).matched_count > 0
        except ConnectionFailure:
            return self._retry_end(pool, task_id, token, cas, update)

    def _retry_end(
        self, pool: str, task_id: str, token: str, cas: dict[str, Any], update: dict[str, Any]
    ) -> bool:
        """Re-send a lease-ending write once the server is back; succeed if the first landed."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        while True:
            time.sleep(delay)
            try:
                if self._tasks.update_one(cas, {"$set": update}).matched_count > 0:
                    return True
                return self._ended_by(pool, task_id, token)
            except ConnectionFailure:
                if time.monotonic() + delay > deadline:
                    raise
                delay = min(delay * 2, 2.0)

    @_wrap_errors
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
        cas = self._cas(pool, task_id, token)
        if cas is None:
            return False
        doc = self._tasks.find_one(cas, {"attempts": 1, "max_attempts": 1, "claimed_from": 1})
        if doc is None:
            return False
        now = self._now()
        attempts = int(doc.get("attempts") or 0)
        if error is None and not give_up:  # a plain return gives the attempt back
            attempts = max(attempts - 1, 0)
        update: dict[str, Any] = {
            "attempts": attempts,
            "claimed_from": None,
            "done_token": token,
            **_CLEAR_LEASE,
        }
        if give_up or (error is not None and attempts >= int(doc.get("max_attempts") or 0)):
            update.update(status=st.FAILED, not_before=None, finished_at=now)
        else:
            claimed_from = doc.get("claimed_from")
            update["status"] = claimed_from if claimed_from in st.CLAIMABLE else st.WAITING
            update["not_before"] = now + retry_delay if retry_delay > 0 else None
        if error is not None:
            update["last_error"] = stored_error(error)
        try:
            return self._tasks.update_one(cas, {"$set": update}).matched_count > 0
        except ConnectionFailure:
            return self._retry_end(pool, task_id, token, cas, update)

    @_wrap_errors
    def requeue_expired(self, pool: str) -> int:
        validate_pool_name(pool)
        now = self._now()
        expired = self._tasks.find(
            {"pool": pool, "status": st.RUNNING, "lease_expires": {"$lt": now}},
            {"attempts": 1, "max_attempts": 1, "claimed_from": 1, "lease_token": 1, "lease_owner": 1},
        )
        changed = 0
        for doc in list(expired):
            update: dict[str, Any] = {"not_before": None, "claimed_from": None, **_CLEAR_LEASE}
            attempts = int(doc.get("attempts") or 0)
            max_attempts = int(doc.get("max_attempts") or 0)
            if attempts >= max_attempts:
                update["status"] = st.FAILED
                update["finished_at"] = now
                update["last_error"] = (
                    f"{LEASE_EXPIRED_ERROR} ({attempts} of {max_attempts}; "
                    f"last owner {doc.get('lease_owner')})"
                )
            else:
                claimed_from = doc.get("claimed_from")
                update["status"] = claimed_from if claimed_from in st.CLAIMABLE else st.WAITING
            cas = {
                "_id": doc["_id"],
                "status": st.RUNNING,
                "lease_token": doc.get("lease_token"),
                "lease_expires": {"$lt": now},
            }
            changed += self._tasks.update_one(cas, {"$set": update}).matched_count
        return changed

    # -- reading ------------------------------------------------------------------------------------
    @_wrap_errors
    def get_tasks(self, pool: str, ids: Sequence[str]) -> list[TaskRecord]:
        validate_pool_name(pool)
        wanted = [_object_id(i) for i in normalize_ids(ids)]
        valid = list({o for o in wanted if o is not None})
        if not valid:
            return []
        found = {d["_id"]: d for d in self._tasks.find({"_id": {"$in": valid}, "pool": pool})}
        return [self._record(pool, found[o]) for o in wanted if o in found]

    @_wrap_errors
    def find_tasks(
        self, pool: str, query: Any, *, limit: int | None = None, with_definition: bool = True
    ) -> list[TaskRecord]:
        validate_pool_name(pool)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise PoolError(f"limit: expected a non-negative integer or None, got {limit!r}")
        projection = None if with_definition else {"definition": 0}
        cursor = self._tasks.find(self._filter(pool, query), projection).sort(_ORDER)
        if limit is not None:
            if limit == 0:
                return []
            cursor = cursor.limit(limit)
        return [self._record(pool, d) for d in cursor]

    @_wrap_errors
    def count_tasks(self, pool: str, query: Any) -> dict[str, int]:
        validate_pool_name(pool)
        rows = self._tasks.aggregate(
            [{"$match": self._filter(pool, query)}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        )
        return {r["_id"]: int(r["n"]) for r in rows}

    # -- administration -------------------------------------------------------------------------------
    @_wrap_errors
    def delete_tasks(self, pool: str, query: Any) -> int:
        validate_pool_name(pool)
        return self._tasks.delete_many(self._filter(pool, query)).deleted_count

    @_wrap_errors
    def set_status(self, pool: str, query: Any, to_status: str) -> int:
        validate_pool_name(pool)
        check_admin_status(to_status)
        filt = self._filter(pool, query)
        update: dict[str, Any] = {
            "status": to_status,
            "not_before": None,
            "claimed_from": None,
            **_CLEAR_LEASE,
        }
        if to_status in st.CLAIMABLE:  # fresh attempts, not finished
            update.update(attempts=0, finished_at=None)
            return self._tasks.update_many(filt, {"$set": update}).matched_count
        # Other targets keep their finishing time, or get one: select first (the filter may
        # name the status that is about to change), then update by id.
        ids = [d["_id"] for d in self._tasks.find(filt, {"_id": 1})]
        if not ids:
            return 0
        self._tasks.update_many(
            {"_id": {"$in": ids}, "finished_at": None}, {"$set": {"finished_at": self._now()}}
        )
        return self._tasks.update_many({"_id": {"$in": ids}}, {"$set": update}).matched_count

    @_wrap_errors
    def set_priority(self, pool: str, query: Any, priority: int) -> int:
        validate_pool_name(pool)
        check_priority(priority)
        res = self._tasks.update_many(self._filter(pool, query), {"$set": {"priority": priority}})
        return res.matched_count

    # -- the store ------------------------------------------------------------------------------------
    @_wrap_errors
    def now(self) -> float:
        return self._now()

    def doctor(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "backend": "mongomock" if self.is_mongomock else "mongodb",
            "url": redact_url(self.url),
            "database": self.db_name,
            "clock": "process clock (mongomock)" if self.is_mongomock else "server hello.localTime",
        }
        problems: list[str] = []
        try:
            db = self._db
            if not self.is_mongomock:
                report["server_version"] = db.command("buildInfo").get("version")
                status = db.command("connectionStatus", showPrivileges=True)
                auth = status.get("authInfo", {})
                report["users"] = [u.get("user") for u in auth.get("authenticatedUsers", [])]
                report["privileges"] = sorted(
                    {a for p in auth.get("authenticatedUserPrivileges", []) for a in p.get("actions", [])}
                )
            report["indexes"] = sorted(self._tasks.index_information())
            report["pools"] = len(self.list_pools())
            report["server_time"] = self._now()
        except (PyMongoError, AlphamillError) as e:
            problems.append(scrub(str(e), self.url))
        missing = [name for name in _INDEXES if name not in report.get("indexes", _INDEXES)]
        problems += [f"missing index {name} on {TASKS} (created by ensure_pool)" for name in missing]
        report["problems"] = problems
        report["ok"] = not problems
        return report

    def close(self) -> None:
        if self._own_client and self._pid == os.getpid():
            self._client.close()


__all__ = ["MongoBackend", "mongo_filter"]
