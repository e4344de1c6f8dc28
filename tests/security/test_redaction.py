"""Database passwords never appear in output, logs, reprs, errors, the pool or MLflow tags.

The test server trusts local connections, so a URL carrying a made-up password connects
normally: every CLI verb and a real worker run with it, and with unreachable servers, and
everything they print is scanned for the password.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from alphamill.cli import main
from alphamill.config import redact_url
from alphamill.errors import AlphamillError
from alphamill.kinds import task_function
from tests.pool.conftest import (
    PG_URL,
    REQUIRE_PG,
    drop_pg_schema,
    pg_url_with_schema,
    postgres_available,
)

PW = "S3cretPW"
ROOT = Path(__file__).resolve().parents[2]


def with_password(url: str, pw: str = PW) -> str:
    scheme, rest = url.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':')[0]}:{pw}@{host}"


@task_function
def fail_odd(task_def, **kwargs):
    """A task function that fails for odd n (its traceback is stored and logged)."""
    if task_def["n"] % 2:
        raise RuntimeError(f"task {task_def['n']} failed on purpose")
    return {"n": task_def["n"]}


@pytest.fixture
def pw_url():
    if not postgres_available():
        if REQUIRE_PG:
            pytest.fail("PostgreSQL required (ALPHAMILL_REQUIRE_POSTGRES=1) but not reachable")
        pytest.skip("PostgreSQL server absent")
    schema = f"am_red_{uuid.uuid4().hex[:10]}"
    yield with_password(pg_url_with_schema(schema)), schema
    drop_pg_schema(schema)


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> str:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    p = subprocess.run([sys.executable, "-c", "from alphamill.cli import main; main()", *args],
                       cwd=str(ROOT), env=full_env, capture_output=True, text=True, timeout=timeout)
    return f"[exit {p.returncode}]\n{p.stdout}\n{p.stderr}"


def test_cli_and_worker_never_print_the_password(pw_url, tmp_path):
    url, schema = pw_url
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps([{"n": i} for i in range(4)]))
    u = ["--url", url, "-t", "red"]
    outputs = [
        _cli(*u, "create", str(tasks)),
        _cli(*u, "worker", "--until-empty", "--func", "tests.security.test_redaction:fail_odd",
             "--retry-backoff", "0", "--lease", "5", "--heartbeat", "1"),
        _cli(*u, "task_stat"),
        _cli(*u, "query", "--json"),
        _cli(*u, "query"),
        _cli(*u, "list", "--json"),
        _cli(*u, "doctor"),
        _cli(*u, "wait", "--timeout", "5"),
        _cli(*u, "remove", '{"status": "failed"}'),
        _cli("-t", "red", "list", env={"ALPHAMILL_POOL_URL": url}),
        _cli("-t", "red", "doctor", "--json", env={"ALPHAMILL_POOL_URL": url}),
    ]
    text = "\n".join(outputs)
    assert "[exit 0]" in outputs[1] and "failed on purpose" in outputs[3], text  # really ran
    assert PW not in text, [o for o in outputs if PW in o][0]
    assert "***" in text  # the URL is shown, redacted
    # nor is the URL (or its password) stored in the database
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(f'SELECT * FROM "{schema}".tasks').fetchall()
        rows += conn.execute(f'SELECT * FROM "{schema}".task_pools').fetchall()
    assert rows and PW not in repr(rows)


UNREACHABLE = [
    f"postgresql://postgres:{PW}@127.0.0.1:1/test",
    f"postgresql://127.0.0.1:1/test?user=postgres&password={PW}",
    f"mongodb://admin:{PW}@127.0.0.1:1/db",
    f"mongodb://admin:{PW}@127.0.0.1:1",
    f"mysql://root:{PW}@127.0.0.1/db",
    f"postgresql://postgres:{PW}@127.0.0.1:1/test?options=-csearch_path%3Dbad-name!",
]


@pytest.fixture
def fast_fail(monkeypatch):
    from alphamill.task.backends.mongo import MongoBackend
    from alphamill.task.backends.postgres import PostgresBackend

    monkeypatch.setitem(PostgresBackend.__init__.__kwdefaults__, "retry_seconds", 0.3)
    monkeypatch.setitem(MongoBackend.__init__.__kwdefaults__, "retry_seconds", 0.3)
    monkeypatch.setitem(MongoBackend.__init__.__kwdefaults__, "server_selection_timeout_ms", 200)


@pytest.mark.parametrize("url", UNREACHABLE, ids=range(len(UNREACHABLE)))
def test_unreachable_or_bad_urls_are_redacted(url, fast_fail, caplog, capfd):
    from alphamill.task.manage import TaskManager

    caplog.set_level(logging.DEBUG)
    seen = []
    for args in (["task_stat"], ["list"], ["doctor", "--json"], ["worker", "--func", "alphamill.task.demo_funcs:noop"],
                 ["create", "nothing.yaml"]):
        res = CliRunner().invoke(main, ["-t", "red", "--url", url, *args])
        assert res.exit_code != 0
        seen.append(res.output)
    with pytest.raises(Exception) as exc:
        TaskManager("red", url)
    seen += [str(exc.value), repr(exc.value), caplog.text, *capfd.readouterr()]
    text = "\n".join(seen)
    assert PW not in text, text
    assert "error:" in text


def test_reprs_and_doctor_are_redacted(pw_url):
    from alphamill.task.manage import TaskManager

    url, _ = pw_url
    with TaskManager("red", url) as tm:
        tm.create_task([{"n": 1}])
        shown = [repr(tm), repr(tm.backend), json.dumps(tm.doctor(), default=str), str(tm.url and redact_url(tm.url))]
    assert all(PW not in s for s in shown), shown
    assert "***" in shown[0]


def test_redact_url_forms():
    for url in [f"postgresql://u:{PW}@h/db", f"postgres://u:{PW}@h:5432/db?sslmode=require",
                f"mongodb+srv://u:{PW}@cluster0.example.net/db", f"postgresql://h/db?password={PW}&user=u",
                f"postgresql://h/db?user=u&PASSWORD={PW}", f"text before postgresql://u:{PW}@h/db after"]:
        assert PW not in redact_url(url), url


@pytest.mark.skipif(importlib.util.find_spec("alphamill.workflow.recorder") is None,
                    reason="alphamill.workflow.recorder (the MLflow experiment store) is not in this tree")
def test_mlflow_tags_and_errors_are_redacted(tmp_path):
    from alphamill.workflow.recorder import R

    url = f"postgresql://postgres:{PW}@127.0.0.1:5432/test"
    odd = f"postgresql://postgres:{PW} x9@127.0.0.1/test"
    with R.start(experiment_name="red", recorder_name="r", uri=str(tmp_path / "mlruns")) as rec:
        R.set_tags(pool_url=url, note=f"pool at {url}", odd=odd, at=f"mongodb://u:pa@{PW}-tail@h/db")
        R.log_params(source=odd)
        tags = rec.list_tags()
        params = rec.list_params()
    assert PW not in json.dumps(tags) and "***" in tags["pool_url"]
    assert "x9" not in tags["odd"] and "tail" not in tags["at"] and PW not in json.dumps(params)


MALFORMED = [
    # (url, pieces of the password that must not survive, what must stay)
    (f"postgresql://u:{PW} x9@host/db", [PW, "x9"], "postgresql://u:***@host/db"),
    (f"postgresql://u:pa@{PW}-tail@host:5432/db", ["pa@", PW, "tail"], "postgresql://u:***@host:5432/db"),
    (f"mongodb://admin:{PW}@@h1,h2/db?replicaSet=r", [PW], "mongodb://admin:***@h1,h2/db"),
    (f"postgresql://u:{PW}/x?y#z@host/db", [PW, "x?y"], "postgresql://u:***@host/db"),
    (f"postgresql://we ird:{PW}@host/db", [PW, "ird"], "postgresql://***@host/db"),
    (f"postgresql://{PW} x9@host/db", [PW, "x9"], "postgresql://***@host/db"),
]


@pytest.mark.parametrize(("url", "pieces", "kept"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_urls_are_redacted_up_to_the_last_at(url, pieces, kept):
    for text in (url, f"error: pool {url}: cannot connect", f"'{url}' and more text"):
        shown = redact_url(text)
        assert all(p not in shown for p in pieces), shown
        assert kept in shown, shown


def test_redaction_stops_at_the_line_and_the_next_url():
    text = f"a postgresql://h/db here\nb mongodb://u:{PW}@h2/db mail admin@corp\nc sqlite:///x.db"
    shown = redact_url(text)
    assert PW not in shown
    assert "postgresql://h/db here" in shown and "sqlite:///x.db" in shown


def test_userinfo_that_needs_encoding_is_refused_before_any_driver(fast_fail):
    from alphamill.errors import PoolError
    from alphamill.redact import userinfo_problem
    from alphamill.task.manage import TaskManager
    from alphamill.workflow.recorder import resolve_store

    for url, _, _ in MALFORMED:
        assert userinfo_problem(url), url
        with pytest.raises(PoolError) as exc:
            TaskManager("red", url)
        assert PW not in str(exc.value) and "percent-encode" in str(exc.value)
        with pytest.raises(AlphamillError) as exc:
            resolve_store(url)
        assert PW not in str(exc.value) and "percent-encode" in str(exc.value)
    ok = [f"postgresql://u:{PW}@h/db", "postgresql://h/db?user=me@corp", "mongodb://h1,h2/db",
          "postgresql://u:p%40ss@h/db", "sqlite:///x.db"]
    assert not any(userinfo_problem(u) for u in ok)


def test_driver_messages_are_scrubbed_of_every_form_of_the_password():
    from alphamill.redact import scrub

    url = "postgresql://u:p%40ss%20word@h/db?password=Other99"
    message = (f'connection to "{url}" failed: password "p@ss word" rejected; '
               'token "p%40ss%20word"; option password=Other99; Other99 again')
    shown = scrub(message, url)
    for piece in ("p@ss word", "p%40ss%20word", "Other99"):
        assert piece not in shown, shown
    assert "connection to" in shown and "rejected" in shown
