"""Experiment tracking on MLflow with Qlib's ``R`` vocabulary.

A :class:`Recorder` wraps one MLflow run; ``R`` (a :class:`RecorderAPI`) opens, finds and lists
them the way ``qlib.workflow.R`` does. Quant teams keep opening their results with ``mlflow ui``.

Where runs are stored (``tracking_uri`` setting, see :mod:`alphamill.config`):

* a plain directory (the default ``.alphamill/mlruns``): a **SQLite-backed** MLflow store,
  ``<dir>/mlflow.db``, artifacts under ``<dir>/artifacts/``. Open it with
  ``mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db``. If the directory already holds a
  legacy MLflow *file* store (numbered experiment folders, e.g. a Qlib ``mlruns``), that store is
  used as is so old results stay readable.
* ``sqlite:///path/to/mlflow.db``: the same SQLite store at an explicit path.
* ``file:///path``: MLflow's file store, on explicit request only.
* anything else (``http(s)://`` tracking server, ``postgresql://...``): passed to MLflow; this is
  the setting for many machines sharing one store.

Why SQLite for the local default (``benchmarks/mlflow_concurrency_bench.py``, 2 shared cores,
5 runs per process, each run also listing the experiment as a collector does): MLflow 3 puts its
file store in maintenance mode and refuses to open it unless ``MLFLOW_ALLOW_FILE_STORE=true``,
and under concurrency its readers see half-written files - with 4 and 8 processes, 2 of 20 and 3
of 40 runs failed ("Metric ... is malformed" while listing). On SQLite, 20/20 and 40/40 runs,
no error, 2.3-2.9 runs/s in total. That holds once three things are handled here:

1. the schema is created under an exclusive file lock - several processes migrating a fresh
   database at once corrupt it (measured: every process failed);
2. the database is switched to WAL once, so readers (collectors, ``mlflow ui``) do not block the
   workers that write;
3. every store call is retried with jittered back-off when SQLite reports a lock
   (``database is locked``), which it can do immediately, without waiting for its busy timeout,
   when a read transaction has to become a write transaction; a failed call is rolled back by
   MLflow, so retrying it is safe.

WAL needs a local disk: for several machines use a tracking server, not a shared-folder SQLite.

Artifacts are never pickled: pandas objects are Parquet, dicts/lists/scalars JSON, strings text,
numpy arrays ``.npy`` (``allow_pickle=False``), and files or folders are copied as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd

from alphamill.config import get_setting
from alphamill.errors import AlphamillError, ConfigError
from alphamill.locks import file_lock
from alphamill.redact import redact_url, scrub, userinfo_problem

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

__all__ = [
    "ArtifactNotFound",
    "Experiment",
    "R",
    "Recorder",
    "RecorderAPI",
    "TrackingError",
    "open_client",
]

T = TypeVar("T")

DEFAULT_EXPERIMENT = "Experiment"
DEFAULT_RECORDER = "mlflow_recorder"
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PARAM_LEN = 6000  # MLflow's limit for one param value
_PICKLE_EXTS = (".pkl", ".pickle")
_TEXT_EXTS = (".txt", ".yaml", ".yml", ".md", ".csv", ".log", ".html", ".py", ".toml", ".ini")
_KNOWN_EXTS = (".parquet", ".json", ".npy", ".txt")
_SERIES_KEY = b"alphamill.series"
_LOCK_RETRY_SECONDS = 120.0
#: MLflow's limit of metrics in one log_batch request.
_MAX_METRICS_PER_BATCH = 1000


class TrackingError(AlphamillError):
    """The experiment store refused an operation (the message names the run or experiment)."""


class ArtifactNotFound(TrackingError, LookupError):
    """A run has no artifact of that name; the message names the run id and the artifact."""


# --------------------------------------------------------------------------------------------
# store resolution


class _Store:
    """A resolved tracking URI: what MLflow is given and where local artifacts go."""

    def __init__(self, mlflow_uri: str, kind: str, root: Path | None, shown: str):
        self.mlflow_uri = mlflow_uri
        self.kind = kind  # "sqlite" | "file" | "remote"
        self.root = root  # folder of the local store (lock files, artifacts)
        self.shown = shown  # redacted form for messages

    def artifact_location(self, experiment_name: str) -> str | None:
        if self.kind != "sqlite" or self.root is None:
            return None
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment_name)[:60] or "exp"
        digest = hashlib.sha1(experiment_name.encode()).hexdigest()[:8]
        return (self.root / "artifacts" / f"{slug}-{digest}").resolve().as_uri()


def _is_file_store(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(
        p.is_dir() and p.name.isdigit() and (p / "meta.yaml").exists() for p in folder.iterdir()
    )


def resolve_store(uri: str | None = None) -> _Store:
    """Map a tracking URI (or the ``tracking_uri`` setting) to the store that is opened."""
    uri = str(get_setting("tracking_uri", uri))
    shown = redact_url(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :].split("?", 1)[0]).expanduser().resolve()
        return _Store(f"sqlite:///{path}", "sqlite", path.parent, shown)
    if uri.startswith("sqlite:"):
        raise ConfigError(f"expected sqlite:///path/to/mlflow.db, got {shown}", "tracking_uri")
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        path = Path(unquote(urlsplit(uri).path)).expanduser().resolve()
        return _Store(path.as_uri(), "file", path, shown)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) or uri.startswith("databricks"):
        problem = userinfo_problem(uri)
        if problem:  # refused before MLflow or a driver can quote a piece of the password
            raise ConfigError(f"{shown}: {problem}", "tracking_uri")
        return _Store(uri, "remote", None, shown)
    folder = Path(uri).expanduser().resolve()
    if _is_file_store(folder):
        return _Store(folder.as_uri(), "file", folder, shown)
    return _Store(f"sqlite:///{folder / 'mlflow.db'}", "sqlite", folder, shown)


def _is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry(fn: Callable[[], T]) -> T:
    """Call ``fn``, retrying while SQLite reports a lock (see the module docstring)."""
    deadline = time.monotonic() + _LOCK_RETRY_SECONDS
    delay = 0.02
    while True:
        try:
            return fn()
        except Exception as e:
            if not _is_lock_error(e) or time.monotonic() > deadline:
                raise
            _retry.count += 1  # type: ignore[attr-defined]
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


_retry.count = 0  # type: ignore[attr-defined]

_clients: dict[tuple[int, str], MlflowClient] = {}


def _after_fork_in_child() -> None:
    """A forked worker must not share the parent's database connections: drop them (without
    closing, which would disturb the parent) so the child opens its own."""
    _clients.clear()
    mod = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if mod is not None:
        for engine in list(mod.SqlAlchemyStore._engine_map.values()):
            engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def open_client(uri: str | None = None) -> MlflowClient:
    """The MlflowClient of a tracking URI, opened once per process (safe after ``fork``)."""
    store = resolve_store(uri)
    key = (os.getpid(), store.mlflow_uri)
    client = _clients.get(key)
    if client is not None:
        return client
    import logging
    import warnings

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if store.kind == "file":
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if store.kind == "sqlite":
            assert store.root is not None
            db = Path(store.mlflow_uri[len("sqlite:///") :])
            with file_lock(store.root / ".mlflow.db.lock"):
                client = _retry(lambda: MlflowClient(tracking_uri=store.mlflow_uri))
                _retry(lambda: _set_wal(db))
        else:
            try:
                client = MlflowClient(tracking_uri=store.mlflow_uri)
            except Exception as e:
                raise TrackingError(
                    f"cannot open the experiment store {store.shown}: {scrub(str(e), store.mlflow_uri)}"
                ) from e
    client._alphamill_store = store  # type: ignore[attr-defined]
    _clients[key] = client
    return client


def _set_wal(db: Path) -> None:
    import sqlite3

    con = sqlite3.connect(str(db), timeout=60)
    try:
        mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _store_of(client: MlflowClient) -> _Store:
    return client._alphamill_store  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# artifact encoding


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (pd.Timestamp, datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _canonical_ext(obj: Any) -> str:
    if isinstance(obj, (pd.DataFrame, pd.Series)):
        return ".parquet"
    if isinstance(obj, np.ndarray):
        return ".npy"
    if isinstance(obj, str):
        return ".txt"
    if obj is None or isinstance(obj, (dict, list, tuple, bool, int, float, np.generic)):
        return ".json"
    raise ConfigError(
        f"cannot store an object of type {type(obj).__name__}: artifacts are pandas objects "
        "(Parquet), dict/list/scalars (JSON), str (text) or numpy arrays (.npy); pickle is "
        "never used - save other objects in their own format and pass the file as local_path",
    )


def check_artifact_path(path: Any, field: str) -> str:
    """``path`` if it names a place inside the run's artifact folder, else a ConfigError.

    Names are joined to a local folder before MLflow sees them, so ``..``, an absolute path,
    a backslash or a NUL would write (or read) outside it: only relative ``/``-separated
    names of ordinary parts are accepted.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"expected a non-empty artifact name, got {path!r}", field)
    if any(ord(c) < 32 for c in path) or "\\" in path:
        raise ConfigError(f"artifact name {path!r} holds a control character or a backslash", field)
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise ConfigError(
            f"artifact name {path!r} must stay inside the run's artifact folder: a relative "
            "name whose '/'-separated parts are not empty, '.' or '..'",
            field,
        )
    return path


