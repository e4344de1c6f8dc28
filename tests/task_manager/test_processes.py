"""Real worker processes on real databases: nothing lost, nothing run or committed twice."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from alphamill.task.manage import TaskManager
from tests.task_manager import funcs

ROOT = Path(__file__).resolve().parents[2]


def cli_proc(*args: str, ledger: Path | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if ledger is not None:
        env["AM_TEST_LEDGER"] = str(ledger)
    code = "import sys; from alphamill.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, cwd=str(ROOT),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def wait_ok(p: subprocess.Popen, timeout: float) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return err


def drain_with_workers(url: str, pool: str, n_tasks: int, jobs: int, tmp_path: Path, prefetch: int = 1):
    ledger = tmp_path / "ledger.txt"
    with TaskManager(pool, url) as tm:
        tm.create_task([{"n": i} for i in range(n_tasks)])
    p = cli_proc(
        "-t", pool, "--url", url, "worker", "--jobs", str(jobs), "--until-empty",
        "--func", "tests.task_manager.funcs:ledger", "--lease", "30", "--heartbeat", "5",
        "--prefetch", str(prefetch), ledger=ledger,
    )
    wait_ok(p, timeout=300)
    rows = [line.split() for line in ledger.read_text().splitlines()]
    with TaskManager(pool, url) as tm:
        stat = tm.task_stat()
        tasks = list(tm.query())
    assert stat == {"done": n_tasks}
    runs = Counter(int(r[0]) for r in rows)
    assert sorted(runs) == list(range(n_tasks))
    assert set(runs.values()) == {1}, "a task ran twice"
    pid_of = {int(r[0]): int(r[1]) for r in rows}
    for t in tasks:
        assert t["attempts"] == 1
        # the committed result is the one of the only run (exactly one commit)
        assert t["res"] == {"n": t["def"]["n"], "pid": pid_of[t["def"]["n"]]}
    return {int(r[1]) for r in rows}


def test_four_workers_2000_tasks_run_and_commit_once(db_url, pool, tmp_path):
    pids = drain_with_workers(db_url, pool, 2000, 4, tmp_path)
    assert len(pids) >= 2 and os.getpid() not in pids


@pytest.mark.slow
def test_eight_workers_10000_tasks(db_url, pool, tmp_path):
    pids = drain_with_workers(db_url, pool, 10_000, 8, tmp_path)
    assert len(pids) >= 4


def test_four_workers_with_prefetch(db_url, pool, tmp_path):
    drain_with_workers(db_url, pool, 300, 4, tmp_path, prefetch=8)


def test_sigkilled_worker_task_finished_by_another(db_url, pool, tmp_path):
    ledger = tmp_path / "ledger.txt"
    with TaskManager(pool, db_url) as tm:
        [tid] = tm.create_task([{"n": 0, "sleep": 1.0}])
    args = ("-t", pool, "--url", db_url, "worker", "--func",
            "tests.task_manager.funcs:mark_start_then_sleep", "--lease", "1", "--heartbeat", "0.2")
    a = cli_proc(*args, ledger=ledger)
    deadline = time.monotonic() + 60
    while not (ledger.exists() and "start" in ledger.read_text()):
        assert time.monotonic() < deadline and a.poll() is None, a.communicate()
        time.sleep(0.05)
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    with TaskManager(pool, db_url) as tm:
        assert tm.re_query(tid)["status"] == "running"  # stranded until its lease expires
    b = cli_proc(*args, "--until-empty", ledger=ledger)
    wait_ok(b, timeout=60)
    with TaskManager(pool, db_url) as tm:
        t = tm.re_query(tid)
    assert t["status"] == "done" and t["attempts"] == 2
    assert t["res"] == {"n": 0, "pid": b.pid}
    lines = ledger.read_text().split("\n")
    assert f"start 0 {a.pid}" in lines and f"end 0 {a.pid}" not in lines
    assert f"end 0 {b.pid}" in lines


def test_failing_task_ends_failed_and_worker_goes_on(db_url, pool, tmp_path):
    with TaskManager(pool, db_url, max_attempts=2) as tm:
        bad, *good = tm.create_task([{"n": 0, "fail": True}] + [{"n": i} for i in range(1, 6)])
    p = cli_proc("-t", pool, "--url", db_url, "worker", "--until-empty", "--retry-backoff", "0.05",
                 "--func", "tests.task_manager.funcs:fail_if_asked", "--lease", "5", "--heartbeat", "1")
    wait_ok(p, timeout=60)
    with TaskManager(pool, db_url) as tm:
        t = tm.re_query(bad)
        assert t["status"] == "failed" and t["attempts"] == 2
        assert "Traceback" in t["last_error"] and "task 0 always fails" in t["last_error"]
        assert tm.task_stat() == {"done": 5, "failed": 1}


def test_concurrent_create_leaves_one_task_per_hash(db_url, pool, tmp_path):
    with TaskManager(pool, db_url) as tm:
        tm.create_task([{"warm": 1}])  # the pool exists; the race is on the tasks
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    outs = [tmp_path / f"ids{i}.txt" for i in range(4)]
    procs = [ctx.Process(target=funcs.create_same, args=(db_url, pool, 1000, barrier, outs[i])) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with TaskManager(pool, db_url) as tm:
        assert tm.task_stat() == {"waiting": 1001}
    ids = [o.read_text().split("\n") for o in outs]
    assert all(x == ids[0] for x in ids) and len(set(ids[0])) == 1000
