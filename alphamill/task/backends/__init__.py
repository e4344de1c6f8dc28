"""Task-pool storage backends, selected by URL scheme.

``sqlite:///path.db`` (default), ``postgresql://user@host:5432/db``, ``mongodb://host:27017/db``
and ``memory://`` (in-process, for unit tests).
"""

from __future__ import annotations

from importlib import import_module
from urllib.parse import urlsplit

from alphamill.errors import PoolError
from alphamill.redact import redact_url, userinfo_problem
from alphamill.task.backends.base import Backend

_SCHEMES = {
    "memory": "alphamill.task.backends.memory:MemoryBackend",
    "sqlite": "alphamill.task.backends.sqlite:SQLiteBackend",
    "postgresql": "alphamill.task.backends.postgres:PostgresBackend",
    "postgres": "alphamill.task.backends.postgres:PostgresBackend",
    "mongodb": "alphamill.task.backends.mongo:MongoBackend",
    "mongodb+srv": "alphamill.task.backends.mongo:MongoBackend",
}


def check_url(url: str) -> str:
    """The target ``module:class`` serving ``url``, checked without connecting or creating
    anything: a known scheme, a userinfo no driver could misread, and for SQLite the path and
    its settings (errors name the redacted URL)."""
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    target = _SCHEMES.get(scheme)
    if target is None:
        raise PoolError(
            f"pool URL {redact_url(str(url))!r}: unsupported scheme {scheme!r}; expected one of "
            "sqlite:///path.db, postgresql://..., mongodb://host:port/db, memory://"
        )
    problem = userinfo_problem(url)
    if problem:  # refused before a driver can quote a piece of the password in its message
        raise PoolError(f"pool URL {redact_url(url)!r}: {problem}")
    if scheme == "sqlite":
        from alphamill.task.backends.sqlite import check_sqlite_url

        check_sqlite_url(url)
    return target


def open_backend(url: str, **kwargs) -> Backend:
    """Open the backend serving ``url`` (errors name the redacted URL)."""
    module, cls = check_url(url).split(":")
    return getattr(import_module(module), cls)(url, **kwargs)


__all__ = ["Backend", "check_url", "open_backend"]
