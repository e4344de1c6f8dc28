"""Ensembles merge a dict of per-model (or per-window) results into one.

Values are predictions indexed by (datetime, instrument): a Series, or a DataFrame with a
single score column. Every ensemble returns a DataFrame with one column ``score``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError


def _as_score(key: Any, value: Any) -> pd.Series:
    """One member's prediction as a float Series named ``score``; errors name the member."""
    if isinstance(value, pd.DataFrame):
        if value.shape[1] != 1:
            raise ConfigError(
                f"expected a single score column, got columns {list(value.columns)}", f"ensemble[{key!r}]"
            )
        value = value.iloc[:, 0]
    if not isinstance(value, pd.Series):
        raise ConfigError(f"expected a Series or DataFrame, got {type(value).__name__}", f"ensemble[{key!r}]")
    if "datetime" not in (value.index.names or []):
        raise ConfigError("expected an index with a 'datetime' level", f"ensemble[{key!r}]")
    return value.astype("float64").rename("score")


def _check_members(ensemble_dict: Mapping) -> None:
    if not isinstance(ensemble_dict, Mapping) or not ensemble_dict:
        raise ConfigError("expected a non-empty dict of predictions", "ensemble")


def cs_zscore(score: pd.Series) -> pd.Series:
    """Cross-sectional z-score per day (ddof 0; a day with zero spread becomes 0)."""
    g = score.groupby(level="datetime")
    std = g.transform("std", ddof=0)
    z = (score - g.transform("mean")) / std.where(std > 0)
    return z.where(std > 0, 0.0).where(score.notna())


class Ensemble:
    """Merge ``{name: result}`` into one result."""

    def __call__(self, ensemble_dict: dict, *args, **kwargs):
        raise NotImplementedError


class SingleKeyEnsemble(Ensemble):
    """``{only_key: value} -> value`` (recursively); dicts with several keys are kept."""

    def __call__(self, ensemble_dict: Any, recursion: bool = True) -> Any:
        if not isinstance(ensemble_dict, dict):
            return ensemble_dict
        if recursion:
            ensemble_dict = {k: self(v, recursion) for k, v in ensemble_dict.items()}
        if len(ensemble_dict) == 1:
            return next(iter(ensemble_dict.values()))
        return ensemble_dict


class RollingEnsemble(Ensemble):
    """Concatenate rolling windows into one continuous prediction.

    Windows are ordered by their first date; where two windows cover the same
    (datetime, instrument), the window that starts later wins, because it was trained
    on more recent data. The keys of the dict are ignored.
    """

    def __call__(self, ensemble_dict: dict) -> pd.DataFrame:
        _check_members(ensemble_dict)
        members = [_as_score(k, v) for k, v in ensemble_dict.items()]
        members = [m for m in members if len(m)]
        if not members:
            return pd.DataFrame({"score": pd.Series(dtype="float64")})
        members.sort(key=lambda s: s.index.get_level_values("datetime").min())
        merged = pd.concat(members)
        merged = merged[~merged.index.duplicated(keep="last")].sort_index()
        return merged.to_frame("score")


class AverageEnsemble(Ensemble):
    """Per-day cross-sectional z-score of every member, then the mean across members.

    Z-scoring first puts models with different output scales on equal footing (a raw
    mean lets the model with the widest spread dominate). Missing members on a row are
    ignored; a row is kept when at least one member scores it.
    """

    def __call__(self, ensemble_dict: dict) -> pd.DataFrame:
        _check_members(ensemble_dict)
        zs = pd.concat([cs_zscore(_as_score(k, v)) for k, v in ensemble_dict.items()], axis=1)
        return zs.mean(axis=1).rename("score").sort_index().to_frame()


class ICWeightedEnsemble(Ensemble):
    """Dynamic weights from each member's trailing out-of-sample IC, with no look-ahead.

    For day ``t`` the weight of member ``i`` is::

        m_i(t) = mean of IC_i(s) for the last ``window`` days s with s <= t - label_delay
        w_i(t) = max(m_i(t), 0) / sum_j max(m_j(t), 0)

    where ``IC_i(s)`` is the cross-sectional Pearson correlation between member ``i``'s
    score and the label on day ``s``. ``label_delay`` is the number of trading days
    after ``s`` at which the label of ``s`` is known (2 for Qlib's default label
    ``Ref($close,-2)/Ref($close,-1)-1``), so only realised labels are used. Days with
    fewer than ``min_periods`` usable IC values, or where no member has a positive
    trailing IC, use equal weights. The combined score is ``sum_i w_i(t) * z_i(t)``
    with ``z_i`` the per-day z-score of member ``i`` (a missing member's weight is
    redistributed over the present ones).
    """

    def __init__(self, label: pd.Series | pd.DataFrame, window: int = 20, min_periods: int = 5, label_delay: int = 2):
        if window < 1 or min_periods < 1 or label_delay < 0:
            raise ConfigError("window and min_periods must be >= 1 and label_delay >= 0", "ICWeightedEnsemble")
        self.label = _as_score("label", label)
        self.window, self.min_periods, self.label_delay = window, min_periods, label_delay
        self.weights_: pd.DataFrame | None = None

    def _daily_ic(self, score: pd.Series) -> pd.Series:
        df = pd.concat([score, self.label.rename("label")], axis=1, join="inner").dropna()
        return df.groupby(level="datetime").apply(lambda d: d["score"].corr(d["label"]) if len(d) > 1 else np.nan)

    def __call__(self, ensemble_dict: dict) -> pd.DataFrame:
        _check_members(ensemble_dict)
        keys = list(ensemble_dict)
        scores = {k: _as_score(k, v) for k, v in ensemble_dict.items()}
        zs = pd.concat([cs_zscore(scores[k]).rename(k) for k in keys], axis=1)
        days = zs.index.get_level_values("datetime").unique().sort_values()
        ic = pd.concat([self._daily_ic(scores[k]).rename(k) for k in keys], axis=1).reindex(days)
        # trailing mean over the window, then shifted so that day t only sees s <= t - label_delay
        trailing = ic.rolling(self.window, min_periods=self.min_periods).mean().shift(self.label_delay)
        pos = trailing.clip(lower=0)
        total = pos.sum(axis=1)
        weights = pos.div(total.where(total > 0), axis=0)
        equal = pd.DataFrame(1.0 / len(keys), index=days, columns=keys)
        weights = weights.where(total > 0, equal).fillna(0.0)
        self.weights_ = weights
        w = weights.reindex(zs.index.get_level_values("datetime")).set_axis(zs.index)
        w = w.where(zs.notna(), 0.0)
        norm = w.sum(axis=1)
        combined = (zs.fillna(0.0) * w).sum(axis=1) / norm.where(norm > 0)
        return combined.where(zs.notna().any(axis=1)).rename("score").sort_index().to_frame()
