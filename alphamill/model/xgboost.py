"""XGBoost with Qlib's ``XGBModel`` kwargs and behaviour (``qlib.contrib.model.xgboost``).

Every constructor kwarg is an XGBoost parameter, as in Qlib (``eta``, ``max_depth``,
``colsample_bytree``, ``eval_metric``, ...); ``num_boost_round`` and ``early_stopping_rounds``
are the defaults of ``fit`` (Qlib's 1000 and 50). Parameters are checked when the model is
built, by configuring a booster on a few rows: a name XGBoost does not use or a value it
rejects is a ConfigError naming the kwarg. ``n_estimators``, which Qlib's own benchmark config
passes and ``xgboost.train`` ignores, is ignored with a warning, as it is in Qlib.

As in Qlib, predictions use every round trained, including the ``early_stopping_rounds``
after the best one (``xgboost.train`` returns the last booster); ``best_iteration`` is kept.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from alphamill import threads
from alphamill.errors import ConfigError, DataError
from alphamill.memory import release_file_pages, release_memory
from alphamill.model import training_log
from alphamill.model.base import MODEL_PATH, Model, prediction_series, split_xy, training_frames
from alphamill.model.gbdt import _safe_feature_names

logger = logging.getLogger("alphamill.model")

#: Names Qlib's configs pass that ``xgboost.train`` ignores (scikit-learn wrapper names).
IGNORED_PARAMS = ("n_estimators",)
_THREAD_PARAMS = ("nthread", "n_jobs")
#: The booster in XGBoost's JSON format (beside alphamill's model.json).
MODEL_FILE = "xgboost.json"
_UNUSED_RE = re.compile(r"Parameters:\s*\{(.*?)\}\s*are not used")
_PREFIX_RE = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


def _message(err: Exception) -> str:
    """XGBoost's error without its timestamp, source position and stack trace."""
    first = next((line for line in str(err).splitlines() if line.strip()), str(err))
    return _PREFIX_RE.sub("", first).strip()


def _configure(params: dict[str, Any]) -> tuple[str | None, list[str], str]:
    """Configure a booster on a few rows: (error, names XGBoost does not use, config JSON)."""
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    dtrain = xgb.DMatrix(x, label=np.linspace(0.1, 0.9, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = xgb.Booster({**params, "verbosity": 1}, [dtrain]).save_config()
        except xgb.core.XGBoostError as e:
            return _message(e), [], ""
    unused: list[str] = []
    for w in caught:
        m = _UNUSED_RE.search(str(w.message))
        if m:
            unused += [n.strip().strip('"') for n in m.group(1).split(",") if n.strip()]
    return None, unused, config


def _config_keys(config: str) -> list[str]:
    """Every parameter name in a booster's configuration (for 'did you mean')."""
    out: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str):
                    out.add(k)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(config or "{}"))
    return sorted(out)


def check_xgb_params(params: dict[str, Any]) -> list[str]:
    """Unknown names and rejected values become ConfigErrors naming the kwarg; returns the
    names of :data:`IGNORED_PARAMS` given."""
    error, unused, config = _configure(params)
    if error is not None:
        context = {k: params[k] for k in ("objective", "num_class", "booster") if k in params}
        for name, value in params.items():
            alone, _, _ = _configure({**context, name: value})
            if alone is not None:
                raise ConfigError(f"XGBoost rejects {value!r}: {alone}", f"{MODEL_PATH}.{name}")
        raise ConfigError(f"XGBoost rejects these parameters: {error}", MODEL_PATH)
    for name in unused:
        if name in IGNORED_PARAMS:
            continue
        hint = difflib.get_close_matches(name, _config_keys(config), n=1)
        more = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"XGBoost does not use this parameter{more}", f"{MODEL_PATH}.{name}")
    return [name for name in unused if name in IGNORED_PARAMS]


