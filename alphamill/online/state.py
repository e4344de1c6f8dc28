"""The online state: which models serve each strategy, the switch history, stored rows.

It lives in the same store as the task pool (the ``pool_url`` setting: SQLite, PostgreSQL or
MongoDB), in its own tables/collections, under one *pool name* (validated with
:func:`~alphamill.task.backends.base.validate_pool_name`), so several machines see one truth.

The interface is deliberately small - one method per operation:

* :meth:`OnlineStateStore.get_state` - a strategy's versioned document (``online`` and
  ``trained`` model references, a free ``info`` dict);
* :meth:`OnlineStateStore.switch` - compare-and-set: replaces the whole document and appends
  one history entry **in one atomic write**, only if the stored version is still
  ``expected_version``; so a crash leaves either the old or the new model set online, never
  zero or two, and two writers cannot both switch from the same version;
* :meth:`OnlineStateStore.put_rows` / :meth:`get_rows` - per-date rows under a key (model
  predictions past the training date, the merged signal); a date already stored is never
  written again (insert-or-ignore on ``(pool, key, date)``), so reruns add nothing and a
  date can never appear twice;
* :meth:`OnlineStateStore.get_watermark` / :meth:`set_watermark` - the last date done;
* :meth:`OnlineStateStore.acquire_lock` / :meth:`release_lock` - the routine lock. Expiry
  is judged by the database clock; a lock whose holder ran on this host and whose process
  is gone is taken over at once (a routine killed by SIGKILL does not block the next one).

Every SQL statement is parameterised.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alphamill.config import redact_url
from alphamill.errors import PoolError
from alphamill.task.backends.base import validate_pool_name

__all__ = [
    "OnlineStateStore",
    "SQLiteStateStore",
    "PostgresStateStore",
    "MongoStateStore",
    "StrategyState",
    "open_state_store",
]


@dataclass
class StrategyState:
    """A strategy's stored state; ``version`` 0 means nothing stored yet."""

    strategy: str
    version: int = 0
    online: list[dict[str, Any]] = field(default_factory=list)
    trained: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    updated_at: float | None = None

    def doc(self) -> dict[str, Any]:
        return {"online": self.online, "trained": self.trained, "info": self.info}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _check_key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise PoolError(f"{what}: expected a non-empty name of up to 200 characters, got {value!r}")
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner() -> tuple[str, str, int]:
    """``(owner, host, pid)`` identifying this process as a lock holder."""
    host, pid = socket.gethostname(), os.getpid()
    return f"{host}:{pid}:{threading.get_ident()}", host, pid


