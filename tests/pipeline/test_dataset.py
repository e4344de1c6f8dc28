"""DataHandlerLP views, DatasetH segments and col_set/data_key shapes, placeholders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphamill.dataset import DataHandlerLP, DatasetH, fill_placeholder
from alphamill.errors import ConfigError
from tests.pipeline.conftest import SEGMENTS, DropLabelNa


class ShiftByFitMean:
    """Infer-safe processor: subtract the fit-window mean of F0; records what it was fitted on."""

    def __init__(self):
        self.fit_dates = None
        self.mean = None

    def fit(self, df):
        dates = df.index.get_level_values("datetime")
        self.fit_dates = (dates.min(), dates.max())
        self.mean = float(df[("feature", "F0")].mean())

    def __call__(self, df):
        df = df.copy()
        df[("feature", "F0")] = df[("feature", "F0")] - self.mean
        return df

    def to_state(self):
        return {"mean": self.mean}


class ScaleLabel:
    """Learn-only processor: multiply the label by 10."""

    def fit(self, df):
        return None

    def __call__(self, df):
        df = df.copy()
        df[("label", "LABEL0")] = df[("label", "LABEL0")] * 10
        return df


def test_prepare_shapes(dataset, panel):
    train = dataset.prepare("train")
    assert list(train.columns.get_level_values(0).unique()) == ["feature", "label"]
    assert train.index.names == ["datetime", "instrument"]
    dates = train.index.get_level_values("datetime")
    assert dates.min() >= pd.Timestamp("2020-01-01") and dates.max() <= pd.Timestamp("2020-06-30")

    tr, va = dataset.prepare(["train", "valid"], col_set=["feature", "label"], data_key="learn")
    assert va.index.get_level_values(0).min() == pd.Timestamp("2020-07-01")
    assert tr["label"].notna().all().all()
    raw_train = dataset.prepare("train", data_key="raw")
    assert len(raw_train) > len(tr)  # learn dropped the missing labels
    assert len(raw_train) == len(train)

    feat = dataset.prepare("test", col_set="feature")
    assert list(feat.columns) == [f"F{i}" for i in range(5)]
    label = dataset.prepare("test", col_set="label", data_key="raw")
    assert list(label.columns) == ["LABEL0"]
    flat = dataset.prepare("test", col_set="__all")
    assert list(flat.columns) == [f"F{i}" for i in range(5)] + ["LABEL0"]
    pd.testing.assert_frame_equal(
        dataset.prepare("test", col_set="__all", data_key="raw"),
        panel.loc["2020-10-01":"2020-12-31"].droplevel(0, axis=1),
    )


def test_prepare_unknown_segment_and_keys(dataset):
    with pytest.raises(ConfigError, match="unknown segment 'tst'.*train, valid, test"):
        dataset.prepare("tst")
    with pytest.raises(ConfigError, match="data_key"):
        dataset.prepare("test", data_key="learned")
    with pytest.raises(ConfigError, match="column group 'labels'"):
        dataset.prepare("test", col_set="labels")


def test_ptype_append_fit_window_and_state(panel):
    infer_p, learn_p = ShiftByFitMean(), ScaleLabel()
    h = DataHandlerLP(
        panel,
        fit_start_time="2020-02-01",
        fit_end_time="2020-03-31",
        infer_processors=[infer_p],
        learn_processors=[DropLabelNa(), learn_p],
    )
    fit_rows = panel.loc["2020-02-01":"2020-03-31"]
    assert infer_p.fit_dates == (pd.Timestamp("2020-02-03"), pd.Timestamp("2020-03-31"))
    assert infer_p.mean == pytest.approx(float(fit_rows[("feature", "F0")].mean()))
    raw, infer, learn = (h.fetch(data_key=k, col_set="__raw") for k in ("raw", "infer", "learn"))
    # infer processors reach infer and learn; learn processors only learn
    np.testing.assert_allclose(infer[("feature", "F0")], raw[("feature", "F0")] - infer_p.mean)
    pd.testing.assert_series_equal(infer[("label", "LABEL0")], raw[("label", "LABEL0")])
    ok = raw[("label", "LABEL0")].notna()
    np.testing.assert_allclose(
        learn[("feature", "F0")], raw.loc[ok, ("feature", "F0")] - infer_p.mean
    )
    np.testing.assert_allclose(learn[("label", "LABEL0")], raw.loc[ok, ("label", "LABEL0")] * 10)
    state = h.processor_state()
    assert state["infer"] == [
        {"class": "ShiftByFitMean", "module_path": __name__, "state": {"mean": infer_p.mean}}
    ]
    assert [s["class"] for s in state["learn"]] == ["DropLabelNa", "ScaleLabel"]


def test_ptype_independent_learn_from_raw(panel):
    h = DataHandlerLP(
        panel,
        infer_processors=[ShiftByFitMean()],
        learn_processors=[ScaleLabel()],
        process_type="independent",
    )
    raw, learn = h.fetch(data_key="raw", col_set="__raw"), h.fetch(data_key="learn", col_set="__raw")
    pd.testing.assert_series_equal(learn[("feature", "F0")], raw[("feature", "F0")])


def test_handler_start_end_and_fetch_selectors(panel):
    h = DataHandlerLP(panel, start_time="2020-03-01", end_time="2020-04-30")
    dates = h.fetch(col_set="feature").index.get_level_values(0)
    assert dates.min() == pd.Timestamp("2020-03-02") and dates.max() == pd.Timestamp("2020-04-30")
    one = h.fetch(pd.Timestamp("2020-03-03"), col_set="label", squeeze=True)
    assert isinstance(one, pd.Series) and len(one) == 8
    with pytest.raises(ConfigError, match="fit_end_time"):
        DataHandlerLP(panel, fit_start_time="2020-05-01", fit_end_time="2020-04-01")
    with pytest.raises(ConfigError, match=r"start_time: expected a date"):
        DataHandlerLP(panel, start_time="not a date")


def test_infer_processor_must_be_for_infer(panel):
    with pytest.raises(ConfigError, match=r"infer_processors\.0.*learn_processors"):
        DataHandlerLP(panel, infer_processors=[DropLabelNa()])


def test_segment_validation(panel):
    h = DataHandlerLP(panel)
    with pytest.raises(ConfigError, match=r"dataset\.kwargs\.segments\.train: start 2020-06-30"):
        DatasetH(h, {"train": ("2020-06-30", "2020-01-01")})
    with pytest.raises(ConfigError, match=r"segments\.test: .*holds no trading day of the data's calendar 2020-01-01 \.\. 2020-12-31"):
        DatasetH(h, {"train": ("2020-01-01", "2020-06-30"), "test": ("2021-01-01", "2021-06-30")})
    with pytest.raises(ConfigError, match=r"segments\.valid\.1: expected a date"):
        DatasetH(h, {"valid": ("2020-01-01", "soon")})
    with pytest.raises(ConfigError, match=r"segments\.train: expected a \(start, end\) pair"):
        DatasetH(h, {"train": "2020-01-01"})
    with pytest.raises(ConfigError, match=r"dataset\.kwargs\.segments: expected a mapping"):
        DatasetH(h, {})
    # a segment reaching past the handler's loaded window would lose days: error
    short = DataHandlerLP(panel, start_time="2020-02-01", end_time="2020-11-30")
    with pytest.raises(ConfigError, match=r"segments\.test: .*ends after the handler's end_time "
                       r"2020-11-30 \(dataset\.kwargs\.handler\.kwargs\.end_time\)"):
        DatasetH(short, {"test": ("2020-10-01", "2020-12-31")})
    with pytest.raises(ConfigError, match=r"segments\.train: .*starts before the handler's start_time"):
        DatasetH(short, {"train": ("2020-01-01", "2020-06-30")})
    # open bounds mean "as far as the handler's data goes"
    ds = DatasetH(short, {"train": (None, "2020-06-30"), "test": ("2020-10-01", None)})
    assert ds.prepare("test").index.get_level_values(0).max() == pd.Timestamp("2020-11-30")
    # open-ended and partly-overlapping segments are fine
    ds = DatasetH(h, {"train": (None, "2020-03-31"), "test": ("2020-12-01", "2021-12-31")})
    assert ds.prepare("test").index.get_level_values(0).max() == pd.Timestamp("2020-12-31")


def test_handler_from_config_dict(panel):
    ds = DatasetH(
        handler={
            "class": "DataHandlerLP",
            "module_path": "alphamill.dataset",
            "kwargs": {"data": panel, "start_time": "2020-01-01", "end_time": "2020-12-31"},
        },
        segments=SEGMENTS,
    )
    assert len(ds.prepare("valid")) == len(panel.loc["2020-07-01":"2020-09-30"])
    with pytest.raises(ConfigError, match=r"dataset\.kwargs\.handler\.kwargs\.colour"):
        DatasetH(
            handler={"class": "DataHandlerLP", "kwargs": {"data": panel, "colour": 1}},
            segments=SEGMENTS,
        )


def test_fill_placeholder_paths_and_objects():
    task = {
        "dataset": {
            "kwargs": {
                "handler": {
                    "kwargs": {
                        "fit_start_time": "<dataset.kwargs.segments.train.0>",
                        "fit_end_time": "<dataset.kwargs.segments.train.1>",
                        "alias": "<dataset.kwargs.handler.kwargs.fit_end_time>",
                    }
                },
                "segments": {"train": ["2010-01-01", "2014-12-31"]},
            }
        },
        "record": [{"class": "SignalRecord", "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>"}}],
        "note": "a <b> c",
        "signal": "<PRED>",
        "whole": "<note>",
    }
    out = fill_placeholder(task)
    hk = out["dataset"]["kwargs"]["handler"]["kwargs"]
    assert hk == {"fit_start_time": "2010-01-01", "fit_end_time": "2014-12-31", "alias": "2014-12-31"}
    assert out["record"][0]["kwargs"] == {"model": "<MODEL>", "dataset": "<DATASET>"}
    assert task["dataset"]["kwargs"]["handler"]["kwargs"]["fit_start_time"].startswith("<")
    model, ds = object(), object()
    out2 = fill_placeholder(out, {"<MODEL>": model, "<DATASET>": ds})
    assert out2["record"][0]["kwargs"]["model"] is model
    assert out2["record"][0]["kwargs"]["dataset"] is ds
    assert out2["note"] == "a <b> c" and out2["whole"] == "a <b> c"
    assert out2["signal"] == "<PRED>"  # filled later by the record that owns it


def test_fill_placeholder_errors():
    with pytest.raises(ConfigError, match=r"task\.a: placeholder <b\.c>: b has no item 'c'"):
        fill_placeholder({"a": "<b.c>", "b": {"d": 1}})
    with pytest.raises(ConfigError, match=r"segments\.train has no item '5'"):
        fill_placeholder({"a": "<segments.train.5>", "segments": {"train": [1, 2]}})
    with pytest.raises(ConfigError, match="cycle"):
        fill_placeholder({"a": "<b>", "b": "<a>"})


def test_processor_configs_by_qlib_name(panel):
    h = DataHandlerLP(
        panel,
        fit_start_time="2020-01-01",
        fit_end_time="2020-06-30",
        infer_processors=[
            {"class": "ZScoreNorm", "module_path": "qlib.data.dataset.processor",
             "kwargs": {"fields_group": "feature"}},
            "Fillna",
        ],
        learn_processors=["DropnaLabel", {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}],
    )
    infer = h.fetch(col_set="feature", data_key="infer")
    fit_part = infer.loc["2020-01-01":"2020-06-30"]
    np.testing.assert_allclose(fit_part.mean(), 0, atol=0.02)  # NaNs became 0 after the z-score
    assert infer.notna().all().all()
    learn = h.fetch(col_set="label", data_key="learn")
    daily = learn["LABEL0"].groupby(level="datetime")
    assert daily.mean().abs().max() < 1e-5 and (daily.std() - 1).abs().max() < 1e-4
    state = h.processor_state()
    assert state["infer"][0]["class"] == "ZScoreNorm" and "mean" in state["infer"][0]["state"]
    with pytest.raises(ConfigError, match=r"handler\.kwargs\.fit_start_time: ZScoreNorm is fitted"):
        DataHandlerLP(panel, infer_processors=[{"class": "ZScoreNorm"}])
    with pytest.raises(ConfigError, match=r"infer_processors\.0\.class: unknown processor 'ZScore'"):
        DataHandlerLP(panel, infer_processors=["ZScore"])


def test_unsorted_input_is_sorted_by_date(panel):
    shuffled = panel.sample(frac=1.0, random_state=1)
    h = DataHandlerLP(shuffled, start_time="2020-02-01", end_time="2020-02-29")
    got = h.fetch(col_set="__raw", data_key="raw")
    pd.testing.assert_frame_equal(got, panel.loc["2020-02-01":"2020-02-29"])


def test_drop_raw(panel):
    h = DataHandlerLP(panel, infer_processors=[ShiftByFitMean()], drop_raw=True)
    assert len(h.fetch(data_key="infer")) == len(panel)
    with pytest.raises(ConfigError, match=r"drop_raw: the raw data was dropped"):
        h.fetch(data_key="raw")
    ds = DatasetH(h, SEGMENTS)
    assert len(ds.prepare("test")) == len(panel.loc["2020-10-01":])


@pytest.mark.parametrize("process_type", ["append", "independent"])
def test_lazy_views_equal_materialised_views(panel, process_type):
    """Views computed per fetch give exactly the rows of processing the whole panel (Qlib)."""
    p = panel.copy()
    p.iloc[::37, 1] = np.inf  # something for ProcessInf to do
    cfg = {
        "fit_start_time": "2020-02-01",
        "fit_end_time": "2020-07-31",
        "infer_processors": [
            "ProcessInf",
            {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature"}},
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        "learn_processors": [
            "DropnaLabel",
            {"class": "ZScoreNorm", "kwargs": {"fields_group": "label"}},
            {"class": "CSRankNorm", "kwargs": {"fields_group": "feature"}},
        ],
        "process_type": process_type,
    }
    snapshot = p.copy(deep=True)
    lazy = DataHandlerLP(p, **cfg)
    eager = DataHandlerLP(p, lazy=False, **cfg)
    pd.testing.assert_frame_equal(p, snapshot)  # processors never write into the caller's data
    assert lazy.lazy and not eager.lazy
    for key in ("raw", "infer", "learn"):
        for start, end in (*SEGMENTS.values(), (None, None), ("2020-03-03", "2020-03-03")):
            pd.testing.assert_frame_equal(
                lazy.fetch(slice(start, end), col_set="__raw", data_key=key),
                eager.fetch(slice(start, end), col_set="__raw", data_key=key),
            )
    assert lazy.processor_state() == eager.processor_state()
    # fetching never changes the raw data
    pd.testing.assert_frame_equal(lazy.fetch(col_set="__raw", data_key="raw"), snapshot)
    pd.testing.assert_frame_equal(eager.fetch(col_set="__raw", data_key="raw"), snapshot)


def test_custom_processors_materialise_unless_row_local(panel):
    assert not DataHandlerLP(panel, infer_processors=[ShiftByFitMean()]).lazy

    class RowLocalScale(ScaleLabel):
        row_local = True

    h = DataHandlerLP(panel, learn_processors=[RowLocalScale()])
    assert h.lazy
    np.testing.assert_allclose(
        h.fetch(col_set="label", data_key="learn")["LABEL0"], panel[("label", "LABEL0")] * 10
    )
