"""Task generators against hand-computed windows on a hand-written calendar, plus properties."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import sys
import types

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphamill.canonical import canonical_json
from alphamill.errors import ConfigError
from alphamill.task.gen import (
    GridGen,
    MultiHorizonGen,
    RollingGen,
    TaskGen,
    handler_mod,
    task_generator,
    trunc_segments,
)
from alphamill.task.utils import TimeAdjuster

# Trading days of January/February 2020 (no weekends, no Jan 1, no Jan 20).
# index:  0      1      2      3      4      5      6      7      8      9
CAL = ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08",
       "2020-01-09", "2020-01-10", "2020-01-13", "2020-01-14", "2020-01-15",
       # 10     11     12     13     14     15     16     17     18     19
       "2020-01-16", "2020-01-17", "2020-01-21", "2020-01-22", "2020-01-23",
       "2020-01-24", "2020-01-27", "2020-01-28", "2020-01-29", "2020-01-30",
       # 20     21     22     23     24     25
       "2020-01-31", "2020-02-03", "2020-02-04", "2020-02-05", "2020-02-06",
       "2020-02-07"]  # fmt: skip


def make_task(train=("2020-01-01", "2020-01-10"), valid=("2020-01-11", "2020-01-15"),
              test=("2020-01-16", "2020-02-01")) -> dict:  # fmt: skip
    return {
        "model": {"class": "LGBModel", "module_path": "alphamill.model.gbdt", "kwargs": {"loss": "mse"}},
        "dataset": {
            "class": "DatasetH",
            "module_path": "alphamill.dataset",
            "kwargs": {
                "handler": {
                    "class": "Alpha158",
                    "module_path": "alphamill.dataset.handler",
                    "kwargs": {
                        "start_time": "2020-01-01",
                        "end_time": "2020-01-20",
                        "fit_start_time": "2020-01-01",
                        "fit_end_time": "2020-01-10",
                        "instruments": "all",
                        "infer_processors": [
                            {"class": "RobustZScoreNorm",
                             "kwargs": {"fields_group": "feature", "fit_start_time": "x", "fit_end_time": "y"}},
                            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
                        ],
                    },
                },
                "segments": {"train": train, "valid": valid, "test": test},
            },
        },
        "record": [{"class": "SignalRecord", "module_path": "alphamill.record"}],
    }  # fmt: skip


def segs(task):
    return task["dataset"]["kwargs"]["segments"]


def hk(task):
    return task["dataset"]["kwargs"]["handler"]["kwargs"]


def test_roll_ex_hand_computed_and_last_window_clipped():
    task = make_task()
    before = copy.deepcopy(task)
    tasks = RollingGen(step=4, calendar=CAL).generate(task)
    assert task == before  # input untouched
    assert [segs(t) for t in tasks] == [
        {"train": ["2020-01-02", "2020-01-10"], "valid": ["2020-01-13", "2020-01-15"],
         "test": ["2020-01-16", "2020-01-22"]},
        {"train": ["2020-01-02", "2020-01-16"], "valid": ["2020-01-17", "2020-01-22"],
         "test": ["2020-01-23", "2020-01-28"]},
        # Qlib would end this window on 2020-02-03, past the requested 2020-02-01
        {"train": ["2020-01-02", "2020-01-23"], "valid": ["2020-01-24", "2020-01-28"],
         "test": ["2020-01-29", "2020-01-31"]},
    ]  # fmt: skip
    # handler end extended to cover each window's test end (never shortened)
    assert [hk(t)["end_time"] for t in tasks] == ["2020-01-22", "2020-01-28", "2020-01-31"]
    # fit window follows the train segment, for the handler and the processors declaring it
    for t in tasks:
        assert [hk(t)["fit_start_time"], hk(t)["fit_end_time"]] == segs(t)["train"]
        norm, fillna = hk(t)["infer_processors"]
        assert [norm["kwargs"]["fit_start_time"], norm["kwargs"]["fit_end_time"]] == segs(t)[
            "train"
        ]
        assert fillna == {"class": "Fillna", "kwargs": {"fields_group": "feature"}}
    assert [t["meta"]["rolling"]["index"] for t in tasks] == [0, 1, 2]
    assert tasks[1]["meta"]["rolling"] == {
        "index": 1,
        "segments": segs(tasks[1]),
        "step": 4,
        "rtype": "expanding",
    }  # fmt: skip
    json.dumps(tasks)  # plain JSON


def test_roll_sd_moves_every_segment():
    tasks = RollingGen(step=4, rtype=RollingGen.ROLL_SD, calendar=CAL).generate(make_task())
    assert [segs(t)["train"] for t in tasks] == [
        ["2020-01-02", "2020-01-10"], ["2020-01-08", "2020-01-16"], ["2020-01-14", "2020-01-23"],
    ]  # fmt: skip
    assert [segs(t)["valid"] for t in tasks] == [
        ["2020-01-13", "2020-01-15"], ["2020-01-17", "2020-01-22"], ["2020-01-24", "2020-01-28"],
    ]  # fmt: skip
    assert tasks[0]["meta"]["rolling"]["rtype"] == "sliding"


def test_trunc_days():
    tasks = RollingGen(step=4, trunc_days=2, calendar=CAL).generate(make_task())
    # test start idx 10 -> every non-test bound capped at idx 8 (2020-01-14)
    assert segs(tasks[0]) == {"train": ["2020-01-02", "2020-01-10"],
                              "valid": ["2020-01-13", "2020-01-14"],
                              "test": ["2020-01-16", "2020-01-22"]}  # fmt: skip
    assert segs(tasks[1])["valid"] == ["2020-01-17", "2020-01-21"]
    assert segs(tasks[1])["train"] == ["2020-01-02", "2020-01-16"]
    # Qlib's helper, applied in place
    s = {"train": ["2020-01-02", "2020-01-15"], "test": ["2020-01-16", "2020-01-31"]}
    trunc_segments(TimeAdjuster(CAL), s, 3)
    assert s["train"] == ["2020-01-02", "2020-01-13"]


def test_embargo_on_every_boundary():
    tasks = RollingGen(step=4, embargo=1, calendar=CAL).generate(make_task())
    # valid ends <= idx 10-1-1=8; train ends <= valid start idx 7-1-1=5
    assert segs(tasks[0]) == {"train": ["2020-01-02", "2020-01-09"],
                              "valid": ["2020-01-13", "2020-01-14"],
                              "test": ["2020-01-16", "2020-01-22"]}  # fmt: skip
    assert segs(tasks[1]) == {"train": ["2020-01-02", "2020-01-15"],
                              "valid": ["2020-01-17", "2020-01-21"],
                              "test": ["2020-01-23", "2020-01-28"]}  # fmt: skip
    with pytest.raises(ConfigError, match="embargo=3") as info:
        RollingGen(step=4, embargo=3, calendar=CAL).generate(make_task())
    assert info.value.path == "task.dataset.kwargs.segments.valid"


def test_open_ended_test_runs_to_the_calendar_end():
    task = make_task(test=("2020-01-16", None))
    tasks = RollingGen(step=5, calendar=CAL).generate(task)
    assert [segs(t)["test"] for t in tasks] == [
        ["2020-01-16", "2020-01-23"], ["2020-01-24", "2020-01-30"],
        ["2020-01-31", "2020-02-06"], ["2020-02-07", "2020-02-07"],
    ]  # fmt: skip
    # a longer calendar adds windows; earlier tasks (and their hashes) stay the same
    longer = RollingGen(step=5, calendar=CAL + ["2020-02-10", "2020-02-11"]).generate(task)
    assert [canonical_json(t) for t in longer[:3]] == [canonical_json(t) for t in tasks[:3]]
    assert [segs(t)["test"] for t in longer[3:]] == [["2020-02-07", "2020-02-11"]]


def test_test_end_argument_and_single_short_window():
    tasks = RollingGen(step=4, calendar=CAL, test_end="2020-01-27").generate(make_task())
    assert [segs(t)["test"] for t in tasks] == [
        ["2020-01-16", "2020-01-22"],
        ["2020-01-23", "2020-01-27"],
    ]
    # a test span shorter than step: one window, clipped
    tasks = RollingGen(step=40, calendar=CAL).generate(make_task())
    assert [segs(t)["test"] for t in tasks] == [["2020-01-16", "2020-01-31"]]
    with pytest.raises(ConfigError) as info:
        RollingGen(step=4, calendar=CAL, test_end="2020-01-10").generate(make_task())
    assert info.value.path == "test_end"


def test_inputs_of_any_date_type():
    task = make_task(
        train=(pd.Timestamp("2020-01-01"), dt.date(2020, 1, 10)),
        valid=[dt.datetime(2020, 1, 11), "2020-01-15"],
    )
    cal = [pd.Timestamp(d) for d in reversed(CAL)] + [dt.date(2020, 1, 2)]  # unsorted, duplicate
    a = RollingGen(step=4, calendar=cal).generate(task)
    b = RollingGen(step=4, calendar=CAL).generate(make_task())
    assert canonical_json(a) == canonical_json(b)


def test_handler_mod_keeps_later_or_open_end_time():
    task = make_task()
    hk(task)["end_time"] = "2020-12-31"
    assert {hk(t)["end_time"] for t in RollingGen(step=4, calendar=CAL).generate(task)} == {
        "2020-12-31"
    }
    hk(task)["end_time"] = None
    assert {hk(t)["end_time"] for t in RollingGen(step=4, calendar=CAL).generate(task)} == {None}
    # a handler given by name is left alone; ds_extra_mod_func=None skips the adjustment
    task["dataset"]["kwargs"]["handler"] = "file.parquet"
    assert (
        RollingGen(step=4, calendar=CAL).generate(task)[0]["dataset"]["kwargs"]["handler"]
        == "file.parquet"
    )
    t = RollingGen(step=4, calendar=CAL, ds_extra_mod_func=None).generate(make_task())[1]
    assert hk(t)["fit_end_time"] == "2020-01-10" and hk(t)["end_time"] == "2020-01-20"
    assert RollingGen().ds_extra_mod_func is handler_mod


def test_shallow_task_copy_func_does_not_leak_between_windows():
    task = make_task()
    before = copy.deepcopy(task)
    tasks = RollingGen(step=4, calendar=CAL, task_copy_func=copy.copy).generate(task)
    assert task == before
    assert [segs(t)["test"][0] for t in tasks] == ["2020-01-16", "2020-01-23", "2020-01-29"]
    assert [hk(t)["fit_end_time"] for t in tasks] == ["2020-01-10", "2020-01-16", "2020-01-23"]


@pytest.mark.parametrize(
    ("kwargs", "task_change", "path"),
    [
        ({"step": 0}, None, "step"),
        ({"rtype": "rolling"}, None, "rtype"),
        ({"trunc_days": -1}, None, "trunc_days"),
        ({"embargo": 1.5}, None, "embargo"),
        ({"test_end": "not a date"}, None, "test_end"),
        ({}, ("segments", {"train": ["2020-01-02", "2020-01-10"]}), "task.dataset.kwargs.segments"),
        (
            {},
            ("segments", {"test": ["2020-03-01", "2020-04-01"]}),
            "task.dataset.kwargs.segments.test",
        ),
        ({}, ("segments", {"test": ["2020-01-16"]}), "task.dataset.kwargs.segments.test"),
        (
            {},
            ("segments", {"test": ["2020-01-16", "junk"]}),
            "task.dataset.kwargs.segments.test[1]",
        ),
        ({"trunc_days": 12}, None, "task.dataset.kwargs.segments.train"),
    ],
)
def test_rolling_errors_name_the_field(kwargs, task_change, path):
    task = make_task()
    if task_change:
        task["dataset"]["kwargs"][task_change[0]] = task_change[1]
    with pytest.raises(ConfigError) as info:
        RollingGen(calendar=CAL, **kwargs).generate(task)
    assert info.value.path == path, str(info.value)


def test_calendar_hook(monkeypatch):
    """Without calendar=, the data layer's calendar_for_task supplies the dataset's calendar."""
    monkeypatch.setitem(sys.modules, "alphamill.data", None)  # data layer absent
    with pytest.raises(ConfigError, match="pass calendar=") as info:
        RollingGen(step=4).generate(make_task())
    assert info.value.path == "calendar"
    seen = []

    def calendar_for_task(task):
        seen.append(task["dataset"]["class"])
        return CAL

    fake = types.ModuleType("alphamill.data")
    fake.calendar_for_task = calendar_for_task
    monkeypatch.setitem(sys.modules, "alphamill.data", fake)
    tasks = RollingGen(step=4).generate(make_task())
    assert [segs(t)["test"] for t in tasks] == [
        segs(t)["test"] for t in RollingGen(step=4, calendar=CAL).generate(make_task())
    ]
    assert len(MultiHorizonGen(horizons=[1]).generate(make_task())) == 1
    assert seen == ["DatasetH", "DatasetH"]
    with pytest.raises(ConfigError, match="calendar is empty"):
        RollingGen(calendar=[])


def test_multi_horizon_label_and_truncation():
    task = make_task(train=("2020-01-02", "2020-01-09"), valid=("2020-01-10", "2020-01-17"),
                     test=("2020-01-21", "2020-01-31"))  # fmt: skip
    before = copy.deepcopy(task)
    tasks = MultiHorizonGen(horizons=[1, 3], calendar=CAL).generate(task)
    assert task == before
    t1, t3 = tasks
    assert hk(t1)["label"] == [["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]]
    assert hk(t3)["label"] == [["Ref($close, -4)/Ref($close, -1) - 1"], ["LABEL0"]]
    # test start idx 12; h=1 cuts at 12-3=9, h=3 at 12-5=7
    assert segs(t1) == {"train": ["2020-01-02", "2020-01-09"], "valid": ["2020-01-10", "2020-01-15"],
                        "test": ["2020-01-21", "2020-01-31"]}  # fmt: skip
    assert segs(t3)["valid"] == ["2020-01-10", "2020-01-13"]
    assert [t1["meta"], t3["meta"]] == [{"horizon": 1}, {"horizon": 3}]
    assert [hk(t3)["fit_start_time"], hk(t3)["fit_end_time"]] == segs(t3)["train"]
    g = MultiHorizonGen(horizons=[2], label_leak_n=1, calendar=CAL)
    assert g.label_expr(2) == "Ref($close, -2)/$close - 1" and g.trunc_days(2) == 3


@given(st.integers(1, 8), st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_multi_horizon_labels_never_reach_the_test_window(h, leak):
    """The last train/valid sample's label reads a price strictly before the first test day."""
    task = make_task(train=("2020-01-02", "2020-01-09"), valid=("2020-01-10", "2020-01-17"),
                     test=("2020-01-21", "2020-01-31"))  # fmt: skip
    g = MultiHorizonGen(horizons=[h], label_leak_n=leak, calendar=CAL)
    (t,) = g.generate(task)
    ahead = max(int(x) for x in __import__("re").findall(r"-(\d+)\)", hk(t)["label"][0][0]))
    test_idx = CAL.index(segs(t)["test"][0])
    for k in ("train", "valid"):
        assert CAL.index(segs(t)[k][1]) + ahead < test_idx
        assert CAL.index(segs(t)[k][1]) + ahead == test_idx - 1 or segs(t)[k][1] == segs(task)[k][1]


