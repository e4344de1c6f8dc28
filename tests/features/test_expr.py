"""The Qlib expression parser: what it accepts and the errors it gives."""

from __future__ import annotations

import numpy as np
import pytest

from alphamill.errors import ConfigError
from alphamill.features import expr as ex
from alphamill.features import ops
from alphamill.features.alpha158 import ALPHA158_EXPRESSIONS, DEFAULT_LABEL_EXPR


def test_parses_every_alpha158_expression_without_look_ahead():
    for e in ALPHA158_EXPRESSIONS:
        assert ex.max_lookahead(ex.parse(e)) == 0, e
    assert ex.max_lookahead(ex.parse(DEFAULT_LABEL_EXPR)) == 2


def test_equivalent_spellings_share_one_node():
    assert ex.parse("Ref($close,1)") == ex.parse("Ref( $close , 1 )")
    assert ex.parse("Mean($close, 5)") != ex.parse("Mean($close, 10)")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "non-empty"),
        ("Mean($close, 5", "cannot parse"),
        ("Foo($close)", "not supported"),
        ("Mean($close, 2.5)", "integer"),
        ("Mean($close, 0)", ">= 1"),
        ("Mean($close)", "expects 2"),
        ("Ref($close, 0)", "Ref"),
        ("Quantile($close, 5, 1.5)", "Quantile"),
        ("close + 1", "unknown name"),
        ("Mean(5, 5)", "must be an expression"),
        ("$close ** 2", "unsupported syntax"),
        ("__import__('os')", "not supported|unknown name"),
    ],
)
def test_bad_expressions(text, match):
    with pytest.raises(ConfigError, match=match):
        ex.parse(text)


def test_unknown_field_is_named():
    grid = ops.Grid.from_present(np.ones((3, 1), dtype=bool))
    ev = ex.Evaluator({"close": np.ones((3, 1), dtype=np.float32)}, grid)
    with pytest.raises(ConfigError, match=r"\$amount"):
        ev.evaluate_many([ex.parse("$amount/$close")], lambda i, v: None)


def test_constants_broadcast_and_comparisons_are_float_at_top_level():
    grid = ops.Grid.from_present(np.ones((4, 1), dtype=bool))
    close = np.array([[1], [2], [2], [np.nan]], dtype=np.float32)
    got = {}
    ex.Evaluator({"close": close}, grid).evaluate_many(
        [ex.parse("$close>Ref($close, 1)"), ex.parse("Mean(Greater($close, 1.5), 2)")],
        lambda i, v: got.__setitem__(i, v),
    )
    np.testing.assert_array_equal(got[0][:, 0], [False, True, False, False])
    np.testing.assert_allclose(got[1][:, 0], [1.5, 1.75, 2.0, 2.0])
