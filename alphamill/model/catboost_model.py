"""CatBoost with Qlib's ``CatBoostModel`` kwargs and behaviour (``qlib.contrib.model.catboost_model``).

``loss`` is ``"RMSE"`` or ``"Logloss"`` (labels become ``label > 0``, as ``LGBModel``'s
``binary``); every other kwarg is a CatBoost parameter (``learning_rate``, ``depth`` /
``max_depth``, ``l2_leaf_reg``, ``grow_policy``, ...). As in Qlib, training keeps the best
model on ``valid`` (``use_best_model``) and runs on the GPU when CatBoost finds one, unless
``task_type`` is given. Parameters are checked when the model is built, by one round on a few
rows: a name CatBoost does not know or a value it rejects is a ConfigError naming the kwarg.
The number of rounds may also be given as CatBoost's ``iterations`` (or its aliases).

CatBoost is an optional dependency (``pip install 'alphamill[catboost]'``): without it, building
the model says so.
"""

from __future__ import annotations

import difflib
import functools
import io
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphamill import threads
from alphamill.errors import ConfigError
from alphamill.memory import release_file_pages, release_memory
from alphamill.model import training_log
from alphamill.model.base import MODEL_PATH, Model, prediction_series, split_xy, training_frames

try:
    import catboost
except ImportError:  # an optional extra
    catboost = None

logger = logging.getLogger("alphamill.model")

LOSSES = ("RMSE", "Logloss")
#: CatBoost's names for the number of rounds (``num_boost_round`` is alphamill's and Qlib's).
ROUND_ALIASES = ("iterations", "n_estimators", "num_trees", "num_boost_round")
#: Parameters that choose what CatBoost prints; when none is given, fit's ``verbose_eval`` does.
_OUTPUT_PARAMS = ("verbose", "verbose_eval", "silent", "logging_level", "metric_period")
_THREAD_PARAMS = ("thread_count",)
MODEL_FILE = "catboost.cbm"
INSTALL_HINT = "pip install 'alphamill[catboost]'"
_SOURCE_RE = re.compile(r"^\S+\.(?:cpp|h):\d+:\s*")


def _require_catboost() -> Any:
    if catboost is None:
        raise ConfigError(
            f"CatBoostModel needs the catboost package, which is not installed: {INSTALL_HINT}",
            "task.model",
        )
    return catboost


def _message(err: Exception) -> str:
    first = next((line for line in str(err).splitlines() if line.strip()), str(err))
    return _SOURCE_RE.sub("", first).strip()


@functools.lru_cache(maxsize=1)
def default_task_type() -> str:
    """``"GPU"`` when CatBoost sees a GPU, else ``"CPU"`` (Qlib's choice; asked once)."""
    from catboost.utils import get_gpu_device_count

    # without a usable driver CatBoost prints a CUDA error on the process's stderr: not ours
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                count = get_gpu_device_count()
            finally:
                os.dup2(saved, 2)
    except Exception:  # no usable driver
        count = 0
    finally:
        os.close(saved)
    return "GPU" if count > 0 else "CPU"


def _fit_error(params: dict[str, Any]) -> str | None:
    """CatBoost's complaint about ``params`` after one round on a few rows, or None."""
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.tile([0.0, 1.0], 10)
    trial = {
        **params,
        "iterations": 1,
        "allow_writing_files": False,
        "logging_level": "Silent",
        "thread_count": 1,
    }
    for name in ("verbose", "verbose_eval", "silent", "metric_period", "early_stopping_rounds", "od_wait"):
        trial.pop(name, None)
    try:
        catboost.CatBoost(trial).fit(catboost.Pool(x, y))
    except catboost.CatBoostError as e:
        return _message(e)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


@functools.lru_cache(maxsize=1)
def _known_params() -> list[str]:
    """CatBoost's parameter names (of a default model), for 'did you mean'."""
    model = catboost.CatBoost({"iterations": 1, "allow_writing_files": False, "logging_level": "Silent"})
    model.fit(catboost.Pool(np.arange(8, dtype=np.float32).reshape(4, 2), np.array([0.0, 1.0, 0.0, 1.0])))
    return sorted({*model.get_all_params(), *ROUND_ALIASES, "max_depth", "random_state", "reg_lambda"})


