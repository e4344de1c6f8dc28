"""The pool verbs through click: tables, --json, and clean exit 2 on bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.task.manage import TaskManager

VERBS = ["worker", "wait", "task_stat", "list", "query", "reset", "remove", "prioritize", "create", "doctor"]


@pytest.fixture
def env(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/pool.db"
    runner = CliRunner()

    def run(*args, code=0):
        r = runner.invoke(main, ["-t", pool, "--url", url, *args])
        assert r.exit_code == code, (r.output, r.exception)
        return r

    f = tmp_path / "tasks.yaml"
    f.write_text("- {model: {class: A}, n: 1, meta: {w: 0}}\n- {model: {class: A}, n: 2, meta: {w: 1}}\n")
    return run, url, pool, f, tmp_path


def stat(url, pool):
    with TaskManager(pool, url) as tm:
        return tm.task_stat()


def test_create_query_stat_and_dedupe(env):
    run, url, pool, f, tmp = env
    assert "created 2 new tasks" in run("create", str(f)).output
    r = json.loads(run("create", str(f), "--json").output)
    assert r["new"] == 0 and r["existing"] == 2 and len(r["ids"]) == 2
    jf = tmp / "more.json"
    jf.write_text(json.dumps({"tasks": [{"model": {"class": "A"}, "n": 3}]}))
    assert json.loads(run("create", str(jf), "--dry-run", "--json").output)["new"] == 1
    assert stat(url, pool) == {"waiting": 2}
    run("create", str(jf), "--priority", "7")
    assert json.loads(run("task_stat", "--json").output) == {"waiting": 3}
    table = run("task_stat").output
    assert "waiting" in table and "3" in table
    rows = json.loads(run("query", '{"meta.w": 1}', "--json").output)
    assert [t["def"]["n"] for t in rows] == [2]
    assert len(json.loads(run("query", "--limit", "2", "--json").output)) == 2
    assert "meta" in run("query").output
    pools = json.loads(run("list", "--json").output)
    assert pools["pools"][pool] == {"waiting": 3}


def test_admin_verbs(env):
    run, url, pool, f, _ = env
    run("create", str(f))
    with TaskManager(pool, url) as tm:
        t = tm.fetch_task()
        tm._heartbeat.stop()
    assert "reset 1 tasks" in run("reset").output
    assert stat(url, pool) == {"waiting": 2}
    run("prioritize", t["_id"], "9")
    with TaskManager(pool, url) as tm:
        assert tm.re_query(t["_id"])["priority"] == 9
    run("prioritize", "424242", "1", code=2)
    assert "removed 1 tasks" in run("remove", '{"def.n": 1}').output
    r = run("remove", code=2)
    assert "--all" in r.output and stat(url, pool) == {"waiting": 1}
    assert json.loads(run("remove", "--all", "--json").output) == {"removed": 1}


def test_worker_and_wait(env):
    run, url, pool, f, _ = env
    run("create", str(f))
    r = run("wait", "--timeout", "0.2", "--poll", "0.05", code=1)
    assert "timeout" in r.output
    run("worker", "--func", "tests.task_manager.funcs:noop", "--until-empty", "--lease", "5", "--heartbeat", "1")
    assert json.loads(run("wait", "--json").output) == {"done": 2}
    with TaskManager(pool, url) as tm:
        assert sorted(t["res"]["n"] for t in tm.query()) == [1, 2]


def test_worker_accepts_pool_after_verb(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/p.db"
    with TaskManager(pool, url) as tm:
        tm.create_task([{"n": 1}])
    r = CliRunner().invoke(main, ["worker", "-t", pool, "--url", url, "--until-empty",
                                  "--func", "tests.task_manager.funcs:noop"])
    assert r.exit_code == 0, r.output
    assert stat(url, pool) == {"done": 1}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["query", "{not json"], "malformed JSON"),
        (["query", "[1]"], "JSON object"),
        (["query", '{"bogus": 1}'], "unknown field 'bogus'"),
        (["task_stat", "--query", '{"status": "nope"}'], "unknown status"),
        (["remove", '{"status": {"$regex": "x"}}'], "unsupported operator"),
        (["reset", "--query", "{"], "--query"),
        (["worker", "--func", "no_such_module_q:f"], "not found"),
        (["worker", "--query", "{bad"], "--query"),
        (["create", "missing.yaml"], "does not exist"),
    ],
)
def test_bad_input_exits_2_without_change(env, args, needle):
    run, url, pool, f, _ = env
    run("create", str(f))
    r = run(*args, code=2)
    assert needle in r.output
    assert "Traceback" not in r.output
    assert stat(url, pool) == {"waiting": 2}


def test_bad_files(env):
    run, url, pool, _, tmp = env
    bad = tmp / "bad.yaml"
    bad.write_text("- {a: 1\n- b: [\n")
    r = run("create", str(bad), code=2)
    assert "bad.yaml" in r.output and "malformed YAML at line" in r.output
    badj = tmp / "bad.json"
    badj.write_text('[{"a": 1,}]')
    assert "malformed JSON" in run("create", str(badj), code=2).output
    scalar = tmp / "s.yaml"
    scalar.write_text("42\n")
    assert "list of task definitions" in run("create", str(scalar), code=2).output
    mixed = tmp / "m.yaml"
    mixed.write_text("- {a: 1}\n- 3\n")
    assert "task [1]" in run("create", str(mixed), code=2).output
    assert stat(url, pool) == {}


def test_missing_pool_and_redacted_url(tmp_path):
    runner = CliRunner()
    for verb in ("task_stat", "wait", "query", "reset", "remove", "create", "worker"):
        r = runner.invoke(main, [verb] + (["x.yaml"] if verb == "create" else []))
        assert r.exit_code == 2 and "-t/--task-pool" in r.output, (verb, r.output)
    r = runner.invoke(main, ["-t", "p", "--url", "weird://bob:hunter2@host/db", "task_stat"])
    assert r.exit_code == 2 and "hunter2" not in r.output and "***" in r.output
    r = runner.invoke(main, ["-t", "bad;name", "--url", f"sqlite:///{tmp_path}/x.db", "task_stat"])
    assert r.exit_code == 2 and "invalid pool name" in r.output


def test_doctor(tmp_path, pool):
    url = f"sqlite:///{tmp_path}/d.db"
    r = CliRunner().invoke(main, ["--url", url, "doctor", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["backend"] == "sqlite" and report["ok"] is True
    r = CliRunner().invoke(main, ["-t", pool, "--url", url, "doctor"])
    assert r.exit_code == 0 and "journal_mode" in r.output and "pool_exists" in r.output


@pytest.mark.parametrize("verb", VERBS)
def test_help_on_every_verb(verb):
    r = CliRunner().invoke(main, [verb, "-h"])
    assert r.exit_code == 0 and "Usage" in r.output
