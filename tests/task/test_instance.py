"""init_instance_by_config: Qlib's config forms, trusted imports, errors that name the path."""

from __future__ import annotations

import os
import textwrap

import pytest

from alphamill import instance
from alphamill.errors import ConfigError
from alphamill.instance import (
    get_callable_kwargs,
    get_module_by_module_path,
    init_instance_by_config,
    trust_module_prefix,
    trust_path,
    trusted_module_prefixes,
)

MOD = "tests.task.data.sample_mod"


@pytest.fixture(autouse=True)
def clean_trust(monkeypatch, tmp_path):
    """Each test starts with only the default prefixes and an empty config file."""
    monkeypatch.setattr(instance, "_extra_prefixes", [])
    monkeypatch.setattr(instance, "_extra_paths", [])
    monkeypatch.setattr(instance, "_file_modules", {})
    monkeypatch.delenv("ALPHAMILL_TRUSTED_MODULES", raising=False)
    monkeypatch.delenv("ALPHAMILL_TRUSTED_PATHS", raising=False)
    monkeypatch.delenv("ALPHAMILL_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def trusted(monkeypatch):
    monkeypatch.setenv("ALPHAMILL_TRUSTED_MODULES", MOD)


def test_all_config_forms(trusted):
    from tests.task.data.sample_mod import Model

    a = init_instance_by_config({"class": "Model", "module_path": MOD, "kwargs": {"loss": "l1"}})
    b = init_instance_by_config({"class": f"{MOD}.Model", "kwargs": {"loss": "l1"}})
    c = init_instance_by_config(f"{MOD}.Model")
    d = init_instance_by_config(Model)
    e = init_instance_by_config({"class": Model, "kwargs": {"learning_rate": 0.5}})
    f = init_instance_by_config({"func": "make_model", "module_path": MOD})
    g = init_instance_by_config({"class": "Model"}, default_module=MOD)
    assert all(isinstance(x, Model) for x in (a, b, c, d, e, f, g))
    assert (a.loss, b.loss, c.loss, e.learning_rate) == ("l1", "l1", "mse", 0.5)
    assert init_instance_by_config(a, accept_types=Model) is a
    assert init_instance_by_config(a, accept_types=(int, Model)) is a


def test_try_kwargs_passed_only_when_accepted(trusted):
    from tests.task.data.sample_mod import Strict

    m = init_instance_by_config({"class": f"{MOD}.Model"}, try_kwargs={"seed": 1})
    assert m.extra == {"seed": 1}
    Strict.calls = 0
    s = init_instance_by_config(
        {"class": f"{MOD}.Strict", "kwargs": {"loss": "x"}}, try_kwargs={"seed": 1}
    )
    assert (s.loss, Strict.calls) == ("x", 1)  # never called twice
    # a try_kwarg that the config also sets is dropped: the config wins
    s = init_instance_by_config(
        {"class": f"{MOD}.Strict", "kwargs": {"loss": "x", "depth": 5}}, try_kwargs={"depth": 9}
    )
    assert s.depth == 5
    # explicit kwargs are always passed
    s = init_instance_by_config({"class": f"{MOD}.Strict"}, loss="y")
    assert s.loss == "y"


def test_try_kwargs_retry_without_signature(trusted, monkeypatch):
    """Callables whose signature cannot be read fall back to Qlib's retry on TypeError."""
    import inspect

    class NoSig:
        def __init__(self, **kw):
            if "seed" in kw:
                raise TypeError("unexpected keyword argument 'seed'")
            self.kw = kw

    orig = inspect.signature

    def no_signature(obj, *a, **k):
        if obj is NoSig:
            raise ValueError("no signature")
        return orig(obj, *a, **k)

    monkeypatch.setattr(inspect, "signature", no_signature)
    obj = init_instance_by_config({"class": NoSig, "kwargs": {"a": 1}}, try_kwargs={"seed": 1})
    assert obj.kw == {"a": 1}


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"module_path": MOD}, "task.model", "missing key 'class'"),
        ({"class": "Model"}, "task.model", "give 'module_path'"),
        ({"class": 3, "module_path": MOD}, "task.model.class", "got int"),
        ({"class": "Modle", "module_path": MOD}, "task.model.class", "did you mean Model"),
        ({"class": "NOT_CALLABLE", "module_path": MOD}, "task.model.class", "expected a class"),
        (
            {"class": "Model", "module_path": "tests.task.data.nope"},
            "task.model.module_path",
            "not trusted",
        ),
        ({"class": "Model", "module_path": MOD, "kwargs": [1]}, "task.model.kwargs", "mapping"),
        (
            {"class": "Model", "module_path": MOD, "kwargs": {"1x": 1}},
            "task.model.kwargs",
            "identifiers",
        ),
        ({"class": "Strict", "module_path": MOD}, "task.model.kwargs", "missing a required"),
        (
            {"class": "Strict", "module_path": MOD, "kwargs": {"loss": "a", "los": 2}},
            "task.model.kwargs.los",
            "does not accept",
        ),
        ({"class": "Plain", "module_path": MOD, "kwargs": {"n": "x"}}, "task.model.kwargs", "str"),
        (3.5, "task.model", "got float"),
        ("file:///tmp/model.pkl", "task.model", "unpickle"),
    ],
)
def test_errors_name_the_path(trusted, config, path, words):
    with pytest.raises(ConfigError) as info:
        init_instance_by_config(config, path="task.model")
    assert info.value.path == path, str(info.value)
    assert str(info.value).startswith(path + ": ")
    assert words in str(info.value)