def artifact_file_name(name: str, obj: Any) -> str:
    """The stored name of ``obj`` saved as ``name`` (``pred.pkl`` -> ``pred.parquet``)."""
    ext = _canonical_ext(obj)
    stem, cur = os.path.splitext(name)
    if cur.lower() in _PICKLE_EXTS or cur == "":
        return stem + ext
    if cur.lower() == ext:
        return name
    if ext == ".txt" and cur.lower() not in (".parquet", ".npy"):
        return name  # text under its own extension (.yaml, .csv, .json ...)
    raise ConfigError(
        f"a {type(obj).__name__} is stored as {ext}, not {cur}: name it {stem}{ext}", name
    )


def _write_object(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = path.suffix.lower()
    if ext == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(obj, pd.Series):
            frame = obj.to_frame(name="__series__")
            table = pa.Table.from_pandas(frame)
            meta = dict(table.schema.metadata or {})
            meta[_SERIES_KEY] = json.dumps({"name": obj.name}, default=_json_default).encode()
            table = table.replace_schema_metadata(meta)
        else:
            table = pa.Table.from_pandas(obj)
        pq.write_table(table, path)
    elif ext == ".npy":
        try:
            np.save(path, obj, allow_pickle=False)
        except ValueError as e:
            raise ConfigError(f"cannot store this array without pickle: {e}", path.name) from e
    elif isinstance(obj, str):
        path.write_text(obj, encoding="utf-8")
    else:
        try:
            path.write_text(json.dumps(obj, default=_json_default, indent=1), encoding="utf-8")
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot store as JSON: {e}", path.name) from e


def _read_object(path: Path) -> Any:
    ext = path.suffix.lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        frame = table.to_pandas()
        if _SERIES_KEY in meta:
            series = frame["__series__"]
            series.name = json.loads(meta[_SERIES_KEY])["name"]
            return series
        return frame
    if ext == ".npy":
        return np.load(path, allow_pickle=False)
    if ext == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    if ext in _TEXT_EXTS:
        return path.read_text(encoding="utf-8")
    raise ConfigError(
        f"{path.name} has no known format (.parquet, .json, .npy, text): use "
        "download_artifact() to get the file itself",
    )


def _ms_to_dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


def _param_text(key: str, value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=_json_default)
    else:
        text = str(value)
    text = redact_url(text)
    if len(text) > MAX_PARAM_LEN:
        raise ConfigError(
            f"param value is {len(text)} characters, MLflow keeps at most {MAX_PARAM_LEN}: "
            "save it with save_objects instead",
            key,
        )
    return text


# --------------------------------------------------------------------------------------------
# Recorder


class Recorder:
    """One MLflow run (Qlib's ``MLflowRecorder``)."""

    def __init__(self, client: MlflowClient, run: Run, experiment_name: str | None = None):
        self._client = client
        self._run = run
        self._experiment_name = experiment_name
        self._art_cache: Any = None

    # --- identity -----------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._run.info.run_id

    @property
    def experiment_id(self) -> str:
        return self._run.info.experiment_id

    @property
    def experiment_name(self) -> str:
        if self._experiment_name is None:
            exp = _retry(lambda: self._client.get_experiment(self.experiment_id))
            self._experiment_name = exp.name
        return self._experiment_name

    @property
    def name(self) -> str:
        return self._run.info.run_name or ""

    def _refresh(self) -> Run:
        self._run = _retry(lambda: self._client.get_run(self.id))
        return self._run

    @property
    def status(self) -> str:
        return self._refresh().info.status

    @property
    def start_time(self) -> datetime | None:
        return _ms_to_dt(self._run.info.start_time)

    @property
    def end_time(self) -> datetime | None:
        return _ms_to_dt(self._refresh().info.end_time)

    @property
    def artifact_uri(self) -> str:
        return self._run.info.artifact_uri

    @property
    def info(self) -> dict[str, Any]:
        """Qlib's ``recorder.info``: class, id, name, experiment, times and status."""
        run = self._refresh()
        end = _ms_to_dt(run.info.end_time)
        return {
            "class": type(self).__name__,
            "id": self.id,
            "name": self.name,
            "experiment_id": self.experiment_id,
            "experiment_name": self.experiment_name,
            "start_time": self.start_time.isoformat() if self.start_time else None,
            "end_time": end.isoformat() if end else None,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
        }

    def __repr__(self) -> str:
        return (
            f"Recorder(id={self.id!r}, name={self.name!r}, "
            f"experiment={self._experiment_name or self.experiment_id!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recorder) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # --- references -----------------------------------------------------------------------
    def to_ref(self) -> dict[str, str]:
        """Plain JSON that finds this run again from any process: ids and experiment name."""
        return {
            "experiment_id": self.experiment_id,
            "run_id": self.id,
            "experiment_name": self.experiment_name,
        }

    @classmethod
    def from_ref(cls, ref: Mapping[str, Any], uri: str | None = None) -> Recorder:
        """The recorder of a :meth:`to_ref` dict, in the configured (or given) store."""
        if not isinstance(ref, Mapping) or not ref.get("run_id"):
            raise ConfigError("expected a dict with a run_id (from Recorder.to_ref())", "ref")
        return R.get_recorder(recorder_id=str(ref["run_id"]), uri=uri or R.uri)

    # --- params, metrics, tags ------------------------------------------------------------
    def log_params(self, **kwargs: Any) -> None:
        from mlflow.entities import Param

        params = [Param(str(k), _param_text(str(k), v)) for k, v in kwargs.items()]
        for i in range(0, len(params), 100):
            chunk = params[i : i + 100]
            self._call(lambda c=chunk: self._client.log_batch(self.id, params=c), "log params")

    def log_metrics(self, step: int | None = None, **kwargs: Any) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for k, v in kwargs.items():
            try:
                value = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"metric must be a number, got {v!r}", str(k)) from None
            metrics.append(Metric(str(k), value, now, int(step or 0)))
        for i in range(0, len(metrics), 500):
            chunk = metrics[i : i + 500]
            self._call(lambda c=chunk: self._client.log_batch(self.id, metrics=c), "log metrics")

    def log_metric_series(self, series: Mapping[str, Sequence[float]]) -> None:
        """Log whole curves, ``{name: [value at step 0, 1, ...]}``, in as few requests as
        MLflow allows (1,000 values each): a training curve is a few thousand values, which
        one request per step would spread over as many database transactions."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for name, values in series.items():
            for step, v in enumerate(values):
                try:
                    value = float(v)
                except (TypeError, ValueError):
                    raise ConfigError(f"metric must be a number, got {v!r}", str(name)) from None
                metrics.append(Metric(str(name), value, now, step))
        for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
            chunk = metrics[i : i + _MAX_METRICS_PER_BATCH]
            self._call(lambda c=chunk: self._client.log_batch(self.id, metrics=c), "log metrics")

    def metric_history(self, name: str) -> list[tuple[int, float]]:
        """Every ``(step, value)`` logged under ``name``, by step."""
        hist = self._call(lambda: self._client.get_metric_history(self.id, name), "read metrics")
        return sorted((int(m.step), float(m.value)) for m in hist)

    def set_tags(self, **kwargs: Any) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(str(k), redact_url(str(v))) for k, v in kwargs.items()]
        for i in range(0, len(tags), 100):
            chunk = tags[i : i + 100]
            self._call(lambda c=chunk: self._client.log_batch(self.id, tags=c), "set tags")

    def list_tags(self) -> dict[str, str]:
        return dict(self._refresh().data.tags)

    def list_params(self) -> dict[str, str]:
        return dict(self._refresh().data.params)

    def list_metrics(self) -> dict[str, float]:
        return dict(self._refresh().data.metrics)

    def _call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return _retry(fn)
        except AlphamillError:
            raise
        except Exception as e:
            raise TrackingError(
                f"run {self.id}: cannot {what}: {scrub(str(e), _store_of(self._client).mlflow_uri)}"
            ) from e

    # --- artifacts ------------------------------------------------------------------------
    def save_objects(
        self,
        local_path: str | os.PathLike | None = None,
        artifact_path: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store files (``local_path``) or objects (``name=obj``) under ``artifact_path``.

        Returns the stored artifact paths. Qlib's ``.pkl`` names are mapped to the object's
        format (``pred.pkl`` -> ``pred.parquet``); :meth:`load_object` maps them back.
        """
        if local_path is not None and kwargs:
            raise ConfigError("give either local_path or named objects, not both", "save_objects")
        prefix = (artifact_path or "").strip("/")
        if prefix:
            check_artifact_path(prefix, "artifact_path")
        for name in kwargs:  # all checked before the first is written
            check_artifact_path(name, "save_objects")
        stored: list[str] = []
        if local_path is not None:
            path = Path(local_path)
            if not path.exists():
                raise ConfigError(f"{path} does not exist", "local_path")
            if path.is_dir():
                self._call(
                    lambda: self._art().log_artifacts(str(path), prefix or None),
                    "save artifacts",
                )
                base = f"{prefix}/" if prefix else ""
                stored += [
                    base + p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()
                ]
            else:
                self._call(
                    lambda: self._art().log_artifact(str(path), prefix or None),
                    "save artifact",
                )
                stored.append(f"{prefix}/{path.name}" if prefix else path.name)
            return stored
        with tempfile.TemporaryDirectory(prefix="alphamill-art-") as tmp:
            for name, obj in kwargs.items():
                rel = "/".join(p for p in (prefix, artifact_file_name(name, obj)) if p)
                file = Path(tmp) / rel
                _write_object(file, obj)
                sub = os.path.dirname(rel) or None
                self._call(
                    lambda f=file, s=sub: self._art().log_artifact(str(f), s),
                    f"save artifact {rel}",
                )
                stored.append(rel)
        return stored

    def _art(self) -> Any:
        """Where artifacts go: the local artifact folder directly (saves MLflow a run lookup
        per call), or the client for remote stores (proxied artifacts need the server)."""
        if self._art_cache is None:
            if _store_of(self._client).kind in ("sqlite", "file"):
                from mlflow.store.artifact.artifact_repository_registry import (
                    get_artifact_repository,
                )

                self._art_cache = get_artifact_repository(self.artifact_uri)
            else:
                self._art_cache = _ClientArtifacts(self._client, self.id)
        return self._art_cache

    def list_artifacts(self, artifact_path: str | None = None) -> list[str]:
        """Every stored file below ``artifact_path`` (recursive), as paths relative to the run."""
        out: list[str] = []
        if artifact_path and artifact_path.strip("/"):
            check_artifact_path(artifact_path.strip("/"), "artifact_path")
        todo = [artifact_path.strip("/") if artifact_path else None]
        while todo:
            cur = todo.pop()
            for info in self._call(lambda c=cur: self._art().list_artifacts(c), "list"):
                (todo if info.is_dir else out).append(info.path)
        return sorted(out)

    def _resolve_artifact(self, name: str) -> str:
        name = check_artifact_path(name.strip("/") if isinstance(name, str) else name, "name")
        parent = os.path.dirname(name) or None
        present = {
            info.path: info.is_dir
            for info in self._call(lambda: self._art().list_artifacts(parent), "list artifacts")
        }
        stem, ext = os.path.splitext(name)
        candidates = [name]
        if ext.lower() in _PICKLE_EXTS or ext == "":
            candidates += [stem + e for e in _KNOWN_EXTS]
        for cand in candidates:
            if cand in present:
                return cand
        raise ArtifactNotFound(
            f"run {self.id} (experiment {self._experiment_name or self.experiment_id}) has no "
            f"artifact {name!r}"
            + (f" (also looked for {', '.join(candidates[1:])})" if len(candidates) > 1 else "")
        )

    def download_artifact(self, name: str, dst_path: str | os.PathLike | None = None) -> Path:
        """Copy one artifact (file or folder) to ``dst_path`` (a new temp folder if None)."""
        rel = self._resolve_artifact(name)
        dst = (
            Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="alphamill-"))
        )
        dst.mkdir(parents=True, exist_ok=True)
        local = self._call(lambda: self._art().download_artifacts(rel, str(dst)), f"download {rel}")
        return Path(local)

    def load_object(self, name: str) -> Any:
        """Read an artifact back by its extension (Parquet, JSON, .npy, text)."""
        rel = self._resolve_artifact(name)
        with tempfile.TemporaryDirectory(prefix="alphamill-load-") as tmp:
            local = Path(
                self._call(lambda: self._art().download_artifacts(rel, tmp), f"load {rel}")
            )
            if local.is_dir():
                raise ConfigError(
                    f"run {self.id}: artifact {rel!r} is a folder: use download_artifact()", name
                )
            return _read_object(local)

    # --- lifecycle ------------------------------------------------------------------------
    def end_run(self, status: str = "FINISHED") -> None:
        status = str(status).upper()
        if status not in END_STATUSES:
            raise ConfigError(f"expected one of {', '.join(END_STATUSES)}, got {status}", "status")
        self._call(lambda: self._client.set_terminated(self.id, status), "end the run")

    def _reopen(self) -> None:
        self._call(lambda: self._client.update_run(self.id, status="RUNNING"), "resume the run")
        self._refresh()


