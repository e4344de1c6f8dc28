"""The query language: parsing, validation messages and the reference semantics (``matches``)."""

from __future__ import annotations

import pytest

from alphamill.errors import AlphamillError, QueryError
from alphamill.task.backends.base import TaskRecord
from alphamill.task.query import Condition, Query, parse_query


def rec(definition=None, metadata=None, **kw) -> TaskRecord:
    base = dict(id="7", pool="p", definition=definition or {}, hash="h7", status="waiting",
                priority=0, attempts=0, metadata=metadata or {})
    base.update(kw)
    return TaskRecord(**base)


# -- parsing -----------------------------------------------------------------------------------


def test_empty_queries_select_everything():
    for q in (None, {}):
        parsed = parse_query(q)
        assert parsed.is_empty and parsed.conditions == ()
        assert parsed.matches(rec())


def test_parse_builds_conditions():
    q = parse_query({
        "_id": 17,
        "status": {"$in": ["waiting", "part_done"]},
        "def.model.kwargs.loss": "mse",
        "filter.dataset.class": {"$ne": "X"},
        "meta.rolling.index": {"$gte": 1, "$lt": 5},
    })
    assert q.conditions == (
        Condition("field", ("id",), "$eq", "17"),
        Condition("field", ("status",), "$in", ("waiting", "part_done")),
        Condition("def", ("model", "kwargs", "loss"), "$eq", "mse"),
        Condition("def", ("dataset", "class"), "$ne", "X"),
        Condition("meta", ("rolling", "index"), "$gte", 1),
        Condition("meta", ("rolling", "index"), "$lt", 5),
    )
    assert not q.is_empty
    assert q.conditions[4].name == "meta.rolling.index"


def test_and_lists_flatten():
    q = parse_query({"$and": [{"priority": {"$gt": 1}}, {"$and": [{"hash": "a"}]}], "status": "done"})
    assert [c.path for c in q.conditions] == [("priority",), ("hash",), ("status",)]


def test_parse_query_passes_parsed_queries_through():
    q = parse_query({"hash": "x"})
    assert parse_query(q) is q


def test_object_id_like_values_become_strings():
    class ObjectId:
        def __str__(self):
            return "65a1b2c3d4e5f60718293a4b"

    q = parse_query({"_id": {"$in": [ObjectId(), 3]}})
    assert q.conditions[0].value == ("65a1b2c3d4e5f60718293a4b", "3")


@pytest.mark.parametrize(
    "query, fragment",
    [
        ({"model.class": "X"}, "unknown field 'model.class'"),
        ({"definition": 1}, "unknown field 'definition'"),
        ({"def": 1}, "unknown field 'def'"),
        ({"meta.": 1}, "unknown field 'meta.'"),
        ({"$or": [{"hash": "a"}]}, "unsupported operator '$or'"),
        ({"$where": "sleep(1)"}, "unsupported operator '$where'"),
        ({"def.a": {"$regex": "^x"}}, "unsupported operator '$regex'"),
        ({"def.a": {"$gt": 1, "b": 2}}, "cannot compare with a dict"),
        ({"def.a": {"x": 1}}, "cannot compare with a dict"),
        ({"def.a": {}}, "empty operator dict"),
        ({"def.a": [1, 2]}, "query values are strings, numbers, booleans or null"),
        ({"def.a": {"$in": "abc"}}, "$in expects a list"),
        ({"def.a": {"$gt": None}}, "$gt compares with a number or a string"),
        ({"def.a": {"$lt": True}}, "$lt compares with a number or a string"),
        ({"def.a": {"$exists": 1}}, "$exists expects true or false"),
        ({"def.a": float("nan")}, "NaN"),
        ({"def.a..b": 1}, "invalid path component ''"),
        ({"def.a.0": 1}, "invalid path component '0'"),
        ({"def.a'); DROP TABLE tasks; --": 1}, "invalid path component"),
        ({'def.a"]': 1}, "invalid path component"),
        ({"status": "wating"}, "unknown status 'wating'"),
        ({"status": {"$gt": "done"}}, "operator '$gt' not supported on this field"),
        ({"hash": {"$exists": True}}, "operator '$exists' not supported on this field"),
        ({"hash": 3}, "a hash is a string"),
        ({"priority": "3"}, "expected a number"),
        ({"attempts": {"$in": [1, None]}}, "expected a number"),
        ({"_id": None}, "a task id is a string or an int"),
        ({"id": {"$lt": 3}}, "not supported on this field"),
        ({"$and": {"hash": "a"}}, "$and: expected a list"),
        ({"$and": [3]}, "expected a dict"),
        ({1: 2}, "field names must be strings"),
    ],
)
def test_bad_queries_name_the_problem(query, fragment):
    with pytest.raises(QueryError) as info:
        parse_query(query)
    assert fragment in str(info.value)
    assert isinstance(info.value, AlphamillError)