def test_multi_horizon_errors():
    with pytest.raises(ConfigError) as info:
        MultiHorizonGen(horizons=[1, 1])
    assert info.value.path == "horizons"
    with pytest.raises(ConfigError) as info:
        MultiHorizonGen(horizons=[0])
    assert info.value.path == "horizons[0]"
    task = make_task()
    del task["dataset"]["kwargs"]["handler"]
    with pytest.raises(ConfigError) as info:
        MultiHorizonGen(horizons=[1], calendar=CAL).generate(task)
    assert info.value.path == "task.dataset.kwargs.handler"


def test_grid_gen():
    task = make_task()
    del task["model"]["kwargs"]
    tasks = GridGen(
        {"model.kwargs.learning_rate": [0.05, 0.1], "model.kwargs.loss": ["mse", "huber"]}
    ).generate(task)
    assert [(t["model"]["kwargs"]["learning_rate"], t["model"]["kwargs"]["loss"]) for t in tasks] == [
        (0.05, "mse"), (0.05, "huber"), (0.1, "mse"), (0.1, "huber"),
    ]  # fmt: skip
    assert tasks[1]["meta"] == {
        "grid": {"model.kwargs.learning_rate": 0.05, "model.kwargs.loss": "huber"}
    }
    assert "kwargs" not in task["model"]
    # list index in a path; values are copied per task
    shared = {"a": [1]}
    t1, t2 = GridGen({"record.0.kwargs.cfg": [shared, shared]}).generate(make_task())
    t1["record"][0]["kwargs"]["cfg"]["a"].append(2)
    assert t2["record"][0]["kwargs"]["cfg"] == {"a": [1]} and shared == {"a": [1]}


