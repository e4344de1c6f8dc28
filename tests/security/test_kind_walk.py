"""Every public callable of the default trusted packages, at every place of a task.

The packages a worker trusts by default (alphamill, lightgbm, scikit-learn) hold thousands of
callables, some of which run code (test helpers), import code or widen trust. This walks
them all: every public module is imported, every public callable is named at every place
of a task through the same check the places use, and the test proves that exactly the
accepted kinds pass. Private and test modules are refused by name, without being imported.
A new class or function that becomes reachable from a task makes this test fail until it
is added to the reviewed lists below.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
import warnings
from pathlib import Path

import pytest

from alphamill import instance, kinds
from alphamill.errors import ConfigError
from alphamill.instance import DEFAULT_TRUSTED_MODULES, resolve_callable

ROOT = Path(__file__).resolve().parents[2]

#: What each place accepts from the default trusted packages, reviewed by hand.
EXPECTED = {
    "model": {
        "alphamill.model.base.Model",
        "alphamill.model.gbdt.LGBModel",
        "alphamill.model.xgboost.XGBModel",
        "alphamill.model.catboost_model.CatBoostModel",
        "alphamill.model.linear.LinearModel",
        "alphamill.model.sklearn.SklearnModel",
    },
    "dataset": {"alphamill.dataset.dataset.Dataset", "alphamill.dataset.dataset.DatasetH"},
    "handler": {
        "alphamill.dataset.handler.DataHandlerLP",
        "alphamill.dataset.handler.Alpha158",
        "alphamill.dataset.alpha360.Alpha360",
    },
    "processor": {
        f"alphamill.features.processors.{name}"
        for name in (
            "Processor",
            "DropnaProcessor",
            "DropnaLabel",
            "FilterCol",
            "ProcessInf",
            "Fillna",
            "ZScoreNorm",
            "RobustZScoreNorm",
            "CSZScoreNorm",
            "CSRankNorm",
        )
    },
    "record": {
        f"alphamill.workflow.record_temp.{name}"
        for name in ("RecordTemp", "SignalRecord", "SigAnaRecord", "PortAnaRecord")
    },
    "task function": {
        "alphamill.trainer.pool_train",
        "alphamill.trainer.pool_begin_train",
        "alphamill.workflow.task_train.task_train",
        "alphamill.workflow.task_train.begin_task_train",
        "alphamill.workflow.task_train.end_task_train",
        "alphamill.task.demo_funcs.demo_train",
        "alphamill.task.demo_funcs.noop",
    },
}

#: Callables that run code, import code or widen trust: refused at every place.
GADGETS = {
    ("alphamill.instance", "trust_module_prefix"),
    ("alphamill.instance", "trust_path"),
    ("alphamill.instance", "init_instance_by_config"),
    ("alphamill.instance", "get_module_by_module_path"),
    ("alphamill.instance", "resolve_callable"),
    ("alphamill.model", "import_module"),
    ("alphamill.task.worker", "load_func"),
    ("alphamill.kinds", "task_function"),
    ("sklearn.utils", "all_estimators"),
}

_TEST_PARTS = {"tests", "test", "testing", "conftest"}


def _test_like(part: str) -> bool:
    bare = part.strip("_")
    return bare in _TEST_PARTS or bare.startswith("test_")


def _hidden(part: str) -> bool:
    return part.startswith("_") or _test_like(part)


def _walk() -> tuple[list[str], list[str], dict[str, str]]:
    """(public modules imported, private or test modules seen, modules that fail to import)."""
    public: list[str] = []
    hidden: list[str] = []
    broken: dict[str, str] = {}

    def visit(name: str) -> None:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # optional dependencies (cupy, torch, dask) are absent
            broken[name] = f"{type(e).__name__}: {e}"
            return
        public.append(name)
        for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
            child = f"{name}.{info.name}"
            if _hidden(info.name):
                hidden.append(child)
            else:
                visit(child)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for package in DEFAULT_TRUSTED_MODULES:
            visit(package)
    return public, hidden, broken


@pytest.fixture(scope="module")
def walk(monkeypatch_module):
    return _walk()


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Only the default trust: no environment, no config file, nothing added by the API."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("ALPHAMILL_TRUSTED_MODULES", raising=False)
        mp.delenv("ALPHAMILL_TRUSTED_PATHS", raising=False)
        mp.delenv("ALPHAMILL_CONFIG", raising=False)
        mp.setattr(instance, "_extra_prefixes", [])
        mp.setattr(instance, "_extra_paths", [])
        mp.chdir(ROOT / "tests" / "security")  # no alphamill.yaml here
        yield mp


def _full_name(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _is_estimator(obj: object) -> bool:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

    return (
        inspect.isclass(obj)
        and issubclass(obj, BaseEstimator)
        and issubclass(obj, (RegressorMixin, ClassifierMixin))
        and not inspect.isabstract(obj)
    )


def test_every_public_callable_at_every_place(walk):
    public, _, broken = walk
    assert {"alphamill.instance", "sklearn.linear_model", "lightgbm.sklearn"} <= set(public)
    assert all(not any(_hidden(p) for p in name.split(".")) for name in public)
    assert set(broken) <= {
        "sklearn.externals.array_api_compat.cupy",
        "sklearn.externals.array_api_compat.dask.array",
        "sklearn.externals.array_api_compat.torch",
    }, broken
    assert [k.name for k in kinds.KINDS] == [
        "model",
        "dataset",
        "handler",
        "processor",
        "record",
        "estimator",
        "task function",
    ]
    accepted: dict[str, set[str]] = {k.name: set() for k in kinds.KINDS}
    estimators_found: set[str] = set()
    seen = 0
    gadgets_seen = set()
    for name in public:
        module = sys.modules[name]
        for attr in dir(module):
            if attr.startswith("_"):
                continue
            try:
                obj = getattr(module, attr)
            except Exception:
                continue
            if not callable(obj):
                continue
            seen += 1
            if (name, attr) in GADGETS:
                gadgets_seen.add((name, attr))
            home = obj.__module__.split(".") if _is_estimator(obj) else []
            if home and home[0] in DEFAULT_TRUSTED_MODULES and not any(map(_test_like, home)):
                estimators_found.add(_full_name(obj))
            for kind in kinds.KINDS:
                place = f"task.{kind.name.replace(' ', '_')}"
                try:
                    got = resolve_callable({"class": attr, "module_path": name}, kind, path=place)
                except ConfigError as e:
                    assert str(e).startswith(f"{place}"), str(e)
                    continue
                assert got is obj
                assert inspect.isclass(got) or kind is kinds.TASK_FUNCTION, (name, attr, kind.name)
                accepted[kind.name].add(_full_name(got))
    assert seen > 2500, seen
    assert gadgets_seen == GADGETS
    estimators = accepted.pop("estimator")
    assert accepted == EXPECTED
    # scikit-learn and LightGBM: exactly the concrete regressors and classifiers of the
    # libraries (none from their test suites), e.g. Ridge and LGBMRegressor
    assert estimators == estimators_found
    assert {"sklearn.linear_model._ridge.Ridge", "lightgbm.sklearn.LGBMRegressor"} <= estimators
    assert not any("test" in e.lower() for e in estimators), estimators


def test_gadgets_are_refused_at_every_place_naming_the_place_and_kind(walk):
    for module, attr in sorted(GADGETS):
        for kind in kinds.KINDS:
            with pytest.raises(ConfigError) as info:
                resolve_callable({"class": attr, "module_path": module}, kind, path="task.model")
            assert info.value.path == "task.model.class", str(info.value)
            assert f"task.model expects {kind.expected}" in str(info.value)


def test_private_and_test_modules_are_refused_by_name_without_import(walk):
    _, hidden, _ = walk
    assert "sklearn.utils._testing" in hidden and "sklearn.tests" in hidden
    assert len(hidden) > 100, len(hidden)
    for name in hidden:
        before = name in sys.modules
        for kind in kinds.KINDS:
            for config in ({"class": "X", "module_path": name}, {"class": f"{name}.X"}):
                with pytest.raises(ConfigError, match="private|test suite") as info:
                    resolve_callable(config, kind, path="task.model")
                assert kind.expected in str(info.value)
        assert (name in sys.modules) == before, f"{name} was imported"
    # a test suite's own test modules too (sklearn.tests.test_base is public by its name)
    with pytest.raises(ConfigError, match="test suite"):
        resolve_callable({"class": "T", "module_path": "sklearn.tests.test_base"}, kinds.ESTIMATOR)


def test_private_names_of_public_modules_are_refused(walk):
    public, _, _ = walk
    n = 0
    for name in public:
        module = sys.modules[name]
        for attr in dir(module):
            if (
                attr.startswith("_")
                and attr.isidentifier()
                and callable(getattr(module, attr, None))
            ):
                n += 1
                with pytest.raises(ConfigError, match="private"):
                    resolve_callable({"class": attr, "module_path": name}, kinds.MODEL)
    assert n > 100, n


def test_nested_attributes_are_not_reachable(walk):
    for config in (
        {"class": "LGBModel.load", "module_path": "alphamill.model"},
        {"class": "alphamill.model.LGBModel.load"},
        {"class": "alphamill.instance.os.system"},
    ):
        with pytest.raises(ConfigError):
            resolve_callable(config, kinds.MODEL)


def _kind_argument(call: ast.Call) -> ast.expr | None:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    for kw in call.keywords:
        if kw.arg == "kind":
            return kw.value
    if name == "resolve_callable" and len(call.args) >= 2:
        return call.args[1]
    return None


def test_every_place_that_builds_from_a_config_names_its_kind():
    """Every call of the resolvers inside alphamill passes a kind (the resolvers themselves
    pass the kind they were given), so no place of a task builds without the check."""
    resolvers = {"init_instance_by_config", "get_callable_kwargs", "resolve_callable"}
    calls = []
    for file in sorted((ROOT / "alphamill").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in resolvers:
                continue
            kind = _kind_argument(node)
            where = f"{file.relative_to(ROOT)}:{node.lineno}"
            calls.append(where)
            assert kind is not None, f"{where}: {name} without kind="
            assert not (isinstance(kind, ast.Constant) and kind.value is None), where
            if file.name == "instance.py":
                assert isinstance(kind, ast.Name) and kind.id == "kind", where
    # task_train (model, dataset, records), DatasetH (handler), the handler (processors),
    # SklearnModel (estimator), the pre-flight checks, online updates, saved models, --func
    assert len(calls) >= 14, calls
