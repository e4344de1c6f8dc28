"""Fixtures of the security suite: real stores an attacker can write to directly."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.pool.conftest import (  # noqa: F401 - fixtures re-exported for this folder
    PG_URL,
    REQUIRE_PG,
    backend,
    drop_pg_schema,
    pg_schema,
    pg_url_with_schema,
    pool_name,
    postgres_available,
)


@dataclass
class Store:
    """A pool store plus raw SQL access, as someone with write access to the database has."""

    kind: str
    url: str
    execute: Callable[..., list[tuple[Any, ...]]]
    dump: Callable[[], str]  # every row of every table, as text


def _sqlite_store(tmp_path) -> Store:
    import sqlite3

    path = tmp_path / "pool.db"

    def execute(sql: str, params: tuple = ()) -> list:
        conn = sqlite3.connect(path, timeout=10)
        try:
            with conn:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
        finally:
            conn.close()

    def dump() -> str:
        conn = sqlite3.connect(path)
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()

    return Store("sqlite", f"sqlite:///{path}", execute, dump)


def _pg_store(schema: str) -> Store:
    import psycopg

    url = pg_url_with_schema(schema)

    def execute(sql: str, params: tuple = ()) -> list:
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("= ?", "= %s"), params)
            return cur.fetchall() if cur.description else []

    def dump() -> str:
        with psycopg.connect(url, autocommit=True) as conn:
            out = []
            for (table,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
            ).fetchall():
                rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
                out.append(f"{table}: {rows!r}")
            return "\n".join(out)

    return Store("postgresql", url, execute, dump)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return _sqlite_store(tmp_path)
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail("PostgreSQL required (ALPHAMILL_REQUIRE_POSTGRES=1) but not reachable")
        pytest.skip("PostgreSQL server absent")
    schema = f"am_sec_{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: drop_pg_schema(schema))
    return _pg_store(schema)


@pytest.fixture
def pool() -> str:
    return f"sec_{uuid.uuid4().hex[:10]}"
