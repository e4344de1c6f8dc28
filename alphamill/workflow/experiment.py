"""``alphamill run CONFIG.yaml``: config -> tasks -> pool -> workers -> collect -> report.

A run config is Qlib's workflow YAML (a ``task:`` with ``model``, ``dataset`` and ``record``)
plus alphamill's sections::

    experiment: rolling_lgb          # MLflow experiment (default: the file's stem)
    task: {model: ..., dataset: ..., record: [...]}
    generators:                      # applied in the order written (cartesian product)
      rolling: {step: 250, rtype: sliding, trunc_days: 3, embargo: 0, test_end: 2020-12-31}
      grid: {model.kwargs.learning_rate: [0.05, 0.2]}
      multi_horizon: {horizons: [1, 5], label_leak_n: 2}
    pool: {url: null, name: rolling_lgb}   # default: the embedded SQLite pool, name = experiment
    workers: 2                       # local worker processes; 0 = leave tasks to `alphamill worker`
    collect: {ensemble: rolling, duplicate: error, backtest: {topk: 50, n_drop: 5},
              selection: {baseline: null, partitions: 16, ic_by: window, correction: holm}}
    report: reports/rolling_lgb.html

``collect.ensemble``: ``rolling`` (each model/variant's windows merged in time, the later
window winning on overlaps), ``average`` or ``ic_weighted`` (additionally combine the merged
variants into one ``ensemble`` signal: per-day z-score mean, or weights from each variant's
trailing realised IC). ``collect.selection`` (``false`` turns it off) ranks several variants
with the deflated Sharpe ratio, the probability of backtest overfitting over ``partitions``
time blocks and a paired test of each variant's IC per ``window`` or ``month`` against
``baseline`` (default: the variant with the template's own grid values, else the first), with
a ``holm``, ``bh`` or ``none`` correction; every variant of the experiment in the pool counts
as a trial (:mod:`alphamill.workflow.selection`). A Qlib workflow file is accepted as it is: ``qlib_init`` is ignored (with
a note), Qlib module paths (``qlib.contrib.model.gbdt`` ...) are mapped to alphamill's, and
top-level keys that only define YAML anchors (``market: &market ...``) are allowed. Any other
unknown key, and every bad value, is a :class:`~alphamill.errors.ConfigError` naming the field,
raised before anything is written to the pool.
"""

from __future__ import annotations

import copy
import functools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alphamill.errors import ConfigError, PoolError
from alphamill.limits import check_jobs, text_problem
from alphamill.textfile import parse_yaml, read_text

__all__ = [
    "RunConfig",
    "load_config",
    "parse_config",
    "apply_overrides",
    "build_generators",
    "build_tasks",
    "validate_tasks",
    "run_experiment",
    "feature_specs",
    "flagship_config",
    "FLAGSHIP_LGB",
    "SMALL_MARKET",
]

TOP_KEYS = ("experiment", "task", "generators", "pool", "workers", "collect", "report", "qlib_init")
GENERATOR_KEYS = {
    "rolling": ("step", "rtype", "trunc_days", "embargo", "test_end"),
    "grid": None,  # any dotted path
    "multi_horizon": ("horizons", "label_leak_n"),
}
COLLECT_KEYS = ("ensemble", "duplicate", "backtest", "ic_window", "label_delay", "selection")
ENSEMBLES = ("rolling", "average", "ic_weighted")
RTYPES = {"sliding": "sliding", "sd": "sliding", "roll_sd": "sliding",
          "expanding": "expanding", "ex": "expanding", "roll_ex": "expanding"}
#: Qlib module paths and their alphamill equivalents (same class names).
QLIB_MODULES = {
    "qlib.contrib.model.gbdt": "alphamill.model",
    "qlib.contrib.model.xgboost": "alphamill.model",
    "qlib.contrib.model.catboost_model": "alphamill.model",
    "qlib.contrib.model.linear": "alphamill.model",
    "qlib.data.dataset": "alphamill.dataset",
    "qlib.data.dataset.handler": "alphamill.dataset",
    "qlib.contrib.data.handler": "alphamill.dataset",
    "qlib.workflow.record_temp": "alphamill.workflow.record_temp",
}
_NAME_RE = re.compile(r"[^A-Za-z0-9_]+")


@dataclass
class RunConfig:
    """A validated run config (see the module docstring)."""

    experiment: str
    task: dict[str, Any]
    generators: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pool_url: str | None = None
    pool_name: str = "default"
    workers: int = 1
    collect: dict[str, Any] = field(default_factory=dict)
    report: str | None = None
    source: str = "config"
    notes: list[str] = field(default_factory=list)


