"""MongoDB-only behaviour, checked on mongomock (and on a server when one is configured).

Indexes, URL and Qlib-config parsing, the stored form of awkward keys, the server clock,
query translation corner cases and password redaction.
"""

from __future__ import annotations

import datetime as dt
import threading
import traceback

import mongomock
import pytest

from alphamill.config import get_setting, mongo_url_with_db
from alphamill.errors import PoolError, PoolUnavailable
from alphamill.task.backends import open_backend
from alphamill.task.backends.base import NewTask, WorkerIdentity
from alphamill.task.backends.mongo import MongoBackend, mongo_filter
from alphamill.task.query import parse_query
from alphamill.task.status import DONE, WAITING

pytestmark = pytest.mark.mongo

W = WorkerIdentity("w1", "host", 1)


@pytest.fixture
def client():
    return mongomock.MongoClient()


@pytest.fixture
def mongo(client):
    backend = MongoBackend("mongodb://localhost:27017/am_test", client=client)
    yield backend
    backend.close()


def test_ensure_pool_creates_the_indexes(mongo, client):
    assert mongo.is_mongomock
    mongo.ensure_pool("p1")
    info = client["am_test"]["tasks"].index_information()
    assert {"pool_hash", "claim", "lease"} <= set(info)
    assert info["pool_hash"].get("unique") is True
    assert info["pool_hash"]["key"] == [("pool", 1), ("hash", 1)]
    assert info["claim"]["key"][:3] == [("pool", 1), ("status", 1), ("priority", -1)]
    report = mongo.doctor()
    assert report["ok"] and report["problems"] == [] and report["database"] == "am_test"
    assert report["pools"] == 1


def test_doctor_reports_missing_indexes(mongo, client):
    mongo.ensure_pool("p1")
    client["am_test"]["tasks"].drop_index("claim")
    report = mongo.doctor()
    assert not report["ok"] and any("claim" in p for p in report["problems"])


def test_unique_index_dedupes_across_backends_on_one_database(client):
    a = MongoBackend("mongodb://localhost/shared", client=client)
    b = MongoBackend("mongodb://localhost/shared", client=client)
    a.ensure_pool("p")
    first = a.insert_tasks("p", [NewTask({"i": i}, f"h{i}") for i in range(5)])
    second = b.insert_tasks("p", [NewTask({"i": i}, f"h{i}") for i in range(3, 8)])
    assert [r.created for r in second] == [False, False, True, True, True]
    assert [r.id for r in second[:2]] == [r.id for r in first[3:]]
    assert sum(b.count_tasks("p", parse_query(None)).values()) == 8


def test_concurrent_inserts_from_threads_leave_one_task_per_hash(client):
    backends = [MongoBackend("mongodb://localhost/race", client=client) for _ in range(4)]
    backends[0].ensure_pool("p")
    results = []

    def run(b):
        results.append(b.insert_tasks("p", [NewTask({"i": i}, f"h{i}") for i in range(100)]))

    threads = [threading.Thread(target=run, args=(b,)) for b in backends]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for res in results for r in res) == 100
    assert all([r.id for r in res] == [r.id for r in results[0]] for res in results)


# -- URLs and configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("mongodb://localhost:27017/research", "research"),
        ("mongodb://u:pw@h1:27017,h2:27017/qlib_db?replicaSet=rs0&authSource=admin", "qlib_db"),
        ("mongodb+srv://cluster.example.com/tasks_db?retryWrites=true", "tasks_db"),
    ],
)
def test_database_name_comes_from_the_url(url, db):
    assert MongoBackend.parse_db_name(url) == db


@pytest.mark.parametrize(
    "url", ["mongodb://localhost:27017", "mongodb://localhost:27017/", "mongodb://h/bad.name",
            "mongodb://h/a b", "mongodb://h/" + "x" * 70]
)
def test_missing_or_invalid_database_name_is_refused(url, client):
    with pytest.raises(PoolError, match="database name"):
        MongoBackend(url, client=client)