def test_non_dict_query_is_rejected():
    for bad in ("status=done", ["status"], 3):
        with pytest.raises(QueryError, match="expected a dict"):
            parse_query(bad)


def test_unknown_field_lists_supported_fields():
    with pytest.raises(QueryError) as info:
        parse_query({"owner": "me"})
    msg = str(info.value)
    for word in ("_id", "status", "priority", "def.<path>", "filter.<path>", "meta.<path>", "$in"):
        assert word in msg


# -- reference semantics -----------------------------------------------------------------------

DEF = {
    "model": {"class": "LGB", "kwargs": {"lr": 0.1, "n": 100, "loss": "mse"}},
    "tags": ["a", "b", 3],
    "flag": True,
    "nothing": None,
    "num_str": "1",
    "segments": [["2020-01-01", "2020-12-31"]],
    "date": "2020-06-30",
    "listy": [{"class": "X"}],
}
R = rec(DEF, {"rolling": {"index": 2}}, priority=5, attempts=1, status="running")


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"def.model.class": "LGB"}, True),
        ({"filter.model.class": "LGB"}, True),
        ({"def.model.class": "lgb"}, False),
        ({"def.model.kwargs.n": 100.0}, True),  # numbers compare numerically
        ({"def.model.kwargs.lr": {"$gt": 0.05, "$lte": 0.1}}, True),
        ({"def.model.kwargs.lr": {"$lt": 0.1}}, False),
        ({"def.num_str": 1}, False),  # a string never equals a number
        ({"def.num_str": "1"}, True),
        ({"def.num_str": {"$gt": 0}}, False),  # string vs number comparison is false
        ({"def.num_str": {"$gt": "0"}}, True),
        ({"def.flag": True}, True),
        ({"def.flag": 1}, False),  # a bool never equals a number
        ({"def.nothing": None}, True),
        ({"def.absent": None}, True),  # null matches a missing path (MongoDB's rule)
        ({"def.absent": 0}, False),
        ({"def.absent": {"$ne": 0}}, True),
        ({"def.absent": {"$nin": [0]}}, True),
        ({"def.absent": {"$gt": 0}}, False),
        ({"def.absent": {"$exists": False}}, True),
        ({"def.nothing": {"$exists": True}}, True),
        ({"def.nothing": {"$ne": None}}, False),
        ({"def.tags": "a"}, True),  # a list matches through its elements
        ({"def.tags": 3}, True),
        ({"def.tags": {"$ne": "a"}}, False),
        ({"def.tags": {"$in": ["z", "b"]}}, True),
        ({"def.tags": {"$nin": ["z", "b"]}}, False),
        ({"def.tags": {"$gt": 2}}, True),
        ({"def.tags": {"$gt": "a"}}, True),
        ({"def.tags": {"$gt": "b"}}, False),
        ({"def.segments": "2020-01-01"}, False),  # only one level of list is searched
        ({"def.listy.class": "X"}, False),  # paths step into dicts only
        ({"def.listy.class": {"$exists": True}}, False),
        ({"def.model.class.deeper": {"$exists": True}}, False),
        ({"def.date": {"$gte": "2020-06-01", "$lt": "2020-07-01"}}, True),
        ({"meta.rolling.index": 2}, True),
        ({"meta.rolling.index": {"$in": [0, 1]}}, False),
        ({"meta.rolling": {"$exists": True}}, True),
        ({"_id": 7}, True),
        ({"id": "7"}, True),
        ({"_id": {"$nin": ["7"]}}, False),
        ({"status": "running"}, True),
        ({"status": {"$ne": "running"}}, False),
        ({"priority": {"$gte": 5}}, True),
        ({"priority": {"$in": [1, 2]}}, False),
        ({"attempts": {"$lt": 1}}, False),
        ({"hash": "h7"}, True),
        ({"hash": "h7", "priority": 4}, False),  # fields are ANDed
        ({"$and": [{"hash": "h7"}, {"priority": 5}]}, True),
    ],
)
def test_matches_reference_semantics(query, expected):
    assert parse_query(query).matches(R) is expected


def test_query_repr_is_readable():
    assert "meta.rolling.index $gte 1" in repr(parse_query({"meta.rolling.index": {"$gte": 1}}))
    assert repr(Query()) == "Query()"
