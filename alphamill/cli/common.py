"""Helpers shared by the CLI verb modules."""

from __future__ import annotations

import math
from typing import Any

import click

from alphamill.errors import ConfigError
from alphamill.limits import MAX_SECONDS, check_jobs


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


class Seconds(click.ParamType):
    """A finite number of seconds up to :data:`~alphamill.limits.MAX_SECONDS` (``nan`` and
    ``inf`` are refused: a NaN interval busy-loops and a NaN timeout never fires), ``> 0``
    when ``positive`` else ``>= minimum``."""

    name = "seconds"

    def __init__(self, positive: bool = False, minimum: float = 0.0):
        self.positive = positive
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number of seconds, got {value!r}", param, ctx)
        if not math.isfinite(x):
            self.fail(f"expected a finite number of seconds, got {value!r}", param, ctx)
        if self.positive and x <= 0:
            self.fail(f"expected a number of seconds > 0, got {value!r}", param, ctx)
        if x < self.minimum:
            self.fail(f"expected a number of seconds >= {self.minimum:g}, got {value!r}", param, ctx)
        if x > MAX_SECONDS:
            self.fail(f"expected at most {MAX_SECONDS:g} seconds, got {value!r}", param, ctx)
        return x


class Jobs(click.ParamType):
    """A number of local worker processes, at most :func:`alphamill.limits.max_jobs`."""

    name = "integer"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"expected an integer, got {value!r}", param, ctx)
        try:
            return check_jobs(n, param.opts[0] if param is not None else "jobs", self.minimum)
        except ConfigError as e:
            self.fail(e.message, param, ctx)
