"""``create`` stores a whole list of tasks or none of it, on every backend.

The stores refuse a row half-way through (a trigger raising on the 11,000th task stands in
for any failure the up-front checks cannot see: a dropped connection, a full disk, a
constraint): a ``create_task`` of 12,000 tasks must then leave the pool as it was, although
it is larger than any internal insert chunk. On MongoDB, which has no transaction without a
replica set, the documents this call inserted are taken back.
"""

from __future__ import annotations

import uuid

import mongomock
import psycopg
import pytest

from alphamill.errors import AlphamillError, ConfigError
from alphamill.task.backends.mongo import MongoBackend
from alphamill.task.manage import TaskManager
from tests.pool.conftest import PG_URL, pg_url_with_schema

N = 12_000
FAIL_AT = 11_000


def _tasks() -> list[dict]:
    return [{"n": i} for i in range(N)]


def _assert_nothing_stored(tm: TaskManager) -> None:
    assert tm.task_stat() == {}
    assert list(tm.query()) == []


def test_sqlite_create_is_one_transaction(tmp_path):
    url = f"sqlite:///{tmp_path}/pool.db"
    with TaskManager("p", url) as tm:
        tm.create_task([{"n": -1}])  # the pool and its schema exist
        tm.backend._run(
            lambda c: c.execute(
                "CREATE TRIGGER boom BEFORE INSERT ON tasks "
                f"WHEN json_extract(NEW.definition, '$.n') = {FAIL_AT} "
                "BEGIN SELECT RAISE(ABORT, 'boom: refused by the store'); END"
            ),
            write=True,
        )
        with pytest.raises(AlphamillError, match="boom"):
            tm.create_task(_tasks())
        assert tm.task_stat() == {"waiting": 1}


@pytest.mark.postgres
def test_postgres_create_is_one_transaction(pg_schema):
    url = pg_url_with_schema(pg_schema)
    pool = f"p_{uuid.uuid4().hex[:10]}"
    with TaskManager(pool, url) as tm:
        tm.create_task([{"n": -1}])
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(
                f'CREATE OR REPLACE FUNCTION "{pg_schema}".boom() RETURNS trigger AS $$ BEGIN '
                f"IF NEW.definition->>'n' = '{FAIL_AT}' THEN RAISE EXCEPTION 'boom: refused by the store'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.execute(
                f'CREATE TRIGGER boom BEFORE INSERT ON "{pg_schema}".tasks FOR EACH ROW '
                f'EXECUTE FUNCTION "{pg_schema}".boom()'
            )
        try:
            with pytest.raises(AlphamillError, match="boom"):
                tm.create_task(_tasks())
            assert tm.task_stat() == {"waiting": 1}
        finally:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP TRIGGER boom ON "{pg_schema}".tasks')


def test_mongo_create_takes_back_what_it_inserted(monkeypatch):
    """mongomock checks unique indexes slowly: 300 tasks in chunks of 25, the 11th fails."""
    client = mongomock.MongoClient()
    backend = MongoBackend("mongodb://localhost:27017/am_test", client=client)
    monkeypatch.setattr("alphamill.task.backends.mongo._INSERT_CHUNK", 25)
    collection = type(backend._tasks)
    real = collection.insert_many
    calls = []

    def failing(self, docs, *args, **kwargs):
        calls.append(len(docs))
        if len(calls) == 11:
            raise mongomock.OperationFailure("boom: refused by the store")
        return real(self, docs, *args, **kwargs)

    monkeypatch.setattr(collection, "insert_many", failing)
    with TaskManager("p", backend=backend) as tm:
        with pytest.raises(Exception, match="boom"):
            tm.create_task([{"n": i} for i in range(300)])
        assert len(calls) == 11  # ten chunks were inserted, then taken back
        _assert_nothing_stored(tm)
    backend.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql", "mongomock"])
def test_a_bad_task_anywhere_stores_nothing_and_names_its_index(kind, tmp_path, request):
    from tests.pool.conftest import make_backend

    backend = make_backend(kind, tmp_path, request)
    pool = f"p_{uuid.uuid4().hex[:10]}"
    tasks = [{"n": i} for i in range(5001)] + [{"n": "bad", "x": "a\x00b"}]
    with TaskManager(pool, backend=backend) as tm:
        with pytest.raises(ConfigError, match=r"task_def_l\[5001\]\.x") as exc:
            tm.create_task(tasks)
        assert "U+0000" in str(exc.value)
        _assert_nothing_stored(tm)
    backend.close()
