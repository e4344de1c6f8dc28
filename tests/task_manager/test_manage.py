"""TaskManager and run_task on every backend: Qlib's names, leases, retries and codecs."""

from __future__ import annotations

import os
import time

import pytest

from alphamill.errors import CanonicalError, ConfigError, LeaseLost, PoolError, QueryError
from alphamill.task.backends.base import WorkerIdentity
from alphamill.task.codec import PayloadError
from alphamill.task.manage import TaskManager, run_task
from alphamill.task.query import parse_query
from tests.task_manager import funcs


def tasks(n, **extra):
    return [{"model": {"class": "M", "kwargs": {"n": i}}, "n": i, **extra} for i in range(n)]


@pytest.fixture
def tm(url, pool):
    m = TaskManager(pool, url, lease_seconds=30, heartbeat_interval=5, retry_backoff=0.01)
    yield m
    m.close()


def test_create_dedupes_and_returns_existing_ids(tm):
    ids = tm.create_task(tasks(5))
    assert len(ids) == len(set(ids)) == 5
    again = tm.create_task(list(reversed(tasks(7))))
    assert again[2:] == list(reversed(ids))  # known tasks keep their ids
    assert tm.task_stat() == {"waiting": 7}
    # same task written in another key order / with a tuple is the same task
    same = {"n": 0, "model": {"kwargs": {"n": 0}, "class": "M"}}
    assert tm.create_task([same]) == [ids[0]]
    # repeated inside one batch
    dup = tm.create_task([{"x": 1}, {"x": 1}])
    assert dup[0] == dup[1]
    assert tm.task_stat()["waiting"] == 8


def test_create_copies_meta_and_priority(tm):
    [tid] = tm.create_task([{"a": 1, "meta": {"rolling": {"index": 3}}}], priority=5)
    t = tm.re_query(tid)
    assert t["meta"] == {"rolling": {"index": 3}}
    assert t["priority"] == 5
    assert t["def"] == t["filter"] == {"a": 1, "meta": {"rolling": {"index": 3}}}
    assert [x["_id"] for x in tm.query({"meta.rolling.index": 3})] == [tid]
    assert list(tm.query({"meta.rolling.index": 4})) == []


def test_create_dry_run_stores_nothing(tm, capsys):
    tm.create_task(tasks(2))
    assert tm.create_task(tasks(4), dry_run=True, print_nt=True) == []
    out = capsys.readouterr().out
    assert "'n': 2" in out and "'n': 3" in out and "'n': 0" not in out
    assert tm.task_stat() == {"waiting": 2}


def test_create_rejects_bad_definitions_before_storing(tm):
    with pytest.raises(CanonicalError, match=r"task_def_l\[1\]\.model\.kwargs\.loss"):
        tm.create_task([{"a": 1}, {"model": {"kwargs": {"loss": {1, 2}}}}])
    with pytest.raises(ConfigError, match=r"task_def_l\[0\]"):
        tm.create_task(["not a dict"])
    with pytest.raises(ConfigError, match="single dict"):
        tm.create_task({"a": 1})
    assert tm.task_stat() == {}


def test_fetch_returns_qlib_shaped_task_with_lease(tm):
    low, high = tm.create_task([{"x": 1}, {"x": 2}])
    tm.prioritize(high, 10)
    t = tm.fetch_task()
    assert t["_id"] == high
    assert t["status"] == "running"
    assert t["def"] == {"x": 2} and t["filter"] == {"x": 2}
    assert t["lease_token"] and t["attempts"] == 1
    owner = t["lease_owner"].split(":")
    assert owner[0] and int(owner[1]) == os.getpid() and len(owner) == 3
    assert tm.fetch_task()["_id"] == low
    assert tm.fetch_task() is None
    assert tm.task_stat() == {"running": 2}


