"""One conformance suite for the online-state store: SQLite, PostgreSQL and mongomock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from alphamill.errors import PoolError
from alphamill.online.state import open_state_store
from tests.pool.conftest import pg_url_with_schema

KINDS = ["sqlite", "postgresql", "mongomock"]


def make_store(kind, tmp_path, request, pool=None):
    pool = pool or f"p_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return open_state_store(pool, f"sqlite:///{tmp_path}/pool.db")
    if kind == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        return open_state_store(pool, pg_url_with_schema(schema))
    import mongomock

    client = request.node.__dict__.setdefault("_mongo", mongomock.MongoClient())
    return open_state_store(pool, "mongodb://localhost:27017/am_online", client=client)


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


def test_switch_is_compare_and_set(store):
    st = store.get_state("s1")
    assert st.version == 0 and st.online == []
    a = [{"run_id": "a", "window": 0}]
    assert store.switch("s1", 0, a, a, {"k": 1}, {"action": "first"})
    assert not store.switch("s1", 0, [{"run_id": "x"}], [], {}, {"action": "lost"})
    st = store.get_state("s1")
    assert st.version == 1 and st.online == a and st.info == {"k": 1}
    b = [{"run_id": "b", "window": 1}]
    assert store.switch("s1", 1, b, a + b, {}, {"action": "switch"})
    assert not store.switch("s1", 1, a, a, {}, {"action": "stale"})
    st = store.get_state("s1")
    assert st.version == 2 and st.online == b and st.trained == a + b
    hist = store.history("s1")
    assert [h["action"] for h in hist] == ["first", "switch"]
    assert [h["version"] for h in hist] == [1, 2]
    assert store.list_strategies() == ["s1"]


def test_concurrent_switch_one_winner(store):
    store.switch("s", 0, [], [], {}, {"action": "init"})
    wins = []

    def go(i):
        if store.switch("s", 1, [{"run_id": str(i)}], [], {}, {"action": str(i)}):
            wins.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_state("s").online == [{"run_id": str(wins[0])}]
    assert len(store.history("s")) == 2


def test_rows_insert_once_by_date(store):
    assert store.put_rows("sig", {"2020-01-02": {"a": 1}, "2020-01-03": {"a": 2}}) == 2
    assert store.put_rows("sig", {"2020-01-03": {"a": 99}, "2020-01-06": {"a": 3}}) == 1
    rows = store.get_rows("sig")
    assert list(rows) == ["2020-01-02", "2020-01-03", "2020-01-06"]
    assert rows["2020-01-03"] == {"a": 2}
    assert list(store.get_rows("sig", start="2020-01-03", end="2020-01-03")) == ["2020-01-03"]
    assert store.get_rows("other") == {}
    assert store.delete_rows("sig") == 3 and store.get_rows("sig") == {}


def test_watermark(store):
    assert store.get_watermark("signal") is None
    store.set_watermark("signal", "2020-01-02")
    store.set_watermark("signal", "2020-01-03")
    assert store.get_watermark("signal") == "2020-01-03"


def test_lock_exclusive_and_expiry(store):
    assert store.acquire_lock("routine", ttl=60, owner="a")
    assert not store.acquire_lock("routine", ttl=60, owner="b")
    assert store.acquire_lock("routine", ttl=60, owner="a")  # re-entrant for its owner
    assert store.lock_holder("routine")["owner"] == "a"
    store.release_lock("routine", owner="a")
    assert store.lock_holder("routine") is None
    assert store.acquire_lock("routine", ttl=-1, owner="b")  # already expired
    assert store.acquire_lock("routine", ttl=60, owner="c")


def test_lock_of_dead_process_is_taken_over(store):
    host = socket.gethostname()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert store._try_lock("routine", "alive", host, os.getppid(), 3600)
    assert not store.acquire_lock("routine", ttl=60)  # holder still running: not taken
    store.release_lock("routine", owner="alive")
    assert store._try_lock("routine", "ghost", host, proc.pid, 3600)  # holder died
    assert store.acquire_lock("routine", ttl=60)
    assert store.lock_holder("routine")["pid"] == os.getpid()


def test_pools_are_separate(tmp_path):
    a = open_state_store("pa", f"sqlite:///{tmp_path}/p.db")
    b = open_state_store("pb", f"sqlite:///{tmp_path}/p.db")
    a.switch("s", 0, [{"run_id": "1"}], [], {}, {})
    a.put_rows("k", {"2020-01-01": 1})
    assert b.get_state("s").version == 0 and b.get_rows("k") == {}


@pytest.mark.parametrize("name", ["", "1abc", "a;drop table x", "a" * 80])
def test_bad_pool_name(tmp_path, name):
    with pytest.raises(PoolError, match="pool name"):
        open_state_store(name, f"sqlite:///{tmp_path}/p.db")


def test_bad_url():
    with pytest.raises(PoolError, match="unsupported scheme"):
        open_state_store("p", "ftp://x")
