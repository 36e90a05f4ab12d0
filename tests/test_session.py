"""Connection failures are classified by cause, with a message safe to show."""

from __future__ import annotations

from importlib import resources

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
])
def test_classify_by_message(message: str, cause: str) -> None:
    assert classify_connect_error(psycopg.OperationalError(message))[0] == cause


def test_query_ladder_skips_features_the_server_lacks() -> None:
    assert queries.get("session_stats", 180000).name == "session_stats"
    with pytest.raises(SkipStep, match="needs PostgreSQL 14"):
        queries.get("session_stats", 130000)


def test_every_query_file_runs_on_the_sandbox(sandbox: Sandbox) -> None:
    params = {"application": "x", "older_than_s": 1.0, "dry_run": True, "pids": [],
              "query_s": 60, "xact_s": 3600, "mode": "cancel", "oids": [],
              "min_rows": 0, "min_bytes": 0, "showtext": True, "names": [], "relids": []}
    with Session(resolve(sandbox.url("monitor"))) as s:
        for path in sorted(resources.files(queries).iterdir(), key=lambda p: p.name):
            if path.name.endswith(".sql") and path.name != "read_log.sql":  # needs a file name
                name = path.name.removesuffix(".sql").split("_post_")[0]
                sql = queries.get(name, s.facts.version_num)
                s.frame(sql, params if "%(" in sql else None)
