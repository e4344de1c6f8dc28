"""Artifact names never become paths outside the run's folder.

Objects are written to a temporary folder under their name before MLflow stores them, so a
name such as ``../x`` used to write next to that folder first (and MLflow refused it only
afterwards). Every such name is now refused before anything is written or read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from alphamill.errors import ConfigError
from alphamill.workflow.recorder import ArtifactNotFound, R

TRAVERSALS = [
    "../x",
    "../../x",
    "a/../../x",
    "/abs/x",
    "./x",
    "a//b",
    "a/",
    "x\x00y",
    "a\\..\\b",
    "..",
    "",
    "a\nb",
]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_traversing_object_names_write_nothing(exp_name, tmp_path, monkeypatch):
    scratch = tmp_path / "deep" / "tmp"
    scratch.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with R.start(experiment_name=exp_name) as rec:
        for name in TRAVERSALS:
            with pytest.raises(ConfigError, match="artifact"):
                rec.save_objects(**{"ok.json": {"a": 1}, name: {"a": 2}})
            with pytest.raises(ConfigError, match="artifact"):
                rec.save_objects(artifact_path=name + "/../..", x={"a": 3})
        assert rec.list_artifacts() == []  # checked before the first object is stored
    assert _files(tmp_path) == [], "a refused name wrote a file"


def test_traversing_names_are_not_read_either(exp_name):
    with R.start(experiment_name=exp_name) as rec:
        rec.save_objects(x={"a": 1})
    for name in TRAVERSALS:
        # a leading or trailing '/' is dropped ("/abs/x" is the run's "abs/x", not found)
        with pytest.raises((ConfigError, ArtifactNotFound)):
            rec.load_object(name or "/")
        with pytest.raises((ConfigError, ArtifactNotFound)):
            rec.download_artifact(name or "/")


def test_ordinary_names_are_kept():
    from alphamill.workflow.recorder import check_artifact_path

    for name in ("pred.pkl", "sig_analysis/ic.parquet", "a.b-c_d/e f.json", "données.json"):
        assert check_artifact_path(name, "name") == name
