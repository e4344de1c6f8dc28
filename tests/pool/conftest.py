"""The ``backend`` fixture: every conformance test runs once per storage backend.

* memory and sqlite always run;
* postgresql runs against ``ALPHAMILL_TEST_PG_URL`` (default the local server) in a fresh
  schema per test session; it skips only when the server is absent, and fails instead
  when ``ALPHAMILL_REQUIRE_POSTGRES=1`` (set by CI);
* mongomock always runs (the MongoDB logic); a real MongoDB runs when
  ``ALPHAMILL_TEST_MONGO_URL`` is set.
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_URL = os.environ.get("ALPHAMILL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MONGO_URL = os.environ.get("ALPHAMILL_TEST_MONGO_URL")
REQUIRE_PG = os.environ.get("ALPHAMILL_REQUIRE_POSTGRES") == "1"


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception:
        return False


def pg_url_with_schema(schema: str) -> str:
    """The test server's URL with a private schema selected (created by the backend)."""
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


BACKENDS = ["memory", "sqlite", "postgresql", "mongomock"] + (["mongodb"] if MONGO_URL else [])


@pytest.fixture(scope="session")
def pg_schema():
    """A fresh PostgreSQL schema for this test session, dropped afterwards."""
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required (ALPHAMILL_REQUIRE_POSTGRES=1) but not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL server absent at {PG_URL}")
    schema = f"am_test_{uuid.uuid4().hex[:10]}"
    yield schema
    drop_pg_schema(schema)


def make_backend(kind: str, tmp_path, request):
    from alphamill.task.backends import open_backend

    if kind == "memory":
        return open_backend("memory://")
    if kind == "sqlite":
        return open_backend(f"sqlite:///{tmp_path}/pool.db")
    if kind == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        return open_backend(pg_url_with_schema(schema))
    if kind == "mongomock":
        import mongomock

        client = mongomock.MongoClient()
        return open_backend("mongodb://localhost:27017/alphamill_test", client=client)
    if kind == "mongodb":
        db = f"am_test_{uuid.uuid4().hex[:10]}"
        from alphamill.config import mongo_url_with_db

        backend = open_backend(mongo_url_with_db(MONGO_URL, db))
        request.addfinalizer(lambda: backend._client.drop_database(db))
        return backend
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    """One backend per parameter; each test gets a fresh pool name."""
    b = make_backend(request.param, tmp_path, request)
    yield b
    b.close()


@pytest.fixture
def pool_name():
    return f"p_{uuid.uuid4().hex[:12]}"
