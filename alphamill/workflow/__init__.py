"""Experiment workflow with Qlib's names: ``R`` (the recorder API) and ``task_train``.

``from alphamill.workflow import R`` works as ``from qlib.workflow import R`` does. Names are
imported on first use so that importing this package does not start MLflow.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "R": "alphamill.workflow.recorder",
    "task_train": "alphamill.workflow.task_train",
    "begin_task_train": "alphamill.workflow.task_train",
    "end_task_train": "alphamill.workflow.task_train",
    "recorder_ref": "alphamill.workflow.task_train",
    "load_recorded_model": "alphamill.workflow.task_train",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alphamill.workflow' has no attribute {name!r}")
