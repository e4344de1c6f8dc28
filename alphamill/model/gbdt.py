"""LightGBM with Qlib's ``LGBModel`` kwargs and behaviour (early stopping on ``valid``)."""

from __future__ import annotations

import difflib
import os
import re
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from alphamill import threads
from alphamill.errors import ConfigError
from alphamill.memory import release_file_pages, release_memory
from alphamill.model import training_log
from alphamill.model.base import (
    MODEL_PATH,
    Model,
    check_kwarg,
    prediction_series,
    split_xy,
    training_frames,
)

LOSSES = ("mse", "binary")
#: LightGBM's histogram-layout switches; without one of them LightGBM times both layouts at the
#: start of every fit. Column-wise is the faster one for Alpha158-sized panels (few hundred
#: features, hundreds of thousands of rows) and gives the same trees.
_LAYOUT_PARAMS = ("force_col_wise", "force_row_wise")
#: A fixed number of LightGBM threads for every model of the process (see alphamill.threads).
THREADS_ENV = threads.THREADS_ENV


def _lgb_param_names() -> dict[str, str]:
    """Every LightGBM parameter name and alias -> its canonical name."""
    from lightgbm.basic import _ConfigAliases

    out: dict[str, str] = {}
    for canonical, aliases in _ConfigAliases._get_all_param_aliases().items():
        out[canonical] = canonical
        for a in aliases:
            out[a] = canonical
    return out


def _check_lgb_params(params: dict[str, Any]) -> None:
    """Unknown names and values LightGBM rejects become ConfigErrors naming the kwarg."""
    known = _lgb_param_names()
    for name in params:
        if name not in known:
            hint = difflib.get_close_matches(name, list(known), n=1)
            more = f"; did you mean {known[hint[0]]!r}?" if hint else ""
            raise ConfigError(f"unknown LightGBM parameter{more}", f"{MODEL_PATH}.{name}")
    x = np.arange(20, dtype="float64").reshape(10, 2)
    y = np.arange(10, dtype="float64") % 2

    def rejected(p: dict[str, Any]) -> str | None:
        try:
            ds = lgb.Dataset(x, label=y, params={"verbosity": -1}, free_raw_data=False)
            lgb.Booster(params={**p, "verbosity": -1}, train_set=ds)
        except (lgb.basic.LightGBMError, ValueError, TypeError) as e:
            return str(e)
        return None

    if rejected(params) is None:
        return
    for name, value in params.items():
        if name in ("objective", "verbosity"):
            continue
        msg = rejected({"objective": params.get("objective", "regression"), name: value})
        if msg is not None:
            raise ConfigError(f"LightGBM rejects {value!r}: {msg}", f"{MODEL_PATH}.{name}")
    raise ConfigError(f"LightGBM rejects these parameters: {rejected(params)}", MODEL_PATH)


def _safe_feature_names(names: list[Any]) -> list[str]:
    """LightGBM refuses some characters in feature names; keep a readable equivalent."""
    return [re.sub(r"[^0-9A-Za-z_]", "_", str(n)) for n in names]


class _EvalLogCallback:
    """LightGBM callback: the evaluation results every ``period`` rounds, to the log."""

    order = 10  # as lightgbm.log_evaluation: before early stopping, which may raise

    def __init__(self, period: int):
        self.period = period

    def __call__(self, env: Any) -> None:
        results = [(r[0], r[1], r[2]) for r in env.evaluation_result_list]
        training_log.log_round(self.period, env.iteration + 1, results)


