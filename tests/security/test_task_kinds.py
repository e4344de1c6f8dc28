"""A task builds only the kind of object each of its places expects.

The probes are attacks that made a worker run attacker code with the default settings: a
private scikit-learn test helper that runs a script, trust widened from inside the task
(``trust_module_prefix``, ``trust_path``) and then used by the next place, and a worker
``--func`` naming any module. A sentinel file that the attacker's code would write proves
that none of it ran: in-process, at every place, and through a real worker process that
claims the rows from a SQLite pool.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alphamill import instance
from alphamill.data.demo import generate_demo_market
from alphamill.errors import ConfigError
from alphamill.task.manage import TaskManager

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from alphamill.cli import main; main()"]
MODEL = "a model: a subclass of alphamill.model.Model"


@pytest.fixture(autouse=True)
def fresh_trust(monkeypatch):
    """Trust as a worker starts with it; whatever a probe might add is thrown away."""
    monkeypatch.setattr(instance, "_extra_prefixes", [])
    monkeypatch.setattr(instance, "_extra_paths", [])
    monkeypatch.delenv("ALPHAMILL_TRUSTED_PATHS", raising=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A small demo market and a private MLflow store / feature cache."""
    root = tmp_path_factory.mktemp("kinds")
    market = generate_demo_market(
        root / "market", n=8, start="2010-01-01", end="2012-12-31", seed=1
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALPHAMILL_HOME", str(root / "home"))
        mp.setenv("ALPHAMILL_TRACKING_URI", str(root / "mlruns"))
        mp.setenv("ALPHAMILL_CACHE_DIR", str(root / "cache"))
        mp.setenv("ALPHAMILL_NUM_THREADS", "1")
        yield {"root": root, "market": str(market)}


def handler(market: str, **kwargs) -> dict:
    return {
        "class": "Alpha158",
        "module_path": "alphamill.dataset",
        "kwargs": {
            "start_time": "2010-01-01",
            "end_time": "2012-12-31",
            "fit_start_time": "2010-01-01",
            "fit_end_time": "2011-06-30",
            "data": market,
            **kwargs,
        },
    }


def dataset(market: str, **handler_kwargs) -> dict:
    return {
        "class": "DatasetH",
        "module_path": "alphamill.dataset",
        "kwargs": {
            "handler": handler(market, **handler_kwargs),
            "segments": {
                "train": ["2010-01-01", "2011-06-30"],
                "valid": ["2011-07-01", "2011-12-31"],
                "test": ["2012-01-01", "2012-12-31"],
            },
        },
    }


def task(market: str, model: dict | None = None, data: dict | None = None, record=None) -> dict:
    return {
        "model": model or {"class": "LinearModel", "module_path": "alphamill.model", "kwargs": {}},
        "dataset": data or dataset(market),
        "record": record if record is not None else [],
        "experiment_name": "probes",
    }


def run_script(sentinel: Path) -> dict:
    """The private scikit-learn helper that runs a Python script in a subprocess."""
    code = f"open({str(sentinel)!r}, 'w').write('ran')"
    return {
        "class": "assert_run_python_script_without_output",
        "module_path": "sklearn.utils._testing",
        "kwargs": {"source_code": code},
    }


def probes(market: str, sentinel: Path, tmp: Path) -> dict[str, tuple[dict, str, str]]:
    """name -> (task, field path of the refusal, what that place expects)."""
    payload = tmp / "evil" / "payload.py"
    payload.parent.mkdir(exist_ok=True)
    payload.write_text(f"open({str(sentinel)!r}, 'w').write('ran')\nclass DatasetH:\n    pass\n")
    shell = {"class": "system", "module_path": "posix", "kwargs": {"command": f"touch {sentinel}"}}
    return {
        "private-test-helper": (
            task(market, model=run_script(sentinel)),
            "task.model.module_path",
            MODEL,
        ),
        "private-test-helper-dotted": (
            task(
                market,
                model={
                    **run_script(sentinel),
                    "class": "sklearn.utils._testing.assert_run_python_script_without_output",
                    "module_path": None,
                },
            ),
            "task.model.class",
            MODEL,
        ),
        "trust-module-then-use-it": (
            task(
                market,
                model={
                    "class": "trust_module_prefix",
                    "module_path": "alphamill.instance",
                    "kwargs": {"prefix": "posix"},
                },
                data=shell,
            ),
            "task.model.class",
            MODEL,
        ),
        "trust-path-then-load-a-file": (
            task(
                market,
                model={
                    "class": "trust_path",
                    "module_path": "alphamill.instance",
                    "kwargs": {"directory": "/"},
                },
                data={"class": "DatasetH", "module_path": str(payload)},
            ),
            "task.model.class",
            MODEL,
        ),
        "loader-as-model": (
            task(
                market,
                model={
                    "class": "init_instance_by_config",
                    "module_path": "alphamill.instance",
                    "kwargs": {"config": run_script(sentinel)},
                },
            ),
            "task.model.class",
            MODEL,
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "private-test-helper",
        "private-test-helper-dotted",
        "trust-module-then-use-it",
        "trust-path-then-load-a-file",
        "loader-as-model",
    ],
)
def test_probes_run_nothing_in_task_train(env, tmp_path, name):
    from alphamill.workflow.task_train import task_train

    sentinel = tmp_path / "sentinel"
    probe, field, expected = probes(env["market"], sentinel, tmp_path)[name]
    with pytest.raises(ConfigError) as info:
        task_train(probe, "probes")
    assert info.value.path == field, str(info.value)
    assert f"task.model expects {expected}" in str(info.value)
    assert not sentinel.exists(), "the task's code ran"
    assert instance.trusted_module_prefixes() == ("alphamill", "lightgbm", "sklearn", *_env_trust())
    assert not instance._extra_paths


def _env_trust() -> tuple[str, ...]:
    return tuple(p for p in os.environ.get("ALPHAMILL_TRUSTED_MODULES", "").split(",") if p)


def test_probes_through_a_real_worker_claiming_from_sqlite(env, tmp_path):
    """The rows fail with a clear error naming the field and the kind; nothing ran, no
    trust changed in the worker, and the worker itself carried on to the end."""
    sentinel = tmp_path / "sentinel"
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    found = probes(env["market"], sentinel, tmp_path)
    with TaskManager("attack", url, max_attempts=1) as tm:
        ids = tm.create_task([t for t, _, _ in found.values()])
    proc = subprocess.run(
        [*CLI, "-t", "attack", "--url", url, "worker", "--until-empty", "--retry-backoff", "0"],
        cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert not sentinel.exists(), "a task's code ran in the worker"
    conn = sqlite3.connect(tmp_path / "pool.db")
    rows = dict(conn.execute("SELECT id, status || '|' || last_error FROM tasks").fetchall())
    conn.close()
    assert len(rows) == len(found)
    for task_id, (name, (_, field, expected)) in zip(ids, found.items(), strict=True):
        status, error = rows[int(task_id)].split("|", 1)
        assert status == "failed", (name, status)
        assert f"ConfigError: {field}: " in error and f"task.model expects {expected}" in error, (
            name,
            error,
        )


def test_worker_func_must_be_a_declared_task_function(tmp_path):
    """``--func`` names only task functions of trusted modules; an untrusted module is not
    even imported."""
    sentinel = tmp_path / "sentinel"
    (tmp_path / "evil_func_am.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\ndef run(task, **kw):\n    return 1\n"
    )
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    with TaskManager("funcs", url) as tm:
        tm.create_task([{"n": 1}])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    cases = {
        "evil_func_am:run": "module 'evil_func_am' is not trusted",
        "alphamill.instance:trust_module_prefix": "is not declared a task function",
        "sklearn.utils._testing:assert_run_python_script_without_output": "is private",
        "alphamill.trainer:TrainerR": "is a class, not a function",
    }
    for spec, words in cases.items():
        proc = subprocess.run(
            [*CLI, "-t", "funcs", "--url", url, "worker", "--until-empty", "--func", spec],
            cwd=str(tmp_path),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, (spec, proc.stderr)
        assert "func: " in proc.stderr and words in proc.stderr, (spec, proc.stderr)
        assert "expects a task function declared with @alphamill.kinds.task_function" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not sentinel.exists(), f"{spec}: the module was imported"
    with TaskManager("funcs", url) as tm:
        assert tm.task_stat() == {"waiting": 1}


# -- every place of a task ----------------------------------------------------------------------


def _gadget_places(market: str, sentinel: Path):
    from alphamill.dataset import DatasetH
    from alphamill.dataset.handler import DataHandlerLP
    from alphamill.model import SklearnModel

    gadget = run_script(sentinel)
    segments = {"train": ["2010-01-01", "2011-12-31"]}
    return {
        "handler": (
            lambda: DatasetH(gadget, segments),
            "dataset.kwargs.handler.module_path",
            "dataset.kwargs.handler expects a data handler: a subclass of alphamill.dataset.DataHandlerLP",
        ),
        "processor": (
            lambda: DataHandlerLP(learn_processors=[gadget]),
            "dataset.kwargs.handler.kwargs.learn_processors.0.module_path",
            "dataset.kwargs.handler.kwargs.learn_processors.0 expects a processor",
        ),
        "estimator": (
            lambda: SklearnModel(gadget),
            "task.model.kwargs.estimator.module_path",
            "task.model.kwargs.estimator expects a scikit-learn estimator",
        ),
    }


@pytest.mark.parametrize("place", ["handler", "processor", "estimator"])
def test_each_place_refuses_other_kinds_before_calling(env, tmp_path, place):
    sentinel = tmp_path / "sentinel"
    build, field, expected = _gadget_places(env["market"], sentinel)[place]
    with pytest.raises(ConfigError) as info:
        build()
    assert info.value.path == field, str(info.value)
    assert expected in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (
            {"class": "LGBModel", "module_path": "alphamill.model"},
            "alphamill.model.LGBModel is not a subclass of alphamill.dataset.handler.DataHandlerLP",
        ),
        (
            {
                "class": "trust_module_prefix",
                "module_path": "alphamill.instance",
                "kwargs": {"prefix": "os"},
            },
            "is a function, not a class",
        ),
    ],
)
def test_handler_place_names_field_and_kind(env, config, words):
    from alphamill.dataset import DatasetH

    with pytest.raises(ConfigError) as info:
        DatasetH(config, {"train": ["2010-01-01", "2011-12-31"]})
    assert info.value.path == "dataset.kwargs.handler.class"
    assert words in str(info.value) and "expects a data handler" in str(info.value)
    assert "os" not in instance.trusted_module_prefixes()


def test_estimator_place_takes_only_regressors_and_classifiers():
    from alphamill.model import SklearnModel

    assert type(SklearnModel({"class": "Ridge"}).estimator).__name__ == "Ridge"
    assert (
        type(SklearnModel({"class": "LGBMRegressor", "module_path": "lightgbm"}).estimator).__name__
        == "LGBMRegressor"
    )
    for config, words in (
        (
            {"class": "StandardScaler", "module_path": "sklearn.preprocessing"},
            "neither a regressor",
        ),
        (
            {"class": "LinearModel", "module_path": "alphamill.model"},
            "not a subclass of sklearn.base.BaseEstimator",
        ),
        ({"class": "all_estimators", "module_path": "sklearn.utils"}, "is a function"),
    ):
        with pytest.raises(ConfigError, match=words) as info:
            SklearnModel(config)
        assert info.value.path == "task.model.kwargs.estimator.class"


def test_record_place_after_fit_and_in_the_preflight_check(env, tmp_path):
    from alphamill.workflow.experiment import validate_tasks
    from alphamill.workflow.task_train import task_train

    sentinel = tmp_path / "sentinel"
    bad = {
        "class": "trust_module_prefix",
        "module_path": "alphamill.instance",
        "kwargs": {"prefix": "posix"},
    }
    probe = task(env["market"], record=[{"class": "SignalRecord"}, bad])
    expected = (
        "task.record.1 expects a record: a subclass of alphamill.workflow.record_temp.RecordTemp"
    )
    with pytest.raises(ConfigError, match=expected) as info:
        validate_tasks([probe])
    assert info.value.path == "task.record.1.class"
    with pytest.raises(ConfigError, match=expected) as info:
        task_train(probe, "probes")
    assert info.value.path == "task.record.1.class"
    assert "posix" not in instance.trusted_module_prefixes()
    assert not sentinel.exists()


# -- what must keep working ---------------------------------------------------------------------


RESEARCH = '''
import numpy as np

from alphamill.features.processors import Processor
from alphamill.model import LinearModel
from alphamill.workflow.record_temp import SignalRecord


class ShrunkLinear(LinearModel):
    """A researcher's model: ridge with a fixed shrinkage."""

    def __init__(self, shrink=1.0):
        super().__init__("ridge", alpha=shrink)
        self.shrink = shrink

    def config_kwargs(self):
        return {"shrink": self.shrink}


class ClipFeatures(Processor):
    _params = ("bound",)

    def __init__(self, bound=3.0):
        self.bound = bound

    def __call__(self, df):
        out = df.copy()
        out["feature"] = out["feature"].clip(-self.bound, self.bound)
        return out


class TaggedSignal(SignalRecord):
    def generate(self, **kwargs):
        super().generate(**kwargs)
        self.recorder.set_tags(researcher="yes")


def helper(**kwargs):
    return np.zeros(1)
'''


def test_a_researchers_own_classes_in_a_trusted_module(env, tmp_path, monkeypatch):
    from alphamill.workflow.task_train import load_recorded_model, task_train

    pkg = tmp_path / "myresearch_kinds_am"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(RESEARCH))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ALPHAMILL_TRUSTED_MODULES", "myresearch_kinds_am")
    research = task(
        env["market"],
        model={
            "class": "ShrunkLinear",
            "module_path": "myresearch_kinds_am",
            "kwargs": {"shrink": 0.5},
        },
        data=dataset(
            env["market"],
            infer_processors=[
                {
                    "class": "ClipFeatures",
                    "module_path": "myresearch_kinds_am",
                    "kwargs": {"bound": 2.0},
                },
                {"class": "Fillna"},
            ],
        ),
        record=[
            {
                "class": "myresearch_kinds_am.TaggedSignal",
                "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>"},
            },
            {"class": "SigAnaRecord", "module_path": "alphamill.workflow.record_temp"},
        ],
    )
    rec = task_train(research, "research")
    assert rec.list_tags()["researcher"] == "yes"
    assert "IC" in rec.list_metrics()
    model = load_recorded_model(rec)  # reloaded through the same rules
    assert type(model).__name__ == "ShrunkLinear" and model.shrink == 0.5
    # a function of the same trusted module is no model
    with pytest.raises(ConfigError, match="myresearch_kinds_am.helper is a function") as info:
        task_train(
            {**research, "model": {"class": "helper", "module_path": "myresearch_kinds_am"}},
            "research",
        )
    assert info.value.path == "task.model.class"
    monkeypatch.setenv("ALPHAMILL_TRUSTED_MODULES", "")
    with pytest.raises(ConfigError, match="'myresearch_kinds_am' is not trusted"):
        task_train(research, "research")
