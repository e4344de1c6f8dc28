"""Placeholders in task configs (Qlib's ``fill_placeholder``).

Two kinds, as in Qlib:

* a string ``"<a.b.0>"`` is replaced by the value at that dotted path of the task itself
  (dict keys, or list indices written as integers), e.g.
  ``fit_end_time: "<dataset.kwargs.segments.train.1>"``;
* a string equal to a key of ``config_dict`` (``"<MODEL>"``, ``"<DATASET>"``) is replaced by
  the object given for it. A one-word placeholder that is neither given nor a top-level key
  of the task (``"<MODEL>"``, ``"<DATASET>"``, a record's ``"<PRED>"``) is left in place, so a
  task can be resolved before the objects it refers to exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from alphamill.errors import ConfigError

#: Placeholders that stand for objects built while a task runs.
OBJECT_PLACEHOLDERS = ("<MODEL>", "<DATASET>", "<PRED>")

_PLACEHOLDER_RE = re.compile(r"<([A-Za-z_][\w]*(?:\.[\w-]+)*)>")  # fullmatch: no newline


def get_item_from_obj(config: Any, name_path: str, where: str = "task") -> Any:
    """The value at dotted ``name_path`` of ``config``; integers index lists."""
    cur = config
    walked: list[str] = []
    for key in name_path.split("."):
        if isinstance(cur, Mapping) and key in cur:
            cur = cur[key]
        elif isinstance(cur, (list, tuple)) and key.lstrip("-").isdigit() and -len(cur) <= int(
            key
        ) < len(cur):
            cur = cur[int(key)]
        else:
            at = ".".join(walked) or "the task"
            raise ConfigError(f"placeholder <{name_path}>: {at} has no item {key!r}", where)
        walked.append(key)
    return cur


def fill_placeholder(config: Any, config_dict: Mapping[str, Any] | None = None) -> Any:
    """A copy of ``config`` with every placeholder replaced (see the module docstring).

    Containers are copied; other values (including the objects of ``config_dict``) are shared.
    A placeholder whose target is itself a placeholder is followed; a cycle is an error.
    """
    objects = dict(config_dict or {})

    def resolve(value: str, where: str, seen: tuple[str, ...]) -> Any:
        if value in objects:
            return objects[value]
        if value in OBJECT_PLACEHOLDERS:
            return value
        m = _PLACEHOLDER_RE.fullmatch(value)
        if not m:
            return value
        name = m.group(1)
        if "." not in name and not (isinstance(config, Mapping) and name in config):
            return value
        if value in seen:
            raise ConfigError(f"placeholder cycle {' -> '.join((*seen, value))}", where)
        target = get_item_from_obj(config, name, where)
        return walk(target, where, (*seen, value))

    def walk(value: Any, where: str, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(value, str):
            return resolve(value, where, seen)
        if isinstance(value, Mapping):
            return {k: walk(v, f"{where}.{k}", seen) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}.{i}", seen) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(walk(v, f"{where}.{i}", seen) for i, v in enumerate(value))
        return value

    return walk(config, "task")
