"""Connection failures are classified by cause, with a message safe to show."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from runbooks_lib import queries
from runbooks_lib.errors import ConnectError, SkipStep
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox, free_port
from runbooks_lib.session import Session, Timeouts, classify_connect_error
from runbooks_lib.target import resolve


def connect_error(url: str) -> ConnectError:
    with pytest.raises(ConnectError) as info:
        Session(resolve(url), timeouts=Timeouts(connect_s=2))
    return info.value


def test_refused(sandbox: Sandbox) -> None:
    err = connect_error(f"postgresql://app:pw@127.0.0.1:{free_port()}/cosnap")
    assert err.cause == "refused" and "pw@" not in str(err) and "Next:" in str(err)


def test_authentication(sandbox: Sandbox) -> None:
    err = connect_error(sandbox.url("app", password="secret-wrong-1"))
    assert err.cause == "authentication" and "secret-wrong-1" not in str(err)


def test_database_missing(sandbox: Sandbox) -> None:
    err = connect_error(sandbox.url("app", database="nope"))
    assert err.cause == "database_missing"


def test_too_many_clients(quiet: Sandbox) -> None:
    with incidents.exhausted(quiet.url("app")):
        err = connect_error(quiet.url("app"))
    assert err.cause == "too_many_clients"


@pytest.mark.parametrize(("message", "cause"), [
    ('could not translate host name "db.invalid" to address: Name or service not known', "dns"),
    ("SSL error: certificate verify failed", "tls"),
    ("server does not support SSL, but SSL was required", "tls"),
    ("FATAL:  the database system is starting up", "starting_up"),
    ("FATAL:  the database system is shutting down", "shutting_down"),
    ("connection to server failed: No route to host", "unreachable"),
    ("something new", "unknown"),
    ('connection is bad: definition of service "nosuch" not found', "configuration"),
])
def test_classify_by_message(message: str, cause: str) -> None:
    assert classify_connect_error(psycopg.OperationalError(message))[0] == cause


def test_query_ladder_skips_features_the_server_lacks() -> None:
    assert queries.get("session_stats", 180000).name == "session_stats"
    with pytest.raises(SkipStep, match="needs PostgreSQL 14"):
        queries.get("session_stats", 130000)


def test_every_query_file_runs_on_the_sandbox(sandbox: Sandbox) -> None:
    """Every query file this server's version picks runs on it; which ones ran on which version
    is printed, and appended to $RUNBOOKS_QUERY_COVERAGE for `make test-matrix`, which checks
    that every rung of each version ladder ran on some version."""
    params = {"application": "x", "older_than_s": 1.0, "dry_run": True, "pids": [],
              "query_s": 60, "xact_s": 3600, "mode": "cancel", "oids": [],
              "min_rows": 0, "min_bytes": 0, "showtext": True, "names": [], "relids": [], "role": "app"}
    ran: list[str] = []
    skipped: dict[str, str] = {}
    with Session(resolve(sandbox.url("monitor"))) as s:
        version = s.facts.version_num
        for path in sorted(resources.files(queries).iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".sql"):
                continue
            name = path.name.removesuffix(".sql").split("_post_")[0]
            try:
                sql = queries.get(name, version)
            except SkipStep as exc:
                skipped[path.name] = str(exc)
                continue
            if sql != queries.tag(path.read_text(encoding="utf-8")):
                continue  # another version's rung of this query's ladder
            if name == "read_log":
                skipped[path.name] = "needs a log file name"
            elif name == "statements" and not sandbox.pg_stat_statements:
                skipped[path.name] = "these binaries have no pg_stat_statements"
            else:
                s.frame(sql, params if "%(" in sql else None)
                ran.append(path.name)
    print(f"PostgreSQL {version}: ran {', '.join(ran)}; skipped "
          + ", ".join(f"{k} ({v})" for k, v in skipped.items()))
    if out := os.environ.get("RUNBOOKS_QUERY_COVERAGE"):
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"version_num": version, "ran": ran, "skipped": skipped}) + "\n")
    assert ran


def ladder_files() -> set[str]:
    """The query files of every query that has more than one version (a _post_ rung)."""
    names = {p.name for p in resources.files(queries).iterdir() if p.name.endswith(".sql")}
    laddered = {n.split("_post_")[0] for n in names if "_post_" in n}
    return {n for n in names if n.removesuffix(".sql").split("_post_")[0] in laddered}


@pytest.mark.skipif(not os.environ.get("RUNBOOKS_QUERY_COVERAGE_CHECK"),
                    reason="run by `make test-matrix` once every version has run")
def test_every_ladder_rung_ran_on_some_version() -> None:
    runs = [json.loads(line) for line in
            Path(os.environ["RUNBOOKS_QUERY_COVERAGE"]).read_text().splitlines()]
    for run in runs:
        print(f"PostgreSQL {run['version_num']}: {', '.join(sorted(set(run['ran']) & ladder_files()))}")
    ran = {name for run in runs for name in run["ran"]}
    versions = sorted({run["version_num"] // 10000 for run in runs})
    assert ladder_files() <= ran, f"never ran on {versions}: {sorted(ladder_files() - ran)}"
