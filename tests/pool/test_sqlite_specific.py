"""SQLite-only guarantees: many processes on one file, busy handling, URLs, fork safety, doctor."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import threading
import time

import pytest

from alphamill.errors import PoolError, PoolUnavailable
from alphamill.task.backends import open_backend
from alphamill.task.backends.base import NewTask, WorkerIdentity
from alphamill.task.backends.sqlite import SQLiteBackend, parse_sqlite_url
from alphamill.task.query import parse_query
from alphamill.task.status import DONE, RUNNING, WAITING

POOL = "shared"
ALL = parse_query(None)


def _tasks(n: int) -> list[NewTask]:
    return [NewTask({"model": {"kwargs": {"i": i}}}, f"h{i}") for i in range(n)]


def _drain(url: str, n: int, barrier, out) -> None:
    """Child process: claim and commit until the pool is empty; report (id, token) pairs."""
    done, errors = [], []
    try:
        backend = open_backend(url, busy_timeout=0.05)
        barrier.wait(timeout=60)  # start together: a slow (spawned) start must not miss the race
        ident = WorkerIdentity(f"proc{n}", "host", os.getpid())
        while True:
            got = backend.claim_tasks(POOL, worker=ident, query=ALL, from_status=WAITING,
                                      lease_seconds=60, limit=1 + n % 2)
            if not got:
                break
            for rec in got:
                if not backend.complete_task(POOL, rec.id, rec.lease_token, status=DONE,
                                             result={"by": n}):
                    errors.append(f"commit refused for {rec.id}")
                done.append((rec.id, rec.lease_token, n))
        backend.close()
    except BaseException as exc:  # reported to the parent
        errors.append(repr(exc))
    out.put((done, errors))


def _insert_same(url: str, barrier, out) -> None:
    try:
        backend = open_backend(url, busy_timeout=0.05)
        barrier.wait(timeout=30)
        res = backend.insert_tasks(POOL, _tasks(1000))
        out.put(([r.id for r in res], sum(r.created for r in res), None))
    except BaseException as exc:
        out.put((None, 0, repr(exc)))


def _collect(procs, out, n):
    results = [out.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_many_processes_never_double_claim(tmp_path, method):
    url = f"sqlite:///{tmp_path}/pool.db"
    backend = open_backend(url)
    backend.ensure_pool(POOL)
    n_tasks = 600 if method == "fork" else 300
    backend.insert_tasks(POOL, _tasks(n_tasks))
    ctx = mp.get_context(method)
    out = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_drain, args=(url, n, barrier, out)) for n in range(4)]
    for p in procs:
        p.start()
    results = _collect(procs, out, 4)
    errors = [e for _, errs in results for e in errs]
    assert errors == []  # in particular no "database is locked"
    claims = [c for done, _ in results for c in done]
    ids = [c[0] for c in claims]
    assert len(ids) == n_tasks and len(set(ids)) == n_tasks
    assert len({c[1] for c in claims}) == n_tasks  # every lease token is unique
    assert backend.count_tasks(POOL, ALL) == {DONE: n_tasks}
    by = {r.id: r.result["by"] for r in backend.find_tasks(POOL, ALL)}
    assert all(by[i] == n for i, _, n in claims)  # each result was written by its claimer
    assert len({n for _, _, n in claims}) > 1  # the processes really competed


def test_four_processes_insert_the_same_tasks(tmp_path):
    url = f"sqlite:///{tmp_path}/pool.db"
    backend = open_backend(url)
    backend.ensure_pool(POOL)
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_insert_same, args=(url, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = _collect(procs, out, 4)
    assert [err for _, _, err in results] == [None] * 4
    assert backend.count_tasks(POOL, ALL) == {WAITING: 1000}
    assert sum(created for _, created, _ in results) == 1000
    first = results[0][0]
    assert all(ids == first for ids, _, _ in results)  # everyone got the same ids, in order


def _use_inherited(backend: SQLiteBackend, out) -> None:
    try:
        got = backend.claim_tasks(POOL, worker=WorkerIdentity("child", "h", os.getpid()), query=ALL,
                                  from_status=WAITING, lease_seconds=30)
        out.put(([r.id for r in got], None))
    except BaseException as exc:
        out.put(([], repr(exc)))


def test_backend_survives_fork(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path}/pool.db")
    backend.ensure_pool(POOL)
    backend.insert_tasks(POOL, _tasks(3))
    assert backend.count_tasks(POOL, ALL) == {WAITING: 3}  # the parent's connection is open
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=_use_inherited, args=(backend, out))
    p.start()
    ids, err = out.get(timeout=60)
    p.join(timeout=30)
    assert err is None and len(ids) == 1
    # the child's exit did not break the parent's connection
    assert backend.count_tasks(POOL, ALL) == {WAITING: 2, RUNNING: 1}
    assert len(backend.claim_tasks(POOL, worker=WorkerIdentity("p", "h", 1), query=ALL,
                                   from_status=WAITING, lease_seconds=30, limit=5)) == 2


def _hold_write_lock(path: str, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_busy_database_is_retried_not_reported(tmp_path):
    path = str(tmp_path / "pool.db")
    backend = SQLiteBackend(f"sqlite:///{path}", busy_timeout=0.05, busy_limit=30)
    backend.ensure_pool(POOL)
    backend.insert_tasks(POOL, _tasks(2))
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 0.6, started))
    holder.start()
    started.wait(5)
    t0 = time.monotonic()
    got = backend.claim_tasks(POOL, worker=WorkerIdentity("w", "h", 1), query=ALL,
                              from_status=WAITING, lease_seconds=30)
    waited = time.monotonic() - t0
    holder.join()
    assert len(got) == 1 and waited >= 0.3  # it waited for the lock instead of failing


def test_busy_beyond_the_bound_raises_pool_unavailable(tmp_path):
    path = str(tmp_path / "pool.db")
    backend = SQLiteBackend(f"sqlite:///{path}?busy_limit=0.3&busy_timeout=0.05")
    assert backend.busy_limit == 0.3
    backend.ensure_pool(POOL)
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, 1.2, started))
    holder.start()
    started.wait(5)
    with pytest.raises(PoolUnavailable) as info:
        backend.insert_tasks(POOL, _tasks(1))
    holder.join()
    assert "busy" in str(info.value) and path in str(info.value)
    assert backend.insert_tasks(POOL, _tasks(1))[0].created  # fine once the lock is gone


def test_url_forms(tmp_path, monkeypatch):
    assert parse_sqlite_url("sqlite:///rel/dir/pool.db")[0] == "rel/dir/pool.db"
    assert parse_sqlite_url("sqlite:////abs/pool.db")[0] == "/abs/pool.db"
    assert parse_sqlite_url("sqlite:///p.db?busy_limit=5")[1] == {"busy_limit": "5"}
    monkeypatch.chdir(tmp_path)
    rel = open_backend("sqlite:///nested/deeper/pool.db")  # parent folders are created
    assert rel.path == str(tmp_path / "nested" / "deeper" / "pool.db")
    assert os.path.exists(rel.path)
    absolute = open_backend(f"sqlite:///{tmp_path}/a/b/c.db")
    assert absolute.path == str(tmp_path / "a" / "b" / "c.db")
    for bad in ("sqlite://host/pool.db", "sqlite://", "sqlite:///"):
        with pytest.raises(PoolError, match="sqlite:///"):
            open_backend(bad)
    with pytest.raises(PoolError, match="busy_limit"):
        open_backend(f"sqlite:///{tmp_path}/x.db?busy_limit=soon")


def test_unopenable_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "is_a_dir.db"
    folder.mkdir()
    with pytest.raises(PoolUnavailable, match="is_a_dir.db"):
        open_backend(f"sqlite:///{folder}")


def test_doctor_and_indexes(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path}/pool.db")
    backend.ensure_pool(POOL)
    info = backend.doctor()
    assert info["journal_mode"] == "wal" and info["synchronous"] == "NORMAL"
    assert info["sqlite_version"] == sqlite3.sqlite_version
    assert info["path"] == str(tmp_path / "pool.db")
    assert info["writable"] is True and info["ok"] is True
    assert {"tasks_pool_hash", "tasks_claim"} <= set(info["indexes"])
    assert info["missing_indexes"] == [] and info["pools"] == [POOL]


def test_count_and_claim_use_indexes(tmp_path):
    path = tmp_path / "pool.db"
    open_backend(f"sqlite:///{path}").ensure_pool(POOL)
    conn = sqlite3.connect(path)
    count_plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT status, COUNT(*) FROM tasks WHERE pool = ? GROUP BY status", (POOL,)))
    claim_plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE pool = ? AND status = ? "
        "ORDER BY priority DESC, id LIMIT 1", (POOL, WAITING)))
    conn.close()
    assert "tasks_claim" in count_plan and "tasks_claim" in claim_plan
    assert "TEMP B-TREE" not in claim_plan  # the order comes from the index, no sort


def test_times_come_from_the_database_clock(tmp_path):
    backend = open_backend(f"sqlite:///{tmp_path}/pool.db")
    conn = sqlite3.connect(tmp_path / "pool.db")
    (db_now,) = conn.execute("SELECT (julianday('now') - 2440587.5) * 86400.0").fetchone()
    conn.close()
    assert abs(backend.now() - db_now) < 1
    assert abs(backend.now() - time.time()) < 2
