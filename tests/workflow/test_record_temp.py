"""SignalRecord -> SigAnaRecord -> PortAnaRecord end to end with a fake model and dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphamill.backtest import topk_dropout_backtest
from alphamill.errors import ConfigError
from alphamill.evaluate import (
    calc_ic,
    calc_long_short_return,
    ic_summary,
    long_short_returns,
    risk_analysis,
)
from alphamill.workflow.record_temp import (
    DATA_TAG,
    PortAnaRecord,
    RecordTemp,
    SigAnaRecord,
    SignalRecord,
)
from alphamill.workflow.recorder import ArtifactNotFound, R

N_INST, N_DAYS = 12, 40
DAYS = pd.bdate_range("2022-01-03", periods=N_DAYS)
INSTS = [f"S{i:02d}" for i in range(N_INST)]


def _market() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rets = rng.normal(0.0005, 0.02, (N_DAYS, N_INST))
    close = 10 * np.exp(np.cumsum(rets, axis=0))
    return pd.DataFrame(close, index=DAYS, columns=INSTS)


CLOSE = _market()


class FakeHandler:
    def __init__(self, data: str | None):
        self.data_spec = data


class FakeDataset:
    """Test segment = the last 25 days; the raw label is Qlib's Ref($close,-2)/Ref($close,-1)-1."""

    def __init__(self, data: str | None = None):
        label = (CLOSE.shift(-2) / CLOSE.shift(-1) - 1).stack()
        label.index.names = ["datetime", "instrument"]
        self.label = label.loc[DAYS[15] :].to_frame("LABEL0")
        self.handler = FakeHandler(data)

    def prepare(self, segments: str, col_set: str = "feature", data_key: str = "infer"):
        assert segments == "test" and col_set == "label" and data_key == "raw"
        return self.label


class FakeModel:
    """Predicts the label plus noise (so the IC is positive but not 1)."""

    def predict(self, dataset: FakeDataset, segment: str = "test") -> pd.Series:
        rng = np.random.default_rng(3)
        lab = dataset.label["LABEL0"]
        noise = rng.normal(0, 0.02, len(lab))
        return pd.Series(lab.fillna(0).to_numpy() + noise, index=lab.index, name="score")


def _long_prices() -> pd.DataFrame:
    long = CLOSE.stack().rename("close").to_frame()
    long.index.names = ["datetime", "instrument"]
    long["volume"] = 1000.0
    return long


QLIB_CONFIG = {
    "strategy": {
        "class": "TopkDropoutStrategy",
        "module_path": "qlib.contrib.strategy",
        "kwargs": {"signal": "<PRED>", "topk": 4, "n_drop": 1},
    },
    "backtest": {
        "start_time": None,
        "end_time": None,
        "account": 100000000,
        "benchmark": None,
        "exchange_kwargs": {
            "limit_threshold": 0.095,
            "deal_price": "close",
            "open_cost": 0.0005,
            "close_cost": 0.0015,
            "min_cost": 5,
        },
    },
}