class LGBModel(Model):
    """Gradient-boosted trees (Qlib's ``qlib.contrib.model.gbdt.LGBModel``).

    ``loss`` is ``"mse"`` or ``"binary"`` (labels become ``label > 0``); any other kwarg is a
    LightGBM parameter (``learning_rate``, ``num_leaves``, ``colsample_bytree``, ...). Training
    stops early after ``early_stopping_rounds`` rounds without improvement on ``valid`` when the
    dataset has that segment. ``num_threads`` defaults to ``$ALPHAMILL_NUM_THREADS`` if set, else
    LightGBM's own default (all cores). Unless ``force_row_wise`` or ``force_col_wise`` is
    given, ``force_col_wise=True`` is set (same trees, no layout test at every fit).
    ``fit_seconds`` is the time spent in LightGBM: building its Datasets and ``lightgbm.train``.
    """

    format = "lightgbm-text"

    def __init__(
        self,
        loss: str = "mse",
        early_stopping_rounds: int = 50,
        num_boost_round: int = 1000,
        num_threads: int | None = None,
        **lgb_params: Any,
    ):
        super().__init__()
        check_kwarg(loss in LOSSES, "loss", f"one of {', '.join(LOSSES)}", loss)
        for name, value in (
            ("early_stopping_rounds", early_stopping_rounds),
            ("num_boost_round", num_boost_round),
        ):
            check_kwarg(
                isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0,
                name,
                "a positive integer",
                value,
            )
        if num_threads is not None:
            check_kwarg(
                isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 0,
                "num_threads",
                "a non-negative integer (0 = all cores)",
                num_threads,
            )
        self.loss = loss
        self.early_stopping_rounds = int(early_stopping_rounds)
        self.num_boost_round = int(num_boost_round)
        self.num_threads = num_threads
        self.lgb_params = dict(lgb_params)
        self.params: dict[str, Any] = {"objective": loss, "verbosity": -1, **self.lgb_params}
        _check_lgb_params(self.params)
        self.model: lgb.Booster | None = None
        self.best_iteration: int | None = None
        self.evals_result: dict[str, Any] = {}

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "early_stopping_rounds": self.early_stopping_rounds,
            "num_boost_round": self.num_boost_round,
            "num_threads": self.num_threads,
            **self.lgb_params,
        }

    def _dynamic_threads(self) -> bool:
        """Whether this fit follows the local workers' shared core budget while it runs."""
        return self.num_threads is None and threads.shared()

    def _threads(self, fitting: bool = False) -> dict[str, Any]:
        """``num_threads`` for LightGBM: the kwarg, else the fixed or shared count. A fit that
        follows the shared budget asks for every core and is held to its share by the cap."""
        n = self.num_threads
        if n is None:
            n = threads.cores() if fitting and self._dynamic_threads() else threads.current()
        return {} if n is None else {"num_threads": n}

    def _thread_cap(self) -> threads.ThreadCap:
        import ctypes

        from lightgbm.basic import _LIB

        return threads.ThreadCap(lambda n: _LIB.LGBM_SetMaxThreads(ctypes.c_int(n)), time.perf_counter)

    def _train_params(self) -> dict[str, Any]:
        """The parameters of ``lightgbm.train`` and of its Datasets (the same dict, so a Dataset
        built before training is not rebuilt)."""
        params = {**self.params, **self._threads(fitting=True)}
        known = _lgb_param_names()
        if not any(known.get(name) in _LAYOUT_PARAMS for name in params):
            params["force_col_wise"] = True
        return params

    def _lgb_dataset(
        self, df: pd.DataFrame, params: dict[str, Any], reference: lgb.Dataset | None = None
    ) -> lgb.Dataset:
        """A constructed Dataset, so that the frame's float32 values can be dropped at once.

        The feature block is handed to LightGBM as it is stored (float32, one contiguous
        block), which LightGBM reads without a copy; a float64 or mixed frame is converted to
        one float32 block first, which is what LightGBM would bin anyway.
        """
        x, y = split_xy(df)
        if self.loss == "binary":
            y = (y > 0).astype("float64")
        values = x.to_numpy()
        if values.dtype != np.float32 or not (
            values.flags.c_contiguous or values.flags.f_contiguous
        ):
            values = np.asarray(values, dtype=np.float32, order="C")
        names = _safe_feature_names(list(x.columns))
        del x
        ds = lgb.Dataset(
            values,
            label=y,
            feature_name=names,
            reference=reference,
            params=params,
            free_raw_data=True,
        )
        return ds.construct()

    def fit(
        self,
        dataset: Any,
        num_boost_round: int | None = None,
        early_stopping_rounds: int | None = None,
        verbose_eval: int | bool = 20,
        evals_result: dict | None = None,
        reweighter: Any = None,
    ) -> LGBModel:
        """Train on ``train`` with early stopping on ``valid`` (Qlib's ``LGBModel.fit``).

        Every ``verbose_eval`` rounds the train/valid results are logged (logger
        ``alphamill.model``, INFO); the curves land in ``evals_result`` (as LightGBM records
        them) and, inside a running recorder, as the metrics ``l2.train`` / ``l2.valid`` per
        round.
        """
        if reweighter is not None:
            raise ConfigError("sample reweighting is not supported", "task.reweighter")
        period = training_log.check_period(verbose_eval)
        train_df, valid_df = training_frames(dataset)
        self.feature_names = [str(c) for c in train_df["feature"].columns]
        # the feature cache's pages read to build the frames need not stay mapped while
        # LightGBM bins and trains (any page still needed is mapped again from the file)
        release_file_pages()
        params = self._train_params()
        cap = self._thread_cap() if self._dynamic_threads() else None
        # the Datasets are built (binned) here, one at a time, and each frame is released as
        # soon as LightGBM holds its bins, so the float32 frames and LightGBM's binning sample
        # are never all in memory at once; the building counts as LightGBM time
        t0 = time.perf_counter()
        if cap is not None:
            cap.start()
        try:
            dtrain = self._lgb_dataset(train_df, params)
            del train_df
            # the training set is evaluated too (Qlib's ``l2.train`` curve): LightGBM keeps its
            # scores anyway, and early stopping skips it by its name
            valid_sets, valid_names = [dtrain], ["train"]
            if valid_df is not None and not valid_df.empty:
                valid_sets.append(self._lgb_dataset(valid_df, params, reference=dtrain))
                valid_names.append("valid")
            del valid_df
            release_memory()
            result: dict[str, Any] = {}
            callbacks: list[Any] = [lgb.record_evaluation(result)]
            if cap is not None:  # this process's share of the cores, re-read every iteration
                callbacks.append(cap)
            if len(valid_sets) > 1:
                callbacks.append(
                    lgb.early_stopping(
                        early_stopping_rounds or self.early_stopping_rounds, verbose=False
                    )
                )
            if period:
                callbacks.append(_EvalLogCallback(period))
            self.model = lgb.train(
                params,
                dtrain,
                num_boost_round=num_boost_round or self.num_boost_round,
                valid_sets=valid_sets,
                valid_names=valid_names,
                callbacks=callbacks,
            )
        finally:
            if cap is not None:
                cap.stop()
        self.fit_seconds = time.perf_counter() - t0
        if cap is not None:
            self.fit_core_seconds = cap.core_seconds
        else:
            n = params.get("num_threads") or threads.cores()
            self.fit_core_seconds = self.fit_seconds * min(int(n), threads.cores())
        del dtrain, valid_sets
        self.best_iteration = int(self.model.best_iteration or self.model.current_iteration())
        self.evals_result = result
        if evals_result is not None:
            evals_result.update(result)
        self.fitted = True
        training_log.log_best("LGBModel", self.best_iteration, result)
        training_log.record_curves(result)
        return self

    def predict(self, dataset: Any, segment: str | slice = "test") -> pd.Series:
        if self.model is None:
            raise ConfigError("LGBModel is not fitted; call fit(dataset) first")
        x = dataset.prepare(segment, col_set="feature", data_key="infer")
        values = self.model.predict(x.to_numpy(), **self._threads())
        return prediction_series(values, x.index)

    def feature_importance(self, importance_type: str = "split") -> pd.Series:
        if self.model is None:
            raise ConfigError("LGBModel is not fitted; call fit(dataset) first")
        return pd.Series(
            self.model.feature_importance(importance_type=importance_type),
            index=self.feature_names or self.model.feature_name(),
        )

    def get_feature_importance(self, importance_type: str = "split") -> pd.Series:
        """Qlib's name: the importances, largest first."""
        return self.feature_importance(importance_type).sort_values(ascending=False)

    # -- persistence ------------------------------------------------------------------------
    def _library_versions(self) -> dict[str, str]:
        return {**super()._library_versions(), "lightgbm": lgb.__version__}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"best_iteration": self.best_iteration, "model_file": "model.txt",
                "evals_result": self.evals_result}

    def _save_payload(self, path: Path) -> None:
        assert self.model is not None
        tmp = path / ".model.txt.tmp"
        self.model.save_model(str(tmp))
        os.replace(tmp, path / "model.txt")

    def _load_payload(self, path: Path, meta: dict[str, Any]) -> None:
        file = path / meta.get("model_file", "model.txt")
        try:
            self.model = lgb.Booster(model_file=str(file))
        except lgb.basic.LightGBMError as e:
            raise ConfigError(f"cannot read LightGBM model: {e}", str(file)) from None
        self.best_iteration = meta.get("best_iteration")
        self.evals_result = meta.get("evals_result") or {}
