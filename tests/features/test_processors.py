"""Qlib-compatible processors: the default learn pipeline against Qlib's fixture, and
the semantics of the others on small hand-made frames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphamill.errors import ConfigError
from alphamill.features import processors as P
from alphamill.features.alpha158 import compute_features_and_label
from tests.features.conftest import FIXTURES, mismatches


def _two_level(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.columns = pd.MultiIndex.from_tuples(
        [("label", c) if c.startswith("LABEL") else ("feature", c) for c in df.columns]
    )
    return df


def test_default_learn_processors_reproduce_qlib_learn_data(market_panel):
    ref = pd.read_parquet(FIXTURES / "learn_2010H2.parquet")
    feats = _two_level(compute_features_and_label(market_panel))
    window = feats.loc[pd.Timestamp("2010-07-01") : pd.Timestamp("2010-12-31")].copy()
    procs = P.build_processors(
        [{"class": "DropnaLabel"}, {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}}]
    )
    out = P.fit_transform(procs, window)
    out.columns = ["/".join(c) for c in out.columns]
    assert out.shape == (844, 159)
    assert (out.dtypes == np.float32).all()
    assert mismatches(out, ref, rtol=1e-5) == {}


def frame(values: dict[str, list], days: list[str], insts: list[str]) -> pd.DataFrame:
    idx = pd.MultiIndex.from_product(
        [pd.to_datetime(days), insts], names=["datetime", "instrument"]
    )
    cols = pd.MultiIndex.from_tuples(
        [("label" if k.startswith("LABEL") else "feature", k) for k in values]
    )
    return pd.DataFrame(
        np.array(list(values.values()), dtype=np.float32).T, index=idx, columns=cols
    )


DAYS = ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"]
INSTS = ["A", "B", "C"]


def test_zscore_norm_is_fitted_on_the_fit_window_only():
    f1 = [1, 2, 3, 4, 5, 6, 100, 200, 300, 400, 500, 600]
    df = frame({"F1": f1, "F2": [7.0] * 12, "LABEL0": list(range(12))}, DAYS, INSTS)
    z = P.ZScoreNorm("2020-01-01", "2020-01-02", fields_group="feature")
    z.fit(df)
    np.testing.assert_allclose(z.mean_train, [3.5, 7.0])
    np.testing.assert_allclose(z.std_train, [np.std([1, 2, 3, 4, 5, 6]), 0.0], rtol=1e-6)
    # later dates do not leak into the statistics
    df2 = df.copy()
    df2.loc[pd.Timestamp("2020-01-06"), ("feature", "F1")] = 1e9
    z2 = P.ZScoreNorm("2020-01-01", "2020-01-02", fields_group="feature")
    z2.fit(df2)
    np.testing.assert_array_equal(z.mean_train, z2.mean_train)
    np.testing.assert_array_equal(z.std_train, z2.std_train)
    out = z(df.copy())
    expect = (np.array(f1, dtype=np.float32) - np.float32(3.5)) / np.float32(np.std(f1[:6]))
    np.testing.assert_allclose(out[("feature", "F1")].to_numpy(), expect, rtol=1e-6)
    assert (out[("feature", "F2")] == 7.0).all()  # std 0: left unchanged
    assert (out[("label", "LABEL0")].to_numpy() == np.arange(12)).all()  # other group untouched
    assert out[("feature", "F1")].dtype == np.float32


def test_zscore_norm_needs_fit_window_and_rows():
    with pytest.raises(ConfigError, match="fit_start_time"):
        P.ZScoreNorm(None, "2020-01-01")
    df = frame({"F1": list(range(12))}, DAYS, INSTS)
    z = P.ZScoreNorm("2019-01-01", "2019-02-01")
    with pytest.raises(ConfigError, match="no rows"):
        z.fit(df)
    with pytest.raises(ConfigError, match="fitted"):
        P.ZScoreNorm("2020-01-01", "2020-01-02")(df)


def test_robust_zscore_norm_and_clipping():
    vals = [1, 2, 3, 4, 5, 100, np.nan, np.inf, -np.inf, 0, 0, 0]
    df = frame({"F1": vals}, DAYS, INSTS)
    r = P.RobustZScoreNorm("2020-01-01", "2020-01-02", fields_group="feature")
    r.fit(df)
    x = np.array(vals[:6], dtype=np.float32)
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    assert r.mean_train[0] == pytest.approx(med)
    assert r.std_train[0] == pytest.approx((mad + 1e-12) * 1.4826, rel=1e-6)
    out = r(df.copy())[("feature", "F1")].to_numpy()
    assert np.nanmax(out) == 3 and np.nanmin(out) == -3
    assert np.isnan(out[6]) and out[7] == 3 and out[8] == -3
    assert out[0] == pytest.approx((1 - med) / ((mad + 1e-12) * 1.4826), rel=1e-6)
    unclipped = P.RobustZScoreNorm("2020-01-01", "2020-01-02", clip_outlier=False)
    unclipped.fit(df)
    assert np.nanmax(unclipped(df.copy()).to_numpy()[:6]) > 3


def test_process_inf_replaces_by_day_mean():
    vals = [1, np.inf, 3, -np.inf, np.inf, np.nan, 5, 6, 7, 8, 9, 10]
    df = frame({"F1": vals}, DAYS, INSTS)
    out = P.ProcessInf()(df.copy())[("feature", "F1")].to_numpy()
    assert out[1] == 2.0  # mean of 1 and 3
    assert np.isnan(out[3]) and np.isnan(out[4]) and np.isnan(out[5])  # no finite value that day
    np.testing.assert_array_equal(out[6:], vals[6:])


def test_fillna_group_only_and_keeps_inf():
    df = frame({"F1": [np.nan, np.inf] + [1.0] * 10, "LABEL0": [np.nan] + [1.0] * 11}, DAYS, INSTS)
    out = P.Fillna(fields_group="feature", fill_value=-1)(df.copy())
    assert out[("feature", "F1")].iloc[0] == -1 and np.isinf(out[("feature", "F1")].iloc[1])
    assert np.isnan(out[("label", "LABEL0")].iloc[0])
    assert not P.Fillna()(df.copy()).isna().any().any()


def test_cs_zscore_norm_both_methods():
    vals = [1, 2, 6, 5, 5, 5, 7, np.nan, np.nan, 1, 2, 30]
    df = frame({"F1": vals}, DAYS, INSTS)
    z = P.CSZScoreNorm(fields_group="feature")(df.copy())[("feature", "F1")].to_numpy()
    day0 = np.array([1, 2, 6.0])
    np.testing.assert_allclose(z[:3], (day0 - day0.mean()) / day0.std(ddof=1), rtol=1e-6)
    assert np.isnan(z[3:6]).all()  # all equal
    assert np.isnan(z[6:9]).all()  # one value
    r = P.CSZScoreNorm(fields_group="feature", method="robust")(df.copy())[("feature", "F1")]
    r = r.to_numpy()
    assert r[11] == 3  # (30 - 2)/(1 * 1.4826) clipped
    assert r[9] == pytest.approx(-1 / 1.4826, rel=1e-6)
    assert np.isnan(r[4])  # MAD 0: the median itself becomes 0/0
    with pytest.raises(ConfigError):
        P.CSZScoreNorm(method="minmax")


def test_cs_rank_norm_ties_nan_and_float64():
    vals = [1, 2, 2, 3, np.nan, 1, 4, 4, 4, 1, 2, 3]
    df = frame({"F1": vals}, DAYS, INSTS)
    out = P.CSRankNorm(fields_group="feature")(df.copy())[("feature", "F1")]
    assert out.dtype == np.float64
    r = out.to_numpy()
    np.testing.assert_allclose(r[:3], (np.array([1 / 3, 2.5 / 3, 2.5 / 3]) - 0.5) * 3.46)
    np.testing.assert_allclose(r[3:6], [(1 - 0.5) * 3.46, np.nan, (0.5 - 0.5) * 3.46])
    np.testing.assert_allclose(r[6:9], [(2 / 3 - 0.5) * 3.46] * 3)


def test_dropna_processors_and_flags():
    df = frame({"F1": [np.nan] + [1.0] * 11, "LABEL0": [1.0, np.nan] + [1.0] * 10}, DAYS, INSTS)
    assert len(P.DropnaLabel()(df)) == 11
    assert len(P.DropnaProcessor(fields_group="feature")(df)) == 11
    assert len(P.DropnaProcessor()(df)) == 10
    assert not P.DropnaLabel().is_for_infer() and P.DropnaLabel().readonly()
    assert P.CSZScoreNorm().is_for_infer()
    fitted = P.transform([P.DropnaLabel(), P.Fillna()], df.copy(), for_infer=True)
    assert len(fitted) == 12


def test_filter_col():
    df = frame({"F1": [1.0] * 12, "F2": [2.0] * 12, "LABEL0": [0.0] * 12}, DAYS, INSTS)
    out = P.FilterCol(fields_group="feature", col_list=["F2"])(df)
    assert list(out.columns) == [("feature", "F2"), ("label", "LABEL0")]


def test_build_from_dicts_names_and_qlib_module_path():
    procs = P.build_processors(
        [
            "ProcessInf",
            {"class": "ZScoreNorm", "kwargs": {"fields_group": "feature"}},
            {"class": "Fillna", "module_path": "qlib.data.dataset.processor"},
            P.CSRankNorm("label"),
        ],
        fit_start_time="2020-01-01",
        fit_end_time="2020-01-02",
    )
    assert [type(p).__name__ for p in procs] == ["ProcessInf", "ZScoreNorm", "Fillna", "CSRankNorm"]
    assert procs[1].fit_end_time == pd.Timestamp("2020-01-02")
    with pytest.raises(ConfigError, match="unknown processor"):
        P.build_processor({"class": "Nope"})
    with pytest.raises(ConfigError, match="module"):
        P.build_processor({"class": "Fillna", "module_path": "somewhere.else"})
    with pytest.raises(ConfigError, match="bad arguments"):
        P.build_processor({"class": "Fillna", "kwargs": {"nope": 1}})
    with pytest.raises(ConfigError):
        P.build_processors("ProcessInf")


def test_fitted_state_round_trips_through_json():
    vals = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, np.nan, 12]
    df = frame({"F1": vals, "F2": [3.0] * 12, "LABEL0": vals}, DAYS, INSTS)
    procs = P.build_processors(
        [
            "ProcessInf",
            {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature"}},
            {"class": "ZScoreNorm", "kwargs": {"fields_group": "feature"}},
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
            {"class": "CSZScoreNorm", "kwargs": {"fields_group": "label"}},
        ],
        fit_start_time="2020-01-01",
        fit_end_time="2020-01-03",
    )
    learned = P.fit_transform(procs, df.copy())
    text = json.dumps([p.to_state() for p in procs])
    reloaded = [P.from_state(s) for s in json.loads(text)]
    replay = P.transform(reloaded, df.copy())
    pd.testing.assert_frame_equal(learned, replay)
    assert isinstance(P.Processor.from_state(procs[2].to_state()), P.ZScoreNorm)


@pytest.mark.parametrize("layout", ["F", "C", "mixed", "window"])
def test_dropna_label_equals_pandas_dropna(layout):
    from alphamill.features.processors import DropnaLabel

    rng = np.random.default_rng(3)
    idx = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=40), ["A", "B", "C"]],
                                     names=["datetime", "instrument"])
    cols = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(5)] + [("label", "LABEL0")])
    values = rng.standard_normal((len(idx), 6)).astype("float32")
    values[rng.random(len(idx)) < 0.2, 5] = np.nan
    values[rng.random(len(idx)) < 0.2, 1] = np.nan  # a NaN feature is kept
    arr = np.asfortranarray(values) if layout in ("F", "window") else np.ascontiguousarray(values)
    df = pd.DataFrame(arr, index=idx, columns=cols, copy=False)
    if layout == "window":  # rows of a column-major block, as a window of the feature cache
        df = df.iloc[9:99]
        assert not df.to_numpy().flags.f_contiguous
    if layout == "mixed":
        df[("feature", "f0")] = df[("feature", "f0")].astype("float64")
    out = DropnaLabel()(df)
    pd.testing.assert_frame_equal(out, df.dropna(subset=[("label", "LABEL0")]))
    full = df.dropna(subset=[("label", "LABEL0")])
    pd.testing.assert_frame_equal(DropnaLabel()(full), full)  # nothing to drop


def test_dropna_label_gathers_a_cache_window_column_by_column():
    """A window of the column-major feature cache comes out column-major, so the features
    LightGBM receives are one F-contiguous block it reads without a copy."""
    from alphamill.features.processors import CSZScoreNorm, DropnaLabel
    from alphamill.model.base import split_xy

    idx = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=60), list("ABCD")],
                                     names=["datetime", "instrument"])
    cols = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(7)] + [("label", "LABEL0")])
    values = np.random.default_rng(5).standard_normal((len(idx), 8)).astype("float32")
    values[::7, 7] = np.nan
    window = pd.DataFrame(np.asfortranarray(values), index=idx, columns=cols, copy=False).iloc[20:200]
    out = CSZScoreNorm(fields_group="label")(DropnaLabel()(window))
    x, _ = split_xy(out)
    features = x.to_numpy()
    assert features.dtype == np.float32 and features.flags.f_contiguous
    np.testing.assert_array_equal(features, window.dropna(subset=[("label", "LABEL0")])["feature"].to_numpy())