def test_records_end_to_end(exp_name: str) -> None:
    model, dataset = FakeModel(), FakeDataset()
    with R.start(experiment_name=exp_name) as rec:
        SignalRecord(model, dataset, rec).generate()
        SigAnaRecord(rec, ana_long_short=True).generate()
        PortAnaRecord(rec, config=QLIB_CONFIG, data=_long_prices()).generate()
    assert rec.status == "FINISHED"
    arts = set(rec.list_artifacts())
    assert {
        "pred.parquet",
        "label.parquet",
        "sig_analysis/ic.parquet",
        "sig_analysis/ric.parquet",
        "sig_analysis/long_short_r.parquet",
        "portfolio_analysis/report_normal_1day.parquet",
        "portfolio_analysis/port_analysis_1day.parquet",
    } <= arts
    assert not any(a.endswith(".pkl") for a in arts)

    pred = rec.load_object("pred.pkl")
    label = rec.load_object("label.pkl")
    assert list(pred.columns) == ["score"] and list(pred.index.names) == ["datetime", "instrument"]
    pd.testing.assert_frame_equal(label, dataset.label)
    pd.testing.assert_series_equal(pred["score"], model.predict(dataset), check_names=False)

    ic, ric = calc_ic(pred["score"], label["LABEL0"])
    metrics = rec.list_metrics()
    for key, value in ic_summary(ic, ric).items():
        assert metrics[key] == pytest.approx(value)
    assert metrics["IC"] > 0.3  # the fake model is informative
    pd.testing.assert_series_equal(rec.load_object("sig_analysis/ic.pkl"), ic.rename("ic"))
    # Qlib's names mean Qlib's figures (annualised with SigAnaRecord's 252): "Long-Avg" is the
    # plain average label return of each day; alphamill's top-minus-average has its own name
    lab = label["LABEL0"]
    avg = lab.groupby(level="datetime").mean()
    assert metrics["Long-Avg Ann Return"] == pytest.approx(avg.mean() * 252)
    assert metrics["Long-Avg Ann Sharpe"] == pytest.approx(avg.mean() / avg.std() * np.sqrt(252))
    ls, qlib_avg = calc_long_short_return(pred["score"], lab)
    pd.testing.assert_series_equal(qlib_avg, avg, check_names=False)
    assert metrics["Long-Short Ann Return"] == pytest.approx(ls.mean() * 252)
    assert metrics["Long-Short Ann Sharpe"] == pytest.approx(ls.mean() / ls.std() * np.sqrt(252))
    top = long_short_returns(pred["score"], lab)["long"]
    assert metrics["Long-Minus-Avg Ann Return"] == pytest.approx((top - avg).mean() * 252)
    assert metrics["Long-Minus-Avg Ann Return"] != pytest.approx(metrics["Long-Avg Ann Return"])
    stored_avg = rec.load_object("sig_analysis/long_avg_r.parquet")
    np.testing.assert_allclose(stored_avg.to_numpy().ravel(), avg.to_numpy())
    assert "sig_analysis/long_minus_avg_r.parquet" in arts
    assert rec.list_tags()["alphamill.sig_analysis.ann_scaler"] == "252"

    report = rec.load_object("portfolio_analysis/report_normal_1day.pkl")
    expected = topk_dropout_backtest(
        pred, CLOSE, topk=4, n_drop=1, account=1e8, limit_threshold=0.095, signal_lag=1
    )
    pd.testing.assert_frame_equal(report, expected, check_freq=False)
    # predictions reach the last day of the prices: that day has no next return, it is dropped
    assert pred.index.get_level_values(0).max() == DAYS[-1]
    assert report.index[-1] == DAYS[-2]
    ana = rec.load_object("portfolio_analysis/port_analysis_1day.pkl")
    assert list(ana.columns) == ["risk", "risk_compounded"]
    # annualised as Qlib's PortAnaRecord does for daily returns: 238 trading days
    simple = risk_analysis(report["excess_return_with_cost"], N=238)["risk"]
    compounded = risk_analysis(report["excess_return_with_cost"], N=238, mode="product")["risk"]
    for m in ("annualized_return", "information_ratio", "max_drawdown"):
        assert metrics[f"1day.excess_return_with_cost.{m}"] == pytest.approx(simple[m])
        assert metrics[f"1day.excess_return_with_cost.compounded.{m}"] == pytest.approx(
            compounded[m]
        )
        assert ana.loc[("excess_return_with_cost", m), "risk"] == pytest.approx(simple[m])
    assert "1day.excess_return_without_cost.annualized_return" in metrics


def test_port_ana_defaults_scaler_and_last_day(exp_name: str) -> None:
    dataset = FakeDataset()
    # predictions up to the last day of the prices: that day is dropped, not an error
    pred = pd.DataFrame(
        {"score": np.arange(N_INST * 10, dtype=float)},
        index=pd.MultiIndex.from_product([DAYS[-10:], INSTS], names=["datetime", "instrument"]),
    )
    with R.start(experiment_name=exp_name) as rec:
        rec.save_objects(**{"pred.pkl": pred, "label.pkl": dataset.label})
        PortAnaRecord(rec, data=CLOSE, ann_scaler=12).generate()
    report = rec.load_object("portfolio_analysis/report_normal_1day.parquet")
    assert list(report.index) == list(DAYS[-9:-1])
    # defaults: topk 50, n_drop 5, costs..., Qlib's timing (signal traded the next day)
    expected = topk_dropout_backtest(pred, CLOSE, signal_lag=1)
    pd.testing.assert_frame_equal(report, expected, check_freq=False)
    r = report["excess_return_without_cost"]
    assert rec.list_metrics()["1day.excess_return_without_cost.annualized_return"] == (
        pytest.approx(r.mean() * 12)
    )


