"""Run configs: the examples parse and generate the intended tasks; every bad field is named."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from alphamill.errors import ConfigError
from alphamill.workflow.experiment import (
    apply_overrides,
    build_tasks,
    flagship_config,
    load_config,
    parse_config,
    validate_tasks,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CALENDAR = pd.bdate_range("2010-01-01", "2020-12-31")


def test_rolling_example_is_the_flagship():
    a = load_config(EXAMPLES / "rolling.yaml")
    b = parse_config(flagship_config(), default_name="unused")
    assert (a.task, a.generators, a.collect, a.workers, a.experiment) == (
        b.task, b.generators, b.collect, b.workers, b.experiment)


def test_flagship_windows():
    tasks = build_tasks(load_config(EXAMPLES / "rolling.yaml"), calendar=CALENDAR)
    assert len(tasks) == 6
    tests = [t["dataset"]["kwargs"]["segments"]["test"] for t in tasks]
    assert tests[0][0] == "2016-01-01" and tests[-1][1] == "2020-12-31"
    for prev, nxt in zip(tests[:-1], tests[1:], strict=True):
        assert pd.Timestamp(prev[1]) < pd.Timestamp(nxt[0])
    first = tasks[0]["dataset"]["kwargs"]["segments"]
    assert first["train"][0] == "2010-01-01" and first["valid"][0] == "2015-01-01"
    # sliding: the train start moves; the processors' fit window follows the train segment
    second = tasks[1]["dataset"]["kwargs"]
    assert second["segments"]["train"][0] > "2010-01-01"
    assert second["handler"]["kwargs"]["fit_start_time"] == second["segments"]["train"][0]
    assert [t["meta"]["rolling"]["index"] for t in tasks] == list(range(6))
    # each window's (cached) Alpha158 handler loads just the window's span
    for t in tasks:
        segs, hk = t["dataset"]["kwargs"]["segments"], t["dataset"]["kwargs"]["handler"]["kwargs"]
        assert hk["start_time"] == segs["train"][0] and hk["end_time"] == segs["test"][1]
    validate_tasks(tasks)


def test_flagship_training_labels_end_before_the_test_window():
    """Alpha158's label reads the close two days ahead: with trunc_days = 2 + 1 (Qlib's rule,
    ``TimeAdjuster.truncate``) no train/valid label of any window uses a test-period price."""
    from alphamill.features.alpha158 import DEFAULT_LABEL_EXPR

    assert DEFAULT_LABEL_EXPR == "Ref($close, -2)/Ref($close, -1) - 1"
    lookahead = 2
    for cfg in (load_config(EXAMPLES / "rolling.yaml"), load_config(EXAMPLES / "grid_lr_loss.yaml")):
        for t in build_tasks(cfg, calendar=CALENDAR):
            segs = t["dataset"]["kwargs"]["segments"]
            test_start = CALENDAR.searchsorted(pd.Timestamp(segs["test"][0]))
            for key in ("train", "valid"):
                last = CALENDAR.searchsorted(pd.Timestamp(segs[key][1]))
                assert last + lookahead < test_start, (key, segs)


def test_grid_and_multi_horizon_examples():
    grid = build_tasks(load_config(EXAMPLES / "grid_lr_loss.yaml"), calendar=CALENDAR)
    assert len(grid) == 12
    combos = {(t["model"]["kwargs"]["learning_rate"], t["model"]["kwargs"]["loss"]) for t in grid}
    assert combos == {(0.05, "mse"), (0.05, "binary"), (0.2, "mse"), (0.2, "binary")}
    mh = build_tasks(load_config(EXAMPLES / "multi_horizon.yaml"), calendar=CALENDAR)
    assert len(mh) == 9
    labels = {t["meta"]["horizon"]: t["dataset"]["kwargs"]["handler"]["kwargs"]["label"][0][0] for t in mh}
    assert labels[5] == "Ref($close, -6)/Ref($close, -1) - 1"
    # the longest horizon keeps h + 2 trading days between valid and test in every window
    for t in (t for t in mh if t["meta"]["horizon"] == 10):
        seg = t["dataset"]["kwargs"]["segments"]
        gap = CALENDAR.searchsorted(pd.Timestamp(seg["test"][0])) - CALENDAR.searchsorted(
            pd.Timestamp(seg["valid"][1]))
        assert gap > 10
    validate_tasks(grid + mh)


def _raw():
    return flagship_config(small=True, data="/nonexistent/market")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.update(bogus=1), "bogus"),
        (lambda r: r["generators"]["rolling"].update(stepp=3), "generators.rolling.stepp"),
        (lambda r: r["generators"]["rolling"].update(rtype="diagonal"), "generators.rolling.rtype"),
        (lambda r: r["generators"]["rolling"].update(step=0), "generators.rolling.step"),
        (lambda r: r["generators"].update(shuffle={"n": 1}), "generators.shuffle"),
        (lambda r: r["generators"].update(grid={"model.kwargs.learning_rate": 0.1}),
         "generators.grid.model.kwargs.learning_rate"),
        (lambda r: r["collect"].update(ensemble="median"), "collect.ensemble"),
        (lambda r: r["collect"].update(duplicate="first"), "collect.duplicate"),
        (lambda r: r.update(workers=-1), "workers"),
        (lambda r: r["task"].pop("model"), "task.model"),
        (lambda r: r.update(pool={"name": "1 bad name"}), "pool.name"),
        (lambda r: r.update(pool={"uri": "x"}), "pool.uri"),
    ],
)
def test_bad_config_names_the_field(mutate, field):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert e.value.path == field or str(e.value).startswith(field), str(e.value)


def test_bad_model_kwarg_is_caught_before_the_pool():
    raw = flagship_config(small=True)
    raw["task"]["model"]["kwargs"]["loss"] = "hinge"
    cfg = parse_config(raw)
    tasks = build_tasks(cfg, calendar=CALENDAR)
    with pytest.raises(ConfigError, match="loss"):
        validate_tasks(tasks)
    raw = flagship_config(small=True)
    raw["task"]["record"][0]["class"] = "SignalRecrd"
    with pytest.raises(ConfigError, match=r"task\.record\.0.*SignalRecord"):
        validate_tasks(build_tasks(parse_config(raw), calendar=CALENDAR))


def test_overrides_and_test_end(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(flagship_config()))
    cfg = load_config(path, ["task.model.kwargs.learning_rate=0.05", "workers=1",
                             "task.dataset.kwargs.segments.test.0=2017-01-01"], test_end="2019-12-31")
    assert cfg.task["model"]["kwargs"]["learning_rate"] == 0.05
    assert cfg.workers == 1
    assert cfg.task["dataset"]["kwargs"]["segments"]["test"][0] == "2017-01-01"
    tasks = build_tasks(cfg, calendar=CALENDAR)
    assert tasks[-1]["dataset"]["kwargs"]["segments"]["test"][1] == "2019-12-31"
    assert cfg.experiment == "rolling_lgb_alpha158" and cfg.pool_name == "rolling_lgb_alpha158"
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({"a": 1}, ["a.b=2"])
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, ["novalue"])


QLIB_WORKFLOW = """
qlib_init:
    provider_uri: "~/.qlib/qlib_data/cn_data"
    region: cn
