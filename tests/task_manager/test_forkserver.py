"""Calls handed to the workers' fork server (alphamill.task.forkserver.call_preloaded)."""

from __future__ import annotations

import os
import pickle
import sys

import pytest

from alphamill.errors import ConfigError
from alphamill.task import forkserver
from tests.task_manager import funcs


def test_without_a_started_server_the_call_runs_here(monkeypatch):
    monkeypatch.setattr(forkserver, "_started", False)
    assert forkserver.call_preloaded(funcs.where_am_i, "HOME")[0] == os.getpid()


@pytest.fixture
def server():
    if "forkserver" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("this platform has no fork server")
    forkserver.start_worker_server()
    assert forkserver.server_started()


def test_a_call_runs_in_a_server_child_with_the_callers_state(server, tmp_path, monkeypatch):
    monkeypatch.setenv("AM_TEST_MARK", os.urandom(4).hex())  # set after the server started
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "extra"))
    pid, value, cwd, path = forkserver.call_preloaded(funcs.where_am_i, "AM_TEST_MARK")
    assert pid != os.getpid()
    assert value == os.environ["AM_TEST_MARK"]
    assert cwd == str(tmp_path)
    assert path == sys.path


def test_user_errors_come_back_as_they_are(server):
    with pytest.raises(ConfigError) as e:
        forkserver.call_preloaded(funcs.raise_config_error)
    assert e.value.path == "task.model.kwargs.lr"
    assert str(e.value) == "task.model.kwargs.lr: expected a positive number"


def test_a_bug_keeps_the_traceback_of_the_child(server):
    with pytest.raises(KeyError) as e:
        forkserver.call_preloaded(funcs.raise_bug)
    assert any("raise_bug" in note for note in e.value.__notes__)


def test_an_exception_that_does_not_unpickle_comes_back_as_its_traceback(server):
    with pytest.raises(RuntimeError, match="_Unpicklable: odd error"):
        forkserver.call_preloaded(funcs.raise_unpicklable)


def test_a_child_that_dies_is_an_error_with_its_exit_code(server):
    with pytest.raises(RuntimeError, match="exited with code 3"):
        forkserver.call_preloaded(funcs.die)


def test_config_errors_pickle_with_their_path():
    e = pickle.loads(pickle.dumps(ConfigError("expected a date", "task.dataset.kwargs.segments.train")))
    assert e.path == "task.dataset.kwargs.segments.train" and e.message == "expected a date"
    assert str(e) == "task.dataset.kwargs.segments.train: expected a date"


def test_a_prestarted_call_warms_up_in_the_process_that_then_runs_it(server):
    call = forkserver.PreloadedCall(funcs.warmed, funcs.warm_up, "store")
    seen, pid = call()
    assert seen == [(pid, "store")] and pid != os.getpid()
    assert funcs._WARMED == []  # nothing ran here


def test_a_failed_warm_up_does_not_stop_the_call(server):
    assert forkserver.PreloadedCall(funcs.warmed, funcs.warm_fails)()[0] == []


def test_a_cancelled_call_leaves_no_process(server):
    call = forkserver.PreloadedCall(funcs.warmed, funcs.warm_up, 1)
    proc = call._proc
    call.cancel()
    assert not proc.is_alive() and proc.exitcode == 0
    call.cancel()  # twice is harmless
