"""Worker loop: until-empty, max-tasks, prefetch leases, shutdown on signals, bad settings."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from alphamill.errors import ConfigError, PoolError, PoolUnavailable, QueryError
from alphamill.task.manage import TaskManager
from alphamill.task.worker import _Prefetch, load_func, run_worker
from tests.task_manager.test_processes import cli_proc, wait_ok

NOOP = "tests.task_manager.funcs:noop"


@pytest.fixture
def mem_url():
    return f"memory://w{os.urandom(6).hex()}"


def make(url, pool, defs, **kw):
    with TaskManager(pool, url, **kw) as tm:
        return tm.create_task(defs)


def stat(url, pool):
    with TaskManager(pool, url) as tm:
        return tm.task_stat()


def test_until_empty_runs_everything(mem_url, pool):
    make(mem_url, pool, [{"n": i} for i in range(20)])
    assert run_worker(pool, mem_url, func=NOOP, until_empty=True) == 0
    assert stat(mem_url, pool) == {"done": 20}


def test_max_tasks_and_query(mem_url, pool):
    make(mem_url, pool, [{"n": i, "group": i % 2} for i in range(10)])
    run_worker(pool, mem_url, func=NOOP, max_tasks=3, query={"def.group": 1})
    with TaskManager(pool, mem_url) as tm:
        done = list(tm.query({"status": "done"}))
        assert len(done) == 3 and all(t["def"]["group"] == 1 for t in done)
    run_worker(pool, mem_url, func=NOOP, until_empty=True, query={"def.group": 1})
    assert stat(mem_url, pool) == {"done": 5, "waiting": 5}


def test_prefetch_keeps_every_lease_alive(mem_url, pool, tmp_path, monkeypatch):
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("AM_TEST_LEDGER", str(ledger))
    make(mem_url, pool, [{"n": i, "sleep": 0.15} for i in range(8)])
    run_worker(pool, mem_url, func="tests.task_manager.funcs:ledger", until_empty=True,
               prefetch=8, lease_seconds=0.4, heartbeat_interval=0.08)
    runs = Counter(line.split()[0] for line in ledger.read_text().splitlines())
    assert len(runs) == 8 and set(runs.values()) == {1}  # 1.2 s of work under 0.4 s leases
    with TaskManager(pool, mem_url) as tm:
        assert {t["attempts"] for t in tm.query()} == {1}
        assert tm.task_stat() == {"done": 8}


def test_failing_task_and_two_stage(mem_url, pool):
    ids = make(mem_url, pool, [{"n": 0, "fail": True}, {"n": 1}], max_attempts=3)
    run_worker(pool, mem_url, func="tests.task_manager.funcs:fail_if_asked", until_empty=True,
               retry_backoff=0.01)
    with TaskManager(pool, mem_url) as tm:
        bad = tm.re_query(ids[0])
        assert bad["status"] == "failed" and bad["attempts"] == 3 and "always fails" in bad["last_error"]
    pool2 = pool + "b"
    make(mem_url, pool2, [{"n": 5}])
    run_worker(pool2, mem_url, func="tests.task_manager.funcs:first_stage", until_empty=True,
               after_status="part_done")
    run_worker(pool2, mem_url, func="tests.task_manager.funcs:second_stage", until_empty=True,
               before_status="part_done")
    with TaskManager(pool2, mem_url) as tm:
        [t] = tm.query()
        assert t["status"] == "done" and t["res"] == {"stage": 2, "prev": {"stage": 1, "n": 5}}


@pytest.mark.parametrize(
    "spec, match",
    [("nocolon", "module:function"), ("no_such_mod_xyz:f", "not found"),
     ("alphamill.trainer:no_such_fn", "has no 'no_such_fn'"),
     ("alphamill.trainer:POOL_TRAIN_FUNC", "is a str"), ("", "module:function"),
     ("os.path:join", "not trusted"), ("alphamill.trainer:_load", "private"),
     ("alphamill.trainer:TrainerR", "not a function"),
     ("alphamill.instance:trust_module_prefix", "not declared a task function")],
)
def test_load_func_errors(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_func(spec)
    assert info.value.path == "func"


def test_load_func_accepts_declared_task_functions():
    from alphamill.task.demo_funcs import demo_train
    from alphamill.trainer import pool_begin_train, pool_train
    from tests.task_manager import funcs

    assert load_func("alphamill.trainer:pool_train") is pool_train
    assert load_func("alphamill.trainer.pool_begin_train") is pool_begin_train
    assert load_func("alphamill.task.demo_funcs:demo_train") is demo_train
    assert load_func(NOOP) is funcs.noop


def test_bad_settings_refused_before_work(mem_url, pool):
    make(mem_url, pool, [{"n": 1}])
    with pytest.raises(ConfigError, match="jobs"):
        run_worker(pool, mem_url, func=NOOP, jobs=0)
    with pytest.raises(ConfigError, match="prefetch"):
        run_worker(pool, mem_url, func=NOOP, prefetch=0)
    with pytest.raises(QueryError):
        run_worker(pool, mem_url, func=NOOP, query={"nope": 1})
    with pytest.raises(ConfigError, match="before_status"):
        run_worker(pool, mem_url, func=NOOP, before_status="done")
    with pytest.raises(PoolError):
        run_worker("bad name", mem_url, func=NOOP)
    with pytest.raises(ConfigError, match="heartbeat"):
        run_worker(pool, mem_url, func=NOOP, lease_seconds=1, heartbeat_interval=5)
    assert stat(mem_url, pool) == {"waiting": 1}


def _start_sleeper(url, pool, ledger, *extra):
    p = cli_proc("-t", pool, "--url", url, "worker", "--func",
                 "tests.task_manager.funcs:mark_start_then_sleep", "--lease", "5", "--heartbeat", "1",
                 *extra, ledger=ledger)
    deadline = time.monotonic() + 60
    while not (ledger.exists() and "start" in ledger.read_text()):
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    return p


def test_sigterm_lets_running_task_finish(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/pool.db"
    ledger = tmp_path / "ledger"
    make(url, pool, [{"n": 0, "sleep": 1.0}, {"n": 1, "sleep": 1.0}])
    p = _start_sleeper(url, pool, ledger, "--grace", "20")
    p.send_signal(signal.SIGTERM)
    wait_ok(p, timeout=30)
    assert stat(url, pool) == {"done": 1, "waiting": 1}  # finished, and claimed nothing more
    assert ledger.read_text().count("end") == 1


def test_sigterm_after_grace_hands_task_back(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/pool.db"
    ledger = tmp_path / "ledger"
    [tid] = make(url, pool, [{"n": 0, "sleep": 30}])
    p = _start_sleeper(url, pool, ledger, "--grace", "0.3")
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    wait_ok(p, timeout=30)
    assert time.monotonic() - t0 < 15
    with TaskManager(pool, url) as tm:
        t = tm.re_query(tid)
    assert t["status"] == "waiting" and t["attempts"] == 0 and t["lease_token"] is None


def test_sigterm_to_parent_stops_all_jobs(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/pool.db"
    ledger = tmp_path / "ledger"
    make(url, pool, [{"n": i, "sleep": 30} for i in range(4)])
    p = _start_sleeper(url, pool, ledger, "--jobs", "2", "--grace", "0.3", "--prefetch", "2")
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    wait_ok(p, timeout=60)
    with TaskManager(pool, url) as tm:
        assert tm.task_stat() == {"waiting": 4}
        assert {t["attempts"] for t in tm.query()} == {0}


def test_worker_rides_out_an_unavailable_store(mem_url, pool, monkeypatch, caplog):
    make(mem_url, pool, [{"n": i} for i in range(3)])
    real = TaskManager.fetch_tasks
    failures = iter([True, True])

    def flaky(self, *a, **kw):
        if next(failures, False):
            raise PoolUnavailable("pool postgresql://u:pw@db/x: connection refused")
        return real(self, *a, **kw)

    monkeypatch.setattr(TaskManager, "fetch_tasks", flaky)
    t0 = time.monotonic()
    assert run_worker(pool, mem_url, func=NOOP, until_empty=True) == 0
    assert stat(mem_url, pool) == {"done": 3}
    assert caplog.text.count("pool unavailable") == 2 and ":pw@" not in caplog.text
    assert time.monotonic() - t0 >= 1.4  # backed off 0.5 s then 1 s


def test_auto_prefetch_batches_only_tiny_tasks():
    p = _Prefetch("auto")
    assert p.limit() == 1  # nothing known yet: one at a time
    for _ in range(5):
        p.record(0.0001)
    assert p.limit() == 16
    for _ in range(30):
        p.record(0.2)
    assert p.limit() == 1
    for _ in range(30):
        p.record(0.012)
    assert p.limit() == 4  # about 50 ms of 12 ms tasks
    assert _Prefetch(3).limit() == 3


def test_auto_prefetch_in_the_worker(mem_url, pool, monkeypatch):
    make(mem_url, pool, [{"n": i} for i in range(100)])
    limits = []
    real = TaskManager.fetch_tasks

    def spy(self, query=None, status="waiting", limit=1):
        limits.append(limit)
        return real(self, query, status, limit)

    monkeypatch.setattr(TaskManager, "fetch_tasks", spy)
    run_worker(pool, mem_url, func=NOOP, until_empty=True)
    assert stat(mem_url, pool) == {"done": 100}
    assert limits[0] == 1 and max(limits) == 16 and len(limits) < 30
    limits.clear()
    run_worker(pool, mem_url, func=NOOP, until_empty=True, prefetch=1)
    assert set(limits) <= {1}


def test_worker_processes_see_the_callers_environment_and_share_the_cores(pool, tmp_path, monkeypatch):
    from alphamill.task.worker import start_worker_server

    url = f"sqlite:///{tmp_path}/pool.db"
    start_worker_server()  # the fork server starts with the environment of this moment ...
    monkeypatch.setenv("AM_TEST_MARK", os.urandom(4).hex())  # ... which then changes
    monkeypatch.delenv("ALPHAMILL_NUM_THREADS", raising=False)
    make(url, pool, [{"n": i, "var": "AM_TEST_MARK"} for i in range(4)])
    assert run_worker(pool, url, func="tests.task_manager.funcs:env_and_share", jobs=2, until_empty=True) == 0
    with TaskManager(pool, url) as tm:
        res = [t["res"] for t in tm.query({"status": "done"})]
    assert len(res) == 4
    assert {r["value"] for r in res} == {os.environ["AM_TEST_MARK"]}
    assert all(r["shared"] and 1 <= r["threads"] <= (os.cpu_count() or 1) for r in res)
