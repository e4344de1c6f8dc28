"""``alphamill demo``: the pool demo on the embedded default (no set-up, no data files).

Generates tasks (RollingGen over a template × GridGen over the ridge penalty), stores them in
the pool (the embedded SQLite file under ``.alphamill/`` unless ``--url``), runs them with 2
worker processes and shows the status and the results per window.
"""

from __future__ import annotations

import sys
import time

import click

from alphamill.config import redact_url

DEMO_FUNC = "alphamill.task.demo_funcs:demo_train"


def demo_tasks(start: str = "2018-01-01", end: str = "2020-12-31", step: int = 63,
               alphas: tuple[float, ...] = (0.01, 0.1, 1.0)) -> list[dict]:
    """The demo's tasks: quarterly rolling windows × ridge penalties, each with its meta."""
    import pandas as pd

    from alphamill.task.gen import GridGen, RollingGen, task_generator

    calendar = list(pd.bdate_range(start, end))
    template = {
        "model": {"class": "Ridge", "module_path": "sklearn.linear_model", "kwargs": {"alpha": 1.0}},
        "dataset": {
            "class": "DatasetH",
            "module_path": "alphamill.dataset",
            "kwargs": {
                "handler": {"class": "Demo", "kwargs": {"start_time": start, "end_time": "2019-12-31"}},
                "segments": {
                    "train": ["2018-01-01", "2018-12-31"],
                    "valid": ["2019-01-01", "2019-06-28"],
                    "test": ["2019-07-01", end],
                },
            },
        },
        "record": [],
    }
    return task_generator([template], [
        RollingGen(step=step, rtype=RollingGen.ROLL_SD, calendar=calendar, trunc_days=2),
        GridGen({"model.kwargs.alpha": list(alphas)}),
    ])


@click.command("demo")
@click.option("-t", "--task-pool", "pool_", default=None, help="Pool name (default: demo).")
@click.option("--url", "url_", default=None, help="Pool store URL (default: the embedded SQLite pool).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes.")
@click.option("--keep", is_flag=True, help="Keep the pool's existing tasks instead of starting afresh.")
@click.pass_context
def demo_cmd(ctx: click.Context, pool_: str | None, url_: str | None, jobs: int, keep: bool) -> None:
    """Generate rolling × grid tasks, pool them, run them with worker processes, show results."""
    from rich.console import Console
    from rich.table import Table

    from alphamill.cli.pool import _stat_table
    from alphamill.task.manage import TaskManager
    from alphamill.task.worker import run_worker

    obj = ctx.obj or {}
    pool = pool_ or obj.get("task_pool") or "demo"
    url = url_ or obj.get("url")
    console = Console(highlight=False)
    tasks = demo_tasks()
    with TaskManager(pool, url) as tm:
        console.print(f"[bold]pool[/] {pool} in {redact_url(tm.url)}")
        if not keep:
            tm.remove(all=True)
        tm.create_task(tasks)
        console.print(f"generated {len(tasks)} tasks (RollingGen × GridGen), {tm.last_new} new")
        resolved_url = tm.url
    t0 = time.monotonic()
    code = run_worker(pool, resolved_url, func=DEMO_FUNC, jobs=jobs, until_empty=True,
                      lease_seconds=60, heartbeat_interval=10, retry_backoff=0.5)
    console.print(f"{jobs} worker processes finished in {time.monotonic() - t0:.1f} s")
    with TaskManager(pool, resolved_url) as tm:
        stat = tm.task_stat()
        console.print(_stat_table(f"pool {pool}", stat))
        rows = sorted(tm.query({"status": "done"}),
                      key=lambda t: (t["meta"]["rolling"]["index"], t["meta"]["grid"]["model.kwargs.alpha"]))
    table = Table(title="test IC per rolling window and ridge penalty")
    for col in ("window", "test segment", "alpha", "IC", "ICIR", "worker pid"):
        table.add_column(col)
    for t in rows:
        seg = t["def"]["dataset"]["kwargs"]["segments"]["test"]
        table.add_row(str(t["meta"]["rolling"]["index"]), f"{seg[0]} .. {seg[1]}",
                      str(t["meta"]["grid"]["model.kwargs.alpha"]), f"{t['res']['ic']:.4f}",
                      f"{t['res']['icir']:.3f}", str(t["worker_pid"]))
    console.print(table)
    if code != 0 or set(stat) != {"done"}:
        console.print("[red]some tasks did not finish: see `alphamill -t demo query '{\"status\": \"failed\"}'`")
        sys.exit(1)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(demo_cmd)
