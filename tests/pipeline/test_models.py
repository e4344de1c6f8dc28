"""Each model fits and predicts on a tiny synthetic set; save/load round-trips; bad kwargs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphamill.errors import ConfigError
from alphamill.model import LGBModel, LinearModel, SklearnModel, load_model

LGB_FAST = {"num_boost_round": 60, "early_stopping_rounds": 10, "num_leaves": 8, "num_threads": 1}


def _ic(pred: pd.Series, dataset) -> float:
    label = dataset.prepare("test", col_set="label", data_key="raw")["LABEL0"]
    both = pd.concat([pred, label], axis=1).dropna()
    return float(both.corr().iloc[0, 1])


def _check_prediction(pred: pd.Series, dataset) -> None:
    test = dataset.prepare("test", col_set="feature")
    assert pred.name == "score"
    assert pred.index.equals(test.index)
    assert pred.index.names == ["datetime", "instrument"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: LGBModel(**LGB_FAST),
        lambda: LGBModel(loss="binary", **LGB_FAST),
        lambda: LinearModel(),
        lambda: LinearModel("ridge", alpha=1.0, fit_intercept=True),
        lambda: LinearModel("lasso", alpha=0.001),
        lambda: LinearModel("nnls", fit_intercept=True),
        lambda: SklearnModel(
            {"class": "DecisionTreeRegressor", "module_path": "sklearn.tree",
             "kwargs": {"max_depth": 5}}
        ),
        lambda: SklearnModel({"class": "Ridge", "module_path": "sklearn.linear_model"}),
    ],
    ids=["lgb", "lgb-binary", "ols", "ridge", "lasso", "nnls", "sk-tree", "sk-ridge"],
)
def test_fit_predict_save_load(make, dataset, tmp_path):
    model = make()
    model.fit(dataset)
    pred = model.predict(dataset)
    _check_prediction(pred, dataset)
    assert _ic(pred, dataset) > 0.3  # the label is linear in the features
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["class"] == type(model).__name__ and meta["fitted"]
    again = load_model(tmp_path / "m")
    assert type(again) is type(model)
    pd.testing.assert_series_equal(again.predict(dataset), pred)
    pd.testing.assert_series_equal(
        type(model).load(tmp_path / "m").predict(dataset, "valid"), model.predict(dataset, "valid")
    )


def test_lgb_early_stopping_and_fit_seconds(dataset):
    m = LGBModel(learning_rate=0.3, num_boost_round=500, early_stopping_rounds=5, num_leaves=4,
                 num_threads=1)
    m.fit(dataset)
    assert m.best_iteration < 500 and m.model.current_iteration() < 500
    assert "valid" in m.evals_result and m.fit_seconds > 0
    # the saved model keeps only the trees up to the best iteration
    assert m.model.num_trees() >= m.best_iteration


def test_lgb_binary_labels_become_positive_class(dataset):
    m = LGBModel(loss="binary", **LGB_FAST).fit(dataset)
    pred = m.predict(dataset)
    assert ((pred > 0) & (pred < 1)).all()


@pytest.mark.parametrize(
    "kwargs, path, match",
    [
        ({"loss": "huber"}, "task.model.kwargs.loss", "one of mse, binary"),
        ({"num_leafs": 8}, "task.model.kwargs.num_leafs", "did you mean 'num_leaves'"),
        ({"num_leaves": -3}, "task.model.kwargs.num_leaves", "LightGBM rejects -3"),
        ({"early_stopping_rounds": 0}, "task.model.kwargs.early_stopping_rounds", "positive"),
        ({"num_threads": "four"}, "task.model.kwargs.num_threads", "non-negative integer"),
    ],
)
def test_lgb_bad_kwargs(kwargs, path, match):
    with pytest.raises(ConfigError, match=match) as e:
        LGBModel(**kwargs)
    assert e.value.path == path


def test_linear_and_sklearn_bad_kwargs():
    with pytest.raises(ConfigError) as e:
        LinearModel(estimator="svm")
    assert e.value.path == "task.model.kwargs.estimator"
    with pytest.raises(ConfigError) as e:
        LinearModel(alpha=-1)
    assert e.value.path == "task.model.kwargs.alpha"
    with pytest.raises(ConfigError, match=r"task\.model\.kwargs\.estimator\.kwargs\.alpah"):
        SklearnModel({"class": "Ridge", "module_path": "sklearn.linear_model",
                      "kwargs": {"alpah": 1}})
    with pytest.raises(ConfigError, match=r"task\.model\.kwargs\.estimator.*not trusted"):
        SklearnModel({"class": "system", "module_path": "os"})
    with pytest.raises(ConfigError, match="not an estimator"):
        SklearnModel(object())
    with pytest.warns(UserWarning, match="plain OLS"):
        LinearModel("ridge", alpha=0.0)


def test_linear_matches_least_squares(dataset):
    m = LinearModel(fit_intercept=True).fit(dataset)
    train = dataset.prepare("train", data_key="learn").dropna()
    X = np.c_[train["feature"].to_numpy("float64"), np.ones(len(train))]
    coef = np.linalg.lstsq(X, train["label"].to_numpy("float64").ravel(), rcond=None)[0]
    np.testing.assert_allclose(m.coef_, coef[:-1], rtol=1e-6, atol=1e-9)
    assert m.intercept_ == pytest.approx(coef[-1], abs=1e-9)
    # rows with a missing feature predict NaN (Qlib's behaviour), others are finite
    test = dataset.prepare("test", col_set="feature")
    pred = m.predict(dataset)
    assert pred[test.isna().any(axis=1)].isna().all()
    assert pred[test.notna().all(axis=1)].notna().all()


def test_sklearn_instance_and_unfitted_errors(dataset, tmp_path):
    from sklearn.linear_model import Ridge

    m = SklearnModel(Ridge(alpha=0.5))
    with pytest.raises(ConfigError, match="not fitted"):
        m.predict(dataset)
    with pytest.raises(ConfigError, match="not fitted"):
        m.save(tmp_path / "x")
    m.fit(dataset).save(tmp_path / "x")
    assert json.loads((tmp_path / "x" / "model.json").read_text())["kwargs"]["estimator"] == {
        "class": "Ridge", "module_path": "sklearn.linear_model",
        "kwargs": {**Ridge(alpha=0.5).get_params(deep=False)},
    }
    pd.testing.assert_series_equal(load_model(tmp_path / "x").predict(dataset), m.predict(dataset))


def test_load_model_refuses_untrusted_class(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"class": "Popen", "module_path": "subprocess"}))
    with pytest.raises(ConfigError, match="'subprocess' is not trusted") as e:
        load_model(tmp_path)
    assert e.value.path == str(tmp_path / "model.json")
    for meta, words in (({"class": "trust_path", "module_path": "alphamill.instance"}, "not a class"),
                        ({"class": "Ridge", "module_path": "sklearn.linear_model"}, "not a subclass"),
                        ({"class": "X", "module_path": "alphamill.model._x"}, "private")):
        (tmp_path / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match=words):
            load_model(tmp_path)
    with pytest.raises(ConfigError, match="model.json is missing"):
        load_model(tmp_path / "nothing")


def test_training_needs_train_segment(panel):
    from alphamill.dataset import DataHandlerLP, DatasetH

    ds = DatasetH(DataHandlerLP(panel), {"test": ("2020-10-01", "2020-12-31")})
    with pytest.raises(ConfigError, match="no 'train' segment"):
        LinearModel().fit(ds)
