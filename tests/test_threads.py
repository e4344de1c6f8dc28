"""Sharing the cores between local workers (alphamill.threads) and LightGBM's thread cap."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pandas as pd
import pytest

from alphamill import threads
from alphamill.errors import ConfigError


@pytest.fixture
def budget(monkeypatch):
    """A shared busy-worker counter installed in this process (removed afterwards)."""
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    counter = threads.new_counter(multiprocessing.get_context("spawn"))
    monkeypatch.setattr(threads, "_busy", None)
    monkeypatch.setattr(threads, "_cores", 1)
    threads.install(counter, cores=4)
    return counter


def test_no_budget_means_library_default(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "_busy", None)
    assert threads.current() is None and not threads.shared()
    with threads.busy():  # a no-op without a budget
        assert threads.current() is None


def test_share_follows_busy_workers(budget):
    assert threads.shared()
    assert threads.current() == 4  # nobody busy yet: a fit starting now may use every core
    with threads.busy():
        assert budget.value == 1 and threads.current() == 4
        budget.value += 2  # two sibling workers start tasks
        assert threads.current() == 1
        budget.value -= 1
        assert threads.current() == 2
        budget.value -= 1
    assert budget.value == 0


def test_fixed_count_wins(budget, monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    budget.value = 4
    assert threads.current() == 3 and not threads.shared()
    monkeypatch.setenv(threads.THREADS_ENV, "three")
    with pytest.raises(ConfigError, match=threads.THREADS_ENV):
        threads.current()


def test_thread_cap_reapplies_share_and_counts_core_seconds(budget):
    applied, now = [], [0.0]
    cap = threads.ThreadCap(applied.append, lambda: now[0])
    budget.value = 2
    cap.start()
    assert applied == [2]
    now[0] = 1.0
    cap()  # unchanged share: nothing applied
    assert applied == [2]
    budget.value = 1  # the sibling ran out of tasks
    now[0] = 2.0
    cap()
    assert applied == [2, 4]
    now[0] = 3.0
    cap.stop()
    assert applied == [2, 4, -1]  # the cap is lifted after the fit
    assert cap.core_seconds == pytest.approx(1 * 2 + 1 * 2 + 1 * 4)


def _frame(n_days=60, n_inst=30, n_feat=6, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product(
        [pd.bdate_range("2020-01-01", periods=n_days), [f"S{i:02d}" for i in range(n_inst)]],
        names=["datetime", "instrument"])
    x = rng.standard_normal((len(idx), n_feat)).astype("float32")
    y = x[:, 0] * 0.5 + rng.standard_normal(len(idx)) * 0.5
    cols = pd.MultiIndex.from_tuples([("feature", f"f{i}") for i in range(n_feat)] + [("label", "LABEL0")])
    return pd.DataFrame(np.column_stack([x, y]), index=idx, columns=cols)


class _Frames:
    """A minimal dataset: train / valid / test frames by segment."""

    def __init__(self):
        df = _frame()
        days = df.index.get_level_values(0).unique()
        self.parts = {"train": df.loc[days[:40]], "valid": df.loc[days[40:50]], "test": df.loc[days[50:]]}
        self.segments = dict.fromkeys(self.parts)

    def prepare(self, segments, col_set="__all", data_key="learn"):
        def one(seg):
            part = self.parts[seg]
            return part["feature"] if col_set == "feature" else part
        return [one(s) for s in segments] if isinstance(segments, (list, tuple)) else one(segments)


def test_lightgbm_share_changes_mid_fit_without_changing_the_trees(budget, monkeypatch):
    from alphamill.model.gbdt import LGBModel

    kwargs = dict(num_boost_round=40, early_stopping_rounds=40, num_leaves=8, colsample_bytree=0.7,
                  learning_rate=0.1)
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    fixed = LGBModel(**kwargs).fit(_Frames())
    monkeypatch.delenv(threads.THREADS_ENV)

    applied: list[int] = []
    model = LGBModel(**kwargs)
    real = model._thread_cap

    def with_a_sibling():
        """The real cap; a sibling worker starts a task at iteration 5 and ends it at 15."""
        cap = real()
        inner, calls = cap._set, [0]

        def record(n):
            applied.append(n)
            inner(n)

        class Sibling(type(cap)):
            def __call__(self, env=None):
                calls[0] += 1
                if calls[0] == 5:
                    budget.value += 1
                if calls[0] == 15:
                    budget.value -= 1
                super().__call__(env)

        cap.__class__ = Sibling
        cap._set = record
        return cap

    monkeypatch.setattr(model, "_thread_cap", with_a_sibling)
    budget.value = 0
    with threads.busy():
        model.fit(_Frames())
    assert applied == [4, 2, 4, -1]
    assert model.fit_core_seconds > 0
    ds = _Frames()
    np.testing.assert_array_equal(model.predict(ds).to_numpy(), fixed.predict(ds).to_numpy())
