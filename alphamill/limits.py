"""The bounds every input is held to, checked once here so every entry point agrees.

A value that one store accepts and another refuses makes a pool behave differently on each
backend, and a refusal half-way through a batch is a half-written batch. So the limits of
the strictest store apply everywhere, and they are checked before anything is stored:

* **text** holds no U+0000 (PostgreSQL's ``text``/``jsonb`` refuse it) and no lone
  surrogate (not Unicode: no driver can encode it);
* **integers** fit in 64 bits (MongoDB's BSON, SQLite's INTEGER); **priorities** and
  attempt limits in 32 bits (PostgreSQL's ``integer`` columns);
* **nesting** is at most :data:`MAX_DEPTH` levels (MongoDB refuses documents deeper than
  100, parsers recurse);
* **durations** are finite numbers of seconds up to :data:`MAX_SECONDS` (NaN never
  compares, so a NaN poll interval busy-loops and a NaN timeout never fires; a sleep beyond
  the platform's limit raises);
* **local worker processes** are at most :func:`max_jobs` (a typo such as ``--jobs 100000``
  would fork until the machine stops).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from alphamill.errors import ConfigError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Deepest nesting of dicts and lists in a stored payload (a task, its metadata, a result).
MAX_DEPTH = 64
#: Longest duration accepted anywhere (about three years): longer is a typo, and the
#: platform's sleeps and waits overflow beyond ~9e9 s.
MAX_SECONDS = 1e8
#: Most tasks one claim may take (``--prefetch``); a claim is one statement and one lease each.
MAX_CLAIM = 10_000
#: Local worker processes per core, and the floor for small machines.
JOBS_PER_CORE = 8
MIN_MAX_JOBS = 16

_SURROGATE = re.compile("[\ud800-\udfff]")
#: An escaped NUL in JSON text that is not an escaped backslash followed by ``u0000``.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_LONG_DIGITS = re.compile(r"\d{19}")


def max_jobs() -> int:
    """Most local worker processes one command may start: 8 per core, at least 16."""
    return max(MIN_MAX_JOBS, JOBS_PER_CORE * (os.cpu_count() or 1))


def check_jobs(value: Any, field: str, minimum: int = 1) -> int:
    """A number of local worker processes in ``[minimum, max_jobs()]``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"expected an integer >= {minimum}, got {value!r}", field)
    if value > max_jobs():
        raise ConfigError(
            f"{value} worker processes is more than this machine's limit of {max_jobs()} "
            f"({JOBS_PER_CORE} per core, at least {MIN_MAX_JOBS}); start workers on more machines",
            field,
        )
    return value


def check_seconds(value: Any, field: str, *, positive: bool = False) -> float:
    """A finite number of seconds up to :data:`MAX_SECONDS`, ``> 0`` when ``positive`` else
    ``>= 0``."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        ok = (
            math.isfinite(value)
            and (value > 0 if positive else value >= 0)
            and value <= MAX_SECONDS
        )
    if not ok:
        kind = "positive" if positive else "non-negative"
        raise ConfigError(
            f"expected a finite {kind} number of seconds up to {MAX_SECONDS:g}, got {value!r}",
            field,
        )
    return float(value)


def check_int32(value: Any, field: str) -> int:
    """An integer of a 32-bit column (priorities, attempt limits)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", field)
    if not INT32_MIN <= value <= INT32_MAX:
        raise ConfigError(
            f"expected an integer between {INT32_MIN} and {INT32_MAX}, got {value}", field
        )
    return value


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or ``None``."""
    if "\x00" in text:
        return "contains the character U+0000 (NUL), which a task pool cannot hold (PostgreSQL refuses it)"
    if not text.isascii():
        m = _SURROGATE.search(text)
        if m:
            return f"contains a lone surrogate U+{ord(m.group()):04X}, which is not Unicode text"
    return None


def int_problem(value: int) -> str | None:
    """Why the integer ``value`` cannot be stored, or ``None``."""
    if INT64_MIN <= value <= INT64_MAX:
        return None
    return f"the integer {value} does not fit in 64 bits (use a float or a string)"


def json_needs_check(text: str) -> bool:
    """Whether compact JSON ``text`` may break a rule above (a cheap screen; no false negatives).

    Plain tasks pass without a walk: a NUL appears as ``\\u0000``, a surrogate as a raw
    surrogate character, an integer beyond 64 bits needs 19 digits, and nesting deeper
    than :data:`MAX_DEPTH` needs more than that many brackets.
    """
    if "\\u0000" in text and _JSON_NUL.search(text):
        return True
    if not text.isascii() and _SURROGATE.search(text):
        return True
    if _LONG_DIGITS.search(text):
        return True
    return text.count("{") + text.count("[") > MAX_DEPTH


def storable_problem(value: Any, where: str) -> tuple[str, str] | None:
    """``(path, reason)`` of the first part of ``value`` no store can hold, or ``None``.

    Walks dicts, lists and tuples iteratively (any depth without recursion); keys count as
    text. ``where`` names the root in the returned path.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        obj, path, depth = stack.pop()
        if isinstance(obj, str):
            why = text_problem(obj)
            if why:
                return path, why
        elif isinstance(obj, int) and not isinstance(obj, bool):
            why = int_problem(obj)
            if why:
                return path, why
        elif isinstance(obj, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels"
            if isinstance(obj, dict):
                for k in obj:
                    why = text_problem(k) if isinstance(k, str) else None
                    if why:
                        return path, f"key {k!r} {why}"
                # pushed in reverse, so the first problem in reading order is found first
                stack.extend((obj[k], f"{path}.{k}", depth + 1) for k in reversed(list(obj)))
            else:
                stack.extend((obj[i], f"{path}[{i}]", depth + 1) for i in reversed(range(len(obj))))
    return None


__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_CLAIM",
    "MAX_SECONDS",
    "MAX_DEPTH",
    "check_int32",
    "check_jobs",
    "check_seconds",
    "int_problem",
    "json_needs_check",
    "max_jobs",
    "storable_problem",
    "text_problem",
]
