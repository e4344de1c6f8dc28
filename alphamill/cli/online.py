"""``alphamill online ...``: serve a rolling experiment day after day.

* ``online init CONFIG.yaml`` - a run config (``alphamill run``'s format, with a ``rolling``
  generator) plus an optional ``online:`` section (``name``, ``begin_time``,
  ``online_newest_only``); the config is stored in the online state of ``--pool`` and the
  first models are trained and put online;
* ``online routine [--date D] [--wait S]`` - one day of work (safe from cron: a second routine
  waits ``--wait`` seconds for the first, then exits with a message and code 2; a rerun for the
  same day changes nothing);
* ``online simulate --end D`` - replay up to ``D``, retraining only at window boundaries;
* ``online status`` / ``online history`` / ``online signal --date D [--topk K]``.

The state lives in the pool store (``--url`` / ``ALPHAMILL_POOL_URL``); ``--pool`` names it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from alphamill.cli.common import parse_date
from alphamill.errors import ConfigError

CONFIG_KEY = "config"
ONLINE_KEYS = ("name", "begin_time", "online_newest_only", "lock_wait")


def _read_config(path: str) -> dict[str, Any]:
    import yaml

    from alphamill.textfile import parse_yaml, read_text

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} does not exist or is not a file", "CONFIG")
    try:
        raw = parse_yaml(read_text(p, "CONFIG"), p, "CONFIG")
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {p}: {e}", "CONFIG") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must contain a mapping with a 'task' section", "CONFIG")
    raw.setdefault("experiment", p.stem)
    return json.loads(json.dumps(raw, default=str))


def build_manager(raw: dict[str, Any], pool: str, url: str | None) -> Any:
    """An :class:`OnlineManager` from a stored online config (see the module docstring)."""
    from alphamill.online.manager import OnlineManager
    from alphamill.online.strategy import RollingStrategy
    from alphamill.task.gen import RollingGen, task_generator
    from alphamill.workflow.experiment import build_generators, parse_config

    raw = dict(raw)
    online = raw.pop("online", None) or {}
    if not isinstance(online, dict):
        raise ConfigError(f"expected a mapping, got {online!r}", "online")
    for key in online:
        if key not in ONLINE_KEYS:
            raise ConfigError(f"unknown setting; expected one of {', '.join(ONLINE_KEYS)}", f"online.{key}")
    raw.pop("pool", None)
    cfg = parse_config(raw, default_name="online")
    gens = build_generators(cfg)
    rolling = [g for g in gens if isinstance(g, RollingGen)]
    if len(rolling) != 1:
        raise ConfigError("expected exactly one rolling generator (generators.rolling)", "generators")
    others = [g for g in gens if not isinstance(g, RollingGen)]
    templates = task_generator([cfg.task], others) if others else [cfg.task]
    name = str(online.get("name") or cfg.experiment)
    strat = RollingStrategy(name, templates, rolling[0],
                            online_newest_only=bool(online.get("online_newest_only", True)))
    begin = online.get("begin_time")
    wait = online.get("lock_wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or wait < 0:
        raise ConfigError(f"expected a number of seconds >= 0, got {wait!r}", "online.lock_wait")
    return OnlineManager(strat, begin_time=begin, pool=pool, url=url, lock_wait=float(wait))


def _stored_manager(ctx: click.Context, wait: float | None = None) -> Any:
    from alphamill.online.state import open_state_store

    pool, url = ctx.obj["online_pool"], ctx.obj.get("url")
    store = open_state_store(pool, url)
    raw = store.get_rows(CONFIG_KEY).get("current")
    store.close()
    if raw is None:
        raise ConfigError(f"online pool {pool!r} is not initialised; run `alphamill online init CONFIG.yaml"
                          f" --pool {pool}` first", "--pool")
    mgr = build_manager(raw, pool, url)
    if wait is not None:
        mgr.lock_wait = wait
    return mgr


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


def register(group: click.Group) -> None:
    @group.group("online")
    @click.option("--pool", "pool", default=None,
                  help="Online state name inside the pool store (default: -t/--task-pool or 'online').")
    @click.pass_context
    def online(ctx: click.Context, pool: str | None) -> None:
        """Serve rolling models online: retrain, switch, extend predictions, give signals."""
        from alphamill.task.backends.base import validate_pool_name

        ctx.ensure_object(dict)
        ctx.obj["online_pool"] = validate_pool_name(pool or ctx.obj.get("task_pool") or "online")

    @online.command("init")
    @click.argument("config")
    @click.option("--begin", "begin", default=None, help="Date of the first training (default: online.begin_time, else the data's last day).")
    @click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
    @click.pass_context
    def init_cmd(ctx: click.Context, config: str, begin: str | None, as_json: bool) -> None:
        """Store CONFIG as this pool's online config and train the first models."""
        from alphamill.online.state import _dumps

        raw = _read_config(config)
        begin = parse_date(begin, "--begin")
        if begin is not None:
            raw["online"] = {**(raw.get("online") or {}), "begin_time": begin}
        pool, url = ctx.obj["online_pool"], ctx.obj.get("url")
        mgr = build_manager(raw, pool, url)  # validates before anything is stored
        store = mgr.store
        stored = store.get_rows(CONFIG_KEY).get("current")
        if stored is not None and _dumps(stored) != _dumps(raw):
            raise ConfigError(f"online pool {pool!r} was initialised with another config; choose another "
                              "--pool for this one", "CONFIG")
        store.put_rows(CONFIG_KEY, {"current": raw})
        with mgr._routine_lock():
            mgr.first_train()
            added = mgr.prepare_signals()
        status = mgr.status()
        if as_json:
            _echo_json({"pool": pool, "strategies": status, "signal_dates": added})
        else:
            click.echo(f"online pool {pool!r} initialised; {added} signal date(s) stored")
            _print_status(status)

    @online.command("routine")
    @click.option("--date", "date", default=None, help="The day to run for (default: the data's last day).")
    @click.option("--wait", "wait", type=float, default=None,
                  help="Seconds to wait for a routine already running (default: online.lock_wait, 0).")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def routine_cmd(ctx: click.Context, date: str | None, wait: float | None, as_json: bool) -> None:
        """Train what is due, switch models, extend predictions and append the signal."""
        mgr = _stored_manager(ctx, wait)
        summary = mgr.routine(parse_date(date, "--date"))
        if as_json:
            _echo_json(summary)
        else:
            trained = sum(summary["trained"].values())
            click.echo(f"routine {summary['date']}: trained {trained} model(s), switched "
                       f"{', '.join(summary['switched']) or 'none'}, {summary['signal_dates']} new signal date(s)")

    @online.command("simulate")
    @click.option("--end", "end", required=True, help="Last day to replay.")
    @click.option("--begin", "begin", default=None, help="First day (default: online.begin_time).")
    @click.pass_context
    def simulate_cmd(ctx: click.Context, end: str, begin: str | None) -> None:
        """Replay history, retraining only at window boundaries."""
        mgr = _stored_manager(ctx)
        sig = mgr.simulate(parse_date(end, "--end"), parse_date(begin, "--begin"))
        days = sig.index.get_level_values("datetime").unique()
        click.echo(f"simulated {len(days)} signal day(s)" + (f" up to {days.max().date()}" if len(days) else ""))

    @online.command("status")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def status_cmd(ctx: click.Context, as_json: bool) -> None:
        """Strategies, online models, last update and next retrain date."""
        from alphamill.online.manager import SIGNAL_KEY

        mgr = _stored_manager(ctx)
        status = mgr.status()
        mark = mgr.store.get_watermark(SIGNAL_KEY)
        if as_json:
            _echo_json({"pool": ctx.obj["online_pool"], "last_signal": mark, "strategies": status})
            return
        click.echo(f"pool {ctx.obj['online_pool']!r}; last signal date: {mark or 'none'}")
        _print_status(status)

    @online.command("history")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def history_cmd(ctx: click.Context, as_json: bool) -> None:
        """Every switch of online models, oldest first."""
        import time

        mgr = _stored_manager(ctx)
        hist = mgr.store.history()
        if as_json:
            _echo_json(hist)
            return
        for h in hist:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h["at"]))
            click.echo(f"{at} v{h['version']} {h['strategy']} {h['action']} for {h['cur_time']}: "
                       f"windows {h['windows']} online ({', '.join(h['online'])})")

    @online.command("signal")
    @click.option("--date", "date", required=True, help="Signal date (computed after that day's close).")
    @click.option("--topk", "topk", type=int, default=50, show_default=True, help="Size of the target portfolio.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    def signal_cmd(ctx: click.Context, date: str, topk: int, as_json: bool) -> None:
        """The ranked signal of DATE and the top-k target portfolio for the next trading day."""
        if topk < 1:
            raise ConfigError(f"expected a positive integer, got {topk}", "--topk")
        mgr = _stored_manager(ctx)
        out = signal_report(mgr, parse_date(date, "--date"), topk)
        if as_json:
            _echo_json(out)
            return
        click.echo(f"signal of {out['date']} -> target portfolio for {out['trade_date']} "
                   f"(models: {json.dumps(out['models'])})")
        click.echo(f"{'rank':>4}  {'instrument':<12} {'score':>10} {'weight':>8}")
        for row in out["signal"]:
            w = f"{row['weight']:.4f}" if row["weight"] else ""
            click.echo(f"{row['rank']:>4}  {row['instrument']:<12} {row['score']:>10.4f} {w:>8}")


def signal_report(mgr: Any, date: str, topk: int) -> dict[str, Any]:
    """The ranked signal of ``date`` and the equal-weight top-k portfolio for the next day."""
    import pandas as pd

    from alphamill.online.manager import SIGNAL_KEY

    row = mgr.store.get_rows(SIGNAL_KEY, date, date).get(date)
    if row is None:
        mark = mgr.store.get_watermark(SIGNAL_KEY)
        raise ConfigError(f"no signal stored for {date} (last signal date: {mark or 'none'}); run "
                          "`alphamill online routine --date DATE` first", "--date")
    s = pd.Series(row["s"], index=row["i"], dtype="float64").dropna().sort_values(ascending=False, kind="stable")
    k = min(topk, len(s))
    cal = mgr._calendar()
    later = cal[cal > pd.Timestamp(date)]
    trade = f"{later[0].date()}" if len(later) else "the next trading day"
    signal = [{"rank": i + 1, "instrument": inst, "score": float(v), "weight": (1.0 / k if i < k else 0.0)}
              for i, (inst, v) in enumerate(s.items())]
    return {"date": date, "trade_date": trade, "models": row.get("models", {}), "topk": k,
            "portfolio": [{"instrument": r["instrument"], "weight": r["weight"]} for r in signal[:k]],
            "signal": signal}


def _print_status(status: list[dict[str, Any]]) -> None:
    for s in status:
        wins = ", ".join(f"window {o['window']} from {o['test_start']} ({o['run_id']})" for o in s["online"])
        click.echo(f"  {s['strategy']}: v{s['version']}, online {wins or 'none'}; {s['trained']} trained; "
                   f"last switch {s['last_switch']}; next retrain {s['next_retrain']}")