def test_commit_stores_result_once(tm):
    tm.create_task(tasks(1))
    t = tm.fetch_task()
    tm.commit_task_res(t, {"score": 0.5})
    again = tm.re_query(t["_id"])
    assert again["status"] == "done" and again["res"] == {"score": 0.5}
    assert again["lease_token"] is None
    with pytest.raises(LeaseLost):
        tm.commit_task_res(t, {"score": 1.0})
    assert tm.re_query(t["_id"])["res"] == {"score": 0.5}


def test_zombie_commit_after_reset_is_refused(tm, caplog):
    tm.create_task(tasks(1))
    t = tm.fetch_task()
    assert tm.reset_waiting() == 1  # an admin (or lease expiry) takes the task away
    t2 = tm.fetch_task()
    assert t2["_id"] == t["_id"] and t2["lease_token"] != t["lease_token"]
    with pytest.raises(LeaseLost, match=t["_id"]):
        tm.commit_task_res(t, "zombie")
    assert "no longer held" in caplog.text
    tm.commit_task_res(t2, "fresh")
    assert tm.re_query(t["_id"])["res"] == "fresh"


def test_commit_status_checked(tm):
    tm.create_task(tasks(1))
    t = tm.fetch_task()
    with pytest.raises(PoolError):
        tm.commit_task_res(t, 1, status="waiting")
    with pytest.raises(PoolError):
        tm.commit_task_res(t, 1, status="bogus")
    with pytest.raises(LeaseLost, match="not held"):
        tm.commit_task_res({"_id": t["_id"]}, 1)


def test_safe_fetch_returns_task_on_error(tm):
    tm.create_task(tasks(1))
    with pytest.raises(RuntimeError), tm.safe_fetch_task() as t:
        assert t["status"] == "running"
        raise RuntimeError("boom")
    back = tm.re_query(t["_id"])
    assert back["status"] == "waiting" and back["attempts"] == 0
    with pytest.raises(KeyboardInterrupt), tm.safe_fetch_task() as t:
        raise KeyboardInterrupt
    assert tm.re_query(t["_id"])["status"] == "waiting"
    with tm.safe_fetch_task() as t:
        tm.commit_task_res(t, 1)
    assert tm.re_query(t["_id"])["status"] == "done"
    with tm.safe_fetch_task() as t:
        assert t is None


def test_task_fetcher_iter_and_return_to_part_done(tm):
    tm.create_task(tasks(3))
    seen = []
    for t in tm.task_fetcher_iter():
        seen.append(t["def"]["n"])
        tm.commit_task_res(t, {"stage": 1}, status="part_done")
    assert sorted(seen) == [0, 1, 2]
    assert tm.task_stat() == {"part_done": 3}
    t = tm.fetch_task(status="part_done")
    assert t["res"] == {"stage": 1} and t["claimed_from"] == "part_done"
    tm.return_task(t, status="part_done")
    assert tm.re_query(t["_id"])["status"] == "part_done"
    t = tm.fetch_task(status="part_done")
    tm.return_task(t, status="failed")
    assert tm.re_query(t["_id"])["status"] == "failed"


def test_remove_refuses_empty_query(tm):
    tm.create_task(tasks(4))
    with pytest.raises(PoolError, match="all=True"):
        tm.remove({})
    with pytest.raises(PoolError):
        tm.remove()
    assert tm.remove({"def.n": {"$lt": 2}}) == 2
    assert tm.task_stat() == {"waiting": 2}
    assert tm.remove(all=True) == 2
    assert tm.task_stat() == {}


def test_task_stat_and_resets(tm):
    tm.create_task(tasks(6))
    a, b = tm.fetch_task(), tm.fetch_task()
    tm.commit_task_res(a, 1)
    assert tm.task_stat() == {"waiting": 4, "running": 1, "done": 1}
    assert tm.task_stat({"def.n": {"$in": [0, 1]}}) == {"running": 1, "done": 1}
    assert tm.reset_waiting() == 1
    assert tm.task_stat() == {"waiting": 5, "done": 1}
    assert tm.reset_status({"status": "done"}, "waiting") == 1
    assert tm.task_stat() == {"waiting": 6}
    with pytest.raises(PoolError):
        tm.reset_status({}, "running")
    with pytest.raises(LeaseLost):
        tm.commit_task_res(b, 1)


