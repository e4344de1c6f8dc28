"""The commands of ``examples/multi_machine.md``, run on one machine against the local PostgreSQL.

The guide's ``coordinator``, ``worker`` and ``check`` blocks are executed as written (variables
substituted): the coordinator (``--workers 0``) and a worker command (2 processes) run as
separate processes; the worker is stopped with SIGTERM at the end, as an operator would. The
``server`` blocks (createdb, mlflow server) are not run: the processes share a local MLflow
store instead of a tracking server. Skips only when PostgreSQL is absent and
``ALPHAMILL_REQUIRE_POSTGRES`` is not 1.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from string import Template

import pytest
import yaml

from tests.pool.conftest import PG_URL, REQUIRE_PG, postgres_available

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "examples" / "multi_machine.md"
ALPHAMILL = Path(sys.executable).parent / "alphamill"


def guide_commands(kind: str) -> list[str]:
    """Command lines of the guide's code blocks tagged ```bash <kind>."""
    text = GUIDE.read_text()
    blocks = re.findall(rf"```bash {kind}\n(.*?)```", text, flags=re.S)
    assert blocks, f"no `bash {kind}` block in {GUIDE.name}"
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                lines.append(line.strip())
    return lines


def argv(line: str, env: dict[str, str]) -> list[str]:
    args = shlex.split(Template(line).substitute(env))
    assert args[0] == "alphamill", line
    return [str(ALPHAMILL), *args[1:]]


def test_guide_env_block_names_every_variable_the_commands_use():
    exported = set(re.findall(r"export (\w+)=", "\n".join(guide_commands("env"))))
    used = set()
    for kind in ("coordinator", "worker", "check"):
        for line in guide_commands(kind):
            used |= set(re.findall(r"\$\{?(\w+)", line))
    assert used <= exported
    assert {"ALPHAMILL_POOL_URL", "ALPHAMILL_TRACKING_URI"} <= exported


def test_multi_machine_guide_on_one_machine(am_env, tmp_path):
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required (ALPHAMILL_REQUIRE_POSTGRES=1) but not reachable at {PG_URL}")
        pytest.skip(f"PostgreSQL server absent at {PG_URL}")
    from alphamill.task.manage import TaskManager
    from alphamill.workflow.experiment import flagship_config

    raw = flagship_config(small=True, data=str(am_env["market"]))
    raw["experiment"] = f"mm_{uuid.uuid4().hex[:8]}"
    raw["generators"]["rolling"]["step"] = 150  # 2 windows
    config = tmp_path / "rolling_small.yaml"
    config.write_text(yaml.safe_dump(raw))
    pool = f"mm_{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "ALPHAMILL_POOL_URL": PG_URL,
        "ALPHAMILL_TRACKING_URI": str(tmp_path / "shared_mlruns"),
        "POOL": pool,
        "CONFIG": str(config),
    }
    (coordinator,) = guide_commands("coordinator")
    (worker,) = guide_commands("worker")
    log = tmp_path / "worker.log"
    with open(log, "w") as wlog:
        w = subprocess.Popen(argv(worker, env), env=env, cwd=tmp_path, stdout=wlog, stderr=subprocess.STDOUT)
        try:
            c = subprocess.run(argv(coordinator, env), env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=300)
        finally:
            w.send_signal(signal.SIGTERM)
            code = w.wait(timeout=60)
    try:
        assert c.returncode == 0, c.stdout + c.stderr + log.read_text()
        assert "Merged signal" in c.stdout and "report:" in c.stdout
        assert code == 0, log.read_text()
        with TaskManager(pool, PG_URL) as tm:
            tasks = list(tm.query())
            assert {t["status"] for t in tasks} == {"done"} and len(tasks) == 2
            assert all(t["worker_pid"] for t in tasks)
        for line in guide_commands("check"):
            out = subprocess.run(argv(line, env), env=env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode == 0, out.stderr
            assert "secret" not in out.stdout
        stat = subprocess.run(argv(guide_commands("check")[0], env), env=env, capture_output=True, text=True)
        assert "done" in stat.stdout and "2" in stat.stdout
    finally:
        with TaskManager(pool, PG_URL) as tm:
            tm.remove(all=True)