def test_qlib_mongo_config_selects_the_database(tmp_path, monkeypatch, client):
    cfg = tmp_path / "alphamill.yaml"
    cfg.write_text("mongo:\n  task_url: mongodb://localhost:27017/\n  task_db_name: rolling_db\n")
    monkeypatch.setenv("ALPHAMILL_CONFIG", str(cfg))
    monkeypatch.delenv("ALPHAMILL_POOL_URL", raising=False)
    url = get_setting("pool_url")
    assert url == mongo_url_with_db("mongodb://localhost:27017/", "rolling_db")
    backend = open_backend(url, client=client)
    assert isinstance(backend, MongoBackend) and backend.db_name == "rolling_db"
    backend.ensure_pool("rolling_task")
    assert client["rolling_db"]["task_pools"].find_one({"_id": "rolling_task"})["codec"] == "json"


def test_repr_and_errors_redact_the_password(client):
    backend = MongoBackend("mongodb://alice:Pa55word9@localhost:27017/db", client=client)
    assert "Pa55word9" not in repr(backend) and "***" in repr(backend)
    assert "Pa55word9" not in str(backend.doctor())
    with pytest.raises(PoolError) as info:
        MongoBackend("mongodb://alice:Pa55word9@localhost:27017", client=client)
    assert "Pa55word9" not in str(info.value)


def test_unreachable_server_raises_pool_unavailable_without_password():
    backend = MongoBackend(
        "mongodb://alice:Pa55word9@127.0.0.1:1/db",
        server_selection_timeout_ms=200,
        retry_seconds=0.3,
    )
    with pytest.raises(PoolUnavailable) as info:
        backend.count_tasks("p", parse_query(None))
    rendered = "".join(traceback.format_exception(info.value))
    assert "Pa55word9" not in rendered and "alice:***@127.0.0.1:1" in str(info.value)
    report = backend.doctor()
    assert not report["ok"] and "Pa55word9" not in str(report)
    backend.close()


# -- stored form ---------------------------------------------------------------------------------


def test_keys_with_dots_dollars_and_percent_round_trip(mongo, client):
    mongo.ensure_pool("p")
    definition = {
        "grid": {"model.kwargs.lr": 0.1, "$where": "x", "100%": {"a.b.c": [{"$in": 1}]}},
        "model": {"class": "LGB"},
        "lit": "%2E stays %24 as written",
    }
    meta = {"grid": {"model.kwargs.loss": "mse"}}
    (res,) = mongo.insert_tasks("p", [NewTask(definition, "h", metadata=meta)])
    stored = client["am_test"]["tasks"].find_one({"hash": "h"})
    assert all("." not in k and not k.startswith("$") for k in stored["definition"]["grid"])
    rec = mongo.get_tasks("p", [res.id])[0]
    assert rec.definition == definition and rec.metadata == meta
    assert [r.id for r in mongo.find_tasks("p", parse_query({"def.model.class": "LGB"}))] == [res.id]
    (claimed,) = mongo.claim_tasks("p", worker=W, query=parse_query(None), from_status=WAITING,
                                   lease_seconds=30)
    assert mongo.complete_task("p", claimed.id, claimed.lease_token, status=DONE,
                               result={"a.b": 1, "$x": [2]})
    assert mongo.get_tasks("p", [res.id])[0].result == {"a.b": 1, "$x": [2]}


def test_ids_are_object_id_strings(mongo):
    mongo.ensure_pool("p")
    (res,) = mongo.insert_tasks("p", [NewTask({"i": 1}, "h")])
    assert len(res.id) == 24 and int(res.id, 16) >= 0
    assert mongo.get_tasks("p", [res.id.upper(), "17", res.id])[0].id == res.id
    assert not mongo.heartbeat("p", "not-an-id", "tok", 10)


def test_large_integers_are_refused_and_the_batch_is_rolled_back(mongo):
    mongo.ensure_pool("p")
    batch = [NewTask({"i": i}, f"h{i}") for i in range(3)] + [NewTask({"i": 2**70}, "big")]
    with pytest.raises(PoolError):
        mongo.insert_tasks("p", batch)
    assert mongo.count_tasks("p", parse_query(None)) == {}


# -- the clock -------------------------------------------------------------------------------------