def test_prioritize_orders_claims(tm):
    ids = tm.create_task(tasks(3))
    tm.prioritize({"_id": ids[2]}, 3)
    tm.prioritize(ids[1], 2)
    assert [tm.fetch_task()["_id"] for _ in range(3)] == [ids[2], ids[1], ids[0]]
    with pytest.raises(PoolError, match="no task"):
        tm.prioritize("999999", 1)
    with pytest.raises(ConfigError):
        tm.prioritize(ids[0], "high")


def test_bad_query_is_refused_before_any_change(tm):
    tm.create_task(tasks(2))
    for bad in ({"bogus": 1}, {"status": {"$regex": "w"}}, {"$where": "1"}):
        with pytest.raises(QueryError):
            tm.remove(bad)
        with pytest.raises(QueryError):
            tm.task_stat(bad)
        with pytest.raises(QueryError):
            tm.fetch_task(bad)
    assert tm.task_stat() == {"waiting": 2}


def test_replace_and_insert(tm):
    [tid] = tm.create_task([{"a": 1}])
    tm.replace_task({"_id": tid}, {"a": 2})
    assert tm.re_query(tid)["def"] == {"a": 2}
    tm.replace_task(tid, {"def": {"a": 3}})
    assert tm.re_query(tid)["def"] == {"a": 3}
    assert tm.create_task([{"a": 3}]) == [tid]  # the hash followed the definition
    with pytest.raises(PoolError, match="no task"):
        tm.replace_task("987654", {"a": 9})
    new = tm.insert_task({"def": {"b": 1}, "priority": 4})
    assert tm.re_query(new)["priority"] == 4
    assert tm.insert_task_def({"b": 1}) == new


def test_missing_pool_reads_empty_and_list(url, pool):
    with TaskManager(pool, url) as tm:
        assert tm.task_stat() == {}
        assert tm.fetch_task() is None
        assert list(tm.query()) == []
        assert pool not in tm.list()
        tm.create_task([{"a": 1}])
        assert pool in tm.list()
        report = tm.doctor()
        assert report["pool_exists"] and report["task_stat"] == {"waiting": 1}


def test_heartbeat_keeps_lease_alive(url, pool):
    with TaskManager(pool, url, lease_seconds=0.6, heartbeat_interval=0.1) as tm:
        tm.create_task(tasks(1))
        t = tm.fetch_task()
        first = t["lease_expires"]
        time.sleep(1.2)
        assert tm.requeue_expired() == 0
        assert tm.re_query(t["_id"])["lease_expires"] > first + 0.5
        tm.commit_task_res(t, "ok")
        assert tm.re_query(t["_id"])["status"] == "done"


def test_lease_expires_without_heartbeat(url, pool):
    with TaskManager(pool, url, lease_seconds=0.3, heartbeat_interval=0.1) as tm:
        tm.create_task(tasks(1))
        t = tm.fetch_task()
        tm._heartbeat.stop()  # the worker "dies": nobody renews
        tm._heartbeat.add = lambda *a: None
        time.sleep(0.6)
        assert tm.requeue_expired() == 1
        assert tm.re_query(t["_id"])["status"] == "waiting"
        with pytest.raises(LeaseLost):
            tm.commit_task_res(t, "late")


def test_run_task_runs_everything(url, pool):
    with TaskManager(pool, url, retry_backoff=0.01) as tm:
        assert run_task(funcs.noop, tm) is False
        tm.create_task(tasks(5))
        assert run_task(funcs.noop, tm) is True
        assert tm.task_stat() == {"done": 5}
        assert sorted(t["res"]["n"] for t in tm.query()) == [0, 1, 2, 3, 4]


