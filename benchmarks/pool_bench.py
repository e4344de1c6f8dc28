"""Task-pool benchmark: alphamill's pool against the raw claim+commit floor of the same database.

For SQLite (WAL, synchronous=NORMAL) and PostgreSQL, in one run:

* floor: a bare loop with no library, one ``UPDATE ... RETURNING`` claim and one completing
  ``UPDATE`` per task, each its own transaction, with 1 and 2 processes;
* alphamill no-op throughput with 1 and 2 worker processes (leases, heartbeat thread and
  expiry checks included): the default (``prefetch="auto"``: tiny tasks are claimed in
  batches) and one claim per task (``prefetch=1``), plus the storage backend alone;
* ``create_task`` of 1k/10k/100k new tasks and of the same tasks again (all duplicates);
* ``task_stat`` over the 100k-task pool.

Throughput is measured inside the processes, from a common start after imports and
connections, to the last commit, so process start-up is not counted for either side.

    .venv/bin/python benchmarks/pool_bench.py            # full: up to 100k tasks
    .venv/bin/python benchmarks/pool_bench.py --quick    # up to 10k tasks

Writes ``benchmarks/results/pool_bench.json``. Goals (issue 2): no-op throughput >= 70% of
the floor, task_stat over 100k tasks < 50 ms, 100k creates < 10 s, 100k duplicates < 5 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alphamill.task.manage import TaskManager  # noqa: E402
from alphamill.task.worker import WorkerConfig, load_func, work  # noqa: E402

PG_URL = os.environ.get("ALPHAMILL_BENCH_PG_URL", os.environ.get("ALPHAMILL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
NOOP = "alphamill.task.demo_funcs:noop"
GOAL_RATIO = 0.70
GOAL_STAT_MS = 50.0
GOAL_CREATE_S = 10.0
GOAL_DUP_S = 5.0


def task_def(i: int, tag: str) -> dict[str, Any]:
    """A small Qlib-shaped task (what RollingGen/GridGen produce, minus long handler configs)."""
    return {
        "model": {"class": "LGBModel", "module_path": "alphamill.model.gbdt",
                  "kwargs": {"learning_rate": 0.05, "num_leaves": 64, "seed": i}},
        "dataset": {"class": "DatasetH", "module_path": "alphamill.dataset",
                    "kwargs": {"segments": {"train": ["2010-01-01", "2016-12-31"],
                                            "test": ["2017-01-01", "2020-12-31"]}}},
        "meta": {"bench": tag, "i": i},
    }


# -- the raw floor ------------------------------------------------------------------------------

SQLITE_FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor (
  id INTEGER PRIMARY KEY, status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0, lease_token TEXT, lease_expires REAL, result TEXT)
"""
SQLITE_FLOOR_INDEX = "CREATE INDEX IF NOT EXISTS floor_claim ON floor (status, priority DESC, id)"
SQLITE_CLAIM = """
UPDATE floor SET status = 'running', attempts = attempts + 1, lease_token = ?,
  lease_expires = (julianday('now') - 2440587.5) * 86400.0 + 60
WHERE id = (SELECT id FROM floor WHERE status = 'waiting' ORDER BY priority DESC, id LIMIT 1)
RETURNING id
"""
SQLITE_DONE = "UPDATE floor SET status = 'done', result = ?, lease_token = NULL WHERE id = ? AND lease_token = ?"

PG_FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS floor (
  id BIGSERIAL PRIMARY KEY, status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0, lease_token TEXT, lease_expires TIMESTAMPTZ, result JSONB);
CREATE INDEX IF NOT EXISTS floor_claim ON floor (status, priority DESC, id)
"""
PG_CLAIM = """
UPDATE floor SET status = 'running', attempts = attempts + 1, lease_token = %s,
  lease_expires = now() + interval '60 seconds'