@pytest.mark.parametrize(
    ("grid", "path"),
    [
        ({}, "grid"),
        ({"model..x": [1]}, "grid"),
        ({"model.kwargs.loss": "mse"}, "grid.model.kwargs.loss"),
        ({"model.kwargs.loss": []}, "grid.model.kwargs.loss"),
    ],
)
def test_grid_gen_bad_grid(grid, path):
    with pytest.raises(ConfigError) as info:
        GridGen(grid)
    assert info.value.path == path


def test_grid_gen_path_through_non_dict():
    with pytest.raises(ConfigError, match="this is a str") as info:
        GridGen({"model.class.x": [1]}).generate(make_task())
    assert info.value.path == "task.model.class"
    with pytest.raises(ConfigError, match="out of range") as info:
        GridGen({"record.3.x": [1]}).generate(make_task())
    assert info.value.path == "task.record"


def test_task_generator_chains_cartesian_and_merges_meta():
    templates = [make_task(), make_task(test=("2020-01-16", "2020-01-27"))]
    before = copy.deepcopy(templates)
    gens = [
        GridGen({"model.kwargs.loss": ["mse", "huber"]}),
        MultiHorizonGen(horizons=[1, 2], calendar=CAL),
        RollingGen(step=4, calendar=CAL),
        GridGen({"model.kwargs.seed": [1]}),
    ]
    tasks = task_generator(templates, gens)
    assert templates == before
    # (3 windows + 2 windows) x 2 losses x 2 horizons
    assert len(tasks) == (3 + 2) * 2 * 2
    metas = [t["meta"] for t in tasks]
    assert set(metas[0]) == {"grid", "horizon", "rolling"}
    assert metas[0]["grid"] == {"model.kwargs.loss": "mse", "model.kwargs.seed": 1}
    # the first window of both templates is the same task (same segments): the pool dedupes it
    assert len({canonical_json(t) for t in tasks}) == (3 + 2 - 1) * 2 * 2
    # one task and one generator, no list needed; __call__ is generate
    assert task_generator(make_task(), GridGen({"a": [1, 2]})) == GridGen({"a": [1, 2]})(
        make_task()
    )
    # no generators: copies of the templates
    out = task_generator(templates, [])
    assert out == templates and out[0] is not templates[0]
    with pytest.raises(ConfigError):
        task_generator([make_task(), 3], [])
    with pytest.raises(ConfigError):
        task_generator(make_task(), [lambda t: [t]])
    assert issubclass(GridGen, TaskGen)