def test_server_clock_is_used_when_not_mongomock(mongo, monkeypatch):
    """On a server, times come from hello.localTime, not from this process's clock."""
    server_time = dt.datetime(2001, 2, 3, 4, 5, 6, 500000)  # naive UTC, as pymongo returns it
    real_command = mongomock.database.Database.command

    def command(self, cmd, *args, **kwargs):
        if cmd == "hello":
            return {"localTime": server_time, "ok": 1.0}
        return real_command(self, cmd, *args, **kwargs)

    monkeypatch.setattr(mongomock.database.Database, "command", command)
    monkeypatch.setattr(mongo, "is_mongomock", False)
    expected = server_time.replace(tzinfo=dt.timezone.utc).timestamp()
    assert mongo.now() == expected
    mongo.ensure_pool("p")
    mongo.insert_tasks("p", [NewTask({"i": 1}, "h")])
    (rec,) = mongo.claim_tasks("p", worker=W, query=parse_query(None), from_status=WAITING,
                               lease_seconds=60)
    assert rec.started_at == expected and rec.lease_expires == expected + 60
    assert rec.created_at == expected


def test_mongomock_falls_back_to_the_process_clock(mongo):
    import time

    assert abs(mongo.now() - time.time()) < 1


# -- query translation ---------------------------------------------------------------------------


def test_filter_maps_fields_to_the_document_layout():
    f = mongo_filter({"def.model.class": "LGB"})
    assert "definition.model.class" in str(f)
    assert "definition.model.class" in str(mongo_filter({"filter.model.class": "LGB"}))
    assert "metadata.rolling.index" in str(mongo_filter({"meta.rolling.index": {"$gt": 1}}))
    assert mongo_filter({"status": "done"}) == {"status": {"$in": ["done"]}}
    assert mongo_filter(None) == {}
    assert mongo_filter({"_id": "zzz"}) == {"_id": {"$in": []}}  # never matches, no error


TRICKY = [
    {"x": 1}, {"x": 1.0}, {"x": True}, {"x": False}, {"x": 0}, {"x": "1"}, {"x": None}, {},
    {"x": [True, 2]}, {"x": [True, 1]}, {"x": [None, 3]}, {"x": []}, {"x": ["a", "B"]},
    {"x": {"k": 1}}, {"x": 5}, {"x": None, "y": 1}, {"x": {"-1": 7}}, {"x": [6, 7]},
    {"a": 5}, {"a": None}, {"a": {"b": 1}}, {"a": [{"b": 1}]}, {"a": {"b": [0, 1]}},
    {"a": {"b": None}}, {"a": {"b": "é"}}, {"a": {"b": True}},
]
TRICKY_QUERIES = [
    {"def.x": 1}, {"def.x": 0}, {"def.x": True}, {"def.x": False}, {"def.x": None},
    {"def.x": {"$ne": 1}}, {"def.x": {"$ne": None}}, {"def.x": {"$in": [1, None]}},
    {"def.x": {"$nin": [True, "a"]}}, {"def.x": {"$gt": 1}}, {"def.x": {"$lte": "a"}},
    {"def.x": {"$exists": True}}, {"def.x": {"$exists": False}}, {"def.x.-1": 7},
    {"def.x.-1": {"$exists": False}}, {"def.x.k": 1}, {"def.a.b": 1}, {"def.a.b": None},
    {"def.a.b": {"$ne": None}}, {"def.a.b": {"$gte": 0}}, {"def.a.b": {"$in": [True, "é"]}},
    {"def.a.b": {"$exists": True}}, {"meta.x": 1}, {"meta.a.b": None},
]


def test_tricky_values_agree_with_query_matches(mongo):
    mongo.ensure_pool("p")
    mongo.insert_tasks(
        "p", [NewTask(d, f"h{i}", metadata=d) for i, d in enumerate(TRICKY)]
    )
    records = mongo.find_tasks("p", parse_query(None))
    for raw in TRICKY_QUERIES:
        q = parse_query(raw)
        want = [r.id for r in records if q.matches(r)]
        assert [r.id for r in mongo.find_tasks("p", q)] == want, raw
        assert sum(mongo.count_tasks("p", q).values()) == len(want), raw
