"""Alpha158 features, labels, Qlib-style processors and the on-disk feature cache."""

from __future__ import annotations

from alphamill.features.alpha158 import (
    ALPHA158_EXPRESSIONS,
    ALPHA158_NAMES,
    compute_alpha158,
    compute_features_and_label,
    compute_label,
)

__all__ = [
    "ALPHA158_EXPRESSIONS",
    "ALPHA158_NAMES",
    "compute_alpha158",
    "compute_features_and_label",
    "compute_label",
]
