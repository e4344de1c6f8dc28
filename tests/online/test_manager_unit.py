"""Manager rules that need no training: compare-and-set conflicts, argument errors."""

from __future__ import annotations

import pandas as pd
import pytest

from alphamill.errors import ConfigError
from alphamill.online.manager import OnlineConflict, OnlineManager
from alphamill.online.state import open_state_store
from alphamill.online.strategy import OnlineStrategy, RollingStrategy
from alphamill.task.gen import RollingGen


def ref(run_id, window):
    return {"experiment_id": "1", "run_id": run_id, "experiment_name": "e", "window": window,
            "test_start": f"2020-0{window + 1}-01", "task_hash": run_id}


def test_stale_switch_raises_conflict_and_changes_nothing(tmp_path):
    store = open_state_store("c", f"sqlite:///{tmp_path}/p.db")
    strat = OnlineStrategy("s")
    mgr = OnlineManager(strat, store=store)
    day = pd.Timestamp("2020-01-02")
    assert mgr._switch(strat, [ref("a", 0)], day, "first_train")
    assert not mgr._switch(strat, [ref("a", 0)], day, "first_train")  # nothing new: no write
    stale = strat.state()
    assert store.switch("s", 1, [ref("b", 1)], [ref("a", 0), ref("b", 1)], {}, {"action": "other"})
    strat.state = lambda: stale
    with pytest.raises(OnlineConflict, match="changed while this routine ran"):
        mgr._switch(strat, [ref("c", 1)], day, "switch")
    assert store.get_state("s").online == [ref("b", 1)]
    assert len(store.history("s")) == 2


def test_bad_arguments(tmp_path):
    store = open_state_store("c", f"sqlite:///{tmp_path}/p.db")
    with pytest.raises(ConfigError, match="freq"):
        OnlineManager(OnlineStrategy("s"), store=store, freq="1min")
    with pytest.raises(ConfigError, match="repeat"):
        OnlineManager([OnlineStrategy("s"), OnlineStrategy("s")], store=store)
    with pytest.raises(ConfigError, match="strategies"):
        OnlineManager([], store=store)
    with pytest.raises(ConfigError, match="rolling_gen"):
        RollingStrategy("r", {"model": {}, "dataset": {}}, rolling_gen="yearly")
    with pytest.raises(ConfigError, match="name_id"):
        OnlineStrategy("")


def test_prepare_online_models_newest_only():
    rg = RollingGen(step=5, calendar=pd.bdate_range("2020-01-01", "2020-03-31"))
    task = {"model": {}, "dataset": {"kwargs": {"segments": {"train": ["2020-01-01", "2020-01-31"],
                                                            "test": ["2020-02-03", "2020-03-31"]}}}}
    trained = [ref("a", 0), ref("b", 1), ref("c", 1)]
    assert [r["run_id"] for r in RollingStrategy("r", task, rg).prepare_online_models(trained)] == ["b", "c"]
    everyone = RollingStrategy("r", task, rg, online_newest_only=False).prepare_online_models(trained)
    assert len(everyone) == 3
    strat = RollingStrategy("r", task, rg)
    assert strat.boundaries("2020-02-03", "2020-02-20") == [pd.Timestamp(d) for d in
                                                           ("2020-02-10", "2020-02-17")]
    tasks = strat.tasks_until("2020-02-12")
    assert [t["dataset"]["kwargs"]["segments"]["test"] for t in tasks] == [
        ["2020-02-03", "2020-02-07"], ["2020-02-10", "2020-02-12"]]
    with pytest.raises(ConfigError, match="before the first test day"):
        strat.tasks_until("2020-01-15")