def check_catboost_params(params: dict[str, Any]) -> None:
    """Unknown names and rejected values become ConfigErrors naming the kwarg."""
    error = _fit_error(params)
    if error is None:
        return
    context = {k: params[k] for k in ("loss_function", "task_type") if k in params}
    for name, value in params.items():
        if name in context:
            continue
        alone = _fit_error({**context, name: value})
        if alone is not None and alone.startswith("Unknown option"):
            hint = difflib.get_close_matches(name, _known_params(), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"CatBoost has no parameter {name!r}{more}", f"{MODEL_PATH}.{name}")
        if alone is not None:
            raise ConfigError(f"CatBoost rejects {value!r}: {alone}", f"{MODEL_PATH}.{name}")
    raise ConfigError(f"CatBoost rejects these parameters: {error}", MODEL_PATH)


class _LogWriter(io.TextIOBase):
    """A text stream for CatBoost's ``log_cout``: each complete line goes to the log."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                training_log.logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self._buf.strip():
            training_log.logger.info("%s", self._buf.rstrip())
        self._buf = ""


class CatBoostModel(Model):
    """Gradient-boosted oblivious trees by CatBoost (Qlib's ``CatBoostModel``).

    ``thread_count`` defaults to ``$ALPHAMILL_NUM_THREADS`` or this worker's share of the
    cores, else CatBoost's default (all cores). CatBoost writes no ``catboost_info`` folder
    unless ``allow_writing_files`` is given. ``best_iteration`` is a number of rounds (1-based).
    """

    format = "catboost-cbm"

    def __init__(
        self,
        loss: str = "RMSE",
        num_boost_round: int | None = None,
        early_stopping_rounds: int = 50,
        **kwargs: Any,
    ):
        super().__init__()
        _require_catboost()
        if loss not in LOSSES:
            raise ConfigError(f"expected one of {', '.join(LOSSES)}, got {loss!r}", f"{MODEL_PATH}.loss")
        if "loss_function" in kwargs:
            raise ConfigError("give the loss as 'loss' (RMSE or Logloss)", f"{MODEL_PATH}.loss_function")
        rounds = {"num_boost_round": num_boost_round} if num_boost_round is not None else {}
        rounds.update({k: kwargs.pop(k) for k in ROUND_ALIASES if k in kwargs})
        if len(rounds) > 1:
            raise ConfigError(
                f"the number of rounds is given twice ({', '.join(rounds)}); keep one",
                f"{MODEL_PATH}.{sorted(rounds)[-1]}",
            )
        name, value = next(iter(rounds.items()), ("num_boost_round", 1000))
        self.num_boost_round = training_log.check_rounds(value, name)
        if "od_wait" in kwargs:
            early_stopping_rounds = kwargs.pop("od_wait")
        self.early_stopping_rounds = training_log.check_rounds(
            early_stopping_rounds, "early_stopping_rounds"
        )
        self.loss = loss
        self.cb_params = dict(kwargs)
        check_catboost_params(
            {"loss_function": loss, "task_type": default_task_type(), **self.cb_params}
        )
        self.model: Any = None
        self.best_iteration: int | None = None
        self.evals_result: training_log.Curves = {}

    def config_kwargs(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            **self.cb_params,
        }

    def _threads(self) -> int | None:
        given = self.cb_params.get("thread_count")
        if given is not None:
            return None if int(given) < 0 else int(given)
        return threads.current()

    def _params(self, rounds: int, stopping: int | None, period: int) -> dict[str, Any]:
        params: dict[str, Any] = {"loss_function": self.loss, **self.cb_params, "iterations": rounds}
        if stopping is not None:
            params["early_stopping_rounds"] = stopping
        params.setdefault("task_type", default_task_type())
        params.setdefault("allow_writing_files", False)
        n = self._threads()
        if n and "thread_count" not in params:
            params["thread_count"] = n
        if not any(name in params for name in _OUTPUT_PARAMS):
            params["verbose"] = period if period else False
        return params

    def _pool(self, df: pd.DataFrame, with_label: bool = True) -> Any:
        if with_label:
            x, y = split_xy(df)
            if self.loss == "Logloss":
                y = (y > 0).astype("float64")
        else:
            x, y = df, None
        values = x.to_numpy()
        if values.dtype != np.float32:
            values = np.asarray(values, dtype=np.float32)
        return catboost.Pool(values, label=y, feature_names=[str(c) for c in x.columns])

    def fit(
        self,
        dataset: Any,
        num_boost_round: int | None = None,
        early_stopping_rounds: int | None = None,
        verbose_eval: int | bool = 20,
        evals_result: dict | None = None,
        reweighter: Any = None,
    ) -> CatBoostModel:
        """Train on ``train``, keeping the best model on ``valid`` (Qlib's ``CatBoostModel.fit``).

        CatBoost's progress lines go to the log every ``verbose_eval`` rounds.
        ``evals_result`` receives ``{"train": [loss per round], "valid": [...]}`` (the shape
        Qlib builds); inside a running recorder the curves are logged as ``RMSE.train`` /
        ``RMSE.valid`` per round.
        """
        if reweighter is not None:
            raise ConfigError("sample reweighting is not supported", "task.reweighter")
        period = training_log.check_period(verbose_eval)
        train_df, valid_df = training_frames(dataset)
        self.feature_names = [str(c) for c in train_df["feature"].columns]
        release_file_pages()
        t0 = time.perf_counter()
        train_pool = self._pool(train_df)
        del train_df
        valid_pool = None
        if valid_df is not None and not valid_df.empty:
            valid_pool = self._pool(valid_df)
        del valid_df
        release_memory()
        stopping = (early_stopping_rounds or self.early_stopping_rounds) if valid_pool else None
        params = self._params(num_boost_round or self.num_boost_round, stopping, period)
        model = catboost.CatBoost(params)
        out = _LogWriter()
        try:
            model.fit(
                train_pool,
                eval_set=valid_pool,
                use_best_model=valid_pool is not None,
                log_cout=out,
                log_cerr=out,
            )
        except catboost.CatBoostError as e:
            raise ConfigError(f"CatBoost failed: {_message(e)}", MODEL_PATH) from None
        finally:
            out.flush()
        self.model = model
        self.fit_seconds = time.perf_counter() - t0
        n = self._threads() or threads.cores()
        self.fit_core_seconds = self.fit_seconds * min(n, threads.cores())
        del train_pool, valid_pool
        names = {"learn": "train", "validation": "valid"}
        self.evals_result = {
            names.get(data, data): {m: [float(v) for v in vals] for m, vals in metrics.items()}
            for data, metrics in model.get_evals_result().items()
        }
        best = model.get_best_iteration()
        self.best_iteration = int(best) + 1 if best is not None else int(model.tree_count_)
        self.fitted = True
        training_log.finish("CatBoostModel", self.best_iteration, self.evals_result, evals_result)
        return self

    def predict(self, dataset: Any, segment: str | slice = "test") -> pd.Series:
        if self.model is None:
            raise ConfigError("CatBoostModel is not fitted; call fit(dataset) first")
        x = dataset.prepare(segment, col_set="feature", data_key="infer")
        n = self._threads()
        values = self.model.predict(self._pool(x, with_label=False), thread_count=n or -1)
        return prediction_series(values, x.index)

    def feature_importance(self, importance_type: str = "FeatureImportance") -> pd.Series:
        """Every feature's importance (CatBoost's ``get_feature_importance``), in order."""
        if self.model is None:
            raise ConfigError("CatBoostModel is not fitted; call fit(dataset) first")
        values = self.model.get_feature_importance(type=importance_type)
        return pd.Series(np.asarray(values, dtype="float64"), index=self.feature_names or self.model.feature_names_)

    def get_feature_importance(self, importance_type: str = "FeatureImportance") -> pd.Series:
        """Qlib's name: the importances, largest first."""
        return self.feature_importance(importance_type).sort_values(ascending=False)

    # -- persistence ------------------------------------------------------------------------
    def _library_versions(self) -> dict[str, str]:
        return {**super()._library_versions(), "catboost": catboost.__version__}

    def _extra_metadata(self) -> dict[str, Any]:
        return {"best_iteration": self.best_iteration, "model_file": MODEL_FILE,
                "evals_result": self.evals_result}

    def _save_payload(self, path: Path) -> None:
        assert self.model is not None
        tmp = path / f".tmp-{MODEL_FILE}"
        self.model.save_model(str(tmp), format="cbm")
        os.replace(tmp, path / MODEL_FILE)

    def _load_payload(self, path: Path, meta: dict[str, Any]) -> None:
        file = path / meta.get("model_file", MODEL_FILE)
        model = catboost.CatBoost()
        try:
            model.load_model(str(file), format="cbm")
        except catboost.CatBoostError as e:
            raise ConfigError(f"cannot read CatBoost model: {_message(e)}", str(file)) from None
        self.model = model
        self.best_iteration = meta.get("best_iteration")
        self.evals_result = meta.get("evals_result") or {}