# -- loading ----------------------------------------------------------------------------------


def _anchor_keys(text: str) -> set[str]:
    """Top-level keys whose value is referenced elsewhere through a YAML alias (Qlib's
    ``market: &market csi300`` ... ``instruments: *market``): the composer gives an aliased
    node back as the same object, so such values are met more than once."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return set()
    if not isinstance(root, yaml.MappingNode):
        return set()
    counts: dict[int, int] = {}

    def walk(node: Any) -> None:
        counts[id(node)] = counts.get(id(node), 0) + 1
        if counts[id(node)] > 1:
            return
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                walk(k)
                walk(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                walk(v)

    walk(root)
    return {k.value for k, v in root.value if counts.get(id(v), 0) > 1}


def _set_path(obj: dict, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    if not dotted or any(not p for p in parts):
        raise ConfigError(f"expected a dotted path such as task.model.kwargs.learning_rate, got {dotted!r}", where)
    node: Any = obj
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if last:
                node[part] = value
                return
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = value
                return
            node = node[int(part)]
        else:
            raise ConfigError(
                f"cannot set {dotted!r}: {'.'.join(parts[:i]) or 'the config'} is a "
                f"{type(node).__name__}, not a mapping", where)


def apply_overrides(raw: dict, overrides: Sequence[str] = ()) -> dict:
    """Apply ``dotted.path=value`` overrides (values parsed as YAML: numbers, lists, dates)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"expected dotted.path=value, got {item!r}", "--set")
        path, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value {text!r}: {e}", f"--set {path}") from None
        _set_path(raw, path.strip(), value, f"--set {path.strip()}")
    return raw


