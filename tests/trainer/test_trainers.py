"""Trainers end to end on the small demo market: in-process, child process, the pool with 2
worker processes, two-stage training by separate workers, failures, and reruns."""

from __future__ import annotations

import os
import uuid

import pandas as pd
import pytest

from alphamill.task.manage import TaskManager
from alphamill.trainer import DelayTrainerR, DelayTrainerRM, TrainerR, TrainerRM, TrainingFailed
from alphamill.workflow.collect import task_of
from alphamill.workflow.recorder import R
from alphamill.workflow.results import ExperimentResults


def _pool() -> str:
    return f"p_{uuid.uuid4().hex[:10]}"


def _windows(recs):
    return [task_of(r)["meta"]["rolling"]["index"] for r in recs]


def test_trainer_r_in_order_in_process(small_tasks, exp_name):
    recs = TrainerR(exp_name, progress=False).train(small_tasks[:2])
    assert _windows(recs) == [0, 1]
    for rec in recs:
        assert rec.status == "FINISHED"
        assert rec.list_tags()["train_status"] == "end_task_train"
        pred = rec.load_object("pred.pkl")
        assert pred.index.names == ["datetime", "instrument"] and len(pred) > 100
    assert TrainerR(exp_name).is_delay() is False


def test_trainer_r_call_in_subproc(small_tasks, exp_name):
    trainer = TrainerR(exp_name, train_func="tests.trainer.funcs:train_and_tag_pid", call_in_subproc=True,
                       progress=False)
    (rec,) = trainer.train(small_tasks[:1])
    pid = int(rec.list_tags()["test.pid"])
    assert pid != os.getpid()
    assert rec.load_object("pred.pkl").shape[0] > 0


def test_delay_trainer_r_two_stages(small_tasks, exp_name):
    trainer = DelayTrainerR(exp_name, progress=False)
    assert trainer.is_delay()
    (rec,) = trainer.train(small_tasks[:1])
    assert rec.list_tags()["alphamill.stage"] == "part_done"
    assert "pred.parquet" not in rec.list_artifacts()
    (done,) = trainer.end_train([rec])
    assert done.id == rec.id
    assert done.list_tags()["train_status"] == "end_task_train"
    assert "pred.parquet" in done.list_artifacts()


@pytest.fixture(scope="module")
def rm_run(demo_run):
    """The demo's TrainerRM run (2 worker processes, 3 windows) and its recorders, in task order."""
    from alphamill.trainer import _from_ref

    with TaskManager(demo_run["pool"]) as tm:
        ids = tm.create_task(TrainerRM(demo_run["exp"], demo_run["pool"]).prepare_tasks(demo_run["tasks"]))
        assert tm.last_new == 0  # the same tasks as the demo stored
        by_id = {t["_id"]: t for t in tm.query()}
    recs = [_from_ref(by_id[i]["res"]) for i in ids]
    return {**demo_run, "recs": recs}


def test_trainer_rm_with_two_worker_processes(rm_run):
    recs = rm_run["recs"]
    assert _windows(recs) == [0, 1, 2]
    assert "3 given, 3 new in the pool, 3 trained now" in rm_run["output"]
    with TaskManager(rm_run["pool"]) as tm:
        assert tm.task_stat() == {"done": 3}
        tasks = list(tm.query())
    pids = {t["worker_pid"] for t in tasks}
    assert os.getpid() not in pids  # trained by the worker processes, not here
    assert all(t["meta"]["experiment_name"] == rm_run["exp"] for t in tasks)
    assert {t["res"]["run_id"] for t in tasks} == {r.id for r in recs}


def test_rerun_trains_nothing_new_and_gives_identical_predictions(rm_run):
    before = ExperimentResults.from_recorders(rm_run["exp"], rm_run["recs"]).predictions
    n_runs = len(R.list_recorders(rm_run["exp"]))
    trainer = TrainerRM(rm_run["exp"], rm_run["pool"], n_jobs=2, progress=False)
    recs = trainer.train(rm_run["tasks"])
    assert trainer.last_stats == {"tasks": 3, "new": 0, "trained": 0}
    assert [r.id for r in recs] == [r.id for r in rm_run["recs"]]
    assert len(R.list_recorders(rm_run["exp"])) == n_runs  # no new MLflow run either
    after = ExperimentResults.from_recorders(rm_run["exp"], recs).predictions
    pd.testing.assert_frame_equal(before, after)
    # the same tasks in another experiment are other pool tasks
    other = TrainerRM(f"{rm_run['exp']}_b", rm_run["pool"], n_jobs=1, skip_run_task=True, progress=False)
    with TaskManager(rm_run["pool"]) as tm:
        ids = tm.create_task(other.prepare_tasks(rm_run["tasks"][:1]))
        assert tm.last_new == 1 and tm.task_stat() == {"waiting": 1, "done": 3}
        tm.remove({"_id": ids[0]})


def test_delay_trainer_rm_stages_run_by_separate_workers(small_tasks, exp_name):
    pool = _pool()
    trainer = DelayTrainerRM(exp_name, pool, n_jobs=2, progress=False)
    assert trainer.is_delay()
    stage_one = trainer.train(small_tasks[:2])
    with TaskManager(pool) as tm:
        assert tm.task_stat() == {"part_done": 2}
        assert {t["worker_pid"] for t in tm.query()} == {os.getpid()}
    for rec in stage_one:
        assert rec.list_tags()["alphamill.stage"] == "part_done"
    done = trainer.end_train(stage_one)
    assert [r.id for r in done] == [r.id for r in stage_one]
    with TaskManager(pool) as tm:
        assert tm.task_stat() == {"done": 2}
        assert os.getpid() not in {t["worker_pid"] for t in tm.query()}
    for rec in done:
        assert rec.list_tags()["train_status"] == "end_task_train"
        assert rec.load_object("pred.pkl").shape[0] > 0


def test_failed_task_is_reported_and_retried_on_rerun(small_tasks, exp_name):
    pool = _pool()
    trainer = TrainerRM(exp_name, pool, train_func="tests.trainer.funcs:always_fail", n_jobs=1,
                        max_attempts=1, progress=False)
    with pytest.raises(TrainingFailed) as e:
        trainer.train(small_tasks[:1])
    msg = str(e.value)
    assert "failed" in msg and "deliberate failure for the test" in msg and "window 0" in msg
    with TaskManager(pool) as tm:
        assert tm.task_stat() == {"failed": 1}
        ids = tm.create_task(trainer.prepare_tasks(small_tasks[:1]))
    # a rerun puts the failed task back to waiting (and here it is trained by this process)
    trainer = TrainerRM(exp_name, pool, n_jobs=1, skip_run_task=True, progress=False)
    with TaskManager(pool) as tm:
        trainer._create(tm, trainer.prepare_tasks(small_tasks[:1]))
        assert tm.task_stat() == {"waiting": 1}
        tm.remove({"_id": ids[0]})
