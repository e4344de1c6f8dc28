"""The process that runs an experiment with local workers leaves the heavy imports to them.

It hands the checks of LightGBM's parameters and the collection to children of the workers'
fork server, and forks the feature computation from itself, so a run imports LightGBM and
MLflow once (in the server), not once more in the orchestrating process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    from alphamill.features import warm
    from alphamill.workflow.experiment import flagship_config, parse_config, run_experiment

    starts = []
    real_start = warm.CacheFiller.start
    def start(self):
        out = real_start(self)
        starts.append(self.start_method)
        return out
    warm.CacheFiller.start = start

    raw = flagship_config(small=True, data=sys.argv[1])
    raw["experiment"] = sys.argv[2]
    raw["workers"] = 2
    raw["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["cache_dir"] = sys.argv[3]
    results = run_experiment(parse_config(raw), progress=False)
    print(json.dumps({
        "modules": {m: m in sys.modules for m in ("lightgbm", "mlflow", "sklearn")},
        "filler": starts,
        "windows": len(results.preds),
        "rank_ic": float(results.summary.loc[results.headline, "Rank IC"]),
    }))
""")


def test_a_run_with_workers_imports_neither_lightgbm_nor_mlflow_here(am_env, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(am_env["market"]), f"t_{uuid.uuid4().hex[:10]}", str(tmp_path / "cache")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["modules"] == {"lightgbm": False, "mlflow": False, "sklearn": False}
    assert got["filler"] == ["fork"]  # a fresh interpreter is single-threaded: the filler is forked
    assert got["windows"] == 3 and -1 < got["rank_ic"] < 1
