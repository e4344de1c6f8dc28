"""Market data: three sources behind one interface (:class:`DataSource`).

``open_data(spec)`` picks the source:

* ``None``: the ``data`` setting (``ALPHAMILL_DATA``, ``alphamill.yaml``), by default the demo
  market under ``<home>/data/demo``, generated on first use (300 instruments, 2010-2020,
  seed 0) under a lock so concurrent processes do not both write it;
* a folder with ``calendars/day.txt`` and ``features/``: :class:`QlibBinSource`;
* a folder of per-instrument ``*.csv`` / ``*.parquet`` files: :class:`CsvFolderSource`;
* a :class:`DataSource` instance: returned as it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from alphamill.data.base import FIELDS, DataSource
from alphamill.data.csv_folder import CsvFolderSource
from alphamill.data.demo import generate_demo_market
from alphamill.data.qlib_bin import QlibBinSource, is_qlib_dir, write_qlib_bin
from alphamill.data.universe import read_instruments_file, resolve_universe, write_instruments_file
from alphamill.errors import ConfigError, DataError
from alphamill.locks import file_lock

#: Parameters of the default demo market (generated on first use).
DEMO_DEFAULTS = {"n": 300, "start": "2010-01-01", "end": "2020-12-31", "seed": 0}


def default_demo_path() -> Path:
    """Where the default demo market lives: ``<home>/data/demo``."""
    from alphamill.config import get_setting

    return Path(get_setting("home")) / "data" / "demo"


def open_data(spec: Any = None) -> DataSource:
    """The data source named by ``spec`` (see the module docstring)."""
    if isinstance(spec, DataSource):
        return spec
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        from alphamill.config import get_setting

        spec = get_setting("data")
        if Path(spec).expanduser().absolute() == default_demo_path().absolute():
            ensure_demo_market(Path(spec).expanduser())
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(
            f"expected a data folder path or a DataSource, got {type(spec).__name__}", "data"
        )
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"{path}: data folder does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: expected a data folder (per-instrument CSV/Parquet files or Qlib data)")
    if is_qlib_dir(path):
        return QlibBinSource(path)
    return CsvFolderSource(path)


def ensure_demo_market(path: str | os.PathLike, **params: Any) -> Path:
    """Generate the demo market at ``path`` unless it exists (safe across processes).

    The market is written to a temporary folder next to ``path`` and renamed into place,
    under an exclusive lock, so readers never see a half-written market and two processes
    never both generate it.
    """
    target = Path(path)
    if (target / "meta.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if (target / "meta.json").is_file():
            return target
        if target.exists():
            raise DataError(f"{target}: exists but is not a complete demo market (no meta.json); remove it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            generate_demo_market(tmp, **{**DEMO_DEFAULTS, **params})
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def handler_data(task: Any) -> Any:
    """The ``data`` entry of a task's handler kwargs, or None."""
    if not isinstance(task, Mapping):
        return None
    dataset = task.get("dataset")
    kwargs = dataset.get("kwargs") if isinstance(dataset, Mapping) else None
    handler = kwargs.get("handler") if isinstance(kwargs, Mapping) else None
    if isinstance(handler, Mapping):
        hk = handler.get("kwargs")
        if isinstance(hk, Mapping):
            return hk.get("data")
    return None


def calendar_for_task(task: Mapping[str, Any] | None = None) -> pd.DatetimeIndex:
    """Trading calendar of the data a task uses (its handler's ``data`` kwarg, or the default)."""
    return open_data(handler_data(task)).calendar()


__all__ = [
    "DEMO_DEFAULTS",
    "FIELDS",
    "CsvFolderSource",
    "DataSource",
    "QlibBinSource",
    "calendar_for_task",
    "default_demo_path",
    "ensure_demo_market",
    "generate_demo_market",
    "open_data",
    "read_instruments_file",
    "resolve_universe",
    "write_instruments_file",
    "write_qlib_bin",
]
