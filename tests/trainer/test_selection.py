"""Honest selection among a grid's variants, end to end: a real grid run ranks its signals by
the deflated Sharpe ratio, PBO and a paired IC test, counting every variant the pool holds."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd
import pytest

from alphamill.errors import ConfigError
from alphamill.stats import (
    deflated_sharpe_ratio,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    sharpe_stats,
)
from alphamill.task.manage import TaskManager
from alphamill.workflow.experiment import build_tasks, flagship_config, parse_config, run_experiment
from alphamill.workflow.results import ExperimentResults

OLD = "LGBModel learning_rate=0.3"
BASE = "LGBModel learning_rate=0.1"  # the template's own value in the small config


def _raw(am_env, lrs):
    raw = flagship_config(small=True, data=str(am_env["market"]))
    raw["workers"] = 1
    raw["generators"] = {
        "grid": {"model.kwargs.learning_rate": lrs},
        "rolling": {**raw["generators"]["rolling"], "step": 150},
    }
    raw["collect"]["ensemble"] = "average"
    return raw


@pytest.fixture(scope="module")
def grid_run(am_env):
    """A 2-variant x 2-window grid whose pool already holds a failed variant of an earlier run."""
    name = f"sel_{uuid.uuid4().hex[:8]}"
    raw = {**_raw(am_env, [0.05, 0.1]), "experiment": name}
    cfg = parse_config(raw)
    old = build_tasks(parse_config({**_raw(am_env, [0.3]), "experiment": name}))[0]
    old["meta"]["experiment_name"] = name
    with TaskManager(cfg.pool_name, url=am_env["ALPHAMILL_POOL_URL"]) as tm:
        tm.create_task([old])
        tm.fail_task(tm.fetch_task(), "earlier run: out of memory", give_up=True)
    results = run_experiment(cfg, progress=False)
    return {"results": results, "cfg": cfg}


def test_every_variant_of_the_pool_counts_as_a_trial(grid_run):
    sel = grid_run["results"].selection()
    signals = ["LGBModel learning_rate=0.05", BASE, "ensemble"]
    assert sorted(sel.table.index) == sorted(signals)
    assert sel.n_trials == 4  # two trained, one failed earlier, the ensemble
    assert sel.trials[OLD] == {"failed": 1}
    assert sel.trials[BASE] == {"done": 2}
    assert any(OLD in note and "1 failed" in note for note in sel.notes)
    assert sel.baseline == BASE


def test_deflated_sharpe_from_the_stored_backtests(grid_run):
    res = grid_run["results"]
    sel = res.selection()
    excess = {
        c: res._backtests[c]["report"]["excess_return_with_cost"].dropna() for c in sel.table.index
    }
    st = {c: sharpe_stats(excess[c]) for c in excess}
    var = np.var([s.sharpe for s in st.values()], ddof=1)
    for c, row in sel.table.iterrows():
        # the annualised Sharpe ratio is the backtest table's simple information ratio of that series
        ir = res.backtest.loc[(c, "excess_return_with_cost", "information_ratio"), "simple"]
        assert row["sharpe"] == pytest.approx(ir, rel=1e-9)
        assert row["days"] == len(excess[c])
        assert row["psr"] == pytest.approx(
            probabilistic_sharpe_ratio(st[c].sharpe, st[c].n_obs, st[c].skew, st[c].kurtosis)
        )
        assert row["dsr"] == pytest.approx(
            deflated_sharpe_ratio(st[c].sharpe, st[c].n_obs, 4, var, st[c].skew, st[c].kurtosis)
        )
        assert row["dsr"] < row["psr"]  # four trials deflate every signal
    assert list(sel.table["rank"]) == [1, 2, 3]
    assert sel.table["dsr"].is_monotonic_decreasing


def test_pbo_over_the_common_days(grid_run):
    res = grid_run["results"]
    sel = res.selection()
    matrix = pd.DataFrame(
        {c: res._backtests[c]["report"]["excess_return_with_cost"] for c in res.predictions.columns}
    )
    want = probability_of_backtest_overfitting(matrix.dropna(), 16)
    assert sel.pbo.pbo == want.pbo and sel.pbo.n_combinations == 12870
    np.testing.assert_allclose(sel.pbo.logits, want.logits)
    assert sel.table["pbo_picked"].sum() == pytest.approx(1.0)


def test_paired_ic_per_window_against_the_baseline(grid_run):
    res = grid_run["results"]
    sel = res.selection()
    paired = sel.paired
    assert sorted(paired.index) == ["LGBModel learning_rate=0.05", "ensemble"]
    assert (paired["n"] == 2).all()  # two rolling windows
    # a variant's per-window IC is its windows' own IC (test spans do not overlap)
    per_window = res.windows["IC"].unstack("variant")
    v = "LGBModel learning_rate=0.05"
    assert paired.loc[v, "mean"] == pytest.approx(per_window[v].mean())
    assert paired.loc[v, "mean_diff"] == pytest.approx((per_window[v] - per_window[BASE]).mean())
    assert sel.table.loc[BASE, "ic_units"] is pd.NA or math.isnan(sel.table.loc[BASE, "t_p_adj"])
    monthly = res.selection(ic_by="month", correction="bh")
    assert (monthly.paired["n"] >= 10).all() and monthly.ic_by == "month"


def test_cli_report_and_json_show_the_same_ranking(grid_run, tmp_path):
    from rich.console import Console

    from alphamill.cli.run import print_results

    res = grid_run["results"]
    sel = res.selection()
    console = Console(record=True, width=200)
    print_results(console, res)
    text = console.export_text()
    assert "Selection among variants" in text and "trials counted (N): 4" in text and "PBO " in text
    out = res.to_dict()["selection"]
    assert out["trials"] == 4 and out["pbo"] == sel.pbo.pbo and len(out["logits"]) == 12870
    assert [r["signal"] for r in out["table"]] == list(sel.table.index)
    assert [r["dsr"] for r in out["table"]] == pytest.approx(list(sel.table["dsr"]))
    html = res.report(tmp_path / "r.html").read_text()
    assert "Selection among variants" in html and f"PBO {sel.pbo.pbo:.4f}" in html


def test_without_backtest_or_with_one_signal(grid_run):
    res = grid_run["results"]
    bare = ExperimentResults("x", res.preds, res.labels, backtest=None)
    sel = bare.selection()
    assert sel.basis == "IC" and "dsr" not in sel.table and sel.n_trials == 2
    assert any("no backtest" in n for n in sel.notes) and any(
        "no pool rows" in n for n in sel.notes
    )
    assert (
        ExperimentResults("x", res.preds, res.labels, backtest=None, selection=False).selection()
        is None
    )
    one = {k: v for k, v in res.preds.items() if k[1] == "learning_rate=0.05"}
    assert ExperimentResults("x", one, res.labels, backtest=None).selection() is None


def test_a_baseline_that_names_no_variant_is_refused_before_training(am_env):
    name = f"sel_{uuid.uuid4().hex[:8]}"
    raw = {**_raw(am_env, [0.05, 0.1]), "experiment": name}
    raw["collect"]["selection"] = {"baseline": "LGBModel learning_rate=0.5"}
    cfg = parse_config(raw)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, progress=False)
    assert err.value.path == "collect.selection.baseline" and "learning_rate=0.1" in str(err.value)
    with TaskManager(cfg.pool_name, url=am_env["ALPHAMILL_POOL_URL"]) as tm:
        assert tm.task_stat() == {}
