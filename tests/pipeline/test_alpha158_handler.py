"""The Alpha158 handler against Qlib's own processed learn data, and its processor configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphamill.dataset import Alpha158, DatasetH
from alphamill.errors import ConfigError

FIX = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "alpha158"
MARKET = str(FIX / "market")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


def test_learn_data_matches_qlib(cache_dir):
    h = Alpha158(start_time="2010-07-01", end_time="2010-12-31", data=MARKET, cache_dir=cache_dir)
    learn = h.fetch(col_set="__raw", data_key="learn")
    ref = pd.read_parquet(FIX / "learn_2010H2.parquet")
    assert [f"{g}/{n}" for g, n in learn.columns] == list(ref.columns)
    assert list(learn.index.get_level_values(1)) == list(ref.index.get_level_values(1))
    np.testing.assert_array_equal(
        learn.index.get_level_values(0).to_numpy("datetime64[s]"),
        ref.index.get_level_values(0).to_numpy("datetime64[s]"),
    )
    np.testing.assert_allclose(learn.to_numpy(), ref.to_numpy(), rtol=1e-5, atol=1e-6)
    # infer data keeps every row, missing labels included; raw == infer without infer processors
    infer = h.fetch(col_set="__raw", data_key="infer")
    assert len(infer) > len(learn) and infer[("label", "LABEL0")].isna().any()
    assert h.fetch(data_key="raw") is not None
    assert len(h.fingerprint()) > 0


def test_processor_configs_with_fit_window(cache_dir):
    h = Alpha158(
        start_time="2010-03-01",
        end_time="2011-03-31",
        fit_start_time="2010-03-01",
        fit_end_time="2010-09-30",
        infer_processors=[
            {"class": "ProcessInf"},
            {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        data=MARKET,
        cache_dir=cache_dir,
    )
    infer = h.fetch(col_set="feature", data_key="infer")
    assert infer.notna().all().all() and infer.abs().max().max() <= 3
    # fitted on the fit window only: there the median of each column is ~0 after scaling
    fit_part = infer.loc["2010-03-01":"2010-09-30"]
    assert np.nanmax(np.abs(fit_part.median().to_numpy())) < 1e-3
    state = h.processor_state()
    assert [p["class"] for p in state["infer"]] == ["ProcessInf", "RobustZScoreNorm", "Fillna"]
    assert [p["class"] for p in state["learn"]] == ["DropnaLabel", "CSZScoreNorm"]
    ds = DatasetH(h, {"train": ("2010-03-01", "2010-09-30"), "test": ("2010-10-01", "2011-03-31")})
    tr = ds.prepare("train", col_set=["feature", "label"], data_key="learn")
    lab = tr[("label", "LABEL0")].groupby(level="datetime")
    assert lab.mean().abs().max() < 1e-4 and (lab.std() - 1).abs().max() < 1e-4


def test_alpha158_config_errors():
    with pytest.raises(ConfigError, match=r"handler\.kwargs\.colour: unknown Alpha158 argument"):
        Alpha158(data=MARKET, colour="red")
    with pytest.raises(ConfigError, match=r"handler\.kwargs\.freq"):
        Alpha158(data=MARKET, freq="1min")
    with pytest.raises(ConfigError, match=r"handler\.kwargs\.learn_processors\.0"):
        Alpha158(data=MARKET, learn_processors=[{"class": "NoSuchProcessor"}])
