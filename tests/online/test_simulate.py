"""simulate == the offline rolling run over the same windows; reruns are no-ops."""

from __future__ import annotations

import pandas as pd
import pytest

from alphamill.ens import AverageEnsemble, RollingGroup
from alphamill.online.manager import OnlineManager
from alphamill.online.strategy import RollingStrategy
from alphamill.task.gen import RollingGen, task_generator

STEP = 100


def rolling_gen() -> RollingGen:
    return RollingGen(step=STEP, rtype=RollingGen.ROLL_SD, trunc_days=2)


def offline_run(template, exp):
    from alphamill.trainer import TrainerR
    from alphamill.workflow.collect import RecorderCollector

    tasks = task_generator(template, rolling_gen())
    TrainerR(exp, progress=False).train(tasks)
    return RecorderCollector(exp)()["pred"]


def manager(template, names, url, **kw) -> OnlineManager:
    strat = RollingStrategy(names["strategy"], template, rolling_gen())
    return OnlineManager(strat, begin_time=strat.first_test_day(), pool=names["pool"], url=url, **kw)


@pytest.fixture(scope="module")
def runs(am_env, tmp_path_factory):  # noqa: F811
    import uuid

    from tests.online.conftest import small_template

    template = small_template(am_env["market"])
    tag = uuid.uuid4().hex[:8]
    names = {"pool": f"on_{tag}", "strategy": f"roll_{tag}", "offline": f"off_{tag}"}
    url = am_env["ALPHAMILL_POOL_URL"]
    offline = offline_run(template, names["offline"])
    mgr = manager(template, names, url)
    signals = mgr.simulate("2012-12-31")
    return {"template": template, "names": names, "url": url, "offline": offline, "mgr": mgr,
            "signals": signals}


def test_simulate_equals_offline_rolling(runs):
    mgr, offline = runs["mgr"], runs["offline"]
    online = mgr.strategies[0].get_collector().collect()["pred"]
    assert sorted(online) == sorted(offline)  # same windows
    from alphamill.online.update import pred_key

    for ref in mgr.strategies[0].state().trained:  # trained on its first test day, then extended
        assert len(mgr.store.get_rows(pred_key(ref["run_id"]))) > 20
    for key, pred in offline.items():
        got = online[key]
        assert got.index.equals(pred.index), key
        assert (got["score"].to_numpy() == pred["score"].to_numpy()).all(), key
    merged_off = RollingGroup()(offline)
    merged_on = mgr.strategies[0].get_collector()()["pred"]
    for key in merged_off:
        pd.testing.assert_frame_equal(merged_on[key], merged_off[key])
    expected = AverageEnsemble()({(runs["names"]["strategy"], *k): v for k, v in merged_off.items()})
    pd.testing.assert_series_equal(runs["signals"]["score"], expected["score"], check_names=False)


def test_only_newest_window_online_and_history(runs):
    mgr = runs["mgr"]
    st = mgr.strategies[0].state()
    assert [r["window"] for r in st.online] == [2]
    assert sorted(r["window"] for r in st.trained) == [0, 1, 2]
    hist = mgr.store.history(runs["names"]["strategy"])
    assert [h["action"] for h in hist] == ["first_train", "switch", "switch"]
    assert [h["windows"] for h in hist] == [[0], [1], [2]]


def test_no_duplicate_dates_and_rerun_is_noop(runs):
    mgr = runs["mgr"]
    rows = mgr.store.get_rows("signal")
    days = sorted(rows)
    assert len(days) == len(set(days))
    sig = mgr.get_signals()
    assert not sig.index.duplicated().any()
    before = (mgr.strategies[0].state().version, sig.copy(), len(mgr.store.history()))
    summary = mgr.routine("2012-12-31")
    assert summary["trained"] == {runs["names"]["strategy"]: 0} and summary["signal_dates"] == 0
    assert mgr.strategies[0].state().version == before[0]
    pd.testing.assert_frame_equal(mgr.get_signals(), before[1])
    assert len(mgr.store.history()) == before[2]
    again = mgr.simulate("2012-12-31")
    pd.testing.assert_frame_equal(again, before[1])


def test_signal_names_its_models(runs):
    mgr = runs["mgr"]
    st = mgr.strategies[0].state()
    last = mgr.get_signals().index.get_level_values("datetime").max()
    assert mgr.signal_models(last) == {runs["names"]["strategy"]: [st.online[0]["run_id"]]}
