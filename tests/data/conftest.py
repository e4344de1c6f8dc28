"""Shared fixtures for the data-layer tests: the bundled fixture market and a small demo market."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import alphamill.data.csv_folder as csv_folder
from alphamill.data.demo import generate_demo_market

FIXTURE = Path(__file__).parent / "fixtures" / "alpha158"
MARKET = FIXTURE / "market"
EDGE_MARKET = FIXTURE / "edge" / "market"

#: A small demo market: long enough for listing events (which need > 280 business days).
SMALL_DEMO = {"n": 40, "start": "2010-01-01", "end": "2012-12-31", "seed": 3}


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Every test gets its own home and cache, and no parsed panel survives between tests."""
    monkeypatch.setenv("ALPHAMILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALPHAMILL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ALPHAMILL_DATA", raising=False)
    monkeypatch.delenv("ALPHAMILL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    csv_folder._MEMO.clear()
    yield
    csv_folder._MEMO.clear()


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """The small demo market, generated once per session (read-only for tests)."""
    return generate_demo_market(tmp_path_factory.mktemp("demo") / "market", **SMALL_DEMO)


@pytest.fixture
def market_copy(tmp_path) -> Path:
    """A writable copy of the fixture market."""
    dst = tmp_path / "market"
    shutil.copytree(MARKET, dst)
    return dst
