"""Group collected results by key, then reduce each group with an ensemble."""

from __future__ import annotations

from collections.abc import Callable

from alphamill.ens.ensemble import Ensemble, RollingEnsemble
from alphamill.errors import ConfigError


class Group:
    """``{(A,B,C1): x, (A,B,C2): y} -> {(A,B): {C1: x, C2: y}} -> {(A,B): ens(...)}``."""

    def __init__(self, group_func: Callable[[dict], dict] | None = None, ens: Ensemble | None = None):
        self._group_func = group_func
        self._ens_func = ens

    def group(self, ungrouped: dict) -> dict:
        if self._group_func is None:
            raise ConfigError("Group needs a group_func", "Group")
        return self._group_func(ungrouped)

    def reduce(self, grouped_value: dict):
        if self._ens_func is None:
            raise ConfigError("Group needs an ensemble (ens=...) to reduce", "Group")
        return self._ens_func(grouped_value)

    def __call__(self, ungrouped_dict: dict) -> dict:
        return {key: self.reduce(value) for key, value in self.group(ungrouped_dict).items()}


class RollingGroup(Group):
    """Group ``{(A, B, window): pred}`` into ``{(A, B): {window: pred}}`` and merge the windows.

    The rolling key must be the last element of each key tuple.
    """

    def __init__(self, ens: Ensemble | None = None):
        super().__init__(ens=ens or RollingEnsemble())

    def group(self, rolling_dict: dict) -> dict:
        grouped: dict = {}
        for key, value in rolling_dict.items():
            if not isinstance(key, tuple) or not key:
                raise ConfigError(f"expected tuple keys ending with the rolling key, got {key!r}", "RollingGroup")
            grouped.setdefault(key[:-1], {})[key[-1]] = value
        return grouped
