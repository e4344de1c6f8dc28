"""CsvFolderSource: the fixture market, universes, windows, caching and every bad-data case."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import alphamill.data.csv_folder as csv_folder
from alphamill.data import FIELDS, CsvFolderSource, write_instruments_file
from alphamill.errors import ConfigError, DataError
from tests.data.conftest import EDGE_MARKET, FIXTURE, MARKET


def _csv_rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, parse_dates=["date"])


def test_fixture_market_rows_match_qlib_exactly():
    src = CsvFolderSource(MARKET)
    panel = src.load()
    ref = pd.read_parquet(FIXTURE / "features.parquet")
    assert len(src.calendar()) == 389
    assert len(panel) == 2462
    assert panel.index.equals(ref.index)
    assert list(panel.index.names) == ["datetime", "instrument"]
    assert panel.index.is_monotonic_increasing
    assert list(panel.columns) == list(FIELDS)
    assert all(dt == np.float32 for dt in panel.dtypes)


def test_edge_market_rows_match_qlib_exactly():
    panel = CsvFolderSource(EDGE_MARKET).load()
    ref = pd.read_parquet(FIXTURE / "edge" / "features.parquet")
    assert panel.index.equals(ref.index)


def test_values_are_the_csv_values_as_float32():
    panel = CsvFolderSource(MARKET).load()
    raw = _csv_rows(MARKET / "S0002.csv").set_index("date")
    got = panel.xs("S0002", level="instrument")
    for f in FIELDS:
        np.testing.assert_array_equal(got[f].to_numpy(), raw[f].to_numpy(dtype=np.float32))


def test_halted_days_are_nan_rows_inside_the_span():
    panel = CsvFolderSource(MARKET).load()
    s4 = panel.xs("S0004", level="instrument")
    halted = pd.to_datetime(["2010-10-12", "2010-10-13", "2010-10-14"])
    assert s4.loc[halted].isna().all().all()
    assert s4.drop(halted).notna().all().all()
    assert panel.loc[(pd.Timestamp("2011-03-08"), "S0007")].isna().all()


def test_listing_spans_come_from_first_and_last_rows():
    src = CsvFolderSource(MARKET)
    meta = json.loads((MARKET / "meta.json").read_text())
    spans = src.spans()
    assert sorted(spans) == sorted(meta["listing_spans"])
    for sym, (a, b) in meta["listing_spans"].items():
        assert spans[sym] == [(pd.Timestamp(a), pd.Timestamp(b))]
    panel = src.load()
    s8 = panel.xs("S0008", level="instrument")
    assert (s8.index.min(), s8.index.max(), len(s8)) == (
        pd.Timestamp("2011-02-14"), pd.Timestamp("2011-05-20"), 70)


def test_benchmark_folder_and_meta_are_not_instruments():
    src = CsvFolderSource(MARKET)
    assert src.instruments() == [f"S000{i}" for i in range(1, 9)]
    assert "EWBENCH" not in src.spans()


def test_window_and_fields():
    src = CsvFolderSource(MARKET)
    panel = src.load(start="2010-11-18", end="2010-11-23", fields=["$close", "Volume"])
    assert list(panel.columns) == ["close", "volume"]
    dates = panel.index.get_level_values(0)
    assert dates.min() == pd.Timestamp("2010-11-18") and dates.max() == pd.Timestamp("2010-11-23")
    # S0006 delists on 2010-11-19: no rows after it
    s6 = panel.xs("S0006", level="instrument")
    assert list(s6.index) == list(pd.to_datetime(["2010-11-18", "2010-11-19"]))
    with pytest.raises(ConfigError, match="unknown field"):
        src.load(fields=["close", "amount"])
    with pytest.raises(ConfigError, match="after end"):
        src.load(start="2011-01-01", end="2010-01-01")
    assert len(src.load(start="2030-01-01")) == 0


def test_optional_fields_factor_and_change_are_loadable():
    panel = CsvFolderSource(MARKET).load(["S0001"], fields=["factor", "change"])
    assert (panel["factor"] == 1).all()
    assert np.isnan(panel["change"].iloc[0]) and panel["change"].iloc[1:].notna().all()


def test_universe_from_list_and_single_symbol():
    src = CsvFolderSource(MARKET)
    panel = src.load(["S0003", "s0001"])
    assert sorted(panel.index.get_level_values(1).unique()) == ["S0001", "S0003"]
    assert src.instruments(["S0002"]) == ["S0002"]
    assert src.instruments("S0005") == ["S0005"]
    with pytest.raises(DataError, match="S0099"):
        src.load(["S0001", "S0099"])
    with pytest.raises(DataError, match="empty"):
        src.load([])
    with pytest.raises(DataError, match="csi300"):
        src.load("csi300")


def test_universe_file_ranges_are_honoured(tmp_path):
    src = CsvFolderSource(MARKET)
    f = tmp_path / "mine.txt"
    f.write_text("S0001\t2010-03-01\t2010-03-31\nS0001\t2010-06-01\t2010-06-04\n"
                 "S0003\t2010-01-01\t2010-12-31\n")
    panel = src.load(str(f))
    s1 = panel.xs("S0001", level="instrument").index
    assert s1.min() == pd.Timestamp("2010-03-01") and s1.max() == pd.Timestamp("2010-06-04")
    assert not ((s1 > pd.Timestamp("2010-03-31")) & (s1 < pd.Timestamp("2010-06-01"))).any()
    assert len(s1) == 23 + 4
    s3 = panel.xs("S0003", level="instrument").index
    # the file says 2010-01-01 but S0003 only lists on 2010-09-01: no rows before
    assert s3.min() == pd.Timestamp("2010-09-01") and s3.max() == pd.Timestamp("2010-12-31")
    assert src.instruments(f) == ["S0001", "S0003"]
    # Qlib's D.instruments() dict form
    assert src.instruments({"market": str(f), "filter_pipe": []}) == ["S0001", "S0003"]


def test_universe_file_errors(tmp_path):
    src = CsvFolderSource(MARKET)
    bad = tmp_path / "bad.txt"
    bad.write_text("S0001\t2010-03-01\n")
    with pytest.raises(DataError, match=r"bad.txt, line 1"):
        src.load(str(bad))
    bad.write_text("S0001\t2010-03-31\t2010-03-01\n")
    with pytest.raises(DataError, match="after end"):
        src.load(str(bad))
    bad.write_text("S0042\t2010-03-01\t2010-03-31\n")
    with pytest.raises(DataError, match="S0042"):
        src.load(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        src.load(str(empty))


def test_universe_written_then_read_round_trips(tmp_path):
    src = CsvFolderSource(MARKET)
    write_instruments_file(src.spans(), tmp_path / "all.txt")
    pd.testing.assert_frame_equal(src.load(str(tmp_path / "all.txt")), src.load())


def test_parquet_files_load_like_csv(tmp_path):
    out = tmp_path / "pq"
    out.mkdir()
    for p in sorted(MARKET.glob("*.csv")):
        df = pd.read_csv(p, parse_dates=["date"])
        df.to_parquet(out / f"{p.stem}.parquet", index=False)
    pd.testing.assert_frame_equal(CsvFolderSource(out).load(), CsvFolderSource(MARKET).load())


def test_missing_vwap_is_nan_and_symbol_from_file_name(tmp_path):
    out = tmp_path / "novwap"
    out.mkdir()
    for p in sorted(MARKET.glob("S000[12].csv")):
        df = pd.read_csv(p).drop(columns=["vwap", "symbol"])
        df.to_csv(out / f"X{p.stem}.csv", index=False)
    src = CsvFolderSource(out)
    panel = src.load()
    assert sorted(src.spans()) == ["XS0001", "XS0002"]
    assert panel["vwap"].isna().all() and panel["close"].notna().all()
    assert "vwap absent" in src.describe()


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


GOOD = ("date,open,high,low,close,volume\n"
        "2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,11,10,10.8,200\n")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("date,open,high,low,volume\n2020-01-02,10,11,9,100\n", r"A\.csv: missing column.*'close'"),
        ("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,100\n2020-13-45,1,1,1,1,1\n",
         r"A\.csv, line 3: cannot parse date '2020-13-45'"),
        ("date,open,high,low,close,volume\n,10,11,9,10,100\n", r"A\.csv, line 2: cannot parse date"),
        ("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,100\n2020-01-03,1,1,1,1,1\n"
         "2020-01-02,10,11,9,10,100\n", r"A\.csv: duplicate date 2020-01-02 \(lines 2 and 4\)"),
        ("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,100\n2020-01-03,10,11,9,-1,100\n",
         r"A\.csv, line 3: negative price in column 'close'"),
        ("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,-100\n",
         r"A\.csv, line 2: negative volume"),
        ("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,100\n2020-01-03,10,abc,9,10,100\n",
         r"A\.csv, line 3: non-numeric value 'abc' in column 'high'"),
        ("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,100\n2020-01-03,10,11,9\n",
         r"A\.csv, line 3: expected 6 values, found 4"),
        ("date,open,high,low,close,volume\n2020-01-02,10,inf,9,10,100\n", r"A\.csv, line 2: high is infinite"),
        ("date,open,high,low,close,volume\n", r"A\.csv: no data rows"),
        ("", r"A\.csv: empty file"),
        ("date,open,high,low,close,volume\n2020-01-02 10:30:00,10,11,9,10,100\n", r"time of day"),
        ("date,symbol,open,high,low,close,volume\n2020-01-02,X,10,11,9,10,100\n2020-01-03,Y,1,1,1,1,1\n",
         r"A\.csv: the symbol column holds several symbols \(X, Y\)"),
    ],
)
def test_bad_csv_raises_naming_file_and_problem(tmp_path, text, pattern):
    folder = tmp_path / "bad"
    _write(folder, "A.csv", text)
    _write(folder, "B.csv", GOOD)
    with pytest.raises(DataError, match=pattern):
        CsvFolderSource(folder).load()


def test_mixed_columns_across_files_names_the_odd_files(tmp_path):
    folder = tmp_path / "mixed"
    for name in ("A.csv", "B.csv", "C.csv"):
        _write(folder, name, GOOD)
    _write(folder, "D.csv", GOOD.replace("volume\n", "volume,vwap\n").replace("100\n", "100,10\n")
           .replace("200\n", "200,10.6\n"))
    with pytest.raises(DataError, match=r"different columns.*D\.csv \(extra \['vwap'\]\)"):
        CsvFolderSource(folder).load()


def test_same_symbol_in_two_files(tmp_path):
    folder = tmp_path / "dup"
    _write(folder, "A.csv", "date,symbol,open,high,low,close,volume\n2020-01-02,X,10,11,9,10,100\n")
    _write(folder, "B.csv", "date,symbol,open,high,low,close,volume\n2020-01-02,X,10,11,9,10,100\n")
    with pytest.raises(DataError, match=r"'X' appears in two files: A\.csv and B\.csv"):
        CsvFolderSource(folder).load()


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="no instrument files"):
        CsvFolderSource(tmp_path / "empty").load()
    with pytest.raises(DataError, match="does not exist"):
        CsvFolderSource(tmp_path / "nope")


def test_bad_parquet_values(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    pd.DataFrame({"date": ["2020-01-02"], "open": ["x"], "high": ["1"], "low": ["1"],
                  "close": ["1"], "volume": ["1"]}).to_parquet(folder / "A.parquet")
    with pytest.raises(DataError, match=r"A\.parquet, row 1: non-numeric value 'x' in column 'open'"):
        CsvFolderSource(folder).load()


def test_fingerprint_changes_when_a_file_changes(market_copy):
    src = CsvFolderSource(market_copy)
    before = src.fingerprint()
    assert src.fingerprint() == before
    closes = src.load(["S0001"], fields=["close"])["close"].copy()
    p = market_copy / "S0001.csv"
    text = p.read_text().replace("15.1384", "15.1385", 1)  # same size, new content
    p.write_text(text)
    after = src.fingerprint()
    assert after != before
    # the same source object sees the new data (no stale in-memory panel)
    new = src.load(["S0001"], fields=["close"])["close"]
    assert new.iloc[0] == np.float32(15.1385) and closes.iloc[0] == np.float32(15.1384)
    # stat-based fingerprint for large folders also changes with mtime/size
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    old_limit = csv_folder.CONTENT_HASH_LIMIT
    try:
        csv_folder.CONTENT_HASH_LIMIT = 0
        fp1 = src.fingerprint()
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
        assert src.fingerprint() != fp1
    finally:
        csv_folder.CONTENT_HASH_LIMIT = old_limit
    # a new file changes it too
    shutil.copy(market_copy / "S0002.csv", market_copy / "S0009.csv")
    (market_copy / "S0009.csv").write_text((market_copy / "S0009.csv").read_text().replace("S0002", "S0009"))
    assert src.fingerprint() != after
    assert "S0009" in src.instruments()


def test_parsed_panel_is_cached_on_disk_and_reused(market_copy, tmp_path, monkeypatch):
    src = CsvFolderSource(market_copy)
    first = src.load()
    cached = list((tmp_path / "cache" / "data").glob("csv-*.parquet"))
    assert [c.name for c in cached] == [f"csv-{src.fingerprint()}.parquet"]
    csv_folder._MEMO.clear()

    def no_parse(folder):
        raise AssertionError("the CSV files were parsed again despite the cache")

    monkeypatch.setattr(csv_folder, "_parse_folder", no_parse)
    again = CsvFolderSource(market_copy)
    pd.testing.assert_frame_equal(again.load(), first)
    assert again.spans() == src.spans() and again.calendar().equals(src.calendar())


def test_corrupt_cache_file_is_ignored(market_copy, tmp_path):
    src = CsvFolderSource(market_copy)
    cache = tmp_path / "cache" / "data" / f"csv-{src.fingerprint()}.parquet"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not parquet")
    assert len(src.load()) == 2462
