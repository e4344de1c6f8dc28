"""``alphamill run CONFIG.yaml``: generate, pool, train, collect, ensemble and report.

See :mod:`alphamill.workflow.experiment` for the config format. A bad config is reported
with the field at fault and exit code 2 before anything is written to the pool.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from alphamill.cli.common import Jobs


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    return str(value)


def _table(df: Any, title: str) -> Any:
    import pandas as pd
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    flat = df.reset_index()
    for col in flat.columns:
        numeric = pd.api.types.is_numeric_dtype(flat[col])
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in flat.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    return table


#: Selection columns left out of the terminal table (width); the report and --json have them.
CLI_HIDDEN = ("days", "skew", "kurtosis", "ic_units")


def print_results(console: Any, results: Any) -> None:
    """Per-window and merged IC / ICIR / Rank IC / Rank ICIR, the backtest summary and, with
    several signals, their ranking."""
    windows = results.windows.drop(columns=["run_id"])
    console.print(_table(windows, "Per window (each window's own test prediction)"))
    console.print(_table(results.summary, "Merged signal"))
    bt = results.backtest
    if bt is not None:
        console.print(_table(bt, "Backtest of the merged signal (simple = sum, compounded = product)"))
        console.print(f"backtest: {results.backtest_caption()}", soft_wrap=True)
    sel = results.selection()
    if sel is not None:
        shown = sel.table.drop(columns=[c for c in CLI_HIDDEN if c in sel.table.columns])
        console.print(_table(shown, "Selection among variants (deflated Sharpe ratio, PBO, paired IC test; "
                                    "days, skew, kurtosis and IC units in the report and --json)"))
        for line in sel.lines():
            console.print(line, soft_wrap=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def report_file_name(experiment: str) -> str:
    """A file name for the report of ``experiment`` that stays in the reports folder.

    An experiment name is free text (MLflow's), so ``../../x`` or ``a/b`` must not become a
    path: anything but letters, digits, ``_``, ``.`` and ``-`` becomes ``_``, leading dots go,
    and a name that had to change gets a short digest of the original, so two experiments
    never share a report. Plain names are kept as they are (``rolling_lgb.html``).
    """
    slug = _UNSAFE.sub("_", experiment).lstrip(".")[:100] or "experiment"
    if slug != experiment:
        slug += "-" + hashlib.sha256(experiment.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug}.html"


def default_report_path(experiment: str) -> Path:
    """``<home>/reports/<experiment>.html`` (see :func:`report_file_name`)."""
    from alphamill.config import get_setting

    return Path(get_setting("home")) / "reports" / report_file_name(experiment)


def make_console(stderr: bool = False) -> Any:
    """A console at least 120 columns wide when not on a terminal, so tables do not wrap."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(highlight=False, stderr=stderr, width=None if stream.isatty() else 140)


def run_and_print(cfg: Any, *, as_json: bool = False, fresh: bool = False, report: str | None = None,
                  console: Any = None) -> Any:
    """Run a parsed config, print the tables (or JSON), write the report; return the results."""
    from alphamill.workflow.experiment import run_experiment

    console = console or make_console(stderr=as_json)
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    results = run_experiment(cfg, echo=lambda text: console.print(text, soft_wrap=True), progress=True,
                             fresh=fresh, timings=timings)
    path = results.report(report or cfg.report or default_report_path(cfg.experiment),
                          notes={"config": cfg.source, "pool": cfg.pool_name})
    elapsed = time.monotonic() - t0
    if as_json:
        out = results.to_dict()
        out["report"] = str(path)
        out["seconds"] = round(elapsed, 2)
        click.echo(json.dumps(out, indent=1, default=str))
    else:
        print_results(console, results)
        console.print(f"report: [bold]{path}[/]", soft_wrap=True)
        console.print(f"done in {elapsed:.1f} s")
    return results


@click.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--pool", "pool_url", default=None, help="Pool store URL (default: the config's, else the embedded SQLite pool).")
@click.option("-t", "--task-pool", "task_pool", default=None, help="Pool name (default: the config's, else the experiment name).")
@click.option("--workers", "-j", type=Jobs(minimum=0), default=None, help="Local worker processes (0: external workers only).")
@click.option("--experiment", default=None, help="Experiment name (default: the config's, else the file name).")
@click.option("--test-end", default=None, help="Last test date (the rolling generator's test_end, else the test segment's end).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a config value, e.g. task.model.kwargs.learning_rate=0.1 (repeatable).")
@click.option("--report", default=None, help="Where to write the HTML report (default: .alphamill/reports/<experiment>.html).")
@click.option("--fresh", is_flag=True, help="Remove this experiment's tasks from the pool first, so everything is trained again.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (progress goes to stderr).")
@click.pass_context
def run_cmd(ctx: click.Context, config: str, pool_url: str | None, task_pool: str | None, workers: int | None,
            experiment: str | None, test_end: str | None, overrides: tuple[str, ...], report: str | None,
            fresh: bool, as_json: bool) -> None:
    """Run an experiment config: generate tasks, train them with workers, collect, report."""
    from alphamill.workflow.experiment import load_config

    obj = ctx.obj or {}
    cfg = load_config(
        config, overrides, experiment=experiment, pool_url=pool_url or obj.get("url"),
        pool_name=task_pool or obj.get("task_pool"), workers=workers, test_end=test_end, report=report,
    )
    run_and_print(cfg, as_json=as_json, fresh=fresh, report=report)
    sys.exit(0)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    group.add_command(run_cmd)
