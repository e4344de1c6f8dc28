"""Models with Qlib's interface: ``fit(dataset)``, ``predict(dataset, segment) -> Series``.

Task configs name them as ``{"class": "LGBModel", "module_path": "alphamill.model", ...}``
(``alphamill.model`` is the default module for models). Every model saves itself into a
folder (its own format plus ``model.json``) and :func:`load_model` reloads any of them.
Model classes are imported on first use, so a linear model never pays for importing LightGBM.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from alphamill.model.base import Model, load_model

_LAZY = {
    "LGBModel": "alphamill.model.gbdt",
    "XGBModel": "alphamill.model.xgboost",
    "CatBoostModel": "alphamill.model.catboost_model",
    "LinearModel": "alphamill.model.linear",
    "SklearnModel": "alphamill.model.sklearn",
}

__all__ = [
    "CatBoostModel",
    "LGBModel",
    "LinearModel",
    "Model",
    "SklearnModel",
    "XGBModel",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alphamill.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
