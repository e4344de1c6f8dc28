"""Fixtures of the online tests: the PostgreSQL schema fixture of the pool tests."""

from tests.pool.conftest import pg_schema  # noqa: F401  (fixture re-export)
