"""Fixtures of the online tests: a small demo market in private folders (once per session),
the PostgreSQL schema fixture of the pool tests, and the small rolling template."""

from __future__ import annotations

import copy
import uuid

import pytest

from tests.pool.conftest import pg_schema  # noqa: F401  (fixture re-export)
from tests.trainer.conftest import am_env  # noqa: F401  (fixture re-export)


def small_template(market) -> dict:
    """The small flagship task (LightGBM on Alpha158, 30 instruments, test 2012), predictions only."""
    from alphamill.workflow.experiment import flagship_config

    task = copy.deepcopy(flagship_config(small=True, data=str(market))["task"])
    task["record"] = task["record"][:1]
    return task


@pytest.fixture
def template(am_env):  # noqa: F811
    return small_template(am_env["market"])


@pytest.fixture
def names():
    tag = uuid.uuid4().hex[:8]
    return {"pool": f"on_{tag}", "strategy": f"roll_{tag}", "offline": f"off_{tag}"}
