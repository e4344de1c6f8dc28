"""Fixtures of the chaos suite: a real SQLite file or a private PostgreSQL schema per test."""

from __future__ import annotations

import uuid

import pytest

from tests.pool.conftest import (
    PG_URL,
    REQUIRE_PG,
    drop_pg_schema,
    pg_url_with_schema,
    postgres_available,
)


@pytest.fixture(scope="session")
def pg_ready() -> str:
    """The admin URL of the test server; skip (or fail in CI) when it is absent."""
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required (ALPHAMILL_REQUIRE_POSTGRES=1) but not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL server absent at {PG_URL}")
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_ready):
    """``(schema, url)``: a fresh schema per test, so session termination hits only this test."""
    schema = f"am_chaos_{uuid.uuid4().hex[:10]}"
    yield schema, pg_url_with_schema(schema)
    drop_pg_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """``(kind, url, schema)`` for each real database."""
    if request.param == "sqlite":
        return "sqlite", f"sqlite:///{tmp_path}/pool.db", None
    schema, url = request.getfixturevalue("pg_schema_url")
    return "postgresql", url, schema


@pytest.fixture
def pool() -> str:
    return f"chaos_{uuid.uuid4().hex[:10]}"
