"""The pickle codec: opt-in per pool, HMAC-signed with a key that lives only in the environment.

The attacker here has write access to the pool's database (a colleague, a leaked password)
but not to the workers' environment. Whatever they write, no worker unpickles it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
from pathlib import Path

import pytest

from alphamill.errors import AlphamillError, PoolError
from alphamill.task.codec import PICKLE_KEY_ENV, PayloadError
from alphamill.task.manage import TaskManager, run_task

KEY = "k3y-only-in-the-env-7f3a9c"


class Evil:
    """Unpickling this creates ``path``: proof that attacker code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


class Model:
    """A result that is not JSON: what the pickle codec exists for (Qlib's fitted models)."""

    def __init__(self, w):
        self.w = w

    def __eq__(self, other):
        return isinstance(other, Model) and other.w == self.w


def fit(task_def, **kwargs):
    return Model(task_def["n"])


def envelope(obj, key: str) -> dict:
    raw = pickle.dumps(obj, protocol=4)
    return {"__pickle__": base64.b64encode(raw).decode(), "hmac": hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()}


def _set_result(store, task_id: str, value) -> None:
    cast = "::jsonb" if store.kind == "postgresql" else ""
    store.execute(f"UPDATE tasks SET result = %s{cast} WHERE id = %s", (json.dumps(value), int(task_id)))


def _set_definition(store, task_id: str, value) -> None:
    cast = "::jsonb" if store.kind == "postgresql" else ""
    store.execute(f"UPDATE tasks SET definition = %s{cast} WHERE id = %s", (json.dumps(value), int(task_id)))


def test_pools_are_json_unless_created_with_pickle(store, pool, monkeypatch):
    monkeypatch.setenv(PICKLE_KEY_ENV, KEY)
    with TaskManager(pool, store.url) as tm:
        tm.create_task([{"n": 1}])
        assert tm.codec.name == "json"
        task = tm.fetch_task()
        with pytest.raises(AlphamillError, match="json codec"):
            tm.commit_task_res(task, Model(1))  # a JSON pool never pickles, even with a key set
    with pytest.raises(PoolError, match="keeps the codec"):
        TaskManager(pool, store.url, codec="pickle")


def test_pickle_pool_needs_the_key_from_the_environment(store, pool, monkeypatch):
    monkeypatch.delenv(PICKLE_KEY_ENV, raising=False)
    with pytest.raises(PoolError, match=PICKLE_KEY_ENV):
        TaskManager(pool, store.url, codec="pickle")
    assert pool not in store.dump()  # refused before anything was written


def test_signed_results_round_trip_and_key_never_stored(store, pool, monkeypatch):
    monkeypatch.setenv(PICKLE_KEY_ENV, KEY)
    with TaskManager(pool, store.url, codec="pickle") as tm:
        tm.create_task([{"n": 1}, {"n": 2}])
        run_task(fit, tm)
        assert sorted(t["res"].w for t in tm.query()) == [1, 2]
    dump = store.dump()
    assert "__pickle__" in dump  # the results really are pickled envelopes
    assert KEY not in dump and KEY.encode().hex() not in dump
    assert base64.b64encode(KEY.encode()).decode() not in dump


@pytest.mark.parametrize("forgery", ["tampered", "unsigned", "other_key", "bad_base64"])
def test_forged_result_is_refused_without_unpickling(store, pool, monkeypatch, tmp_path, forgery):
    monkeypatch.setenv(PICKLE_KEY_ENV, KEY)
    sentinel = tmp_path / "pwned"
    with TaskManager(pool, store.url, codec="pickle") as tm:
        (tid,) = tm.create_task([{"n": 1}])
        run_task(fit, tm)
        good = json.loads(json.dumps(envelope(Model(1), KEY)))
        evil = envelope(Evil(sentinel), KEY)
        forged = {
            "tampered": {"__pickle__": evil["__pickle__"], "hmac": good["hmac"]},
            "unsigned": {"__pickle__": evil["__pickle__"]},
            "other_key": envelope(Evil(sentinel), "attacker-key"),
            "bad_base64": {"__pickle__": "!!not base64!!", "hmac": good["hmac"]},
        }[forgery]
        _set_result(store, tid, forged)
        with pytest.raises(PayloadError, match="refused"):
            tm.re_query(tid)
        with pytest.raises(PayloadError):
            list(tm.query())
    assert not sentinel.exists(), "attacker code ran while decoding a forged payload"


def test_forged_definition_fails_the_task_instead_of_running(store, pool, monkeypatch, tmp_path):
    monkeypatch.setenv(PICKLE_KEY_ENV, KEY)
    sentinel = tmp_path / "pwned"
    with TaskManager(pool, store.url, codec="pickle", lease_seconds=30) as tm:
        (tid,) = tm.create_task([{"n": 1}])
        _set_definition(store, tid, envelope(Evil(sentinel), "attacker-key"))
        assert tm.fetch_task() is None  # not handed out
        rec = tm.backend.get_tasks(pool, [tid])[0]
    assert rec.status == "failed" and "signature does not match" in rec.last_error
    assert not sentinel.exists()


def test_envelope_in_a_json_pool_is_never_unpickled(store, pool, monkeypatch, tmp_path):
    """Even a correctly signed envelope is refused by a pool that was created as JSON."""
    monkeypatch.setenv(PICKLE_KEY_ENV, KEY)
    sentinel = tmp_path / "pwned"
    with TaskManager(pool, store.url) as tm:
        (tid,) = tm.create_task([{"n": 1}])
        run_task(lambda d: {"ok": 1}, tm)
        _set_result(store, tid, envelope(Evil(sentinel), KEY))
        with pytest.raises(PayloadError, match="json codec"):
            tm.re_query(tid)
    assert not sentinel.exists()
