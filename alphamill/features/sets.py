"""The named feature sets the feature cache computes, and which handler reads which.

A set is Qlib's ``(expressions, names)`` pair; the cache keys an entry by the set's
expressions (besides the data and the label), so two sets never share an entry.
"""

from __future__ import annotations

from alphamill.errors import ConfigError

DEFAULT_SET = "alpha158"
#: Handler class name -> the feature set it loads from the cache.
HANDLER_SETS = {"Alpha158": "alpha158", "Alpha360": "alpha360"}
FEATURE_SETS = tuple(HANDLER_SETS.values())


def feature_config(name: str = DEFAULT_SET) -> tuple[list[str], list[str]]:
    """``(expressions, names)`` of feature set ``name``, in Qlib's order."""
    if name == "alpha158":
        from alphamill.features.alpha158 import ALPHA158_EXPRESSIONS, ALPHA158_NAMES

        return list(ALPHA158_EXPRESSIONS), list(ALPHA158_NAMES)
    if name == "alpha360":
        from alphamill.features.alpha360 import ALPHA360_EXPRESSIONS, ALPHA360_NAMES

        return list(ALPHA360_EXPRESSIONS), list(ALPHA360_NAMES)
    raise ConfigError(f"unknown feature set {name!r}; expected one of {', '.join(FEATURE_SETS)}", "features")
