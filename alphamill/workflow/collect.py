"""Collectors: gather artifacts of many recorders into dicts (Qlib's ``qlib.workflow.task.collect``).

``RecorderCollector(experiment)`` lists the recorders of an experiment, keeps those whose
status is in ``status`` (default ``{"FINISHED"}``) and that pass ``rec_filter_func``, and
loads the artifacts named in ``artifacts_path`` from each: the result is
``{artifact_key: {rec_key: artifact}}``. Then every entry of ``process_list`` (a
:class:`~alphamill.ens.Group`, an ensemble, or any callable) is applied in turn.

Differences from Qlib, on purpose:

* two recorders with the same key are an error naming both runs (Qlib silently keeps one),
  unless ``duplicate="latest"``: then the one that finished last wins;
* a missing artifact is an error naming the run and the artifact (``missing="skip"`` skips
  that recorder instead, Qlib's ``only_exist``);
* recorders of stage one of delayed training (tag ``alphamill.stage=part_done``: nothing
  fitted yet) are left out, as are recorders without a task record;
* the default key is :func:`default_rec_key`: ``(model class, variant, window index)``
  built from the task's ``meta`` (what the task generators record), so
  :class:`~alphamill.ens.RollingGroup` merges the windows of each model and variant.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from alphamill.errors import AlphamillError, ConfigError

__all__ = [
    "Collector",
    "MergeCollector",
    "RecorderCollector",
    "CollectError",
    "default_rec_key",
    "task_of",
    "variant_label",
]

TASK_ARTIFACT = "task.json"
STAGE_TAG = "alphamill.stage"


class CollectError(AlphamillError):
    """Collection found duplicates or missing artifacts; the message names the runs."""


def task_of(rec: Any) -> dict[str, Any]:
    """The task recorded with ``rec`` (artifact ``task.json``), cached on the recorder."""
    cached = getattr(rec, "_alphamill_task", None)
    if cached is not None:
        return cached
    task = rec.load_object(TASK_ARTIFACT)
    if isinstance(task, (str, bytes)):
        task = json.loads(task)
    if not isinstance(task, dict):
        raise CollectError(f"run {rec.id}: {TASK_ARTIFACT} does not hold a task dict")
    with contextlib.suppress(AttributeError):
        rec._alphamill_task = task
    return task


def _model_class(task: Mapping[str, Any]) -> str:
    model = task.get("model")
    cls = model.get("class") if isinstance(model, Mapping) else model
    return str(cls).rsplit(".", 1)[-1] if cls is not None else "model"


def _short(path: str) -> str:
    """``model.kwargs.learning_rate`` -> ``learning_rate`` for labels."""
    return path.rsplit(".", 1)[-1]


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def variant_label(task: Mapping[str, Any]) -> str:
    """What distinguishes a task from its siblings other than the window: grid values and
    horizon, as ``"learning_rate=0.1 loss=mse horizon=5"`` ("" when nothing)."""
    meta = task.get("meta") or {}
    parts = []
    grid = meta.get("grid") if isinstance(meta, Mapping) else None
    if isinstance(grid, Mapping):
        parts += [f"{_short(k)}={_value(v)}" for k, v in grid.items()]
    if isinstance(meta, Mapping) and meta.get("horizon") is not None:
        parts.append(f"horizon={meta['horizon']}")
    return " ".join(parts)


def window_index(task: Mapping[str, Any]) -> int:
    """The rolling window index from ``meta.rolling.index`` (0 for a task that is not rolled)."""
    meta = task.get("meta") or {}
    rolling = meta.get("rolling") if isinstance(meta, Mapping) else None
    if isinstance(rolling, Mapping) and rolling.get("index") is not None:
        return int(rolling["index"])
    return 0


def default_rec_key(rec: Any) -> tuple[str, str, int]:
    """``(model class, variant label, window index)`` of a recorder's task."""
    task = task_of(rec)
    return (_model_class(task), variant_label(task), window_index(task))


