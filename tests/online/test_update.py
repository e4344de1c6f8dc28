"""PredUpdater reuses the run's fitted infer processors and predicts only new dates."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd

from alphamill.online.state import open_state_store
from alphamill.online.update import PredUpdater, online_predictions, pred_key, rows_to_frame


def test_extension_with_fitted_processors_equals_recorded_predictions(am_env, template, tmp_path):  # noqa: F811
    from alphamill.workflow.task_train import task_train

    hk = template["dataset"]["kwargs"]["handler"]["kwargs"]
    hk["infer_processors"] = [
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True,
                                                 "fit_start_time": hk["fit_start_time"],
                                                 "fit_end_time": hk["fit_end_time"]}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
    ]
    template["dataset"]["kwargs"]["segments"]["test"] = ["2012-01-01", "2012-02-29"]
    rec = task_train(template, f"upd_{uuid.uuid4().hex[:8]}")
    base = rec.load_object("pred.pkl")
    store = open_state_store("upd", f"sqlite:///{tmp_path}/p.db")
    up = PredUpdater(rec, store, "2012-02-29", from_date="2012-02-01")
    days = up.new_dates()
    assert days[0] == pd.Timestamp("2012-02-01") and days[-1] == pd.Timestamp("2012-02-29")
    assert up.update() == len(days)
    saved = store.get_rows("processors:" + rec.id)["state"]
    assert [p["class"] for p in saved["infer"]] == ["RobustZScoreNorm", "Fillna"]
    ext = rows_to_frame(store.get_rows(pred_key(rec.id)))
    want = base[base.index.get_level_values("datetime") >= pd.Timestamp("2012-02-01")]
    assert len(ext) == len(want)
    np.testing.assert_array_equal(ext["score"].to_numpy(), want["score"].to_numpy())
    # rerun: nothing new; then extend past the recorded test window, one date at a time
    assert PredUpdater(rec, store, "2012-02-29", from_date="2012-02-01").update() == 0
    assert PredUpdater(rec, store, "2012-03-02").update() == 2
    assert PredUpdater(rec, store, "2012-03-02").update() == 0
    full = online_predictions(rec, store)
    dates = full.index.get_level_values("datetime")
    assert dates.max() == pd.Timestamp("2012-03-02") and not full.index.duplicated().any()
