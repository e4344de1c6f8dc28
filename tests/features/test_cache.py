"""The on-disk feature cache: reuse, invalidation, slicing and concurrent builders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphamill.data import open_data, write_instruments_file
from alphamill.features import cache
from alphamill.features.alpha158 import ALPHA158_NAMES
from tests.features.conftest import FIXTURES, mismatches

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def market(tmp_path) -> Path:
    dst = tmp_path / "market"
    shutil.copytree(FIXTURES / "market", dst)
    return dst


@pytest.fixture()
def counted(monkeypatch):
    calls = []
    real = cache.compute_table

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "compute_table", counting)
    return calls


def test_cache_hit_reuses_and_matches_qlib(market, tmp_path, counted):
    cdir = tmp_path / "cache"
    first = cache.load_features(market, cache_dir=cdir)
    second = cache.load_features(market, cache_dir=cdir)
    assert len(counted) == 1
    pd.testing.assert_frame_equal(first, second)
    ref = pd.read_parquet(FIXTURES / "features.parquet")
    assert list(first.columns) == ALPHA158_NAMES + ["LABEL0"]
    assert (first.dtypes == np.float32).all()
    assert mismatches(first, ref) == {}
    # a different label is a different entry
    other = cache.load_features(market, cache_dir=cdir, label=(["Ref($close, -3)/Ref($close, -1) - 1"], ["LABEL0"]))
    assert len(counted) == 2
    assert not other["LABEL0"].equals(first["LABEL0"])
    pd.testing.assert_frame_equal(other[ALPHA158_NAMES], first[ALPHA158_NAMES])


def test_changed_data_invalidates(market, tmp_path, counted):
    cdir = tmp_path / "cache"
    before = cache.load_features(market, cache_dir=cdir)
    csv = market / "S0001.csv"
    lines = csv.read_text().splitlines()
    parts = lines[100].split(",")
    parts[5] = str(float(parts[5]) * 1.1)  # the close of one day
    lines[100] = ",".join(parts)
    csv.write_text("\n".join(lines) + "\n")
    after = cache.load_features(market, cache_dir=cdir)
    assert len(counted) == 2
    assert not before.xs("S0001", level="instrument")["MA5"].equals(
        after.xs("S0001", level="instrument")["MA5"]
    )
    assert len(list((cdir / "alpha158").glob("*/meta.json"))) == 2


def test_slicing_by_dates_universe_and_listing_ranges(market, tmp_path):
    cdir = tmp_path / "cache"
    full = cache.load_features(market, cache_dir=cdir)
    win = cache.load_features(market, start="2010-07-01", end="2010-12-31", cache_dir=cdir)
    days = win.index.get_level_values("datetime")
    assert days.min() >= pd.Timestamp("2010-07-01") and days.max() <= pd.Timestamp("2010-12-31")
    expect = full.loc[pd.Timestamp("2010-07-01") : pd.Timestamp("2010-12-31")]
    pd.testing.assert_frame_equal(win, expect)
    sub = cache.load_features(market, instruments=["S0002", "S0008"], cache_dir=cdir)
    assert sorted(set(sub.index.get_level_values("instrument"))) == ["S0002", "S0008"]
    pd.testing.assert_frame_equal(
        sub, full[full.index.get_level_values("instrument").isin(["S0002", "S0008"])]
    )
    # an instruments file: only rows inside its ranges, features still use earlier history
    uni = tmp_path / "uni.txt"
    write_instruments_file(
        {"S0001": [(pd.Timestamp("2010-03-01"), pd.Timestamp("2010-03-31"))],
         "S0003": [(pd.Timestamp("2010-01-01"), pd.Timestamp("2010-09-10"))]},
        uni,
    )
    ranged = cache.load_features(market, instruments=str(uni), cache_dir=cdir)
    s1 = ranged.xs("S0001", level="instrument")
    assert s1.index.min() == pd.Timestamp("2010-03-01") and s1.index.max() == pd.Timestamp("2010-03-31")
    s3 = ranged.xs("S0003", level="instrument")
    assert s3.index.min() == pd.Timestamp("2010-09-01")  # listed late: nothing before its span
    np.testing.assert_array_equal(
        s1["MA60"].to_numpy(), full.xs("S0001", level="instrument").loc[s1.index, "MA60"].to_numpy()
    )


def test_cache_frame_is_writable_and_entry_untouched(market, tmp_path):
    cdir = tmp_path / "cache"
    a = cache.load_features(market, cache_dir=cdir)
    a.iloc[0, 0] = 123.0
    b = cache.load_features(market, cache_dir=cdir)
    assert b.iloc[0, 0] != 123.0


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from alphamill.features import cache
    real = cache.compute_table
    def logged(*a, **k):
        with open(Path({log!r}), "a") as fh:
            fh.write("computed\\n")
        time.sleep(0.5)  # widen the race window
        return real(*a, **k)
    cache.compute_table = logged
    df = cache.load_features({market!r}, cache_dir={cdir!r})
    df.to_parquet(sys.argv[1])
    """
)


