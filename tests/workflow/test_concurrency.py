"""Several worker processes logging runs into one fresh local store at the same time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, pandas as pd
from alphamill.workflow import recorder as recmod
from alphamill.workflow.recorder import R

root, worker, runs, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
R.set_uri(root)
while not os.path.exists(go):  # start together, after the imports
    time.sleep(0.01)
ids = []
for i in range(runs):
    with R.start(experiment_name="many", recorder_name=f"w{worker}-r{i}") as rec:
        R.log_params(worker=worker, run=i)
        R.log_metrics(IC=worker + i / 10)
        R.set_tags(stage="done")
        R.save_objects(**{"pred.pkl": pd.DataFrame({"score": np.full(50, worker + i)})})
    ids.append(rec.id)
R.list_recorders("many")  # a reader while the others still write
print(json.dumps({"ids": ids, "retries": recmod._retry.count}))
"""


def test_many_processes_log_at_once(tmp_path: Path) -> None:
    root = tmp_path / "mlruns"  # fresh: the workers create the schema themselves
    go = tmp_path / "go"
    n_proc, runs = 4, 3
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), str(w), str(runs), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(n_proc)
    ]
    time.sleep(1.0)
    go.write_text("")
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    reported = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    ids = {i for r in reported for i in r["ids"]}
    assert len(ids) == n_proc * runs

    from alphamill.workflow.recorder import R

    recs = R.list_recorders("many", uri=str(root))
    assert set(recs) == ids
    assert all(r.status == "FINISHED" for r in recs.values())
    assert len(R.list_experiments(uri=str(root))) == 2  # "many" and MLflow's "Default"
    by_name = {r.name: r for r in recs.values()}
    for w in range(n_proc):
        for i in range(runs):
            rec = by_name[f"w{w}-r{i}"]
            assert rec.list_params() == {"worker": str(w), "run": str(i)}
            assert rec.list_metrics() == {"IC": w + i / 10}
            assert rec.load_object("pred.pkl")["score"].eq(w + i).all()
