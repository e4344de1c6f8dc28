"""Workers SIGKILLed at random moments and replaced: nothing lost, stuck or committed twice.

The harness (:mod:`tests.chaos.harness`) runs alphamill's own worker loop in subprocesses and
records every run and commit in an append-only ledger; :func:`check_pool` turns the ledger and
the pool into violations. The short runs belong to the default suite; ``--long`` runs 500+
tasks for minutes.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import ChaosRun, Terminator
from tests.pool.conftest import PG_URL


def _assert_clean(rep) -> None:
    assert not rep.violations, "\n".join(rep.violations[:20])
    assert rep.tasks_lost == rep.tasks_stuck == rep.double_commits == rep.double_claims == 0
    assert rep.stale_results == 0


def test_random_kills_lose_nothing(db, pool, tmp_path):
    kind, url, _ = db
    n = 100
    run = ChaosRun(url, pool, tmp_path / "run", workers=3, lease=1.2, heartbeat=0.25, seed=11)
    run.create_tasks(n, sleep=(0.02, 0.1))  # about 2 s of work per worker: room for the kills
    wall = run.run(kill_every=(0.15, 0.4), max_kills=4, timeout=90)
    rep = run.report(kind, n, wall)
    _assert_clean(rep)
    assert rep.kills >= 2, "the run ended before workers were killed; nothing was tested"
    assert rep.reruns >= 1, "no killed task was re-run: the kills missed every running task"


def test_postgres_sessions_terminated_mid_run(pg_schema_url, pool, tmp_path, pg_ready):
    """pg_terminate_backend on every worker session, repeatedly: reconnect, nothing lost."""
    schema, url = pg_schema_url
    n = 150
    run = ChaosRun(url, pool, tmp_path / "run", workers=3, lease=2.0, heartbeat=0.4, seed=5)
    run.create_tasks(n, sleep=(0.02, 0.08))  # about 2.5 s of work per worker
    with Terminator(pg_ready, schema, every=0.4, rounds=3) as term:
        wall = run.run(kill_every=(1.0, 2.0), max_kills=2, timeout=120)
    run.db_restarts = sum(1 for k in term.terminated if k)
    rep = run.report("postgresql", n, wall)
    _assert_clean(rep)
    assert sum(term.terminated) >= 2, f"no worker session was terminated: {term.terminated}"


@pytest.mark.slow
def test_long_chaos(db, pool, tmp_path):
    """1,000 tasks for minutes, 6 workers, a kill or a pause every 0.3-1.5 s (PostgreSQL: sessions
    terminated every 3 s)."""
    kind, url, schema = db
    n = 1000
    run = ChaosRun(url, pool, tmp_path / "run", workers=6, lease=2.0, heartbeat=0.4, seed=99)
    run.create_tasks(n, sleep=(0.0, 0.6))
    if schema:
        with Terminator(PG_URL, schema, every=3.0, rounds=1000) as term:
            wall = run.run(kill_every=(0.3, 1.5), timeout=900, pause_ratio=0.2)
        run.db_restarts = sum(1 for k in term.terminated if k)
    else:
        wall = run.run(kill_every=(0.3, 1.5), timeout=900, pause_ratio=0.2)
    rep = run.report(kind, n, wall)
    _assert_clean(rep)
    assert rep.kills >= 10 and rep.pauses >= 1
    print(rep.row())