def load_config(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    experiment: str | None = None,
    pool_url: str | None = None,
    pool_name: str | None = None,
    workers: int | None = None,
    test_end: str | None = None,
    report: str | None = None,
) -> RunConfig:
    """Read a YAML run config, apply the command-line overrides, validate it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} does not exist or is not a file", "CONFIG")
    text = read_text(p, "CONFIG")
    try:
        raw = parse_yaml(text, p, "CONFIG")
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {p}: {e}", "CONFIG") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must contain a mapping with a 'task' section", "CONFIG")
    raw = apply_overrides(raw, overrides)
    if test_end is not None:
        gens = raw.get("generators")
        if isinstance(gens, dict) and "rolling" in gens:
            _set_path(raw, "generators.rolling.test_end", test_end, "--test-end")
        else:
            _set_path(raw, "task.dataset.kwargs.segments.test.1", test_end, "--test-end")
    cli = {"experiment": experiment, "workers": workers, "report": report}
    for key, value in cli.items():
        if value is not None:
            raw[key] = value
    if pool_url is not None or pool_name is not None:
        pool = dict(raw.get("pool") or {}) if isinstance(raw.get("pool"), dict) else {}
        if pool_url is not None:
            pool["url"] = pool_url
        if pool_name is not None:
            pool["name"] = pool_name
        raw["pool"] = pool
    return parse_config(raw, source=str(p), default_name=p.stem, anchors=_anchor_keys(text))


def _safe_name(name: str) -> str:
    cleaned = _NAME_RE.sub("_", name).strip("_") or "experiment"
    if not cleaned[0].isalpha():
        cleaned = "x_" + cleaned
    return cleaned[:63]


def _map_qlib_modules(obj: Any, notes: list[str]) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "module_path" and isinstance(v, str) and v in QLIB_MODULES:
                notes.append(f"module_path {v} -> {QLIB_MODULES[v]}")
                v = QLIB_MODULES[v]
            elif k == "class" and isinstance(v, str) and v.startswith("qlib."):
                mod, _, name = v.rpartition(".")
                if mod in QLIB_MODULES:
                    notes.append(f"class {v} -> {QLIB_MODULES[mod]}.{name}")
                    v = f"{QLIB_MODULES[mod]}.{name}"
            out[k] = _map_qlib_modules(v, notes)
        return out
    if isinstance(obj, list):
        return [_map_qlib_modules(v, notes) for v in obj]
    return obj


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"expected an integer >= {minimum}, got {value!r}", where)
    return value


def _check_task(task: Any) -> dict[str, Any]:
    from alphamill.canonical import canonicalize

    if not isinstance(task, dict):
        raise ConfigError(f"expected a mapping with model, dataset and record, got {type(task).__name__}", "task")
    for key in ("model", "dataset"):
        if key not in task:
            raise ConfigError("missing: expected a {class, module_path, kwargs} mapping", f"task.{key}")
        if not isinstance(task[key], dict) or "class" not in task[key]:
            raise ConfigError("expected a mapping with 'class' (and 'module_path', 'kwargs')", f"task.{key}")
    record = task.get("record", [])
    if isinstance(record, dict):
        record = [record]
    if not isinstance(record, list):
        raise ConfigError(f"expected a list of record configs, got {type(record).__name__}", "task.record")
    task = {**task, "record": record}
    # dates parsed by YAML become ISO strings, so tasks are plain JSON everywhere
    return canonicalize(task, "task")


def _check_generators(gens: Any) -> list[tuple[str, dict[str, Any]]]:
    if gens is None:
        return []
    if isinstance(gens, list):
        items = []
        for i, g in enumerate(gens):
            if not isinstance(g, dict) or len(g) != 1:
                raise ConfigError("expected a one-key mapping such as {rolling: {...}}", f"generators[{i}]")
            items.append(next(iter(g.items())))
    elif isinstance(gens, dict):
        items = list(gens.items())
    else:
        raise ConfigError(f"expected a mapping of generators, got {type(gens).__name__}", "generators")
    out = []
    for name, spec in items:
        where = f"generators.{name}"
        if name not in GENERATOR_KEYS:
            raise ConfigError(f"unknown generator; expected one of {', '.join(GENERATOR_KEYS)}", where)
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"expected a mapping of settings, got {spec!r}", where)
        allowed = GENERATOR_KEYS[name]
        if allowed is not None:
            for key in spec:
                if key not in allowed:
                    raise ConfigError(f"unknown setting; expected one of {', '.join(allowed)}", f"{where}.{key}")
        spec = dict(spec)
        if name == "rolling":
            if "step" not in spec:
                raise ConfigError("missing: the window length in trading days", f"{where}.step")
            _int(spec["step"], f"{where}.step", 1)
            rtype = str(spec.get("rtype", "sliding")).lower()
            if rtype not in RTYPES:
                raise ConfigError(f"expected 'sliding' or 'expanding', got {spec.get('rtype')!r}", f"{where}.rtype")
            spec["rtype"] = RTYPES[rtype]
            if spec.get("trunc_days") is not None:
                _int(spec["trunc_days"], f"{where}.trunc_days", 0)
            _int(spec.get("embargo", 0), f"{where}.embargo", 0)
            if spec.get("test_end") is not None:
                from alphamill.canonical import iso_time

                spec["test_end"] = iso_time(spec["test_end"], f"{where}.test_end")
        elif name == "grid":
            for key, values in spec.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"expected a non-empty list of values, got {values!r}", f"{where}.{key}")
        elif name == "multi_horizon":
            hs = spec.get("horizons")
            if not isinstance(hs, list) or not hs:
                raise ConfigError(f"expected a non-empty list of horizons, got {hs!r}", f"{where}.horizons")
            for i, h in enumerate(hs):
                _int(h, f"{where}.horizons[{i}]", 1)
            _int(spec.get("label_leak_n", 2), f"{where}.label_leak_n", 1)
        out.append((name, spec))
    return out


def _check_collect(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", "collect")
    for key in raw:
        if key not in COLLECT_KEYS:
            raise ConfigError(f"unknown setting; expected one of {', '.join(COLLECT_KEYS)}", f"collect.{key}")
    out = {"ensemble": "rolling", "duplicate": "error", "backtest": {}, "ic_window": 20, "label_delay": 2, **raw}
    if out["ensemble"] not in ENSEMBLES:
        raise ConfigError(f"expected one of {', '.join(ENSEMBLES)}, got {out['ensemble']!r}", "collect.ensemble")
    if out["duplicate"] not in ("error", "latest"):
        raise ConfigError(f"expected 'error' or 'latest', got {out['duplicate']!r}", "collect.duplicate")
    if out["backtest"] is False:
        out["backtest"] = None
    elif not isinstance(out["backtest"], dict):
        raise ConfigError(f"expected a mapping of backtest settings or false, got {out['backtest']!r}",
                          "collect.backtest")
    else:
        from alphamill.workflow.port_analysis import check_settings

        out["backtest"] = check_settings(out["backtest"])
    _int(out["ic_window"], "collect.ic_window", 1)
    _int(out["label_delay"], "collect.label_delay", 0)
    from alphamill.workflow.selection import check_settings

    out["selection"] = check_settings(out.get("selection", True))
    return out


def parse_config(raw: Mapping[str, Any], source: str = "config", default_name: str = "experiment",
                 anchors: set[str] | None = None) -> RunConfig:
    """Validate a config mapping (see the module docstring); errors name the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping, got {type(raw).__name__}", "CONFIG")
    raw = dict(raw)
    notes: list[str] = []
    anchors = anchors or set()
    if "task" not in raw:
        raise ConfigError("missing: expected a task with model, dataset and record", "task")
    for key in raw:
        if key not in TOP_KEYS and key not in anchors:
            raise ConfigError(f"unknown section; expected one of {', '.join(TOP_KEYS)}", str(key))
    if "qlib_init" in raw:
        notes.append("qlib_init is ignored: data comes from the handler's `data` setting (default: the demo market)")
    task = _map_qlib_modules(raw["task"], mapped := [])
    if mapped:
        notes.append("Qlib modules mapped to alphamill: " + "; ".join(sorted(set(mapped))))
    task = _check_task(task)
    name = raw.get("experiment") or default_name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected a non-empty string, got {name!r}", "experiment")
    if any(ord(c) < 32 for c in name) or text_problem(name):
        raise ConfigError(f"expected a name without control characters, got {name!r}", "experiment")
    pool = raw.get("pool") or {}
    if not isinstance(pool, dict):
        raise ConfigError(f"expected a mapping with url and name, got {pool!r}", "pool")
    for key in pool:
        if key not in ("url", "name"):
            raise ConfigError("unknown setting; expected url or name", f"pool.{key}")
    pool_name = pool.get("name") or _safe_name(name)
    from alphamill.task.backends.base import validate_pool_name

    try:
        validate_pool_name(pool_name)
    except Exception as e:
        raise ConfigError(str(e).split(": ", 1)[-1], "pool.name") from None
    workers = raw.get("workers", 1)
    check_jobs(workers, "workers", minimum=0)
    report = raw.get("report")
    if report is not None and not isinstance(report, str):
        raise ConfigError(f"expected a file path, got {report!r}", "report")
    return RunConfig(
        experiment=name.strip(),
        task=task,
        generators=_check_generators(raw.get("generators")),
        pool_url=pool.get("url"),
        pool_name=pool_name,
        workers=workers,
        collect=_check_collect(raw.get("collect")),
        report=report,
        source=source,
        notes=notes,
    )


