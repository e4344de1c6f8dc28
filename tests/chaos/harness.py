"""Chaos harness: real worker processes on a real database, killed at random moments.

A worker is a subprocess ``python -m tests.chaos.harness worker ...`` running alphamill's own
worker loop (:func:`alphamill.task.worker.work`). The only instrumentation is a thin wrapper
around :func:`alphamill.task.worker.execute_task` that remembers the task being run (so the task
function can record the lease it runs under) and writes the outcome of the commit to the ledger.

The ledger is an append-only file; every entry is one JSON line written with a single
``O_APPEND`` ``write`` (atomic for lines this short, across processes):

* ``start``/``end``: written by the task function (task id, attempt, lease token, pid);
* ``commit``: written after the worker tried to commit (``ok`` false = refused, a zombie).

The task function returns its lease token, attempt and pid, so the pool's stored result says
which lease committed it. :func:`check_pool` compares ledger and pool afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphamill.kinds import task_function

ROOT = Path(__file__).resolve().parents[2]
LEDGER_ENV = "AM_CHAOS_LEDGER"

#: The task being run by this worker process (set by the execute_task wrapper).
_current: dict[str, Any] = {}


# -- ledger ------------------------------------------------------------------------------------


def ledger_write(path: str | os.PathLike, entry: dict[str, Any]) -> None:
    """Append one JSON line with one ``write`` call (O_APPEND: no interleaving)."""
    data = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def ledger_read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete entry (a line cut short by SIGKILL is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# -- task functions (run inside the workers) -----------------------------------------------------


def _lease() -> dict[str, Any]:
    task = _current.get("task") or {}
    return {
        "id": str(task.get("_id")),
        "attempt": task.get("attempts"),
        "token": task.get("lease_token"),
        "pid": os.getpid(),
    }


@task_function
def chaos_task(task_def: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Sleep the task's ``sleep`` seconds between a ``start`` and an ``end`` ledger entry."""
    lease = _lease()
    path = os.environ[LEDGER_ENV]
    ledger_write(path, {"ev": "start", **lease, "t": time.time()})
    sleep = float(task_def.get("sleep", 0.0))
    if lease["attempt"] == 1:
        sleep += float(task_def.get("sleep_first", 0.0))  # only the first run is slow
    if sleep:
        time.sleep(sleep)
    ledger_write(path, {"ev": "end", **lease})
    return {"n": task_def.get("n"), **lease}


@task_function
def noop_task(task_def: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """The cheapest task that still proves who ran it (for the throughput benchmark)."""
    lease = _lease()
    ledger_write(os.environ[LEDGER_ENV], {"ev": "start", **lease, "t": time.time()})
    return {"n": task_def.get("n"), **lease}


# -- the worker process ------------------------------------------------------------------------------


def _instrument(ledger: str) -> None:
    """Wrap the worker loop's execute_task: remember the task, log the commit outcome."""
    from alphamill.task import worker
    from alphamill.task.status import RUNNING
    from tests.chaos import harness  # the task function's module (this file may be __main__)

    original = worker.execute_task
    current = harness._current

    def execute_task(tm, task, *args, **kwargs):
        current["task"] = task
        lease = {"id": str(task["_id"]), "attempt": task.get("attempts"), "token": task.get("lease_token")}
        try:
            status = original(tm, task, *args, **kwargs)
        finally:
            current.pop("task", None)
        # RUNNING means the commit was refused: the lease was no longer ours (a zombie)
        ledger_write(ledger, {"ev": "commit", "ok": status != RUNNING, "status": status,
                              "pid": os.getpid(), **lease})
        return status

    worker.execute_task = execute_task


def _skew_clock(offset: float) -> None:
    """Make this process's wall clock ``offset`` seconds wrong (leases must not care)."""
    real = time.time

    def skewed() -> float:
        return real() + offset

    time.time = skewed


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="chaos-worker")
    ap.add_argument("--url", required=True)
    ap.add_argument("--pool", required=True)
    ap.add_argument("--ledger", required=True)
    ap.add_argument("--func", default="tests.chaos.harness:chaos_task")
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument("--heartbeat", type=float, default=0.4)
    ap.add_argument("--prefetch", type=int, default=1)
    ap.add_argument("--clock-offset", type=float, default=0.0)
    ap.add_argument("--max-tasks", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format=f"%(asctime)s pid={os.getpid()} %(levelname)s %(name)s: %(message)s",
    )
    os.environ[LEDGER_ENV] = args.ledger
    if args.clock_offset:
        _skew_clock(args.clock_offset)
    _instrument(args.ledger)
    from alphamill.task.worker import WorkerConfig, work

    cfg = WorkerConfig(
        task_pool=args.pool, url=args.url, func=args.func, until_empty=True,
        lease_seconds=args.lease, heartbeat_interval=args.heartbeat, prefetch=args.prefetch,
        retry_backoff=0.05, idle_sleep=0.1, grace=1.0, max_tasks=args.max_tasks,
    )
    work(cfg)
    return 0