# ---------------------------------------------------------------- properties


@st.composite
def rolling_cases(draw):
    n = draw(st.integers(20, 120))
    days = pd.bdate_range("2019-01-01", periods=n + draw(st.integers(0, 30)))
    keep = sorted(random.Random(draw(st.integers(0, 2**32))).sample(range(len(days)), n))
    cal = [days[i] for i in keep]
    # segment bounds as raw (possibly non-trading) dates around calendar indices
    t_start = draw(st.integers(8, n - 1))
    v_start = draw(st.integers(2, t_start - 1))
    tr_end = draw(st.integers(0, v_start - 1))
    v_end = draw(st.integers(v_start, t_start - 1))
    open_end = draw(st.booleans())
    t_end = None if open_end else cal[draw(st.integers(t_start, n - 1))]
    task = make_task(train=(cal[0] - pd.Timedelta(days=3), cal[tr_end]),
                     valid=(cal[v_start], cal[v_end]), test=(cal[t_start], t_end))  # fmt: skip
    kwargs = {
        "step": draw(st.integers(1, 15)),
        "rtype": draw(st.sampled_from([RollingGen.ROLL_EX, RollingGen.ROLL_SD])),
        "trunc_days": draw(st.none() | st.integers(0, 3)),
        "embargo": draw(st.integers(0, 2)),
    }
    return cal, task, kwargs, t_start, (n - 1 if open_end else cal.index(t_end))