def test_two_processes_build_one_valid_entry(market, tmp_path):
    cdir, log = tmp_path / "cache", tmp_path / "log.txt"
    script = tmp_path / "build.py"
    script.write_text(SCRIPT.format(repo=str(REPO), log=str(log), market=str(market), cdir=str(cdir)))
    outs = [tmp_path / f"out{i}.parquet" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(o)]) for o in outs]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert log.read_text().count("computed") == 1  # the lock let only one compute
    entries = [p for p in (cdir / "alpha158").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()  # no temp leftovers
    a, b = (pd.read_parquet(o) for o in outs)
    pd.testing.assert_frame_equal(a, b)
    assert mismatches(a, pd.read_parquet(FIXTURES / "features.parquet")) == {}


def test_default_cache_dir_setting(market, tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAMILL_CACHE_DIR", str(tmp_path / "from_env"))
    cache.load_features(market)
    assert list((tmp_path / "from_env" / "alpha158").glob("*/values.npy"))
    assert cache.clear_cache() == 1


def test_accepts_a_data_source_instance(market, tmp_path):
    src = open_data(market)
    df = cache.load_features(src, end="2010-01-31", cache_dir=tmp_path / "c")
    assert df.index.get_level_values("datetime").max() <= pd.Timestamp("2010-01-31")


def test_background_filler_computes_the_entry_once(market, tmp_path):
    from alphamill.features.warm import CacheFiller

    cdir = tmp_path / "cache"
    spec = {"data": str(market), "label": None, "cache_dir": str(cdir)}
    filler = CacheFiller([spec]).start()
    assert filler.running
    assert filler.wait() > 0 and not filler.running
    assert cache.cached_entry(market, cache_dir=cdir) is not None
    again = CacheFiller([spec]).start()  # already cached: no process at all
    assert not again.running and again.wait() == 0.0


def test_background_filler_raises_the_computation_error(market, tmp_path):
    from alphamill.errors import DataError
    from alphamill.features.warm import CacheFiller

    for f in market.glob("*.csv"):
        f.write_text("date,open\n")  # no rows, no close: the data cannot be computed
    filler = CacheFiller([{"data": str(market), "cache_dir": str(tmp_path / "cache")}])
    with pytest.raises(DataError):
        filler.start().wait()


def test_cancelled_filler_leaves_no_entry(market, tmp_path):
    from alphamill.features.warm import CacheFiller

    cdir = tmp_path / "cache"
    filler = CacheFiller([{"data": str(market), "cache_dir": str(cdir)}]).start()
    filler.cancel()
    assert not filler.running
    # either it finished before the signal or nothing (not even a temporary folder) remains
    entries = list((cdir / "alpha158").glob("*")) if (cdir / "alpha158").exists() else []
    assert all(p.suffix == ".lock" or (p / "meta.json").is_file() for p in entries)
