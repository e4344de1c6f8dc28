"""``alphamill run`` and ``alphamill demo --small`` end to end; bad configs exit 2 untouched."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.task.manage import TaskManager
from alphamill.workflow.experiment import flagship_config


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_happy_path_then_rerun(am_env, tmp_path):
    raw = flagship_config(small=True, data=str(am_env["market"]))
    name = f"cli_{uuid.uuid4().hex[:8]}"
    raw["experiment"] = name
    path = _write(tmp_path, raw)
    report = tmp_path / "out" / "report.html"
    args = ["run", str(path), "--workers", "1", "--set", "generators.rolling.step=150", "--report", str(report),
            "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output + str(r.exception)
    out = json.loads(r.stdout)
    assert out["experiment"] == name and len(out["windows"]) == 2
    assert {w["window"] for w in out["windows"]} == {0, 1}
    assert out["summary"][0]["signal"] == "LGBModel" and out["summary"][0]["days"] > 100
    assert out["backtest"] and {"simple", "compounded"} <= set(out["backtest"][0])
    assert report.is_file() and out["report"] == str(report)
    with TaskManager(name) as tm:  # pool name = experiment name
        assert tm.task_stat() == {"done": 2}
    # a rerun finds every task done: nothing is trained, the same numbers come back
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 0, r2.output
    assert "2 given, 0 new in the pool, 0 trained now" in r2.stderr
    assert json.loads(r2.stdout)["summary"] == out["summary"]


@pytest.mark.parametrize(
    "sets, field",
    [
        (["generators.rolling.stepp=3"], "generators.rolling.stepp"),
        (["task.model.kwargs.loss=hinge"], "loss"),
        (["collect.ensemble=median"], "collect.ensemble"),
        (["task.model.class=NoSuchModel"], "task.model"),
    ],
)
def test_bad_config_exits_2_and_writes_nothing(am_env, tmp_path, sets, field):
    raw = flagship_config(small=True, data=str(am_env["market"]))
    pool_db = tmp_path / "pool.db"
    args = ["--url", f"sqlite:///{pool_db}", "run", str(_write(tmp_path, raw))]
    for s in sets:
        args += ["--set", s]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert field in r.stderr and r.stderr.startswith("error: ")
    assert not pool_db.exists() or not sqlite3.connect(pool_db).execute(
        "select name from sqlite_master where type='table'").fetchall()


def test_missing_config_file(tmp_path):
    r = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "CONFIG" in r.stderr


def test_demo_small(demo_run):
    out = demo_run["output"]
    for text in ("Per window", "Merged signal", "Rank ICIR", "Backtest", f"report: {demo_run['report']}"):
        assert text in out
    assert demo_run["report"].is_file()
    with TaskManager(demo_run["pool"]) as tm:
        assert tm.task_stat() == {"done": 3}
