"""SQLite under contention: many processes, a tiny busy timeout, no "database is locked".

Six no-op workers, two processes creating tasks and one polling ``task_stat`` hammer one pool
file whose ``busy_timeout`` is 10 ms, so SQLite reports the file busy all the time. Busy
statements must be retried by alphamill (bounded), never surface to the user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.chaos.harness import ROOT, ChaosRun


def _cli(*args: str, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "from alphamill.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=str(ROOT), env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def test_no_database_is_locked_reaches_the_user(pool, tmp_path):
    url = f"sqlite:///{tmp_path}/pool.db?busy_timeout=0.01"
    run = ChaosRun(url, pool, tmp_path / "run", workers=6, lease=5.0, heartbeat=1.0,
                   func="tests.chaos.harness:noop_task")
    n_first = 600
    run.create_tasks(n_first)
    extra = []
    for k in range(2):
        f = tmp_path / f"more{k}.json"
        # overlapping halves: both creators insert 100 of the same tasks at once
        f.write_text(json.dumps([{"n": 10_000 + i} for i in range(k * 100, k * 100 + 200)]))
        extra.append(f)
    logs = [open(tmp_path / f"cli{k}.log", "wb") for k in range(3)]  # noqa: SIM115 - closed below
    try:
        procs = [_cli("-t", pool, "--url", url, "create", str(f), log=logs[k]) for k, f in enumerate(extra)]
        procs.append(_cli("-t", pool, "--url", url, "wait", "--json", "--poll", "0.02", "--timeout", "60",
                          log=logs[2]))
        for _ in range(run.n_workers):
            run.start_worker()
        for p in procs[:2]:
            p.wait(timeout=90)
        # the first workers may have drained the pool before the creators' last insert
        run.start_worker()
        procs[2].wait(timeout=90)
        for w in run.workers:
            w.proc.wait(timeout=90)
    finally:
        for fh in logs:
            fh.close()
        for w in run.live():
            run.kill(w)
    outputs = [(tmp_path / f"cli{k}.log").read_text() for k in range(3)] + [w.output() for w in run.workers]
    for text in outputs:
        assert "locked" not in text.lower() and "Traceback" not in text, text[-2000:]
    assert [p.returncode for p in procs[:2]] == [0, 0], outputs[:2]
    assert all(w.proc.returncode == 0 for w in run.workers), [w.output() for w in run.workers]
    rep = run.report("sqlite", n_first + 300, 0.0)
    assert rep.violations == [] and rep.reruns == 0 and rep.rejected_zombie_commits == 0
