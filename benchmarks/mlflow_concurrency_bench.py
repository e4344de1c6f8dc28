"""Many worker processes logging runs into one local MLflow store at the same time.

For each store kind and process count, N processes (started together after their imports)
each log R runs like a trained task does: a run with 20 params, 10 metrics over 3 steps, 5
tags, a Parquet and a JSON artifact, then a listing of the experiment's runs. Reported: runs
per second, errors, runs lost (expected minus found FINISHED in the store afterwards) and the
lock retries alphamill needed.

Store kinds:

* ``alphamill``: ``R`` on the default local store (SQLite, created fresh by the workers
  themselves, so the schema-creation lock is exercised);
* ``mlflow-sqlite``: plain ``MlflowClient`` on ``sqlite:///...`` (schema created beforehand:
  when the workers create it themselves, concurrent migrations corrupt it - ``--fresh-raw``);
* ``mlflow-file``: plain ``MlflowClient`` on MLflow's file store (``MLFLOW_ALLOW_FILE_STORE``).

Usage: ``python benchmarks/mlflow_concurrency_bench.py [--procs 1,4,8] [--runs 10]
[--stores alphamill,mlflow-sqlite,mlflow-file] [--fresh-raw]``; writes
``benchmarks/results/mlflow_concurrency.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "mlflow_concurrency.json"
EXPERIMENT = "bench"


def _log_alphamill(root: str, worker: int, runs: int) -> tuple[int, list[str], int]:
    import numpy as np
    import pandas as pd

    from alphamill.workflow import recorder as recmod
    from alphamill.workflow.recorder import R

    R.set_uri(root)
    errors: list[str] = []
    ok = 0
    frame = pd.DataFrame({"score": np.arange(200.0)})
    for i in range(runs):
        try:
            with R.start(experiment_name=EXPERIMENT, recorder_name=f"w{worker}-r{i}"):
                R.log_params(**{f"p{k}": k for k in range(20)})
                for step in range(3):
                    R.log_metrics(step=step, **{f"m{k}": k * 0.1 for k in range(10)})
                R.set_tags(**{f"t{k}": "x" for k in range(5)})
                R.save_objects(**{"pred.pkl": frame, "meta": {"worker": worker, "run": i}})
                R.list_recorders(EXPERIMENT)
            ok += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:200]}")
    return ok, errors, recmod._retry.count


def _log_raw(uri: str, worker: int, runs: int) -> tuple[int, list[str], int]:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    errors: list[str] = []
    ok = 0
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            try:
                eid = client.create_experiment(EXPERIMENT)
            except Exception:  # created by another worker meanwhile
                eid = client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            eid = exp.experiment_id
    except Exception as e:
        return 0, [f"init {type(e).__name__}: {str(e)[:200]}"], 0
    tmp = Path(tempfile.mkdtemp())
    (tmp / "pred.json").write_text(json.dumps(list(range(200))))
    for i in range(runs):
        try:
            run = client.create_run(eid, run_name=f"w{worker}-r{i}")
            rid = run.info.run_id
            client.log_batch(
                rid,
                params=[Param(f"p{k}", str(k)) for k in range(20)],
                tags=[RunTag(f"t{k}", "x") for k in range(5)],
            )
            for step in range(3):
                now = int(time.time() * 1000)
                client.log_batch(
                    rid, metrics=[Metric(f"m{k}", k * 0.1, now, step) for k in range(10)]
                )
            client.log_artifact(rid, str(tmp / "pred.json"))
            client.search_runs([eid], max_results=1000)
            client.set_terminated(rid, "FINISHED")
            ok += 1
        except Exception as e:
            errors.append(f"{type(e).__name__}: {str(e)[:200]}")
    shutil.rmtree(tmp, ignore_errors=True)
    return ok, errors, 0


def _worker(kind: str, target: str, worker: int, runs: int, barrier, queue) -> None:
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.CRITICAL)
    if kind == "mlflow-file":
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    import mlflow  # noqa: F401  - import before the start signal

    from alphamill.workflow.recorder import open_client

    t_open = time.perf_counter()
    if kind == "alphamill":  # the workers race to create the store; not part of the timing
        open_client(target)
    open_seconds = time.perf_counter() - t_open
    barrier.wait()
    t0 = time.perf_counter()
    fn = _log_alphamill if kind == "alphamill" else _log_raw
    ok, errors, retries = fn(target, worker, runs)
    queue.put((worker, ok, errors, retries, time.perf_counter() - t0, open_seconds))


def _count_finished(kind: str, target: str) -> int:
    if kind == "alphamill":
        from alphamill.workflow.recorder import R

        return len(R.list_recorders(EXPERIMENT, status="FINISHED", uri=target))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target)
    exps = [e for e in client.search_experiments() if e.name == EXPERIMENT]
    return sum(
        len(
            client.search_runs(
                [e.experiment_id], "attributes.status = 'FINISHED'", max_results=50000
            )
        )
        for e in exps
    )


def run_case(kind: str, procs: int, runs: int, fresh_raw: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"mlbench-{kind}-"))
    if kind == "alphamill":
        target = str(root / "mlruns")
    elif kind == "mlflow-sqlite":
        target = f"sqlite:///{root}/mlflow.db"
        if not fresh_raw:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=target).search_experiments()
    else:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        target = (root / "mlruns").as_uri()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs + 1)
    queue = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(kind, target, w, runs, barrier, queue))
        for w in range(procs)
    ]
    for p in workers:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    results = [queue.get(timeout=1800) for _ in workers]
    wall = time.perf_counter() - t0
    for p in workers:
        p.join()
    errors = [e for r in results for e in r[2]]
    try:
        found = _count_finished(kind, target)
    except Exception as e:
        errors.append(f"count {type(e).__name__}: {str(e)[:200]}")
        found = 0
    shutil.rmtree(root, ignore_errors=True)
    expected = procs * runs
    return {
        "store": kind,
        "procs": procs,
        "runs_per_proc": runs,
        "expected_runs": expected,
        "finished_runs": found,
        "lost_runs": expected - found,
        "errors": len(errors),
        "error_samples": errors[:3],
        "lock_retries": sum(r[3] for r in results),
        "store_open_seconds_max": round(max(r[5] for r in results), 2),
        "wall_seconds": round(wall, 2),
        "runs_per_second": round(expected / wall, 2) if wall else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,4,8")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--stores", default="alphamill,mlflow-sqlite,mlflow-file")
    ap.add_argument(
        "--fresh-raw", action="store_true", help="let raw SQLite workers create the schema"
    )
    args = ap.parse_args()
    rows = []
    print(
        f"{'store':<14}{'procs':>6}{'runs':>6}{'found':>7}{'lost':>6}{'errors':>8}"
        f"{'retries':>9}{'wall s':>9}{'runs/s':>8}"
    )
    for kind in args.stores.split(","):
        for procs in (int(p) for p in args.procs.split(",")):
            row = run_case(kind, procs, args.runs, args.fresh_raw)
            rows.append(row)
            print(
                f"{kind:<14}{procs:>6}{row['expected_runs']:>6}{row['finished_runs']:>7}"
                f"{row['lost_runs']:>6}{row['errors']:>8}{row['lock_retries']:>9}"
                f"{row['wall_seconds']:>9}{row['runs_per_second']:>8}"
            )
            for e in row["error_samples"]:
                print("    ", e)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    import mlflow

    RESULTS.write_text(
        json.dumps(
            {
                "mlflow": mlflow.__version__,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "results": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