def test_run_task_two_stage_passes_stored_result(url, pool):
    with TaskManager(pool, url) as tm:
        tm.create_task(tasks(2))
        run_task(funcs.first_stage, tm, after_status="part_done")
        assert tm.task_stat() == {"part_done": 2}
        run_task(funcs.second_stage, tm, before_status="part_done", after_status="done")
        res = sorted((t["res"] for t in tm.query()), key=lambda r: r["prev"]["n"])
        assert res == [{"stage": 2, "prev": {"stage": 1, "n": i}} for i in range(2)]
    with pytest.raises(PoolError):
        run_task(funcs.noop, TaskManager(pool, url), before_status="done")


def test_run_task_retries_then_fails_and_goes_on(url, pool):
    with TaskManager(pool, url, retry_backoff=0.01, max_attempts=3) as tm:
        bad, good = tm.create_task([{"n": 0, "fail": True}, {"n": 1}])
        assert run_task(funcs.fail_if_asked, tm) is True
        t = tm.re_query(bad)
        assert t["status"] == "failed" and t["attempts"] == 3
        assert "ValueError: task 0 always fails" in t["last_error"]
        assert "Traceback" in t["last_error"]
        assert tm.re_query(good)["status"] == "done"


def test_run_task_kwargs_query_and_interrupt(url, pool):
    with TaskManager(pool, url) as tm:
        tm.create_task(tasks(3))
        run_task(funcs.pid, tm, query={"def.n": 1}, alpha=2)
        assert tm.task_stat() == {"waiting": 2, "done": 1}
        [done] = tm.query({"status": "done"})
        assert done["res"]["kw"] == {"alpha": 2} and done["def"]["n"] == 1
        with pytest.raises(KeyboardInterrupt):
            run_task(funcs.interrupt, tm)
        assert tm.task_stat() == {"waiting": 2, "done": 1}
        assert all(t["attempts"] == 0 for t in tm.query({"status": "waiting"}))


