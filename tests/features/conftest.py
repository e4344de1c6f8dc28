"""Fixture market loading for the feature tests (reads only tests/data/fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "alpha158"
FIELDS = ["open", "high", "low", "close", "volume", "vwap"]


def csv_panel(folder: Path) -> pd.DataFrame:
    """The data interface's panel built from fixture CSVs: calendar = union of dates,
    span = first..last row per file, halted days = NaN rows."""
    frames = []
    for f in sorted(folder.glob("*.csv")):
        df = pd.read_csv(f, parse_dates=["date"])
        df["instrument"] = f.stem
        frames.append(df)
    raw = pd.concat(frames, ignore_index=True)
    calendar = np.sort(raw["date"].unique())
    rows = []
    for inst, g in raw.groupby("instrument"):
        days = calendar[(calendar >= g["date"].min()) & (calendar <= g["date"].max())]
        full = pd.DataFrame({"date": days}).merge(g, on="date", how="left")
        full["instrument"] = inst
        rows.append(full)
    panel = pd.concat(rows, ignore_index=True).rename(columns={"date": "datetime"})
    panel = panel.set_index(["datetime", "instrument"]).sort_index()
    return panel[FIELDS].astype(np.float32)


def mismatches(ours: pd.DataFrame, ref: pd.DataFrame, rtol=1e-5, atol=0.0) -> dict[str, int]:
    """Per-column count of cells outside the README's rule (NaN==NaN, same inf)."""
    assert ours.index.equals(ref.index), "rows differ"
    out = {}
    for c in ref.columns:
        a = ours[c].to_numpy(np.float64)
        b = ref[c].to_numpy(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        same_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
        with np.errstate(invalid="ignore"):
            close = np.abs(a - b) <= atol + rtol * np.maximum(np.abs(a), np.abs(b))
        bad = ~(both_nan | same_inf | close)
        if bad.any():
            out[c] = int(bad.sum())
    return out


@pytest.fixture(scope="session")
def market_panel() -> pd.DataFrame:
    return csv_panel(FIXTURES / "market")


@pytest.fixture(scope="session")
def edge_panel() -> pd.DataFrame:
    return csv_panel(FIXTURES / "edge" / "market")