# -- the harness (test process) ----------------------------------------------------------------------


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    killed: bool = False
    stopped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class ChaosReport:
    """What a run did and what the pool and ledger say afterwards."""

    backend: str
    tasks: int
    workers: int
    kills: int = 0
    pauses: int = 0  # SIGSTOP past the lease, then SIGCONT (zombies)
    db_restarts: int = 0  # rounds of pg_terminate_backend on the workers' sessions
    tasks_lost: int = 0  # not done at the end (nor failed)
    tasks_failed: int = 0
    tasks_stuck: int = 0  # still running at the end
    double_commits: int = 0
    double_claims: int = 0
    rejected_zombie_commits: int = 0
    stale_results: int = 0  # committed result not from the task's current lease
    reruns: int = 0  # runs beyond one per task (killed or expired leases: at-least-once)
    wall_seconds: float = 0.0
    violations: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["violations"] = len(self.violations)
        return d


def _sqlite_url_path(url: str) -> str | None:
    return url[len("sqlite:///"):].split("?")[0] if url.startswith("sqlite:///") else None


class ChaosRun:
    """Start workers on a pool, kill and replace them at random until the pool is drained."""

    def __init__(
        self,
        url: str,
        pool: str,
        workdir: Path,
        *,
        workers: int = 4,
        lease: float = 2.0,
        heartbeat: float = 0.4,
        func: str = "tests.chaos.harness:chaos_task",
        seed: int = 0,
        extra_args: Callable[[int], list[str]] | None = None,
    ):
        self.url = url
        self.pool = pool
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.workdir / "ledger.jsonl"
        self.n_workers = workers
        self.lease = lease
        self.heartbeat = heartbeat
        self.func = func
        self.rng = random.Random(seed)
        self.extra_args = extra_args
        self.workers: list[Worker] = []
        self.kills = 0
        self.pauses = 0
        self.db_restarts = 0
        self._started = 0

    # -- pool ----------------------------------------------------------------------------------
    def create_tasks(self, n: int, sleep: tuple[float, float] = (0.0, 0.03), max_attempts: int = 20) -> list[str]:
        """``n`` tasks sleeping a random time each; generous attempts so kills never fail one."""
        from alphamill.task.manage import TaskManager

        defs = [{"n": i, "sleep": round(self.rng.uniform(*sleep), 4)} for i in range(n)]
        with TaskManager(self.pool, self.url, max_attempts=max_attempts) as tm:
            return tm.create_task(defs)

    def stat(self) -> dict[str, int]:
        from alphamill.task.manage import TaskManager

        with TaskManager(self.pool, self.url) as tm:
            return tm.task_stat()

    def drained(self) -> bool:
        s = self.stat()
        return not s.get("waiting") and not s.get("running") and not s.get("part_done")

    # -- processes -------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env[LEDGER_ENV] = str(self.ledger)
        # the workers' task functions live here: a worker imports only trusted modules
        trusted = [p for p in env.get("ALPHAMILL_TRUSTED_MODULES", "").split(",") if p]
        env["ALPHAMILL_TRUSTED_MODULES"] = ",".join(dict.fromkeys([*trusted, "tests.chaos.harness"]))
        return env

    def start_worker(self, args: list[str] | None = None) -> Worker:
        i = self._started
        self._started += 1
        log = self.workdir / f"worker{i}.log"
        cmd = [
            sys.executable, "-m", "tests.chaos.harness", "worker", "--url", self.url,
            "--pool", self.pool, "--ledger", str(self.ledger), "--func", self.func,
            "--lease", str(self.lease), "--heartbeat", str(self.heartbeat),
            *(self.extra_args(i) if self.extra_args else []), *(args or []),
        ]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=str(ROOT), env=self.env(), stdout=fh, stderr=subprocess.STDOUT)
        w = Worker(proc, log)
        self.workers.append(w)
        return w

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def busy(self, max_attempt: int = 2) -> list[Worker]:
        """Live workers inside a task right now (a ``start`` without its ``end``).

        Only runs up to ``max_attempt`` count: once the pool is almost drained, the only
        running task would otherwise be hit again at every retry until its attempts ran out,
        which a randomly failing cluster does not do.
        """
        open_runs: dict[int, int | None] = {}
        for e in ledger_read(self.ledger):
            if e["ev"] in ("start", "end"):
                open_runs[e["pid"]] = e["attempt"] if e["ev"] == "start" else None
        return [w for w in self.live() if (open_runs.get(w.pid) or max_attempt + 1) <= max_attempt]

    def kill(self, w: Worker) -> None:
        if w.stopped:
            os.kill(w.pid, signal.SIGCONT)
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        w.killed = True
        self.kills += 1

    def run(
        self,
        *,
        kill_every: tuple[float, float] = (0.3, 1.0),
        max_kills: int | None = None,
        timeout: float = 120.0,
        during: Callable[[ChaosRun], None] | None = None,
        pause_ratio: float = 0.0,
    ) -> float:
        """Keep ``workers`` alive, SIGKILL one at random moments; return the wall time.

        With ``pause_ratio`` > 0 that share of the blows is a SIGSTOP instead, for 1.5 leases,
        followed by SIGCONT: the worker wakes up as a zombie whose commit must be refused.
        """
        t0 = time.monotonic()
        paused: list[tuple[Worker, float]] = []
        for _ in range(self.n_workers):
            self.start_worker()
        next_kill = t0 + self.rng.uniform(*kill_every)
        try:
            while True:
                now = time.monotonic()
                if now - t0 > timeout:
                    raise AssertionError(f"pool not drained after {timeout:g}s: {self.stat()}")
                if during is not None:
                    during(self)
                for w, due in list(paused):
                    if now >= due:
                        paused.remove((w, due))
                        if w.proc.poll() is None:
                            os.kill(w.pid, signal.SIGCONT)
                        w.stopped = False
                live = self.live()
                if not live and self.drained():
                    break
                if now >= next_kill and live and (max_kills is None or self.kills < max_kills):
                    # kill a worker in the middle of a task (that is what must be survived);
                    # while every worker is still starting up, try again a moment later
                    busy = [w for w in self.busy() if not w.stopped]
                    if busy and not self.drained():
                        victim = self.rng.choice(busy)
                        if self.rng.random() < pause_ratio:
                            os.kill(victim.pid, signal.SIGSTOP)
                            victim.stopped = True
                            self.pauses += 1
                            paused.append((victim, now + 1.5 * self.lease))
                        else:
                            self.kill(victim)
                        next_kill = now + self.rng.uniform(*kill_every)
                    else:
                        next_kill = now + 0.1
                if len(self.live()) < self.n_workers and not self.drained():
                    self.start_worker()
                time.sleep(0.05)
        finally:
            for w in self.live():
                self.kill(w)
        return time.monotonic() - t0

    def worker_errors(self) -> list[str]:
        """Output of workers that exited on their own with an error or printed a traceback."""
        bad = []
        for w in self.workers:
            text = w.output()
            if not w.killed and w.proc.returncode != 0:
                bad.append(f"worker pid {w.pid} exit {w.proc.returncode}:\n{text[-3000:]}")
            elif "Traceback" in text or "database is locked" in text:
                bad.append(f"worker pid {w.pid} printed an error:\n{text[-3000:]}")
        return bad

    def report(self, backend: str, n_tasks: int, wall: float) -> ChaosReport:
        rep = check_pool(self.url, self.pool, self.ledger, n_tasks, backend=backend)
        rep.workers = self.n_workers
        rep.kills = self.kills
        rep.pauses = self.pauses
        rep.db_restarts = self.db_restarts
        rep.wall_seconds = round(wall, 2)
        rep.violations += self.worker_errors()
        return rep