class _ClientArtifacts:
    """The artifact-repository calls used here, through the tracking client."""

    def __init__(self, client: MlflowClient, run_id: str):
        self._client = client
        self._run_id = run_id

    def log_artifact(self, local: str, path: str | None = None) -> None:
        self._client.log_artifact(self._run_id, local, path)

    def log_artifacts(self, local_dir: str, path: str | None = None) -> None:
        self._client.log_artifacts(self._run_id, local_dir, path)

    def list_artifacts(self, path: str | None = None) -> list[Any]:
        return self._client.list_artifacts(self._run_id, path)

    def download_artifacts(self, path: str, dst_path: str | None = None) -> str:
        return self._client.download_artifacts(self._run_id, path, dst_path)


# --------------------------------------------------------------------------------------------
# Experiment and the R API


class Experiment:
    """One MLflow experiment (Qlib's ``MLflowExperiment``): a named set of recorders."""

    def __init__(self, client: MlflowClient, experiment_id: str, name: str):
        self._client = client
        self.id = experiment_id
        self.name = name

    def __repr__(self) -> str:
        return f"Experiment(id={self.id!r}, name={self.name!r})"

    @property
    def info(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "id": self.id,
            "name": self.name,
            "recorders": list(self.list_recorders()),
        }

    def _runs(self, status: str | None = None, name: str | None = None) -> list[Run]:
        filters = []
        if status:
            filters.append(f"attributes.status = '{status}'")
        if name is not None:
            filters.append("attributes.run_name = '{}'".format(name.replace("'", "\\'")))
        runs: list[Run] = []
        token = None
        while True:
            page = _retry(
                lambda t=token: self._client.search_runs(
                    [self.id],
                    " and ".join(filters),
                    max_results=1000,
                    order_by=["attributes.start_time DESC"],
                    page_token=t,
                )
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def list_recorders(self, status: str | None = None) -> dict[str, Recorder]:
        """``{run_id: Recorder}``, newest first; ``status`` keeps only e.g. ``"FINISHED"``."""
        return {r.info.run_id: Recorder(self._client, r, self.name) for r in self._runs(status)}

    def create_recorder(self, recorder_name: str | None = None) -> Recorder:
        name = recorder_name or DEFAULT_RECORDER
        run = _retry(lambda: self._client.create_run(self.id, run_name=name))
        return Recorder(self._client, run, self.name)

    def get_recorder(
        self,
        recorder_id: str | None = None,
        recorder_name: str | None = None,
        create: bool = False,
    ) -> Recorder:
        """By id, or by name (the newest run of that name); ``create`` makes a missing one."""
        if recorder_id is not None:
            run = _get_run(self._client, recorder_id)
            if run.info.experiment_id != self.id:
                raise TrackingError(
                    f"recorder {recorder_id} belongs to experiment {run.info.experiment_id}, "
                    f"not {self.name!r} ({self.id})"
                )
            return Recorder(self._client, run, self.name)
        if recorder_name is None:
            raise ConfigError("give recorder_id or recorder_name", "get_recorder")
        runs = self._runs(name=recorder_name)
        if runs:
            return Recorder(self._client, runs[0], self.name)
        if create:
            return self.create_recorder(recorder_name)
        raise TrackingError(f"experiment {self.name!r} has no recorder named {recorder_name!r}")

    def delete_recorder(self, recorder_id: str) -> None:
        _retry(lambda: self._client.delete_run(recorder_id))


def _get_run(client: MlflowClient, run_id: str) -> Run:
    from mlflow.exceptions import MlflowException

    try:
        return _retry(lambda: client.get_run(run_id))
    except MlflowException as e:
        raise TrackingError(
            f"no recorder with id {run_id} in {_store_of(client).shown}: "
            f"{scrub(e.message, _store_of(client).mlflow_uri)}"
        ) from e


class RecorderAPI:
    """Qlib's ``QlibRecorder``: the process-wide ``R`` that knows the active recorder."""

    def __init__(self) -> None:
        self._uri: str | None = None
        self._active: Recorder | None = None
        self._prev_uri: str | None = None
        self._exp_ids: dict[tuple[int, str, str], str] = {}  # experiment ids never change

    # --- store ----------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return str(get_setting("tracking_uri", self._uri))

    def set_uri(self, uri: str | None) -> None:
        """Use this tracking URI in this process (None: back to the ``tracking_uri`` setting)."""
        if self._active is not None:
            raise TrackingError("cannot change the tracking URI while a recorder is running")
        self._uri = uri

    def get_uri(self) -> str:
        return self.uri

    def client(self, uri: str | None = None) -> MlflowClient:
        return open_client(uri or self._uri)

    # --- experiments ----------------------------------------------------------------------
    def get_exp(
        self,
        experiment_name: str | None = None,
        experiment_id: str | None = None,
        create: bool = True,
        uri: str | None = None,
    ) -> Experiment:
        """The experiment of that name (created if missing and ``create``) or id."""
        client = self.client(uri)
        if experiment_id is not None:
            from mlflow.exceptions import MlflowException

            try:
                exp = _retry(lambda: client.get_experiment(str(experiment_id)))
            except MlflowException as e:
                raise TrackingError(f"no experiment with id {experiment_id}") from e
            return Experiment(client, exp.experiment_id, exp.name)
        if experiment_name is None and self._active is not None:
            return Experiment(client, self._active.experiment_id, self._active.experiment_name)
        name = experiment_name or DEFAULT_EXPERIMENT
        key = (os.getpid(), _store_of(client).mlflow_uri, name)
        if key in self._exp_ids:
            return Experiment(client, self._exp_ids[key], name)
        exp = _retry(lambda: client.get_experiment_by_name(name))
        if exp is None:
            if not create:
                raise TrackingError(f"no experiment named {name!r} in {_store_of(client).shown}")
            created = self._create_exp(client, name)
            self._exp_ids[key] = created.id
            return created
        if exp.lifecycle_stage != "active":
            raise TrackingError(
                f"experiment {name!r} was deleted: restore it (mlflow experiments restore) or "
                "choose another name"
            )
        self._exp_ids[key] = exp.experiment_id
        return Experiment(client, exp.experiment_id, exp.name)

    def _create_exp(self, client: MlflowClient, name: str) -> Experiment:
        from mlflow.exceptions import MlflowException

        store = _store_of(client)
        lock = (
            file_lock(store.root / ".experiments.lock")
            if store.root is not None
            else contextlib.nullcontext()
        )
        with lock:  # the file store checks names without a transaction
            exp = _retry(lambda: client.get_experiment_by_name(name))
            if exp is not None:
                return Experiment(client, exp.experiment_id, exp.name)
            try:
                eid = _retry(
                    lambda: client.create_experiment(
                        name, artifact_location=store.artifact_location(name)
                    )
                )
            except MlflowException as e:  # created meanwhile by another machine
                exp = _retry(lambda: client.get_experiment_by_name(name))
                if exp is None:
                    raise TrackingError(
                        f"cannot create experiment {name!r}: {scrub(e.message, store.mlflow_uri)}"
                    ) from e
                eid = exp.experiment_id
        return Experiment(client, eid, name)

    def list_experiments(self, uri: str | None = None) -> dict[str, Experiment]:
        """``{name: Experiment}`` of the active experiments."""
        client = self.client(uri)
        exps = _retry(lambda: client.search_experiments(max_results=50000))
        return {e.name: Experiment(client, e.experiment_id, e.name) for e in exps}

    def delete_exp(self, experiment_name: str) -> None:
        exp = self.get_exp(experiment_name, create=False)
        _retry(lambda: exp._client.delete_experiment(exp.id))
        self._exp_ids = {k: v for k, v in self._exp_ids.items() if v != exp.id}

    # --- recorders ------------------------------------------------------------------------
    def get_recorder(
        self,
        recorder_id: str | None = None,
        experiment_name: str | None = None,
        recorder_name: str | None = None,
        uri: str | None = None,
    ) -> Recorder:
        """The active recorder (no arguments), or one found by id or by name."""
        if recorder_id is None and recorder_name is None:
            if self._active is None:
                raise TrackingError(
                    "no active recorder: call inside `with R.start(...)` or give recorder_id"
                )
            return self._active
        client = self.client(uri)
        if recorder_id is not None:
            run = _get_run(client, str(recorder_id))
            rec = Recorder(client, run)
            if experiment_name is not None and rec.experiment_name != experiment_name:
                raise TrackingError(
                    f"recorder {recorder_id} is in experiment {rec.experiment_name!r}, "
                    f"not {experiment_name!r}"
                )
            return rec
        exp = self.get_exp(experiment_name, create=False, uri=uri)
        return exp.get_recorder(recorder_name=recorder_name)

    def list_recorders(
        self,
        experiment_name: str | None = None,
        status: str | None = None,
        uri: str | None = None,
    ) -> dict[str, Recorder]:
        """``{run_id: Recorder}`` of one experiment, newest first."""
        return self.get_exp(experiment_name, create=False, uri=uri).list_recorders(status)

    def delete_recorder(self, recorder_id: str) -> None:
        client = self.client()
        _retry(lambda: client.delete_run(recorder_id))

    # --- running --------------------------------------------------------------------------
    def start_exp(
        self,
        experiment_name: str | None = None,
        recorder_name: str | None = None,
        recorder_id: str | None = None,
        resume: bool = False,
        uri: str | None = None,
    ) -> Recorder:
        """Open (or with ``resume``, reopen) a recorder and make it the active one."""
        if self._active is not None:
            raise TrackingError(
                f"recorder {self._active.id} is already running in this process: "
                "end it before starting another"
            )
        prev_uri = self._uri
        if uri is not None:  # for this recorder only, as Qlib's ``R.start(uri=...)``
            self._uri = uri
        try:
            rec = self._open(experiment_name, recorder_name, recorder_id, resume)
        except BaseException:
            self._uri = prev_uri
            raise
        self._active, self._prev_uri = rec, prev_uri
        return rec

    def _open(
        self,
        experiment_name: str | None,
        recorder_name: str | None,
        recorder_id: str | None,
        resume: bool,
    ) -> Recorder:
        exp = self.get_exp(experiment_name)
        rec: Recorder | None = None
        if resume:
            if recorder_id is not None:
                rec = exp.get_recorder(recorder_id=recorder_id)
            elif recorder_name is not None:
                found = exp._runs(name=recorder_name)
                rec = Recorder(exp._client, found[0], exp.name) if found else None
            if rec is not None:
                rec._reopen()
        elif recorder_id is not None:
            raise ConfigError("recorder_id needs resume=True", "recorder_id")
        if rec is None:
            rec = exp.create_recorder(recorder_name)
        return rec

    def end_exp(self, recorder_status: str = "FINISHED") -> None:
        """End the active recorder with that status (no-op if none is running)."""
        rec, self._active = self._active, None
        if rec is not None:
            self._uri = self._prev_uri
            rec.end_run(recorder_status)

    @contextlib.contextmanager
    def start(
        self,
        experiment_name: str | None = None,
        recorder_name: str | None = None,
        recorder_id: str | None = None,
        resume: bool = False,
        uri: str | None = None,
    ) -> Iterator[Recorder]:
        """Run a block in a recorder: FINISHED on success, FAILED on an exception."""
        rec = self.start_exp(experiment_name, recorder_name, recorder_id, resume, uri)
        try:
            yield rec
        except Exception:
            self.end_exp("FAILED")
            raise
        except BaseException:
            self.end_exp("KILLED")
            raise
        else:
            self.end_exp("FINISHED")

    # --- on the active recorder -------------------------------------------------------------
    def active_recorder(self) -> Recorder | None:
        """The running recorder of this process, or None (no error, unlike get_recorder)."""
        return self._active

    def log_params(self, **kwargs: Any) -> None:
        self.get_recorder().log_params(**kwargs)

    def log_metrics(self, step: int | None = None, **kwargs: Any) -> None:
        self.get_recorder().log_metrics(step, **kwargs)

    def set_tags(self, **kwargs: Any) -> None:
        self.get_recorder().set_tags(**kwargs)

    def save_objects(
        self,
        local_path: str | os.PathLike | None = None,
        artifact_path: str | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return self.get_recorder().save_objects(local_path, artifact_path, **kwargs)

    def load_object(self, name: str) -> Any:
        return self.get_recorder().load_object(name)


R = RecorderAPI()
