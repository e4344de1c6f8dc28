"""``alphamill features`` end to end."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from alphamill.cli import main
from tests.features.conftest import FIXTURES, mismatches


def run(*args: str):
    return CliRunner().invoke(main, ["features", *args])


def test_exports_features_and_label(tmp_path):
    out = tmp_path / "f.parquet"
    res = run("--data", str(FIXTURES / "market"), "--start", "2010-07-01", "--end", "2010-12-31",
              "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    df = pd.read_parquet(out)
    ref = pd.read_parquet(FIXTURES / "features.parquet")
    ref = ref.loc[pd.Timestamp("2010-07-01") : pd.Timestamp("2010-12-31")]
    assert list(df.columns) == list(ref.columns)
    assert df.index.names == ["datetime", "instrument"]
    assert mismatches(df, ref) == {}


def test_universe_list_and_horizon(tmp_path):
    out = tmp_path / "f.parquet"
    res = run("--data", str(FIXTURES / "market"), "--universe", "S0001,S0002", "--horizon", "2",
              "--out", str(out), "--cache-dir", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert sorted(set(df.index.get_level_values("instrument"))) == ["S0001", "S0002"]
    ref = pd.read_parquet(FIXTURES / "features.parquet")
    assert not df["LABEL0"].equals(ref.loc[df.index, "LABEL0"])


def test_errors_are_clear_with_exit_2(tmp_path):
    cases = [
        ("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x.parquet")),
        ("--data", str(FIXTURES / "market"), "--out", str(tmp_path / "x.csv")),
        ("--data", str(FIXTURES / "market"), "--start", "not-a-date", "--out", str(tmp_path / "x.parquet")),
        ("--data", str(FIXTURES / "market"), "--start", "2011-01-01", "--end", "2010-01-01",
         "--out", str(tmp_path / "x.parquet")),
        ("--data", str(FIXTURES / "market"), "--universe", "NOPE", "--out", str(tmp_path / "x.parquet")),
        ("--data", str(FIXTURES / "market"), "--out", str(tmp_path / "no" / "x.parquet")),
        ("--data", str(FIXTURES / "market"), "--horizon", "0", "--out", str(tmp_path / "x.parquet")),
    ]
    for args in cases:
        res = run(*args, "--cache-dir", str(tmp_path / "c"))
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "Traceback" not in res.output
