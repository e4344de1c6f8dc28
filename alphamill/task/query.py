"""The task-pool query language: a small, documented subset of MongoDB filters.

One parser, one meaning, every backend. :func:`parse_query` turns a filter dict into a
:class:`Query` (a flat list of :class:`Condition`, all ANDed); the in-memory backend
evaluates it with :meth:`Query.matches`, the SQL and MongoDB backends translate the same
conditions, and the conformance suite checks that every backend agrees with ``matches``.

Fields
    ``_id`` / ``id``   task id; a string, an int (``17`` == ``"17"``) or an ObjectId.
                       Operators: equality, ``$in``, ``$nin``, ``$ne``.
    ``status``         one of the statuses; equality, ``$in``, ``$nin``, ``$ne``.
    ``hash``           content hash (string); equality, ``$in``, ``$nin``, ``$ne``.
    ``priority``, ``attempts``
                       numbers; equality, ``$in``, ``$nin``, ``$ne``, ``$gt/$gte/$lt/$lte``.
    ``def.<path>`` / ``filter.<path>``
                       a dotted path into the task definition (Qlib stores it under
                       ``filter``), e.g. ``def.model.kwargs.loss``.
    ``meta.<path>``    a dotted path into the metadata, e.g. ``meta.rolling.index``.
                       Paths accept every operator, including ``$exists``.

Operators: equality (``{"f": v}`` or ``{"f": {"$eq": v}}``), ``$in``, ``$nin``, ``$ne``,
``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$exists``; fields are ANDed, and so are several
operators on one field and the sub-queries of an ``$and`` list.

Semantics of paths (JSON values), identical on every backend:

* Path components are names (letters, digits, ``_``, ``-``; not all digits) that step into
  objects only. A path that meets a non-object before its end, or a missing key, is
  *missing*.
* Query values are JSON scalars: string, number, bool or null (``$in``/``$nin`` take a list
  of them). Comparison operators take a number or a string.
* Equality: same JSON type and equal value; numbers compare numerically (``1 == 1.0``) but
  never equal a bool or a string (``1 != "1"``, ``1 != true``). ``null`` equals a stored
  null *or a missing path* (MongoDB's rule); any other value never equals a missing path.
* ``$ne`` / ``$nin`` are the exact negation of equality / ``$in`` (so a missing path matches
  ``{"$ne": 3}``).
* ``$gt/$gte/$lt/$lte``: numbers against numbers, strings against strings (by code point,
  i.e. binary); any other pairing, and a missing path, is false.
* A stored list at the end of a path matches a scalar operator when the list holds a
  matching element (one level, MongoDB's rule): ``{"meta.tags": "a"}`` matches
  ``{"tags": ["a", "b"]}``.
* ``$exists: true`` matches a present path (even when its value is null).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from alphamill.errors import QueryError
from alphamill.limits import MAX_DEPTH, int_problem, text_problem
from alphamill.task.status import STATUSES

Target = Literal["field", "def", "meta"]

EQ, IN, NIN, NE = "$eq", "$in", "$nin", "$ne"
GT, GTE, LT, LTE = "$gt", "$gte", "$lt", "$lte"
EXISTS = "$exists"
COMPARISONS: frozenset[str] = frozenset({GT, GTE, LT, LTE})
OPERATORS: tuple[str, ...] = (EQ, IN, NIN, NE, GT, GTE, LT, LTE, EXISTS)

#: Top-level fields and the operators each accepts.
_SET_OPS = frozenset({EQ, IN, NIN, NE})
FIELDS: dict[str, frozenset[str]] = {
    "id": _SET_OPS,
    "status": _SET_OPS,
    "hash": _SET_OPS,
    "priority": _SET_OPS | COMPARISONS,
    "attempts": _SET_OPS | COMPARISONS,
}
_FIELD_ALIASES = {"_id": "id"}
_PREFIXES: dict[str, Target] = {"def": "def", "filter": "def", "meta": "meta"}
PATH_COMPONENT_RE = re.compile(r"(?!\d+\Z)[A-Za-z0-9_\-]{1,128}")  # used with fullmatch

SUPPORTED = (
    "fields _id/id, status, hash, priority, attempts, def.<path>, filter.<path>, meta.<path>; "
    "operators equality, " + ", ".join(OPERATORS[1:]) + ", $and"
)

_MISSING = object()


@dataclass(frozen=True)
class Condition:
    """One test on one field or path. ``value`` is a tuple for ``$in``/``$nin``."""

    target: Target
    path: tuple[str, ...]
    op: str
    value: Any

    @property
    def name(self) -> str:
        """The dotted name as written by users (``meta.rolling.index``)."""
        prefix = () if self.target == "field" else (self.target,)
        return ".".join(prefix + self.path)


@dataclass(frozen=True)
class Query:
    """A parsed query: the conjunction of ``conditions`` (empty = every task)."""

    conditions: tuple[Condition, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.conditions

    def matches(self, record: Any) -> bool:
        """Whether a :class:`~alphamill.task.backends.base.TaskRecord` satisfies the query."""
        return all(_match_condition(c, record) for c in self.conditions)

    def __repr__(self) -> str:
        inner = ", ".join(f"{c.name} {c.op} {c.value!r}" for c in self.conditions)
        return f"Query({inner})"


# -- parsing ----------------------------------------------------------------------------------


def parse_query(q: Mapping[str, Any] | Query | None) -> Query:
    """Parse a MongoDB-style filter dict; ``None`` or ``{}`` selects every task."""
    if isinstance(q, Query):
        return q
    if q is None:
        return Query()
    conditions: list[Condition] = []
    _parse_into(q, conditions, "query")
    return Query(tuple(conditions))


def _parse_into(q: Any, out: list[Condition], where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise QueryError(f"{where}: $and nested deeper than {MAX_DEPTH} levels")
    if not isinstance(q, Mapping):
        raise QueryError(f"{where}: expected a dict (MongoDB-style filter), got {type(q).__name__}")
    for key, spec in q.items():
        if not isinstance(key, str):
            raise QueryError(f"{where}: field names must be strings, got {key!r}")
        if key == "$and":
            if not isinstance(spec, (list, tuple)):
                raise QueryError(f"{where}.$and: expected a list of queries, got {type(spec).__name__}")
            for i, sub in enumerate(spec):
                _parse_into(sub, out, f"{where}.$and[{i}]", depth + 1)
            continue
        if key.startswith("$"):
            raise QueryError(f"{where}: unsupported operator {key!r}; supported: {SUPPORTED}")
        target, path = _parse_field(key)
        _parse_spec(target, path, key, spec, out)


def _parse_field(key: str) -> tuple[Target, tuple[str, ...]]:
    name = _FIELD_ALIASES.get(key, key)
    if name in FIELDS:
        return "field", (name,)
    head, _, rest = key.partition(".")
    if head in _PREFIXES and rest:
        parts = tuple(rest.split("."))
        for part in parts:
            if not PATH_COMPONENT_RE.fullmatch(part):
                raise QueryError(
                    f"query field {key!r}: invalid path component {part!r}; components are "
                    "names of letters, digits, '_' or '-' (not all digits) that step into dicts"
                )
        return _PREFIXES[head], parts
    raise QueryError(f"query: unknown field {key!r}; supported: {SUPPORTED}")


def _parse_spec(target: Target, path: tuple[str, ...], key: str, spec: Any, out: list[Condition]) -> None:
    if isinstance(spec, Mapping):
        ops = list(spec)
        if not ops:
            raise QueryError(f"query field {key!r}: empty operator dict; expected e.g. {{'$in': [...]}}")
        if not all(isinstance(op, str) and op.startswith("$") for op in ops):
            raise QueryError(
                f"query field {key!r}: cannot compare with a dict; use a scalar value or "
                f"operators ({', '.join(OPERATORS)})"
            )
        for op in ops:
            out.append(_make_condition(target, path, key, op, spec[op]))
    else:
        out.append(_make_condition(target, path, key, EQ, spec))


def _make_condition(target: Target, path: tuple[str, ...], key: str, op: str, value: Any) -> Condition:
    where = f"query field {key!r}"
    if op not in OPERATORS:
        raise QueryError(f"{where}: unsupported operator {op!r}; supported: {SUPPORTED}")
    if target == "field" and op not in FIELDS[path[0]]:
        allowed = ", ".join(o for o in OPERATORS if o in FIELDS[path[0]])
        raise QueryError(f"{where}: operator {op!r} not supported on this field; expected one of {allowed}")
    if op == EXISTS:
        if not isinstance(value, bool):
            raise QueryError(f"{where}: $exists expects true or false, got {value!r}")
        return Condition(target, path, op, value)
    if op in (IN, NIN):
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise QueryError(f"{where}: {op} expects a list of values, got {type(value).__name__}")
        items = tuple(_check_value(target, path, where, op, v) for v in value)
        return Condition(target, path, op, items)
    return Condition(target, path, op, _check_value(target, path, where, op, value))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_storable(where: str, v: Any) -> None:
    """A value no store can hold cannot match anything; say so instead of failing in a driver."""
    if isinstance(v, str):
        why = text_problem(v)
    elif isinstance(v, int) and not isinstance(v, bool):
        why = int_problem(v)
    elif isinstance(v, float) and not math.isfinite(v):
        why = "NaN and infinities cannot be matched"
    else:
        why = None
    if why:
        raise QueryError(f"{where}: {why}")


def _check_value(target: Target, path: tuple[str, ...], where: str, op: str, v: Any) -> Any:
    """Validate and normalise one query value for its field."""
    _check_storable(where, v)
    if target == "field":
        name = path[0]
        if name == "id":
            if isinstance(v, bool) or v is None:
                raise QueryError(f"{where}: a task id is a string or an int, got {v!r}")
            if isinstance(v, int) or type(v).__name__ == "ObjectId":
                return str(v)
            if isinstance(v, str):
                return v
            raise QueryError(f"{where}: a task id is a string or an int, got {type(v).__name__}")
        if name == "status":
            if v not in STATUSES:
                raise QueryError(f"{where}: unknown status {v!r}; expected one of {', '.join(STATUSES)}")
            return v
        if name == "hash":
            if not isinstance(v, str):
                raise QueryError(f"{where}: a hash is a string, got {type(v).__name__}")
            return v
        if not _is_number(v):
            raise QueryError(f"{where}: expected a number, got {v!r}")
        return v
    if op in COMPARISONS:
        if not (_is_number(v) or isinstance(v, str)):
            raise QueryError(f"{where}: {op} compares with a number or a string, got {v!r}")
        return v
    if v is None or isinstance(v, (str, bool)) or _is_number(v):
        if isinstance(v, float) and v != v:
            raise QueryError(f"{where}: NaN cannot be matched")
        return v
    raise QueryError(
        f"{where}: query values are strings, numbers, booleans or null, got {type(v).__name__}"
    )


# -- evaluation (the reference semantics) --------------------------------------------------------


def _lookup(root: Any, path: tuple[str, ...]) -> Any:
    cur = root
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def _scalar_eq(x: Any, q: Any) -> bool:
    if q is None:
        return x is None
    if isinstance(q, bool) or isinstance(x, bool):
        return isinstance(q, bool) and isinstance(x, bool) and x == q
    if _is_number(q):
        return _is_number(x) and x == q
    if isinstance(q, str):
        return isinstance(x, str) and x == q
    return False


def _value_eq(stored: Any, q: Any) -> bool:
    if stored is _MISSING:
        return q is None
    if isinstance(stored, (list, tuple)):
        return any(_scalar_eq(e, q) for e in stored)
    return _scalar_eq(stored, q)


def _scalar_cmp(x: Any, op: str, q: Any) -> bool:
    if _is_number(q):
        if not _is_number(x):
            return False
    elif not (isinstance(q, str) and isinstance(x, str)):
        return False
    if op == GT:
        return x > q
    if op == GTE:
        return x >= q
    if op == LT:
        return x < q
    return x <= q


def _value_match(stored: Any, op: str, q: Any) -> bool:
    if op == EXISTS:
        return (stored is not _MISSING) == q
    if op == EQ:
        return _value_eq(stored, q)
    if op == NE:
        return not _value_eq(stored, q)
    if op == IN:
        return any(_value_eq(stored, v) for v in q)
    if op == NIN:
        return not any(_value_eq(stored, v) for v in q)
    if stored is _MISSING:
        return False
    if isinstance(stored, (list, tuple)):
        return any(_scalar_cmp(e, op, q) for e in stored)
    return _scalar_cmp(stored, op, q)


def _match_condition(c: Condition, record: Any) -> bool:
    if c.target == "field":
        name = c.path[0]
        stored = str(record.id) if name == "id" else getattr(record, name)
    elif c.target == "def":
        stored = _lookup(record.definition, c.path)
    else:
        stored = _lookup(record.metadata, c.path)
    return _value_match(stored, c.op, c.value)


__all__ = ["Condition", "Query", "parse_query", "FIELDS", "OPERATORS", "SUPPORTED", "QueryError"]
