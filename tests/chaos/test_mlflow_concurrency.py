"""The experiment store under concurrent workers: 4 processes log runs into one local store.

All processes start at once on a fresh tracking folder (so they also race to create the
store and the experiment). Afterwards every run is there, FINISHED, with its params, metrics
and tags, and no process saw an error. Skipped only when the recorder module is absent; runs with
``--long`` (about 80 s on two cores, most of it MLflow start-up in each process).
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import traceback

import pytest

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("alphamill.workflow.recorder") is None,
        reason="alphamill.workflow.recorder (the MLflow experiment store) is not in this tree",
    ),
    # four MLflow processes migrating one fresh store take over a minute on two cores
    pytest.mark.slow,
]

PROCS, RUNS = 4, 4


def _log_runs(uri: str, proc: int, barrier, out) -> None:
    try:
        from alphamill.workflow.recorder import R

        barrier.wait(timeout=60)
        for i in range(RUNS):
            with R.start(experiment_name="chaos", recorder_name=f"p{proc}_r{i}", uri=uri):
                R.log_params(proc=proc, run=i)
                R.log_metrics(ic=proc + i / 10, step=0)
                R.set_tags(worker=str(proc))
                R.save_objects(**{"pred.json": {"proc": proc, "run": i}})
        out.put(("ok", proc, ""))
    except BaseException:
        out.put(("error", proc, traceback.format_exc()))


def test_four_processes_log_runs_without_loss(tmp_path):
    from alphamill.workflow.recorder import R

    uri = str(tmp_path / "mlruns")
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(PROCS), ctx.Queue()
    procs = [ctx.Process(target=_log_runs, args=(uri, k, barrier, out)) for k in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    errors = [r[2] for r in results if r[0] != "ok"]
    assert not errors, errors[0]
    recs = R.list_recorders(experiment_name="chaos", uri=uri)
    names = sorted(r.name for r in recs.values())
    assert names == sorted(f"p{k}_r{i}" for k in range(PROCS) for i in range(RUNS))
    for rec in recs.values():
        assert rec.status == "FINISHED"
        proc, run = rec.name[1:].split("_r")
        assert rec.list_params() == {"proc": proc, "run": run}
        assert rec.list_tags()["worker"] == proc
        assert rec.load_object("pred.json") == {"proc": int(proc), "run": int(run)}
