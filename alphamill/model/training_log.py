"""A boosted model's training log: evaluation lines every N rounds, loss curves as metrics.

Qlib's GBDT models print the evaluation results every ``verbose_eval`` rounds and log the
train/valid curves to the active recorder as ``{metric}.{set}`` at ``step = round``
(``l2.train``, ``l2.valid``). Here the lines go to the ``alphamill.model`` logger at INFO
(shown by ``alphamill worker -v``) in LightGBM's format whichever library trains, and the
curves go to the recorder in one batched call after the fit (one call per round would cost
a database round trip each, on every window of a rolling run).

Curves are ``{set: {metric: [value per round]}}`` (LightGBM's ``record_evaluation`` shape),
with the sets named ``train`` and ``valid`` for every library.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from alphamill.errors import ConfigError
from alphamill.model.base import MODEL_PATH

logger = logging.getLogger("alphamill.model")

Curves = dict[str, dict[str, list[float]]]


def check_period(value: Any, name: str = "verbose_eval") -> int:
    """``verbose_eval`` as a period in rounds: ``True`` = every round, ``False``/0 = never."""
    if value is True:
        return 1
    if value is False or value is None:
        return 0
    if isinstance(value, int) and value >= 0:
        return value
    raise ConfigError(f"expected a number of rounds >= 0 or true/false, got {value!r}", name)


def check_rounds(value: Any, name: str) -> int:
    """A positive number of rounds; errors name ``task.model.kwargs.<name>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"expected a positive integer, got {value!r}", f"{MODEL_PATH}.{name}")
    return int(value)


def format_line(round_no: int, results: Iterable[tuple[str, str, float]]) -> str:
    """``[20]\\ttrain's l2: 0.998\\tvalid's l2: 1.0012`` (LightGBM's ``log_evaluation`` format)."""
    parts = [f"{data}'s {metric}: {value:g}" for data, metric, value in results]
    return f"[{round_no}]\t" + "\t".join(parts)


def log_round(period: int, round_no: int, results: Iterable[tuple[str, str, float]]) -> None:
    """Log the evaluation of 1-based round ``round_no`` when it falls on the period."""
    if period > 0 and round_no % period == 0 and logger.isEnabledFor(logging.INFO):
        logger.info("%s", format_line(round_no, results))


def log_best(name: str, best_round: int | None, curves: Curves) -> None:
    """One closing line: how many rounds ran and the best one's validation results."""
    if not logger.isEnabledFor(logging.INFO):
        return
    rounds = max((len(v) for metrics in curves.values() for v in metrics.values()), default=0)
    text = f"{name}: {rounds} rounds"
    if best_round is not None and "valid" in curves:
        at = [
            ("valid", metric, values[best_round - 1])
            for metric, values in curves["valid"].items()
            if 0 < best_round <= len(values)
        ]
        text += f", best {format_line(best_round, at)}"
    logger.info("%s", text)


def finish(name: str, best_round: int | None, curves: Curves, evals_result: dict | None) -> None:
    """After an XGBoost or CatBoost fit: ``evals_result`` gets Qlib's shape for those models
    (each set's first metric, ``{"train": [...], "valid": [...]}``), the closing line goes to
    the log and the curves to the active recorder."""
    if evals_result is not None:
        for data, metrics in curves.items():
            evals_result[data] = list(next(iter(metrics.values()), []))
    log_best(name, best_round, curves)
    record_curves(curves)


def metric_name(metric: str, data: str) -> str:
    """Qlib's MLflow name of one curve: ``{metric}.{set}`` with ``@`` as ``_`` (``ndcg@5``)."""
    return f"{metric}.{data}".replace("@", "_")


def metric_series(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """The curves as ``{"l2.train": [...], "l2.valid": [...]}``."""
    return {
        metric_name(metric, data): [float(v) for v in values]
        for data, metrics in curves.items()
        for metric, values in metrics.items()
    }


def record_curves(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> bool:
    """Log the curves to the active recorder, step = round (0-based, as Qlib); returns whether
    a recorder was active. Without one (a model fitted outside ``R.start``) nothing is logged,
    and the experiment store is not even imported."""
    recorder_module = sys.modules.get("alphamill.workflow.recorder")
    if recorder_module is None:
        return False
    rec = recorder_module.R.active_recorder()
    if rec is None:
        return False
    series = metric_series(curves)
    if series:
        rec.log_metric_series(series)
    return True
