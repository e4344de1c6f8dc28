"""The model interface (Qlib's ``Model``) and the on-disk format shared by every model.

A saved model is a folder holding the model in its own format (LightGBM text, JSON
coefficients, joblib for scikit-learn estimators) plus ``model.json``: the class, the
constructor kwargs, the feature names and library versions. :func:`load_model` reads the
metadata and dispatches to the right class, so a collector or an online server can reload any
model without knowing its type.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError

METADATA_FILE = "model.json"
MODEL_PATH = "task.model.kwargs"


class Model:
    """A learnable model: ``fit(dataset)``, ``predict(dataset, segment) -> Series``.

    Subclasses set ``format`` and implement ``_save_payload(dir)`` / ``_load_payload(dir, meta)``.
    """

    format: str = ""

    def __init__(self) -> None:
        self.fitted = False
        self.feature_names: list[str] = []
        self.fit_seconds: float = 0.0
        #: seconds x threads inside the library's fit (parallel workers' share of the cores)
        self.fit_core_seconds: float = 0.0

    # -- the Qlib interface -------------------------------------------------------------------
    def fit(self, dataset: Any, **kwargs: Any) -> Model:
        raise NotImplementedError

    def predict(self, dataset: Any, segment: str | slice = "test") -> pd.Series:
        raise NotImplementedError

    def config_kwargs(self) -> dict[str, Any]:
        """The constructor kwargs, JSON-compatible (saved in the metadata)."""
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        import alphamill

        return {
            "class": type(self).__name__,
            "module_path": type(self).__module__,
            "kwargs": self.config_kwargs(),
            "format": self.format,
            "feature_names": list(self.feature_names),
            "fitted": self.fitted,
            "fit_seconds": self.fit_seconds,
            "versions": {"alphamill": alphamill.__version__, **self._library_versions()},
            **self._extra_metadata(),
        }

    def _library_versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "pandas": pd.__version__}

    def _extra_metadata(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model and ``model.json`` into folder ``path`` (created if missing)."""
        if not self.fitted:
            raise ConfigError(f"{type(self).__name__} is not fitted; call fit(dataset) first")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self._save_payload(out)
        write_json_atomic(out / METADATA_FILE, self.metadata())
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Read a model saved by :meth:`save` (of this class or a subclass)."""
        meta = read_metadata(path)
        klass = _model_class(meta, path)
        if not issubclass(klass, cls):
            raise ConfigError(
                f"{path} holds a {meta['class']}, not a {cls.__name__}", str(Path(path) / METADATA_FILE)
            )
        model = klass._blank(meta)
        model.feature_names = list(meta.get("feature_names", []))
        model.fit_seconds = float(meta.get("fit_seconds", 0.0))
        model._load_payload(Path(path), meta)
        model.fitted = True
        return model

    @classmethod
    def _blank(cls, meta: dict[str, Any]) -> Model:
        """An unfitted instance built from saved metadata, before its payload is read."""
        return cls(**meta.get("kwargs", {}))

    def _save_payload(self, path: Path) -> None:
        raise NotImplementedError

    def _load_payload(self, path: Path, meta: dict[str, Any]) -> None:
        raise NotImplementedError


def load_model(path: str | os.PathLike) -> Model:
    """Reload any saved model; the class comes from ``model.json``."""
    return Model.load(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / METADATA_FILE
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError("no saved model here (model.json is missing)", str(path)) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"corrupt model metadata: {e}", str(file)) from None
    if not isinstance(meta, dict) or "class" not in meta or "module_path" not in meta:
        raise ConfigError("model metadata must name 'class' and 'module_path'", str(file))
    return meta


def _model_class(meta: dict[str, Any], path: Any) -> type[Model]:
    """The class ``model.json`` names, under the rules of a task's model (trusted, public, a
    subclass of :class:`Model`), checked before anything is built from it."""
    from alphamill.instance import resolve_callable
    from alphamill.kinds import MODEL

    config = {"class": str(meta["class"]), "module_path": str(meta["module_path"])}
    file = str(Path(path) / METADATA_FILE)
    try:
        return resolve_callable(config, MODEL, path="model.json")
    except ConfigError as e:
        raise ConfigError(str(e), file) from None


def write_json_atomic(file: Path, obj: Any) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def training_frames(
    dataset: Any, include_valid: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Qlib's training data: the learn view of ``train`` and, when present, of ``valid``."""
    segments = getattr(dataset, "segments", {})
    if "train" not in segments:
        raise ConfigError(
            "the dataset has no 'train' segment; models need one", "task.dataset.kwargs.segments"
        )
    has_valid = "valid" in segments
    names = ["train", "valid"] if has_valid else ["train"]
    frames = dataset.prepare(names, col_set=["feature", "label"], data_key="learn")
    train = frames[0]
    valid = frames[1] if has_valid else None
    if train.empty:
        raise ConfigError(
            "the train segment has no rows after processing; check its dates and the data",
            "task.dataset.kwargs.segments.train",
        )
    if include_valid and valid is not None:
        train = pd.concat([train, valid])
        valid = None
    return train, valid


def split_xy(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Features and a 1-D label; several label columns are an error (as in Qlib)."""
    from alphamill.dataset.handler import fetch_df_by_col

    x = fetch_df_by_col(df, "feature")
    y = fetch_df_by_col(df, "label")
    if y.shape[1] != 1:
        raise ConfigError(
            f"expected one label column, got {y.shape[1]}: {list(y.columns)}",
            "task.dataset.kwargs.handler.kwargs.label",
        )
    return x, y.to_numpy().ravel()


def prediction_series(values: np.ndarray, index: pd.Index) -> pd.Series:
    """Predictions as Qlib gives them: a float Series named ``score`` on (datetime, instrument)."""
    return pd.Series(np.asarray(values, dtype="float64"), index=index, name="score")


def check_kwarg(cond: bool, name: str, expected: str, value: Any) -> None:
    """Raise a ConfigError naming ``task.model.kwargs.<name>`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"expected {expected}, got {value!r}", f"{MODEL_PATH}.{name}")
