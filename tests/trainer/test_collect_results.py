"""Collection, every ensemble on real collected predictions, the results tables and the report."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from alphamill.ens import (
    AverageEnsemble,
    ICWeightedEnsemble,
    RollingEnsemble,
    RollingGroup,
    SingleKeyEnsemble,
)
from alphamill.trainer import DelayTrainerR, TrainerR
from alphamill.workflow.collect import CollectError, MergeCollector, RecorderCollector
from alphamill.workflow.results import ExperimentResults


@pytest.fixture(scope="module")
def grid_exp(am_env):
    """2 learning rates x 2 windows trained in this process: 4 runs, 2 variants."""
    from alphamill.workflow.experiment import build_tasks, flagship_config, parse_config

    raw = flagship_config(small=True, data=str(am_env["market"]))
    raw["generators"] = {"grid": {"model.kwargs.learning_rate": [0.05, 0.2]},
                         "rolling": {**raw["generators"]["rolling"], "step": 150}}
    tasks = build_tasks(parse_config(raw))
    exp = f"grid_{uuid.uuid4().hex[:8]}"
    recs = TrainerR(exp, progress=False).train(tasks)
    return {"exp": exp, "recs": recs, "tasks": tasks}


def test_default_keys_and_rolling_group(grid_exp):
    collected = RecorderCollector(grid_exp["exp"])()
    keys = sorted(collected["pred"])
    assert keys == [("LGBModel", f"learning_rate={lr}", w) for lr in ("0.05", "0.2") for w in range(2)]
    merged = RollingGroup()(collected["pred"])
    assert sorted(merged) == [("LGBModel", "learning_rate=0.05"), ("LGBModel", "learning_rate=0.2")]
    for key, df in merged.items():
        assert not df.index.duplicated().any()
        windows = [collected["pred"][(*key, w)] for w in range(2)]
        assert len(df) == sum(len(w) for w in windows)  # sliding test windows do not overlap
        days = df.index.get_level_values("datetime")
        assert days.min() == windows[0].index.get_level_values("datetime").min()
        assert days.max() == windows[1].index.get_level_values("datetime").max()


def test_collector_process_list_and_merge(grid_exp):
    rolling = RecorderCollector(grid_exp["exp"], process_list=[RollingGroup()],
                                rec_filter_func=lambda r: "0.2" in str(r.list_params().get("model.kwargs.learning_rate")))
    out = rolling()
    assert list(out["pred"]) == [("LGBModel", "learning_rate=0.2")]
    merged = MergeCollector({"a": RecorderCollector(grid_exp["exp"], artifacts_key="pred")},
                            process_list=SingleKeyEnsemble())()
    assert len(merged[("a", "pred")]) == 4


def test_every_ensemble_on_collected_predictions(grid_exp):
    res = ExperimentResults.from_recorders(grid_exp["exp"], grid_exp["recs"], ensemble="ic_weighted",
                                           ic_window=10, label_delay=2, backtest=None)
    variants = {name: RollingEnsemble()(w)["score"] for name, w in res.groups.items()}
    assert len(variants) == 2
    avg = AverageEnsemble()(variants)["score"]
    icw = ICWeightedEnsemble(res.label, window=10, min_periods=5, label_delay=2)
    ens = icw(variants)["score"]
    for out in (avg, ens):
        assert out.notna().sum() > 0.9 * len(out)
        assert out.index.is_monotonic_increasing
    # weights: non-negative, sum to one per day, the first days (no realised IC yet) equal
    w = icw.weights_
    assert np.allclose(w.sum(axis=1), 1.0) and (w >= 0).all().all()
    assert np.allclose(w.iloc[:5].to_numpy(), 0.5)
    pd.testing.assert_series_equal(res.predictions["ensemble"].dropna(), ens.dropna(), check_names=False)
    summary = res.summary
    assert list(summary.index) == ["LGBModel learning_rate=0.05", "LGBModel learning_rate=0.2", "ensemble"]
    assert summary[["IC", "Rank IC"]].notna().all().all()


def test_duplicates_need_a_policy(small_tasks, exp_name):
    first, second = (TrainerR(exp_name, progress=False).train(small_tasks[:1])[0] for _ in range(2))
    with pytest.raises(CollectError) as e:
        RecorderCollector(exp_name).collect()
    assert first.id in str(e.value) and second.id in str(e.value) and "duplicate='latest'" in str(e.value)
    got = RecorderCollector(exp_name, duplicate="latest", artifacts_key=["pred", "__raw"]).collect()
    assert got["__raw"][("LGBModel", "", 0)].id == second.id


def test_missing_artifact_names_run_and_artifact(small_tasks, exp_name):
    (rec,) = TrainerR(exp_name, progress=False).train(small_tasks[:1])
    with pytest.raises(CollectError) as e:
        RecorderCollector(exp_name, artifacts_path={"pred": "prediction.pkl"}).collect()
    assert rec.id in str(e.value) and "prediction.pkl" in str(e.value)
    assert RecorderCollector(exp_name, artifacts_path={"pred": "prediction.pkl"}, missing="skip").collect() == {
        "pred": {}}


def test_stage_one_recorders_are_not_collected(small_tasks, exp_name):
    DelayTrainerR(exp_name, progress=False).train(small_tasks[:1])
    assert RecorderCollector(exp_name).collect() == {"pred": {}}


def test_results_tables_backtest_and_report(grid_exp, tmp_path):
    res = ExperimentResults.from_recorders(grid_exp["exp"], grid_exp["recs"][:2], backtest={"topk": 10, "n_drop": 2})
    windows = res.windows
    assert list(windows.index.get_level_values("window")) == [0, 1]
    assert {"IC", "ICIR", "Rank IC", "Rank ICIR", "test_start", "test_end", "run_id"} <= set(windows.columns)
    assert windows["days"].min() > 20
    # each window's IC is computed from its own stored prediction and label
    rec0 = grid_exp["recs"][0]
    ic_metric = rec0.list_metrics()["IC"]
    assert windows.loc[(res.headline, 0), "IC"] == pytest.approx(ic_metric, rel=1e-6)
    assert list(res.predictions.columns) == ["LGBModel learning_rate=0.05"]
    assert res.pred.columns.tolist() == ["score"]
    bt = res.backtest
    assert list(bt.columns) == ["simple", "compounded"]
    assert ("LGBModel learning_rate=0.05", "excess_return_with_cost", "annualized_return") in bt.index
    assert bt.notna().all().all()
    assert set(res.excess_return.columns) == {"without cost", "with cost"}
    path = res.report(tmp_path / "r" / "report.html")
    text = path.read_text()
    assert "Windows" in text and "data:image/png;base64," in text and "Backtest summary" in text
    data = res.to_dict()
    assert data["headline"] == "LGBModel learning_rate=0.05" and len(data["windows"]) == 2
