"""Canonical JSON form and content hash of task definitions.

The pool dedupes tasks on their content hash, so the same task must hash the same
however it was built: in any key order, in any process, with tuples or lists, with
``pd.Timestamp``, ``datetime`` or ``"YYYY-MM-DD"`` strings. The rules:

* mappings: keys must be ``str`` (an int key would silently turn into a string in
  JSON and collide); output keys are sorted;
* tuples, lists and numpy arrays become lists;
* ``None``, ``bool`` and ``str`` stay as they are (``numpy.bool_`` becomes ``bool``); a
  string is never parsed, so ``"2020-01-02 00:00:00"`` and ``"2020-01-02"`` differ;
* ints stay ints (numpy integers become ``int``); floats stay floats, so ``1`` and
  ``1.0`` are *different* values (a model may treat them differently). ``-0.0`` becomes
  ``0.0``; numpy floats narrower than 64 bits take their shortest decimal form
  (``np.float32(0.1)`` becomes ``0.1``). NaN and infinities have no JSON form and raise;
* dates and times (``datetime.date``, ``datetime.datetime``, ``pd.Timestamp``,
  ``np.datetime64``): a date, or a timezone-naive timestamp at exactly midnight, becomes
  ``"YYYY-MM-DD"``; any other naive timestamp becomes its full ISO form
  (``"2020-01-02T09:30:00"``); a timezone-aware timestamp is converted to UTC and always
  keeps its time and offset (``"2020-01-02T00:00:00+00:00"``), because a day in one zone
  is not a day in another. ``NaT`` raises;
* ``pathlib`` paths become strings;
* sets raise (their order is not defined and they usually hide a mistake; pass a list);
* what no task store can hold raises (:mod:`alphamill.limits`): text with U+0000 or a lone
  surrogate, integers beyond 64 bits, nesting deeper than ``MAX_DEPTH`` levels;
* anything else (objects, functions, classes, ``Decimal`` ...) raises.

Every refusal is a :class:`~alphamill.errors.CanonicalError` naming the dotted path of
the value (``task.model.kwargs.loss``, list items as ``task.record[0]``) and its type.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import CanonicalError
from alphamill.limits import MAX_DEPTH, int_problem, text_problem

__all__ = ["canonicalize", "canonical_json", "task_hash", "iso_time"]


def iso_time(value: Any, path: str = "task") -> str:
    """The canonical string of one date or timestamp (see the module docstring)."""
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise CanonicalError(f"cannot read {value!r} as a date or timestamp ({e})", path) from None
    if ts is pd.NaT or pd.isna(ts):
        raise CanonicalError("NaT (not-a-time) has no canonical form", path)
    if ts.tzinfo is not None:
        return ts.tz_convert("UTC").isoformat()
    if ts == ts.normalize():
        return ts.strftime("%Y-%m-%d")
    return ts.isoformat()


def _float(value: float, path: str) -> float:
    if math.isnan(value) or math.isinf(value):
        raise CanonicalError(
            f"{value!r} is not representable in JSON; use None or a finite number", path
        )
    return 0.0 if value == 0.0 else value


def canonicalize(obj: Any, path: str = "task") -> Any:
    """Return the canonical JSON-compatible form of ``obj`` (see the module docstring)."""
    return _canon(obj, path, set(), 0)


def _text(value: str, path: str) -> str:
    why = text_problem(value)
    if why:
        raise CanonicalError(f"the text {why}", path)
    return value


def _canon(obj: Any, path: str, active: set[int], depth: int) -> Any:
    # Order matters: bool is an int, np.float64 is a float, pd.Timestamp is a datetime.
    if obj is None:
        return obj
    if isinstance(obj, str):
        return _text(obj, path)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        why = int_problem(int(obj))
        if why:
            raise CanonicalError(why, path)
        return int(obj)
    if isinstance(obj, np.floating) and not isinstance(obj, np.float64):
        return _float(float(str(obj)), path)
    if isinstance(obj, (float, np.floating)):
        return _float(float(obj), path)
    if isinstance(obj, (dt.date, np.datetime64)):
        return iso_time(obj, path)
    if isinstance(obj, os.PathLike):
        return _text(os.fspath(obj), path)
    nested = isinstance(obj, (Mapping, list, tuple)) or (isinstance(obj, np.ndarray) and obj.ndim > 0)
    if nested and depth >= MAX_DEPTH:
        raise CanonicalError(f"nested deeper than {MAX_DEPTH} levels", path)
    if isinstance(obj, Mapping):
        key = id(obj)
        if key in active:
            raise CanonicalError("cyclic reference (a mapping contains itself)", path)
        active.add(key)
        try:
            for k in obj:
                if not isinstance(k, str):
                    raise CanonicalError(
                        f"mapping keys must be strings, got {type(k).__name__} key {k!r}", path
                    )
                why = text_problem(k)
                if why:
                    raise CanonicalError(f"the key {k!r} {why}", path)
            return {k: _canon(obj[k], f"{path}.{k}", active, depth + 1) for k in sorted(obj)}
        finally:
            active.discard(key)
    if isinstance(obj, (list, tuple)):
        key = id(obj)
        if key in active:
            raise CanonicalError("cyclic reference (a list contains itself)", path)
        active.add(key)
        try:
            return [_canon(v, f"{path}[{i}]", active, depth + 1) for i, v in enumerate(obj)]
        finally:
            active.discard(key)
    if isinstance(obj, np.ndarray):
        if obj.ndim == 0:
            return _canon(obj[()], path, active, depth)
        return [_canon(v, f"{path}[{i}]", active, depth + 1) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        raise CanonicalError(
            f"a {type(obj).__name__} has no defined order; use a list instead", path
        )
    raise CanonicalError(
        f"a value of type {type(obj).__module__}.{type(obj).__qualname__} is not "
        "representable as JSON (expected JSON values: dict, list, str, int, "
        "float, bool, None, or a date/timestamp)",
        path,
    )


def canonical_json(obj: Any, path: str = "task") -> str:
    """Compact JSON text of the canonical form, keys sorted, non-ASCII kept as is."""
    return json.dumps(
        canonicalize(obj, path),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def task_hash(task: Any) -> str:
    """SHA-256 hex digest of :func:`canonical_json` (the pool's dedupe key)."""
    return hashlib.sha256(canonical_json(task).encode("utf-8")).hexdigest()
