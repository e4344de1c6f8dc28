"""XGBoost, CatBoost and Alpha360 through whole tasks on a small demo market, from alphamill's
names and from Qlib's module paths; the loss curves in the recorder per round; the evaluation
lines in a real worker's log."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphamill.dataset import DatasetH, fill_placeholder
from alphamill.errors import ConfigError
from alphamill.instance import init_instance_by_config
from alphamill.model import CatBoostModel, LGBModel, XGBModel
from alphamill.task.manage import TaskManager
from alphamill.workflow.experiment import build_tasks, load_config, validate_tasks
from alphamill.workflow.task_train import load_recorded_model, task_train
from tests.pipeline.test_task_train import env, make_task  # noqa: F401 - env is a fixture

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "xgb": ({"class": "XGBModel", "module_path": "alphamill.model",
             "kwargs": {"eta": 0.1, "max_depth": 4, "seed": 1, "num_boost_round": 40,
                        "early_stopping_rounds": 10}}, XGBModel, "xgboost.json", "rmse"),
    "catboost": ({"class": "CatBoostModel", "module_path": "alphamill.model",
                  "kwargs": {"learning_rate": 0.1, "depth": 4, "random_seed": 1,
                             "num_boost_round": 40, "early_stopping_rounds": 10}},
                 CatBoostModel, "catboost.cbm", "RMSE"),
}


def _fast_records(task: dict) -> dict:
    task["record"] = task["record"][:2]  # signal + IC: the backtest is not what is tested here
    return task


def _dataset(task: dict) -> DatasetH:
    return init_instance_by_config(
        fill_placeholder(copy.deepcopy(task))["dataset"], accept_types=DatasetH,
        default_module="alphamill.dataset",
    )


def _check_curves(rec, model, metric: str) -> None:
    """``{metric}.train`` / ``{metric}.valid`` at every round, equal to the model's curves."""
    for data in ("train", "valid"):
        hist = rec.metric_history(f"{metric}.{data}")
        curve = model.evals_result[data][metric]
        assert [s for s, _ in hist] == list(range(len(curve)))
        np.testing.assert_allclose([v for _, v in hist], curve, rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_task_train_records_and_reloads_the_model(kind, env):  # noqa: F811
    config, cls, payload, metric = MODELS[kind]
    task = _fast_records(make_task(env["market"]))
    task["model"] = copy.deepcopy(config)
    rec = task_train(task, f"boosted_{kind}")
    assert rec.status == "FINISHED"
    arts = set(rec.list_artifacts())
    assert {"model/model.json", f"model/{payload}", "pred.parquet"} <= arts
    assert not any(a.endswith((".pkl", ".pickle")) for a in arts if a.startswith("model/"))
    assert -1 < rec.list_metrics()["IC"] < 1
    model = load_recorded_model(rec.to_ref())
    assert isinstance(model, cls) and model.fitted
    pred = rec.load_object("pred.pkl")["score"]
    pd.testing.assert_series_equal(
        model.predict(_dataset(task)).astype("float64"), pred.astype("float64"),
        check_names=False, check_index_type=False,
    )
    _check_curves(rec, model, metric)
    # the same task trained again gives the same predictions (seeded)
    again = task_train(task, f"boosted_{kind}").load_object("pred.pkl")["score"]
    pd.testing.assert_series_equal(again, pred)


def test_lgb_loss_curves_logged_per_round_in_one_batch(env, monkeypatch):  # noqa: F811
    from mlflow.tracking import MlflowClient

    batches: list[list[str]] = []
    real = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kw):
        batches.append([m.key for m in metrics])
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    task = _fast_records(make_task(env["market"]))
    rec = task_train(task, "boosted_lgb_curves")
    model = load_recorded_model(rec.to_ref())
    assert isinstance(model, LGBModel)
    hist = rec.metric_history("l2.valid")
    rounds = len(hist)
    assert rounds >= model.best_iteration and [s for s, _ in hist] == list(range(rounds))
    assert len(rec.metric_history("l2.train")) == rounds
    train = [v for _, v in rec.metric_history("l2.train")]
    assert train == sorted(train, reverse=True)  # the training loss falls every round
    # the best iteration's validation loss is the curve's minimum
    valid = [v for _, v in hist]
    assert int(np.argmin(valid)) + 1 == model.best_iteration
    curve_batches = [b for b in batches if any(k.startswith("l2.") for k in b)]
    assert len(curve_batches) == 1 and len(curve_batches[0]) == 2 * rounds


def test_curves_are_not_logged_outside_a_recorder(dataset, monkeypatch):
    from alphamill.workflow.recorder import R

    assert R.active_recorder() is None
    m = XGBModel(nthread=1, eta=0.3).fit(dataset, verbose_eval=0)  # no error, nothing logged
    assert m.evals_result["valid"]["rmse"]


QLIB_XGB_ALPHA360 = """
qlib_init:
    provider_uri: "~/.qlib/qlib_data/cn_data"
    region: cn
market: &market all
data_handler_config: &data_handler_config
    start_time: 2010-01-01
    end_time: 2013-12-31
    fit_start_time: 2010-01-01
    fit_end_time: 2011-12-31
    instruments: *market
    infer_processors: []
    learn_processors:
        - class: DropnaLabel
        - class: CSRankNorm
          kwargs:
              fields_group: label
    label: ["Ref($close, -2) / Ref($close, -1) - 1"]
task:
    model:
        class: XGBModel
        module_path: qlib.contrib.model.xgboost
        kwargs:
            eval_metric: rmse
            colsample_bytree: 0.8879
            eta: 0.0421
            max_depth: 8
            n_estimators: 647
            subsample: 0.8789
            nthread: 20
    dataset:
        class: DatasetH
        module_path: qlib.data.dataset
        kwargs:
            handler:
                class: Alpha360
                module_path: qlib.contrib.data.handler
                kwargs: *data_handler_config
            segments:
                train: [2010-01-01, 2011-12-31]
                valid: [2012-01-01, 2012-06-30]
                test: [2012-07-01, 2013-12-31]
    record:
        - class: SignalRecord
          module_path: qlib.workflow.record_temp
          kwargs:
            model: <MODEL>
            dataset: <DATASET>
"""


