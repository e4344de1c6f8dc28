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


def test_report_file_names_stay_in_the_reports_folder(tmp_path, monkeypatch):
    from alphamill.cli.run import default_report_path, report_file_name

    monkeypatch.setenv("ALPHAMILL_HOME", str(tmp_path / "home"))
    reports = (tmp_path / "home" / "reports").resolve()
    names = ["../../x", "/etc/passwd", "a/b", "a\\b", "..", ".hidden", "x\x00y", "données", "a" * 300]
    files = {report_file_name(n) for n in names}
    assert len(files) == len(names)  # distinct experiments never share a report
    for name in names:
        path = default_report_path(name).resolve()
        assert path.parent == reports and path.suffix == ".html", (name, path)
        assert "/" not in report_file_name(name) and "\x00" not in report_file_name(name)
    assert report_file_name("rolling_lgb_alpha158") == "rolling_lgb_alpha158.html"  # plain names kept


def test_run_with_a_traversing_experiment_name_writes_inside_home(am_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = flagship_config(small=True, data=str(am_env["market"]))
    raw["pool"] = {"name": f"esc_{uuid.uuid4().hex[:8]}"}
    path = _write(tmp_path, raw)
    home = Path(am_env["home"])
    escape = "../../escape_" + uuid.uuid4().hex[:8]
    args = ["run", str(path), "--workers", "1", "--set", "generators.rolling.step=150", "--experiment", escape]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output + str(r.exception)
    report = Path(r.stdout.split("report: ", 1)[1].split()[0]).resolve()
    assert report.is_file() and report.parent == (home / "reports").resolve()
    outside = (home / "reports" / (escape + ".html")).resolve()
    assert not outside.exists() and not list(home.parent.parent.glob("escape_*"))
