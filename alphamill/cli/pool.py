"""CLI verbs of the task pool: worker, wait, task_stat, list, query, reset, remove,
prioritize, create and doctor.

Every verb takes ``-t POOL`` (before or after the verb) and ``--url``; output is a rich table
by default and JSON with ``--json``. Bad input (malformed JSON/YAML, an unknown query field,
a missing ``-t``) is reported as one message with exit code 2, before the pool is touched.
URLs are only ever printed through :func:`~alphamill.config.redact_url`.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from alphamill.cli.common import Jobs, Seconds
from alphamill.config import redact_url
from alphamill.errors import ConfigError
from alphamill.limits import INT32_MAX, INT32_MIN, MAX_CLAIM
from alphamill.task.status import DONE, PART_DONE, STATUSES, WAITING
from alphamill.textfile import parse_json, parse_yaml, read_text


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def parse_json_arg(text: str | None, what: str) -> Any:
    """Parse a JSON option/argument; a syntax error names the option and the position."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError("nested too deeply to parse", what) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"malformed JSON ({e.msg} at line {e.lineno} column {e.colno}): {text!r}", what) from None
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object such as '{{\"status\": \"waiting\"}}', got {text!r}", what)
    return value


def load_task_file(path: str) -> list[dict[str, Any]]:
    """Task definitions from a YAML or JSON file: a list, ``{"tasks": [...]}`` or one task."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"file {p} does not exist or is not a file", "create")
    text = read_text(p, "create")
    try:
        if p.suffix.lower() == ".json":
            data = parse_json(text, p, "create")
        else:
            data = parse_yaml(text, p, "create")
    except json.JSONDecodeError as e:
        raise ConfigError(f"file {p}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"file {p}: malformed YAML{where}: {problem}") from None
    if isinstance(data, dict) and "tasks" in data:
        data = data["tasks"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f"file {p}: expected a list of task definitions (or {{tasks: [...]}}), got "
            f"{type(data).__name__ if data is not None else 'an empty file'}"
        )
    for i, t in enumerate(data):
        if not isinstance(t, dict):
            raise ConfigError(f"file {p}: task [{i}] must be a mapping, got {type(t).__name__}")
    return data


def _pool_options(needs_pool: bool = True, json_flag: bool = True) -> Callable:
    """Shared options: ``-t``/``--url`` may also be given after the verb; ``--json``."""

    def deco(f: Callable) -> Callable:
        f = click.option("--url", "url_", default=None, help="Pool store URL (overrides the global --url).")(f)
        f = click.option("-t", "--task-pool", "pool_", default=None, help="Task pool name.")(f)
        if json_flag:
            f = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)

        @functools.wraps(f)
        @click.pass_context
        def wrapper(ctx: click.Context, *args: Any, pool_: str | None, url_: str | None, **kwargs: Any):
            obj = ctx.obj or {}
            pool = pool_ or obj.get("task_pool")
            url = url_ or obj.get("url")
            if needs_pool and not pool:
                raise ConfigError(f"missing task pool: use 'alphamill -t POOL {ctx.info_name} ...'", "-t/--task-pool")
            return f(*args, pool=pool, url=url, **kwargs)

        return wrapper

    return deco


def _manager(pool: str, url: str | None, **kwargs: Any):
    from alphamill.task.manage import TaskManager

    return TaskManager(pool, url, **kwargs)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _stat_table(title: str, stat: dict[str, int]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for s in STATUSES:
        table.add_row(s, str(stat.get(s, 0)))
    table.add_row("[bold]total", f"[bold]{sum(stat.values())}")
    return table


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


@click.command("worker")
@_pool_options(json_flag=False)
@click.option("--jobs", "-j", type=Jobs(), default=1, show_default=True,
              help="Worker processes on this machine (at most 8 per core, at least 16).")
@click.option("--query", "query_", default=None, help="Only tasks matching this JSON filter.")
@click.option("--max-tasks", type=click.IntRange(min=1), default=None, help="Stop each process after N tasks.")
@click.option("--until-empty", is_flag=True, help="Exit once nothing is waiting or running.")
@click.option("--func", default=None, help="Task function module:function (default: alphamill.trainer:pool_train).")
@click.option("--lease", type=Seconds(positive=True), default=None, help="Lease length in seconds.")
@click.option("--heartbeat", type=Seconds(positive=True), default=None, help="Heartbeat interval in seconds.")
@click.option("--prefetch", default="auto", show_default=True,
              help="Tasks claimed per transaction: N, or auto (batches only for tasks under 50 ms).")
@click.option("--grace", type=Seconds(), default=None, help="Seconds a running task may finish after SIGTERM.")
@click.option("--retry-backoff", type=Seconds(), default=None, help="Base delay before retrying a failed task.")
@click.option("--from-status", type=click.Choice([WAITING, PART_DONE]), default=WAITING, show_default=True, help="Claim tasks of this status.")
@click.option("--to-status", type=click.Choice([DONE, PART_DONE]), default=DONE, show_default=True, help="Status committed on success.")
@click.option("--force-release", is_flag=True, help="Run every task in a fresh child process.")
@click.option("-v", "--verbose", is_flag=True, help="Log every task (default: warnings and errors only).")
def worker_cmd(pool, url, jobs, query_, max_tasks, until_empty, func, lease, heartbeat, prefetch, grace,
               retry_backoff, from_status, to_status, force_release, verbose):
    """Run worker processes that drain the pool (SIGTERM/Ctrl-C: finish, hand back, exit 0)."""
    import logging

    from alphamill.task import worker as w

    if prefetch != "auto":
        try:
            prefetch = int(prefetch)
        except ValueError:
            raise ConfigError(f"expected a positive integer or 'auto', got {prefetch!r}", "--prefetch") from None
        if not 1 <= prefetch <= MAX_CLAIM:
            raise ConfigError(f"expected an integer between 1 and {MAX_CLAIM} or 'auto', got {prefetch}", "--prefetch")
    level = logging.INFO if verbose else logging.WARNING
    w.configure_logging(level)

    kwargs: dict[str, Any] = {}
    if lease is not None:
        kwargs["lease_seconds"] = lease
    if heartbeat is not None:
        kwargs["heartbeat_interval"] = heartbeat
    if grace is not None:
        kwargs["grace"] = grace
    if retry_backoff is not None:
        kwargs["retry_backoff"] = retry_backoff
    code = w.run_worker(
        pool,
        url,
        func=func or w.DEFAULT_FUNC,
        jobs=jobs,
        query=parse_json_arg(query_, "--query"),
        max_tasks=max_tasks,
        until_empty=until_empty,
        prefetch=prefetch,
        before_status=from_status,
        after_status=to_status,
        force_release=force_release,
        log_level=level,
        **kwargs,
    )
    sys.exit(code)


@click.command("wait")
@_pool_options()
@click.option("--query", "query_", default=None, help="Only tasks matching this JSON filter.")
@click.option("--timeout", type=Seconds(), default=None, help="Give up after S seconds (exit 1).")
@click.option("--poll", type=Seconds(minimum=0.01), default=1.0, show_default=True, help="Seconds between checks.")
def wait_cmd(pool, url, as_json, query_, timeout, poll):
    """Wait until no matching task is waiting, running or part_done, with a progress bar."""
    query = parse_json_arg(query_, "--query")
    with _manager(pool, url) as tm:
        try:
            stat = tm.wait(query, timeout=timeout, poll_interval=poll, progress=not as_json)
        except TimeoutError as e:
            click.echo(f"timeout: {e}", err=True)
            if as_json:
                _print_json(tm.task_stat(query))
            sys.exit(1)
    if as_json:
        _print_json(stat)
    else:
        _console().print(_stat_table(f"pool {pool}", stat))


@click.command("task_stat")
@_pool_options()
@click.option("--query", "query_", default=None, help="Only tasks matching this JSON filter.")
def task_stat_cmd(pool, url, as_json, query_):
    """Number of tasks per status (counted by the database)."""
    query = parse_json_arg(query_, "--query")
    with _manager(pool, url) as tm:
        stat = tm.task_stat(query)
    if as_json:
        _print_json(stat)
    else:
        _console().print(_stat_table(f"pool {pool}", stat))


@click.command("list")
@_pool_options(needs_pool=False)
def list_cmd(pool, url, as_json):
    """The pools of the store, with their task counts."""
    from alphamill.task.manage import TaskManager

    probe = TaskManager(pool or "alphamill", url)
    try:
        names = probe.list()
        rows = {}
        for name in names:
            with TaskManager(name, backend=probe.backend) as tm:
                rows[name] = tm.task_stat()
    finally:
        probe.close()
    if as_json:
        _print_json({"url": redact_url(probe.url), "pools": rows})
        return
    from rich.table import Table

    table = Table(title=f"pools in {redact_url(probe.url)}")
    table.add_column("pool")
    for s in STATUSES:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    for name, stat in rows.items():
        table.add_row(name, *(str(stat.get(s, 0)) for s in STATUSES), str(sum(stat.values())))
    _console().print(table)


@click.command("query")
@_pool_options()
@click.argument("query_json", required=False, default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N tasks.")
def query_cmd(pool, url, as_json, query_json, limit):
    """Tasks matching a JSON filter, e.g. '{"status": "failed"}' or '{"meta.rolling.index": 3}'."""
    query = parse_json_arg(query_json, "query")
    with _manager(pool, url) as tm:
        out = []
        for t in tm.query(query):
            out.append(t)
            if limit is not None and len(out) >= limit:
                break
    if as_json:
        _print_json(out)
        return
    from rich.table import Table

    table = Table(title=f"pool {pool}: {len(out)} tasks")
    for col in ("id", "status", "priority", "attempts", "meta", "definition", "last error"):
        table.add_column(col)
    for t in out:
        err = (t["last_error"] or "").strip().splitlines()
        table.add_row(
            str(t["_id"]), t["status"], str(t["priority"]), f"{t['attempts']}/{t['max_attempts']}",
            _short(t["meta"], 40), _short(t["def"]), err[-1] if err else "",
        )
    _console().print(table)


@click.command("reset")
@_pool_options()
@click.option("--query", "query_", default=None, help="Only tasks matching this JSON filter.")
@click.option("--from", "from_", type=click.Choice(list(STATUSES)), default="running", show_default=True,
              help="Reset tasks of this status.")
@click.option("--to", "to", type=click.Choice(["waiting", "part_done", "done", "failed"]), default="waiting",
              show_default=True, help="New status (leases are cleared).")
def reset_cmd(pool, url, as_json, query_, from_, to):
    """Reset tasks (default: running -> waiting, Qlib's reset_waiting)."""
    query = parse_json_arg(query_, "--query")
    query["status"] = from_
    with _manager(pool, url) as tm:
        n = tm.reset_status(query, to)
    if as_json:
        _print_json({"reset": n, "from": from_, "to": to})
    else:
        click.echo(f"reset {n} tasks from {from_} to {to}")


@click.command("remove")
@_pool_options()
@click.argument("query_json", required=False, default=None)
@click.option("--all", "all_", is_flag=True, help="Allow an empty query: remove every task of the pool.")
def remove_cmd(pool, url, as_json, query_json, all_):
    """Remove the tasks matching a JSON filter (an empty filter needs --all)."""
    query = parse_json_arg(query_json, "query")
    with _manager(pool, url) as tm:
        n = tm.remove(query, all=all_)
    if as_json:
        _print_json({"removed": n})
    else:
        click.echo(f"removed {n} tasks")


@click.command("prioritize")
@_pool_options()
@click.argument("task_id")
@click.argument("priority", type=click.IntRange(INT32_MIN, INT32_MAX))
def prioritize_cmd(pool, url, as_json, task_id, priority):
    """Set the priority of one task (higher runs first)."""
    with _manager(pool, url) as tm:
        tm.prioritize(task_id, priority)
    if as_json:
        _print_json({"id": task_id, "priority": priority})
    else:
        click.echo(f"task {task_id}: priority {priority}")


@click.command("create")
@_pool_options()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only report how many tasks are new.")
@click.option("--priority", type=click.IntRange(INT32_MIN, INT32_MAX), default=0, show_default=True,
              help="Priority of the new tasks (a 32-bit integer; higher runs first).")
def create_cmd(pool, url, as_json, file, dry_run, priority):
    """Create tasks from a YAML or JSON file (deduplicated on their content hash)."""
    defs = load_task_file(file)
    with _manager(pool, url) as tm:
        ids = tm.create_task(defs, dry_run=dry_run, priority=priority)
        new = tm.last_new
    report = {"tasks": len(defs), "new": new, "existing": len(defs) - new, "dry_run": dry_run, "ids": ids}
    if as_json:
        _print_json(report)
    else:
        verb = "would create" if dry_run else "created"
        click.echo(f"{verb} {new} new tasks ({len(defs) - new} already in pool {pool})")


@click.command("doctor")
@_pool_options(needs_pool=False)
def doctor_cmd(pool, url, as_json):
    """Check connectivity, permissions and indexes of the pool store."""
    with _manager(pool or "alphamill", url) as tm:
        report = tm.doctor()
    if not pool:
        for key in ("pool", "pool_exists", "codec", "task_stat"):
            report.pop(key, None)
    text = redact_url(json.dumps(report, indent=2, sort_keys=True, default=str))
    if as_json:
        click.echo(text)
        return
    from rich.table import Table

    table = Table(title="alphamill doctor")
    table.add_column("check")
    table.add_column("value")
    for key, value in sorted(json.loads(text).items()):
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    _console().print(table)
    if report.get("ok") is False:
        sys.exit(1)


COMMANDS = (worker_cmd, wait_cmd, task_stat_cmd, list_cmd, query_cmd, reset_cmd, remove_cmd,
            prioritize_cmd, create_cmd, doctor_cmd)


def register(group: click.Group) -> None:
    """Add this module's commands to the main group."""
    for cmd in COMMANDS:
        group.add_command(cmd)
