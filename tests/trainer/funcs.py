"""Train functions for the trainer tests (importable as module:function by child processes)."""

from __future__ import annotations

import os

from alphamill.workflow.task_train import task_train


def train_and_tag_pid(task: dict, experiment_name: str):
    """task_train, then tag the run with the pid of the process that trained it."""
    rec = task_train(task, experiment_name)
    rec.set_tags(**{"test.pid": str(os.getpid())})
    return rec


def always_fail(task: dict, experiment_name: str):
    """A training function that always raises (the task must end failed with this message)."""
    raise RuntimeError("deliberate failure for the test")