class _EvalLog(xgb.callback.TrainingCallback):
    """The evaluation results every ``period`` rounds, to the log (see training_log)."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        results = [
            (data, metric, values[-1])
            for data, metrics in evals_log.items()
            for metric, values in metrics.items()
        ]
        training_log.log_round(self.period, epoch + 1, results)
        return False


class XGBModel(Model):
    """Gradient-boosted trees by XGBoost (Qlib's ``XGBModel``); kwargs are XGBoost parameters.

    ``nthread`` (or ``n_jobs``) defaults to ``$ALPHAMILL_NUM_THREADS`` or this worker's share of
    the cores, else XGBoost's default (all cores). ``best_iteration`` is a number of rounds
    (1-based, as LightGBM's).
    """

    format = "xgboost-json"

    def __init__(self, num_boost_round: int = 1000, early_stopping_rounds: int = 50, **xgb_params: Any):
        super().__init__()
        self.num_boost_round = training_log.check_rounds(num_boost_round, "num_boost_round")
        self.early_stopping_rounds = training_log.check_rounds(
            early_stopping_rounds, "early_stopping_rounds"
        )
        for name in check_xgb_params(xgb_params):
            logger.warning(
                "%s.%s is not a parameter of xgboost.train and is ignored (as in Qlib): the "
                "rounds are num_boost_round (%d) with early stopping after %d rounds",
                MODEL_PATH, name, self.num_boost_round, self.early_stopping_rounds,
            )
        self.xgb_params = dict(xgb_params)
        self.model: xgb.Booster | None = None
        self.best_iteration: int | None = None
        self.evals_result: training_log.Curves = {}

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            **self.xgb_params,
        }

    def _threads(self) -> int | None:
        for name in _THREAD_PARAMS:
            if name in self.xgb_params:
                n = int(self.xgb_params[name])
                return n if n > 0 else None  # 0 or -1: XGBoost's default, every core
        return threads.current()

    def _params(self) -> dict[str, Any]:
        params = {k: v for k, v in self.xgb_params.items() if k not in IGNORED_PARAMS}
        n = self._threads()
        if n and not any(name in params for name in _THREAD_PARAMS):
            params["nthread"] = n
        return params

    def _dmatrix(self, x: pd.DataFrame, label: np.ndarray | None, segment: str) -> xgb.DMatrix:
        values = x.to_numpy()
        if values.dtype != np.float32:
            values = np.asarray(values, dtype=np.float32)
        try:
            return xgb.DMatrix(
                values, label=label, feature_names=_safe_feature_names(list(x.columns)),
                nthread=self._threads(),
            )
        except xgb.core.XGBoostError as e:
            if "inf" in str(e):
                raise DataError(
                    f"the {segment} features contain +-inf, which XGBoost refuses; add "
                    "{'class': 'ProcessInf'} to the handler's infer_processors"
                ) from None
            raise

    def fit(
        self,
        dataset: Any,
        num_boost_round: int | None = None,
        early_stopping_rounds: int | None = None,
        verbose_eval: int | bool = 20,
        evals_result: dict | None = None,
        reweighter: Any = None,
    ) -> XGBModel:
        """Train on ``train`` with early stopping on ``valid`` (Qlib's ``XGBModel.fit``).

        ``evals_result`` receives Qlib's shape: ``{"train": [first metric per round],
        "valid": [...]}``; ``self.evals_result`` keeps every metric. Inside a running
        recorder the curves are logged as ``rmse.train`` / ``rmse.valid`` per round.
        """
        if reweighter is not None:
            raise ConfigError("sample reweighting is not supported", "task.reweighter")
        period = training_log.check_period(verbose_eval)
        rounds = num_boost_round or self.num_boost_round
        stopping = early_stopping_rounds or self.early_stopping_rounds
        train_df, valid_df = training_frames(dataset)
        self.feature_names = [str(c) for c in train_df["feature"].columns]
        release_file_pages()
        t0 = time.perf_counter()
        x, y = split_xy(train_df)
        del train_df
        dtrain = self._dmatrix(x, y, "train")
        del x
        evals = [(dtrain, "train")]
        if valid_df is not None and not valid_df.empty:
            xv, yv = split_xy(valid_df)
            evals.append((self._dmatrix(xv, yv, "valid"), "valid"))
            del xv
        del valid_df
        release_memory()
        raw: dict[str, Any] = {}
        self.model = xgb.train(
            self._params(),
            dtrain,
            num_boost_round=rounds,
            evals=evals,
            early_stopping_rounds=stopping if len(evals) > 1 else None,
            evals_result=raw,
            verbose_eval=False,
            callbacks=[_EvalLog(period)] if period else None,
        )
        self.fit_seconds = time.perf_counter() - t0
        n = self._threads() or threads.cores()
        self.fit_core_seconds = self.fit_seconds * min(n, threads.cores())
        del dtrain, evals
        if len(raw) > 1:
            self.best_iteration = int(self.model.best_iteration) + 1
        else:
            self.best_iteration = int(self.model.num_boosted_rounds())
        self.evals_result = {d: {m: list(v) for m, v in ms.items()} for d, ms in raw.items()}
        self.fitted = True
        training_log.finish("XGBModel", self.best_iteration, self.evals_result, evals_result)
        return self

    def predict(self, dataset: Any, segment: str | slice = "test") -> pd.Series:
        if self.model is None:
            raise ConfigError("XGBModel is not fitted; call fit(dataset) first")
        x = dataset.prepare(segment, col_set="feature", data_key="infer")
        n = self._threads()
        if n:
            self.model.set_param({"nthread": n})
        values = self.model.predict(self._dmatrix(x, None, str(segment)))
        return prediction_series(values, x.index)

    def feature_importance(self, importance_type: str = "weight") -> pd.Series:
        """Every feature's importance (0 for unused ones), in the features' order."""
        if self.model is None:
            raise ConfigError("XGBModel is not fitted; call fit(dataset) first")
        names = self.feature_names or list(self.model.feature_names or [])
        score = self.model.get_score(importance_type=importance_type)
        safe = _safe_feature_names(names)
        return pd.Series([float(score.get(s, 0.0)) for s in safe], index=names, dtype="float64")

    def get_feature_importance(self, importance_type: str = "weight") -> pd.Series:
        """Qlib's name: the features XGBoost used, largest importance first."""
        imp = self.feature_importance(importance_type)
        used = set(self.model.get_score(importance_type=importance_type)) if self.model else set()
        keep = [s in used for s in _safe_feature_names(list(imp.index))]
        return imp[keep].sort_values(ascending=False)

    # -- persistence ------------------------------------------------------------------------
    def _library_versions(self) -> dict[str, str]:
        return {**super()._library_versions(), "xgboost": xgb.__version__}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"best_iteration": self.best_iteration, "model_file": MODEL_FILE,
                "evals_result": self.evals_result}

    def _save_payload(self, path: Path) -> None:
        assert self.model is not None
        tmp = path / f".tmp-{MODEL_FILE}"  # XGBoost picks the format from the extension
        self.model.save_model(str(tmp))
        os.replace(tmp, path / MODEL_FILE)

    def _load_payload(self, path: Path, meta: dict[str, Any]) -> None:
        file = path / meta.get("model_file", MODEL_FILE)
        try:
            self.model = xgb.Booster(model_file=str(file))
        except xgb.core.XGBoostError as e:
            raise ConfigError(f"cannot read XGBoost model: {_message(e)}", str(file)) from None
        self.best_iteration = meta.get("best_iteration")
        self.evals_result = meta.get("evals_result") or {}
