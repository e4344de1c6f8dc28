"""Every printed or stored backtest trades a signal at the next close, PortAnaRecord and the
merged backtest of a run agree, and the tables say the timing and annualisation they used."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphamill.backtest import DEFAULT_SIGNAL_LAG, topk_dropout_backtest
from alphamill.data.qlib_bin import write_qlib_bin
from alphamill.errors import ConfigError
from alphamill.workflow.record_temp import PortAnaRecord
from alphamill.workflow.recorder import R
from alphamill.workflow.results import ExperimentResults

N_INST, N_DAYS = 6, 30
DAYS = pd.bdate_range("2021-01-04", periods=N_DAYS)
INSTS = [f"S{i:02d}" for i in range(N_INST)]
NO_COST = {"open_cost": 0.0, "close_cost": 0.0, "min_cost": 0.0}


def _jump_market() -> tuple[pd.DataFrame, pd.Series]:
    """Every day d one instrument (d mod 6) rises 10 % from the close of d to the close of
    d + 1, the others stay flat; the signal dated d ranks exactly that instrument first.

    Traded at the close it is dated (lag 0) the signal catches every jump; traded at the next
    close it buys each instrument right after its jump, and earns nothing."""
    close = np.full((N_DAYS, N_INST), 10.0)
    for d in range(N_DAYS - 1):
        close[d + 1 :, d % N_INST] *= 1.10
    prices = pd.DataFrame(close, index=DAYS, columns=INSTS)
    rows = []
    for d, day in enumerate(DAYS):
        for i, inst in enumerate(INSTS):
            rows.append((day, inst, 1.0 if i == d % N_INST else -((i - d) % N_INST) / 10))
    idx = pd.MultiIndex.from_tuples([r[:2] for r in rows], names=["datetime", "instrument"])
    return prices, pd.Series([r[2] for r in rows], index=idx, name="score")


PRICES, SIGNAL = _jump_market()


def _qlib_dir(root: Path) -> Path:
    """The jump market as a Qlib directory, plus an index SH000300 stored under features/ but
    not listed in instruments/all.txt (Qlib's convention for benchmarks)."""
    long = PRICES.stack().rename("close").to_frame()
    long.index.names = ["datetime", "instrument"]
    for f in ("open", "high", "low"):
        long[f] = long["close"]
    long["volume"] = 1000.0
    out = write_qlib_bin(long[["open", "high", "low", "close", "volume"]], root / "qlib")
    index = 3000 * np.cumprod(1 + 0.01 * np.sin(np.arange(N_DAYS)))
    index[7] = np.nan  # a day without a close: its return and the next are 0, as Qlib fills
    folder = out / "features" / "sh000300"
    folder.mkdir()
    np.concatenate([[0.0], index]).astype("<f4").tofile(folder / "close.day.bin")
    assert "SH000300" not in (out / "instruments" / "all.txt").read_text()
    return out


def _index_returns(qlib: Path) -> pd.Series:
    raw = np.fromfile(qlib / "features" / "sh000300" / "close.day.bin", dtype="<f4")[1:].astype(
        "float64"
    )
    close = pd.Series(raw, index=DAYS)
    return (close / close.shift(1) - 1).fillna(0.0)


def _results(qlib: Path, backtest: dict) -> ExperimentResults:
    """Two windows of the signal, collected as a run collects them."""
    halves = {0: SIGNAL.loc[DAYS[:15]], 1: SIGNAL.loc[DAYS[15:]]}
    preds = {("LinearModel", "", w): p.to_frame("score") for w, p in halves.items()}
    labels = {k: (p["score"] * 0.0).to_frame("LABEL0") for k, p in preds.items()}
    return ExperimentResults("timing", preds, labels, data=str(qlib), backtest=backtest)


def test_the_default_trades_the_next_close_and_earns_nothing_of_the_move_it_saw() -> None:
    assert DEFAULT_SIGNAL_LAG == 1
    same_close = topk_dropout_backtest(SIGNAL, PRICES, topk=1, n_drop=1, signal_lag=0, **NO_COST)
    default = topk_dropout_backtest(SIGNAL, PRICES, topk=1, n_drop=1, **NO_COST)
    # lag 0 buys each jumper at the close before its jump: 95 % invested x 10 % a day
    assert same_close["return"].to_numpy() == pytest.approx(np.full(len(same_close), 0.095))
    # the default: the signal dated d is traded at the close of d + 1, after the jump
    pd.testing.assert_frame_equal(
        default, topk_dropout_backtest(SIGNAL, PRICES, topk=1, n_drop=1, signal_lag=1, **NO_COST)
    )
    assert default.index[0] == DAYS[1]
    assert default["n_holdings"].iloc[0] == 1
    assert default["return"].to_numpy() == pytest.approx(np.zeros(len(default)), abs=1e-12)


def test_the_merged_backtest_trades_the_next_close(tmp_path: Path) -> None:
    qlib = _qlib_dir(tmp_path)
    res = _results(qlib, {"topk": 1, "n_drop": 1, **NO_COST})
    report = res.backtest_report()
    assert report.index[0] == DAYS[1]
    assert report["return"].to_numpy() == pytest.approx(np.zeros(len(report)), abs=1e-6)
    assert res.backtest_settings == {
        "timing": "signals traded at the next close",
        "signal_lag": 1,
        "ann_scaler": 238.0,
    }
    # the lag is a setting: 0 reproduces the optimistic same-close figures, and says so
    optimistic = _results(qlib, {"topk": 1, "n_drop": 1, "signal_lag": 0, **NO_COST})
    assert optimistic.backtest_report()["return"].mean() == pytest.approx(0.095, rel=1e-5)
    assert optimistic.backtest_caption().startswith(
        "top-k dropout; signals traded at the close they were computed from"
    )


def test_merged_backtest_equals_port_ana_record(tmp_path: Path, exp_name: str) -> None:
    """Same merged signal, same settings: the same daily report and the same figures, with a
    benchmark index that Qlib reads from features/ although all.txt does not list it."""
    qlib = _qlib_dir(tmp_path)
    settings = {
        "topk": 2,
        "n_drop": 1,
        "benchmark": "SH000300",
        "limit_threshold": 0.095,
        "open_cost": 0.0005,
        "close_cost": 0.0015,
        "min_cost": 5.0,
        "ann_scaler": 250,
    }
    res = _results(qlib, settings)
    config = {
        "strategy": {
            "class": "TopkDropoutStrategy",
            "kwargs": {"signal": "<PRED>", "topk": 2, "n_drop": 1},
        },
        "backtest": {
            "benchmark": "SH000300",
            "exchange_kwargs": {
                "limit_threshold": 0.095,
                "open_cost": 0.0005,
                "close_cost": 0.0015,
                "min_cost": 5,
            },
        },
    }
    with R.start(experiment_name=exp_name) as rec:
        rec.save_objects(**{"pred.pkl": res.pred})
        PortAnaRecord(rec, config=config, data=str(qlib), ann_scaler=250).generate()
    stored = rec.load_object("portfolio_analysis/report_normal_1day.parquet")
    pd.testing.assert_frame_equal(res.backtest_report(), stored, check_freq=False)
    assert stored.index[0] == DAYS[1]  # the next close
    bench = _index_returns(qlib)
    want = bench.shift(-1).reindex(stored.index)  # row t earns t -> t + 1
    assert stored["bench"].to_numpy() == pytest.approx(want.to_numpy())
    assert (stored["bench"] == 0).sum() >= 2  # the index's missing close, filled as Qlib does
    metrics = rec.list_metrics()
    table = res.backtest.loc[res.headline]
    for series in ("excess_return_without_cost", "excess_return_with_cost"):
        for metric in ("annualized_return", "information_ratio", "max_drawdown"):
            assert table.loc[(series, metric), "simple"] == pytest.approx(
                metrics[f"1day.{series}.{metric}"]
            )
            assert table.loc[(series, metric), "compounded"] == pytest.approx(
                metrics[f"1day.{series}.compounded.{metric}"]
            )
    r = stored["excess_return_with_cost"]
    assert metrics["1day.excess_return_with_cost.annualized_return"] == pytest.approx(
        r.mean() * 250
    )
    tags = rec.list_tags()
    assert tags["alphamill.port_analysis.ann_scaler"] == "250"
    assert tags["alphamill.port_analysis.timing"] == "signals traded at the next close"


def test_port_ana_record_annualises_as_qlib_by_default(tmp_path: Path, exp_name: str) -> None:
    qlib = _qlib_dir(tmp_path)
    with R.start(experiment_name=exp_name) as rec:
        rec.save_objects(**{"pred.pkl": SIGNAL.to_frame("score")})
        PortAnaRecord(
            rec, config={"backtest": {"benchmark": "SH000300"}}, data=str(qlib)
        ).generate()
    report = rec.load_object("portfolio_analysis/report_normal_1day.parquet")
    r = report["excess_return_with_cost"]
    metrics = rec.list_metrics()
    assert metrics["1day.excess_return_with_cost.annualized_return"] == pytest.approx(
        r.mean() * 238
    )
    assert metrics["1day.excess_return_with_cost.information_ratio"] == pytest.approx(
        r.mean() / r.std() * np.sqrt(238)
    )
    assert rec.list_tags()["alphamill.port_analysis.ann_scaler"] == "238"
    with pytest.raises(ConfigError, match="ann_scaler"):
        PortAnaRecord(None, ann_scaler=0)


def test_an_unknown_benchmark_is_named(tmp_path: Path) -> None:
    qlib = _qlib_dir(tmp_path)
    with pytest.raises(ConfigError, match=r"collect\.backtest\.benchmark") as e:
        _results(qlib, {"benchmark": "SH000905"}).compute()
    assert "features/" in str(e.value)


def test_tables_report_and_json_say_timing_and_annualisation(tmp_path: Path) -> None:
    from rich.console import Console

    from alphamill.cli.run import print_results

    qlib = _qlib_dir(tmp_path)
    res = _results(qlib, {"topk": 1, "n_drop": 1, "ann_scaler": 252})
    caption = (
        "top-k dropout; signals traded at the next close; annualised with 252 trading days a year"
    )
    assert res.backtest_caption() == caption
    console = Console(file=io.StringIO(), width=400)
    print_results(console, res)
    assert caption in console.file.getvalue()
    html = res.report(tmp_path / "report.html").read_text()
    assert caption in html
    data = res.to_dict()
    assert data["backtest_settings"] == {
        "timing": "signals traded at the next close",
        "signal_lag": 1,
        "ann_scaler": 252.0,
    }
    got = {(row["signal"], row["series"], row["metric"]): row["simple"] for row in data["backtest"]}
    r = res.backtest_report()["excess_return_with_cost"]
    assert got[(res.headline, "excess_return_with_cost", "annualized_return")] == pytest.approx(
        r.mean() * 252
    )


@pytest.mark.parametrize(
    ("backtest", "field"),
    [
        ({"ann_scaler": 0}, "collect.backtest.ann_scaler"),
        ({"ann_scaler": "daily"}, "collect.backtest.ann_scaler"),
        ({"signal_lag": 2}, "collect.backtest.signal_lag"),
        ({"topk_": 5}, "collect.backtest.topk_"),
    ],
)
def test_bad_backtest_settings_are_refused_before_anything_runs(backtest: dict, field: str) -> None:
    from alphamill.workflow.experiment import flagship_config, parse_config

    raw = flagship_config(small=True)
    raw["collect"] = {"backtest": backtest}
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert e.value.path == field


def test_port_ana_record_checks_timing_and_benchmark_when_built() -> None:
    with pytest.raises(ConfigError) as e:
        PortAnaRecord(None, config={"backtest": {"signal_lag": 2}})
    assert e.value.path == "config.backtest.signal_lag"
    with pytest.raises(ConfigError) as e:
        PortAnaRecord(None, config={"backtest": {"benchmark": 300}})
    assert e.value.path == "config.backtest.benchmark"
    assert PortAnaRecord(None).backtest_kwargs["signal_lag"] == DEFAULT_SIGNAL_LAG
