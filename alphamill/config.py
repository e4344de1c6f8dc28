"""Settings: where the pool, the experiment store, the data and the caches live.

Resolution order for every setting: explicit argument > environment variable >
config file (``alphamill.yaml`` in the working directory, or the file named by
``ALPHAMILL_CONFIG``) > default under the project folder ``.alphamill/``.

==================  ==========================  ======================================
setting             environment variable        default
==================  ==========================  ======================================
home                ALPHAMILL_HOME              ./.alphamill
pool_url            ALPHAMILL_POOL_URL          sqlite:///<home>/pool.db
tracking_uri        ALPHAMILL_TRACKING_URI      <home>/mlruns (MLflow local store)
data                ALPHAMILL_DATA              <home>/data/demo (generated on first use)
cache_dir           ALPHAMILL_CACHE_DIR         <home>/cache
==================  ==========================  ======================================

Qlib's ``C["mongo"] = {"task_url": ..., "task_db_name": ...}`` form is accepted in the
config file under the key ``mongo`` and becomes ``pool_url``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from alphamill.errors import ConfigError
from alphamill.redact import redact_url
from alphamill.textfile import parse_yaml, read_text

__all__ = ["get_setting", "mongo_url_with_db", "redact_url"]

_ENV = {
    "home": "ALPHAMILL_HOME",
    "pool_url": "ALPHAMILL_POOL_URL",
    "tracking_uri": "ALPHAMILL_TRACKING_URI",
    "data": "ALPHAMILL_DATA",
    "cache_dir": "ALPHAMILL_CACHE_DIR",
}


def _config_file() -> dict[str, Any]:
    path = os.environ.get("ALPHAMILL_CONFIG") or "alphamill.yaml"
    p = Path(path)
    field = "ALPHAMILL_CONFIG" if os.environ.get("ALPHAMILL_CONFIG") else None
    if not p.exists():
        if field:
            raise ConfigError(f"config file {p} does not exist", field)
        return {}
    try:
        data = parse_yaml(read_text(p, field or "config file"), p, field) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse config file {p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must contain a mapping, got {type(data).__name__}")
    return data


def get_setting(name: str, value: Any = None) -> Any:
    """Resolve one setting (see the module docstring for the order)."""
    if name not in _ENV:
        raise KeyError(name)
    if value not in (None, ""):
        return value
    env = os.environ.get(_ENV[name])
    if env:
        return env
    cfg = _config_file()
    if name == "pool_url" and "pool_url" not in cfg and isinstance(cfg.get("mongo"), dict):
        mongo = cfg["mongo"]
        url, db = mongo.get("task_url"), mongo.get("task_db_name")
        if not url or not db:
            raise ConfigError("expected both task_url and task_db_name", "mongo")
        return mongo_url_with_db(url, db)
    if cfg.get(name):
        return cfg[name]
    home = Path(get_setting("home")) if name != "home" else None
    defaults = {
        "home": ".alphamill",
        "pool_url": f"sqlite:///{home}/pool.db" if home else None,
        "tracking_uri": str(home / "mlruns") if home else None,
        "data": str(home / "data" / "demo") if home else None,
        "cache_dir": str(home / "cache") if home else None,
    }
    return defaults[name]


def mongo_url_with_db(url: str, db: str) -> str:
    """Qlib's (task_url, task_db_name) pair as one ``mongodb://host:port/db`` URL."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


