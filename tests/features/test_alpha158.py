"""Alpha158 against Qlib's own output (tests/data/fixtures/alpha158)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from alphamill.errors import ConfigError, DataError
from alphamill.features import alpha158 as A
from alphamill.features.alpha158 import (
    ALPHA158_EXPRESSIONS,
    ALPHA158_NAMES,
    compute_alpha158,
    compute_features_and_label,
    compute_label,
)
from tests.features.conftest import FIXTURES, mismatches


def test_names_and_expressions_are_qlibs():
    spec = json.loads((FIXTURES / "expressions.json").read_text())
    assert spec["feature_names"] == ALPHA158_NAMES
    assert spec["feature_expressions"] == ALPHA158_EXPRESSIONS
    assert spec["label_expressions"] == [A.DEFAULT_LABEL_EXPR]
    assert len(ALPHA158_NAMES) == 158


def test_single_operators_match_qlib_on_edge_market(edge_panel):
    ref = pd.read_parquet(FIXTURES / "edge" / "operators.parquet")
    ours = A.evaluate(A.to_dense(edge_panel), list(ref.columns), list(ref.columns))
    assert mismatches(ours, ref, rtol=1e-5, atol=1e-9) == {}


def test_features_match_qlib_bit_for_bit(market_panel):
    ref = pd.read_parquet(FIXTURES / "features.parquet")
    ours = compute_features_and_label(market_panel)
    assert list(ours.columns) == list(ref.columns)
    assert (ours.dtypes == np.float32).all()
    assert ours.index.names == ["datetime", "instrument"]
    assert mismatches(ours, ref, rtol=1e-5) == {}
    a, b = ours.to_numpy(), ref.to_numpy()
    assert ((a == b) | (np.isnan(a) & np.isnan(b))).all()  # bit-identical on this market


def test_edge_features_match_qlib(edge_panel):
    ref = pd.read_parquet(FIXTURES / "edge" / "features.parquet")
    ours = compute_features_and_label(edge_panel)
    assert mismatches(ours, ref, rtol=1e-5, atol=1e-9) == {}


def test_features_and_label_separately_equal_the_combined_pass(market_panel):
    both = compute_features_and_label(market_panel)
    feats = compute_alpha158(market_panel)
    label = compute_label(market_panel)
    pd.testing.assert_frame_equal(feats, both[ALPHA158_NAMES])
    pd.testing.assert_frame_equal(label, both[["LABEL0"]])


def test_instrument_chunking_does_not_change_results(market_panel):
    dense = A.to_dense(market_panel)
    exprs, names = ALPHA158_EXPRESSIONS[:60], ALPHA158_NAMES[:60]
    one = A.evaluate(dense, exprs, names, chunk=64)
    small = A.evaluate(dense, exprs, names, chunk=3)
    pd.testing.assert_frame_equal(one, small)


def test_no_look_ahead(market_panel):
    """Perturbing every price and volume after t changes no feature at or before t."""
    t = pd.Timestamp("2010-10-01")
    rng = np.random.default_rng(7)
    later = market_panel.index.get_level_values("datetime") > t
    shaken = market_panel.copy()
    factor = rng.uniform(0.5, 1.5, size=(int(later.sum()), 1)).astype(np.float32)
    shaken.loc[later] = shaken.loc[later].to_numpy() * factor
    base = compute_features_and_label(market_panel)
    moved = compute_features_and_label(shaken)
    upto = base.index.get_level_values("datetime") <= t
    a = base.loc[upto, ALPHA158_NAMES].to_numpy()
    b = moved.loc[upto, ALPHA158_NAMES].to_numpy()
    assert ((a == b) | (np.isnan(a) & np.isnan(b))).all()
    # the label of the last days before t looks into the perturbed future
    days = sorted(set(base.index.get_level_values("datetime")[upto]))[-2:]
    la = base.loc[base.index.get_level_values("datetime").isin(days), "LABEL0"]
    lb = moved.loc[moved.index.get_level_values("datetime").isin(days), "LABEL0"]
    assert not np.allclose(la.to_numpy(), lb.to_numpy(), equal_nan=True)
    # features after t do change
    after = ~upto
    assert not np.allclose(
        base.loc[after, "MA5"].to_numpy(), moved.loc[after, "MA5"].to_numpy(), equal_nan=True
    )


def test_label_horizons_and_qlib_kwarg_shape(market_panel):
    close = market_panel["close"].unstack("instrument")
    h2 = compute_label(market_panel, horizon=2)
    expected = (close.shift(-3) / close.shift(-1) - np.float32(1)).stack().rename("LABEL0")
    got = h2["LABEL0"].dropna()
    np.testing.assert_array_equal(got.to_numpy(), expected.reindex(got.index).to_numpy())
    qlib_shape = compute_label(market_panel, label=(["Ref($close, -3)/Ref($close, -1) - 1"], ["LABEL0"]))
    pd.testing.assert_frame_equal(qlib_shape, h2)
    default = compute_label(market_panel)
    assert default.equals(compute_label(market_panel, horizon=1))
    # NaN on the last two listed days of every instrument
    last_two = default.groupby(level="instrument").tail(2)
    assert last_two["LABEL0"].isna().all()


@pytest.mark.parametrize(
    "label",
    ["Foo($close)", "Ref($close, -2) +", (["Ref($close,-2)"], []), 5, "$nofield/Ref($close,-1)"],
)
def test_unsupported_labels_raise_config_error(market_panel, label):
    with pytest.raises(ConfigError):
        compute_label(market_panel, label=label)


def test_bad_horizon(market_panel):
    with pytest.raises(ConfigError, match="horizon"):
        compute_label(market_panel, horizon=0)


def test_bad_panels_raise_data_error(market_panel):
    with pytest.raises(DataError):
        compute_alpha158(market_panel.reset_index())
    with pytest.raises(DataError, match="close"):
        compute_alpha158(market_panel.drop(columns=["close"]))
    dup = pd.concat([market_panel.iloc[:3], market_panel.iloc[:1]])
    with pytest.raises(DataError, match="duplicate"):
        compute_alpha158(dup)


def test_rows_are_every_listed_day_including_halts(market_panel):
    out = compute_alpha158(market_panel)
    ref = pd.read_parquet(FIXTURES / "features.parquet")
    assert out.index.equals(ref.index)
    halted = out.loc[(pd.Timestamp("2010-10-13"), "S0004")]
    assert np.isnan(halted["KMID"]) and not np.isnan(halted["RSQR5"])


def test_gap_between_listing_ranges_is_missing_history_not_output(market_panel):
    """Days between two listing ranges are not rows, but windows still count them."""
    gap = pd.date_range("2010-03-01", "2010-03-31")
    inst = market_panel.index.get_level_values("instrument")
    days = market_panel.index.get_level_values("datetime")
    cut = market_panel[~((inst == "S0002") & days.isin(gap))]
    out = compute_alpha158(cut)
    assert out.index.equals(cut.index)
    halted = market_panel.copy()
    halted.loc[(inst == "S0002") & days.isin(gap)] = np.nan
    full = compute_alpha158(halted).loc[cut.index]
    pd.testing.assert_frame_equal(out, full)


def test_threads_do_not_change_results(market_panel):
    dense = A.to_dense(market_panel)
    one = A.evaluate(dense, ALPHA158_EXPRESSIONS[80:120], ALPHA158_NAMES[80:120], chunk=2, threads=1)
    two = A.evaluate(dense, ALPHA158_EXPRESSIONS[80:120], ALPHA158_NAMES[80:120], chunk=2, threads=3)
    pd.testing.assert_frame_equal(one, two)


def test_bad_thread_setting(monkeypatch):
    monkeypatch.setenv("ALPHAMILL_FEATURE_THREADS", "many")
    with pytest.raises(ConfigError, match="ALPHAMILL_FEATURE_THREADS"):
        A.default_threads()


def _in_daemon(conn, panel):  # runs in a daemonic pool-like process
    try:
        out = A.evaluate(A.to_dense(panel), ALPHA158_EXPRESSIONS[:20], ALPHA158_NAMES[:20], chunk=2, threads=2)
        conn.send(out.to_numpy())
    except BaseException as e:  # pragma: no cover - reported to the parent
        conn.send(repr(e))


def test_workers_inside_a_daemonic_process(market_panel):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_in_daemon, args=(child, market_panel), daemon=True)
    proc.start()
    got = parent.recv()
    proc.join(30)
    assert not isinstance(got, str), got
    ref = A.evaluate(A.to_dense(market_panel), ALPHA158_EXPRESSIONS[:20], ALPHA158_NAMES[:20], threads=1)
    np.testing.assert_array_equal(got, ref.to_numpy())
