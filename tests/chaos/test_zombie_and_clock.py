"""A zombie worker's late commit is refused; leases follow the database clock, not workers'.

Zombie: a worker is SIGSTOPped in the middle of a task until its lease expires; another worker
takes the task over and commits; the first one is resumed with SIGCONT, finishes and tries to
commit. Its commit must be refused (and logged), and the pool must keep the newer result.

Clock: workers whose ``time.time`` is three hours fast or slow still hold their leases while
alive (no task re-run) and still get a dead worker's task back after about one lease.
"""

from __future__ import annotations

import os
import signal
import time

from alphamill.task.manage import TaskManager
from tests.chaos.harness import ChaosRun, ledger_read


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_zombie_commit_refused_and_logged(db, pool, tmp_path):
    kind, url, _ = db
    run = ChaosRun(url, pool, tmp_path / "run", workers=1, lease=1.0, heartbeat=0.2)
    with TaskManager(pool, url) as tm:
        (tid,) = tm.create_task([{"n": 0, "sleep_first": 1.5}])
    zombie = run.start_worker()
    _wait_for(lambda: any(e["ev"] == "start" for e in ledger_read(run.ledger)), 30, "the first run")
    os.kill(zombie.pid, signal.SIGSTOP)
    zombie.stopped = True
    try:
        time.sleep(1.3)  # past the lease: nobody renews it while the process is stopped
        rescuer = run.start_worker()
        _wait_for(lambda: rescuer.proc.poll() is not None, 40, "the second worker to finish")
        assert rescuer.proc.returncode == 0, rescuer.output()
    finally:
        os.kill(zombie.pid, signal.SIGCONT)
        zombie.stopped = False
    zombie.proc.wait(timeout=30)
    assert zombie.proc.returncode == 0, zombie.output()

    entries = ledger_read(run.ledger)
    commits = {e["pid"]: e for e in entries if e["ev"] == "commit"}
    assert commits[rescuer.pid]["ok"] is True and commits[rescuer.pid]["attempt"] == 2
    assert commits[zombie.pid]["ok"] is False, "the zombie's late commit was accepted"
    # the zombie did finish its run (it was not simply killed): its end entry is there
    assert any(e["ev"] == "end" and e["pid"] == zombie.pid for e in entries)
    assert "no longer held" in zombie.output() or "lease lost" in zombie.output()
    with TaskManager(pool, url) as tm:
        task = tm.re_query(tid)
    assert task["status"] == "done" and task["attempts"] == 2
    assert task["res"]["token"] == commits[rescuer.pid]["token"] != commits[zombie.pid]["token"]
    assert task["res"]["pid"] == rescuer.pid


def test_skewed_worker_clocks_do_not_matter(db, pool, tmp_path):
    """Workers 3 h fast and 3 h slow: no lease expires early, a dead one's task comes back."""
    kind, url, _ = db
    n = 8

    def skew(i: int) -> list[str]:
        return ["--clock-offset", str(10800 if i % 2 == 0 else -10800)]

    run = ChaosRun(url, pool, tmp_path / "run", workers=2, lease=1.0, heartbeat=0.2, seed=3,
                   extra_args=skew)
    # each task outlives its lease several times over: only heartbeats keep it
    run.create_tasks(n, sleep=(0.3, 0.5))
    with TaskManager(pool, url) as tm:
        tm.create_task([{"n": n, "sleep": 2.0}])  # a long one, renewed ~10 times
    wall = run.run(kill_every=(1.0, 1.5), max_kills=1, timeout=60)
    rep = run.report(kind, n + 1, wall)
    assert not rep.violations, "\n".join(rep.violations)
    assert rep.kills == 1
    # the killed task was re-offered once its lease expired on the database clock; no live
    # worker lost a lease (a worker clock hours off would expire them all, or none)
    assert rep.reruns == 1 and rep.rejected_zombie_commits == 0
    with TaskManager(pool, url) as tm:
        attempts = sorted(t["attempts"] for t in tm.query())
        now = tm.backend.now()
    assert attempts == [1] * n + [2]
    assert abs(now - time.time()) < 60  # the store's clock, not the skewed workers'
