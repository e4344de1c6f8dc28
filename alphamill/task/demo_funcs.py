"""A cheap, self-contained task function for the pool demo (``alphamill demo``).

It reads a Qlib-shaped task (``dataset.kwargs.segments`` and ``model.kwargs.alpha``),
simulates a small deterministic market in which a few signals predict next-day returns, fits a
ridge regression on the train segment and reports the test segment's information
coefficient. No data files, no MLflow: it exercises generators, the pool and the workers
in a second, before the real training pipeline is available.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alphamill.errors import ConfigError
from alphamill.kinds import task_function

N_STOCKS = 60
N_FEATURES = 5
_TRUE_W = np.array([0.6, -0.4, 0.3, 0.0, 0.1])


def _market(days: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Features and next-day returns per (day, stock); the same day always gives the same data."""
    x = np.empty((len(days), N_STOCKS, N_FEATURES))
    y = np.empty((len(days), N_STOCKS))
    for i, day in enumerate(days):
        rng = np.random.default_rng(int(day.strftime("%Y%m%d")))
        x[i] = rng.standard_normal((N_STOCKS, N_FEATURES))
        y[i] = x[i] @ _TRUE_W * 0.01 + rng.standard_normal(N_STOCKS) * 0.03
    return x, y


def _segment(task: dict[str, Any], key: str) -> pd.DatetimeIndex:
    try:
        start, end = task["dataset"]["kwargs"]["segments"][key]
    except (KeyError, TypeError, ValueError):
        raise ConfigError("expected [start, end]", f"task.dataset.kwargs.segments.{key}") from None
    return pd.bdate_range(start, end)


@task_function
def demo_train(task: dict[str, Any], **_: Any) -> dict[str, Any]:
    """Fit ridge on the train segment; return the mean daily rank IC on the test segment."""
    alpha = float(task.get("model", {}).get("kwargs", {}).get("alpha", 1.0))
    train, test = _segment(task, "train"), _segment(task, "test")
    if len(train) == 0 or len(test) == 0:
        raise ConfigError("train and test segments must hold business days", "task.dataset.kwargs.segments")
    xtr, ytr = _market(train)
    xf, yf = xtr.reshape(-1, N_FEATURES), ytr.reshape(-1)
    w = np.linalg.solve(xf.T @ xf + alpha * len(train) * np.eye(N_FEATURES), xf.T @ yf)
    xte, yte = _market(test)
    pred = xte @ w
    ics = [
        pd.Series(p).rank().corr(pd.Series(r).rank())
        for p, r in zip(pred, yte, strict=True)
    ]
    return {
        "ic": round(float(np.mean(ics)), 6),
        "icir": round(float(np.mean(ics) / (np.std(ics) + 1e-12)), 6),
        "train_days": len(train),
        "test_days": len(test),
        "weights": [round(float(v), 6) for v in w],
    }


@task_function
def noop(task: Any, **_: Any) -> None:
    """Do nothing: measures the pool's own overhead (``alphamill worker --func ...:noop``)."""
    return None