class OnlineStateStore(ABC):
    """The online state of one pool (see the module docstring)."""

    def __init__(self, pool: str):
        self.pool = validate_pool_name(pool)

    @abstractmethod
    def get_state(self, strategy: str) -> StrategyState: ...

    @abstractmethod
    def list_strategies(self) -> list[str]: ...

    @abstractmethod
    def switch(self, strategy: str, expected_version: int, online: list[dict], trained: list[dict],
               info: Mapping[str, Any], history_entry: Mapping[str, Any]) -> bool:
        """Replace the state if its version is ``expected_version``; append the entry. Atomic."""

    @abstractmethod
    def history(self, strategy: str | None = None) -> list[dict[str, Any]]:
        """Switch history, oldest first (each entry has ``strategy``, ``version``, ``at``)."""

    @abstractmethod
    def put_rows(self, key: str, rows: Mapping[str, Any]) -> int:
        """Store ``{date: payload}``; dates already stored are left as they are. Returns
        how many were new."""

    @abstractmethod
    def get_rows(self, key: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        """``{date: payload}`` for ``start <= date <= end`` (ISO dates), sorted by date."""

    @abstractmethod
    def delete_rows(self, key: str) -> int: ...

    @abstractmethod
    def get_watermark(self, key: str) -> str | None: ...

    @abstractmethod
    def set_watermark(self, key: str, value: str) -> None: ...

    @abstractmethod
    def _try_lock(self, name: str, owner: str, host: str, pid: int, ttl: float) -> bool: ...

    @abstractmethod
    def _lock_holder(self, name: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _drop_lock(self, name: str, owner: str) -> None: ...

    def acquire_lock(self, name: str, ttl: float = 3600.0, owner: str | None = None) -> bool:
        """Take ``name`` for ``ttl`` seconds (DB clock); ``False`` if someone else holds it."""
        me, host, pid = lock_owner()
        owner = owner or me
        holder = self._lock_holder(name)
        if (
            holder is not None
            and holder["owner"] != owner
            and holder.get("host") == host
            and not _pid_alive(int(holder.get("pid") or 0))
        ):
            self._drop_lock(name, holder["owner"])  # its process died (e.g. SIGKILL)
        return self._try_lock(name, owner, host, pid, float(ttl))

    def release_lock(self, name: str, owner: str | None = None) -> None:
        self._drop_lock(name, owner or lock_owner()[0])

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        """``{"owner", "host", "pid", "expires"}`` of the current holder, or None."""
        return self._lock_holder(name)

    @abstractmethod
    def close(self) -> None:
        """Release connections (the store can be reopened)."""

    def __enter__(self) -> OnlineStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- SQL (SQLite, PostgreSQL)


class _SQLStateStore(OnlineStateStore):
    """Shared SQL; statements use ``?`` placeholders (translated for psycopg)."""

    NOW = ""
    SCHEMA: tuple[str, ...] = ()

    @abstractmethod
    def _tx(self) -> contextlib.AbstractContextManager[Any]:
        """A write transaction; yields ``exe(sql, params) -> cursor``."""

    @abstractmethod
    def _q(self, sql: str, params: tuple = ()) -> list[tuple]: ...

    def get_state(self, strategy: str) -> StrategyState:
        _check_key(strategy, "strategy")
        rows = self._q("SELECT version, doc, updated_at FROM online_state WHERE pool = ? AND strategy = ?",
                       (self.pool, strategy))
        if not rows:
            return StrategyState(strategy)
        version, doc, at = rows[0]
        d = json.loads(doc)
        return StrategyState(strategy, int(version), d.get("online", []), d.get("trained", []),
                             d.get("info", {}), float(at))

    def list_strategies(self) -> list[str]:
        rows = self._q("SELECT strategy FROM online_state WHERE pool = ? ORDER BY strategy", (self.pool,))
        return [r[0] for r in rows]

    def switch(self, strategy, expected_version, online, trained, info, history_entry) -> bool:
        _check_key(strategy, "strategy")
        doc = _dumps({"online": list(online), "trained": list(trained), "info": dict(info)})
        with self._tx() as exe:
            if expected_version == 0:
                cur = exe(f"INSERT INTO online_state (pool, strategy, version, doc, updated_at) "
                          f"VALUES (?, ?, 1, ?, {self.NOW}) ON CONFLICT DO NOTHING",
                          (self.pool, strategy, doc))
            else:
                cur = exe(f"UPDATE online_state SET version = version + 1, doc = ?, updated_at = {self.NOW} "
                          "WHERE pool = ? AND strategy = ? AND version = ?",
                          (doc, self.pool, strategy, int(expected_version)))
            if cur.rowcount != 1:
                return False
            exe(f"INSERT INTO online_history (pool, strategy, version, at, entry) "
                f"VALUES (?, ?, ?, {self.NOW}, ?)",
                (self.pool, strategy, int(expected_version) + 1, _dumps(dict(history_entry))))
        return True

    def history(self, strategy: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT strategy, version, at, entry FROM online_history WHERE pool = ?"
        params: tuple = (self.pool,)
        if strategy is not None:
            sql += " AND strategy = ?"
            params += (strategy,)
        rows = self._q(sql + " ORDER BY id", params)
        return [{**json.loads(e), "strategy": s, "version": int(v), "at": float(a)} for s, v, a, e in rows]

    def put_rows(self, key: str, rows: Mapping[str, Any]) -> int:
        _check_key(key, "key")
        n = 0
        with self._tx() as exe:
            for date, payload in sorted(rows.items()):
                cur = exe("INSERT INTO online_rows (pool, key, date, payload) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT DO NOTHING", (self.pool, key, str(date), _dumps(payload)))
                n += max(cur.rowcount, 0)
        return n

    def get_rows(self, key: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        sql = "SELECT date, payload FROM online_rows WHERE pool = ? AND key = ?"
        params: tuple = (self.pool, key)
        if start is not None:
            sql += " AND date >= ?"
            params += (str(start),)
        if end is not None:
            sql += " AND date <= ?"
            params += (str(end),)
        return {d: json.loads(p) for d, p in self._q(sql + " ORDER BY date", params)}

    def delete_rows(self, key: str) -> int:
        with self._tx() as exe:
            return exe("DELETE FROM online_rows WHERE pool = ? AND key = ?", (self.pool, key)).rowcount

    def get_watermark(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM online_marks WHERE pool = ? AND key = ?", (self.pool, key))
        return rows[0][0] if rows else None

    def set_watermark(self, key: str, value: str) -> None:
        _check_key(key, "key")
        with self._tx() as exe:
            exe("INSERT INTO online_marks (pool, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (pool, key) DO UPDATE SET value = excluded.value", (self.pool, key, str(value)))

    def _try_lock(self, name, owner, host, pid, ttl) -> bool:
        with self._tx() as exe:
            cur = exe(
                f"INSERT INTO online_locks (pool, name, owner, host, pid, expires) "
                f"VALUES (?, ?, ?, ?, ?, {self.NOW} + ?) ON CONFLICT (pool, name) DO UPDATE SET "
                "owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
                "expires = excluded.expires "
                f"WHERE online_locks.expires < {self.NOW} OR online_locks.owner = excluded.owner",
                (self.pool, name, owner, host, pid, ttl))
            return cur.rowcount == 1

    def _lock_holder(self, name) -> dict[str, Any] | None:
        rows = self._q(f"SELECT owner, host, pid, expires FROM online_locks WHERE pool = ? AND name = ? "
                       f"AND expires >= {self.NOW}", (self.pool, name))
        if not rows:
            return None
        o, h, p, e = rows[0]
        return {"owner": o, "host": h, "pid": int(p), "expires": float(e)}

    def _drop_lock(self, name, owner) -> None:
        with self._tx() as exe:
            exe("DELETE FROM online_locks WHERE pool = ? AND name = ? AND owner = ?", (self.pool, name, owner))


_TABLES = """
CREATE TABLE IF NOT EXISTS online_state (
    pool TEXT NOT NULL, strategy TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (pool, strategy));
CREATE TABLE IF NOT EXISTS online_history (
    id {autoinc}, pool TEXT NOT NULL, strategy TEXT NOT NULL, version INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS online_history_pool ON online_history (pool, strategy, id);
CREATE TABLE IF NOT EXISTS online_rows (
    pool TEXT NOT NULL, key TEXT NOT NULL, date TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (pool, key, date));
CREATE TABLE IF NOT EXISTS online_marks (
    pool TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (pool, key));
CREATE TABLE IF NOT EXISTS online_locks (
    pool TEXT NOT NULL, name TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, expires DOUBLE PRECISION NOT NULL, PRIMARY KEY (pool, name))
"""


class SQLiteStateStore(_SQLStateStore):
    """State in the pool's SQLite file (WAL; every write one ``BEGIN IMMEDIATE``)."""

    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: str, pool: str, busy_timeout: float = 60.0):
        super().__init__(pool)
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.RLock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_TABLES.format(autoinc="INTEGER PRIMARY KEY AUTOINCREMENT"))
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn.execute
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __repr__(self) -> str:
        return f"SQLiteStateStore({self.path!r}, pool={self.pool!r})"


class PostgresStateStore(_SQLStateStore):
    """State in the pool's PostgreSQL database (the schema of the URL's ``search_path``)."""

    NOW = "extract(epoch from clock_timestamp())"

    def __init__(self, url: str, pool: str, connect_timeout: float = 10.0):
        super().__init__(pool)
        self.url = url
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.RLock()

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed or self._pid != os.getpid():
            try:
                conn = psycopg.connect(self.url, autocommit=True,
                                       connect_timeout=max(1, round(self.connect_timeout)),
                                       application_name="alphamill-online")
            except psycopg.OperationalError as e:
                raise PoolError(f"pool {redact_url(self.url)}: cannot connect: "
                                f"{redact_url(str(e)).strip()}") from None
            path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
            first = path.split(",")[0].strip().strip('"')
            if first and first != "$user" and first.replace("_", "").isalnum():
                from psycopg import sql

                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(first)))
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('alphamill_online_schema'))")
                for stmt in _TABLES.format(autoinc="BIGSERIAL PRIMARY KEY").split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @staticmethod
    def _pg(sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                yield lambda sql, params=(): conn.execute(self._pg(sql), params)

    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection().execute(self._pg(sql), params).fetchall()

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def __repr__(self) -> str:
        return f"PostgresStateStore({redact_url(self.url)!r}, pool={self.pool!r})"


# ---------------------------------------------------------------- MongoDB


class MongoStateStore(OnlineStateStore):
    """State in the pool's MongoDB database. A strategy's state and its history are one
    document, so a switch (``find_one_and_update`` on the version) is atomic."""

    def __init__(self, url: str, pool: str, client: Any = None):
        super().__init__(pool)
        from alphamill.task.backends.mongo import MongoBackend

        self.url = url
        self._db_name = MongoBackend.parse_db_name(url)
        if client is None:
            import pymongo

            client = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000, tz_aware=True)
        self._client = client
        self._mock = type(client).__module__.split(".")[0] == "mongomock"
        self._db = client[self._db_name]

    def _now(self) -> float:
        if self._mock:
            return time.time()
        local = self._db.command("hello")["localTime"]
        if local.tzinfo is None:
            from datetime import timezone

            local = local.replace(tzinfo=timezone.utc)
        return local.timestamp()

    def _sid(self, strategy: str) -> str:
        return f"{self.pool}\x1f{_check_key(strategy, 'strategy')}"

    def get_state(self, strategy: str) -> StrategyState:
        d = self._db.online_state.find_one({"_id": self._sid(strategy)})
        if d is None:
            return StrategyState(strategy)
        return StrategyState(strategy, int(d["version"]), d["doc"].get("online", []),
                             d["doc"].get("trained", []), d["doc"].get("info", {}), d["updated_at"])

    def list_strategies(self) -> list[str]:
        return sorted(d["strategy"] for d in self._db.online_state.find({"pool": self.pool}, {"strategy": 1}))

    def switch(self, strategy, expected_version, online, trained, info, history_entry) -> bool:
        from pymongo.errors import DuplicateKeyError

        now = self._now()
        doc = json.loads(_dumps({"online": list(online), "trained": list(trained), "info": dict(info)}))
        entry = {"entry": _dumps(dict(history_entry)), "version": int(expected_version) + 1, "at": now}
        if expected_version == 0:
            try:
                self._db.online_state.insert_one({"_id": self._sid(strategy), "pool": self.pool,
                                                  "strategy": strategy, "version": 1, "doc": doc,
                                                  "updated_at": now, "history": [entry]})
            except DuplicateKeyError:
                return False
            return True
        res = self._db.online_state.find_one_and_update(
            {"_id": self._sid(strategy), "version": int(expected_version)},
            {"$set": {"doc": doc, "updated_at": now}, "$inc": {"version": 1}, "$push": {"history": entry}})
        return res is not None

    def history(self, strategy: str | None = None) -> list[dict[str, Any]]:
        q: dict[str, Any] = {"pool": self.pool}
        if strategy is not None:
            q["strategy"] = _check_key(strategy, "strategy")
        out = []
        for d in self._db.online_state.find(q):
            for h in d.get("history", []):
                out.append({**json.loads(h["entry"]), "strategy": d["strategy"],
                            "version": h["version"], "at": h["at"]})
        return sorted(out, key=lambda e: (e["at"], e["version"]))

    def _rid(self, key: str, date: str) -> str:
        return f"{self.pool}\x1f{key}\x1f{date}"

    def put_rows(self, key: str, rows: Mapping[str, Any]) -> int:
        from pymongo.errors import BulkWriteError, DuplicateKeyError

        _check_key(key, "key")
        docs = [{"_id": self._rid(key, str(d)), "pool": self.pool, "key": key, "date": str(d),
                 "payload": _dumps(p)} for d, p in sorted(rows.items())]
        if not docs:
            return 0
        try:
            return len(self._db.online_rows.insert_many(docs, ordered=False).inserted_ids)
        except BulkWriteError as e:
            return int(e.details.get("nInserted", 0))
        except DuplicateKeyError:
            return 0

    def get_rows(self, key: str, start: str | None = None, end: str | None = None) -> dict[str, Any]:
        q: dict[str, Any] = {"pool": self.pool, "key": _check_key(key, "key")}
        rng: dict[str, str] = {}
        if start is not None:
            rng["$gte"] = str(start)
        if end is not None:
            rng["$lte"] = str(end)
        if rng:
            q["date"] = rng
        docs = self._db.online_rows.find(q).sort("date", 1)
        return {d["date"]: json.loads(d["payload"]) for d in docs}

    def delete_rows(self, key: str) -> int:
        return self._db.online_rows.delete_many({"pool": self.pool, "key": _check_key(key, "key")}).deleted_count

    def get_watermark(self, key: str) -> str | None:
        d = self._db.online_marks.find_one({"_id": self._rid(key, "")})
        return None if d is None else d["value"]

    def set_watermark(self, key: str, value: str) -> None:
        self._db.online_marks.update_one({"_id": self._rid(_check_key(key, "key"), "")},
                                         {"$set": {"value": str(value), "pool": self.pool}}, upsert=True)

    def _lid(self, name: str) -> str:
        return f"{self.pool}\x1f{_check_key(name, 'lock')}"

    def _try_lock(self, name, owner, host, pid, ttl) -> bool:
        from pymongo.errors import DuplicateKeyError

        now = self._now()
        try:
            res = self._db.online_locks.find_one_and_update(
                {"_id": self._lid(name), "$or": [{"expires": {"$lt": now}}, {"owner": owner}]},
                {"$set": {"owner": owner, "host": host, "pid": pid, "expires": now + ttl}},
                upsert=True)
        except DuplicateKeyError:
            return False
        return res is not None or self._db.online_locks.find_one(
            {"_id": self._lid(name), "owner": owner}) is not None

    def _lock_holder(self, name) -> dict[str, Any] | None:
        d = self._db.online_locks.find_one({"_id": self._lid(name), "expires": {"$gte": self._now()}})
        if d is None:
            return None
        return {"owner": d["owner"], "host": d["host"], "pid": int(d["pid"]), "expires": float(d["expires"])}

    def _drop_lock(self, name, owner) -> None:
        self._db.online_locks.delete_one({"_id": self._lid(name), "owner": owner})

    def close(self) -> None:
        """The client belongs to the caller or lives with the process; nothing to release."""
        return None

    def __repr__(self) -> str:
        return f"MongoStateStore({redact_url(self.url)!r}, pool={self.pool!r})"


def open_state_store(pool: str, url: str | None = None, **kwargs: Any) -> OnlineStateStore:
    """The online-state store of ``pool`` in the store at ``url`` (default: ``pool_url``)."""
    from alphamill.config import get_setting

    url = get_setting("pool_url", url)
    if not isinstance(url, str):
        raise PoolError(f"pool URL {url!r}: expected a string such as sqlite:///path.db")
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from alphamill.task.backends.sqlite import parse_sqlite_url

        return SQLiteStateStore(parse_sqlite_url(url)[0], pool, **kwargs)
    if scheme == "memory":
        return SQLiteStateStore(":memory:", pool)
    if scheme in ("postgresql", "postgres"):
        return PostgresStateStore(url, pool, **kwargs)
    if scheme in ("mongodb", "mongodb+srv"):
        return MongoStateStore(url, pool, **kwargs)
    raise PoolError(f"pool URL {redact_url(url)!r}: unsupported scheme {scheme!r}; expected "
                    "sqlite:///path.db, postgresql://..., mongodb://host:port/db")
