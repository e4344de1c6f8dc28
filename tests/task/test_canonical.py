"""Canonical form and content hash: same task in any shape -> same hash."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphamill.canonical import canonical_json, canonicalize, iso_time, task_hash
from alphamill.errors import CanonicalError, ConfigError

TASK = {
    "model": {
        "class": "LGBModel",
        "module_path": "alphamill.model.gbdt",
        "kwargs": {"loss": "mse", "learning_rate": 0.2, "num_leaves": 210},
    },
    "dataset": {
        "class": "DatasetH",
        "module_path": "alphamill.data.dataset",
        "kwargs": {
            "segments": {
                "train": ("2008-01-01", "2014-12-31"),
                "valid": ("2015-01-01", "2016-12-31"),
                "test": ("2017-01-01", "2020-08-01"),
            }
        },
    },
    "record": [{"class": "SignalRecord"}],
}


def strict_eq(a, b) -> bool:
    """Equality that tells 1 from 1.0 and True from 1 (Python's == does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_eq(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b, strict=True))
    return a == b


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what every store holds
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_characters='\x00', blacklist_categories=('Cs',)), max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(st.characters(blacklist_characters='\x00', blacklist_categories=('Cs',)), max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def shuffled(obj, rng: random.Random):
    """The same value with every dict's insertion order permuted and lists as tuples."""
    if isinstance(obj, dict):
        keys = list(obj)
        rng.shuffle(keys)
        return {k: shuffled(obj[k], rng) for k in keys}
    if isinstance(obj, list):
        items = [shuffled(v, rng) for v in obj]
        return tuple(items) if rng.random() < 0.5 else items
    return obj


@settings(max_examples=150, deadline=None)
@given(json_values, st.integers(0, 2**32))
def test_permuted_orders_and_tuples_hash_equal(value, seed):
    other = shuffled(value, random.Random(seed))
    assert canonical_json(value) == canonical_json(other)
    assert task_hash(value) == task_hash(other)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_round_trip(value):
    assert strict_eq(json.loads(canonical_json(value)), canonicalize(value))


@settings(max_examples=200, deadline=None)
@given(json_values, json_values)
def test_different_values_give_different_json(a, b):
    ca, cb = canonicalize(a), canonicalize(b)
    if not strict_eq(ca, cb):
        assert canonical_json(a) != canonical_json(b)
        assert task_hash(a) != task_hash(b)
    else:
        assert canonical_json(a) == canonical_json(b)


@settings(max_examples=100, deadline=None)
@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2200, 12, 31)))
def test_same_day_in_every_type_is_equal(day):
    text = day.isoformat()
    forms = [
        text,
        day,
        dt.datetime(day.year, day.month, day.day),
        pd.Timestamp(day),
        np.datetime64(text),
        np.datetime64(text, "ns"),
    ]
    hashes = {task_hash({"seg": [f, f]}) for f in forms}
    assert len(hashes) == 1
    assert canonicalize(forms[3]) == text


def test_task_in_any_order_same_hash():
    rng = random.Random(7)
    h = task_hash(TASK)
    for _ in range(20):
        assert task_hash(shuffled(json.loads(json.dumps(TASK)), rng)) == h
    # the segments as Timestamps instead of strings
    task = json.loads(json.dumps(TASK))
    task["dataset"]["kwargs"]["segments"]["train"] = (
        pd.Timestamp("2008-01-01"),
        dt.date(2014, 12, 31),
    )
    assert task_hash(task) == h


def test_hash_is_stable_across_processes():
    code = (
        "from alphamill.canonical import task_hash;"
        "print(task_hash({'b': [1, 2.5, 'é'], 'a': {'y': None, 'x': True}}))"
    )
    root = Path(__file__).resolve().parents[2]
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {task_hash({"a": {"x": True, "y": None}, "b": (1, 2.5, "é")})}


def test_canonical_json_is_compact_sorted_and_keeps_unicode():
    assert canonical_json({"b": 1, "a": [1.0, "é", None]}) == '{"a":[1.0,"é",null],"b":1}'


def test_numbers():
    assert strict_eq(canonicalize(np.int64(3)), 3)
    assert strict_eq(canonicalize(np.float64(0.5)), 0.5)
    assert strict_eq(canonicalize(np.float32(0.1)), 0.1)
    assert strict_eq(canonicalize(np.bool_(True)), True)
    assert strict_eq(canonicalize(True), True)
    assert math.copysign(1.0, canonicalize(-0.0)) == 1.0
    assert canonical_json(-0.0) == canonical_json(0.0)
    # an int and an integral float stay distinct
    assert canonical_json(1) != canonical_json(1.0)
    assert canonical_json(True) != canonical_json(1)
    assert canonicalize(np.array([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]
    assert canonicalize(np.array(2.5)) == 2.5


def test_times():
    assert iso_time(pd.Timestamp("2020-01-02 09:30")) == "2020-01-02T09:30:00"
    assert iso_time(dt.datetime(2020, 1, 2, 0, 0, 0, 5)) == "2020-01-02T00:00:00.000005"
    aware = pd.Timestamp("2020-01-02 08:00", tz="Asia/Shanghai")
    assert iso_time(aware) == "2020-01-02T00:00:00+00:00"
    assert canonicalize(Path("/a/b.py")) == "/a/b.py"


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ({"model": {"kwargs": {"loss": object()}}}, "task.model.kwargs.loss", "builtins.object"),
        ({"model": {"kwargs": {"f": len}}}, "task.model.kwargs.f", "builtin_function_or_method"),
        ({"model": {"class": dict}}, "task.model.class", "type"),
        ({"x": float("nan")}, "task.x", "not representable"),
        ({"x": [1, float("inf")]}, "task.x[1]", "not representable"),
        ({"x": {1: 2}}, "task.x", "keys must be strings"),
        ({"x": {1, 2}}, "task.x", "use a list"),
        ({"x": pd.NaT}, "task.x", "NaT"),
        ({"x": np.datetime64("NaT")}, "task.x", "NaT"),
        ({"record": [{"kwargs": {"d": pd.DataFrame()}}]}, "task.record[0].kwargs.d", "DataFrame"),
    ],
)
def test_unrepresentable_values_name_the_path(value, path, words):
    with pytest.raises(CanonicalError) as info:
        task_hash(value)
    assert info.value.path == path
    assert str(info.value).startswith(path + ":")
    assert words in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_cycles_are_refused():
    a: dict = {}
    a["self"] = a
    with pytest.raises(CanonicalError, match="cyclic"):
        canonicalize(a)
    shared = [1, 2]
    assert canonicalize({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}