def test_module_not_found_names_module(monkeypatch):
    monkeypatch.setenv("ALPHAMILL_TRUSTED_MODULES", "tests")
    with pytest.raises(ConfigError, match="module 'tests.task.data.nope' not found") as info:
        init_instance_by_config({"class": "X", "module_path": "tests.task.data.nope"})
    assert info.value.path == "task.module_path"
    with pytest.raises(ConfigError, match="not found") as info:
        init_instance_by_config({"class": "tests.task.data.nope.X"}, path="task.model")
    assert info.value.path == "task.model.class"


def test_caller_kwargs_clash_with_config(trusted):
    with pytest.raises(ConfigError) as info:
        init_instance_by_config({"class": f"{MOD}.Model", "kwargs": {"loss": "a"}}, loss="b")
    assert info.value.path == "task.kwargs.loss"


def test_untrusted_modules_are_refused_with_how_to():
    with pytest.raises(ConfigError) as info:
        init_instance_by_config({"class": "system", "module_path": "os"}, path="task.model")
    msg = str(info.value)
    assert info.value.path == "task.model.module_path"
    assert "ALPHAMILL_TRUSTED_MODULES=os" in msg and "trust_module_prefix('os')" in msg
    with pytest.raises(ConfigError, match="not trusted"):
        init_instance_by_config("builtins.eval")
    # a typo in an untrusted name is reported as not found, without importing anything
    with pytest.raises(ConfigError, match="'alphamil.model' not found"):
        init_instance_by_config({"class": "X", "module_path": "alphamil.model"})
    # a prefix must match whole name parts
    trust_module_prefix("tests.task.dat")
    with pytest.raises(ConfigError, match="not trusted"):
        get_module_by_module_path(MOD)


def test_reexports_from_untrusted_modules_are_refused(trusted):
    with pytest.raises(ConfigError, match="defined in module 'posix'") as info:
        init_instance_by_config({"class": "system", "module_path": MOD, "kwargs": {}})
    assert info.value.path == "task.class"
    with pytest.raises(ConfigError, match="'tests.task.data.other_mod'"):
        init_instance_by_config(f"{MOD}.Helper")
    trust_module_prefix("tests.task.data.other_mod")
    assert init_instance_by_config(f"{MOD}.Helper").x == 0


def test_trust_sources(monkeypatch, tmp_path):
    with pytest.raises(ConfigError):
        get_module_by_module_path(MOD)
    trust_module_prefix("tests.task")
    assert get_module_by_module_path(MOD).__name__ == MOD
    monkeypatch.setattr(instance, "_extra_prefixes", [])
    (tmp_path / "alphamill.yaml").write_text("trusted_modules: [tests.task.data]\n")
    assert "tests.task.data" in trusted_module_prefixes()
    assert get_module_by_module_path(MOD).__name__ == MOD
    (tmp_path / "alphamill.yaml").write_text("trusted_modules: 5\n")
    with pytest.raises(ConfigError, match="trusted_modules"):
        get_module_by_module_path(MOD)
    with pytest.raises(ConfigError):
        trust_module_prefix("")