def test_run_task_force_release_uses_a_child(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/pool.db"
    with TaskManager(pool, url) as tm:
        tm.create_task(tasks(1))
        run_task(funcs.pid, tm, force_release=True, beta=1)
        [t] = tm.query()
        assert t["status"] == "done"
        assert t["res"]["pid"] != os.getpid() and t["res"]["kw"] == {"beta": 1}


def test_non_json_result_fails_clearly(url, pool):
    with TaskManager(pool, url, retry_backoff=0.01, max_attempts=1) as tm:
        [tid] = tm.create_task(tasks(1))
        t = tm.fetch_task()
        with pytest.raises(CanonicalError, match=rf"task {tid}.*Opaque"):
            tm.commit_task_res(t, funcs.Opaque(1))
        tm.return_task(t)
        run_task(funcs.opaque, tm)
        t = tm.re_query(tid)
        assert t["status"] == "failed" and "Opaque" in t["last_error"]


def test_pickle_codec_needs_opt_in_and_key(url, pool, monkeypatch):
    monkeypatch.delenv("ALPHAMILL_PICKLE_KEY", raising=False)
    with pytest.raises(PoolError, match="ALPHAMILL_PICKLE_KEY"):
        TaskManager(pool, url, codec="pickle")
    with pytest.raises(ConfigError, match="codec"):
        TaskManager(pool, url, codec="yaml")
    monkeypatch.setenv("ALPHAMILL_PICKLE_KEY", "s3cret")
    with TaskManager(pool, url, codec="pickle") as tm:
        [tid] = tm.create_task([{"a": 1}])
        run_task(funcs.opaque, tm)
        t = tm.re_query(tid)
        assert t["status"] == "done" and t["res"] == funcs.Opaque(None)
        raw = tm.backend.get_tasks(pool, [tid])[0].result
        assert set(raw) == {"__pickle__", "hmac"}
    with pytest.raises(PoolError, match="codec 'pickle'"):
        TaskManager(pool, url, codec="json")
    monkeypatch.setenv("ALPHAMILL_PICKLE_KEY", "other")
    with TaskManager(pool, url) as tm, pytest.raises(PayloadError, match="signature"):
        tm.re_query(tid)
    monkeypatch.delenv("ALPHAMILL_PICKLE_KEY")
    with TaskManager(pool, url) as tm:  # counting needs no key, unpickling does
        assert tm.task_stat() == {"done": 1}
        with pytest.raises(PoolError, match="ALPHAMILL_PICKLE_KEY"):
            tm.re_query(tid)


def test_tampered_or_unsigned_payload_refused(url, pool, monkeypatch):
    monkeypatch.setenv("ALPHAMILL_PICKLE_KEY", "s3cret")
    with TaskManager(pool, url, codec="pickle") as tm:
        ids = tm.create_task(tasks(3))
        forged = {"__pickle__": "gARLAS4=", "hmac": "00" * 32}
        unsigned = {"__pickle__": "gARLAS4="}
        who = WorkerIdentity("attacker", "h", 1)
        for tid, payload in zip(ids[:2], (forged, unsigned), strict=True):
            [rec] = tm.backend.claim_tasks(
                pool, worker=who, query=parse_query({"_id": tid}), from_status="waiting", lease_seconds=30
            )
            tm.backend.complete_task(pool, tid, rec.lease_token, status="part_done", result=payload)
        with pytest.raises(PayloadError, match="signature"):
            tm.re_query(ids[0])
        with pytest.raises(PayloadError, match="unsigned"):
            tm.re_query(ids[1])
        # a worker claiming the tampered task fails it instead of unpickling it
        assert tm.fetch_task(status="part_done") is None
        assert tm.task_stat() == {"waiting": 1, "failed": 2}


def test_json_pool_refuses_pickled_payload(url, pool):
    with TaskManager(pool, url) as tm:
        [tid] = tm.create_task(tasks(1))
        who = WorkerIdentity("attacker", "h", 1)
        [rec] = tm.backend.claim_tasks(
            pool, worker=who, query=parse_query({}), from_status="waiting", lease_seconds=30
        )
        tm.backend.complete_task(pool, tid, rec.lease_token, status="done", result={"__pickle__": "x", "hmac": "y"})
        with pytest.raises(PayloadError, match="json codec"):
            tm.re_query(tid)


def test_wait_returns_and_times_out(url, pool):
    with TaskManager(pool, url) as tm:
        assert tm.wait(progress=False) == {}
        tm.create_task(tasks(2))
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="2 tasks"):
            tm.wait(timeout=0.3, poll_interval=0.05, progress=False)
        assert time.monotonic() - t0 < 2
        run_task(funcs.noop, tm)
        assert tm.wait(timeout=1, progress=True) == {"done": 2}


def test_constructor_checks(url, pool):
    with pytest.raises(PoolError, match="pool name"):
        TaskManager("bad;name", url)
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        TaskManager(pool, url, lease_seconds=1, heartbeat_interval=2)
    with pytest.raises(ConfigError, match="lease_seconds"):
        TaskManager(pool, url, lease_seconds=0)
    with pytest.raises(ConfigError, match="max_attempts"):
        TaskManager(pool, url, max_attempts=0)


def test_default_url_is_embedded_sqlite(tmp_path, monkeypatch, pool):
    if not os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "alphamill", "task", "backends", "sqlite.py")):
        pytest.skip("sqlite backend not available")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALPHAMILL_POOL_URL", raising=False)
    monkeypatch.delenv("ALPHAMILL_HOME", raising=False)
    monkeypatch.delenv("ALPHAMILL_CONFIG", raising=False)
    with TaskManager(pool) as tm:
        tm.create_task([{"a": 1}])
        assert "password" not in repr(tm)
    assert (tmp_path / ".alphamill" / "pool.db").exists()
