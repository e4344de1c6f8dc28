"""Train one task and record it (Qlib's ``qlib.model.trainer.task_train`` and its two stages).

``task_train(task, experiment_name)`` resolves the task's placeholders, builds its model and
dataset, opens a recorder, logs the task (artifact ``task.json``; flattened as params), its
content hash, the data fingerprint, package versions and host (tags), fits the model, saves it
(artifact folder ``model/``: the model's own format plus ``model.json``) and runs the task's
records (``SignalRecord``, ``SigAnaRecord``, ``PortAnaRecord``, ...).

``begin_task_train`` / ``end_task_train`` split that for delayed training, as in Qlib: stage one
only records the task (the run is tagged ``alphamill.stage=part_done``), stage two - possibly in
another process or on another machine - loads the task back from the store, then fits and
records. Both return the :class:`Recorder`; ``recorder_ref(rec)`` is its JSON form for pool
results.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alphamill.dataset import Dataset, fill_placeholder
from alphamill.errors import ConfigError
from alphamill.kinds import task_function
from alphamill.memory import release_memory
from alphamill.model.base import Model

TASK_ARTIFACT = "task.json"
MODEL_ARTIFACT = "model"
STAGE_TAG = "alphamill.stage"
#: Packages whose versions are logged with every run.
VERSIONED_PACKAGES = ("alphamill", "numpy", "pandas", "pyarrow", "lightgbm", "scikit-learn", "mlflow")
_MAX_PARAM_LEN = 500
#: Characters MLflow refuses in param names.
_PARAM_KEY_RE = re.compile(r"[^\w\-. :/]")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def process_peak_rss_mb() -> float:
    """The largest resident set of this process so far, in MiB (0 where unknown)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0.0
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def flatten_dict(obj: Any, prefix: str = "") -> dict[str, str]:
    """Qlib's ``flatten_dict`` for params: ``{"model.kwargs.lr": "0.1", "record.0.class": ...}``."""
    out: dict[str, str] = {}
    if isinstance(obj, Mapping) and obj:
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in obj):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
        return {prefix: text[:_MAX_PARAM_LEN]}
    for k, v in items:
        k = _PARAM_KEY_RE.sub("_", k)
        key = f"{prefix}.{k}" if prefix else k
        out.update(flatten_dict(v, key))
    return out


def _check_task(task_config: Any) -> dict[str, Any]:
    if not isinstance(task_config, Mapping):
        raise ConfigError(f"expected a task dict, got {type(task_config).__name__}", "task")
    for key in ("model", "dataset"):
        if key not in task_config:
            raise ConfigError(f"missing '{key}' (a {{'class', 'module_path', 'kwargs'}} dict)", "task")
    records = task_config.get("record", [])
    if not isinstance(records, (Mapping, list, tuple)):
        raise ConfigError("expected a record config or a list of them", "task.record")
    return dict(task_config)


def _task_json(task_config: Mapping[str, Any]) -> str:
    """The task in its canonical JSON form (dates as ISO strings, tuples as lists)."""
    from alphamill.canonical import canonicalize
    from alphamill.errors import CanonicalError

    try:
        return json.dumps(canonicalize(dict(task_config)), indent=1, sort_keys=True)
    except CanonicalError as e:
        raise ConfigError(
            f"the task must be JSON-compatible to be recorded and re-run ({e})", e.path
        ) from None


def _task_hash(task_config: Mapping[str, Any]) -> str:
    from alphamill.canonical import task_hash

    return task_hash(task_config)


def recorder_ref(rec: Any) -> dict[str, str]:
    """``{"experiment_id", "run_id", "experiment_name"}``: a recorder as plain JSON."""
    to_ref = getattr(rec, "to_ref", None)
    if callable(to_ref):
        return dict(to_ref())
    if isinstance(rec, Mapping):
        return {k: str(rec[k]) for k in ("experiment_id", "run_id", "experiment_name") if k in rec}
    raise ConfigError(f"expected a recorder or its reference dict, got {type(rec).__name__}")


def load_recorded_model(rec: Any) -> Model:
    """The fitted model a run saved (artifact folder ``model/``); ``rec`` may be a ref dict."""
    from alphamill.model import load_model
    from alphamill.workflow.recorder import Recorder

    if isinstance(rec, Mapping):
        rec = Recorder.from_ref(recorder_ref(rec))
    with tempfile.TemporaryDirectory(prefix="alphamill-model-") as tmp:
        return load_model(rec.download_artifact(MODEL_ARTIFACT, tmp))


def _log_task_info(rec: Any, task_config: Mapping[str, Any], stage: str) -> None:
    from alphamill.workflow.recorder import R

    canonical = json.loads(_task_json(task_config))
    R.log_params(**flatten_dict(canonical))
    R.save_objects(**{TASK_ARTIFACT: canonical})
    tags = {
        "hostname": socket.gethostname(),
        "alphamill.task_hash": _task_hash(task_config),
        STAGE_TAG: stage,
        **{f"alphamill.version.{k}": v for k, v in package_versions().items()},
    }
    R.set_tags(**tags)


