"""Models with Qlib's interface: ``fit(dataset)``, ``predict(dataset, segment) -> Series``.

Task configs name them as ``{"class": "LGBModel", "module_path": "alphamill.model", ...}``
(``alphamill.model`` is the default module for models). Every model saves itself into a
folder (its own format plus ``model.json``) and :func:`load_model` reloads any of them.
"""

from alphamill.model.base import Model, load_model
from alphamill.model.gbdt import LGBModel
from alphamill.model.linear import LinearModel
from alphamill.model.sklearn import SklearnModel

__all__ = ["LGBModel", "LinearModel", "Model", "SklearnModel", "load_model"]