def check_pool(url: str | None, pool: str, ledger: Path, n_tasks: int, *, backend: str = "",
               tm: Any = None) -> ChaosReport:
    """Compare the pool with the ledger; every broken guarantee becomes a violation."""
    from alphamill.task.manage import TaskManager

    own = tm is None
    tm = tm or TaskManager(pool, url)
    try:
        tasks = list(tm.query())
        stat = tm.task_stat()
    finally:
        if own:
            tm.close()
    entries = ledger_read(ledger)
    rep = ChaosReport(backend=backend, tasks=n_tasks, workers=0)
    v = rep.violations
    if len(tasks) != n_tasks:
        v.append(f"pool holds {len(tasks)} tasks, expected {n_tasks}")
    rep.tasks_stuck = stat.get("running", 0)
    rep.tasks_failed = stat.get("failed", 0)
    rep.tasks_lost = n_tasks - stat.get("done", 0) - rep.tasks_failed
    if stat != {"done": n_tasks}:
        v.append(f"not every task done: {stat}")

    starts = [e for e in entries if e["ev"] == "start"]
    runs_of: dict[str, list[dict]] = defaultdict(list)
    for e in starts:
        runs_of[e["id"]].append(e)
    tokens_of_attempt: dict[tuple[str, int], set[str]] = defaultdict(set)
    pids_of_token: dict[str, set[int]] = defaultdict(set)
    for e in starts:
        tokens_of_attempt[(e["id"], e["attempt"])].add(e["token"])
        pids_of_token[e["token"]].add(e["pid"])
    for key, toks in tokens_of_attempt.items():
        if len(toks) > 1:
            rep.double_claims += 1
            v.append(f"task {key[0]} attempt {key[1]} held under {len(toks)} leases at once")
    for tok, pids in pids_of_token.items():
        if len(pids) > 1:
            rep.double_claims += 1
            v.append(f"lease {tok} held by {len(pids)} processes")
    rep.reruns = sum(max(0, len(r) - 1) for r in runs_of.values())

    commits = [e for e in entries if e["ev"] == "commit"]
    ok_commits = Counter(e["id"] for e in commits if e["ok"])
    ok_token = {e["id"]: e["token"] for e in commits if e["ok"]}
    rep.rejected_zombie_commits = sum(1 for e in commits if not e["ok"])
    for tid, k in ok_commits.items():
        if k > 1:
            rep.double_commits += 1
            v.append(f"task {tid} committed {k} times")

    started = {(e["id"], e["token"], e["attempt"]) for e in starts}
    for t in tasks:
        tid, res = str(t["_id"]), t["res"]
        if t["status"] != "done":
            continue
        if not isinstance(res, dict) or "token" not in res:
            v.append(f"task {tid}: result {res!r} does not name its lease")
            rep.stale_results += 1
            continue
        if res["id"] != tid or (tid, res["token"], res["attempt"]) not in started:
            rep.stale_results += 1
            v.append(f"task {tid}: committed lease {res['token']} never ran this task")
        if res["attempt"] != t["attempts"]:
            rep.stale_results += 1
            v.append(f"task {tid}: result from attempt {res['attempt']}, current attempt {t['attempts']}")
        if tid in ok_token and ok_token[tid] != res["token"]:
            rep.stale_results += 1
            v.append(f"task {tid}: ledger commit {ok_token[tid]} but pool holds {res['token']}")
        if t.get("lease_token") or t.get("lease_owner"):
            v.append(f"task {tid}: done but still leased")
    return rep


# -- PostgreSQL session terminator -----------------------------------------------------------------


def terminate_sessions(admin_url: str, schema: str) -> int:
    """``pg_terminate_backend`` every session whose last statement touched ``schema``.

    Statements name their tables schema-qualified, so this reaches exactly the sessions of
    this run (workers and their heartbeat connections), never another test's.
    """
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND position(%s in query) > 0",
            (f'"{schema}"',),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


class Terminator:
    """Background thread ending the run's PostgreSQL sessions every ``every`` seconds.

    Stops after ``rounds`` rounds that terminated at least one session.
    """

    def __init__(self, admin_url: str, schema: str, every: float = 0.7, rounds: int = 5):
        self.admin_url, self.schema, self.every, self.rounds = admin_url, schema, every, rounds
        self.terminated: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # rounds that found no session (workers still starting) do not count
        while sum(1 for k in self.terminated if k) < self.rounds and not self._stop.wait(self.every):
            self.terminated.append(terminate_sessions(self.admin_url, self.schema))

    def __enter__(self) -> Terminator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.chaos.harness worker --url URL --pool POOL --ledger FILE")
