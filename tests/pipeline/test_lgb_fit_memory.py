"""LGBModel's memory-saving fit gives the model plain ``lightgbm.train`` gives."""

from __future__ import annotations

import sys

import lightgbm as lgb
import numpy as np
import pytest

from alphamill.memory import release_file_pages, release_memory
from alphamill.model import LGBModel
from alphamill.model.base import split_xy, training_frames

PARAMS = {"num_leaves": 8, "learning_rate": 0.2, "num_threads": 1}


def _plain_lgb(dataset, rounds: int) -> lgb.Booster:
    """What LGBModel did before: Datasets built lazily inside ``lightgbm.train``."""
    train, valid = training_frames(dataset)
    (x, y), (xv, yv) = split_xy(train), split_xy(valid)
    params = {"objective": "mse", "verbosity": -1, **PARAMS}
    dtrain = lgb.Dataset(x.to_numpy(), label=y, params={"verbosity": -1})
    dvalid = lgb.Dataset(xv.to_numpy(), label=yv, reference=dtrain, params={"verbosity": -1})
    return lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=[dvalid],
                     callbacks=[lgb.early_stopping(10, verbose=False)])


def test_same_trees_as_plain_lightgbm(dataset):
    m = LGBModel(num_boost_round=40, early_stopping_rounds=10, **PARAMS).fit(dataset)
    plain = _plain_lgb(dataset, 40)
    x = dataset.prepare("test", col_set="feature", data_key="infer").to_numpy()
    assert m.best_iteration == (plain.best_iteration or plain.current_iteration())
    np.testing.assert_array_equal(m.model.predict(x), plain.predict(x))
    assert m.fit_seconds > 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [({}, {"force_col_wise": True}),
     ({"force_row_wise": True}, {"force_row_wise": True}),
     ({"force_col_wise": False}, {"force_col_wise": False})],
)
def test_layout_defaults_to_col_wise_unless_given(given, expected):
    params = LGBModel(**PARAMS, **given)._train_params()
    for name, value in expected.items():
        assert params[name] is value
    if "force_row_wise" in given:
        assert "force_col_wise" not in params
    assert params["num_threads"] == 1


def test_release_memory_runs():
    assert isinstance(release_memory(), bool)


def _rss_kb_of(path) -> int:
    from alphamill.memory import _mappings

    with open("/proc/self/smaps") as f:
        return sum(fields.get("Rss", 0) for _, _, p, fields in _mappings(f.read()) if p == str(path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_release_file_pages_keeps_data_and_written_mappings(tmp_path):
    values = np.arange(8 << 20, dtype=np.float32).reshape(-1, 64)  # 32 MiB
    np.save(tmp_path / "clean.npy", values)
    np.save(tmp_path / "written.npy", values)
    clean = np.load(tmp_path / "clean.npy", mmap_mode="c")
    written = np.load(tmp_path / "written.npy", mmap_mode="c")
    assert float(clean.sum(dtype=np.float64)) == float(values.sum(dtype=np.float64))
    written[0, 0] = -1.0  # a private copy of one page: this mapping must be left alone
    float(written.sum(dtype=np.float64))
    assert _rss_kb_of(tmp_path / "clean.npy") > 16 << 10
    released = release_file_pages()
    assert released >= 16 << 20
    assert _rss_kb_of(tmp_path / "clean.npy") == 0
    assert _rss_kb_of(tmp_path / "written.npy") > 16 << 10
    np.testing.assert_array_equal(clean, values)  # read back from the file
    assert written[0, 0] == -1.0 and written[0, 1] == values[0, 1]
