"""QlibBinSource: round trip through the writer, listing ranges, markets and corrupt files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphamill.data import CsvFolderSource, QlibBinSource, open_data, write_qlib_bin
from alphamill.data.qlib_bin import code_to_fname
from alphamill.errors import DataError
from tests.data.conftest import FIXTURE, MARKET


@pytest.fixture
def qlib_dir(tmp_path):
    return write_qlib_bin(CsvFolderSource(MARKET), tmp_path / "qlib")


def test_round_trip_equals_the_csv_source(qlib_dir):
    csv_src, q = CsvFolderSource(MARKET), QlibBinSource(qlib_dir)
    fields = csv_src.available_fields()
    assert set(q.available_fields()) == set(fields)
    pd.testing.assert_frame_equal(q.load(fields=fields), csv_src.load(fields=fields))
    assert q.calendar().equals(csv_src.calendar())
    assert q.spans() == csv_src.spans()
    ref = pd.read_parquet(FIXTURE / "features.parquet")
    assert q.load().index.equals(ref.index)


def test_layout_is_qlibs(qlib_dir):
    assert (qlib_dir / "calendars" / "day.txt").read_text().splitlines()[:2] == ["2010-01-04", "2010-01-05"]
    assert "S0003\t2010-09-01\t2011-06-30" in (qlib_dir / "instruments" / "all.txt").read_text()
    raw = np.fromfile(qlib_dir / "features" / "s0003" / "close.day.bin", dtype="<f4")
    cal = pd.read_csv(qlib_dir / "calendars" / "day.txt", header=None)[0]
    assert cal[int(raw[0])] == "2010-09-01"
    first_close = pd.read_csv(MARKET / "S0003.csv")["close"].iloc[0]
    assert raw[1] == np.float32(first_close)
    # halted days are NaN inside the stored series
    s4 = np.fromfile(qlib_dir / "features" / "s0004" / "close.day.bin", dtype="<f4")[1:]
    assert np.isnan(s4).sum() == 3


def test_open_data_recognises_a_qlib_dir(qlib_dir):
    assert isinstance(open_data(qlib_dir), QlibBinSource)


def test_several_ranges_per_symbol_and_markets(qlib_dir):
    (qlib_dir / "instruments" / "small.txt").write_text(
        "S0001\t2010-02-01\t2010-02-05\nS0001\t2010-03-01\t2010-03-03\nS0006\t2010-11-01\t2011-03-01\n"
    )
    q = QlibBinSource(qlib_dir)
    assert q.instruments("small") == ["S0001", "S0006"]
    panel = q.load("small", fields=["close"])
    s1 = panel.xs("S0001", level="instrument").index
    assert list(s1.strftime("%m-%d")) == ["02-01", "02-02", "02-03", "02-04", "02-05",
                                          "03-01", "03-02", "03-03"]
    s6 = panel.xs("S0006", level="instrument").index
    assert s6.max() == pd.Timestamp("2010-11-19")  # listing ends before the market range does
    with pytest.raises(DataError, match="csi300"):
        q.load("csi300")


def test_writer_keeps_gaps_as_separate_ranges(tmp_path):
    panel = CsvFolderSource(MARKET).load(["S0001", "S0002"])
    d = panel.index.get_level_values(0)
    inst = panel.index.get_level_values(1)
    gap = (inst == "S0001") & (d >= "2010-05-01") & (d < "2010-06-01")
    out = write_qlib_bin(panel[~gap], tmp_path / "q")
    lines = (out / "instruments" / "all.txt").read_text().splitlines()
    assert lines == ["S0001\t2010-01-04\t2010-04-30", "S0001\t2010-06-01\t2011-06-30",
                     "S0002\t2010-01-04\t2011-06-30"]
    back = QlibBinSource(out).load()
    pd.testing.assert_frame_equal(back, panel[~gap])


def test_spans_without_all_txt_come_from_the_close_files(qlib_dir):
    (qlib_dir / "instruments" / "all.txt").unlink()
    q = QlibBinSource(qlib_dir)
    assert q.spans() == CsvFolderSource(MARKET).spans()


def test_truncated_bin_file(qlib_dir):
    f = qlib_dir / "features" / "s0002" / "open.day.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"s0002/open\.day\.bin: truncated or corrupt"):
        QlibBinSource(qlib_dir).load(["S0002"])
    f.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        QlibBinSource(qlib_dir).load(["S0002"])


def test_start_index_out_of_range(qlib_dir):
    f = qlib_dir / "features" / "s0002" / "high.day.bin"
    raw = np.fromfile(f, dtype="<f4")
    raw[0] = 100
    raw.tofile(f)
    with pytest.raises(DataError, match=r"high\.day\.bin: start index 100 with 389 values runs past"):
        QlibBinSource(qlib_dir).load(["S0002"])
    np.array([1e6, 1.0], dtype="<f4").tofile(f)
    with pytest.raises(DataError, match="out of range"):
        QlibBinSource(qlib_dir).load(["S0002"])
    np.array([-1.0, 1.0], dtype="<f4").tofile(f)
    with pytest.raises(DataError, match="not a calendar position"):
        QlibBinSource(qlib_dir).load(["S0002"])


def test_negative_price_in_bin(qlib_dir):
    f = qlib_dir / "features" / "s0005" / "low.day.bin"
    raw = np.fromfile(f, dtype="<f4")
    raw[10] = -3
    raw.tofile(f)
    with pytest.raises(DataError, match=r"low\.day\.bin: negative low"):
        QlibBinSource(qlib_dir).load()


def test_missing_files(qlib_dir):
    (qlib_dir / "features" / "s0007" / "vwap.day.bin").unlink()
    q = QlibBinSource(qlib_dir)
    panel = q.load(["S0007", "S0001"])
    assert panel.xs("S0007", level="instrument")["vwap"].isna().all()
    assert panel.xs("S0001", level="instrument")["vwap"].notna().any()
    (qlib_dir / "features" / "s0007" / "close.day.bin").unlink()
    with pytest.raises(DataError, match=r"s0007/close\.day\.bin: missing"):
        q.load(["S0007"])


def test_bad_calendar(qlib_dir):
    cal = qlib_dir / "calendars" / "day.txt"
    lines = cal.read_text().splitlines()
    cal.write_text("\n".join([lines[0], lines[0]] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"day\.txt, line 2: duplicate date"):
        QlibBinSource(qlib_dir).calendar()
    cal.write_text("\n".join([lines[0], "garbage"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"day\.txt, line 2: cannot parse date 'garbage'"):
        QlibBinSource(qlib_dir).calendar()
    cal.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
    with pytest.raises(DataError, match="not sorted"):
        QlibBinSource(qlib_dir).calendar()


def test_not_a_qlib_dir(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="calendars/day.txt"):
        QlibBinSource(tmp_path / "x")


def test_fingerprint_changes_when_a_bin_changes(qlib_dir):
    q = QlibBinSource(qlib_dir)
    fp = q.fingerprint()
    assert QlibBinSource(qlib_dir).fingerprint() == fp
    f = qlib_dir / "features" / "s0001" / "close.day.bin"
    with open(f, "ab") as fh:
        fh.write(np.array([1.0], dtype="<f4").tobytes())
    assert q.fingerprint() != fp


def test_code_to_fname_matches_qlib():
    assert code_to_fname("SH600000") == "sh600000"
    assert code_to_fname("CON") == "_qlib_con"
