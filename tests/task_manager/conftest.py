"""Fixtures: a pool URL per storage backend (memory, SQLite, PostgreSQL when reachable)."""

from __future__ import annotations

import importlib.util
import uuid

import pytest

from tests.pool.conftest import REQUIRE_PG, drop_pg_schema, pg_url_with_schema, postgres_available

BACKENDS = ["memory", "sqlite", "postgresql"]


def backend_ready(kind: str) -> bool:
    module = {"memory": "memory", "sqlite": "sqlite", "postgresql": "postgres"}[kind]
    return importlib.util.find_spec(f"alphamill.task.backends.{module}") is not None


@pytest.fixture(scope="session")
def pg_schema_url():
    """A private PostgreSQL schema for this session's task-manager tests."""
    if not backend_ready("postgresql"):
        pytest.skip("PostgreSQL backend not available")
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail("PostgreSQL required (ALPHAMILL_REQUIRE_POSTGRES=1) but not reachable")
        pytest.skip("PostgreSQL server absent")
    schema = f"am_tm_{uuid.uuid4().hex[:10]}"
    yield pg_url_with_schema(schema)
    drop_pg_schema(schema)


def make_url(kind: str, tmp_path, request) -> str:
    if not backend_ready(kind):
        pytest.skip(f"{kind} backend not available")
    if kind == "memory":
        return f"memory://tm{uuid.uuid4().hex[:12]}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/pool.db"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    return make_url(request.param, tmp_path, request)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A real database shared by several processes."""
    return make_url(request.param, tmp_path, request)


@pytest.fixture
def pool() -> str:
    return f"p_{uuid.uuid4().hex[:12]}"
