"""Qlib's ``Alpha360`` handler (``qlib.contrib.data.handler.Alpha360``)."""

from __future__ import annotations

from typing import Any

from alphamill.dataset.handler import _FeatureSetHandler

#: Qlib's default infer processors of Alpha360. ``ZScoreNorm`` is fitted on the handler's fit
#: window; with no ``fields_group`` these apply to every column, the label included, as in Qlib.
ALPHA360_INFER_PROCESSORS: list[dict[str, Any]] = [
    {"class": "ProcessInf", "kwargs": {}},
    {"class": "ZScoreNorm", "kwargs": {}},
    {"class": "Fillna", "kwargs": {}},
]


class Alpha360(_FeatureSetHandler):
    """The last 60 days of close/open/high/low/vwap over today's close and of volume over today's
    volume (``CLOSE59`` ... ``VOLUME0``, 360 features) and the 2-day forward return label.

    Default processors as Qlib's: infer ``ProcessInf``, ``ZScoreNorm`` (needs
    ``fit_start_time`` / ``fit_end_time``), ``Fillna``; learn ``DropnaLabel`` then
    ``CSZScoreNorm`` of the label. Every other kwarg is :class:`~alphamill.dataset.Alpha158`'s.
    """

    FEATURE_SET = "alpha360"
    DEFAULT_INFER_PROCESSORS = ALPHA360_INFER_PROCESSORS
