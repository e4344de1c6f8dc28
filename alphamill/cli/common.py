"""Helpers shared by the CLI verb modules."""

from __future__ import annotations

from alphamill.errors import ConfigError


def parse_date(value: str | None, name: str) -> str | None:
    """``value`` as ``YYYY-MM-DD`` (None passes through); a clear error naming the option."""
    if value is None:
        return None
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        ts = None
    if ts is None or ts is pd.NaT:
        raise ConfigError(f"expected a date like 2020-01-31, got {value!r}", name)
    return f"{ts:%Y-%m-%d}"
