"""One MLflow store per test session (creating its schema takes seconds); tests use their own
experiment names inside it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from alphamill.workflow.recorder import R

    path = tmp_path_factory.mktemp("mlruns")
    old = os.environ.get("ALPHAMILL_TRACKING_URI")
    os.environ["ALPHAMILL_TRACKING_URI"] = str(path)
    R.set_uri(None)
    yield path
    if old is None:
        os.environ.pop("ALPHAMILL_TRACKING_URI", None)
    else:
        os.environ["ALPHAMILL_TRACKING_URI"] = old


@pytest.fixture
def exp_name(store_dir: Path) -> str:
    """A fresh experiment name in the session store."""
    return f"exp-{uuid.uuid4().hex[:10]}"