# -- tasks ------------------------------------------------------------------------------------


#: Handlers whose features come from the on-disk cache (computed over the whole history), so a
#: window's handler may load just the window's span without changing any value.
CACHED_HANDLERS = ("Alpha158", "Alpha360")


def window_span_mod(task: dict, rolling_gen: Any) -> None:
    """Qlib's ``handler_mod`` (end extended to the test end, fit window = train segment), and for
    a cached handler (Alpha158) the load span narrowed to the window: ``start_time`` = the
    earliest segment start, ``end_time`` = the test end. Features and labels are computed over
    the whole history in the cache, so every value is the same; each window just loads (and
    holds in memory) its own years instead of the whole market."""
    from alphamill.task.gen import handler_mod

    handler_mod(task, rolling_gen)
    handler = task["dataset"]["kwargs"].get("handler")
    if not isinstance(handler, dict) or str(handler.get("class", "")).rsplit(".", 1)[-1] not in CACHED_HANDLERS:
        return
    segs = task["dataset"]["kwargs"]["segments"]
    starts = [seg[0] for seg in segs.values() if seg and seg[0] is not None]
    test_end = segs[rolling_gen.test_key][1]
    hk = handler["kwargs"]
    if starts:
        hk["start_time"] = min(starts, key=pd_timestamp)
    if test_end is not None:
        hk["end_time"] = test_end


def pd_timestamp(value: Any) -> Any:
    import pandas as pd

    return pd.Timestamp(value)