def test_port_ana_reads_prices_from_the_data_layer(exp_name: str, tmp_path: Path) -> None:
    folder = tmp_path / "market"
    folder.mkdir()
    for inst in INSTS:
        c = CLOSE[inst]
        pd.DataFrame(
            {
                "date": DAYS.strftime("%Y-%m-%d"),
                "open": c.values,
                "high": c.values,
                "low": c.values,
                "close": c.values,
                "volume": 1000.0,
            }
        ).to_csv(folder / f"{inst}.csv", index=False)
    model, dataset = FakeModel(), FakeDataset(data=str(folder))
    config = {"strategy": {"kwargs": {"topk": 3, "n_drop": 1}}}
    with R.start(experiment_name=exp_name) as rec:
        SignalRecord(model, dataset, rec).generate()
        assert rec.list_tags()[DATA_TAG] == str(folder)
        PortAnaRecord(rec, config=config).generate()  # prices found through the tag
    report = rec.load_object("portfolio_analysis/report_normal_1day.parquet")
    pred = rec.load_object("pred.pkl")
    expected = topk_dropout_backtest(
        pred, CLOSE.astype(np.float32), topk=3, n_drop=1, signal_lag=1
    )
    pd.testing.assert_frame_equal(report, expected, check_freq=False)


def test_bad_configs_and_missing_parents(exp_name: str) -> None:
    with pytest.raises(ConfigError, match="TopkDropoutStrategy"):
        PortAnaRecord(None, config={"strategy": {"class": "WeightStrategy"}})
    with pytest.raises(ConfigError, match="config.strategy.kwargs.foo"):
        PortAnaRecord(None, config={"strategy": {"kwargs": {"foo": 1}}})
    with pytest.raises(ConfigError, match="hold_thresh"):
        PortAnaRecord(None, config={"strategy": {"kwargs": {"hold_thresh": 3}}})
    with pytest.raises(ConfigError, match="exchange_kwargs.bad"):
        PortAnaRecord(None, config={"backtest": {"exchange_kwargs": {"bad": 1}}})
    with pytest.raises(ConfigError, match="daily"):
        PortAnaRecord(None, risk_analysis_freq=["week"])
    with pytest.raises(ConfigError, match="no recorder"):
        _ = SigAnaRecord().recorder
    with pytest.raises(ConfigError, match="model"):
        SignalRecord(None, None, None).generate()
    with R.start(experiment_name=exp_name) as rec:
        with pytest.raises(ArtifactNotFound, match=rec.id):
            SigAnaRecord(rec).generate()
        with pytest.raises(ArtifactNotFound, match="pred"):
            PortAnaRecord(rec, data=CLOSE).generate()


def test_load_falls_back_to_parent_and_skip_existing(exp_name: str) -> None:
    model, dataset = FakeModel(), FakeDataset()
    with R.start(experiment_name=exp_name) as rec:
        SignalRecord(model, dataset, rec).generate()
        sar = SigAnaRecord(rec, skip_existing=True)
        assert sar.load("pred.pkl").shape[1] == 1  # not under sig_analysis/: parent's
        with pytest.raises(ArtifactNotFound):
            sar.load("pred.pkl", parents=False)
        sar.generate()
        first = rec.list_metrics()["IC"]
        rec.log_metrics(IC=99.0)
        sar.generate()  # artifacts exist: nothing recomputed
        assert rec.list_metrics()["IC"] == 99.0 != first
        sar.check(include_self=True)
    assert (
        RecordTemp.get_path("x") == "x" and SigAnaRecord.get_path("ic.pkl") == "sig_analysis/ic.pkl"
    )
