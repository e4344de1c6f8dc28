"""Small synthetic panels so dataset and model tests run in milliseconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphamill.dataset import DataHandlerLP, DatasetH


def make_panel(n_inst: int = 8, start: str = "2020-01-01", end: str = "2020-12-31", seed: int = 0):
    """Two-level-column panel: 5 float32 features, a label linear in them plus noise."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, end)
    insts = [f"S{i:04d}" for i in range(n_inst)]
    index = pd.MultiIndex.from_product([dates, insts], names=["datetime", "instrument"])
    x = rng.normal(size=(len(index), 5)).astype("float32")
    y = (x @ np.array([0.5, -0.3, 0.2, 0.0, 0.1]) + 0.3 * rng.normal(size=len(index)))
    y = y.astype("float32")
    y[rng.random(len(index)) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.01] = np.nan
    cols = pd.MultiIndex.from_tuples(
        [("feature", f"F{i}") for i in range(5)] + [("label", "LABEL0")]
    )
    return pd.DataFrame(np.c_[x, y], index=index, columns=cols).astype("float32")


SEGMENTS = {
    "train": ("2020-01-01", "2020-06-30"),
    "valid": ("2020-07-01", "2020-09-30"),
    "test": ("2020-10-01", "2020-12-31"),
}


@pytest.fixture(scope="session")
def panel() -> pd.DataFrame:
    return make_panel()


@pytest.fixture()
def dataset(panel) -> DatasetH:
    handler = DataHandlerLP(panel, learn_processors=[DropLabelNa()])
    return DatasetH(handler=handler, segments=SEGMENTS)


class DropLabelNa:
    """Minimal learn processor: drop rows whose label is missing."""

    def fit(self, df):
        return None

    def is_for_infer(self):
        return False

    def __call__(self, df):
        return df[df["label"].notna().all(axis=1)]
