"""The pool demo runs end to end with 2 worker processes and leaves every task done."""

from __future__ import annotations

from click.testing import CliRunner

from alphamill.cli import main
from alphamill.cli.demo import demo_cmd, demo_tasks
from alphamill.task.demo_funcs import demo_train
from alphamill.task.manage import TaskManager


def test_demo_tasks_carry_meta_and_differ():
    tasks = demo_tasks()
    assert len(tasks) == 21
    assert {t["meta"]["rolling"]["index"] for t in tasks} == set(range(7))
    assert tasks[-1]["dataset"]["kwargs"]["segments"]["test"][1] == "2020-12-31"  # clipped
    res = demo_train(tasks[0])
    assert 0.1 < res["ic"] < 0.4 and res["test_days"] > 0


def _pool_demo_args() -> list[str]:
    """The pool demo is ``demo`` until the flagship experiment takes the verb over, then ``--pool-only``."""
    return ["demo", "--pool-only"] if any(p.name == "pool_only" for p in demo_cmd.params) else ["demo"]


def test_demo_command(tmp_path):
    url = f"sqlite:///{tmp_path}/pool.db"
    r = CliRunner().invoke(main, ["--url", url, *_pool_demo_args(), "-j", "2"])
    assert r.exit_code == 0, r.output
    assert "test IC per rolling window" in r.output
    with TaskManager("demo", url) as tm:
        assert tm.task_stat() == {"done": 21}
        assert len({t["worker_pid"] for t in tm.query()}) >= 1
    r = CliRunner().invoke(main, ["--url", url, *_pool_demo_args(), "-j", "1"])  # rerun starts afresh
    assert r.exit_code == 0 and "21 new" in r.output
