"""Chaos and load figures for the task pool, on SQLite and PostgreSQL.

Two parts, both with real worker processes running alphamill's worker loop (the harness of
``tests/chaos``) and an append-only ledger that records every run and commit:

* load: 8 workers x 10,000 no-op tasks. Throughput (tasks/s, from the first to the last run
  in the ledger, so process start-up is not counted) and the guarantee checks: double claims,
  double commits, re-runs, results not from the current lease (all must be 0).
* chaos: workers SIGKILLed or SIGSTOPped past their lease (zombies) at random moments and
  replaced, and on PostgreSQL every worker session terminated with ``pg_terminate_backend``
  now and then. Reported: tasks, workers, kills, pauses, database restarts, tasks lost,
  tasks stuck, double commits, rejected zombie commits, wall time.

    .venv/bin/python benchmarks/chaos_bench.py            # 8 x 10,000 and 500 chaos tasks
    .venv/bin/python benchmarks/chaos_bench.py --quick    # 4 x 2,000 and 150 chaos tasks

Writes ``benchmarks/results/chaos_bench.json``. PostgreSQL is skipped when unreachable
(``ALPHAMILL_TEST_PG_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.harness import ChaosRun, Terminator, ledger_read  # noqa: E402

PG_URL = os.environ.get("ALPHAMILL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def load(kind: str, url: str, workdir: Path, workers: int, tasks: int) -> dict[str, Any]:
    """``workers`` processes drain ``tasks`` no-op tasks; nobody is killed."""
    pool = f"load_{uuid.uuid4().hex[:8]}"
    run = ChaosRun(url, pool, workdir, workers=workers, lease=30.0, heartbeat=5.0,
                   func="tests.chaos.harness:noop_task")
    t0 = time.perf_counter()
    run.create_tasks(tasks, sleep=(0.0, 0.0))
    create_s = time.perf_counter() - t0
    wall = run.run(kill_every=(1e9, 1e9), max_kills=0, timeout=3600)
    rep = run.report(kind, tasks, wall)
    times = sorted(e["t"] for e in ledger_read(run.ledger) if e["ev"] == "start")
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    return {
        "backend": kind, "workers": workers, "tasks": tasks,
        "throughput_tasks_per_s": round(tasks / span, 1) if span == span and span > 0 else None,
        "wall_s_incl_startup": round(wall, 2), "create_s": round(create_s, 2),
        "double_claims": rep.double_claims, "double_commits": rep.double_commits,
        "reruns": rep.reruns, "stale_results": rep.stale_results, "tasks_lost": rep.tasks_lost,
        "tasks_stuck": rep.tasks_stuck, "violations": len(rep.violations),
        "first_violations": rep.violations[:5],
    }


def chaos(kind: str, url: str, workdir: Path, tasks: int, schema: str | None, seed: int) -> dict[str, Any]:
    pool = f"chaos_{uuid.uuid4().hex[:8]}"
    run = ChaosRun(url, pool, workdir, workers=6, lease=2.0, heartbeat=0.4, seed=seed)
    run.create_tasks(tasks, sleep=(0.0, 0.2))
    if schema is not None:
        with Terminator(PG_URL, schema, every=3.0, rounds=1000) as term:
            wall = run.run(kill_every=(0.3, 1.2), timeout=3600, pause_ratio=0.25)
        run.db_restarts = sum(1 for k in term.terminated if k)
    else:
        wall = run.run(kill_every=(0.3, 1.2), timeout=3600, pause_ratio=0.25)
    rep = run.report(kind, tasks, wall)
    row = rep.row()
    row["first_violations"] = rep.violations[:5]
    return row


def print_table(title: str, rows: list[dict[str, Any]], cols: list[str]) -> None:
    print(f"\n{title}")
    widths = [max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c)).rjust(w) for c, w in zip(cols, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 x 2,000 load and 150 chaos tasks")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--skip-chaos", action="store_true")
    args = ap.parse_args(argv)
    n_workers, n_tasks, n_chaos = (4, 2000, 150) if args.quick else (8, 10_000, 500)

    backends: list[tuple[str, str, str | None]] = []
    tmp = Path(tempfile.mkdtemp(prefix="chaos_bench_"))
    backends.append(("sqlite", f"sqlite:///{tmp}/pool.db", None))
    schemas = []
    if pg_available():
        schema = f"am_bench_{uuid.uuid4().hex[:8]}"
        schemas.append(schema)
        backends.append(("postgresql", pg_schema_url(schema), schema))
    else:
        print(f"PostgreSQL absent at {PG_URL}: skipped")

    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load": [], "chaos": [],
    }
    try:
        for kind, url, schema in backends:
            if not args.skip_load:
                row = load(kind, url, tmp / f"load_{kind}", n_workers, n_tasks)
                results["load"].append(row)
                print(f"load {kind}: {row['throughput_tasks_per_s']} tasks/s", flush=True)
            if not args.skip_chaos:
                row = chaos(kind, url, tmp / f"chaos_{kind}", n_chaos, schema, seed=7)
                results["chaos"].append(row)
                print(f"chaos {kind}: {row['wall_seconds']} s, {row['violations']} violations", flush=True)
    finally:
        for schema in schemas:
            drop_schema(schema)

    if results["load"]:
        print_table(f"Load: {n_workers} workers x {n_tasks} no-op tasks", results["load"],
                    ["backend", "workers", "tasks", "throughput_tasks_per_s", "wall_s_incl_startup",
                     "double_claims", "double_commits", "reruns", "stale_results", "tasks_lost", "tasks_stuck"])
    if results["chaos"]:
        print_table("Chaos: random SIGKILL / SIGSTOP past the lease, PostgreSQL sessions terminated",
                    results["chaos"],
                    ["backend", "tasks", "workers", "kills", "pauses", "db_restarts", "tasks_lost",
                     "tasks_stuck", "double_commits", "double_claims", "rejected_zombie_commits",
                     "stale_results", "reruns", "wall_seconds", "violations"])
    out = ROOT / "benchmarks" / "results" / "chaos_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    bad = sum(r["violations"] for r in results["load"] + results["chaos"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