class Collector:
    """Collect something into a dict, then apply ``process_list`` to it (Qlib's interface)."""

    def __init__(self, process_list: Iterable[Callable[[dict], Any]] | Callable[[dict], Any] | None = None):
        if process_list is None:
            process_list = []
        elif callable(process_list):
            process_list = [process_list]
        self.process_list = list(process_list)

    def collect(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def process_collect(collected_dict: dict, process_list: Iterable[Callable[[dict], Any]] = (),
                        *args: Any, **kwargs: Any) -> dict:
        """Apply each process in turn to every artifact's dict (Qlib's semantics): for
        ``{"pred": {key: pred}}`` a :class:`~alphamill.ens.RollingGroup` receives
        ``{key: pred}``."""
        if callable(process_list):
            process_list = [process_list]
        process_list = list(process_list)
        for i, process in enumerate(process_list):
            if not callable(process):
                raise ConfigError(f"expected a callable (a Group or an ensemble), got {process!r}",
                                  f"process_list[{i}]")
        result = {}
        for artifact, value in collected_dict.items():
            for process in process_list:
                value = process(value, *args, **kwargs)
            result[artifact] = value
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.process_collect(self.collect(), self.process_list, *args, **kwargs)


class MergeCollector(Collector):
    """Merge several collectors: ``{(collector_key, key): value}`` (or ``merge_func``'s key)."""

    def __init__(self, collector_dict: Mapping[str, Collector], process_list: Any = None,
                 merge_func: Callable[[Any, Any], Any] | None = None):
        super().__init__(process_list)
        if not isinstance(collector_dict, Mapping):
            raise ConfigError("expected a dict of collectors", "collector_dict")
        self.collector_dict = dict(collector_dict)
        self.merge_func = merge_func

    def collect(self) -> dict:
        out: dict = {}
        for ckey, collector in self.collector_dict.items():
            collected = collector()
            if not isinstance(collected, Mapping):
                raise CollectError(f"collector {ckey!r} returned a {type(collected).__name__}, not a dict")
            for key, value in collected.items():
                new = self.merge_func(ckey, key) if self.merge_func is not None else (ckey, key)
                if new in out:
                    raise CollectError(f"merged key {new!r} appears twice (collector {ckey!r})")
                out[new] = value
        return out


class RecorderCollector(Collector):
    """Artifacts of the recorders of one experiment: ``{artifact_key: {rec_key: object}}``.

    ``experiment`` is an experiment name, an :class:`~alphamill.workflow.recorder.Experiment`,
    or a callable returning one. ``artifacts_path`` maps keys to artifact names
    (``{"pred": "pred.pkl", "label": "label.pkl"}``; ``.pkl`` names find the Parquet files
    the records store); ``artifacts_key`` picks some of them; the key ``"__raw"`` yields
    the recorder itself. ``duplicate`` is ``"error"`` (default) or ``"latest"``;
    ``missing`` is ``"error"`` (default) or ``"skip"``. ``recorders`` (a list of recorders
    or run ids) restricts collection to those runs.
    """

    ART_KEY_RAW = "__raw"

    def __init__(
        self,
        experiment: Any,
        process_list: Any = None,
        rec_key_func: Callable[[Any], Any] | None = None,
        rec_filter_func: Callable[[Any], bool] | None = None,
        artifacts_path: Mapping[str, str] | None = None,
        artifacts_key: str | Iterable[str] | None = None,
        list_kwargs: Mapping[str, Any] | None = None,
        status: Iterable[str] = ("FINISHED",),
        duplicate: str = "error",
        missing: str = "error",
        recorders: Iterable[Any] | None = None,
    ):
        super().__init__(process_list)
        if duplicate not in ("error", "latest"):
            raise ConfigError(f"expected 'error' or 'latest', got {duplicate!r}", "duplicate")
        if missing not in ("error", "skip"):
            raise ConfigError(f"expected 'error' or 'skip', got {missing!r}", "missing")
        if isinstance(status, str):
            status = [status]
        self.experiment = experiment
        self.rec_key_func = rec_key_func or default_rec_key
        self.rec_filter_func = rec_filter_func
        self.artifacts_path = dict(artifacts_path if artifacts_path is not None else {"pred": "pred.pkl"})
        if isinstance(artifacts_key, str):
            artifacts_key = [artifacts_key]
        self.artifacts_key = list(artifacts_key) if artifacts_key is not None else list(self.artifacts_path)
        for key in self.artifacts_key:
            if key != self.ART_KEY_RAW and key not in self.artifacts_path:
                raise ConfigError(f"{key!r} is not in artifacts_path {sorted(self.artifacts_path)}",
                                  "artifacts_key")
        self.list_kwargs = dict(list_kwargs or {})
        self.status = {str(s).upper() for s in status}
        self.duplicate = duplicate
        self.missing = missing
        self.recorder_ids = None if recorders is None else {
            r if isinstance(r, str) else r.id for r in recorders
        }

    def _experiment(self) -> Any:
        from alphamill.workflow.recorder import Experiment, R

        exp = self.experiment
        if callable(exp) and not isinstance(exp, Experiment):
            exp = exp()
        if isinstance(exp, str):
            exp = R.get_exp(experiment_name=exp, create=False, **self.list_kwargs)
        if not isinstance(exp, Experiment):
            raise ConfigError(f"expected an experiment name or Experiment, got {type(exp).__name__}",
                              "experiment")
        return exp

    def list_recorders(self) -> list[Any]:
        """The recorders to collect (status and filters applied), oldest first."""
        exp = self._experiment()
        recs: dict[str, Any] = {}
        for status in sorted(self.status):
            recs.update(exp.list_recorders(status))
        out = []
        for rid, rec in recs.items():
            if self.recorder_ids is not None and rid not in self.recorder_ids:
                continue
            if rec.list_tags().get(STAGE_TAG) == "part_done":
                continue
            if self.rec_filter_func is not None and not self.rec_filter_func(rec):
                continue
            out.append(rec)
        out.sort(key=lambda r: (r.start_time is None, r.start_time))
        return out

    def collect(self, artifacts_key: Any = None, rec_filter_func: Callable[[Any], bool] | None = None) -> dict:
        keys = self.artifacts_key if artifacts_key is None else (
            [artifacts_key] if isinstance(artifacts_key, str) else list(artifacts_key))
        recs = self.list_recorders()
        if rec_filter_func is not None:
            recs = [r for r in recs if rec_filter_func(r)]
        chosen: dict[Any, Any] = {}
        for rec in recs:
            key = self.rec_key_func(rec)
            if key in chosen:
                other = chosen[key]
                if self.duplicate == "error":
                    raise CollectError(
                        f"experiment {rec.experiment_name!r}: runs {other.id} and {rec.id} have the "
                        f"same key {key!r}; pass duplicate='latest' to keep the one that finished "
                        "last, or a rec_key_func / rec_filter_func that tells them apart"
                    )
                if _end(rec) < _end(other):
                    continue
            chosen[key] = rec
        out: dict[str, dict] = {k: {} for k in keys}
        from alphamill.workflow.recorder import ArtifactNotFound

        for key, rec in chosen.items():
            loaded = {}
            try:
                for art in keys:
                    loaded[art] = rec if art == self.ART_KEY_RAW else rec.load_object(self.artifacts_path[art])
            except ArtifactNotFound as e:
                if self.missing == "skip":
                    continue
                raise CollectError(f"{e} (collecting {art!r} for key {key!r})") from None
            for art, value in loaded.items():
                out[art][key] = value
        return out


def _end(rec: Any) -> float:
    end = rec.end_time
    return end.timestamp() if end is not None else float("-inf")