def _qlib_config(tmp_path: Path, market: str, text: str) -> dict:
    """The Qlib YAML as written (anchors and all), with the data source added to the handler."""
    anchor = "    instruments: *market\n"
    assert anchor in text
    path = tmp_path / "workflow.yaml"
    path.write_text(text.replace(anchor, anchor + f"    data: {market}\n"))
    return load_config(path)


def test_qlib_xgboost_alpha360_benchmark_config_runs(env, tmp_path):  # noqa: F811
    """Qlib's workflow_config_xgboost_Alpha360.yaml (dates and data moved to the small market):
    ``qlib.contrib.model.xgboost`` and ``qlib.contrib.data.handler`` map to alphamill's
    XGBModel and Alpha360 the way ``qlib.contrib.model.gbdt`` maps to LGBModel."""
    cfg = _qlib_config(tmp_path, env["market"], QLIB_XGB_ALPHA360)
    assert cfg.task["model"]["module_path"] == "alphamill.model"
    assert cfg.task["dataset"]["kwargs"]["handler"]["module_path"] == "alphamill.dataset"
    assert any("qlib.contrib.model.xgboost -> alphamill.model" in n for n in cfg.notes)
    (task,) = build_tasks(cfg)
    validate_tasks([task])
    task["model"]["kwargs"]["nthread"] = 1
    task["model"]["kwargs"]["max_depth"] = 3
    rec = task_train(task, "qlib_xgb_alpha360")
    model = load_recorded_model(rec.to_ref())
    assert isinstance(model, XGBModel) and len(model.feature_names) == 360
    assert model.feature_names[0] == "CLOSE59" and model.feature_names[-1] == "VOLUME0"
    assert len(rec.metric_history("rmse.valid")) == len(model.evals_result["valid"]["rmse"])


CATBOOST_KWARGS = """        kwargs:
            loss: RMSE
            learning_rate: 0.0421
            subsample: 0.8789
            max_depth: 6
            num_leaves: 100
            thread_count: 20
            grow_policy: Lossguide
            bootstrap_type: Poisson
"""


def test_qlib_catboost_benchmark_config_is_checked_before_training(env, tmp_path):  # noqa: F811
    """Qlib's workflow_config_catboost_Alpha158.yaml asks for Poisson bootstrap, which CatBoost
    has only on GPUs: on a CPU-only machine that is one error naming the field, before any task
    is stored; without it the same config trains."""
    text = (QLIB_XGB_ALPHA360
            .replace("class: XGBModel", "class: CatBoostModel")
            .replace("qlib.contrib.model.xgboost", "qlib.contrib.model.catboost_model")
            .replace("class: Alpha360", "class: Alpha158"))
    start = text.index("        kwargs:\n            eval_metric")
    end = text.index("    dataset:")
    text = text[:start] + CATBOOST_KWARGS + text[end:]
    cfg = _qlib_config(tmp_path, env["market"], text)
    (task,) = build_tasks(cfg)
    if _has_gpu():
        pytest.skip("a GPU is present: Poisson bootstrap is valid here")
    with pytest.raises(ConfigError, match="not supported on CPU") as e:
        validate_tasks([task])
    assert e.value.path == "task.model.kwargs.bootstrap_type"
    kwargs = task["model"]["kwargs"]
    del kwargs["bootstrap_type"]
    kwargs.update(thread_count=1, num_leaves=8, max_depth=3, iterations=30)
    validate_tasks([task])
    rec = task_train(task, "qlib_catboost")
    model = load_recorded_model(rec.to_ref())
    assert isinstance(model, CatBoostModel) and model.num_boost_round == 30
    assert 0 < len(rec.metric_history("RMSE.valid")) <= 30


def _has_gpu() -> bool:
    from alphamill.model.catboost_model import default_task_type

    return default_task_type() == "GPU"


def test_worker_log_shows_the_evaluation_every_20_rounds(env, tmp_path):  # noqa: F811
    """``alphamill worker -v``: LightGBM's evaluation every 20 rounds (Qlib's verbose_eval)."""
    task = _fast_records(make_task(env["market"]))
    task["model"]["kwargs"].update(num_boost_round=40, early_stopping_rounds=40)
    task["meta"] = {"experiment_name": "boosted_worker_log"}
    url = f"sqlite:///{tmp_path}/pool.db"
    with TaskManager("logs", url) as tm:
        tm.create_task([task])
    out = subprocess.run(
        [str(Path(sys.executable).parent / "alphamill"), "-t", "logs", "--url", url, "worker",
         "--until-empty", "-v"],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stderr
    lines = [line for line in log.splitlines() if "alphamill.model:" in line]
    assert [line.split("alphamill.model: ")[1].split("\t")[0] for line in lines[:2]] == ["[20]", "[40]"]
    assert "train's l2: " in lines[0] and "valid's l2: " in lines[0]
    assert "LGBModel: 40 rounds, best [" in lines[-1]
