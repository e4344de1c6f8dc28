"""Any scikit-learn regressor as a model, saved with joblib.

joblib files are pickles: load them only from an experiment store you trust.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from alphamill.errors import ConfigError
from alphamill.model.base import (
    MODEL_PATH,
    Model,
    check_kwarg,
    prediction_series,
    split_xy,
    training_frames,
)


def _allows_nan(estimator: Any) -> bool:
    try:
        return bool(estimator.__sklearn_tags__().input_tags.allow_nan)
    except AttributeError:
        return False


class SklearnModel(Model):
    """Wraps a scikit-learn estimator given as ``{"class", "module_path", "kwargs"}`` or an instance.

    Training uses the learn view of ``train`` (plus ``valid`` with ``include_valid``). Rows with a
    missing label are dropped; rows with a missing feature are dropped too unless the estimator
    accepts NaN (e.g. ``HistGradientBoostingRegressor``), and such rows predict NaN.
    """

    format = "joblib"

    def __init__(self, estimator: Any, include_valid: bool = False):
        super().__init__()
        check_kwarg(isinstance(include_valid, bool), "include_valid", "true or false", include_valid)
        self.include_valid = include_valid
        self.estimator_config = estimator if isinstance(estimator, dict) else None
        if isinstance(estimator, dict):
            from alphamill.instance import init_instance_by_config
            from alphamill.kinds import ESTIMATOR

            estimator = init_instance_by_config(
                estimator,
                default_module="sklearn.linear_model",
                path=f"{MODEL_PATH}.estimator",
                kind=ESTIMATOR,
            )
        elif isinstance(estimator, str):
            raise ConfigError(
                "expected {'class': ..., 'module_path': ..., 'kwargs': {...}} or an estimator",
                f"{MODEL_PATH}.estimator",
            )
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict")):
            raise ConfigError(
                f"{type(estimator).__name__} is not an estimator (needs fit and predict)",
                f"{MODEL_PATH}.estimator",
            )
        self.estimator = estimator

    def config_kwargs(self) -> dict[str, Any]:
        est = self.estimator_config
        if est is None:
            klass = type(self.estimator)
            est = {
                "class": klass.__name__,
                "module_path": _public_module(klass),
                "kwargs": {k: v for k, v in self.estimator.get_params(deep=False).items()},
            }
        return {"estimator": _jsonable(est), "include_valid": self.include_valid}

    def fit(self, dataset: Any, reweighter: Any = None) -> SklearnModel:
        if reweighter is not None:
            raise ConfigError("sample reweighting is not supported", "task.reweighter")
        train_df, _ = training_frames(dataset, include_valid=self.include_valid)
        label_ok = train_df["label"].notna().all(axis=1)
        if _allows_nan(self.estimator):
            train_df = train_df[label_ok]
        else:
            train_df = train_df[label_ok & train_df["feature"].notna().all(axis=1)]
        if train_df.empty:
            raise ConfigError(
                "no training row without missing values; add Fillna to the processors",
                "task.dataset.kwargs.segments.train",
            )
        x, y = split_xy(train_df)
        self.feature_names = [str(c) for c in x.columns]
        t0 = time.perf_counter()
        self.estimator.fit(x.to_numpy(), y)
        self.fit_seconds = time.perf_counter() - t0
        self.fitted = True
        return self

    def predict(self, dataset: Any, segment: str | slice = "test") -> pd.Series:
        if not self.fitted:
            raise ConfigError("SklearnModel is not fitted; call fit(dataset) first")
        x = dataset.prepare(segment, col_set="feature", data_key="infer")
        values = np.full(len(x), np.nan)
        X = x.to_numpy()
        ok = np.ones(len(x), bool) if _allows_nan(self.estimator) else ~np.isnan(X).any(axis=1)
        if ok.any():
            values[ok] = np.ravel(self.estimator.predict(X[ok]))
        return prediction_series(values, x.index)

    def _library_versions(self) -> dict[str, str]:
        import sklearn

        return {**super()._library_versions(), "scikit-learn": sklearn.__version__}

    @classmethod
    def _blank(cls, meta: dict[str, Any]) -> SklearnModel:
        model = cls.__new__(cls)
        Model.__init__(model)
        kwargs = meta.get("kwargs", {})
        model.include_valid = bool(kwargs.get("include_valid", False))
        model.estimator_config = kwargs.get("estimator")
        model.estimator = None
        return model

    def _save_payload(self, path: Path) -> None:
        tmp = path / ".estimator.joblib.tmp"
        joblib.dump(self.estimator, tmp)
        os.replace(tmp, path / "estimator.joblib")

    def _load_payload(self, path: Path, meta: dict[str, Any]) -> None:
        file = path / "estimator.joblib"
        try:
            self.estimator = joblib.load(file)
        except (OSError, EOFError, ValueError) as e:
            raise ConfigError(f"cannot read the saved estimator: {e}", str(file)) from None


def _public_module(klass: type) -> str:
    """The nearest public module exporting ``klass`` (``sklearn.linear_model`` for ``Ridge``,
    defined in ``sklearn.linear_model._ridge``), so the saved config can be built again
    under the rules of a task, which never name a private module."""
    parts = klass.__module__.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        if any(p.startswith("_") for p in parts[:i]):
            continue
        module = sys.modules.get(name)
        if module is not None and getattr(module, klass.__name__, None) is klass:
            return name
    return klass.__module__


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return repr(value)
