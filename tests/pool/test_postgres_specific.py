"""PostgreSQL-only behaviour: real processes, killed connections, schemas and redaction.

The conformance suite covers the storage contract; these tests cover what only a server can
show: several processes claiming at once, connections terminated under load
(``pg_terminate_backend``), the schema named in the URL being created, and passwords never
leaking from connection errors.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import traceback
import uuid

import psycopg
import pytest

from alphamill.errors import PoolError, PoolUnavailable
from alphamill.task.backends import open_backend
from alphamill.task.backends.base import NewTask, WorkerIdentity
from alphamill.task.backends.postgres import PostgresBackend, where_clause
from alphamill.task.query import parse_query
from alphamill.task.status import DONE, RUNNING, WAITING
from tests.pool.conftest import PG_URL, drop_pg_schema, pg_url_with_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_schema):
    backend = PostgresBackend(pg_url_with_schema(pg_schema))
    yield backend
    backend.close()


@pytest.fixture
def pool(pg):
    name = f"p_{uuid.uuid4().hex[:12]}"
    pg.ensure_pool(name)
    yield name
    pg.drop_pool(name)


def _terminate(schema: str) -> int:
    """Terminate every server session that has touched ``schema`` (ours only, never others')."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND position(%s in query) > 0",
            (f'"{schema}"',),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


# -- worker processes ------------------------------------------------------------------------


def _drain(url: str, pool: str, n: int, lease: float, out) -> None:
    """Claim and commit until the pool is drained; report (task id, token, committed)."""
    try:
        backend = PostgresBackend(url, retry_seconds=20)
        me = WorkerIdentity(f"proc{n}", "host", n)
        done: list[tuple[str, str, bool]] = []
        idle_since = None
        while True:
            got = backend.claim_tasks(
                pool, worker=me, query=parse_query(None), from_status=WAITING,
                lease_seconds=lease, limit=1 + n % 3,
            )
            if not got:
                counts = backend.count_tasks(pool, parse_query(None))
                if counts.get(WAITING, 0) == 0 and counts.get(RUNNING, 0) == 0:
                    break
                backend.requeue_expired(pool)  # a claim lost with a killed connection
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 30:
                    raise RuntimeError(f"pool not drained: {counts}")
                time.sleep(0.05)
                continue
            idle_since = None
            for rec in got:
                ok = backend.complete_task(
                    pool, rec.id, rec.lease_token, status=DONE, result={"by": n, "token": rec.lease_token}
                )
                done.append((rec.id, rec.lease_token, ok))
        backend.close()
        out.put(("ok", n, done))
    except BaseException:
        out.put(("error", n, traceback.format_exc()))


def _run_workers(url: str, pool: str, procs: int, lease: float, during=None) -> list:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_drain, args=(url, pool, n, lease, out)) for n in range(procs)]
    for w in workers:
        w.start()
    if during is not None:
        during()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    errors = [r[2] for r in results if r[0] != "ok"]
    assert not errors, errors[0]
    return [item for r in results for item in r[2]]


def test_four_processes_never_double_claim(pg, pg_schema, pool):
    n_tasks = 240
    ids = [r.id for r in pg.insert_tasks(pool, [NewTask({"i": i}, f"h{i}") for i in range(n_tasks)])]
    commits = _run_workers(pg_url_with_schema(pg_schema), pool, procs=4, lease=60)
    claimed = [tid for tid, _, _ in commits]
    assert sorted(claimed, key=int) == sorted(ids, key=int)  # every task claimed exactly once
    assert all(ok for _, _, ok in commits)
    records = pg.get_tasks(pool, ids)
    assert {r.status for r in records} == {DONE}
    assert all(r.attempts == 1 for r in records)
    by_id = {tid: token for tid, token, _ in commits}
    assert all(r.result["token"] == by_id[r.id] for r in records)  # the committed lease is the holder's


def test_connections_terminated_mid_run_reconnect_and_finish(pg, pg_schema, pool):
    n_tasks = 2000  # enough work (about a second) that the killer finds sessions to end
    ids = [r.id for r in pg.insert_tasks(pool, [NewTask({"i": i}, f"h{i}") for i in range(n_tasks)])]
    killed: list[int] = []

    def killer() -> None:
        # Kill the workers' sessions a few times while they drain the pool (rounds that found
        # no session yet, while the spawned workers still start up, do not count).
        deadline = time.monotonic() + 60
        while sum(1 for k in killed if k) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            if pg.count_tasks(pool, parse_query({"status": DONE})).get(DONE, 0) >= n_tasks:
                break
            killed.append(_terminate(pg_schema))

    commits = _run_workers(pg_url_with_schema(pg_schema), pool, procs=2, lease=2.0, during=killer)
    assert sum(killed) >= 1, "no session was terminated: the test did not exercise reconnects"
    records = pg.get_tasks(pool, ids)
    assert {r.status for r in records} == {DONE}
    committed = [tid for tid, _, ok in commits if ok]
    assert sorted(committed, key=int) == sorted(ids, key=int)  # exactly one commit per task
    tokens = {(tid, token) for tid, token, ok in commits if ok}
    assert all((r.id, r.result["token"]) in tokens for r in records)


