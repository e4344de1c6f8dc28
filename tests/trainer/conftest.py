"""A small demo market and private alphamill folders for the trainer tests (once per session).

Every setting that names a place (home, tracking store, feature cache, data) points into a
temporary folder, through the environment, so spawned worker processes see the same places.
"""

from __future__ import annotations

import os
import uuid

import pytest

from alphamill.workflow.experiment import SMALL_MARKET, flagship_config, parse_config


@pytest.fixture(scope="session")
def am_env(tmp_path_factory):
    """``ALPHAMILL_*`` pointed at a fresh folder; the small market generated there."""
    from alphamill.data import ensure_demo_market

    home = tmp_path_factory.mktemp("am_home")
    market = home / "data" / "demo-small"
    env = {
        "ALPHAMILL_HOME": str(home),
        "ALPHAMILL_TRACKING_URI": str(home / "mlruns"),
        "ALPHAMILL_CACHE_DIR": str(home / "cache"),
        "ALPHAMILL_DATA": str(market),
        "ALPHAMILL_POOL_URL": f"sqlite:///{home}/pool.db",
        "ALPHAMILL_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        ensure_demo_market(market, **SMALL_MARKET)
        yield {"home": home, "market": market, **env}


@pytest.fixture
def small_raw(am_env):
    """The small flagship config (3 rolling windows over 2012) with a fresh experiment name."""
    raw = flagship_config(small=True, data=str(am_env["market"]))
    raw["experiment"] = f"t_{uuid.uuid4().hex[:10]}"
    return raw


@pytest.fixture
def small_tasks(small_raw):
    """The small config's generated tasks (3 windows)."""
    from alphamill.workflow.experiment import build_tasks

    return build_tasks(parse_config(small_raw))


@pytest.fixture
def exp_name(small_raw):
    return small_raw["experiment"]


def pool_url(am_env) -> str:
    return am_env["ALPHAMILL_POOL_URL"]


def env_ok() -> bool:
    return "ALPHAMILL_HOME" in os.environ


@pytest.fixture(scope="session")
def demo_run(am_env, tmp_path_factory):
    """``alphamill demo --small --workers 2`` once per session: the README's main command on the
    small market, trained by 2 worker processes from the embedded pool."""
    from click.testing import CliRunner

    from alphamill.cli import main

    report = tmp_path_factory.mktemp("demo") / "demo.html"
    r = CliRunner().invoke(main, ["demo", "--small", "--workers", "2", "--report", str(report)])
    assert r.exit_code == 0, r.output + str(r.exception)
    raw = flagship_config(small=True, data=str(am_env["market"]))
    from alphamill.workflow.experiment import build_tasks

    return {
        "output": r.output,
        "report": report,
        "exp": raw["experiment"],
        "pool": raw["experiment"],
        "tasks": build_tasks(parse_config(raw)),
    }