def test_defaults_are_trusted():
    est = init_instance_by_config(
        {"class": "LinearRegression", "module_path": "sklearn.linear_model"}
    )
    assert type(est).__name__ == "LinearRegression"


def _write_module(directory, name="user_model.py"):
    directory.mkdir(parents=True, exist_ok=True)
    f = directory / name
    f.write_text(
        textwrap.dedent(
            """
            class UserModel:
                def __init__(self, alpha=1.0):
                    self.alpha = alpha
            """
        )
    )
    return f


def test_py_file_needs_an_explicitly_trusted_directory(tmp_path, monkeypatch):
    """Not even the working directory is trusted by default: a task naming a script that
    lies there would run it."""
    marker = tmp_path / "ran"
    script = tmp_path / "make_report.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ConfigError, match="not under a trusted directory"):
        init_instance_by_config({"class": "X", "module_path": "make_report.py"}, path="task.model")
    assert not marker.exists()
    f = _write_module(tmp_path / "models")
    monkeypatch.setenv("ALPHAMILL_TRUSTED_PATHS", ".")
    obj = init_instance_by_config(
        {"class": "UserModel", "module_path": str(f), "kwargs": {"alpha": 2.0}}
    )
    assert obj.alpha == 2.0
    # relative path, loaded once and reused while unchanged
    again = init_instance_by_config({"class": "UserModel", "module_path": "models/user_model.py"})
    assert type(again) is type(obj)
    (tmp_path / "models" / "_hidden.py").write_text("class UserModel:\n    pass\n")
    with pytest.raises(ConfigError, match="private"):
        init_instance_by_config({"class": "UserModel", "module_path": "models/_hidden.py"})


def test_py_file_outside_trusted_dirs_is_refused(tmp_path, monkeypatch):
    outside = _write_module(tmp_path / "outside")
    monkeypatch.chdir(_write_module(tmp_path / "work").parent)
    with pytest.raises(ConfigError) as info:
        init_instance_by_config({"class": "UserModel", "module_path": str(outside)}, path="task.m")
    msg = str(info.value)
    assert info.value.path == "task.m.module_path"
    assert "not under a trusted directory" in msg and "ALPHAMILL_TRUSTED_PATHS" in msg
    # ../ cannot escape the trusted directory
    with pytest.raises(ConfigError, match="not under a trusted"):
        init_instance_by_config({"class": "UserModel", "module_path": "../outside/user_model.py"})
    trust_path(tmp_path / "outside")
    assert init_instance_by_config({"class": "UserModel", "module_path": str(outside)}).alpha == 1.0


def test_trusted_paths_env_replaces_cwd(tmp_path, monkeypatch):
    f = _write_module(tmp_path / "a")
    g = _write_module(tmp_path / "b", "other.py")
    monkeypatch.setenv("ALPHAMILL_TRUSTED_PATHS", str(tmp_path / "b") + os.pathsep + "/nonexistent")
    with pytest.raises(ConfigError, match="not under a trusted"):
        init_instance_by_config({"class": "UserModel", "module_path": str(f)})
    assert init_instance_by_config({"class": "UserModel", "module_path": str(g)}).alpha == 1.0


def test_py_file_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAMILL_TRUSTED_PATHS", str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        init_instance_by_config({"class": "X", "module_path": "missing.py"})
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="RuntimeError: boom"):
        init_instance_by_config({"class": "X", "module_path": str(bad)})


def test_get_callable_kwargs(trusted):
    from tests.task.data.sample_mod import Model

    klass, kwargs = get_callable_kwargs({"class": "Model", "module_path": MOD, "kwargs": {"a": 1}})
    assert klass is Model and kwargs == {"a": 1}
    assert get_callable_kwargs(f"{MOD}.Model") == (Model, {})