def test_operation_after_terminated_connection_succeeds(pg, pg_schema, pool):
    pg.insert_tasks(pool, [NewTask({"i": 1}, "h1")])
    pg.count_tasks(pool, parse_query(None))  # the session's last query names the schema
    assert _terminate(pg_schema) >= 1
    (rec,) = pg.claim_tasks(pool, worker=WorkerIdentity("w", "h", 1), query=parse_query(None),
                            from_status=WAITING, lease_seconds=30)
    assert _terminate(pg_schema) >= 1
    assert pg.complete_task(pool, rec.id, rec.lease_token, status=DONE, result=1)
    assert pg.count_tasks(pool, parse_query(None)) == {DONE: 1}


def test_commit_whose_reply_was_lost_is_recognised_on_retry(pg, pool):
    """The commit reached the server but the connection died before the reply."""
    pg.insert_tasks(pool, [NewTask({"i": 1}, "h1")])
    (rec,) = pg.claim_tasks(pool, worker=WorkerIdentity("w", "h", 1), query=parse_query(None),
                            from_status=WAITING, lease_seconds=30)
    conn = pg._connection()
    real_execute = conn.execute
    fired = []

    def execute_then_lose_connection(query, params=None, **kw):
        cur = real_execute(query, params, **kw)
        if "done_token = t.lease_token" in str(query) and not fired:
            fired.append(True)
            conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return cur

    conn.execute = execute_then_lose_connection
    assert pg.complete_task(pool, rec.id, rec.lease_token, status=DONE, result={"v": 1})
    assert fired
    assert pg.get_tasks(pool, [rec.id])[0].result == {"v": 1}
    # a second, genuine commit with the same token is still refused
    assert not pg.complete_task(pool, rec.id, rec.lease_token, status=DONE, result={"v": 2})


# -- schema, DDL and doctor ------------------------------------------------------------------


def _make(url: str, out) -> None:
    try:
        b = PostgresBackend(url)
        b.ensure_pool("shared")
        b.close()
        out.put("ok")
    except BaseException:
        out.put(traceback.format_exc())


def test_schema_from_url_is_created_once_by_concurrent_processes():
    schema = f"am_new_{uuid.uuid4().hex[:10]}"
    try:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_make, args=(pg_url_with_schema(schema), out)) for _ in range(3)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert results == ["ok"] * 3, results
        with psycopg.connect(PG_URL) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
        assert tables == {"tasks", "task_pools"}
        b = open_backend(pg_url_with_schema(schema))
        try:
            report = b.doctor()
            assert report["ok"] and report["schema"] == schema and report["problems"] == []
            assert {"tasks_claim_idx", "tasks_pool_hash_key", "tasks_lease_idx"} <= set(report["indexes"])
            assert report["privileges"]["update"] and report["server_version"]
            assert b.list_pools() == ["shared"]
        finally:
            b.close()
    finally:
        drop_pg_schema(schema)


def test_doctor_reports_a_missing_index(pg, pool):
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"DROP INDEX {pg._schema}.tasks_lease_idx")
    try:
        report = pg.doctor()
        assert not report["ok"] and any("tasks_lease_idx" in p for p in report["problems"])
    finally:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(
                f"CREATE INDEX tasks_lease_idx ON {pg._tasks} (pool, lease_expires) "
                "WHERE status = 'running'"
            )


def test_invalid_schema_name_in_url_is_refused():
    with pytest.raises(PoolError, match="search_path"):
        PostgresBackend(pg_url_with_schema("bad%2Dname"))


def test_tasks_of_many_processes_share_one_clock(pg, pool):
    """Lease times come from the server: they agree with now() whatever the local clock says."""
    pg.insert_tasks(pool, [NewTask({"i": 1}, "h1")])
    before = pg.now()
    (rec,) = pg.claim_tasks(pool, worker=WorkerIdentity("w", "h", 1), query=parse_query(None),
                            from_status=WAITING, lease_seconds=100)
    after = pg.now()
    assert before <= rec.started_at <= after
    assert rec.lease_expires == pytest.approx(rec.started_at + 100, abs=1e-6)


# -- passwords and parameters ------------------------------------------------------------------


