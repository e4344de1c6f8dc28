"""The chaos logic on MongoDB: threads in one process (mongomock is in-process).

Each thread plays a sequence of worker lives. A life claims tasks through TaskManager and
commits them; at random it "dies" in the middle of a task: its heartbeat stops (as when the
process is killed) and the fetched task is kept as a zombie that tries to commit after the pool
has been drained. The same ledger checks as for real processes then apply, and every zombie
commit must be refused. With ``ALPHAMILL_TEST_MONGO_URL`` set it also runs on a real server.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from alphamill.errors import LeaseLost
from alphamill.task.backends.mongo import MongoBackend
from alphamill.task.manage import TaskManager
from tests.chaos.harness import check_pool, ledger_write
from tests.pool.conftest import MONGO_URL

KINDS = ["mongomock"] + (["mongodb"] if MONGO_URL else [])


@pytest.fixture(params=KINDS)
def mongo_backend(request):
    if request.param == "mongomock":
        import mongomock

        backend = MongoBackend("mongodb://localhost:27017/alphamill_chaos", client=mongomock.MongoClient())
        yield backend
    else:
        from alphamill.config import mongo_url_with_db

        db = f"am_chaos_{uuid.uuid4().hex[:10]}"
        backend = MongoBackend(mongo_url_with_db(MONGO_URL, db))
        yield backend
        backend._client.drop_database(db)
    backend.close()


def test_threads_dying_mid_task_lose_nothing(mongo_backend, tmp_path):
    pool, n, lease = "chaos_mongo", 120, 0.6
    ledger = tmp_path / "ledger.jsonl"
    with TaskManager(pool, backend=mongo_backend, max_attempts=20) as tm:
        tm.create_task([{"n": i} for i in range(n)])
    zombies: list[dict] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def life(rng: random.Random) -> bool:
        """One worker's life; returns whether the pool looked drained."""
        with TaskManager(pool, backend=mongo_backend, lease_seconds=lease,
                         heartbeat_interval=0.1, retry_backoff=0.01) as tm:
            tm.requeue_expired()
            while True:
                task = tm.fetch_task()
                if task is None:
                    stat = tm.task_stat()
                    if not stat.get("waiting") and not stat.get("running"):
                        return True
                    time.sleep(0.05)
                    tm.requeue_expired()
                    continue
                lease_of = {"id": task["_id"], "attempt": task["attempts"],
                            "token": task["lease_token"], "pid": threading.get_ident()}
                ledger_write(ledger, {"ev": "start", **lease_of})
                time.sleep(rng.uniform(0, 0.01))
                if rng.random() < 0.08:  # dies here: heartbeat stops, task still leased
                    tm._heartbeat.discard(task["_id"])
                    with lock:
                        zombies.append(task)
                    return False
                ledger_write(ledger, {"ev": "end", **lease_of})
                try:
                    tm.commit_task_res(task, {"n": task["def"]["n"], **lease_of})
                    ok = True
                except LeaseLost:
                    ok = False
                ledger_write(ledger, {"ev": "commit", "ok": ok, **lease_of})

    def thread_main(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not life(rng):
                pass  # a replacement worker starts
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert zombies, "no worker died: the test exercised nothing"
    # the zombies wake up after their tasks were re-run and committed by others
    with TaskManager(pool, backend=mongo_backend) as tm:
        for task in zombies:
            lease_of = {"id": task["_id"], "attempt": task["attempts"], "token": task["lease_token"], "pid": 0}
            with pytest.raises(LeaseLost):
                tm.commit_task_res(task, {"n": -1, **lease_of})
            ledger_write(ledger, {"ev": "commit", "ok": False, **lease_of})
        rep = check_pool(None, pool, ledger, n, backend="mongomock", tm=tm)
    assert not rep.violations, "\n".join(rep.violations[:20])
    assert rep.rejected_zombie_commits == len(zombies)
    assert rep.reruns >= len(zombies)
