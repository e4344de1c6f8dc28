"""open_data: source selection, the default demo market (generated once, safely), task calendars."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import alphamill.data as data
from alphamill.data import (
    CsvFolderSource,
    DataSource,
    QlibBinSource,
    calendar_for_task,
    ensure_demo_market,
    open_data,
    write_qlib_bin,
)
from alphamill.errors import ConfigError, DataError
from tests.data.conftest import MARKET

TINY = {"n": 5, "start": "2012-01-02", "end": "2012-04-30", "seed": 1}


def test_open_data_picks_the_source(tmp_path):
    src = open_data(MARKET)
    assert isinstance(src, CsvFolderSource)
    assert open_data(src) is src
    assert isinstance(open_data(str(write_qlib_bin(src, tmp_path / "q"))), QlibBinSource)
    assert isinstance(src, DataSource)


def test_open_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_data(tmp_path / "missing")
    f = tmp_path / "file.csv"
    f.write_text("x")
    with pytest.raises(DataError, match="expected a data folder"):
        open_data(f)
    with pytest.raises(ConfigError, match="data"):
        open_data(42)


def test_data_setting_is_used(monkeypatch):
    monkeypatch.setenv("ALPHAMILL_DATA", str(MARKET))
    src = open_data()
    assert isinstance(src, CsvFolderSource) and len(src.calendar()) == 389


def test_default_demo_market_is_generated_once(monkeypatch, tmp_path):
    for k, v in TINY.items():
        monkeypatch.setitem(data.DEMO_DEFAULTS, k, v)
    src = open_data()
    target = tmp_path / "home" / "data" / "demo"
    assert Path(src.path) == target
    assert src.instruments() == [f"S000{i}" for i in range(1, 6)]
    stamp = (target / "meta.json").stat().st_mtime_ns
    assert open_data(None).fingerprint() == src.fingerprint()
    assert (target / "meta.json").stat().st_mtime_ns == stamp
    leftovers = [p.name for p in target.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_incomplete_demo_folder_is_reported(tmp_path):
    target = tmp_path / "demo"
    target.mkdir()
    (target / "S0001.csv").write_text("partial")
    with pytest.raises(DataError, match="no meta.json"):
        ensure_demo_market(target, **TINY)


def test_two_processes_generate_the_demo_market_once(tmp_path):
    """Both processes must see one complete market; the second waits and reuses the first's."""
    target = tmp_path / "shared" / "demo"
    script = textwrap.dedent(f"""
        import alphamill.data.demo as demo
        from alphamill.data import ensure_demo_market
        calls = []
        real = demo.generate_demo_market
        def counting(*a, **k):
            calls.append(1)
            return real(*a, **k)
        import alphamill.data as d
        d.generate_demo_market = counting
        ensure_demo_market({str(target)!r}, **{TINY!r})
        print(len(calls))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert sorted(int(o.strip()) for o, _ in outs) == [0, 1]
    assert sorted(p.name for p in target.parent.iterdir()) == [".demo.lock", "demo"]
    assert len(CsvFolderSource(target).instruments()) == TINY["n"]


def test_calendar_for_task(tmp_path, monkeypatch):
    task = {"model": {}, "dataset": {"class": "DatasetH", "kwargs": {
        "handler": {"class": "Alpha158", "kwargs": {"data": str(MARKET), "instruments": "all"}},
        "segments": {}}}}
    cal = calendar_for_task(task)
    assert len(cal) == 389 and cal[0] == pd.Timestamp("2010-01-04")
    monkeypatch.setenv("ALPHAMILL_DATA", str(MARKET / ".." / "edge" / "market"))
    assert len(calendar_for_task({"dataset": {"kwargs": {"handler": {"kwargs": {}}}}})) == 90
    assert len(calendar_for_task(None)) == 90