def test_unreachable_server_error_redacts_password(caplog, capsys):
    secret = "Sup3rSecretPw"
    url = f"postgresql://alice:{secret}@127.0.0.1:1/test"
    started = time.monotonic()
    with pytest.raises(PoolUnavailable) as info:
        PostgresBackend(url, connect_timeout=1, retry_seconds=0.3)
    assert time.monotonic() - started < 10  # bounded backoff
    message = str(info.value)
    assert secret not in message and "alice:***@127.0.0.1:1" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    rendered = "".join(traceback.format_exception(info.value))
    assert secret not in rendered
    out = capsys.readouterr()
    assert secret not in out.out + out.err + caplog.text


def test_repr_redacts_password(pg_schema):
    url = pg_url_with_schema(pg_schema).replace("postgres@", "postgres:TopSecret1@")
    backend = PostgresBackend(url)  # trust authentication accepts any password
    try:
        assert "TopSecret1" not in repr(backend) and "***" in repr(backend)
        assert "TopSecret1" not in str(backend.doctor())
    finally:
        backend.close()


def test_bad_url_is_refused_with_a_redacted_message():
    with pytest.raises(PoolError) as info:
        PostgresBackend("mysql://bob:hunter22@host/db")
    assert "hunter22" not in str(info.value)


def test_query_values_are_parameters_never_sql_text():
    evil = "x'); DROP TABLE tasks; --"
    text, params = where_clause(
        {"def.a": evil, "meta.b": {"$in": [evil, 1]}, "hash": evil, "def.c": {"$gt": evil}}
    )
    assert "DROP" not in text and "'x'" not in text
    assert any(evil in str(v) for v in params.values())


def test_nul_characters_are_refused_clearly(pg, pool):
    with pytest.raises(PoolError, match="U\\+0000"):
        pg.insert_tasks(pool, [NewTask({"s": "a\x00b"}, "h1")])
    assert pg.count_tasks(pool, parse_query(None)) == {}


def test_threads_share_one_backend_safely(pg, pool):
    pg.insert_tasks(pool, [NewTask({"i": i}, f"h{i}") for i in range(40)])
    seen: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        me = WorkerIdentity(f"t{n}", "h", n)
        while got := pg.claim_tasks(pool, worker=me, query=parse_query(None),
                                    from_status=WAITING, lease_seconds=30):
            for rec in got:
                assert pg.heartbeat(pool, rec.id, rec.lease_token, 30)
                assert pg.complete_task(pool, rec.id, rec.lease_token, status=DONE, result=n)
                with lock:
                    seen.append(rec.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == len(set(seen)) == 40


def _count_in_child(backend: PostgresBackend, pool: str, out) -> None:
    try:
        out.put((backend.count_tasks(pool, parse_query(None)), backend._conn.info.backend_pid))
        backend.close()
    except BaseException:
        out.put(traceback.format_exc())


def test_forked_child_opens_its_own_connection(pg, pool):
    pg.insert_tasks(pool, [NewTask({"i": 1}, "h1")])
    parent_pid = pg._connection().info.backend_pid
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_count_in_child, args=(pg, pool, out))
    child.start()
    counts, child_pid = out.get(timeout=60)
    child.join(timeout=30)
    assert counts == {WAITING: 1} and child_pid != parent_pid
    # the parent's session survived the child's use and exit
    assert pg._connection().info.backend_pid == parent_pid
    assert pg.count_tasks(pool, parse_query(None)) == {WAITING: 1}


def test_tricky_json_values_agree_with_query_matches(pg, pool):
    from tests.pool.test_mongo_specific import TRICKY, TRICKY_QUERIES

    pg.insert_tasks(pool, [NewTask(d, f"h{i}", metadata=d) for i, d in enumerate(TRICKY)])
    records = pg.find_tasks(pool, parse_query(None))
    for raw in TRICKY_QUERIES + [{"def.a.b": {"$lt": 1}}, {"def.x": {"$in": []}}, {"def.x": {"$nin": []}}]:
        q = parse_query(raw)
        want = [r.id for r in records if q.matches(r)]
        assert [r.id for r in pg.find_tasks(pool, q)] == want, raw
        assert sum(pg.count_tasks(pool, q).values()) == len(want), raw


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:Secret9@127.0.0.1:5432/am_no_such_database",
        "postgresql://am_no_such_role:Secret9@127.0.0.1:5432/test",
    ],
)
def test_wrong_database_or_role_fails_fast_without_retrying(pg_schema, url):
    started = time.monotonic()
    with pytest.raises(PoolError) as info:
        PostgresBackend(url, retry_seconds=30)
    assert time.monotonic() - started < 10
    assert not isinstance(info.value, PoolUnavailable)
    assert "does not exist" in str(info.value) and "Secret9" not in str(info.value)
