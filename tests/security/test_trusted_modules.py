"""init_instance_by_config imports only trusted modules; the refusal says how to trust one.

A task definition can come from a shared pool that a colleague (or an attacker) can write, so
``{"class": ..., "module_path": ...}`` must never be a way to run arbitrary code on workers.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from alphamill.errors import ConfigError
from alphamill.instance import init_instance_by_config

UNTRUSTED = [
    {"class": "system", "module_path": "os", "kwargs": {"command": "true"}},
    {"class": "Popen", "module_path": "subprocess", "kwargs": {"args": ["true"]}},
    {"class": "eval", "module_path": "builtins", "kwargs": {}},
    {"class": "loads", "module_path": "pickle", "kwargs": {}},
    {"class": "os.system", "kwargs": {"command": "true"}},
    {"class": "import_module", "module_path": "importlib"},
]


@pytest.mark.parametrize("config", UNTRUSTED, ids=lambda c: f"{c.get('module_path', '')}:{c['class']}")
def test_untrusted_module_refused_with_how_to_trust(config, monkeypatch):
    monkeypatch.delenv("ALPHAMILL_TRUSTED_MODULES", raising=False)
    with pytest.raises(ConfigError) as exc:
        init_instance_by_config(config, path="task.model")
    msg = str(exc.value)
    assert "task.model" in msg and "not trusted" in msg
    assert "ALPHAMILL_TRUSTED_MODULES=" in msg and "trust_module_prefix" in msg


@pytest.mark.parametrize(
    "config",
    [
        # alphamill.model and alphamill.task.worker import these names; reaching them
        # through them must not work
        {"class": "import_module", "module_path": "alphamill.model"},
        {"class": "os.system", "module_path": "alphamill.task.worker"},
        {"class": "alphamill.model.import_module"},
    ],
    ids=["reexported-function", "dotted-through-trusted", "full-dotted-name"],
)
def test_trusted_module_reexporting_an_untrusted_name_is_refused(config):
    with pytest.raises(ConfigError) as exc:
        init_instance_by_config(config, path="task.model")
    assert "not trusted" in str(exc.value) and "ALPHAMILL_TRUSTED_MODULES" in str(exc.value)


def test_py_file_outside_trusted_paths_refused(tmp_path, monkeypatch):
    evil = tmp_path / "evil" / "payload.py"
    evil.parent.mkdir()
    marker = tmp_path / "ran"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\nclass M:\n    pass\n")
    monkeypatch.setenv("ALPHAMILL_TRUSTED_PATHS", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError) as exc:
        init_instance_by_config({"class": "M", "module_path": str(evil)}, path="task.model")
    assert "ALPHAMILL_TRUSTED_PATHS" in str(exc.value)
    assert not marker.exists(), "the untrusted file was executed"


def test_untrusted_module_is_not_even_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "sideeffect_pkg_am"
    pkg.mkdir()
    marker = tmp_path / "imported"
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass M:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ALPHAMILL_TRUSTED_MODULES", raising=False)
    with pytest.raises(ConfigError, match="not trusted"):
        init_instance_by_config({"class": "M", "module_path": "sideeffect_pkg_am"}, path="task.model")
    assert not marker.exists() and "sideeffect_pkg_am" not in sys.modules


def test_trusting_a_prefix_from_the_environment_allows_it(tmp_path, monkeypatch):
    pkg = tmp_path / "myresearch_am"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        class Model:
            def __init__(self, depth=1):
                self.depth = depth
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ALPHAMILL_TRUSTED_MODULES", "myresearch_am")
    obj = init_instance_by_config({"class": "Model", "module_path": "myresearch_am", "kwargs": {"depth": 3}})
    assert obj.depth == 3
    monkeypatch.setenv("ALPHAMILL_TRUSTED_MODULES", "myresearch_am_other")
    with pytest.raises(ConfigError, match="not trusted"):
        init_instance_by_config({"class": "Model", "module_path": "myresearch_am"})


def test_pickle_file_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError):
        init_instance_by_config(f"file://{tmp_path}/model.pkl", path="task.model")