def build_generators(cfg: RunConfig, calendar: Sequence[Any] | None = None) -> list[Any]:
    """The task generators of the config, in order."""
    from alphamill.task.gen import GridGen, MultiHorizonGen, RollingGen

    out = []
    for name, spec in cfg.generators:
        where = f"generators.{name}"
        try:
            if name == "rolling":
                out.append(RollingGen(step=spec["step"], rtype=spec["rtype"], trunc_days=spec.get("trunc_days"),
                                      embargo=spec.get("embargo", 0), test_end=spec.get("test_end"),
                                      calendar=calendar, ds_extra_mod_func=window_span_mod))
            elif name == "grid":
                out.append(GridGen(spec))
            else:
                out.append(MultiHorizonGen(horizons=spec["horizons"], label_leak_n=spec.get("label_leak_n", 2),
                                           calendar=calendar))
        except ConfigError as e:
            raise ConfigError(str(e), where) from None
    return out


def build_tasks(cfg: RunConfig, calendar: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Every task of the run (the template through each generator). The trading calendar is
    the task's data's (``calendar`` overrides it)."""
    from alphamill.task.gen import task_generator

    gens = build_generators(cfg, calendar)
    if not gens:
        return [copy.deepcopy(cfg.task)]
    return task_generator([cfg.task], gens)


def validate_tasks(tasks: Sequence[dict[str, Any]]) -> None:
    """Check what can be checked cheaply before anything is stored: classes resolve, the model
    accepts its kwargs, record classes exist. Data is not loaded."""
    from alphamill import kinds
    from alphamill.instance import init_instance_by_config, resolve_callable
    from alphamill.model.base import Model

    seen: set[str] = set()
    for task in tasks:
        key = repr((task["model"], task["dataset"].get("class"), task.get("record")))
        if key in seen:
            continue
        seen.add(key)
        init_instance_by_config(task["model"], accept_types=Model, default_module="alphamill.model",
                                path="task.model", kind=kinds.MODEL)
        resolve_callable(task["dataset"], kinds.DATASET, "alphamill.dataset", "task.dataset")
        handler = task["dataset"].get("kwargs", {}).get("handler")
        if isinstance(handler, dict):
            resolve_callable(handler, kinds.HANDLER, "alphamill.dataset", "task.dataset.kwargs.handler")
        for i, rec in enumerate(task.get("record") or []):
            resolve_callable(rec, kinds.RECORD, "alphamill.workflow.record_temp", f"task.record.{i}")


def validate_data(tasks: Sequence[dict[str, Any]]) -> None:
    """Check each task's universe and segments against its data (calendar and listings only,
    no prices): an empty universe or a segment without a single trading day is refused here,
    before anything is stored, instead of failing in every worker."""
    import pandas as pd

    from alphamill.data import open_data

    sources: dict[str, Any] = {}
    for n, task in enumerate(tasks):
        ds_kwargs = task["dataset"].get("kwargs") or {}
        handler = ds_kwargs.get("handler")
        if not isinstance(handler, dict):
            continue
        hk = handler.get("kwargs") or {}
        key = repr((hk.get("data"), hk.get("instruments", "all")))
        if key not in sources:
            source = open_data(hk.get("data"))
            universe = hk.get("instruments", "all")
            if isinstance(universe, (list, tuple)) and not universe:
                raise ConfigError("empty universe: expected 'all', a market, a file or symbols",
                                  "task.dataset.kwargs.handler.kwargs.instruments")
            source.instruments(universe)  # unknown symbols / empty universes are DataErrors
            sources[key] = source.calendar()
        cal = sources[key]
        for name, seg in (ds_kwargs.get("segments") or {}).items():
            if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                continue  # the dataset reports malformed segments with their path
            start = pd.Timestamp(seg[0]) if seg[0] is not None else cal[0]
            end = pd.Timestamp(seg[1]) if seg[1] is not None else cal[-1]
            if not ((cal >= start) & (cal <= end)).any():
                raise ConfigError(
                    f"{seg[0]}..{seg[1]} holds no trading day of the data "
                    f"({cal[0]:%Y-%m-%d}..{cal[-1]:%Y-%m-%d}) in task {n}",
                    f"task.dataset.kwargs.segments.{name}",
                )


def feature_specs(tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct feature-cache entries (data, label, cache_dir, feature set) the tasks'
    Alpha158 / Alpha360 handlers read."""
    from alphamill.features.sets import HANDLER_SETS

    specs: dict[str, dict[str, Any]] = {}
    for task in tasks:
        handler = task["dataset"].get("kwargs", {}).get("handler")
        name = str(handler.get("class", "")).rsplit(".", 1)[-1] if isinstance(handler, dict) else ""
        if name not in CACHED_HANDLERS:
            continue
        hk = handler.get("kwargs") or {}
        spec = {"data": hk.get("data"), "label": hk.get("label"), "cache_dir": hk.get("cache_dir"),
                "features": HANDLER_SETS[name]}
        specs.setdefault(repr(sorted(spec.items())), spec)
    return list(specs.values())


