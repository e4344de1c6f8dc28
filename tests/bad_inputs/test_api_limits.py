"""The same bounds through the Python API: each bad value is one AlphamillError naming it.

The CLI corpus checks the commands; here the entry points a script calls directly
(``TaskManager``, ``create_task``, ``prioritize``, ``wait``, ``query``, ``run_worker``,
the trainers) must refuse the same inputs before anything is stored or started.
"""

from __future__ import annotations

import math
import time

import pytest

from alphamill.errors import AlphamillError, ConfigError, QueryError
from alphamill.task.manage import TaskManager

NAN, INF = math.nan, math.inf


@pytest.fixture
def tm(tmp_path):
    with TaskManager("p", f"sqlite:///{tmp_path}/pool.db") as manager:
        manager.create_task([{"n": 1}])
        yield manager


def test_task_manager_settings(tmp_path):
    url = f"sqlite:///{tmp_path}/pool.db"
    for kwargs, field in [
        ({"lease_seconds": NAN}, "lease_seconds"),
        ({"lease_seconds": INF}, "lease_seconds"),
        ({"heartbeat_interval": NAN}, "heartbeat_interval"),
        ({"retry_backoff": INF}, "retry_backoff"),
        ({"max_attempts": 2**40}, "max_attempts"),
    ]:
        with pytest.raises(ConfigError, match=field):
            TaskManager("p", url, **kwargs)


@pytest.mark.parametrize("name", ["p\n", "p\r", "p\x00", " p", "p "])
def test_pool_names_are_matched_whole(tmp_path, name):
    with pytest.raises(AlphamillError, match="invalid pool name"):
        TaskManager(name, f"sqlite:///{tmp_path}/pool.db")


def test_create_task_refuses_before_storing(tm):
    with pytest.raises(ConfigError, match="priority"):
        tm.create_task([{"n": 2}], priority=2**70)
    with pytest.raises(ConfigError, match="priority"):
        tm.create_task([{"n": 2}], priority=2**31)
    with pytest.raises(ConfigError, match=r"task_def_l\[1\]\.s"):
        tm.create_task([{"n": 2}, {"s": "\udfff"}])
    with pytest.raises(ConfigError, match=r"task_def_l\[0\]\.meta\.k"):
        tm.create_task([{"n": 2, "meta": {"k": 10**30}}])
    deep: dict = {}
    node = deep
    for _ in range(100_000):  # built without recursion; refused without recursion
        node["a"] = node = {}
    with pytest.raises(ConfigError, match="deeper than 64"):
        tm.create_task([deep])
    assert tm.task_stat() == {"waiting": 1}


def test_prioritize_and_query_refuse_out_of_range_integers(tm):
    (task,) = tm.query()
    with pytest.raises(ConfigError, match="priority"):
        tm.prioritize(task["_id"], 2**70)
    with pytest.raises(ConfigError, match="priority"):
        tm.prioritize(task["_id"], -(2**31) - 1)
    for bad in (
        {"priority": 10**25},
        {"def.n": {"$in": [1, 2**64]}},
        {"def.n": NAN},
        {"def.n": -INF},
    ):
        with pytest.raises(QueryError):
            list(tm.query(bad))
        with pytest.raises(QueryError):
            tm.task_stat(bad)
    with pytest.raises(AlphamillError, match="limit"):
        tm.fetch_tasks(limit=2**70)
    deep: dict = {"status": "waiting"}
    for _ in range(10_000):
        deep = {"$and": [deep]}
    with pytest.raises(QueryError, match="nested deeper"):
        tm.task_stat(deep)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"poll_interval": NAN}, "poll_interval"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"timeout": NAN}, "timeout"),
        ({"timeout": INF}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"poll_interval": 1e300}, "poll_interval"),
    ],
)
@pytest.mark.timeout(60)  # the old code spun (NaN poll) or never returned (NaN timeout)
def test_wait_refuses_nan_instead_of_spinning_or_hanging(tm, kwargs, field):
    started = time.monotonic()
    with pytest.raises(ConfigError, match=field):
        tm.wait(progress=False, **kwargs)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"jobs": 10**6}, "jobs"),
        ({"jobs": 100_000}, "jobs"),
        ({"grace": NAN}, "grace"),
        ({"grace": INF}, "grace"),
        ({"retry_backoff": NAN}, "retry_backoff"),
        ({"lease_seconds": NAN}, "lease_seconds"),
    ],
)
def test_run_worker_refuses_before_starting_anything(tmp_path, kwargs, field):
    from alphamill.task.worker import run_worker

    with pytest.raises(ConfigError, match=field):
        run_worker("p", f"sqlite:///{tmp_path}/pool.db", until_empty=True, **kwargs)


def test_trainers_cap_local_workers():
    from alphamill.trainer import TrainerRM

    with pytest.raises(ConfigError, match="n_jobs"):
        TrainerRM("exp", "p", n_jobs=100_000)
