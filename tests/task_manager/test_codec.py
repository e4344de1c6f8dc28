"""The codec's one-pass hash equals canonical.task_hash; pickle needs opt-in and a signature."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphamill.canonical import canonicalize, task_hash
from alphamill.errors import CanonicalError
from alphamill.task.codec import Codec, PayloadError, fast_task_hash, plain_canonical

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_characters='\x00', blacklist_categories=('Cs',)), max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(st.characters(blacklist_characters='\x00', blacklist_categories=('Cs',)), max_size=6), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fast_hash_equals_canonical_hash(value):
    assert fast_task_hash(value) == task_hash(value)
    assert Codec("json", "p").prepare({"v": value}) == (canonicalize({"v": value}), task_hash({"v": value}))


@pytest.mark.parametrize(
    "value",
    [
        (1, 2), {"a": (1, [2, (3,)])}, -0.0, {"x": -0.0}, np.float32(0.1), np.int64(3),
        dt.date(2020, 1, 2), {"d": np.datetime64("2020-01-02")}, {"s": "-0.0"}, [True, 1, 1.0],
    ],
)
def test_non_plain_values_take_the_canonical_path(value):
    assert fast_task_hash(value) == task_hash(value)


@pytest.mark.parametrize(
    "value",
    [{1: "a"}, {"a": {2.5: 1}}, {"a": [{True: 1}]}, {None: 1}, {"a": {1, 2}}, float("nan"), {"o": object()}],
)
def test_invalid_values_fail_like_canonical(value):
    assert plain_canonical(value) is None
    with pytest.raises(CanonicalError):
        fast_task_hash(value)


def test_json_codec_refuses_objects_and_envelopes():
    c = Codec("json", "pool1")
    with pytest.raises(CanonicalError, match="result of task 7.*object.*json codec"):
        c.encode_result(object(), "7")
    with pytest.raises(CanonicalError, match="reserved"):
        c.prepare({"__pickle__": "x"})
    with pytest.raises(PayloadError, match="json codec"):
        c.decode({"__pickle__": "x", "hmac": "y"})
    assert c.decode({"a": 1}) == {"a": 1}


def test_pickle_codec_signs_and_verifies(monkeypatch):
    monkeypatch.setenv("ALPHAMILL_PICKLE_KEY", "k1")
    c = Codec("pickle", "pool1")
    obj = {"when": dt.time(9, 30), "s": {1, 2}}
    stored = c.encode_result(obj, "1")
    assert set(stored) == {"__pickle__", "hmac"}
    assert c.decode(stored) == obj
    assert c.encode_result({"a": 1}, "1") == {"a": 1}  # plain data stays queryable JSON
    tampered = dict(stored, __pickle__=stored["__pickle__"][:-4] + "AAA=")
    with pytest.raises(PayloadError, match="signature"):
        c.decode(tampered)
    with pytest.raises(PayloadError, match="unsigned"):
        c.decode({"__pickle__": stored["__pickle__"]})
    with pytest.raises(PayloadError, match="corrupt"):
        c.decode({"__pickle__": "***", "hmac": stored["hmac"]})
    monkeypatch.setenv("ALPHAMILL_PICKLE_KEY", "k2")
    with pytest.raises(PayloadError, match="signature"):
        Codec("pickle", "pool1").decode(stored)
    assert c.task_hash({"s": {1, 2}}).startswith("pickle:")


def test_numeric_looking_string_keys_stay_on_the_fast_path():
    value = {"1": {"true": [1, {"null": -1.5}]}, "x": 'a"2":'}
    assert plain_canonical(value) is not None
    assert fast_task_hash(value) == task_hash(value)
