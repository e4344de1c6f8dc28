"""Injection through queries, pool names and task fields is harmless on every backend.

Every SQL statement is parameterised and every name that must be part of a statement (pool,
JSON path component) is validated against a strict pattern; on MongoDB, query operators come
only from the parsed query, never from stored data or values. Runs on memory, SQLite,
PostgreSQL and mongomock (the ``backend`` fixture of the pool suite).
"""

from __future__ import annotations

import pytest

from alphamill.errors import AlphamillError, PoolError, QueryError
from alphamill.task.backends.base import validate_pool_name
from alphamill.task.manage import TaskManager
from alphamill.task.query import parse_query

NASTY = [
    "x' OR '1'='1",
    "'; DROP TABLE tasks; --",
    '"; DROP TABLE tasks; --',
    "') OR 1=1 --",
    "%",
    "_",
    "\\",
    "$where",
    "{\"$gt\": \"\"}",
    "1; SELECT pg_sleep(5)",
    "' || (SELECT sqlite_version()) || '",
    "данные ' OR 1=1 --",
]

NASTY_KEYS = ["a'b", 'a"b', "a;b", "$where", "$gt", "a.b", "a b", "-- c", "%", ""]


@pytest.fixture
def tm(backend, pool_name):
    with TaskManager(pool_name, backend=backend) as tm:
        tm.create_task([{"n": i, "name": f"plain{i}"} for i in range(5)])
        tm.create_task([{"n": 100 + i, "name": v} for i, v in enumerate(NASTY)])
        yield tm


def test_values_are_data_never_code(tm):
    for i, value in enumerate(NASTY):
        hits = list(tm.query({"def.name": value}))
        assert [t["def"]["n"] for t in hits] == [100 + i], value  # exactly the one task, by value
        assert tm.task_stat({"def.name": value}) == {"waiting": 1}
        assert tm.task_stat({"def.name": {"$in": [value, "none"]}}) == {"waiting": 1}
        assert tm.task_stat({"def.name": {"$ne": value}}) == {"waiting": 5 + len(NASTY) - 1}
        assert tm.task_stat({"hash": value}) == {}
        assert tm.task_stat({"_id": value}) == {}
    assert tm.task_stat() == {"waiting": 5 + len(NASTY)}  # nothing dropped or altered


def test_wildcards_are_not_patterns(tm):
    assert tm.task_stat({"def.name": "%"}) == {"waiting": 1}
    assert tm.task_stat({"def.name": {"$gt": "%"}, "def.n": {"$lt": 5}}) == {"waiting": 5}
    assert tm.task_stat({"def.name": "plain_"}) == {}


def test_removing_by_a_nasty_value_removes_only_that_task(tm):
    assert tm.remove({"def.name": "'; DROP TABLE tasks; --"}) == 1
    assert tm.task_stat() == {"waiting": 4 + len(NASTY)}
    assert tm.reset_status({"def.name": "x' OR '1'='1"}, "done") == 1
    assert tm.task_stat({"status": "done"}) == {"done": 1}


def test_nasty_keys_round_trip_as_data(tm):
    definition = {"n": 999, "fields": {k: f"v{i}" for i, k in enumerate(NASTY_KEYS)}, "$where": "sleep(1000)"}
    (tid,) = tm.create_task([definition])
    assert tm.re_query(tid)["def"] == definition
    task = tm.fetch_task({"def.n": 999})
    tm.commit_task_res(task, {"$set": {"status": "done"}, "a.b": 1, "$where": "1"})
    got = tm.re_query(tid)
    assert got["res"] == {"$set": {"status": "done"}, "a.b": 1, "$where": "1"}
    assert got["def"] == definition
    assert tm.task_stat() == {"waiting": 5 + len(NASTY), "done": 1}


@pytest.mark.parametrize(
    "query",
    [
        {"$where": "this.n > 0"},
        {"$expr": {"$gt": ["$n", 0]}},
        {"def.n": {"$where": "1"}},
        {"def.n": {"$regex": ".*"}},
        {"def.n": {"$function": {"body": "return true", "args": [], "lang": "js"}}},
        {"def.name": {"$eq": {"$ne": None}}},
        {"def.name": {"$in": [{"$gt": ""}]}},
        {"def.name": {"$gt": {"$gt": ""}}},
        {"def.a'; DROP TABLE tasks; --": 1},
        {"def.a\") OR 1=1 --": 1},
        {"def.$where": 1},
        {"def..n": 1},
        {"meta.x y": 1},
        {"status": "waiting' OR '1'='1"},
        {"priority": {"$gt": "0 OR 1=1"}, "$comment": "x"},
    ],
)
def test_operator_and_path_injection_is_refused(tm, query):
    with pytest.raises(QueryError):
        tm.task_stat(query)
    assert tm.task_stat() == {"waiting": 5 + len(NASTY)}


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "p; DROP TABLE tasks", "p' OR '1'='1", 'p"', "p--", "tasks WHERE 1=1", "",
     "p\x00", "pööl", "p" * 64, "1p", "p.q", "p-q", None, 5],
)
def test_pool_names_are_validated_before_any_statement(backend, name):
    with pytest.raises(PoolError, match="invalid pool name"):
        validate_pool_name(name)
    with pytest.raises(PoolError, match="invalid pool name"):
        backend.count_tasks(name, parse_query(None))
    with pytest.raises(PoolError, match="invalid pool name"):
        backend.ensure_pool(name)
    with pytest.raises(AlphamillError):
        TaskManager(name, backend=backend)


def test_ids_are_parameters(tm):
    for bad in ["1 OR 1=1", "1; DELETE FROM tasks", "' OR ''='", "000000000000000000000000", "-1"]:
        with pytest.raises(PoolError, match="no task"):
            tm.re_query(bad)
        with pytest.raises(PoolError, match="no task"):
            tm.prioritize(bad, 5)
    assert tm.task_stat() == {"waiting": 5 + len(NASTY)}
