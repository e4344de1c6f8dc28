"""The conformance suite: every storage backend must pass every test here.

Each test runs once per backend of the ``backend`` fixture (memory, sqlite, postgresql,
mongomock, and a real MongoDB when configured). Together they pin down the contract of
:mod:`alphamill.task.backends.base`: pools, deduplicated atomic inserts, claims with leases
and fencing tokens, exactly-once commits, returns with backoff, expiry, reading, admin
operations, the database clock, query semantics identical to ``Query.matches`` and
resistance to injection through every user-supplied string.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from alphamill.errors import AlphamillError, IllegalTransition, PoolError, QueryError
from alphamill.task.backends.base import NewTask, WorkerIdentity
from alphamill.task.query import parse_query
from alphamill.task.status import DONE, FAILED, PART_DONE, RUNNING, WAITING

W = WorkerIdentity(owner="w1@host:11", host="host", pid=11)
W2 = WorkerIdentity(owner="w2@host:22", host="host", pid=22)

#: Short leases keep the expiry tests fast; sleeps are a little longer than the lease.
SHORT = 0.3
PAST_SHORT = 0.45


def nt(i, **kw) -> NewTask:
    kw.setdefault("definition", {"model": {"class": "M", "kwargs": {"i": i}}})
    return NewTask(hash=f"h{i}", **kw)


def fill(backend, pool, n, **kw):
    backend.ensure_pool(pool)
    return [r.id for r in backend.insert_tasks(pool, [nt(i, **kw) for i in range(n)])]


def claim(backend, pool, *, query=None, from_status=WAITING, lease=30.0, limit=1, worker=W):
    return backend.claim_tasks(pool, worker=worker, query=parse_query(query), from_status=from_status,
                               lease_seconds=lease, limit=limit)


def claim_one(backend, pool, **kw):
    got = claim(backend, pool, **kw)
    assert len(got) == 1, got
    return got[0]


def get(backend, pool, tid):
    (rec,) = backend.get_tasks(pool, [tid])
    return rec


def counts(backend, pool, query=None):
    return {k: v for k, v in backend.count_tasks(pool, parse_query(query)).items() if v}


# -- pools ---------------------------------------------------------------------------------------


def test_ensure_pool_creates_once_and_keeps_codec(backend, pool_name):
    assert backend.pool_info(pool_name) is None
    info = backend.ensure_pool(pool_name, codec="pickle")
    assert (info.name, info.codec) == (pool_name, "pickle")
    assert abs(info.created_at - backend.now()) < 5
    again = backend.ensure_pool(pool_name, codec="json")
    assert again.codec == "pickle" and again.created_at == pytest.approx(info.created_at)
    assert backend.pool_info(pool_name).codec == "pickle"


def test_unknown_codec_is_rejected(backend, pool_name):
    with pytest.raises(PoolError, match="codec"):
        backend.ensure_pool(pool_name, codec="yaml")
    assert backend.pool_info(pool_name) is None


def test_list_and_drop_pools(backend, pool_name):
    a, b = pool_name + "_a", pool_name + "_b"
    fill(backend, b, 3)
    fill(backend, a, 2)
    names = backend.list_pools()
    assert a in names and b in names and names == sorted(names)
    backend.drop_pool(a)
    assert a not in backend.list_pools() and backend.pool_info(a) is None
    assert backend.find_tasks(a, None) == []
    assert counts(backend, b) == {WAITING: 3}
    backend.drop_pool(a)  # dropping a missing pool is harmless


def test_pools_are_isolated(backend, pool_name):
    a, b = pool_name + "_a", pool_name + "_b"
    ids_a = fill(backend, a, 3)
    ids_b = fill(backend, b, 3)  # the same hashes are allowed in another pool
    assert not set(ids_a) & set(ids_b)
    claim_one(backend, a)
    assert counts(backend, a) == {WAITING: 2, RUNNING: 1}
    assert counts(backend, b) == {WAITING: 3}
    assert backend.get_tasks(b, ids_a) == []
    assert backend.delete_tasks(b, parse_query(None)) == 3
    assert counts(backend, a) == {WAITING: 2, RUNNING: 1}


BAD_NAMES = ["../x", "a;drop table tasks", "", "pööl", "a b", "a-b", "1abc", "x" * 64,
             "tasks; DELETE FROM pools", "p'--", None, 3]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_pool_names_are_rejected_everywhere(backend, name):
    calls = [
        lambda: backend.ensure_pool(name),
        lambda: backend.insert_tasks(name, [nt(1)]),
        lambda: backend.find_tasks(name, parse_query(None)),
        lambda: backend.count_tasks(name, parse_query(None)),
        lambda: claim(backend, name),
        lambda: backend.delete_tasks(name, parse_query(None)),
        lambda: backend.set_status(name, parse_query(None), WAITING),
        lambda: backend.drop_pool(name),
    ]
    for call in calls:
        with pytest.raises(PoolError, match="invalid pool name"):
            call()
    assert all(isinstance(p, str) and p for p in backend.list_pools())


# -- inserting -----------------------------------------------------------------------------------


def test_insert_returns_ids_in_order_and_dedupes(backend, pool_name):
    backend.ensure_pool(pool_name)
    first = backend.insert_tasks(pool_name, [nt(1), nt(2), nt(1), nt(3)])
    assert [r.created for r in first] == [True, True, False, True]
    assert first[0].id == first[2].id
    assert len({first[0].id, first[1].id, first[3].id}) == 3
    assert all(isinstance(r.id, str) and r.id for r in first)
    second = backend.insert_tasks(pool_name, [nt(3), nt(4), nt(2)])
    assert [r.created for r in second] == [False, True, False]
    assert second[0].id == first[3].id and second[2].id == first[1].id
    assert counts(backend, pool_name) == {WAITING: 4}
    assert backend.insert_tasks(pool_name, []) == []


def test_inserted_record_fields(backend, pool_name):
    backend.ensure_pool(pool_name)
    definition = {"model": {"class": "LGB", "kwargs": {"lr": 0.05, "n": 7, "ok": True, "x": None}},
                  "segments": [["2020-01-01", "2020-12-31"]], "name": "日本 é \"q\" 'q'"}
    meta = {"rolling": {"index": 3, "test": ["2021-01-01", "2021-03-31"]}}
    before = backend.now()
    (res,) = backend.insert_tasks(pool_name, [NewTask(definition, "abc", priority=4, max_attempts=5,
                                                      metadata=meta)])
    rec = get(backend, pool_name, res.id)
    assert (rec.id, rec.pool, rec.hash, rec.status) == (res.id, pool_name, "abc", WAITING)
    assert rec.definition == definition and rec.metadata == meta
    assert (rec.priority, rec.max_attempts, rec.attempts) == (4, 5, 0)
    assert rec.result is None and rec.lease_token is None and rec.lease_owner is None
    assert rec.started_at is None and rec.finished_at is None and rec.last_error is None
    assert before - 1 <= rec.created_at <= backend.now() + 1


def test_insert_batch_is_atomic(backend, pool_name):
    backend.ensure_pool(pool_name)
    backend.insert_tasks(pool_name, [nt(0)])
    bad_batches = [
        [nt(1), nt(2), NewTask({"x": object()}, "bad")],  # not JSON
        [nt(1), NewTask({"x": float("nan")}, "nan")],  # NaN is not JSON
        [nt(1), NewTask({"x": 1}, "")],  # empty hash
    ]
    for batch in bad_batches:
        with pytest.raises(AlphamillError):
            backend.insert_tasks(pool_name, batch)
        assert counts(backend, pool_name) == {WAITING: 1}
    assert backend.insert_tasks(pool_name, [nt(1)])[0].created


def test_concurrent_inserts_of_the_same_hashes_leave_one_each(backend, pool_name):
    backend.ensure_pool(pool_name)
    results: list[list] = []
    errors: list[BaseException] = []

    def run():
        try:
            results.append(backend.insert_tasks(pool_name, [nt(i) for i in range(50)]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert counts(backend, pool_name) == {WAITING: 50}
    assert all([r.id for r in res] == [r.id for r in results[0]] for res in results)
    assert sum(r.created for res in results for r in res) == 50


def test_replace_definition(backend, pool_name):
    ids = fill(backend, pool_name, 2)
    assert backend.replace_definition(pool_name, ids[0], {"new": [1, 2]}, "hnew")
    rec = get(backend, pool_name, ids[0])
    assert rec.definition == {"new": [1, 2]} and rec.hash == "hnew"
    # the old hash is free again, the new one is taken
    assert backend.insert_tasks(pool_name, [nt(0)])[0].created
    again = backend.insert_tasks(pool_name, [NewTask({"new": [1, 2]}, "hnew")])[0]
    assert (again.id, again.created) == (ids[0], False)
    with pytest.raises(PoolError):
        backend.replace_definition(pool_name, ids[1], {"x": 1}, "hnew")
    assert get(backend, pool_name, ids[1]).hash == "h1"
    assert backend.replace_definition(pool_name, ids[1], {"same": 1}, "h1")
    assert not backend.replace_definition(pool_name, "999999", {"x": 1}, "hzz")


# -- claiming ------------------------------------------------------------------------------------


def test_claim_order_priority_then_creation(backend, pool_name):
    backend.ensure_pool(pool_name)
    prios = [0, 5, 0, 5, 9, 0]
    ids = [r.id for r in backend.insert_tasks(pool_name, [nt(i, priority=p) for i, p in enumerate(prios)])]
    order = []
    while got := claim(backend, pool_name):
        order.append(got[0].id)
    assert order == [ids[4], ids[1], ids[3], ids[0], ids[2], ids[5]]


def test_claim_limit_and_batch_order(backend, pool_name):
    backend.ensure_pool(pool_name)
    ids = [r.id for r in backend.insert_tasks(pool_name, [nt(i, priority=i % 2) for i in range(7)])]
    first = claim(backend, pool_name, limit=3)
    assert [r.id for r in first] == [ids[1], ids[3], ids[5]]
    second = claim(backend, pool_name, limit=10)
    assert [r.id for r in second] == [ids[0], ids[2], ids[4], ids[6]]
    assert claim(backend, pool_name, limit=5) == []


def test_claimed_record_fields(backend, pool_name):
    fill(backend, pool_name, 2)
    before = backend.now()
    a, b = claim(backend, pool_name, lease=60, limit=2)
    after = backend.now()
    for r in (a, b):
        assert r.status == RUNNING and r.claimed_from == WAITING and r.attempts == 1
        assert r.lease_owner == W.owner and (r.worker_host, r.worker_pid) == (W.host, W.pid)
        assert isinstance(r.lease_token, str) and len(r.lease_token) >= 16
        assert before - 1 <= r.started_at <= after + 1
        assert before - 1 <= r.heartbeat_at <= after + 1
        assert r.lease_expires == pytest.approx(r.heartbeat_at + 60, abs=1)
        assert r.definition == {"model": {"class": "M", "kwargs": {"i": int(r.hash[1:])}}}
    assert a.lease_token != b.lease_token
    stored = get(backend, pool_name, a.id)
    assert stored.lease_token == a.lease_token and stored.status == RUNNING


def test_claim_from_part_done(backend, pool_name):
    fill(backend, pool_name, 2)
    r = claim_one(backend, pool_name)
    assert backend.complete_task(pool_name, r.id, r.lease_token, status=PART_DONE, result={"stage": 1})
    assert claim(backend, pool_name, from_status=PART_DONE, query={"hash": {"$ne": r.hash}}) == []
    other = claim_one(backend, pool_name)  # the waiting one
    assert other.id != r.id
    again = claim_one(backend, pool_name, from_status=PART_DONE)
    assert again.id == r.id and again.claimed_from == PART_DONE and again.attempts == 2
    assert again.result == {"stage": 1}  # a part_done task keeps its stage-one result
    assert backend.complete_task(pool_name, r.id, again.lease_token, status=DONE, result={"stage": 2})
    assert get(backend, pool_name, r.id).result == {"stage": 2}


def test_claim_respects_query(backend, pool_name):
    backend.ensure_pool(pool_name)
    backend.insert_tasks(pool_name, [
        NewTask({"model": {"class": c}}, f"h{i}", metadata={"k": i}) for i, c in enumerate("ABAB")
    ])
    got = claim(backend, pool_name, query={"def.model.class": "B"}, limit=5)
    assert sorted(r.metadata["k"] for r in got) == [1, 3]
    assert claim(backend, pool_name, query={"def.model.class": "B"}) == []
    got = claim(backend, pool_name, query={"meta.k": {"$gt": 0}}, limit=5)
    assert [r.metadata["k"] for r in got] == [2]


def test_claim_argument_checks(backend, pool_name):
    fill(backend, pool_name, 1)
    with pytest.raises(IllegalTransition):
        claim(backend, pool_name, from_status=DONE)
    with pytest.raises(IllegalTransition):
        claim(backend, pool_name, from_status=RUNNING)
    with pytest.raises(PoolError):
        claim(backend, pool_name, lease=0)
    with pytest.raises(PoolError):
        claim(backend, pool_name, limit=0)
    assert counts(backend, pool_name) == {WAITING: 1}


def test_no_double_claim_between_threads(backend, pool_name):
    fill(backend, pool_name, 60)
    seen: list[str] = []
    lock = threading.Lock()

    def worker(n: int):
        ident = WorkerIdentity(f"t{n}", "host", n)
        while got := claim(backend, pool_name, limit=2, worker=ident):
            with lock:
                seen.extend(r.id for r in got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 60 and len(set(seen)) == 60
    assert counts(backend, pool_name) == {RUNNING: 60}


# -- heartbeat and commit ------------------------------------------------------------------------


def test_heartbeat_extends_lease(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name, lease=5)
    time.sleep(0.05)
    assert backend.heartbeat(pool_name, r.id, r.lease_token, 100)
    rec = get(backend, pool_name, r.id)
    assert rec.lease_expires == pytest.approx(rec.heartbeat_at + 100, abs=1)
    assert rec.lease_expires > r.lease_expires + 50 and rec.heartbeat_at >= r.heartbeat_at
    assert not backend.heartbeat(pool_name, r.id, "0" * 32, 100)
    assert not backend.heartbeat(pool_name, "999999", r.lease_token, 100)
    with pytest.raises(PoolError):
        backend.heartbeat(pool_name, r.id, r.lease_token, -1)


def test_heartbeat_keeps_a_task_from_expiring(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name, lease=SHORT)
    for _ in range(3):
        time.sleep(SHORT / 2)
        assert backend.heartbeat(pool_name, r.id, r.lease_token, SHORT)
        assert backend.requeue_expired(pool_name) == 0
    assert get(backend, pool_name, r.id).status == RUNNING


def test_complete_task_commits_once(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    result = {"ic": 0.051, "series": [1, 2.5, None], "ok": True, "txt": "x'; DROP TABLE tasks;--"}
    assert backend.complete_task(pool_name, r.id, r.lease_token, status=DONE, result=result)
    rec = get(backend, pool_name, r.id)
    assert rec.status == DONE and rec.result == result
    assert rec.lease_token is None and rec.lease_owner is None and rec.lease_expires is None
    assert rec.finished_at is not None and rec.finished_at >= r.started_at - 1
    assert rec.attempts == 1
    assert not backend.complete_task(pool_name, r.id, r.lease_token, status=DONE, result={"again": 1})
    assert get(backend, pool_name, r.id).result == result
    assert not backend.heartbeat(pool_name, r.id, r.lease_token, 10)
    assert not backend.release_task(pool_name, r.id, r.lease_token, error="late")


def test_complete_task_status_checks(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    for bad in (FAILED, WAITING, RUNNING, "finished"):
        with pytest.raises(IllegalTransition):
            backend.complete_task(pool_name, r.id, r.lease_token, status=bad, result=None)
    assert get(backend, pool_name, r.id).status == RUNNING


def test_zombie_commit_after_requeue_is_rejected(backend, pool_name):
    fill(backend, pool_name, 1)
    zombie = claim_one(backend, pool_name, lease=SHORT)
    time.sleep(PAST_SHORT)
    assert backend.requeue_expired(pool_name) == 1
    fresh = claim_one(backend, pool_name, worker=W2)
    assert fresh.id == zombie.id and fresh.lease_token != zombie.lease_token and fresh.attempts == 2
    assert not backend.complete_task(pool_name, zombie.id, zombie.lease_token, status=DONE, result="zombie")
    assert not backend.heartbeat(pool_name, zombie.id, zombie.lease_token, 10)
    assert not backend.release_task(pool_name, zombie.id, zombie.lease_token, error="zombie")
    assert backend.complete_task(pool_name, fresh.id, fresh.lease_token, status=DONE, result="fresh")
    rec = get(backend, pool_name, fresh.id)
    assert rec.result == "fresh" and rec.lease_owner is None


# -- release ---------------------------------------------------------------------------------------


def test_plain_release_gives_the_attempt_back(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    assert backend.release_task(pool_name, r.id, r.lease_token)
    rec = get(backend, pool_name, r.id)
    assert rec.status == WAITING and rec.attempts == 0 and rec.last_error is None
    assert rec.lease_token is None and rec.lease_owner is None and rec.not_before is None
    assert not backend.release_task(pool_name, r.id, r.lease_token)
    again = claim_one(backend, pool_name)
    assert again.attempts == 1


def test_release_with_error_returns_to_claimed_from(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    backend.complete_task(pool_name, r.id, r.lease_token, status=PART_DONE, result=[1])
    r2 = claim_one(backend, pool_name, from_status=PART_DONE)
    err = "ValueError: boom\nTraceback (most recent call last):\n  File \"x.py\", line 1"
    assert backend.release_task(pool_name, r2.id, r2.lease_token, error=err)
    rec = get(backend, pool_name, r.id)
    assert rec.status == PART_DONE and rec.attempts == 2 and rec.last_error == err
    assert rec.result == [1] and rec.lease_token is None


def test_release_with_retry_delay_defers_the_task(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    assert backend.release_task(pool_name, r.id, r.lease_token, error="e", retry_delay=0.4)
    rec = get(backend, pool_name, r.id)
    assert rec.status == WAITING
    assert rec.not_before == pytest.approx(backend.now() + 0.4, abs=0.3)
    assert claim(backend, pool_name) == []
    time.sleep(0.55)
    again = claim_one(backend, pool_name)
    assert again.id == r.id and again.attempts == 2 and again.not_before is None


def test_release_give_up_fails_the_task(backend, pool_name):
    fill(backend, pool_name, 1, max_attempts=5)
    r = claim_one(backend, pool_name)
    assert backend.release_task(pool_name, r.id, r.lease_token, error="fatal: bad config", give_up=True)
    rec = get(backend, pool_name, r.id)
    assert rec.status == FAILED and rec.last_error == "fatal: bad config"
    assert rec.finished_at is not None and rec.lease_token is None
    assert claim(backend, pool_name) == []


def test_release_after_last_attempt_fails_the_task(backend, pool_name):
    fill(backend, pool_name, 1, max_attempts=2)
    for attempt in (1, 2):
        r = claim_one(backend, pool_name)
        assert r.attempts == attempt
        assert backend.release_task(pool_name, r.id, r.lease_token, error=f"boom {attempt}")
    rec = get(backend, pool_name, r.id)
    assert rec.status == FAILED and rec.attempts == 2 and rec.last_error == "boom 2"
    assert claim(backend, pool_name) == []


def test_release_argument_checks(backend, pool_name):
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    with pytest.raises(PoolError):
        backend.release_task(pool_name, r.id, r.lease_token, error="e", retry_delay=-1)
    assert get(backend, pool_name, r.id).status == RUNNING


# -- lease expiry ----------------------------------------------------------------------------------


def test_requeue_expired_returns_tasks_to_claimed_from(backend, pool_name):
    fill(backend, pool_name, 3)
    a = claim_one(backend, pool_name, lease=SHORT)
    backend.complete_task(pool_name, a.id, a.lease_token, status=PART_DONE, result={"s": 1})
    a2 = claim_one(backend, pool_name, from_status=PART_DONE, lease=SHORT)
    b = claim_one(backend, pool_name, lease=SHORT)
    c = claim_one(backend, pool_name, lease=60)
    assert backend.requeue_expired(pool_name) == 0
    time.sleep(PAST_SHORT)
    assert backend.requeue_expired(pool_name) == 2
    assert backend.requeue_expired(pool_name) == 0
    ra, rb, rc = backend.get_tasks(pool_name, [a2.id, b.id, c.id])
    assert (ra.status, ra.attempts, ra.result) == (PART_DONE, 2, {"s": 1})
    assert (rb.status, rb.attempts) == (WAITING, 1)
    assert ra.lease_token is None and rb.lease_token is None and rb.lease_owner is None
    assert rc.status == RUNNING and rc.lease_token == c.lease_token


def test_requeue_after_max_attempts_fails_with_reason(backend, pool_name):
    fill(backend, pool_name, 1, max_attempts=1)
    r = claim_one(backend, pool_name, lease=SHORT)
    time.sleep(PAST_SHORT)
    assert backend.requeue_expired(pool_name) == 1
    rec = get(backend, pool_name, r.id)
    assert rec.status == FAILED and rec.lease_token is None
    assert "lease expired" in rec.last_error
    assert rec.finished_at is not None


def test_requeue_only_touches_its_pool(backend, pool_name):
    other = pool_name + "_o"
    fill(backend, pool_name, 1)
    fill(backend, other, 1)
    claim_one(backend, pool_name, lease=SHORT)
    claim_one(backend, other, lease=SHORT)
    time.sleep(PAST_SHORT)
    assert backend.requeue_expired(pool_name) == 1
    assert counts(backend, other) == {RUNNING: 1}


# -- reading ---------------------------------------------------------------------------------------


def test_get_tasks_order_and_unknown_ids(backend, pool_name):
    ids = fill(backend, pool_name, 4)
    got = backend.get_tasks(pool_name, [ids[2], "999999", ids[0], "not-an-id", ids[3]])
    assert [r.id for r in got] == [ids[2], ids[0], ids[3]]
    assert backend.get_tasks(pool_name, []) == []


def test_find_tasks_order_limit_and_projection(backend, pool_name):
    backend.ensure_pool(pool_name)
    ids = [r.id for r in backend.insert_tasks(pool_name, [nt(i, priority=-i) for i in range(5)])]
    assert [r.id for r in backend.find_tasks(pool_name, parse_query(None))] == ids
    assert [r.id for r in backend.find_tasks(pool_name, parse_query(None), limit=2)] == ids[:2]
    light = backend.find_tasks(pool_name, parse_query({"hash": "h3"}), with_definition=False)
    assert [r.id for r in light] == [ids[3]] and light[0].definition is None
    assert light[0].hash == "h3" and light[0].status == WAITING


def test_count_tasks_per_status(backend, pool_name):
    fill(backend, pool_name, 6)
    a, b, c = claim(backend, pool_name, limit=3)
    backend.complete_task(pool_name, a.id, a.lease_token, status=DONE, result=1)
    backend.complete_task(pool_name, b.id, b.lease_token, status=PART_DONE, result=1)
    assert counts(backend, pool_name) == {WAITING: 3, RUNNING: 1, DONE: 1, PART_DONE: 1}
    assert counts(backend, pool_name, {"status": {"$in": [DONE, PART_DONE]}}) == {DONE: 1, PART_DONE: 1}
    assert counts(backend, pool_name, {"hash": "nope"}) == {}
    assert counts(backend, pool_name + "_missing") == {}


# -- administration --------------------------------------------------------------------------------


def test_delete_tasks(backend, pool_name):
    ids = fill(backend, pool_name, 5)
    assert backend.delete_tasks(pool_name, parse_query({"hash": {"$in": ["h1", "h3"]}})) == 2
    assert [r.id for r in backend.find_tasks(pool_name, None)] == [ids[0], ids[2], ids[4]]
    assert backend.delete_tasks(pool_name, parse_query({"hash": "h1"})) == 0
    assert backend.insert_tasks(pool_name, [nt(1)])[0].created  # the hash is free again
    assert backend.delete_tasks(pool_name, parse_query(None)) == 4
    assert counts(backend, pool_name) == {}


def test_set_status_reset_clears_lease_and_rejects_late_commit(backend, pool_name):
    fill(backend, pool_name, 3)
    r = claim_one(backend, pool_name)
    assert backend.set_status(pool_name, parse_query({"_id": r.id}), WAITING) == 1
    rec = get(backend, pool_name, r.id)
    assert rec.status == WAITING and rec.lease_token is None and rec.lease_owner is None
    assert rec.claimed_from is None and rec.attempts == 0
    assert not backend.complete_task(pool_name, r.id, r.lease_token, status=DONE, result="late")
    assert not backend.heartbeat(pool_name, r.id, r.lease_token, 10)
    assert get(backend, pool_name, r.id).result is None


def test_set_status_reset_of_failed_and_deferred_tasks(backend, pool_name):
    fill(backend, pool_name, 2, max_attempts=1)
    a = claim_one(backend, pool_name)
    backend.release_task(pool_name, a.id, a.lease_token, error="boom")
    assert get(backend, pool_name, a.id).status == FAILED
    b = claim_one(backend, pool_name)
    backend.set_status(pool_name, parse_query({"_id": b.id}), WAITING)
    c = claim_one(backend, pool_name)
    assert c.id == b.id
    backend.complete_task(pool_name, c.id, c.lease_token, status=DONE, result=1)
    # a failed task reset to waiting gets fresh attempts and is claimable at once
    assert backend.set_status(pool_name, parse_query({"status": FAILED}), WAITING) == 1
    d = claim_one(backend, pool_name)
    assert d.id == a.id and d.attempts == 1
    assert backend.release_task(pool_name, d.id, d.lease_token, error="again", retry_delay=300)
    assert claim(backend, pool_name) == []
    assert backend.set_status(pool_name, parse_query({"_id": a.id}), WAITING) == 1
    assert claim_one(backend, pool_name).id == a.id


def test_set_status_targets(backend, pool_name):
    ids = fill(backend, pool_name, 3)
    assert backend.set_status(pool_name, parse_query({"hash": "h0"}), DONE) == 1
    assert backend.set_status(pool_name, parse_query({"hash": "h1"}), PART_DONE) == 1
    assert backend.set_status(pool_name, parse_query({"hash": "h2"}), FAILED) == 1
    assert [r.status for r in backend.get_tasks(pool_name, ids)] == [DONE, PART_DONE, FAILED]
    for bad in (RUNNING, "paused"):
        with pytest.raises(IllegalTransition):
            backend.set_status(pool_name, parse_query(None), bad)
    assert backend.set_status(pool_name, parse_query({"hash": "nope"}), WAITING) == 0


def test_set_priority_changes_claim_order(backend, pool_name):
    ids = fill(backend, pool_name, 4)
    assert backend.set_priority(pool_name, parse_query({"hash": {"$in": ["h2", "h3"]}}), 10) == 2
    assert backend.set_priority(pool_name, parse_query({"hash": "h3"}), 20) == 1
    assert [r.priority for r in backend.get_tasks(pool_name, ids)] == [0, 0, 10, 20]
    assert [r.id for r in claim(backend, pool_name, limit=4)] == [ids[3], ids[2], ids[0], ids[1]]
    with pytest.raises(PoolError):
        backend.set_priority(pool_name, parse_query(None), "high")


# -- the clock and doctor --------------------------------------------------------------------------


def test_now_is_close_to_wall_clock_and_non_decreasing(backend):
    readings = [backend.now() for _ in range(20)]
    assert all(b >= a for a, b in zip(readings, readings[1:], strict=False))
    assert abs(readings[-1] - time.time()) < 2
    time.sleep(0.05)
    assert backend.now() > readings[0]


def test_doctor_reports(backend, pool_name):
    backend.ensure_pool(pool_name)
    info = backend.doctor()
    assert isinstance(info, dict) and info


# -- query semantics: every backend agrees with Query.matches --------------------------------------

DATASET = [
    ({"model": {"class": "LGB", "kwargs": {"lr": 0.1, "n": 100, "loss": "mse"}}, "tags": ["a", "b"],
      "flag": True, "none": None, "num": "1", "date": "2020-03-01"},
     {"rolling": {"index": 0}, "horizon": 5}),
    ({"model": {"class": "LGB", "kwargs": {"lr": 0.05, "n": 100.0, "loss": "mae"}}, "tags": ["b"],
      "flag": False, "num": 1, "date": "2020-09-01"},
     {"rolling": {"index": 1}, "horizon": 10}),
    ({"model": {"class": "MLP", "kwargs": {"lr": 1, "loss": "huber"}}, "tags": [], "flag": 1,
      "num": 1.0, "date": "2021-01-01"},
     {"rolling": {"index": 2}, "horizon": "5"}),
    ({"model": {"class": "MLP", "kwargs": {}}, "tags": "a", "nested": [["a"]], "none": 0},
     {}),
    ({"model": [{"class": "LGB"}], "tags": [1, 2.5, "x", True, None]},
     {"rolling": "flat"}),
    ({"model": {"class": "日本語"}, "evil": "x'; DROP TABLE tasks; --", "pct": "%", "us": "_",
      "quote": "\"", "dollar": "$where", "tags": ["%", "_"]},
     {"who": "o'brien"}),
    ({"model": {"class": "Big"}, "big": 2**40, "neg": -3, "tiny": 1e-9, "zero": 0, "negz": -0.0},
     {"rolling": {"index": 10}}),
    ({"model": {"class": "Seg", "kwargs": {"lr": "0.1"}}, "date": "2020-06-30",
      "segments": {"train": ["2018-01-01", "2019-12-31"], "test": ["2020-01-01", "2020-12-31"]}},
     {"rolling": {"index": "3"}}),
]

QUERIES = [
    {},
    {"def.model.class": "LGB"},
    {"filter.model.class": "MLP"},
    {"def.model.class": {"$in": ["LGB", "Big", "nope"]}},
    {"def.model.class": {"$nin": ["LGB"]}},
    {"def.model.class": {"$ne": "LGB"}},
    {"def.model.class": {"$exists": True}},
    {"def.model.class": {"$exists": False}},
    {"def.model.class": "日本語"},
    {"def.model.kwargs.lr": 0.1},
    {"def.model.kwargs.lr": "0.1"},
    {"def.model.kwargs.lr": 1},
    {"def.model.kwargs.lr": 1.0},
    {"def.model.kwargs.lr": {"$gt": 0.07}},
    {"def.model.kwargs.lr": {"$gte": 0.1, "$lt": 1}},
    {"def.model.kwargs.lr": {"$lte": 0.05}},
    {"def.model.kwargs.lr": {"$gt": "0"}},
    {"def.model.kwargs.n": 100},
    {"def.model.kwargs.loss": {"$ne": "mse"}},
    {"def.model.kwargs.loss": {"$in": ["mse", "mae"]}},
    {"def.model.kwargs.loss": {"$nin": ["mse", "mae"]}},
    {"def.model.kwargs": {"$exists": True}},
    {"def.num": 1},
    {"def.num": "1"},
    {"def.num": {"$gte": 1}},
    {"def.flag": True},
    {"def.flag": False},
    {"def.flag": 1},
    {"def.flag": 0},
    {"def.flag": {"$gt": 0}},
    {"def.none": None},
    {"def.none": {"$ne": None}},
    {"def.none": {"$exists": True}},
    {"def.none": {"$in": [None, 0]}},
    {"def.none": 0},
    {"def.tags": "a"},
    {"def.tags": "b"},
    {"def.tags": {"$ne": "a"}},
    {"def.tags": {"$in": ["b", "x"]}},
    {"def.tags": {"$nin": ["a", "b"]}},
    {"def.tags": 2.5},
    {"def.tags": {"$gt": 2}},
    {"def.tags": {"$lt": "b"}},
    {"def.tags": True},
    {"def.tags": 1},
    {"def.tags": None},
    {"def.tags": "%"},
    {"def.tags": {"$exists": False}},
    {"def.nested": "a"},
    {"def.segments.test": "2020-01-01"},
    {"def.segments.train": {"$gte": "2019-06-01"}},
    {"def.date": {"$gte": "2020-06-01"}},
    {"def.date": {"$lt": "2020-06-30"}},
    {"def.evil": "x'; DROP TABLE tasks; --"},
    {"def.evil": {"$gt": "x'"}},
    {"def.pct": "%"},
    {"def.us": {"$in": ["_", "%"]}},
    {"def.quote": "\""},
    {"def.dollar": "$where"},
    {"def.big": 2**40},
    {"def.big": {"$gt": 2**39}},
    {"def.neg": {"$lt": 0}},
    {"def.tiny": {"$gt": 0, "$lt": 1e-6}},
    {"def.zero": 0},
    {"def.negz": 0},
    {"def.zero": False},
    {"meta.rolling.index": {"$gte": 1}},
    {"meta.rolling.index": 3},
    {"meta.rolling.index": "3"},
    {"meta.rolling.index": {"$exists": False}},
    {"meta.rolling": "flat"},
    {"meta.horizon": 5},
    {"meta.horizon": "5"},
    {"meta.horizon": {"$gt": 4}},
    {"meta.horizon": {"$gt": "4"}},
    {"meta.who": "o'brien"},
    {"status": WAITING},
    {"status": {"$in": [RUNNING, DONE]}},
    {"status": {"$nin": [WAITING]}},
    {"status": {"$ne": DONE}},
    {"priority": {"$gte": 2}},
    {"priority": {"$lt": 2, "$gt": 0}},
    {"priority": {"$in": [0, 3]}},
    {"priority": 1.0},
    {"attempts": 0},
    {"attempts": {"$gt": 0}},
    {"hash": "q3"},
    {"hash": {"$in": ["q1", "q5", "nope"]}},
    {"hash": {"$nin": ["q1", "q5"]}},
    {"hash": "x'; DROP TABLE tasks; --"},
    {"_id": "12345678"},
    {"id": 12345678},
    {"def.model.class": "LGB", "meta.rolling.index": {"$lt": 2}, "priority": {"$gte": 0}},
    {"$and": [{"def.tags": "b"}, {"def.tags": {"$ne": "a"}}]},
    {"$and": [{"def.model.class": "MLP"}], "def.none": {"$exists": False}},
]


@pytest.fixture
def query_pool(backend, pool_name):
    """A pool of varied tasks in several statuses; returns (backend, pool, ids)."""
    backend.ensure_pool(pool_name)
    tasks = [NewTask(d, f"q{i}", priority=i % 4, metadata=m) for i, (d, m) in enumerate(DATASET)]
    ids = [r.id for r in backend.insert_tasks(pool_name, tasks)]
    a, b = claim(backend, pool_name, query={"hash": {"$in": ["q1", "q2"]}}, limit=2)
    backend.complete_task(pool_name, a.id, a.lease_token, status=DONE, result={"r": 1})
    return backend, pool_name, ids


def test_query_semantics_match_the_reference(query_pool):
    backend, pool, ids = query_pool
    records = backend.find_tasks(pool, parse_query(None))
    assert [r.id for r in records] == ids
    nonempty = 0
    for raw in QUERIES:
        q = parse_query(raw)
        expected = [r.id for r in records if q.matches(r)]
        got = [r.id for r in backend.find_tasks(pool, q)]
        assert got == expected, f"find_tasks disagrees with Query.matches for {raw}"
        per_status = Counter(r.status for r in records if q.matches(r))
        assert counts(backend, pool, raw) == dict(per_status), f"count_tasks for {raw}"
        nonempty += bool(expected)
    assert nonempty > len(QUERIES) // 2  # the dataset exercises the queries


def test_id_queries(query_pool):
    backend, pool, ids = query_pool
    for raw, want in [
        ({"_id": ids[2]}, [ids[2]]),
        ({"id": ids[2]}, [ids[2]]),
        ({"_id": {"$in": [ids[0], ids[5], "nope"]}}, [ids[0], ids[5]]),
        ({"_id": {"$nin": [ids[0]]}}, ids[1:]),
        ({"id": {"$ne": ids[3]}}, ids[:3] + ids[4:]),
    ]:
        assert [r.id for r in backend.find_tasks(pool, parse_query(raw))] == want, raw
    if ids[0].isdigit():  # integer ids (SQL backends) are accepted as ints too
        assert [r.id for r in backend.find_tasks(pool, parse_query({"_id": int(ids[1])}))] == [ids[1]]


def test_write_operations_use_the_same_filter(query_pool):
    backend, pool, ids = query_pool
    raw = {"def.tags": {"$in": ["b", "x"]}}
    records = backend.find_tasks(pool, parse_query(None))
    expected = [r.id for r in records if parse_query(raw).matches(r)]
    assert backend.set_priority(pool, parse_query(raw), 42) == len(expected)
    assert [r.id for r in backend.find_tasks(pool, parse_query({"priority": 42}))] == expected
    waiting = [r.id for r in records if parse_query(raw).matches(r) and r.status == WAITING]
    claimed = claim(backend, pool, query={**raw, "priority": 42}, limit=10)
    assert sorted(r.id for r in claimed) == sorted(waiting)
    assert backend.delete_tasks(pool, parse_query(raw)) == len(expected)
    assert len(backend.find_tasks(pool, parse_query(None))) == len(ids) - len(expected)


def test_bad_queries_raise_before_touching_the_store(backend, pool_name):
    fill(backend, pool_name, 2)
    for bad in ({"$where": "1"}, {"def.a": {"$regex": "."}}, {"owner": 1}, {"def.a;--": 1}):
        with pytest.raises(QueryError):
            backend.find_tasks(pool_name, bad)
        with pytest.raises(QueryError):
            backend.delete_tasks(pool_name, bad)
    assert counts(backend, pool_name) == {WAITING: 2}


# -- injection: values are data, never code ----------------------------------------------------------


def test_injection_through_values_is_stored_literally(backend, pool_name):
    backend.ensure_pool(pool_name)
    evil = "x'); DROP TABLE tasks; --"
    definition = {evil: evil, "k\"ey": {"$where": "sleep(10)"}, "a.b": "dot"}
    worker = WorkerIdentity(owner=evil, host="h'; --", pid=1)
    (res,) = backend.insert_tasks(pool_name, [NewTask(definition, evil, metadata={"m": evil})])
    (r,) = claim(backend, pool_name, query={"hash": evil, "meta.m": evil}, worker=worker)
    assert r.lease_owner == evil and r.worker_host == "h'; --"
    assert backend.release_task(pool_name, r.id, r.lease_token, error=evil)
    rec = get(backend, pool_name, res.id)
    assert rec.definition == definition and rec.hash == evil and rec.last_error == evil
    assert [t.id for t in backend.find_tasks(pool_name, parse_query({"hash": evil}))] == [res.id]
    assert backend.find_tasks(pool_name, parse_query({"hash": "x' OR '1'='1"})) == []
    assert counts(backend, pool_name, {"meta.m": {"$in": [evil, "' OR 1=1 --"]}}) == {WAITING: 1}
    assert backend.list_pools() and pool_name in backend.list_pools()


# -- what no store can hold: refused alike, before anything is stored --------------------------------

DEEP: dict = {}
_node = DEEP
for _ in range(70):
    _node["a"] = _node = {}

UNSTORABLE = [
    ({"x": "a\x00b"}, "U+0000"),
    ({"a\x00b": 1}, "U+0000"),
    ({"x": "\ud800"}, "surrogate"),
    ({"x": 2**70}, "64 bits"),
    ({"x": -(2**63) - 1}, "64 bits"),
    (DEEP, "deeper than"),
]


@pytest.mark.parametrize("i", range(len(UNSTORABLE)))
def test_unstorable_values_are_refused_alike_and_the_batch_stores_nothing(backend, pool_name, i):
    """PostgreSQL refuses U+0000, MongoDB integers beyond 64 bits and deep documents, no driver
    encodes a lone surrogate: every backend refuses all of them, naming the real index."""
    definition, why = UNSTORABLE[i]
    backend.ensure_pool(pool_name)
    good = [nt(n) for n in range(5001 if i == 0 else 3)]  # the reported case: 5,001 good + 1
    for bad in (NewTask(definition, "bad"), NewTask({"ok": 1}, "bad_meta", metadata={"m": definition})):
        with pytest.raises(PoolError, match=rf"tasks\[{len(good)}\]") as exc:
            backend.insert_tasks(pool_name, [*good, bad])
        assert why in str(exc.value)
        assert counts(backend, pool_name) == {}
    assert backend.insert_tasks(pool_name, good[:2])[0].created  # the store is fine


def test_stored_values_at_the_limits_round_trip(backend, pool_name):
    backend.ensure_pool(pool_name)
    deep: dict = {}
    node = deep
    for _ in range(60):
        node["a"] = node = {}
    definition = {"big": 2**63 - 1, "small": -(2**63), "text": "é \\u0000 \U0001f600", "deep": deep}
    (res,) = backend.insert_tasks(pool_name, [NewTask(definition, "edge")])
    assert get(backend, pool_name, res.id).definition == definition


def test_priorities_are_32_bit_integers_everywhere(backend, pool_name):
    ids = fill(backend, pool_name, 1)
    for bad in (2**31, -(2**31) - 1, 2**70):
        with pytest.raises(PoolError, match="priority"):
            backend.insert_tasks(pool_name, [NewTask({"p": 1}, "p", priority=bad)])
        with pytest.raises(PoolError, match="priority"):
            backend.set_priority(pool_name, parse_query({"_id": ids[0]}), bad)
    with pytest.raises(PoolError, match="max_attempts"):
        backend.insert_tasks(pool_name, [NewTask({"p": 1}, "p", max_attempts=2**40)])
    backend.insert_tasks(pool_name, [NewTask({"p": 2}, "p2", priority=2**31 - 1)])
    assert backend.set_priority(pool_name, parse_query({"_id": ids[0]}), -(2**31)) == 1
    assert counts(backend, pool_name) == {WAITING: 2}


def test_query_values_no_store_can_hold_are_query_errors(backend, pool_name):
    fill(backend, pool_name, 2)
    for bad in ({"priority": 10**25}, {"def.x": 2**64}, {"attempts": {"$in": [1, -(2**70)]}},
                {"def.x": "a\x00"}, {"meta.x": "\udfff"}, {"priority": {"$lt": float("inf")}},
                {"hash": "\x00"}):
        with pytest.raises(QueryError):
            backend.count_tasks(pool_name, bad)
    assert counts(backend, pool_name) == {WAITING: 2}


def test_failure_records_are_stored_whatever_the_error_holds(backend, pool_name):
    """A traceback with U+0000, a lone surrogate or a password is still recorded, cleaned."""
    fill(backend, pool_name, 1)
    r = claim_one(backend, pool_name)
    error = "boom \x00 \ud800 at postgresql://u:S3cret@db/x"
    assert backend.release_task(pool_name, r.id, r.lease_token, error=error, give_up=True)
    stored = get(backend, pool_name, r.id).last_error
    assert "\x00" not in stored and "S3cret" not in stored and "boom" in stored
    assert "u:***@db/x" in stored
    stored.encode("utf-8")  # valid Unicode