market: &market all
data_handler_config: &data_handler_config
    start_time: 2010-01-01
    end_time: 2020-12-31
    fit_start_time: 2010-01-01
    fit_end_time: 2014-12-31
    instruments: *market
task:
    model:
        class: LGBModel
        module_path: qlib.contrib.model.gbdt
        kwargs: {loss: mse, learning_rate: 0.2, num_leaves: 210}
    dataset:
        class: DatasetH
        module_path: qlib.data.dataset
        kwargs:
            handler:
                class: Alpha158
                module_path: qlib.contrib.data.handler
                kwargs: *data_handler_config
            segments:
                train: [2010-01-01, 2014-12-31]
                valid: [2015-01-01, 2015-12-31]
                test: [2016-01-01, 2020-12-31]
    record:
        - class: SignalRecord
          module_path: qlib.workflow.record_temp
          kwargs: {model: <MODEL>, dataset: <DATASET>}
"""


def test_qlib_workflow_yaml_is_accepted(tmp_path):
    path = tmp_path / "workflow_config_lightgbm_Alpha158.yaml"
    path.write_text(QLIB_WORKFLOW)
    cfg = load_config(path)
    assert cfg.experiment == "workflow_config_lightgbm_Alpha158"
    assert cfg.task["model"]["module_path"] == "alphamill.model"
    assert cfg.task["dataset"]["kwargs"]["handler"]["module_path"] == "alphamill.dataset"
    assert cfg.task["dataset"]["kwargs"]["handler"]["kwargs"]["start_time"] == "2010-01-01"
    assert any("qlib_init is ignored" in n for n in cfg.notes)
    validate_tasks(build_tasks(cfg))
    path.write_text(QLIB_WORKFLOW + "\nbenchmark: SH000300\n")  # a key no alias refers to
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.path == "benchmark"
