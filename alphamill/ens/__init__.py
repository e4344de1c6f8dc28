"""Grouping and ensembling of collected results (Qlib's ``qlib.model.ens``)."""

from alphamill.ens.ensemble import (
    AverageEnsemble,
    Ensemble,
    ICWeightedEnsemble,
    RollingEnsemble,
    SingleKeyEnsemble,
)
from alphamill.ens.group import Group, RollingGroup

__all__ = [
    "AverageEnsemble",
    "Ensemble",
    "Group",
    "ICWeightedEnsemble",
    "RollingEnsemble",
    "RollingGroup",
    "SingleKeyEnsemble",
]
