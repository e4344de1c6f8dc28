"""The demo market: determinism, format, stylized facts and the planted predictability."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphamill.data import CsvFolderSource, generate_demo_market
from alphamill.data.demo import COLUMNS
from alphamill.errors import ConfigError
from tests.data.conftest import SMALL_DEMO


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    args = {"n": 6, "start": "2015-01-01", "end": "2015-12-31"}
    a = _files(generate_demo_market(tmp_path / "a", seed=7, **args))
    b = _files(generate_demo_market(tmp_path / "b", seed=7, **args))
    c = _files(generate_demo_market(tmp_path / "c", seed=8, **args))
    assert a == b
    assert set(a) == set(c)
    assert all(a[k] != c[k] for k in a if k.endswith(".csv"))
    assert a["meta.json"] != c["meta.json"]


def test_format_matches_the_fixture_market(small_demo):
    files = sorted(small_demo.glob("*.csv"))
    assert len(files) == SMALL_DEMO["n"]
    header = files[0].read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    df = pd.read_csv(files[0])
    assert df["symbol"].nunique() == 1 and (df["factor"] == 1).all()
    assert np.isnan(df["change"].iloc[0])
    np.testing.assert_allclose(df["change"].iloc[1:], (df["close"] / df["close"].shift(1) - 1).iloc[1:],
                               atol=1e-8)
    assert (small_demo / "_benchmark" / "EWBENCH.csv").is_file()
    cal = CsvFolderSource(small_demo).calendar()
    assert cal.equals(pd.DatetimeIndex(pd.bdate_range(SMALL_DEMO["start"], SMALL_DEMO["end"])
                                       .as_unit("us"), name="datetime"))


def test_meta_describes_the_files(small_demo):
    meta = json.loads((small_demo / "meta.json").read_text())
    src = CsvFolderSource(small_demo)
    spans = src.spans()
    assert {k: [str(a.date()), str(b.date())] for k, [(a, b)] in spans.items()} == meta["listing_spans"]
    panel = src.load()
    assert meta["n_rows"] == int(panel["close"].notna().sum())
    assert meta["n_rows"] + sum(len(v) for v in meta["halts_rows_removed"].values()) == len(panel)


@pytest.fixture(scope="module")
def panel(small_demo):
    return CsvFolderSource(small_demo).load()


def _wide(panel, field):
    return panel[field].unstack("instrument").astype(np.float64)


def test_listing_events_and_halts_exist(panel, small_demo):
    src = CsvFolderSource(small_demo)
    cal = src.calendar()
    spans = src.spans()
    assert sum(1 for [(a, _)] in spans.values() if a > cal[0]) >= 2, "some instruments list late"
    assert sum(1 for [(_, b)] in spans.values() if b < cal[-1]) >= 1, "some delist early"
    halted = panel["close"].isna()
    assert 0 < halted.sum() < 0.02 * len(panel), "occasional halts, as NaN rows"


def test_ohlc_consistent_and_positive(panel):
    o, h, lo, c, v, w = (panel[f] for f in ("open", "high", "low", "close", "volume", "vwap"))
    ok = c.notna()
    assert (lo[ok] <= np.minimum(o[ok], c[ok])).all()
    assert (h[ok] >= np.maximum(o[ok], c[ok])).all()
    assert ((w[ok] >= lo[ok]) & (w[ok] <= h[ok])).all()
    assert (lo[ok] > 0).all() and (v[ok] > 0).all()
    assert (h[ok] > lo[ok]).mean() > 0.99


def test_fat_tails_and_volatility_clustering(panel):
    r = np.log(_wide(panel, "close")).diff()
    z = (r - r.mean()) / r.std()
    kurt = float(np.nanmean(z.to_numpy() ** 4))
    assert kurt > 4.0, f"pooled kurtosis {kurt:.2f}: tails should be fat"
    a = r.abs()
    for lag, floor in ((1, 0.04), (5, 0.03)):
        ac = np.nanmean([a[s].autocorr(lag) for s in a.columns])
        assert ac > floor, f"|r| autocorrelation at lag {lag} is {ac:.3f}: volatility should cluster"
    # volatility regimes are shared across instruments
    assert a.mean(axis=1).autocorr(1) > 0.15


def test_market_factor_and_volume_tied_to_absolute_returns(panel):
    r = np.log(_wide(panel, "close")).diff()
    corr = r.corr().to_numpy()
    off = corr[~np.eye(len(corr), dtype=bool)]
    assert np.nanmean(off) > 0.15, "a common market factor"
    lv = np.log(_wide(panel, "volume"))
    lv = lv - lv.rolling(60, min_periods=20).mean()
    pair = pd.DataFrame({"a": r.abs().stack(), "v": lv.stack()}).dropna()
    assert pair["a"].corr(pair["v"]) > 0.2


def test_planted_predictability_is_visible_in_past_prices(panel):
    """Recent moves partly reverse: the 5-day return ranks the Qlib label negatively."""
    c = _wide(panel, "close")
    label = c.shift(-2) / c.shift(-1) - 1
    roc5 = c / c.shift(5) - 1
    ic = roc5.rank(axis=1).corrwith(label.rank(axis=1), axis=1).dropna()
    assert -0.08 < ic.mean() < -0.01
    assert ic.mean() / ic.std() < -0.2


@pytest.mark.parametrize(
    "kwargs, field",
    [({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"seed": -1}, "seed"), ({"start": "bad"}, "start"),
     ({"start": "2020-01-01", "end": "2020-01-10"}, "start/end")],
)
def test_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=field):
        generate_demo_market(tmp_path / "x", **kwargs)
