"""``alphamill run`` with a bad config writes nothing: no demo market, no pool, no store.

Each run starts in a fresh ``ALPHAMILL_HOME`` whose default market does not exist yet, so
a run that checked too late would first generate the 300-instrument demo market (and then
perhaps a pool and an experiment store) before reporting the mistake.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.workflow.experiment import flagship_config


def _model(c, **kw):
    c["task"]["model"].update(kw)


CASES = [
    (lambda c: _model(c, **{"class": "NoSuchModel"}), "task.model.class"),
    (lambda c: c["task"]["model"]["kwargs"].update(num_leaves="many"), "task.model.kwargs.num_leaves"),
    (lambda c: c["task"]["record"][0].update({"class": "NoSuchRecord"}), "task.record"),
    (lambda c: c["generators"].update(grid={"model.kwargs.loss": ["mse", "hinge"]}), "loss"),
    (lambda c: c.update(pool={"url": "mysql://u@h/db"}), "pool.url"),
    (lambda c: c.update(pool={"url": "sqlite:///x.db?busy_timeout=nan"}), "busy_timeout"),
]


# every case in this process; the model checks also through the workers' preloading server
RUNS = [(i, 0) for i in range(len(CASES))] + [(0, 2), (1, 2)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("i", "workers"), RUNS)
def test_bad_config_in_a_fresh_home_writes_nothing(tmp_path, monkeypatch, i, workers):
    change, field = CASES[i]
    home = tmp_path / "home"
    for var in ("ALPHAMILL_DATA", "ALPHAMILL_POOL_URL", "ALPHAMILL_TRACKING_URI", "ALPHAMILL_CACHE_DIR",
                "ALPHAMILL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ALPHAMILL_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    cfg = flagship_config()  # the default market: generated on first use
    cfg["workers"] = workers
    change(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = CliRunner().invoke(main, ["run", str(path)])
    assert r.exit_code == 2, r.output
    assert field in r.stderr and "Traceback" not in r.output
    written = sorted(str(p.relative_to(tmp_path)) for p in Path(tmp_path).rglob("*") if p != path)
    assert written == [], f"a refused run wrote {written}"
