"""Helpers shared by the backends: argument checks, JSON encoding and SQL query compilation.

The argument checks live here so every backend rejects the same mistakes with the same
message; :class:`SQLiteQueryCompiler` turns a :class:`~alphamill.task.query.Query` into a
parameterised ``WHERE`` clause with exactly the semantics of :meth:`Query.matches`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from alphamill.errors import IllegalTransition, PoolError
from alphamill.limits import INT32_MAX, INT32_MIN, MAX_CLAIM, json_needs_check, storable_problem
from alphamill.redact import redact_url
from alphamill.task import query as Q
from alphamill.task.backends.base import NewTask, validate_pool_name
from alphamill.task.status import CLAIMABLE, COMMITTABLE, WAITING, check_transition

CODECS: tuple[str, ...] = ("json", "pickle")

#: Message stored in ``last_error`` when a lease runs out on the last attempt.
LEASE_EXPIRED_ERROR = (
    "lease expired: the worker holding this task stopped heart-beating (killed or lost) "
    "and the task has used all of its attempts"
)


# -- argument checks --------------------------------------------------------------------------


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise PoolError(f"codec: unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    return codec


def check_claim_args(pool: str, from_status: str, lease_seconds: float, limit: int) -> None:
    validate_pool_name(pool)
    if from_status not in CLAIMABLE:
        raise IllegalTransition(
            f"from_status: cannot claim tasks from {from_status!r}; expected one of "
            f"{', '.join(sorted(CLAIMABLE))}"
        )
    check_lease_seconds(lease_seconds)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM:
        raise PoolError(f"limit: expected an integer between 1 and {MAX_CLAIM}, got {limit!r}")


def check_lease_seconds(lease_seconds: float) -> float:
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not (
        lease_seconds > 0 and math.isfinite(lease_seconds)
    ):
        raise PoolError(f"lease_seconds: expected a positive number of seconds, got {lease_seconds!r}")
    return float(lease_seconds)


def check_retry_delay(retry_delay: float) -> float:
    if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not (
        retry_delay >= 0 and math.isfinite(retry_delay)
    ):
        raise PoolError(f"retry_delay: expected a number of seconds >= 0, got {retry_delay!r}")
    return float(retry_delay)


def check_commit_status(status: str) -> str:
    if status not in COMMITTABLE:
        raise IllegalTransition(
            f"status: a result is committed as {' or '.join(sorted(COMMITTABLE))}, not {status!r}"
        )
    return status


def check_admin_status(to_status: str) -> str:
    """Validate the target of an administrative reset (any old status is allowed)."""
    check_transition(WAITING, to_status, admin=True)
    return to_status


def check_priority(priority: Any, where: str = "priority") -> int:
    """A priority (or attempt limit): an integer of a 32-bit column on every backend."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PoolError(f"{where}: expected an integer, got {priority!r}")
    if not INT32_MIN <= priority <= INT32_MAX:
        raise PoolError(f"{where}: expected an integer between {INT32_MIN} and {INT32_MAX}, got {priority}")
    return priority


def check_new_task(task: Any, index: int) -> NewTask:
    where = f"tasks[{index}]"
    if not isinstance(task, NewTask):
        raise PoolError(f"{where}: expected a NewTask, got {type(task).__name__}")
    if not isinstance(task.hash, str) or not task.hash:
        raise PoolError(f"{where}.hash: expected a non-empty string, got {task.hash!r}")
    check_priority(task.priority, f"{where}.priority")
    if check_priority(task.max_attempts, f"{where}.max_attempts") < 1:
        raise PoolError(f"{where}.max_attempts: expected an integer >= 1, got {task.max_attempts!r}")
    if not isinstance(task.metadata, dict):
        raise PoolError(f"{where}.metadata: expected a dict, got {type(task.metadata).__name__}")
    if task.definition_json is not None and json_needs_check(task.definition_json):
        check_storable(task.definition, f"{where}.definition")
    return task


