"""Pure helpers of task_train: params flattening, task checks, recorder references."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from alphamill.errors import ConfigError
from alphamill.workflow.task_train import _check_task, _task_json, flatten_dict, recorder_ref


def test_flatten_dict_like_qlib():
    task = {
        "model": {"class": "LGBModel", "kwargs": {"learning_rate": 0.2, "loss": "mse"}},
        "dataset": {"kwargs": {"segments": {"train": ["2010-01-01", "2014-12-31"]}}},
        "record": [{"class": "SignalRecord"}, {"class": "SigAnaRecord", "kwargs": {}}],
        "note": "x" * 2000,
    }
    flat = flatten_dict(task)
    assert flat["model.kwargs.learning_rate"] == "0.2"
    assert flat["model.kwargs.loss"] == "mse"
    assert flat["dataset.kwargs.segments.train"] == '["2010-01-01", "2014-12-31"]'
    assert flat["record.1.class"] == "SigAnaRecord"
    assert len(flat["note"]) == 500
    assert flat["record.1.kwargs"] == "{}"
    assert flatten_dict({"a": {"x<y>": 1}}) == {"a.x_y_": "1"}


def test_check_task_and_json():
    with pytest.raises(ConfigError, match="task: missing 'dataset'"):
        _check_task({"model": {}})
    with pytest.raises(ConfigError, match="task.record: expected a record config"):
        _check_task({"model": {}, "dataset": {}, "record": 3})
    with pytest.raises(ConfigError, match="JSON-compatible"):
        _task_json({"model": {"kwargs": {"x": object()}}, "dataset": {}})
    with pytest.raises(ConfigError, match="JSON-compatible"):
        _task_json({"model": {"kwargs": {"x": float("nan")}}, "dataset": {}})
    seg = (pd.Timestamp("2010-01-01"), dt.date(2010, 12, 31))
    text = _task_json({"model": {}, "dataset": {"kwargs": {"segments": {"train": seg}}}})
    assert json.loads(text)["dataset"]["kwargs"]["segments"]["train"] == ["2010-01-01", "2010-12-31"]


def test_recorder_ref_forms():
    class Rec:
        def to_ref(self):
            return {"experiment_id": "1", "run_id": "abc", "experiment_name": "e"}

    assert recorder_ref(Rec()) == {"experiment_id": "1", "run_id": "abc", "experiment_name": "e"}
    assert recorder_ref({"experiment_id": 1, "run_id": "abc", "experiment_name": "e", "x": 2}) == {
        "experiment_id": "1", "run_id": "abc", "experiment_name": "e"}
    with pytest.raises(ConfigError, match="expected a recorder"):
        recorder_ref(42)
