"""XGBModel and CatBoostModel on a tiny synthetic set: Qlib's kwargs and fit/predict behaviour,
saving without pickle, seeds, kwargs errors naming the field, and the training log lines."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from alphamill.dataset import DataHandlerLP, DatasetH
from alphamill.errors import ConfigError, DataError
from alphamill.model import CatBoostModel, LGBModel, XGBModel, load_model
from alphamill.model import catboost_model as cbm
from tests.pipeline.conftest import SEGMENTS, DropLabelNa

XGB_FAST = {"eta": 0.3, "max_depth": 3, "nthread": 1}
CB_FAST = {"learning_rate": 0.3, "depth": 4, "thread_count": 1}
MODELS = {
    "xgb": lambda **kw: XGBModel(**{**XGB_FAST, **kw}),
    "catboost": lambda **kw: CatBoostModel(**{**CB_FAST, **kw}),
}


def _ic(pred: pd.Series, dataset) -> float:
    label = dataset.prepare("test", col_set="label", data_key="raw")["LABEL0"]
    return float(pd.concat([pred, label], axis=1).dropna().corr().iloc[0, 1])


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fit_predict_save_load_without_pickle(kind, dataset, tmp_path):
    model = MODELS[kind]()
    assert model.fit(dataset) is model
    pred = model.predict(dataset)
    test = dataset.prepare("test", col_set="feature")
    assert pred.name == "score" and pred.index.equals(test.index) and pred.notna().all()
    assert _ic(pred, dataset) > 0.3  # the label is linear in the features
    assert 1 <= model.best_iteration < 1000 and model.fit_seconds > 0
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["class"] == type(model).__name__ and meta["best_iteration"] == model.best_iteration
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {"model.json", meta["model_file"]}
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
    again = load_model(tmp_path / "m")
    assert type(again) is type(model)
    pd.testing.assert_series_equal(again.predict(dataset), pred)
    pd.testing.assert_series_equal(again.predict(dataset, "valid"), model.predict(dataset, "valid"))


@pytest.mark.parametrize(
    "kind, seed_kwargs",
    [
        ("xgb", lambda s: {"seed": s, "subsample": 0.6, "colsample_bytree": 0.6}),
        ("catboost", lambda s: {"random_seed": s, "rsm": 0.6, "subsample": 0.6}),
    ],
)
def test_fixed_seed_is_deterministic(kind, seed_kwargs, dataset):
    def pred(seed: int) -> pd.Series:
        return MODELS[kind](**seed_kwargs(seed)).fit(dataset, verbose_eval=0).predict(dataset)

    first = pred(3)
    pd.testing.assert_series_equal(pred(3), first)
    assert not pred(4).equals(first)  # the seed is honoured, not ignored


def test_evals_result_in_qlib_shape(dataset):
    lgb_res, xgb_res, cb_res = {}, {}, {}
    LGBModel(num_boost_round=30, num_leaves=8, num_threads=1).fit(dataset, evals_result=lgb_res)
    xgb = MODELS["xgb"]().fit(dataset, num_boost_round=30, evals_result=xgb_res)
    cb = MODELS["catboost"]().fit(dataset, num_boost_round=30, evals_result=cb_res)
    # LightGBM: record_evaluation's {set: {metric: [...]}}, the train set included (Qlib's)
    assert set(lgb_res) == {"train", "valid"} and len(lgb_res["train"]["l2"]) == 30
    # XGBoost / CatBoost: Qlib flattens each set to its first metric's list
    for res in (xgb_res, cb_res):
        assert set(res) == {"train", "valid"} and isinstance(res["valid"], list)
        assert len(res["train"]) == len(res["valid"]) <= 30
    assert xgb.evals_result["valid"]["rmse"] == xgb_res["valid"]
    assert cb.evals_result["valid"]["RMSE"] == cb_res["valid"]
    assert cb.evals_result["train"]["RMSE"] == cb_res["train"]


def test_early_stopping_follows_valid(dataset):
    xgb = MODELS["xgb"](eta=0.9, early_stopping_rounds=3).fit(dataset, verbose_eval=0)
    valid = xgb.evals_result["valid"]["rmse"]
    assert len(valid) == xgb.best_iteration + 3
    assert xgb.best_iteration == int(np.argmin(valid)) + 1
    # as in Qlib, XGBoost predicts with every round trained (xgboost.train's last booster)
    assert xgb.model.num_boosted_rounds() == len(valid)
    cb = MODELS["catboost"](learning_rate=0.9, early_stopping_rounds=3).fit(dataset, verbose_eval=0)
    cvalid = cb.evals_result["valid"]["RMSE"]
    assert cb.best_iteration == int(np.argmin(cvalid)) + 1
    assert cb.model.tree_count_ == cb.best_iteration  # use_best_model, as in Qlib


def test_training_without_valid_segment(panel):
    segments = {k: v for k, v in SEGMENTS.items() if k != "valid"}
    ds = DatasetH(handler=DataHandlerLP(panel, learn_processors=[DropLabelNa()]), segments=segments)
    for kind in MODELS:
        model = MODELS[kind]().fit(ds, num_boost_round=12, verbose_eval=0)
        assert set(model.evals_result) == {"train"} and model.best_iteration == 12


def test_feature_importance_names_and_order(dataset):
    for kind, gain in (("xgb", "total_gain"), ("catboost", "FeatureImportance")):
        model = MODELS[kind]().fit(dataset, verbose_eval=0)
        imp = model.feature_importance()
        assert list(imp.index) == [f"F{i}" for i in range(5)]
        qlib_order = model.get_feature_importance(gain)
        assert list(qlib_order) == sorted(qlib_order, reverse=True)
        assert qlib_order.index[0] == "F0"  # the strongest coefficient (0.5)
    lgb = LGBModel(num_boost_round=20, num_threads=1).fit(dataset, verbose_eval=0)
    assert list(lgb.get_feature_importance()) == sorted(lgb.feature_importance(), reverse=True)


@pytest.mark.parametrize(
    "make, path, match",
    [
        (lambda: XGBModel(max_dept=3), "task.model.kwargs.max_dept", "did you mean 'max_depth'"),
        (lambda: XGBModel(eta=-1), "task.model.kwargs.eta", "XGBoost rejects -1"),
        (lambda: XGBModel(objective="reg:nope"), "task.model.kwargs.objective", "reg:nope"),
        (lambda: XGBModel(eval_metric="rmsee", eta=0.1), "task.model.kwargs.eval_metric", "rmsee"),
        (lambda: XGBModel(num_boost_round=0), "task.model.kwargs.num_boost_round", "positive"),
        (lambda: CatBoostModel(loss="MAE"), "task.model.kwargs.loss", "RMSE, Logloss"),
        (lambda: CatBoostModel(max_dept=3), "task.model.kwargs.max_dept", "did you mean 'max_depth'"),
        (lambda: CatBoostModel(depth="deep"), "task.model.kwargs.depth", "CatBoost rejects 'deep'"),
        (lambda: CatBoostModel(bootstrap_type="Poisson", task_type="CPU"),
         "task.model.kwargs.bootstrap_type", "not supported on CPU"),
        (lambda: CatBoostModel(iterations=10, n_estimators=5), "task.model.kwargs.n_estimators",
         "given twice"),
        (lambda: CatBoostModel(early_stopping_rounds=-2), "task.model.kwargs.early_stopping_rounds",
         "positive"),
    ],
)
def test_bad_kwargs_name_the_field(make, path, match):
    with pytest.raises(ConfigError, match=match) as e:
        make()
    assert e.value.path == path


def test_qlib_benchmark_kwargs_are_accepted(caplog):
    """Qlib's workflow_config_xgboost_Alpha158.yaml kwargs: ``n_estimators`` is ignored by
    ``xgboost.train`` (and so by Qlib); here it is ignored too, with a warning saying so."""
    with caplog.at_level(logging.WARNING, logger="alphamill.model"):
        model = XGBModel(eval_metric="rmse", colsample_bytree=0.8879, eta=0.0421, max_depth=8,
                         n_estimators=647, subsample=0.8789, nthread=20)
    assert "n_estimators" not in model._params()
    assert any("n_estimators" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    rounds = CatBoostModel(iterations=7, learning_rate=0.0421, thread_count=1)
    assert rounds.num_boost_round == 7 and "iterations" not in rounds.cb_params


def test_xgb_infinite_features_say_what_to_do(panel):
    bad = panel.copy()
    bad.iloc[:20, 0] = np.inf
    ds = DatasetH(handler=DataHandlerLP(bad, learn_processors=[DropLabelNa()]), segments=SEGMENTS)
    with pytest.raises(DataError, match="ProcessInf"):
        MODELS["xgb"]().fit(ds)


def test_catboost_logloss_learns_the_sign(dataset):
    model = MODELS["catboost"](loss="Logloss").fit(dataset, verbose_eval=0)
    assert _ic(model.predict(dataset), dataset) > 0.3
    assert "Logloss" in model.evals_result["valid"]


def test_catboost_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(cbm, "catboost", None)
    with pytest.raises(ConfigError, match=r"pip install 'alphamill\[catboost\]'") as e:
        CatBoostModel()
    assert e.value.path == "task.model"


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "alphamill.model"]


def test_evaluation_lines_every_n_rounds(dataset, caplog):
    with caplog.at_level(logging.INFO, logger="alphamill.model"):
        LGBModel(num_boost_round=12, num_leaves=8, num_threads=1, early_stopping_rounds=50).fit(
            dataset, verbose_eval=5
        )
    lines = _lines(caplog)
    assert [line.split("\t")[0] for line in lines if line.startswith("[")] == ["[5]", "[10]"]
    assert "train's l2: " in lines[0] and "valid's l2: " in lines[0]
    assert lines[-1].startswith("LGBModel: 12 rounds, best [")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alphamill.model"):
        MODELS["xgb"]().fit(dataset, num_boost_round=12, verbose_eval=4)
    lines = _lines(caplog)
    assert [line.split("\t")[0] for line in lines if line.startswith("[")] == ["[4]", "[8]", "[12]"]
    assert "train's rmse: " in lines[0] and "valid's rmse: " in lines[0]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alphamill.model"):
        MODELS["catboost"]().fit(dataset, num_boost_round=12, verbose_eval=5)
    lines = _lines(caplog)
    assert [line.split(":")[0] for line in lines[:4]] == ["0", "5", "10", "11"]  # CatBoost's own
    assert "learn: " in lines[0] and "test: " in lines[0]
    assert lines[-1].startswith("CatBoostModel: ")

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alphamill.model"):
        for kind in MODELS:
            MODELS[kind]().fit(dataset, num_boost_round=12, verbose_eval=0)
    assert not [line for line in _lines(caplog) if not line.startswith(("XGBModel", "CatBoostModel"))]


def test_bad_verbose_eval_names_the_argument(dataset):
    with pytest.raises(ConfigError, match="rounds >= 0") as e:
        MODELS["xgb"]().fit(dataset, verbose_eval=-1)
    assert e.value.path == "verbose_eval"