# -- the run ----------------------------------------------------------------------------------


def _generates_demo_market(task: Mapping[str, Any]) -> bool:
    """Whether reading ``task``'s data would first generate the demo market (a fresh home)."""
    from alphamill.config import get_setting
    from alphamill.data import default_demo_path

    handler = (task.get("dataset") or {}).get("kwargs", {}).get("handler")
    data = (handler.get("kwargs") or {}).get("data") if isinstance(handler, dict) else None
    if data is not None and not (isinstance(data, str) and not data.strip()):
        return False
    path = Path(str(get_setting("data"))).expanduser()
    return path.absolute() == default_demo_path().absolute() and not (path / "meta.json").is_file()


def check_before_writing(cfg: RunConfig) -> None:
    """Refuse a bad config before anything is written: the demo market (generated on first
    use), the pool and the experiment store.

    The pool URL and the tracking URI are checked without connecting. When the demo market
    is still to be generated, the classes, model settings and records of every grid variant
    of the task are checked first too (the rolling and horizon generators change only dates
    and labels); otherwise that check runs, as before, while the features compute and before
    the pool is touched. What needs the data (segments, universes) is checked once it is read.
    """
    from alphamill.config import get_setting
    from alphamill.task.backends import check_url
    from alphamill.task.forkserver import call_preloaded
    from alphamill.task.gen import GridGen, task_generator
    from alphamill.workflow.recorder import resolve_store

    try:
        check_url(str(get_setting("pool_url", cfg.pool_url)))
    except PoolError as e:
        raise ConfigError(str(e), "pool.url") from None
    resolve_store()
    if _generates_demo_market(cfg.task):
        grids = [GridGen(spec) for name, spec in cfg.generators if name == "grid"]
        preview = task_generator([cfg.task], grids) if grids else [copy.deepcopy(cfg.task)]
        call_preloaded(validate_tasks, preview)