def normalize_ids(ids: Sequence[Any]) -> list[str]:
    """Task ids are strings at the interface; ints are accepted for convenience."""
    if isinstance(ids, (str, int)):
        raise PoolError(f"ids: expected a list of task ids, got {ids!r}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (str, int)):
            raise PoolError(f"ids: a task id is a string or an int, got {i!r}")
        out.append(str(i))
    return out


# -- JSON ----------------------------------------------------------------------------------------


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def check_storable(value: Any, where: str) -> None:
    """Refuse what one of the stores could not hold (:mod:`alphamill.limits`), naming the path."""
    problem = storable_problem(value, where)
    if problem is not None:
        raise PoolError(f"{problem[0]}: {problem[1]}")


def to_json(value: Any, where: str) -> str:
    """Encode plain data as compact JSON; NaN/Infinity, non-JSON types and what any backend
    could not hold are refused, so every backend accepts and refuses the same values."""
    if value is None:
        return "null"
    if value == {} and isinstance(value, dict):
        return "{}"
    try:
        text = _ENCODER.encode(value)
    except RecursionError:
        check_storable(value, where)  # names the path that is nested too deeply
        raise
    except (TypeError, ValueError) as exc:
        raise PoolError(f"{where}: value is not JSON-compatible ({exc})") from exc
    if json_needs_check(text):
        check_storable(value, where)
    return text


def stored_error(error: str | None) -> str | None:
    """An error text as stored in ``last_error``: passwords redacted, and characters no
    store can hold (U+0000, lone surrogates) written as escapes instead of refusing the
    failure record."""
    if error is None:
        return None
    text = redact_url(str(error))
    if "\x00" in text or not text.isascii():
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# -- SQLite query compilation ---------------------------------------------------------------------

_FIELD_COLUMNS = {"id": "id", "status": "status", "hash": "hash", "priority": "priority",
                  "attempts": "attempts"}
_SQL_CMP = {Q.GT: ">", Q.GTE: ">=", Q.LT: "<", Q.LTE: "<="}


def json_path(path: Sequence[str]) -> str:
    """A SQLite JSON path (``$."a"."b"``); components are pre-validated by the query parser."""
    return "$" + "".join(f'."{p}"' for p in path)


class SQLiteQueryCompiler:
    """Compile a Query into a SQLite ``WHERE`` fragment plus parameters.

    JSON columns are TEXT; ``json_type`` distinguishes missing (SQL NULL), JSON null,
    booleans (``true``/``false``), numbers (``integer``/``real``), strings (``text``) and
    containers, which is what the reference semantics need.
    """

    def __init__(self, columns: dict[str, str] | None = None):
        self.columns = columns or {"def": "definition", "meta": "metadata"}

    def compile(self, query: Q.Query) -> tuple[str, list[Any]]:
        if query.is_empty:
            return "1", []
        parts: list[str] = []
        params: list[Any] = []
        for c in query.conditions:
            sql, p = self._condition(c)
            parts.append(f"({sql})")
            params.extend(p)
        return " AND ".join(parts), params

    # fields ----------------------------------------------------------------------------------
    def _condition(self, c: Q.Condition) -> tuple[str, list[Any]]:
        if c.target == "field":
            return self._field(c)
        return self._json(c)

    def _field(self, c: Q.Condition) -> tuple[str, list[Any]]:
        name = c.path[0]
        col = _FIELD_COLUMNS[name]

        def conv(v: Any) -> Any:
            if name != "id":
                return v
            # ids are integers in SQL; an id that is not an integer string matches nothing
            s = str(v)
            return int(s) if s.isdigit() and len(s) < 19 else None

        if c.op in (Q.IN, Q.NIN):
            vals = [conv(v) for v in c.value]
            vals = [v for v in vals if v is not None]
            if not vals:
                return ("0", []) if c.op == Q.IN else ("1", [])
            marks = ",".join("?" * len(vals))
            neg = "NOT " if c.op == Q.NIN else ""
            return f"{col} {neg}IN ({marks})", vals
        v = conv(c.value)
        if v is None:  # unparseable id
            return ("0", []) if c.op == Q.EQ else ("1", [])
        if c.op == Q.EQ:
            return f"{col} = ?", [v]
        if c.op == Q.NE:
            return f"{col} <> ?", [v]
        return f"{col} {_SQL_CMP[c.op]} ?", [v]

    # JSON paths ------------------------------------------------------------------------------
    def _json(self, c: Q.Condition) -> tuple[str, list[Any]]:
        col = self.columns[c.target]
        path = json_path(c.path)
        if c.op == Q.EXISTS:
            return (f"json_type({col}, ?) IS {'NOT ' if c.value else ''}NULL", [path])
        if c.op in (Q.EQ, Q.NE):
            sql, p = self._eq_any(col, path, [c.value])
            return (sql, p) if c.op == Q.EQ else (f"NOT ({sql})", p)
        if c.op in (Q.IN, Q.NIN):
            if not c.value:
                return ("0", []) if c.op == Q.IN else ("1", [])
            sql, p = self._eq_any(col, path, list(c.value))
            return (sql, p) if c.op == Q.IN else (f"NOT ({sql})", p)
        return self._cmp(col, path, c.op, c.value)

    @staticmethod
    def _scalar_test(
        type_expr: str, type_params: list[Any], value_expr: str, value_params: list[Any], q: Any
    ) -> tuple[str, list[Any]]:
        """SQL testing that one JSON scalar (given by its type and value) equals ``q``."""
        if q is None:
            return f"{type_expr} = 'null'", [*type_params]
        if isinstance(q, bool):
            return f"{type_expr} = ?", [*type_params, "true" if q else "false"]
        if isinstance(q, (int, float)):
            return (f"({type_expr} IN ('integer','real') AND {value_expr} = ?)",
                    [*type_params, *value_params, q])
        return f"({type_expr} = 'text' AND {value_expr} = ?)", [*type_params, *value_params, q]

    def _eq_any(self, col: str, path: str, values: list[Any]) -> tuple[str, list[Any]]:
        """Stored value (or an element of a stored list) equals one of ``values``."""
        direct, direct_p = [], []
        elem, elem_p = [], []
        for q in values:
            s, p = self._scalar_test(
                f"json_type({col}, ?)", [path], f"json_extract({col}, ?)", [path], q
            )
            direct.append(s)
            direct_p.extend(p)
            s2, p2 = self._scalar_test("e.type", [], "e.value", [], q)
            elem.append(s2)
            elem_p.extend(p2)
        sql = (
            f"(json_type({col}, ?) = 'array' AND EXISTS (SELECT 1 FROM json_each({col}, ?) AS e "
            f"WHERE {' OR '.join(elem)}))"
            f" OR ({' OR '.join(direct)})"
        )
        params: list[Any] = [path, path, *elem_p, *direct_p]
        if any(q is None for q in values):
            sql += f" OR json_type({col}, ?) IS NULL"
            params.append(path)
        # SQL's NULL would make NOT(...) unknown on missing paths; force a plain 0/1
        return f"COALESCE(({sql}), 0)", params

    def _cmp(self, col: str, path: str, op: str, q: Any) -> tuple[str, list[Any]]:
        sym = _SQL_CMP[op]
        types = "('integer','real')" if isinstance(q, (int, float)) else "('text')"
        sql = (
            f"(json_type({col}, ?) IN {types} AND json_extract({col}, ?) {sym} ?)"
            f" OR (json_type({col}, ?) = 'array' AND EXISTS (SELECT 1 FROM json_each({col}, ?) AS e "
            f"WHERE e.type IN {types} AND e.value {sym} ?))"
        )
        return sql, [path, path, q, path, path, q]
