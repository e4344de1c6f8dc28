"""``alphamill data``: demo, info and to-qlib, with exit code 2 on bad arguments."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.data import CsvFolderSource, QlibBinSource
from tests.data.conftest import MARKET


def run(*args):
    return CliRunner().invoke(main, ["data", *args])


def test_demo_writes_a_market(tmp_path):
    out = tmp_path / "m"
    res = run("demo", "--out", str(out), "--n", "4", "--start", "2015-01-01", "--end", "2015-06-30",
              "--seed", "5")
    assert res.exit_code == 0, res.output
    assert "wrote 4 instruments" in res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 5 and meta["n"] == 4
    assert CsvFolderSource(out).instruments() == ["S0001", "S0002", "S0003", "S0004"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "nope"], "--start: expected a date"),
        (["--start", "2015-02-01", "--end", "2015-01-01"], "after --end"),
        (["--n", "0"], "--n"),
        (["--seed", "-3"], "--seed"),
        (["--start", "2015-01-01", "--end", "2015-01-10"], "at least 30"),
    ],
)
def test_demo_bad_arguments_exit_2(tmp_path, args, message):
    res = run("demo", "--out", str(tmp_path / "m"), *args)
    assert res.exit_code == 2
    assert message in res.output


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x.txt").write_text("keep me")
    res = run("demo", "--out", str(tmp_path / "m"))
    assert res.exit_code == 2 and "not empty" in res.output
    assert (tmp_path / "m" / "x.txt").read_text() == "keep me"


def test_info(tmp_path):
    res = run("info", str(MARKET), "--spans")
    assert res.exit_code == 0, res.output
    assert "2010-01-04 .. 2011-06-30 (389 days)" in res.output
    assert "instruments:  8" in res.output
    assert CsvFolderSource(MARKET).fingerprint() in res.output
    assert "S0008\t2011-02-14..2011-05-20" in res.output
    assert "2 list after the first day, 2 end before the last day" in res.output


def test_info_bad_path_exit_2(tmp_path):
    res = run("info", str(tmp_path / "nowhere"))
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_to_qlib(tmp_path):
    res = run("to-qlib", str(MARKET), "--out", str(tmp_path / "q"))
    assert res.exit_code == 0, res.output
    assert QlibBinSource(tmp_path / "q").load().equals(CsvFolderSource(MARKET).load())
