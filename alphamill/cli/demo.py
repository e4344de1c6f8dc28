"""``alphamill demo``: the flagship rolling experiment on the embedded default.

The demo market (300 instruments, 2010-2020) is generated on first use; LightGBM on Alpha158
with the hyper-parameters of Qlib's benchmark is rolled yearly over 2016-2020 (sliding
windows of 250 trading days), the windows are trained by 2 worker processes from the embedded
SQLite pool, collected and merged (the later window wins), and the per-window and merged
IC / ICIR / Rank IC / Rank ICIR and the backtest summary are printed; the HTML report's path
is printed last. The config is :func:`~alphamill.workflow.experiment.flagship_config`, the
same as ``examples/rolling.yaml``. Running it again trains nothing new (every task is found
``done`` in the pool) unless ``--fresh``.

``--small`` runs the same pipeline on a 30-instrument market in seconds; ``--pool-only`` runs
the pool demo (rolling x grid ridge tasks on synthetic data, no market data needed).
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


def pool_demo(ctx: click.Context, pool_: str | None, url_: str | None, jobs: int, keep: bool) -> None:
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



def flagship_demo(small: bool, workers: int, fresh: bool, report: str | None, url: str | None,
                  pool: str | None) -> None:
    """Run the flagship experiment (see the module docstring) and print its results."""
    from pathlib import Path

    from alphamill.cli.run import make_console, run_and_print
    from alphamill.config import get_setting
    from alphamill.data import default_demo_path, ensure_demo_market
    from alphamill.workflow.experiment import SMALL_MARKET, flagship_config, parse_config

    console = make_console()
    t0 = time.monotonic()
    if small:
        market = (Path(get_setting("home")) / "data" / "demo-small").absolute()
        raw = flagship_config(small=True, data=str(market))
    else:
        market = Path(get_setting("data")).expanduser()
        raw = flagship_config()
    fresh_market = not (market / "meta.json").is_file()
    if fresh_market:
        console.print(f"generating the demo market in {market} (first use) ...")
    if small:
        ensure_demo_market(market, **SMALL_MARKET)
    elif market.absolute() == default_demo_path().absolute():
        ensure_demo_market(market)
    if fresh_market:
        console.print(f"demo market ready in {time.monotonic() - t0:.1f} s")
    raw["workers"] = workers
    if url or pool:
        raw["pool"] = {k: v for k, v in (("url", url), ("name", pool)) if v}
    cfg = parse_config(raw, source="alphamill demo" + (" --small" if small else ""), default_name=raw["experiment"])
    run_and_print(cfg, fresh=fresh, report=report, console=console)


@click.command("demo")
@click.option("--small", is_flag=True, help="A seconds-long variant on a 30-instrument market (2010-2012).")
@click.option("--workers", "-j", "jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Worker processes.")
@click.option("--fresh", is_flag=True, help="Train every window again (by default a rerun reuses the done tasks).")
@click.option("--report", default=None, help="Where to write the HTML report (default: .alphamill/reports/).")
@click.option("--pool-only", is_flag=True, help="Run the task-pool demo instead (ridge tasks on synthetic data).")
@click.option("-t", "--task-pool", "pool_", default=None, help="Pool name (default: the experiment name; demo for --pool-only).")
@click.option("--url", "url_", default=None, help="Pool store URL (default: the embedded SQLite pool).")
@click.option("--keep", is_flag=True, help="--pool-only: keep the pool's existing tasks.")
@click.pass_context
def demo_cmd(ctx: click.Context, small: bool, jobs: int, fresh: bool, report: str | None, pool_only: bool,
             pool_: str | None, url_: str | None, keep: bool) -> None:
    """Run the flagship rolling experiment (LightGBM on Alpha158, 2016-2020, 2 workers)."""
    if pool_only:
        pool_demo(ctx, pool_, url_, jobs, keep)
        return
    obj = ctx.obj or {}
    flagship_demo(small, jobs, fresh, report, url_ or obj.get("url"), pool_ or obj.get("task_pool"))


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(demo_cmd)
