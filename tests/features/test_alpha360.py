"""Alpha360: Qlib's names and expressions, every cell against a direct pandas computation of
the formulas (halts, late listings, zero volume, one-day listings), its own cache entries, and
the handler's default processors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from alphamill.dataset import Alpha158, Alpha360, DatasetH
from alphamill.errors import ConfigError
from alphamill.features import cache
from alphamill.features import processors as P
from alphamill.features.alpha158 import ALPHA158_NAMES
from alphamill.features.alpha360 import ALPHA360_EXPRESSIONS, ALPHA360_NAMES
from tests.features.conftest import FIXTURES, csv_panel

F32 = np.float32


def direct_alpha360(panel: pd.DataFrame) -> pd.DataFrame:
    """Qlib's Alpha360 formulas by hand: per instrument, ``Ref(x, i)`` is a shift by i rows of
    the instrument's series (halted days are NaN rows), divided by today's close (volume by
    today's volume + 1e-12), all in float32 as Qlib computes on its float32 fields."""
    by_inst = panel.groupby(level="instrument", sort=False)
    close = panel["close"].to_numpy(F32)
    denom_vol = panel["volume"].to_numpy(F32) + F32(1e-12)
    cols = {}
    for field in ("close", "open", "high", "low", "vwap"):
        for i in range(59, -1, -1):
            lag = by_inst[field].shift(i).to_numpy(F32) if i else panel[field].to_numpy(F32)
            cols[f"{field.upper()}{i}"] = lag / close
    for i in range(59, -1, -1):
        lag = by_inst["volume"].shift(i).to_numpy(F32) if i else panel["volume"].to_numpy(F32)
        cols[f"VOLUME{i}"] = lag / denom_vol
    return pd.DataFrame(cols, index=panel.index)


def test_names_and_expressions_are_qlibs():
    assert len(ALPHA360_NAMES) == len(set(ALPHA360_NAMES)) == 360
    assert ALPHA360_NAMES[:2] == ["CLOSE59", "CLOSE58"] and ALPHA360_NAMES[59:61] == ["CLOSE0", "OPEN59"]
    assert ALPHA360_NAMES[-1] == "VOLUME0"
    assert [n[:-2] for n in ALPHA360_NAMES[::60]] == ["CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME"]
    # the strings of Qlib's Alpha360DL.get_feature_config (they are part of the cache key)
    assert ALPHA360_EXPRESSIONS[0] == "Ref($close, 59)/$close"
    assert ALPHA360_EXPRESSIONS[59] == "$close/$close"
    assert ALPHA360_EXPRESSIONS[299] == "$vwap/$close"
    assert ALPHA360_EXPRESSIONS[300] == "Ref($volume, 59)/($volume+1e-12)"
    assert ALPHA360_EXPRESSIONS[-1] == "$volume/($volume+1e-12)"


@pytest.mark.parametrize("market", ["market", "edge/market"])
def test_every_cell_matches_the_formulas(market, tmp_path):
    src = tmp_path / "m"
    shutil.copytree(FIXTURES / market, src)
    ours = cache.load_features(src, cache_dir=tmp_path / "cache", features="alpha360")
    assert list(ours.columns) == ALPHA360_NAMES + ["LABEL0"]
    assert (ours.dtypes == np.float32).all()
    panel = csv_panel(src)
    ref = direct_alpha360(panel)
    assert ours.index.equals(ref.index)
    a = ours[ALPHA360_NAMES].to_numpy()
    b = ref[ALPHA360_NAMES].to_numpy()
    assert np.array_equal(a, b, equal_nan=True)  # bit for bit, NaN and inf where they are
    label = panel.groupby(level="instrument")["close"]
    ref_label = label.shift(-2).to_numpy(F32) / label.shift(-1).to_numpy(F32) - F32(1)
    assert np.array_equal(ours["LABEL0"].to_numpy(), ref_label, equal_nan=True)


def test_halts_zero_volume_and_short_listings(tmp_path):
    src = tmp_path / "edge"
    shutil.copytree(FIXTURES / "edge" / "market", src)
    df = cache.load_features(src, cache_dir=tmp_path / "cache", features="alpha360")
    panel = csv_panel(src)
    halted = panel["close"].isna()
    assert halted.any()
    # a halted day is a row, NaN for every feature (today's close is missing)
    assert df.loc[halted.to_numpy(), ALPHA360_NAMES].isna().all().all()
    # the day after a halt: Ref(., 1) is the halted row, so NaN, not the last traded close
    after = halted.groupby(level="instrument").shift(1, fill_value=False) & ~halted
    assert after.any() and df.loc[after.to_numpy(), "CLOSE1"].isna().all()
    assert df.loc[after.to_numpy(), "CLOSE0"].eq(1).all()
    # zero volume today: VOLUME0 = 0/1e-12 = 0 and the lags are huge but finite
    zero = (panel["volume"] == 0) & panel["volume"].groupby(level="instrument").shift(1).gt(0)
    assert zero.any()
    assert (df.loc[zero.to_numpy(), "VOLUME0"] == 0).all()
    lag1 = df.loc[zero.to_numpy(), "VOLUME1"]
    assert np.isfinite(lag1).all() and (lag1 > 1e15).all()
    # an instrument listed for one day has its own row and no history
    one = df.xs("E004", level="instrument")
    assert len(one) == 1 and one["CLOSE1"].isna().all() and one["CLOSE0"].eq(1).all()


def test_feature_sets_have_their_own_cache_entries(tmp_path, monkeypatch):
    src = tmp_path / "m"
    shutil.copytree(FIXTURES / "market", src)
    calls = []
    real = cache.compute_table

    def counting(*args, **kwargs):
        calls.append(kwargs.get("features"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "compute_table", counting)
    cdir = tmp_path / "cache"
    a360 = cache.load_features(src, cache_dir=cdir, features="alpha360")
    a158 = cache.load_features(src, cache_dir=cdir)
    assert list(a158.columns) == ALPHA158_NAMES + ["LABEL0"]
    cache.load_features(src, cache_dir=cdir, features="alpha360")
    cache.load_features(src, cache_dir=cdir, features="alpha158")
    assert calls == ["alpha360", "alpha158"]  # each computed once, then read back
    assert len([p for p in (cdir / "alpha360").iterdir() if p.is_dir()]) == 1
    assert len([p for p in (cdir / "alpha158").iterdir() if p.is_dir()]) == 1
    fp = "fingerprint"
    assert cache.cache_key(fp, ["x"], ["L"], "alpha360") != cache.cache_key(fp, ["x"], ["L"], "alpha158")
    pd.testing.assert_series_equal(a360["LABEL0"], a158["LABEL0"])
    assert cache.clear_cache(cdir) == 2
    with pytest.raises(ConfigError, match="unknown feature set 'alpha999'"):
        cache.load_features(src, cache_dir=cdir, features="alpha999")


def _handler(tmp_path, **kwargs) -> Alpha360:
    src = tmp_path / "m"
    if not src.exists():
        shutil.copytree(FIXTURES / "market", src)
    base = dict(instruments="all", start_time="2010-07-01", end_time="2011-06-30",
                fit_start_time="2010-07-01", fit_end_time="2010-12-31", data=str(src),
                cache_dir=str(tmp_path / "cache"))
    return Alpha360(**{**base, **kwargs})


def test_handler_defaults_are_qlibs_processors(tmp_path):
    h = _handler(tmp_path)
    assert [type(p) for p in h.infer_processors] == [P.ProcessInf, P.ZScoreNorm, P.Fillna]
    assert [type(p) for p in h.learn_processors] == [P.DropnaLabel, P.CSZScoreNorm]
    raw = h.fetch(col_set="__raw", data_key="raw")
    infer = h.fetch(col_set="__raw", data_key="infer")
    learn = h.fetch(col_set="__raw", data_key="learn")
    assert raw.shape[1] == 361 and raw.index.equals(infer.index)
    # infer: z-scored with the fit window's mean and population std (every column, the label
    # too, as Qlib's processors with no fields_group), then NaN -> 0; CLOSE0 (constant 1) kept
    fit = raw.loc[(raw.index.get_level_values(0) >= "2010-07-01")
                  & (raw.index.get_level_values(0) <= "2010-12-31")]
    for col in [("feature", "CLOSE5"), ("feature", "VOLUME3"), ("label", "LABEL0")]:
        x = fit[col].to_numpy(np.float64)
        mean, std = np.nanmean(x), np.nanstd(x)
        want = ((raw[col] - F32(mean)) / F32(std)).fillna(0).to_numpy(F32)
        np.testing.assert_allclose(infer[col].to_numpy(), want, rtol=1e-6, atol=1e-6)
    halted = raw[("feature", "CLOSE0")].isna()
    assert halted.any() and (infer.loc[halted, ("feature", "CLOSE0")] == 0).all()
    assert (infer.loc[~halted, ("feature", "CLOSE0")] == 1).all()
    assert not infer.isna().any().any()
    # learn: the label (filled by Fillna, so DropnaLabel drops nothing) z-scored per day
    assert learn.index.equals(infer.index)
    day = learn.index.get_level_values(0)[200]
    lab = infer.loc[day, ("label", "LABEL0")]
    np.testing.assert_allclose(learn.loc[day, ("label", "LABEL0")].to_numpy(),
                               ((lab - lab.mean()) / lab.std()).to_numpy(), rtol=1e-5, atol=1e-6)
    # Alpha158's defaults stay Qlib's: no infer processors
    a158 = Alpha158(instruments="all", start_time="2010-07-01", end_time="2011-06-30",
                    data=str(tmp_path / "m"), cache_dir=str(tmp_path / "cache"))
    assert a158.infer_processors == []


def test_handler_needs_a_fit_window_and_takes_overrides(tmp_path):
    with pytest.raises(ConfigError, match="fit_start_time and fit_end_time") as e:
        _handler(tmp_path, fit_start_time=None, fit_end_time=None)
    assert e.value.path.endswith("fit_start_time")
    h = _handler(tmp_path, fit_start_time=None, fit_end_time=None, infer_processors=[],
                 learn_processors=[{"class": "DropnaLabel"}])
    assert h.infer_processors == [] and len(h.learn_processors) == 1
    with pytest.raises(ConfigError, match="unknown Alpha360 argument") as e:
        _handler(tmp_path, windows=5)
    assert e.value.path.endswith(".windows")
    ds = DatasetH(handler=h, segments={"train": ("2010-07-01", "2010-12-31"),
                                       "test": ("2011-01-01", "2011-06-30")})
    assert ds.prepare("test", col_set="feature").shape[1] == 360


def test_qlib_list_label_is_accepted(tmp_path):
    """Qlib's benchmark configs give the label as a list of expressions."""
    h = _handler(tmp_path, label=["Ref($close, -2) / Ref($close, -1) - 1"])
    assert list(h.fetch(col_set="label").columns) == ["LABEL0"]
