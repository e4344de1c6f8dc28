"""Datasets and data handlers with Qlib's names: ``DatasetH``, ``DataHandlerLP``, ``Alpha158``,
``Alpha360``.

Task configs name them as ``{"class": "DatasetH", "module_path": "alphamill.dataset", ...}``
(``alphamill.dataset`` is the default module for datasets and handlers).
"""

from alphamill.dataset.alpha360 import Alpha360
from alphamill.dataset.dataset import Dataset, DatasetH
from alphamill.dataset.handler import (
    DEFAULT_LEARN_PROCESSORS,
    Alpha158,
    DataHandler,
    DataHandlerLP,
)
from alphamill.dataset.placeholder import fill_placeholder, get_item_from_obj

__all__ = [
    "DEFAULT_LEARN_PROCESSORS",
    "Alpha158",
    "Alpha360",
    "DataHandler",
    "DataHandlerLP",
    "Dataset",
    "DatasetH",
    "fill_placeholder",
    "get_item_from_obj",
]