WHERE id = (SELECT id FROM floor WHERE status = 'waiting' ORDER BY priority DESC, id
            FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING id
"""
PG_DONE = "UPDATE floor SET status = 'done', result = %s, lease_token = NULL WHERE id = %s AND lease_token = %s"


def floor_setup(kind: str, target: str, n: int) -> None:
    if kind == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("DROP TABLE IF EXISTS floor")
        conn.execute(SQLITE_FLOOR_SCHEMA)
        conn.execute(SQLITE_FLOOR_INDEX)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO floor (status) VALUES ('waiting')", [()] * n)
        conn.execute("COMMIT")
        conn.close()
        return
    import psycopg

    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS floor")
        conn.execute(PG_FLOOR_SCHEMA)
        conn.execute("INSERT INTO floor (status) SELECT 'waiting' FROM generate_series(1, %s)", (n,))
        conn.execute("ANALYZE floor")


def floor_worker(kind: str, target: str, barrier: Any, out: Any) -> None:
    """One process of the floor: claim + complete until nothing is left."""
    if kind == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous = NORMAL")
        claim, done = SQLITE_CLAIM, SQLITE_DONE
    else:
        import psycopg

        conn = psycopg.connect(target, autocommit=True)
        claim, done = PG_CLAIM, PG_DONE
    barrier.wait()
    t0 = time.perf_counter()
    t0_wall = time.time()
    n = 0
    while True:
        token = uuid.uuid4().hex
        row = conn.execute(claim, (token,)).fetchone()
        if row is None:
            break
        conn.execute(done, ('{"ok": true}' if kind == "sqlite" else json.dumps({"ok": True}), row[0], token))
        n += 1
    out.put((t0_wall, t0_wall + (time.perf_counter() - t0), n))
    conn.close()


def run_parallel(target_fn: Any, args: tuple, procs: int) -> float:
    """Start ``procs`` processes, release them together, return tasks/s from first start to last end."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    ps = [ctx.Process(target=target_fn, args=(*args, barrier, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    results = [out.get(timeout=900) for _ in ps]
    for p in ps:
        p.join(60)
    start = min(r[0] for r in results)
    end = max(r[1] for r in results)
    total = sum(r[2] for r in results)
    return total / (end - start)


# -- alphamill ------------------------------------------------------------------------------------


def alphamill_worker(cfg: WorkerConfig, barrier: Any, out: Any) -> None:
    """One alphamill worker process: imports and connection done before the common start."""
    import alphamill.canonical  # noqa: F401 - a long-running worker has it loaded already

    load_func(cfg.func)  # likewise the task function's module
    tm = TaskManager(cfg.task_pool, cfg.url)
    tm.task_stat()  # open the connection
    tm.close()
    barrier.wait()
    t0_wall = time.time()
    t0 = time.perf_counter()
    n = work(cfg)
    out.put((t0_wall, t0_wall + (time.perf_counter() - t0), n))


def backend_worker(url: str, pool: str, barrier: Any, out: Any) -> None:
    """The storage backend alone (claim_tasks + complete_task), without TaskManager or worker."""
    from alphamill.task.backends import open_backend
    from alphamill.task.manage import worker_identity
    from alphamill.task.query import parse_query

    backend, who, q = open_backend(url), worker_identity(), parse_query({})
    backend.count_tasks(pool, q)
    barrier.wait()
    t0_wall, t0, n = time.time(), time.perf_counter(), 0
    while True:
        recs = backend.claim_tasks(pool, worker=who, query=q, from_status="waiting", lease_seconds=300)
        if not recs:
            break
        backend.complete_task(pool, recs[0].id, recs[0].lease_token, status="done", result=None)
        n += 1
    out.put((t0_wall, t0_wall + (time.perf_counter() - t0), n))
    backend.close()


def backend_throughput(url: str, pool: str, n: int) -> float:
    with TaskManager(pool, url) as tm:
        tm.remove(all=True)
        tm.create_task([{"n": i, "backend": True} for i in range(n)])
    rate = run_parallel(backend_worker, (url, pool), 1)
    with TaskManager(pool, url) as tm:
        tm.remove(all=True)
    return rate


def noop_throughput(url: str, pool: str, n: int, procs: int, prefetch: int | str = "auto") -> float:
    with TaskManager(pool, url) as tm:
        tm.remove(all=True)
        tm.create_task([{"n": i, "p": procs, "f": prefetch} for i in range(n)])
    cfg = WorkerConfig(pool, url, func=NOOP, until_empty=True, prefetch=prefetch,
                       lease_seconds=300, heartbeat_interval=60)
    rate = run_parallel(alphamill_worker, (cfg,), procs)
    with TaskManager(pool, url) as tm:
        stat = tm.task_stat()
        assert stat == {"done": n}, stat
        tm.remove(all=True)
    return rate


def time_create(url: str, pool: str, n: int) -> tuple[float, float]:
    defs = [task_def(i, f"c{n}") for i in range(n)]
    with TaskManager(pool, url) as tm:
        t0 = time.perf_counter()
        ids = tm.create_task(defs)
        new = time.perf_counter() - t0
        assert tm.last_new == n
        t0 = time.perf_counter()
        again = tm.create_task(defs)
        dup = time.perf_counter() - t0
        assert tm.last_new == 0 and again == ids
    return new, dup


def time_task_stat(url: str, pool: str) -> float:
    with TaskManager(pool, url) as tm:
        tm.task_stat()
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            tm.task_stat()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_backend(
    kind: str, url: str, floor_target: str, sizes: list[int], n_tp: int, repeat: int
) -> dict[str, Any]:
    """Throughputs are the best of ``repeat`` interleaved runs (this machine is shared)."""
    res: dict[str, Any] = {"create_s": {}, "duplicates_s": {}}
    pool = f"bench_{uuid.uuid4().hex[:8]}"
    for procs in (1, 2):
        runs: dict[str, list[float]] = {"floor": [], "noop": [], "prefetch1": [], "backend": []}
        for r in range(repeat):
            print(f"[{kind}] {procs} process(es), round {r + 1}/{repeat}: floor, alphamill ...", flush=True)
            floor_setup(kind, floor_target, n_tp)
            runs["floor"].append(run_parallel(floor_worker, (kind, floor_target), procs))
            runs["noop"].append(noop_throughput(url, pool, n_tp, procs))
            runs["prefetch1"].append(noop_throughput(url, pool, n_tp, procs, prefetch=1))
            if procs == 1:
                runs["backend"].append(backend_throughput(url, pool, n_tp))
        for key, values in runs.items():
            if values:
                res[f"{key}_{procs}p"] = max(values)
                res[f"{key}_{procs}p_runs"] = values
    for n in sizes:
        print(f"[{kind}] create_task {n} ...", flush=True)
        new, dup = time_create(url, f"{pool}_c{n}", n)
        res["create_s"][str(n)] = new
        res["duplicates_s"][str(n)] = dup
    res["task_stat_ms"] = time_task_stat(url, f"{pool}_c{sizes[-1]}")
    res["task_stat_tasks"] = sizes[-1]
    for procs in (1, 2):
        res[f"ratio_{procs}p"] = res[f"noop_{procs}p"] / res[f"floor_{procs}p"]
        res[f"ratio_prefetch1_{procs}p"] = res[f"prefetch1_{procs}p"] / res[f"floor_{procs}p"]
    res["ratio_backend_only_1p"] = res["backend_1p"] / res["floor_1p"]
    res["ratio_prefetch1_to_backend_1p"] = res["prefetch1_1p"] / res["backend_1p"]
    return res


def print_table(results: dict[str, Any], sizes: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="alphamill task pool vs the raw database floor")
    table.add_column("measure")
    for kind in results:
        table.add_column(kind, justify="right")
    table.add_column("goal")

    def row(label: str, key: Any, fmt: str, goal: str = "") -> None:
        cells = []
        for r in results.values():
            v = key(r)
            cells.append(fmt.format(v) if v is not None else "-")
        table.add_row(label, *cells, goal)

    for p in (1, 2):
        row(f"floor, {p} process(es) (tasks/s)", lambda r, p=p: r[f"floor_{p}p"], "{:,.0f}")
        if p == 1:
            row("  storage backend alone, 1 process", lambda r: r["backend_1p"], "{:,.0f}")
            row("    ratio to floor", lambda r: r["ratio_backend_only_1p"], "{:.0%}")
        row(f"alphamill no-op, {p} worker(s), default prefetch=auto", lambda r, p=p: r[f"noop_{p}p"], "{:,.0f}")
        row("  ratio to floor", lambda r, p=p: r[f"ratio_{p}p"], "{:.0%}", f">= {GOAL_RATIO:.0%}")
        row(f"alphamill no-op, {p} worker(s), prefetch=1", lambda r, p=p: r[f"prefetch1_{p}p"], "{:,.0f}")
        row("  ratio to floor", lambda r, p=p: r[f"ratio_prefetch1_{p}p"], "{:.0%}", f">= {GOAL_RATIO:.0%}")
        if p == 1:
            row("  ratio to the backend alone", lambda r: r["ratio_prefetch1_to_backend_1p"], "{:.0%}")
    for n in sizes:
        goal = f"< {GOAL_CREATE_S:g} s" if n == 100_000 else ""
        row(f"create_task {n:,} new (s)", lambda r, n=n: r["create_s"][str(n)], "{:.2f}", goal)
        goal = f"< {GOAL_DUP_S:g} s" if n == 100_000 else ""
        row(f"create_task {n:,} duplicates (s)", lambda r, n=n: r["duplicates_s"][str(n)], "{:.2f}", goal)
    row(f"task_stat over {sizes[-1]:,} tasks (ms)", lambda r: r["task_stat_ms"], "{:.1f}", f"< {GOAL_STAT_MS:g} ms")
    Console().print(table)


def goals(results: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, r in results.items():
        g = {f"throughput_{p}p_ge_70pct_floor": r[f"ratio_{p}p"] >= GOAL_RATIO for p in (1, 2)}
        g.update({f"prefetch1_{p}p_ge_70pct_floor": r[f"ratio_prefetch1_{p}p"] >= GOAL_RATIO for p in (1, 2)})
        if sizes[-1] >= 100_000:
            g["task_stat_100k_lt_50ms"] = r["task_stat_ms"] < GOAL_STAT_MS
            g["create_100k_lt_10s"] = r["create_s"]["100000"] < GOAL_CREATE_S
            g["duplicates_100k_lt_5s"] = r["duplicates_s"]["100000"] < GOAL_DUP_S
        else:
            g["task_stat_lt_50ms"] = r["task_stat_ms"] < GOAL_STAT_MS
        out[kind] = g
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="at most 10k tasks (a minute or two)")
    ap.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per throughput run (default 5000, quick 2000)")
    ap.add_argument("--repeat", type=int, default=None, help="throughput rounds, best kept (default 3, quick 2)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pool_bench.json"))
    args = ap.parse_args()
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    n_tp = args.tasks or (2_000 if args.quick else 5_000)
    repeat = args.repeat or (2 if args.quick else 3)
    results: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(prefix="alphamill_bench_")
    for kind in args.backends.split(","):
        if kind == "sqlite":
            url = f"sqlite:///{tmp}/pool.db"
            results[kind] = bench_backend(kind, url, f"{tmp}/floor.db", sizes, n_tp, repeat)
        elif kind == "postgresql":
            import psycopg

            schema = f"am_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{schema}"')
            sep = "&" if "?" in PG_URL else "?"
            url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
            try:
                results[kind] = bench_backend(kind, url, url, sizes, n_tp, repeat)
            finally:
                with psycopg.connect(PG_URL, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        else:
            raise SystemExit(f"--backends: unknown backend {kind!r}; expected sqlite or postgresql")
    print_table(results, sizes)
    report = {
        "benchmark": "pool_bench",
        "quick": args.quick,
        "throughput_tasks": n_tp,
        "throughput_repeat": repeat,
        "sizes": sizes,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
        "results": results,
        "goals_met": goals(results, sizes),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
