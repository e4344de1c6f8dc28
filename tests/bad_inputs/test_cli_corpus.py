"""The bad-input corpus: every user mistake gets one clear message, never a traceback.

Each case runs one ``alphamill`` command (in-process through click's CliRunner, the same code
path as the console script) and asserts:

* a non-zero exit code, and an output naming the field, option, file or URL at fault;
* no traceback and no unhandled exception;
* no change to the pool (a seeded pool's ``task_stat`` and the store's pool list are the
  same before and after) and no change to the experiment store (the tracking folder).

``{url}``, ``{pool}``, ``{tmp}`` and ``{data}`` in a case's arguments and files are replaced
by the seeded SQLite store, its pool, the test's folder and a small demo data folder.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.task.manage import TaskManager
from tests.pool.conftest import PG_URL, postgres_available

SEEDED = [{"n": 1}, {"n": 2}, {"n": 3, "name": "données"}]
HAS_RUN = "run" in main.commands


@dataclass
class Case:
    id: str
    args: list[str]
    expect: tuple[str, ...]  # substrings of the output (case-insensitive)
    files: dict[str, str | bytes] = field(default_factory=dict)
    needs: str | None = None  # "pg": a reachable PostgreSQL server; "run": `alphamill run`
    env: dict[str, str] = field(default_factory=dict)  # environment of the command
    absent: tuple[str, ...] = ()  # must NOT appear in the output (secrets)


def _big_task() -> str:
    return json.dumps([{"n": 1, "blob": "x" * (1 << 20)}])


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _nested_task(levels: int) -> str:
    return json.dumps([{"n": 1, "deep": json.loads(_deep(levels))}])


def _half_good_batch() -> str:
    # 5001 good tasks (more than one insert batch) and a bad one at the end: all or nothing
    return json.dumps([{"n": 100 + i} for i in range(5001)] + [{"n": "bad", "x": float("nan")}])


P = ["-t", "{pool}", "--url", "{url}"]
HUGE = str(2**70)
SECRET = "S3cr3tPW"

CASES: list[Case] = [
    # -- create: files -------------------------------------------------------------------------
    Case("create-malformed-yaml", [*P, "create", "{tmp}/bad.yaml"], ("bad.yaml", "malformed yaml", "line 3"),
         {"bad.yaml": "tasks:\n  - model: {class: X\n"}),
    Case("create-yaml-tab-indent", [*P, "create", "{tmp}/tab.yaml"], ("tab.yaml", "malformed yaml"),
         {"tab.yaml": "- n: 1\n\t- n: 2\n"}),
    Case("create-malformed-json", [*P, "create", "{tmp}/bad.json"], ("bad.json", "malformed json", "column"),
         {"bad.json": '[{"a": 1,}]'}),
    Case("create-empty-file", [*P, "create", "{tmp}/empty.yaml"], ("empty.yaml", "empty file"),
         {"empty.yaml": ""}),
    Case("create-scalar-file", [*P, "create", "{tmp}/scalar.yaml"], ("scalar.yaml", "expected a list"),
         {"scalar.yaml": "42\n"}),
    Case("create-tasks-not-list", [*P, "create", "{tmp}/t.yaml"], ("t.yaml", "expected a list"),
         {"t.yaml": "tasks: 5\n"}),
    Case("create-task-not-mapping", [*P, "create", "{tmp}/ints.yaml"], ("ints.yaml", "task [0]", "mapping"),
         {"ints.yaml": "- 1\n- 2\n"}),
    Case("create-missing-file", [*P, "create", "{tmp}/nofile.yaml"], ("nofile.yaml", "does not exist")),
    Case("create-unicode-missing-file", [*P, "create", "{tmp}/données_тест.yaml"],
         ("données_тест.yaml", "does not exist")),
    Case("create-nan-value", [*P, "create", "{tmp}/nan.yaml"], ("task_def_l[1].n", "nan"),
         {"nan.yaml": "- {n: 1}\n- {n: .nan}\n"}),
    Case("create-set-value", [*P, "create", "{tmp}/set.yaml"], ("task_def_l[0].n", "set"),
         {"set.yaml": "- {n: !!set {a, b}}\n"}),
    Case("create-reserved-key", [*P, "create", "{tmp}/res.yaml"], ("task_def_l[1]", "__pickle__", "reserved"),
         {"res.yaml": "- {n: 1}\n- {__pickle__: x}\n"}),
    Case("create-meta-not-dict", [*P, "create", "{tmp}/meta.yaml"], ("task_def_l[0].meta", "dict"),
         {"meta.yaml": "- {n: 1, meta: 5}\n"}),
    Case("create-task-too-large", [*P, "create", "{tmp}/big.json"], ("task_def_l[0]", "mib", "limit"),
         {"big.json": _big_task()}),
    Case("create-interrupted-batch", [*P, "create", "{tmp}/half.json"], ("task_def_l[5001].x", "nan"),
         {"half.json": _half_good_batch()}),
    Case("create-priority-not-int", [*P, "create", "{tmp}/ok.yaml", "--priority", "high"], ("--priority",),
         {"ok.yaml": "- {n: 9}\n"}),
    # -- create: encodings, unstorable values, nesting, integers --------------------------------
    Case("create-not-utf8", [*P, "create", "{tmp}/latin1.yaml"], ("latin1.yaml", "not utf-8", "line 2"),
         {"latin1.yaml": "- {n: 1}\n- {name: 'caf\xe9'}\n".encode("latin-1")}),
    Case("create-utf16-bom", [*P, "create", "{tmp}/u16.yaml"], ("u16.yaml", "utf-16", "utf-8"),
         {"u16.yaml": "- {n: 1}\n".encode("utf-16")}),
    Case("create-utf16-no-bom", [*P, "create", "{tmp}/u16le.json"], ("u16le.json", "nul bytes", "utf-8"),
         {"u16le.json": '[{"n": 1}]'.encode("utf-16-le")}),
    Case("create-lone-surrogate", [*P, "create", "{tmp}/sur.json"], ("task_def_l[1].name", "surrogate"),
         {"sur.json": '[{"n": 1}, {"name": "x\\ud800"}]'}),
    Case("create-nul-character", [*P, "create", "{tmp}/nul.json"], ("task_def_l[0].s", "u+0000"),
         {"nul.json": '[{"s": "a\\u0000b"}]'}),
    Case("create-nested-100000-json", [*P, "create", "{tmp}/deep.json"], ("deep.json", "nested too deeply"),
         {"deep.json": _deep(100_000)}),
    Case("create-nested-100000-yaml", [*P, "create", "{tmp}/deep.yaml"], ("deep.yaml", "nested too deeply"),
         {"deep.yaml": _deep(100_000)}),
    Case("create-nested-task", [*P, "create", "{tmp}/deep70.json"], ("task_def_l[0].deep", "deeper than 64"),
         {"deep70.json": _nested_task(70)}),
    Case("create-integer-beyond-64-bits", [*P, "create", "{tmp}/big.json"], ("task_def_l[0].n", "64 bits"),
         {"big.json": f'[{{"n": {10**25}}}]'}),
    Case("create-priority-beyond-64-bits", [*P, "create", "{tmp}/ok.yaml", "--priority", HUGE],
         ("--priority", HUGE), {"ok.yaml": "- {n: 9}\n"}),
    Case("create-priority-beyond-32-bits", [*P, "create", "{tmp}/ok.yaml", "--priority", str(2**31)],
         ("--priority", "2147483647"), {"ok.yaml": "- {n: 9}\n"}),
    # -- query / remove ------------------------------------------------------------------------
    Case("query-integer-beyond-64-bits", [*P, "query", f'{{"priority": {10**25}}}'], ("priority", "64 bits")),
    Case("query-def-integer-beyond-64-bits", [*P, "query", f'{{"def.n": {{"$gt": -{2**64}}}}}'],
         ("def.n", "64 bits")),
    Case("query-lone-surrogate", [*P, "query", '{"def.name": "\\udc00"}'], ("def.name", "surrogate")),
    Case("query-nul-character", [*P, "task_stat", "--query", '{"hash": "a\\u0000"}'], ("hash", "u+0000")),
    Case("query-infinite-number", [*P, "query", '{"def.n": {"$lt": 1e999}}'], ("def.n", "infinit")),
    Case("query-nested-100000", [*P, "query", '{"def.n": ' + _deep(100_000) + "}"], ("query", "nested too deeply")),
    Case("prioritize-beyond-64-bits", [*P, "prioritize", "1", HUGE], ("priority", HUGE)),
    Case("query-where-operator", [*P, "query", '{"$where": "sleep(1)"}'], ("$where", "unsupported operator")),
    Case("query-top-level-or", [*P, "query", '{"$or": [{"status": "done"}]}'], ("$or", "unsupported")),
    Case("query-unknown-field", [*P, "query", '{"foo": 1}'], ("'foo'", "unknown field")),
    Case("query-regex-operator", [*P, "query", '{"status": {"$regex": "a"}}'], ("'status'", "$regex")),
    Case("query-gt-list", [*P, "query", '{"def.n": {"$gt": [1]}}'], ("def.n", "$gt")),
    Case("query-in-not-list", [*P, "query", '{"status": {"$in": "done"}}'], ("status", "$in")),
    Case("query-unknown-status", [*P, "query", '{"status": "finished"}'], ("status", "finished")),
    Case("query-injected-path", [*P, "query", '{"def.a\'; DROP TABLE tasks; --": 1}'], ("def.a'; drop table",)),
    Case("query-malformed-json", [*P, "query", '{"status": '], ("query", "malformed json")),
    Case("query-not-an-object", [*P, "query", "[1]"], ("query", "expected a json object")),
    Case("remove-empty-query", [*P, "remove"], ("refusing", "--all")),
    Case("remove-bad-operator", [*P, "remove", '{"priority": {"$mod": [2, 0]}}'], ("priority", "$mod")),
    Case("prioritize-unknown-id", [*P, "prioritize", "999999", "3"], ("999999", "no task")),
    Case("prioritize-not-int", [*P, "prioritize", "1", "high"], ("priority",)),
    # -- pool names ----------------------------------------------------------------------------
    Case("pool-path-traversal", ["-t", "../../etc/passwd", "--url", "{url}", "task_stat"],
         ("../../etc/passwd", "invalid pool name")),
    Case("pool-sql-meta", ["-t", "p; DROP TABLE tasks; --", "--url", "{url}", "task_stat"],
         ("p; drop table tasks; --", "invalid pool name")),
    Case("pool-quote", ["-t", "p'or'1'='1", "--url", "{url}", "create", "{tmp}/ok.yaml"],
         ("invalid pool name",), {"ok.yaml": "- {n: 9}\n"}),
    Case("pool-unicode", ["-t", "pööl", "--url", "{url}", "task_stat"], ("pööl", "invalid pool name")),
    Case("pool-too-long", ["-t", "p" * 100, "--url", "{url}", "task_stat"], ("invalid pool name", "62")),
    Case("pool-leading-digit", ["-t", "1pool", "--url", "{url}", "query"], ("'1pool'", "invalid pool name")),
    Case("pool-missing", ["--url", "{url}", "task_stat"], ("-t",)),
    Case("pool-trailing-newline", ["-t", "{pool}\n", "--url", "{url}", "create", "{tmp}/ok.yaml"],
         ("invalid pool name", "\\n"), {"ok.yaml": "- {n: 9}\n"}),
    Case("pool-trailing-newline-query", ["-t", "{pool}\n", "--url", "{url}", "query"], ("invalid pool name",)),
    # -- store URLs ----------------------------------------------------------------------------
    Case("url-unsupported-scheme", ["-t", "{pool}", "--url", "mysql://u@h/db", "task_stat"],
         ("mysql://u@h/db", "unsupported scheme")),
    Case("url-sqlite-folder-impossible", ["-t", "{pool}", "--url", "sqlite:////proc/no/pool.db", "task_stat"],
         ("/proc/no", "cannot create")),
    Case("url-pg-unreachable", ["-t", "{pool}", "--url", "postgresql://postgres@127.0.0.1:1/test", "task_stat"],
         ("127.0.0.1:1", "unavailable")),
    Case("url-pg-unknown-role", ["-t", "{pool}", "--url", "postgresql://no_such_role@{pghost}/test", "task_stat"],
         ("no_such_role", "does not exist"), needs="pg"),
    Case("url-pg-unknown-database", ["-t", "{pool}", "--url", "postgresql://postgres@{pghost}/no_such_db",
                                     "task_stat"], ("no_such_db", "does not exist"), needs="pg"),
    Case("url-mongo-no-database", ["-t", "{pool}", "--url", "mongodb://127.0.0.1:1", "task_stat"],
         ("mongodb://127.0.0.1:1", "no database name")),
    Case("url-mongo-bad-database", ["-t", "{pool}", "--url", "mongodb://127.0.0.1:1/a$b", "task_stat"],
         ("a$b", "invalid database name")),
    Case("url-mongo-unreachable", ["-t", "{pool}", "--url", "mongodb://127.0.0.1:1/db", "task_stat"],
         ("mongodb://127.0.0.1:1/db", "unavailable")),
    Case("url-sqlite-not-a-database", ["-t", "{pool}", "--url", "sqlite:///{tmp}/text.db", "task_stat"],
         ("text.db", "not an sqlite database"), {"text.db": "just some text, not a database\n"}),
    Case("url-sqlite-busy-timeout-nan", ["-t", "{pool}", "--url", "{url}?busy_timeout=nan", "task_stat"],
         ("busy_timeout", "nan")),
    Case("url-sqlite-busy-timeout-inf", ["-t", "{pool}", "--url", "{url}?busy_timeout=inf", "task_stat"],
         ("busy_timeout", "inf")),
    Case("url-sqlite-busy-limit-negative", ["-t", "{pool}", "--url", "{url}?busy_limit=-1", "task_stat"],
         ("busy_limit", "-1")),
    Case("url-pg-space-in-password", ["-t", "{pool}", "--url", f"postgresql://u:{SECRET} x9@127.0.0.1:1/test",
                                      "task_stat"], ("u:***@127.0.0.1:1/test", "percent-encode"),
         absent=(SECRET, "x9")),
    Case("url-pg-at-in-password", ["-t", "{pool}", "--url", f"postgresql://u:pa@{SECRET}@127.0.0.1:1/test",
                                   "task_stat"], ("u:***@127.0.0.1:1/test", "percent-encode"), absent=(SECRET,)),
    Case("url-pg-bad-escape-in-password", ["-t", "{pool}", "--url", f"postgresql://u:{SECRET}%ZZ@127.0.0.1:1/t",
                                           "task_stat"], ("percent-encode",), absent=(SECRET,)),
    Case("url-mongo-at-in-password", ["-t", "{pool}", "--url", f"mongodb://u:pa@{SECRET}@127.0.0.1:1/db",
                                      "task_stat"], ("u:***@127.0.0.1:1/db", "percent-encode"), absent=(SECRET,)),
    Case("url-mongo-space-in-password", ["-t", "{pool}", "--url", f"mongodb://u:{SECRET} x9@127.0.0.1:1/db",
                                         "task_stat"], ("percent-encode",), absent=(SECRET, "x9")),
    # -- settings files --------------------------------------------------------------------------
    Case("config-env-names-a-folder", ["-t", "{pool}", "task_stat"], ("alphamill_config", "cfgdir", "folder"),
         {"cfgdir/readme.txt": "a folder\n"}, env={"ALPHAMILL_CONFIG": "{tmp}/cfgdir"}),
    Case("config-not-utf8", ["-t", "{pool}", "task_stat"], ("alphamill.yaml", "not utf-8"),
         {"alphamill.yaml": b"pool_url: 'sqlite:///caf\xe9.db'\n"}),
    Case("config-utf16", ["-t", "{pool}", "task_stat"], ("other.yaml", "utf-16"),
         {"other.yaml": "pool_url: 'sqlite:///x.db'\n".encode("utf-16")}, env={"ALPHAMILL_CONFIG": "{tmp}/other.yaml"}),
    Case("online-init-not-utf8", ["online", "init", "{tmp}/on.yaml"], ("on.yaml", "not utf-8"),
         {"on.yaml": b"experiment: caf\xe9\n"}),
    Case("config-nested-100000", ["-t", "{pool}", "task_stat"], ("alphamill.yaml", "nested too deeply"),
         {"alphamill.yaml": "a: " + _deep(100_000) + "\n"}),
    # -- worker --------------------------------------------------------------------------------
    Case("worker-unknown-module", [*P, "worker", "--func", "no_such_mod:f"], ("func", "no_such_mod")),
    Case("worker-func-without-colon", [*P, "worker", "--func", "os"], ("func", "module:function")),
    Case("worker-func-missing-attr", [*P, "worker", "--func", "alphamill.trainer:no_such_fn"],
         ("func", "no_such_fn")),
    Case("worker-heartbeat-not-below-lease", [*P, "worker", "--lease", "1", "--heartbeat", "2",
                                              "--func", "alphamill.task.demo_funcs:noop"], ("heartbeat_interval", "lease")),
    Case("worker-lease-negative", [*P, "worker", "--lease", "-1"], ("--lease",)),
    Case("worker-jobs-zero", [*P, "worker", "--jobs", "0"], ("--jobs",)),
    Case("worker-jobs-100000", [*P, "worker", "--jobs", "100000", "--until-empty"], ("--jobs", "100000", "limit")),
    Case("worker-grace-nan", [*P, "worker", "--grace", "nan", "--until-empty"], ("--grace", "finite")),
    Case("worker-grace-inf", [*P, "worker", "--grace", "inf", "--until-empty"], ("--grace", "finite")),
    Case("worker-lease-nan", [*P, "worker", "--lease", "nan"], ("--lease", "finite")),
    Case("worker-heartbeat-inf", [*P, "worker", "--heartbeat", "inf"], ("--heartbeat", "finite")),
    Case("worker-retry-backoff-nan", [*P, "worker", "--retry-backoff", "nan"], ("--retry-backoff", "finite")),
    Case("wait-poll-nan", [*P, "wait", "--poll", "nan"], ("--poll", "finite")),
    Case("wait-poll-beyond-any-sleep", [*P, "wait", "--poll", "1e300"], ("--poll", "at most")),
    Case("worker-prefetch-beyond-64-bits", [*P, "worker", "--prefetch", HUGE, "--until-empty"],
         ("--prefetch", "10000")),
    Case("wait-timeout-nan", [*P, "wait", "--timeout", "nan"], ("--timeout", "finite")),
    Case("wait-timeout-inf", [*P, "wait", "--timeout", "inf"], ("--timeout", "finite")),
    Case("worker-query-malformed", [*P, "worker", "--query", "{nope", "--func", "alphamill.task.demo_funcs:noop"],
         ("--query", "malformed json")),
    Case("worker-query-unknown-field", [*P, "worker", "--query", '{"owner": 1}', "--func", "alphamill.task.demo_funcs:noop"],
         ("'owner'", "unknown field")),
    # -- data ----------------------------------------------------------------------------------
    Case("data-missing-folder", ["data", "info", "{tmp}/no_data"], ("no_data", "does not exist")),
    Case("data-empty-folder", ["data", "info", "{tmp}/empty_data"], ("empty_data", "no instrument files"),
         {"empty_data/README": "nothing here\n"}),
    Case("data-truncated-csv", ["data", "info", "{tmp}/trunc"], ("a.csv", "line")),
    Case("data-corrupt-parquet", ["data", "info", "{tmp}/corrupt"], ("a.parquet", "parquet"),
         {"corrupt/A.parquet": b"PAR1 this is not parquet"}),
    Case("data-mixed-columns", ["data", "info", "{tmp}/mixed"], ("b.csv", "missing column")),
    Case("data-non-numeric", ["data", "info", "{tmp}/nonnum"], ("a.csv", "close")),
    # -- features --------------------------------------------------------------------------------
    Case("features-missing-data", ["features", "--data", "{tmp}/no_data", "--out", "{tmp}/f.parquet"],
         ("no_data", "does not exist")),
    Case("features-unknown-universe", ["features", "--data", "{data}", "--universe", "NOPE",
                                       "--out", "{tmp}/f.parquet"], ("'nope'", "universe")),
    Case("features-unknown-symbol", ["features", "--data", "{data}", "--universe", "S0001,XXX",
                                     "--out", "{tmp}/f.parquet"], ("instruments", "xxx")),
    Case("features-start-after-end", ["features", "--data", "{data}", "--start", "2012-05-01", "--end",
                                      "2011-01-01", "--out", "{tmp}/f.parquet"], ("--start", "after")),
    Case("features-bad-date", ["features", "--data", "{data}", "--start", "notadate",
                               "--out", "{tmp}/f.parquet"], ("--start", "notadate")),
    Case("features-horizon-zero", ["features", "--data", "{data}", "--horizon", "0",
                                   "--out", "{tmp}/f.parquet"], ("horizon", "0")),
    Case("features-truncated-data", ["features", "--data", "{tmp}/trunc", "--out", "{tmp}/f.parquet"],
         ("a.csv", "line")),
    Case("features-dates-outside-data", ["features", "--data", "{data}", "--start", "2030-01-01",
                                         "--out", "{tmp}/f.parquet"], ("--start", "data covers")),
    Case("features-out-folder-missing", ["features", "--data", "{data}", "--out", "{tmp}/nowhere/f.parquet"],
         ("--out", "nowhere")),
]


# -- `alphamill run CONFIG.yaml` (only when the command exists) ----------------------------------


def _run_case(cid: str, change, expect: tuple[str, ...]) -> Case:
    return Case(f"run-{cid}", ["run", f"{{tmp}}/{cid}.yaml"], expect, {f"{cid}.yaml": change}, needs="run")


def _seg(c):
    return c["task"]["dataset"]["kwargs"]


RUN_CASES = [
    Case("run-malformed-yaml", ["run", "{tmp}/broken.yaml"], ("broken.yaml", "yaml"),
         {"broken.yaml": "task: {model: [\n"}, needs="run"),
    Case("run-missing-config", ["run", "{tmp}/absent.yaml"], ("absent.yaml",), needs="run"),
    _run_case("step-zero", lambda c: c["generators"]["rolling"].update(step=0), ("generators.rolling.step", "0")),
    _run_case("step-negative", lambda c: c["generators"]["rolling"].update(step=-5), ("generators.rolling.step",)),
    _run_case("segments-out-of-order", lambda c: _seg(c)["segments"].update(train=["2011-06-30", "2010-01-01"]),
              ("segments.train",)),
    _run_case("segments-outside-data", lambda c: _seg(c)["segments"].update(test=["2030-01-01", "2031-12-31"]),
              ("segments.test",)),
    _run_case("segment-before-data", lambda c: _seg(c)["segments"].update(train=["2001-01-01", "2001-12-31"]),
              ("segments.train", "no trading day")),
    _run_case("empty-universe", lambda c: _seg(c)["handler"]["kwargs"].update(instruments=[]),
              ("instruments", "empty universe")),
    _run_case("unknown-class", lambda c: c["task"]["model"].update({"class": "NoSuchModel"}),
              ("task.model.class", "nosuchmodel")),
    _run_case("unknown-module", lambda c: c["task"]["model"].update(module_path="no_such.module"),
              ("task.model.module_path", "no_such.module")),
    _run_case("untrusted-module", lambda c: c["task"]["model"].update({"class": "system", "module_path": "os"}),
              ("task.model.module_path", "not trusted", "alphamill_trusted_modules")),
    _run_case("kwargs-wrong-type", lambda c: c["task"]["model"]["kwargs"].update(num_leaves="many"),
              ("task.model.kwargs.num_leaves",)),
    _run_case("unknown-section", lambda c: c.update(colect={}), ("colect", "unknown section")),
    _run_case("rolling-type", lambda c: c["generators"]["rolling"].update(rtype="sideways"),
              ("generators.rolling.rtype",)),
    _run_case("pool-name-traversal", lambda c: c["pool"].update(name="../x"), ("pool.name", "invalid pool name")),
    _run_case("workers-negative", lambda c: c.update(workers=-1), ("workers",)),
    _run_case("selection-partitions-odd", lambda c: c["collect"].update(selection={"partitions": 5}),
              ("collect.selection.partitions", "even")),
    _run_case("selection-unknown-setting", lambda c: c["collect"].update(selection={"blocks": 8}),
              ("collect.selection.blocks", "unknown setting")),
    _run_case("selection-unknown-baseline", lambda c: c["collect"].update(selection={"baseline": "LGBModel lr=9"}),
              ("collect.selection.baseline", "lgbmodel lr=9", "not one of the variants")),
    _run_case("workers-100000", lambda c: c.update(workers=100_000), ("workers", "100000", "limit")),
    _run_case("experiment-control-character", lambda c: c.update(experiment="a\nb"), ("experiment", "control")),
    _run_case("pool-url-password-space", lambda c: c["pool"].update(url=f"postgresql://u:{SECRET} x9@h/db"),
              ("pool.url", "percent-encode")),
    Case("run-not-utf8", ["run", "{tmp}/latin1-run.yaml"], ("latin1-run.yaml", "not utf-8"),
         {"latin1-run.yaml": b"experiment: caf\xe9\n"}, needs="run"),
    Case("run-nested-100000", ["run", "{tmp}/deep-run.yaml"], ("deep-run.yaml", "nested too deeply"),
         {"deep-run.yaml": "task: " + _deep(100_000) + "\n"}, needs="run"),
    Case("run-config-is-a-folder", ["run", "{tmp}/adir"], ("adir",), {"adir/x.txt": "x\n"}, needs="run"),
]

ALL = CASES + RUN_CASES


def test_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in ALL}) == len(ALL)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    res = CliRunner().invoke(main, ["data", "demo", "--out", str(out), "--n", "6", "--start", "2010-01-01",
                                    "--end", "2012-12-31"])
    assert res.exit_code == 0, res.output
    return out


def _write_data_dirs(tmp: Path, data: Path) -> None:
    src = sorted(data.glob("*.csv"))[0].read_text().splitlines()
    header = src[0]
    (tmp / "trunc").mkdir()
    (tmp / "trunc" / "A.csv").write_text("\n".join(src[:4]) + "\n" + src[4][:15] + "\n")
    (tmp / "mixed").mkdir()
    (tmp / "mixed" / "A.csv").write_text("\n".join(src[:20]) + "\n")
    cols = header.split(",")
    keep = [i for i, c in enumerate(cols) if c not in ("low", "close", "volume")]
    (tmp / "mixed" / "B.csv").write_text(
        "\n".join(",".join(row.split(",")[i] for i in keep) for row in src[:20]) + "\n"
    )
    (tmp / "nonnum").mkdir()
    rows = [r.split(",") for r in src[:20]]
    rows[3][cols.index("close")] = "abc"
    (tmp / "nonnum" / "A.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")


def _snapshot(folder: Path) -> list[tuple[str, int]]:
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def _fill(text: str, sub: dict[str, str]) -> str:
    for k, v in sub.items():
        text = text.replace("{" + k + "}", v)
    return text


@pytest.fixture
def env(tmp_path, monkeypatch, demo_data):
    """A seeded SQLite pool, a tracking folder and home under tmp_path; fast-failing stores."""
    from alphamill.task.backends.mongo import MongoBackend
    from alphamill.task.backends.postgres import PostgresBackend

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALPHAMILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALPHAMILL_TRACKING_URI", str(tmp_path / "mlruns"))
    monkeypatch.delenv("ALPHAMILL_POOL_URL", raising=False)
    monkeypatch.delenv("ALPHAMILL_TRUSTED_MODULES", raising=False)
    # unreachable servers are retried for 30 s in production; the message is what is tested
    monkeypatch.setitem(PostgresBackend.__init__.__kwdefaults__, "retry_seconds", 0.3)
    monkeypatch.setitem(MongoBackend.__init__.__kwdefaults__, "retry_seconds", 0.3)
    monkeypatch.setitem(MongoBackend.__init__.__kwdefaults__, "server_selection_timeout_ms", 200)
    url = f"sqlite:///{tmp_path}/pool.db"
    with TaskManager("seeded", url) as tm:
        tm.create_task(SEEDED)
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "keep.txt").write_text("existing store")
    _write_data_dirs(tmp_path, demo_data)
    return {"url": url, "pool": "seeded", "tmp": str(tmp_path), "data": str(demo_data),
            "pghost": PG_URL.split("@", 1)[1].split("/", 1)[0]}


def _state(sub: dict[str, str]) -> tuple:
    with TaskManager(sub["pool"], sub["url"]) as tm:
        return tm.task_stat(), tm.list(), [t["_id"] for t in tm.query()]


def _run_config(sub: dict[str, str], change) -> str:
    from alphamill.workflow.experiment import flagship_config

    cfg = copy.deepcopy(flagship_config(small=True, data=sub["data"]))
    cfg["pool"] = {"url": sub["url"], "name": sub["pool"]}
    cfg["workers"] = 0
    change(cfg)
    return yaml.safe_dump(cfg, sort_keys=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input(case: Case, env):
    if case.needs == "run" and not HAS_RUN:
        pytest.skip("`alphamill run` is not in this tree")
    if case.needs == "pg" and not postgres_available():
        pytest.skip("PostgreSQL server absent")
    for name, content in case.files.items():
        path = Path(env["tmp"]) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content = _run_config(env, content)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, env))
    before, tracking = _state(env), _snapshot(Path(env["tmp"]) / "mlruns")
    args = [_fill(a, env) for a in case.args]
    result = CliRunner().invoke(main, args, env={k: _fill(v, env) for k, v in case.env.items()})
    out = result.output
    assert result.exit_code != 0, f"accepted: {args}\n{out}"
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{out}"
    assert "Traceback" not in out, out
    for want in case.expect:
        assert _fill(want, env).lower() in out.lower(), f"{want!r} not in:\n{out}"
    for secret in case.absent:
        assert secret not in out, f"{secret!r} leaked:\n{out}"
    assert _state(env) == before, "the pool changed"
    assert _snapshot(Path(env["tmp"]) / "mlruns") == tracking, "the experiment store changed"
    assert not (Path(env["tmp"]) / "f.parquet").exists(), "a refused export wrote its output"


def test_unicode_task_content_is_fine(env):
    """The positive control: unicode inside tasks is data, not an error."""
    f = Path(env["tmp"]) / "uni.yaml"
    f.write_text("- {n: 7, name: 'données — 数据 — данные'}\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["-t", env["pool"], "--url", env["url"], "create", str(f)])
    assert res.exit_code == 0, res.output
    with TaskManager(env["pool"], env["url"]) as tm:
        (task,) = tm.query({"def.n": 7})
    assert task["def"]["name"] == "données — 数据 — данные"
    assert os.fspath(f)  # the file name itself is plain; unicode file names are in the corpus