@given(rolling_cases())
@settings(max_examples=120, deadline=None)
def test_rolling_properties(case):
    cal, task, kwargs, t_start, t_end = case
    idx = {pd.Timestamp(d).strftime("%Y-%m-%d"): i for i, d in enumerate(cal)}
    try:
        tasks = RollingGen(calendar=cal, **kwargs).generate(task)
    except ConfigError as e:  # truncation/embargo may legitimately empty a short segment
        assert "leaves" in str(e)
        return
    step, trunc, emb = kwargs["step"], kwargs["trunc_days"], kwargs["embargo"]
    tests = [(idx[segs(t)["test"][0]], idx[segs(t)["test"][1]]) for t in tasks]
    # contiguous, non-overlapping, covering exactly [t_start, t_end]
    assert tests[0][0] == t_start and tests[-1][1] == t_end
    for (_, e0), (s1, _) in zip(tests, tests[1:], strict=False):
        assert s1 == e0 + 1
    assert all(s <= e and e - s + 1 <= step for s, e in tests)
    assert all(e - s + 1 == step for s, e in tests[:-1])
    assert len(tasks) == -(-(t_end - t_start + 1) // step)
    first_train = idx[segs(tasks[0])["train"][0]]
    for i, t in enumerate(tasks):
        sg = {k: (idx[a], idx[b]) for k, (a, b) in segs(t).items()}
        ts = sg["test"][0]
        assert t["meta"]["rolling"]["index"] == i and t["meta"]["rolling"]["segments"] == segs(t)
        for k in ("train", "valid"):
            assert sg[k][0] <= sg[k][1]
            assert sg[k][1] < ts  # never overlaps the test window
            if trunc is not None:
                assert sg[k][1] <= ts - trunc
            if emb:
                assert sg[k][1] <= ts - 1 - emb
        if emb:
            assert sg["train"][1] <= sg["valid"][0] - 1 - emb
        if kwargs["rtype"] == RollingGen.ROLL_EX:
            assert sg["train"][0] == first_train
        else:
            assert sg["train"][0] == first_train + i * step
        assert [hk(t)["fit_start_time"], hk(t)["fit_end_time"]] == segs(t)["train"]
        assert pd.Timestamp(hk(t)["end_time"]) >= pd.Timestamp(segs(t)["test"][1])


def qlib_reference(cal, task, step, rtype, trunc_days):
    """Qlib's RollingGen loop, written with the ported TimeAdjuster (no embargo, no clipping)."""
    ta = TimeAdjuster(cal)
    segments = ta.align_seg({k: tuple(v) for k, v in segs(task).items()})
    test_end = ta.max() if segs(task)["test"][1] is None else pd.Timestamp(segs(task)["test"][1])
    test_start_idx = ta.align_idx(segments["test"][0])
    segments["test"] = (ta.get(test_start_idx), ta.get(test_start_idx + step - 1))
    if trunc_days is not None:
        for k in segments:
            if k != "test":
                segments[k] = ta.truncate(segments[k], segments["test"][0], trunc_days)
    out = [segments]
    prev = segments
    while prev["test"][1] is not None:  # Qlib fails to shift a bound past the calendar
        nxt = {}
        try:
            for k, seg in prev.items():
                kind = ta.SHIFT_EX if k == "train" and rtype == RollingGen.ROLL_EX else ta.SHIFT_SD
                nxt[k] = ta.shift(seg, step=step, rtype=kind)
            if nxt["test"][0] > test_end:
                break
        except KeyError:
            break
        out.append(nxt)
        prev = nxt
    return out, test_end


@given(rolling_cases())
@settings(max_examples=80, deadline=None)
def test_same_windows_as_qlib_up_to_the_clipped_end(case):
    cal, task, kwargs, _, _ = case
    kwargs = {**kwargs, "embargo": 0}
    try:
        ours = RollingGen(calendar=cal, **kwargs).generate(task)
    except ConfigError:
        return
    ref, test_end = qlib_reference(cal, task, kwargs["step"], kwargs["rtype"], kwargs["trunc_days"])
    assert len(ours) == len(ref)
    for t, r in zip(ours, ref, strict=True):
        want = {
            k: [s.strftime("%Y-%m-%d"), e.strftime("%Y-%m-%d")]
            for k, (s, e) in r.items()
            if k != "test"
        }
        s, e = r["test"]
        e = test_end if e is None or e > test_end else e  # the deliberate difference: clipped
        last_day = max(d for d in pd.DatetimeIndex(cal) if d <= e)
        want["test"] = [s.strftime("%Y-%m-%d"), last_day.strftime("%Y-%m-%d")]
        assert segs(t) == want