def _build(task_config: Mapping[str, Any]) -> tuple[Model, Dataset]:
    from alphamill import kinds
    from alphamill.instance import init_instance_by_config

    model = init_instance_by_config(
        task_config["model"],
        accept_types=Model,
        default_module="alphamill.model",
        path="task.model",
        kind=kinds.MODEL,
    )
    dataset = init_instance_by_config(
        task_config["dataset"],
        accept_types=Dataset,
        default_module="alphamill.dataset",
        path="task.dataset",
        kind=kinds.DATASET,
    )
    return model, dataset


def _exe_task(task_config: Mapping[str, Any]) -> None:
    """Fit and record inside the active run (Qlib's ``_exe_task``)."""
    from alphamill import kinds
    from alphamill.instance import init_instance_by_config
    from alphamill.workflow.recorder import R

    rec = R.get_recorder()
    resolved = fill_placeholder(dict(task_config))
    t0 = time.perf_counter()
    model, dataset = _build(resolved)
    prepare_seconds = time.perf_counter() - t0
    fingerprint = getattr(dataset, "fingerprint", None)
    if callable(fingerprint) and fingerprint() is not None:
        R.set_tags(**{"alphamill.data_fingerprint": str(fingerprint())})
    if task_config.get("reweighter") is not None:
        raise ConfigError("sample reweighting is not supported", "task.reweighter")
    t0 = time.perf_counter()
    model.fit(dataset)
    fit_wall = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / MODEL_ARTIFACT)
        R.save_objects(local_path=str(Path(tmp) / MODEL_ARTIFACT), artifact_path=MODEL_ARTIFACT)
    R.log_metrics(
        **{
            "timing.prepare_seconds": prepare_seconds,
            "timing.fit_seconds": fit_wall,
            "timing.model_fit_seconds": float(getattr(model, "fit_seconds", 0.0)),
            "timing.model_fit_core_seconds": float(getattr(model, "fit_core_seconds", 0.0)),
        }
    )
    resolved = fill_placeholder(resolved, {"<MODEL>": model, "<DATASET>": dataset})
    records = resolved.get("record", [])
    if isinstance(records, Mapping):
        records = [records]
    t0 = time.perf_counter()
    for i, record in enumerate(records):
        r = init_instance_by_config(
            record,
            default_module="alphamill.workflow.record_temp",
            try_kwargs={"model": model, "dataset": dataset},
            path=f"task.record.{i}",
            kind=kinds.RECORD,
            recorder=rec,
        )
        r.generate()
    R.log_metrics(**{"timing.records_seconds": time.perf_counter() - t0,
                     "memory.process_peak_rss_mb": process_peak_rss_mb()})


@task_function
def task_train(
    task_config: dict, experiment_name: str, recorder_name: str | None = None
) -> Any:
    """Run one task from start to end in one recorder and return that recorder."""
    from alphamill.workflow.recorder import R

    task_config = _check_task(task_config)
    try:
        with R.start(experiment_name=experiment_name, recorder_name=recorder_name):
            rec = R.get_recorder()
            _log_task_info(rec, task_config, stage="running")
            _exe_task(task_config)
            R.set_tags(**{STAGE_TAG: "done"})
            return R.get_recorder()
    finally:
        release_memory()


@task_function
def begin_task_train(
    task_config: dict, experiment_name: str, recorder_name: str | None = None
) -> Any:
    """Stage one: open a recorder and record the task in it (nothing is fitted)."""
    from alphamill.workflow.recorder import R

    task_config = _check_task(task_config)
    _task_json(task_config)
    with R.start(experiment_name=experiment_name, recorder_name=recorder_name):
        rec = R.get_recorder()
        _log_task_info(rec, task_config, stage="part_done")
        return R.get_recorder()


@task_function
def end_task_train(rec: Any, experiment_name: str) -> Any:
    """Stage two: reload the task recorded by :func:`begin_task_train`, fit and record.

    ``rec`` is the recorder of stage one or its :func:`recorder_ref` dict, so this can run in
    another process than stage one.
    """
    from alphamill.workflow.recorder import R

    ref = recorder_ref(rec)
    try:
        with R.start(experiment_name=experiment_name, recorder_id=ref["run_id"], resume=True):
            current = R.get_recorder()
            task_config = current.load_object(TASK_ARTIFACT)
            if isinstance(task_config, (str, bytes)):
                task_config = json.loads(task_config)
            _exe_task(_check_task(task_config))
            R.set_tags(**{STAGE_TAG: "done"})
            return R.get_recorder()
    finally:
        release_memory()
