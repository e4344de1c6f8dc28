"""`alphamill online ...` end to end on the small demo market, including killed and
concurrent routines in real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from alphamill.cli import main
from tests.online.conftest import small_template

BEGIN = "2012-01-03"
DAY = "2012-06-29"  # past the second window's first test day: the routine trains window 1


def write_config(tmp_path, market, name) -> str:
    raw = {
        "experiment": name,
        "task": small_template(market),
        "generators": {"rolling": {"step": 100, "rtype": "sliding", "trunc_days": 2}},
        "online": {"name": name, "begin_time": BEGIN},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def cli(*args):
    r = CliRunner().invoke(main, list(args))
    return r


def init_pool(tmp_path, am_env):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    pool, name = f"on_{tag}", f"cli_{tag}"
    r = cli("online", "--pool", pool, "init", write_config(tmp_path, am_env["market"], name))
    assert r.exit_code == 0, r.output + str(r.exception)
    return pool, name


def state_of(pool):
    from alphamill.cli.online import build_manager
    from alphamill.online.state import open_state_store

    store = open_state_store(pool)
    raw = store.get_rows("config")["current"]
    mgr = build_manager(raw, pool, None)
    st = mgr.strategies[0].state()
    return {
        "online": sorted(r["window"] for r in st.online),
        "trained": sorted(r["window"] for r in st.trained),
        "actions": [(h["action"], h["cur_time"], h["windows"]) for h in mgr.store.history()],
        "signal": mgr.get_signals(),
        "watermark": mgr.store.get_watermark("signal"),
    }


def assert_same_state(a, b):
    assert {k: v for k, v in a.items() if k != "signal"} == {k: v for k, v in b.items() if k != "signal"}
    pd.testing.assert_frame_equal(a["signal"], b["signal"])


def run_proc(pool, *args):
    return subprocess.Popen([sys.executable, "-c", "from alphamill.cli import main; main()", "online", "--pool", pool, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_init_routine_status_history_signal(tmp_path, am_env):  # noqa: F811
    pool, name = init_pool(tmp_path, am_env)
    r = cli("online", "--pool", pool, "routine", "--date", DAY, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["trained"] == {name: 1} and summary["switched"] == [name]
    r = cli("online", "--pool", pool, "routine", "--date", DAY, "--json")
    again = json.loads(r.output)
    assert again["trained"] == {name: 0} and again["signal_dates"] == 0 and again["switched"] == []
    r = cli("online", "--pool", pool, "status", "--json")
    status = json.loads(r.output)
    assert status["last_signal"] == DAY
    (s,) = status["strategies"]
    assert [o["window"] for o in s["online"]] == [1] and s["trained"] == 2 and s["next_retrain"]
    r = cli("online", "--pool", pool, "history")
    assert r.exit_code == 0 and "first_train" in r.output and "switch" in r.output
    r = cli("online", "--pool", pool, "signal", "--date", DAY, "--json", "--topk", "5")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["trade_date"] == "2012-07-02" and out["topk"] == 5
    assert out["models"] == {name: [s["online"][0]["run_id"]]}
    scores = [row["score"] for row in out["signal"]]
    assert scores == sorted(scores, reverse=True) and len(out["portfolio"]) == 5
    assert [p["instrument"] for p in out["portfolio"]] == [row["instrument"] for row in out["signal"][:5]]
    assert abs(sum(p["weight"] for p in out["portfolio"]) - 1) < 1e-12
    r = cli("online", "--pool", pool, "signal", "--date", DAY, "--topk", "3")
    assert r.exit_code == 0 and "target portfolio for 2012-07-02" in r.output


@pytest.mark.parametrize("args, message", [
    (["online", "--pool", "never_initialised", "status"], "not initialised"),
    (["online", "--pool", "1bad", "status"], "pool name"),
    (["online", "init", "/nonexistent.yaml"], "does not exist"),
])
def test_errors_exit_2(args, message, am_env):  # noqa: F811
    r = cli(*args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_signal_errors(tmp_path, am_env):  # noqa: F811
    pool, _ = init_pool(tmp_path, am_env)
    r = cli("online", "--pool", pool, "signal", "--date", "2012-03-01")
    assert r.exit_code == 2 and "no signal stored for 2012-03-01" in r.output
    r = cli("online", "--pool", pool, "signal", "--date", "notadate")
    assert r.exit_code == 2 and "--date" in r.output
    r = cli("online", "--pool", pool, "routine", "--date", "2009-01-01")
    assert r.exit_code == 2 and "before" in r.output
    other = write_config(tmp_path, am_env["market"], "different")
    r = cli("online", "--pool", pool, "init", other)
    assert r.exit_code == 2 and "another config" in r.output


def test_busy_routine_exits_with_message(tmp_path, am_env):  # noqa: F811
    import socket

    from alphamill.online.state import open_state_store

    pool, _ = init_pool(tmp_path, am_env)
    store = open_state_store(pool)
    assert store._try_lock("routine", "someone-else", socket.gethostname(), os.getpid(), 600)
    r = cli("online", "--pool", pool, "routine", "--date", DAY)
    assert r.exit_code == 2 and "another routine is running" in r.output
    store.release_lock("routine", owner="someone-else")


def test_killed_routine_rerun_matches_uninterrupted(tmp_path, am_env):  # noqa: F811
    from alphamill.online.state import open_state_store
    from alphamill.workflow.recorder import R

    ref_pool, _ = init_pool(tmp_path, am_env)
    assert cli("online", "--pool", ref_pool, "routine", "--date", DAY).exit_code == 0
    pool, name = init_pool(tmp_path, am_env)
    store = open_state_store(pool)
    exp = R.get_exp(experiment_name=name, create=False)
    proc = run_proc(pool, "routine", "--date", DAY)
    deadline = time.monotonic() + 120
    while not exp.list_recorders("RUNNING") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the routine is training window 1
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the routine finished before it could be killed"
    assert store.lock_holder("routine") is not None  # the dead routine's lock is still there
    r = cli("online", "--pool", pool, "routine", "--date", DAY)
    assert r.exit_code == 0, r.output
    assert_same_state(state_of(pool), state_of(ref_pool))
    assert len(exp.list_recorders("RUNNING")) == 1  # the killed run is left out of the state


def test_two_routines_at_once_train_once(tmp_path, am_env):  # noqa: F811
    from alphamill.workflow.recorder import R

    pool, name = init_pool(tmp_path, am_env)
    procs = [run_proc(pool, "routine", "--date", DAY, "--wait", "120", "--json") for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trained = sorted(sum(json.loads(o[0])["trained"].values()) for o in outs)
    assert trained == [0, 1]
    runs = R.get_exp(experiment_name=name, create=False).list_recorders("FINISHED")
    assert len(runs) == 2  # window 0 at init, window 1 once
    assert state_of(pool)["trained"] == [0, 1]
