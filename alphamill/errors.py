"""User-facing errors.

Every mistake a user can make (bad config, bad data, bad query, unreachable pool)
raises a subclass of :class:`AlphamillError`. The CLI prints its message and exits
with code 2 instead of showing a traceback, so messages must name the field, file or
URL at fault and say what was expected.
"""

from __future__ import annotations


class AlphamillError(Exception):
    """Base class of every error caused by user input or environment, not by a bug."""

    exit_code = 2


class ConfigError(AlphamillError, ValueError):
    """A task, config or argument is invalid. ``path`` is the dotted location at fault."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def __reduce__(self) -> tuple:  # pickled from a worker process with its path
        return type(self), (self.message, self.path), self.__dict__


class CanonicalError(ConfigError):
    """A value cannot be represented in a task's canonical (JSON) form."""


class QueryError(AlphamillError, ValueError):
    """A task-pool query uses an unsupported operator or an unknown field."""


class DataError(AlphamillError):
    """Market data is missing, corrupt or inconsistent; the message names the file."""


class PoolError(AlphamillError):
    """The task pool refused an operation (bad pool name, unreachable store, ...)."""


class PoolUnavailable(PoolError):
    """The pool's database cannot be reached (the URL in the message is redacted)."""


class IllegalTransition(PoolError):
    """A task status change that the state machine does not allow."""


class LeaseLost(PoolError):
    """The caller no longer holds the lease on a task (it expired and was re-offered)."""
