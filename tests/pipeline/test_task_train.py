"""A whole task on a small demo market: features, LightGBM, records, metrics in MLflow.

Also the two-stage split: stage one here, stage two in another process that loads the task
back from the store.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from alphamill.canonical import task_hash
from alphamill.data import open_data
from alphamill.data.demo import generate_demo_market
from alphamill.dataset import DatasetH, fill_placeholder
from alphamill.errors import ConfigError
from alphamill.instance import init_instance_by_config
from alphamill.model import LGBModel, load_model
from alphamill.workflow.task_train import begin_task_train, load_recorded_model, task_train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A 20-instrument demo market and a private MLflow store / feature cache."""
    root = tmp_path_factory.mktemp("pipeline")
    market = generate_demo_market(root / "market", n=20, start="2010-01-01", end="2013-12-31", seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALPHAMILL_HOME", str(root / "home"))
        mp.setenv("ALPHAMILL_TRACKING_URI", str(root / "mlruns"))
        mp.setenv("ALPHAMILL_CACHE_DIR", str(root / "cache"))
        mp.setenv("ALPHAMILL_NUM_THREADS", "1")
        yield {"root": root, "market": str(market)}


def make_task(market: str) -> dict:
    return {
        "model": {
            "class": "LGBModel",
            "module_path": "alphamill.model",
            "kwargs": {
                "loss": "mse",
                "learning_rate": 0.1,
                "num_leaves": 16,
                "num_boost_round": 40,
                "early_stopping_rounds": 10,
                "colsample_bytree": 0.8,
            },
        },
        "dataset": {
            "class": "DatasetH",
            "module_path": "alphamill.dataset",
            "kwargs": {
                "handler": {
                    "class": "Alpha158",
                    "module_path": "alphamill.dataset",
                    "kwargs": {
                        "instruments": "all",
                        "start_time": "2010-01-01",
                        "end_time": "2013-12-31",
                        "fit_start_time": "<dataset.kwargs.segments.train.0>",
                        "fit_end_time": "<dataset.kwargs.segments.train.1>",
                        "data": market,
                    },
                },
                "segments": {
                    "train": ["2010-01-01", "2011-12-31"],
                    "valid": ["2012-01-01", "2012-06-30"],
                    "test": ["2012-07-01", "2013-12-31"],
                },
            },
        },
        "record": [
            {
                "class": "SignalRecord",
                "module_path": "alphamill.workflow.record_temp",
                "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>"},
            },
            {"class": "SigAnaRecord", "kwargs": {"ana_long_short": False, "ann_scaler": 252}},
            {
                "class": "PortAnaRecord",
                "kwargs": {
                    "config": {
                        "strategy": {
                            "class": "TopkDropoutStrategy",
                            "kwargs": {"signal": "<PRED>", "topk": 5, "n_drop": 1},
                        },
                        "backtest": {"account": 1e8},
                    }
                },
            },
        ],
    }


def _check_trained_run(rec, task: dict, market: str) -> None:
    assert rec.status == "FINISHED"
    arts = set(rec.list_artifacts())
    for name in (
        "task.json",
        "model/model.json",
        "model/model.txt",
        "pred.parquet",
        "label.parquet",
        "sig_analysis/ic.parquet",
        "portfolio_analysis/report_normal_1day.parquet",
    ):
        assert name in arts, name
    metrics = rec.list_metrics()
    for m in ("IC", "ICIR", "Rank IC", "Rank ICIR", "1day.excess_return_with_cost.annualized_return",
              "1day.excess_return_with_cost.information_ratio", "1day.turnover"):
        assert m in metrics, m
    assert -1 < metrics["IC"] < 1 and metrics["timing.model_fit_seconds"] > 0
    params = rec.list_params()
    assert params["model.kwargs.num_leaves"] == "16"
    assert params["dataset.kwargs.segments.test"] == '["2012-07-01", "2013-12-31"]'
    tags = rec.list_tags()
    assert tags["alphamill.task_hash"] == task_hash(task)
    assert tags["alphamill.data_fingerprint"] == open_data(market).fingerprint()
    assert tags["alphamill.stage"] == "done"
    assert tags["hostname"] and tags["alphamill.version.lightgbm"]
    assert rec.load_object("task.json") == json.loads(json.dumps(task))


def test_task_train_end_to_end(env):
    task = make_task(env["market"])
    original = copy.deepcopy(task)
    rec = task_train(task, "pipeline_e2e")
    assert task == original  # the caller's task is not modified
    _check_trained_run(rec, task, env["market"])
    pred = rec.load_object("pred.pkl")
    assert list(pred.columns) == ["score"]
    dates = pred.index.get_level_values(0)
    assert dates.min() >= pd.Timestamp("2012-07-01") and dates.max() <= pd.Timestamp("2013-12-31")

    # the saved model, reloaded, reproduces the recorded predictions
    model = load_model(rec.download_artifact("model", env["root"] / "dl"))
    assert isinstance(model, LGBModel)
    assert isinstance(load_recorded_model(rec.to_ref()), LGBModel)
    dataset = init_instance_by_config(
        fill_placeholder(task)["dataset"], accept_types=DatasetH, default_module="alphamill.dataset"
    )
    pd.testing.assert_series_equal(
        model.predict(dataset).astype("float64"), pred["score"].astype("float64"),
        check_names=False, check_index_type=False,
    )
    ref = rec.to_ref()
    assert set(ref) == {"experiment_id", "run_id", "experiment_name"}
    json.dumps(ref)


def test_begin_then_end_in_another_process(env):
    task = make_task(env["market"])
    task["record"] = task["record"][:2]
    rec = begin_task_train(task, "pipeline_delay")
    assert rec.list_tags()["alphamill.stage"] == "part_done"
    assert "model/model.json" not in rec.list_artifacts()
    assert rec.load_object("task.json") == json.loads(json.dumps(task))
    code = (
        "import json, sys\n"
        "from alphamill.workflow.task_train import end_task_train\n"
        "rec = end_task_train(json.loads(sys.argv[1]), sys.argv[2])\n"
        "print(json.dumps(rec.to_ref()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(rec.to_ref()), "pipeline_delay"],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    assert ref["run_id"] == rec.id
    from alphamill.workflow.recorder import Recorder

    again = Recorder.from_ref(ref)
    assert "model/model.txt" in again.list_artifacts()
    assert {"IC", "Rank IC"} <= set(again.list_metrics())
    assert again.list_tags()["alphamill.stage"] == "done"
    assert again.status == "FINISHED"


def test_bad_model_kwarg_fails_the_run(env):
    from alphamill.workflow.recorder import R

    task = make_task(env["market"])
    task["model"]["kwargs"]["num_leafs"] = 8
    with pytest.raises(ConfigError, match=r"task\.model\.kwargs\.num_leafs"):
        task_train(task, "pipeline_bad")
    runs = R.list_recorders("pipeline_bad")
    assert [r.status for r in runs.values()] == ["FAILED"]
