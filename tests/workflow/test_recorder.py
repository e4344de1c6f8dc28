"""Recorder and R: artifacts round-trip without pickle, statuses, lookups, references."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphamill.errors import ConfigError
from alphamill.workflow.recorder import (
    ArtifactNotFound,
    R,
    Recorder,
    TrackingError,
    artifact_file_name,
    resolve_store,
)


def _pred() -> pd.DataFrame:
    idx = pd.MultiIndex.from_product(
        [pd.date_range("2020-01-01", periods=3), ["AAA", "BBB"]], names=["datetime", "instrument"]
    )
    return pd.DataFrame({"score": np.linspace(-1, 1, 6)}, index=idx)


def test_round_trip_every_artifact_type(exp_name: str, tmp_path: Path) -> None:
    pred = _pred()
    named = pd.Series([1.5, 2.5], index=pd.Index(["a", "b"], name="k"), name="ic")
    unnamed = pd.Series([3.0, np.nan])
    objs = {
        "pred.pkl": pred,
        "named": named,
        "unnamed.parquet": unnamed,
        "cfg": {"a": [1, 2], "b": {"c": None}, "n": np.int64(3)},
        "items.pkl": [1, "x", 2.5],
        "note.txt": "hello\nworld",
        "conf.yaml": "a: 1\n",
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "flag": True,
    }
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.txt").write_text("tree")
    (folder / "sub" / "meta.json").write_text('{"v": 1}')
    single = tmp_path / "task.json"
    single.write_text('{"model": 1}')
    with R.start(experiment_name=exp_name, recorder_name="types") as rec:
        stored = R.save_objects(**objs)
        assert stored == [
            "pred.parquet",
            "named.parquet",
            "unnamed.parquet",
            "cfg.json",
            "items.json",
            "note.txt",
            "conf.yaml",
            "arr.npy",
            "flag.json",
        ]
        R.save_objects(artifact_path="sig_analysis", **{"ic.pkl": named})
        R.save_objects(local_path=folder, artifact_path="model")
        R.save_objects(local_path=single)
    rec = R.get_recorder(recorder_id=rec.id)
    pd.testing.assert_frame_equal(rec.load_object("pred.pkl"), pred)
    pd.testing.assert_frame_equal(rec.load_object("pred.parquet"), pred)
    pd.testing.assert_series_equal(rec.load_object("named"), named)
    pd.testing.assert_series_equal(rec.load_object("unnamed.parquet"), unnamed)
    pd.testing.assert_series_equal(rec.load_object("sig_analysis/ic.pkl"), named)
    assert rec.load_object("cfg") == {"a": [1, 2], "b": {"c": None}, "n": 3}
    assert rec.load_object("items.pkl") == [1, "x", 2.5]
    assert rec.load_object("note.txt") == "hello\nworld"
    assert rec.load_object("conf.yaml") == "a: 1\n"
    arr = rec.load_object("arr")
    assert arr.dtype == np.float32 and arr.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert rec.load_object("flag.json") is True
    assert rec.load_object("model/sub/meta.json") == {"v": 1}
    assert rec.load_object("task.json") == {"model": 1}
    assert rec.load_object("model/model.txt") == "tree"
    assert set(rec.list_artifacts()) == {
        "pred.parquet",
        "named.parquet",
        "unnamed.parquet",
        "cfg.json",
        "items.json",
        "note.txt",
        "conf.yaml",
        "arr.npy",
        "flag.json",
        "sig_analysis/ic.parquet",
        "model/model.txt",
        "model/sub/meta.json",
        "task.json",
    }
    assert rec.list_artifacts("model") == ["model/model.txt", "model/sub/meta.json"]
    out = rec.download_artifact("model", tmp_path / "dl")
    assert (out / "sub" / "meta.json").read_text() == '{"v": 1}'
    with pytest.raises(ConfigError, match="folder"):
        rec.load_object("model")


def test_nothing_is_pickled(exp_name: str) -> None:
    class Opaque:
        pass

    with R.start(experiment_name=exp_name) as rec:
        with pytest.raises(ConfigError, match="pickle is never used"):
            R.save_objects(**{"model.pkl": Opaque()})
        with pytest.raises(ConfigError, match="without pickle"):
            R.save_objects(objs=np.array([Opaque()], dtype=object))
        with pytest.raises(ConfigError, match="not JSON"):
            R.save_objects(cfg={"x": Opaque()})
        with pytest.raises(ConfigError, match="stored as .parquet, not .json"):
            R.save_objects(**{"pred.json": _pred()})
        with pytest.raises(ConfigError, match="local_path or named objects"):
            R.save_objects(local_path=".", x=1)
        R.save_objects(**{"pred.pkl": _pred(), "label.pickle": _pred()})
    names = rec.list_artifacts()
    assert names == ["label.parquet", "pred.parquet"]
    root = Path(rec.artifact_uri.removeprefix("file://"))
    files = [p.name for p in root.rglob("*") if p.is_file()]
    assert files and not any(f.endswith((".pkl", ".pickle")) for f in files)


def test_artifact_names() -> None:
    assert artifact_file_name("pred.pkl", _pred()) == "pred.parquet"
    assert artifact_file_name("x", np.zeros(2)) == "x.npy"
    assert artifact_file_name("notes.md", "text") == "notes.md"
    with pytest.raises(ConfigError):
        artifact_file_name("a.npy", [1])


def test_missing_artifact_names_run_and_artifact(exp_name: str) -> None:
    with R.start(experiment_name=exp_name) as rec:
        R.save_objects(x=1)
    with pytest.raises(ArtifactNotFound) as info:
        rec.load_object("pred.pkl")
    msg = str(info.value)
    assert rec.id in msg and "pred.pkl" in msg and "pred.parquet" in msg
    with pytest.raises(ArtifactNotFound, match=rec.id):
        rec.load_object("sig_analysis/ic.parquet")


def test_status_params_metrics_tags(exp_name: str) -> None:
    with R.start(experiment_name=exp_name, recorder_name="ok") as rec:
        assert rec.status == "RUNNING" and rec.end_time is None
        R.log_params(lr=0.1, layers=[1, 2], url="postgresql://bob:s3cret@db:5432/pool")
        R.log_metrics(IC=0.05, ICIR=0.4)
        R.log_metrics(step=1, IC=0.06)
        R.set_tags(pool="mongodb://u:pw@h:27017/x?password=abc", stage="done")
    assert rec.status == "FINISHED"
    assert rec.end_time is not None and rec.end_time >= rec.start_time
    params = rec.list_params()
    assert params["lr"] == "0.1" and json.loads(params["layers"]) == [1, 2]
    assert "s3cret" not in params["url"] and params["url"] == "postgresql://bob:***@db:5432/pool"
    tags = rec.list_tags()
    assert "pw" not in tags["pool"] and "abc" not in tags["pool"] and tags["stage"] == "done"
    assert rec.list_metrics() == {"IC": 0.06, "ICIR": 0.4}
    info = rec.info
    assert info["status"] == "FINISHED" and info["experiment_name"] == exp_name
    assert info["name"] == "ok" and info["id"] == rec.id

    with (
        pytest.raises(ZeroDivisionError),
        R.start(experiment_name=exp_name, recorder_name="bad") as bad,
    ):
        R.log_metrics(x=1)
        1 / 0  # noqa: B018
    assert bad.status == "FAILED"
    with pytest.raises(TrackingError, match="no active recorder"):
        R.log_metrics(x=1)
    with pytest.raises(ConfigError, match="metric must be a number"):
        rec.log_metrics(x="abc")
    with pytest.raises(ConfigError, match="expected one of"):
        rec.end_run("DONE")


def test_lookup_list_resume(exp_name: str) -> None:
    with R.start(experiment_name=exp_name, recorder_name="a") as a:
        with pytest.raises(TrackingError, match="already running"):
            R.start_exp(experiment_name=exp_name)
        assert R.get_recorder() is a
    with R.start(experiment_name=exp_name, recorder_name="b") as b:
        pass
    recs = R.list_recorders(exp_name)
    assert set(recs) == {a.id, b.id} and all(isinstance(r, Recorder) for r in recs.values())
    assert list(R.list_recorders(exp_name, status="FINISHED")) == list(recs)
    assert R.get_recorder(experiment_name=exp_name, recorder_name="a") == a
    assert R.get_recorder(recorder_id=b.id).name == "b"
    assert exp_name in R.list_experiments()
    assert R.get_exp(exp_name).id == a.experiment_id
    with pytest.raises(TrackingError, match="no recorder named"):
        R.get_recorder(experiment_name=exp_name, recorder_name="zzz")
    with pytest.raises(TrackingError, match="no experiment named"):
        R.list_recorders(exp_name + "-missing")
    with pytest.raises(TrackingError, match="no recorder with id"):
        R.get_recorder(recorder_id="0" * 32)
    with pytest.raises(TrackingError, match="not"):
        R.get_recorder(recorder_id=a.id, experiment_name="other")
    # resume: same run, RUNNING again, then FINISHED
    with R.start(experiment_name=exp_name, recorder_id=a.id, resume=True) as again:
        assert again.id == a.id and again.status == "RUNNING"
        R.log_metrics(resumed=1)
    assert a.status == "FINISHED" and a.list_metrics()["resumed"] == 1
    with R.start(experiment_name=exp_name, recorder_name="b", resume=True) as again:
        assert again.id == b.id
    assert len(R.list_recorders(exp_name)) == 2


def test_ref_is_json_and_opens_in_another_process(exp_name: str, store_dir: Path) -> None:
    with R.start(experiment_name=exp_name, recorder_name="ref") as rec:
        R.save_objects(**{"pred.pkl": _pred()})
        R.log_metrics(IC=0.25)
    ref = rec.to_ref()
    assert ref == {
        "experiment_id": rec.experiment_id,
        "run_id": rec.id,
        "experiment_name": exp_name,
    }
    assert Recorder.from_ref(json.loads(json.dumps(ref))) == rec
    code = (
        "import json, sys\n"
        "from alphamill.workflow.recorder import Recorder\n"
        "rec = Recorder.from_ref(json.loads(sys.argv[1]))\n"
        "pred = rec.load_object('pred.pkl')\n"
        "print(json.dumps([rec.status, rec.experiment_name, rec.list_metrics()['IC'],"
        " float(pred['score'].sum()), len(pred)]))\n"
    )
    env = {**os.environ, "ALPHAMILL_TRACKING_URI": str(store_dir)}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ref)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    status, name, ic, total, n = json.loads(out.stdout.strip().splitlines()[-1])
    assert (status, name, ic, n) == ("FINISHED", exp_name, 0.25, 6)
    assert total == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="run_id"):
        Recorder.from_ref({"experiment_id": "1"})


def test_store_resolution(tmp_path: Path) -> None:
    plain = resolve_store(str(tmp_path / "mlruns"))
    assert plain.kind == "sqlite" and plain.mlflow_uri.endswith("mlruns/mlflow.db")
    assert plain.artifact_location("my exp").startswith(
        (tmp_path / "mlruns" / "artifacts").as_uri()
    )
    db = resolve_store(f"sqlite:///{tmp_path}/x/m.db")
    assert db.kind == "sqlite" and db.root == tmp_path / "x"
    legacy = tmp_path / "legacy"
    (legacy / "1").mkdir(parents=True)
    (legacy / "1" / "meta.yaml").write_text("name: x\n")
    assert resolve_store(str(legacy)).kind == "file"
    assert resolve_store((tmp_path / "f").as_uri()).kind == "file"
    remote = resolve_store("http://user:pw@mlflow:5000")
    assert remote.kind == "remote" and "pw" not in remote.shown
    with pytest.raises(ConfigError, match="sqlite:///"):
        resolve_store("sqlite://relative.db")


def test_start_with_uri_is_for_that_recorder_only(
    exp_name: str, store_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-store"
    with R.start(experiment_name=exp_name, uri=str(other)) as rec:
        assert R.uri == str(other)
        with pytest.raises(TrackingError, match="while a recorder is running"):
            R.set_uri(str(store_dir))
        R.log_metrics(x=1.0)
    assert R.uri == str(store_dir)
    assert (other / "mlflow.db").exists()
    assert set(R.list_recorders(exp_name, uri=str(other))) == {rec.id}
    assert rec.list_metrics() == {"x": 1.0}
    with pytest.raises(TrackingError, match="no experiment named"):
        R.list_recorders(exp_name)  # not in the session store


def _forked_child(exp_name: str, queue) -> None:  # runs in a forked process
    try:
        with R.start(experiment_name=exp_name, recorder_name="child") as rec:
            R.log_metrics(child=1.0)
            R.save_objects(x=[1, 2])
        queue.put(rec.id)
    except BaseException as e:  # report instead of dying silently
        queue.put(f"error: {type(e).__name__}: {e}")


def test_forked_worker_opens_its_own_connections(exp_name: str) -> None:
    import multiprocessing as mp

    with R.start(experiment_name=exp_name, recorder_name="parent") as parent:
        R.log_metrics(parent=1.0)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_forked_child, args=(exp_name, queue))
    proc.start()
    child_id = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and not child_id.startswith("error"), child_id
    recs = R.list_recorders(exp_name)  # the parent's connections still work
    assert set(recs) == {parent.id, child_id}
    assert recs[child_id].load_object("x") == [1, 2]