def run_experiment(
    cfg: RunConfig,
    *,
    echo: Callable[[str], None] | None = None,
    progress: bool = True,
    fresh: bool = False,
    timings: dict[str, float] | None = None,
) -> Any:
    """Create, train, collect and return the :class:`~alphamill.workflow.results.ExperimentResults`.

    ``fresh`` removes this experiment's tasks from the pool first, so every task is trained
    again (new recorders). ``timings`` (if given) receives the seconds of each phase.
    """
    from alphamill.config import redact_url
    from alphamill.trainer import TrainerRM

    say = echo or (lambda s: None)
    timings = timings if timings is not None else {}
    for note in cfg.notes:
        say(f"note: {note}")
    t0 = time.perf_counter()
    from alphamill.data import handler_data
    from alphamill.task.forkserver import (
        PreloadedCall,
        call_preloaded,
        server_started,
        start_worker_server,
    )

    if cfg.workers > 1:
        # the workers' fork server imports what they need meanwhile; the checks of LightGBM's
        # parameters and the collection run in its children, so this process imports
        # neither LightGBM nor MLflow
        start_worker_server()
    check_before_writing(cfg)
    tasks = build_tasks(cfg)
    validate_data(tasks)
    # Alpha158 is computed in the background from here on: the rest of the checks, storing
    # the tasks and starting the workers overlap it (they wait for it on the cache's lock)
    from alphamill.features.warm import CacheFiller

    selection = selection_settings(cfg, tasks)
    filler = CacheFiller(feature_specs(tasks)).start()
    try:
        call_preloaded(validate_tasks, tasks)
        timings["generate_seconds"] = time.perf_counter() - t0
        say(f"generated {len(tasks)} tasks from {cfg.source} "
            f"({', '.join(n for n, _ in cfg.generators) or 'no generators'})")
        trainer = TrainerRM(cfg.experiment, cfg.pool_name, n_jobs=cfg.workers, url=cfg.pool_url,
                            skip_run_task=cfg.workers == 0, progress=progress)
        tasks = trainer.prepare_tasks(tasks)
        with trainer._manager() as tm:
            say(f"pool {cfg.pool_name} in {redact_url(tm.url)}")
            if fresh:
                n = tm.remove({"meta.experiment_name": cfg.experiment})
                if n:
                    say(f"removed {n} earlier tasks of experiment {cfg.experiment} (--fresh)")
            if tm.task_stat({"meta.experiment_name": cfg.experiment}).get("done") == len(tasks):
                filler.cancel()  # a rerun with every task done needs no features
    except BaseException:
        filler.cancel()
        raise
    if filler.running:
        sets = ", ".join(sorted({str(spec["features"]).capitalize() for spec in filler.specs}))
        say(f"features: {sets} computed once into the cache (reused by every window and rerun) ...")

    def prepare() -> None:
        if cfg.workers <= 1:
            # training here: open the experiment store (its schema, on first use) while the
            # features compute; with worker processes the first worker does that
            from alphamill.workflow.recorder import R

            R.get_exp(experiment_name=cfg.experiment, create=True)
        timings["features_seconds"] = filler.wait()
        if timings["features_seconds"]:
            say(f"features ready in {timings['features_seconds']:.1f} s")

    trainer.prepare_func = prepare  # runs once the worker processes are started
    t0 = time.perf_counter()
    if cfg.workers:
        say(f"training with {cfg.workers} worker process{'es' if cfg.workers > 1 else ''}")
    else:
        say(f"waiting for external workers: alphamill worker -t {cfg.pool_name}"
            + (f" --url {redact_url(cfg.pool_url)}" if cfg.pool_url else ""))
    collector: list[PreloadedCall] = []

    def start_collector() -> None:
        # the last tasks run: the process that will collect them opens the experiment store
        # and reads the market meanwhile
        collector.append(PreloadedCall(collect_results, warm_collection, handler_data(tasks[0])))

    try:
        try:
            refs = trainer.train_refs(tasks, on_all_claimed=start_collector if server_started() else None)
        finally:
            filler.cancel()  # only still running when no task needed it here (external workers)
        timings["train_seconds"] = time.perf_counter() - t0
        with trainer._manager() as tm:
            trials = experiment_trials(tm, cfg.experiment) if selection is not None else None
        st = trainer.last_stats
        say(f"tasks: {st.get('tasks')} given, {st.get('new')} new in the pool, {st.get('trained')} trained now")
        say(f"collecting {len(refs)} runs: merging windows ({cfg.collect['ensemble']}), IC tables"
            + (", backtest of the merged signal" if cfg.collect["backtest"] is not None else "") + " ...")
        t0 = time.perf_counter()
        collect = collector[0] if collector else functools.partial(call_preloaded, collect_results)
        results = collect(cfg.experiment, refs, {**cfg.collect, "selection": selection}, trials)
    finally:
        for call in collector:
            call.cancel()
    timings["collect_seconds"] = time.perf_counter() - t0
    trainer.join_workers()  # they exit on their own once drained; collection did not wait for them
    return results


def warm_collection(data: Any) -> None:
    """Open the experiment store and read the market (the merged backtest's prices) once."""
    from alphamill.data import open_data
    from alphamill.workflow.recorder import open_client

    open_client()
    open_data(data).calendar()


