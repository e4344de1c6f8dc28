"""Linear models (Qlib's ``qlib.contrib.model.linear.LinearModel``): OLS, NNLS, Ridge, Lasso.

Saved as JSON (coefficients written with full float precision), so reloading gives the same
predictions bit for bit and needs no pickle.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError
from alphamill.model.base import Model, check_kwarg, prediction_series, split_xy, training_frames

ESTIMATORS = ("ols", "nnls", "ridge", "lasso")


class LinearModel(Model):
    """``score = features @ coef + intercept``, fitted on the rows of ``train`` with no NaN.

    ``alpha`` is the penalty of Ridge/Lasso; with ``alpha=0`` they are plain OLS (as in Qlib).
    ``include_valid`` adds the ``valid`` segment to the training rows. Rows whose features
    contain NaN predict NaN; add ``Fillna`` to the infer processors to score them.
    """

    format = "json-coefficients"

    def __init__(
        self,
        estimator: str = "ols",
        alpha: float = 0.0,
        fit_intercept: bool = False,
        include_valid: bool = False,
    ):
        super().__init__()
        check_kwarg(
            isinstance(estimator, str) and estimator.lower() in ESTIMATORS,
            "estimator",
            f"one of {', '.join(ESTIMATORS)}",
            estimator,
        )
        check_kwarg(
            isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha >= 0,
            "alpha",
            "a number >= 0",
            alpha,
        )
        check_kwarg(isinstance(fit_intercept, bool), "fit_intercept", "true or false", fit_intercept)
        check_kwarg(isinstance(include_valid, bool), "include_valid", "true or false", include_valid)
        self.estimator = estimator.lower()
        self.alpha = float(alpha)
        self.fit_intercept = fit_intercept
        self.include_valid = include_valid
        if self.alpha == 0.0 and self.estimator in ("ridge", "lasso"):
            warnings.warn(
                f"alpha is 0, so the {self.estimator} estimator is plain OLS", stacklevel=2
            )
            self._solver = "ols"
        else:
            self._solver = self.estimator
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "estimator": self.estimator,
            "alpha": self.alpha,
            "fit_intercept": self.fit_intercept,
            "include_valid": self.include_valid,
        }

    def fit(self, dataset: Any, reweighter: Any = None) -> LinearModel:
        if reweighter is not None:
            raise ConfigError("sample reweighting is not supported", "task.reweighter")
        train_df, _ = training_frames(dataset, include_valid=self.include_valid)
        train_df = train_df.dropna()
        if train_df.empty:
            raise ConfigError(
                "every training row has a missing feature or label; add Fillna to the "
                "processors or choose other dates",
                "task.dataset.kwargs.segments.train",
            )
        x, y = split_xy(train_df)
        self.feature_names = [str(c) for c in x.columns]
        X = x.to_numpy(dtype="float64")
        t0 = time.perf_counter()
        if self._solver == "nnls":
            self.coef_, self.intercept_ = self._fit_nnls(X, y)
        else:
            from sklearn.linear_model import Lasso, LinearRegression, Ridge

            if self._solver == "ols":
                est = LinearRegression(fit_intercept=self.fit_intercept, copy_X=False)
            elif self._solver == "ridge":
                est = Ridge(alpha=self.alpha, fit_intercept=self.fit_intercept, copy_X=False)
            else:
                est = Lasso(alpha=self.alpha, fit_intercept=self.fit_intercept, copy_X=False)
            est.fit(X, y)
            self.coef_ = np.asarray(est.coef_, dtype="float64").ravel()
            self.intercept_ = float(np.ravel(est.intercept_)[0]) if self.fit_intercept else 0.0
        self.fit_seconds = time.perf_counter() - t0
        self.fitted = True
        return self

    def _fit_nnls(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        from scipy.optimize import nnls

        if self.fit_intercept:
            X = np.c_[X, np.ones(len(X))]
        coef, _ = nnls(X, y)
        if self.fit_intercept:
            return coef[:-1], float(coef[-1])
        return coef, 0.0

    def predict(self, dataset: Any, segment: str | slice = "test") -> pd.Series:
        if self.coef_ is None:
            raise ConfigError("LinearModel is not fitted; call fit(dataset) first")
        x = dataset.prepare(segment, col_set="feature", data_key="infer")
        values = x.to_numpy(dtype="float64") @ self.coef_ + self.intercept_
        return prediction_series(values, x.index)

    def _save_payload(self, path: Path) -> None:
        assert self.coef_ is not None
        payload = {"coef": [float(c) for c in self.coef_], "intercept": float(self.intercept_)}
        (path / "coef.json").write_text(json.dumps(payload))

    def _load_payload(self, path: Path, meta: dict[str, Any]) -> None:
        file = path / "coef.json"
        try:
            payload = json.loads(file.read_text())
            self.coef_ = np.asarray(payload["coef"], dtype="float64")
            self.intercept_ = float(payload["intercept"])
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"cannot read linear model coefficients: {e}", str(file)) from None
