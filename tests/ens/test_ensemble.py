import numpy as np
import pandas as pd
import pytest

from alphamill.ens import (
    AverageEnsemble,
    Group,
    ICWeightedEnsemble,
    RollingEnsemble,
    RollingGroup,
    SingleKeyEnsemble,
)
from alphamill.errors import ConfigError


def pred(days, insts, values):
    idx = pd.MultiIndex.from_product([pd.to_datetime(days), insts], names=["datetime", "instrument"])
    return pd.DataFrame({"score": np.asarray(values, dtype=float)}, index=idx)


def test_rolling_ensemble_later_window_wins_on_overlap():
    a = pred(["2020-01-01", "2020-01-02"], ["X"], [1.0, 2.0])
    b = pred(["2020-01-02", "2020-01-03"], ["X"], [20.0, 30.0])
    out = RollingEnsemble()({"late": b, "early": a})  # dict order must not matter
    assert out["score"].tolist() == [1.0, 20.0, 30.0]
    assert out.index.is_monotonic_increasing


def test_average_ensemble_zscores_before_mean():
    a = pred(["2020-01-01"], ["X", "Y"], [1.0, 3.0])
    b = pred(["2020-01-01"], ["X", "Y"], [100.0, -100.0])  # large scale must not dominate
    out = AverageEnsemble()({"a": a, "b": b})
    assert np.allclose(out["score"].to_numpy(), [0.0, 0.0])


def test_average_ensemble_keeps_rows_scored_by_one_member():
    a = pred(["2020-01-01"], ["X", "Y"], [1.0, 3.0])
    b = pred(["2020-01-01"], ["X", "Y", "Z"], [1.0, 2.0, 3.0])
    out = AverageEnsemble()({"a": a, "b": b})
    assert len(out) == 3 and out["score"].notna().all()


def test_rolling_group_groups_by_key_prefix_and_merges():
    a = pred(["2020-01-01"], ["X"], [1.0])
    b = pred(["2020-01-02"], ["X"], [2.0])
    out = RollingGroup()({("lgb", 0): a, ("lgb", 1): b, ("lin", 0): a})
    assert set(out) == {("lgb",), ("lin",)}
    assert out[("lgb",)]["score"].tolist() == [1.0, 2.0]
    with pytest.raises(ConfigError):
        RollingGroup()({"not-a-tuple": a})


def test_group_needs_functions():
    with pytest.raises(ConfigError):
        Group()({"a": 1})


def test_single_key_ensemble_unwraps():
    assert SingleKeyEnsemble()({"a": {"b": 5}}) == 5
    assert SingleKeyEnsemble()({"a": 1, "b": 2}) == {"a": 1, "b": 2}


def test_bad_member_named_in_error():
    with pytest.raises(ConfigError, match="ensemble\\['m'\\]"):
        AverageEnsemble()({"m": pd.DataFrame({"a": [1], "b": [2]})})


def _market(n_days=60, n_inst=30, seed=0):
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2020-01-01", periods=n_days)
    insts = [f"S{i:02d}" for i in range(n_inst)]
    idx = pd.MultiIndex.from_product([days, insts], names=["datetime", "instrument"])
    label = pd.Series(rng.normal(size=len(idx)), index=idx)
    return idx, label, rng


def test_ic_weighted_prefers_the_member_with_positive_ic():
    idx, label, rng = _market()
    good = pd.Series(label.to_numpy() + rng.normal(scale=0.5, size=len(idx)), index=idx)
    noise = pd.Series(rng.normal(size=len(idx)), index=idx)
    ens = ICWeightedEnsemble(label, window=10, min_periods=5, label_delay=2)
    ens({"good": good, "noise": noise})
    w = ens.weights_
    assert (w.iloc[:6] == 0.5).all().all()  # not enough realised history: equal weights
    assert w["good"].iloc[20:].mean() > 0.8


def test_ic_weighted_has_no_look_ahead():
    idx, label, rng = _market()
    good = pd.Series(label.to_numpy() + rng.normal(scale=0.5, size=len(idx)), index=idx)
    noise = pd.Series(rng.normal(size=len(idx)), index=idx)
    days = idx.get_level_values("datetime").unique()
    cut = days[30]
    out1 = ICWeightedEnsemble(label, window=10, label_delay=2)({"g": good, "n": noise})
    # change every label after cut - 2 days: output on or before cut must not move
    changed = label.copy()
    late = changed.index.get_level_values("datetime") > days[28]
    changed[late] = rng.normal(size=late.sum())
    out2 = ICWeightedEnsemble(changed, window=10, label_delay=2)({"g": good, "n": noise})
    sel = out1.index.get_level_values("datetime") <= cut
    pd.testing.assert_frame_equal(out1[sel], out2[sel])
    assert not out1[~sel].equals(out2[~sel])