def selection_settings(cfg: RunConfig, tasks: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``collect.selection`` with its baseline resolved and checked against the generated
    variants (before anything is trained): the configured one, else the variant with the
    template's own grid values, else the first."""
    from alphamill.workflow.selection import task_variant, template_variant

    settings = cfg.collect.get("selection")
    if settings is None:
        return None
    names = list(dict.fromkeys(task_variant(t) for t in tasks))
    baseline = settings.get("baseline")
    signals = names + (["ensemble"] if cfg.collect["ensemble"] != "rolling" and len(names) > 1 else [])
    if baseline is not None and baseline not in signals:
        raise ConfigError(f"{baseline!r} is not one of the variants: {', '.join(signals)}",
                          "collect.selection.baseline")
    if baseline is None:
        grid = dict(cfg.generators).get("grid")
        baseline = template_variant(cfg.task, grid, tasks) or names[0]
    return {**settings, "baseline": baseline}


def experiment_trials(tm: Any, experiment: str) -> dict[str, dict[str, int]]:
    """``{variant: {status: count}}`` of every pool row of ``experiment`` (what was tried)."""
    from alphamill.workflow.selection import trials_from_tasks

    return trials_from_tasks(tm.query({"meta.experiment_name": experiment}))


def collect_results(experiment: str, recorders: Sequence[Any], collect: Mapping[str, Any],
                    trials: Mapping[str, Mapping[str, int]] | None = None) -> Any:
    """The computed :class:`~alphamill.workflow.results.ExperimentResults` of ``recorders``
    (recorders or their references), collected as the config's ``collect:`` section says;
    ``trials`` are the pool's variants of the experiment (see :func:`experiment_trials`)."""
    from alphamill.workflow.recorder import Recorder
    from alphamill.workflow.results import ExperimentResults

    recs = [Recorder.from_ref(r) if isinstance(r, Mapping) else r for r in recorders]
    results = ExperimentResults.from_recorders(
        experiment, recs, ensemble=collect["ensemble"], duplicate=collect["duplicate"],
        backtest=collect["backtest"], ic_window=collect["ic_window"], label_delay=collect["label_delay"],
        selection=collect.get("selection"), trials=trials,
    )
    return results.compute()


# -- the flagship experiment ------------------------------------------------------------------

#: LightGBM hyper-parameters of Qlib's Alpha158 benchmark.
FLAGSHIP_LGB = {
    "loss": "mse",
    "colsample_bytree": 0.8879,
    "learning_rate": 0.2,
    "subsample": 0.8789,
    "lambda_l1": 205.6999,
    "lambda_l2": 580.9768,
    "max_depth": 8,
    "num_leaves": 210,
    "num_boost_round": 1000,
    "early_stopping_rounds": 50,
}
#: The small variant (tests, ``alphamill demo --small``): its own demo market and settings.
SMALL_MARKET = {"n": 30, "start": "2010-01-01", "end": "2012-12-31", "seed": 0}


def flagship_config(small: bool = False, data: str | None = None) -> dict[str, Any]:
    """The flagship run config (``examples/rolling.yaml``): LightGBM on Alpha158, rolled
    yearly (250 trading days, sliding windows) over 2016-2020 on the demo market, trained by
    2 worker processes. ``small=True`` is a seconds-long variant on a 30-instrument market
    (2010-2012, test 2012 in windows of 100 days) for tests; ``data`` is its market folder."""
    if small:
        model = {**FLAGSHIP_LGB, "num_leaves": 15, "max_depth": 4, "num_boost_round": 30,
                 "early_stopping_rounds": 10, "learning_rate": 0.1, "lambda_l1": 1.0, "lambda_l2": 1.0}
        span = ("2010-01-01", "2012-12-31")
        segments = {"train": ["2010-01-01", "2011-06-30"], "valid": ["2011-07-01", "2011-12-31"],
                    "test": ["2012-01-01", "2012-12-31"]}
        rolling = {"step": 100, "rtype": "sliding", "trunc_days": 3}
        name, topk, n_drop = "rolling_lgb_alpha158_small", 10, 2
    else:
        model = dict(FLAGSHIP_LGB)
        span = ("2010-01-01", "2020-12-31")
        segments = {"train": ["2010-01-01", "2014-12-31"], "valid": ["2015-01-01", "2015-12-31"],
                    "test": ["2016-01-01", "2020-12-31"]}
        rolling = {"step": 250, "rtype": "sliding", "trunc_days": 3, "test_end": "2020-12-31"}
        name, topk, n_drop = "rolling_lgb_alpha158", 50, 5
    handler_kwargs: dict[str, Any] = {
        "instruments": "all",
        "start_time": span[0],
        "end_time": span[1],
        "fit_start_time": segments["train"][0],
        "fit_end_time": segments["train"][1],
    }
    if data is not None:
        handler_kwargs["data"] = data
    record_module = "alphamill.workflow.record_temp"
    return {
        "experiment": name,
        "task": {
            "model": {"class": "LGBModel", "module_path": "alphamill.model", "kwargs": model},
            "dataset": {
                "class": "DatasetH",
                "module_path": "alphamill.dataset",
                "kwargs": {
                    "handler": {"class": "Alpha158", "module_path": "alphamill.dataset", "kwargs": handler_kwargs},
                    "segments": segments,
                },
            },
            "record": [
                {"class": "SignalRecord", "module_path": record_module,
                 "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>"}},
                {"class": "SigAnaRecord", "module_path": record_module, "kwargs": {"ana_long_short": False}},
                {"class": "PortAnaRecord", "module_path": record_module,
                 "kwargs": {"config": {"strategy": {"class": "TopkDropoutStrategy", "kwargs": {
                     "signal": "<PRED>", "topk": topk, "n_drop": n_drop}}}}},
            ],
        },
        "generators": {"rolling": rolling},
        "workers": 2,
        "collect": {"ensemble": "rolling", "backtest": {"topk": topk, "n_drop": n_drop}},
    }
