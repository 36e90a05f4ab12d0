"""The log scan on logs the sandbox server really wrote with other settings than ours: every
log_line_prefix escape, the prefixes of managed services (RDS), a log_timezone other than UTC,
a shipper that collapses 'LOG:  ' to 'LOG: ', the runbooks' own statements and a window's end;
and logs that cannot be read at all, which must never pass for logs without errors."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from runbooks_lib import logs, queries
from runbooks_lib.sandbox import demo, incidents, server
from runbooks_lib.sandbox.server import Sandbox
from runbooks_lib.session import Session
from runbooks_lib.target import resolve

from .conftest import make_base_dir, retry

EXTENSIONS = ("log", "csv", "json")
# every escape PostgreSQL documents, padded ones too; %q ends the line of session-less processes
ALL_ESCAPES = "%m|%t|%n|%s|%p|%P|%c|%l|%v|%x|%Q|%10Q|%e|%b|%q%a|%u|%d|%r|%h|%L|%i|%-12u|%10p|%% "
RDS = ("%t:%r:%u@%d:[%p]:", "%t [%p]: [%l-1] user=%u,db=%d,app=%a,client=%h ")


def _show(sb: Sandbox, name: str) -> str:
    with psycopg.connect(sb.url("postgres", "postgres")) as c:
        row = c.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
        assert row is not None
        return str(row[0])


def _rotate(sb: Sandbox) -> dict[str, Path]:
    """Fresh log files (one per destination), so that what the test reads was written with the
    settings under test only. File names have whole seconds: rotate until the names change."""
    before = set(sb.log_dir.iterdir())
    wanted = [e for e in EXTENSIONS if any(p.suffix == f".{e}" for p in before)]

    def rotated() -> dict[str, Path]:
        with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
            c.execute("SELECT pg_rotate_logfile()")
        time.sleep(0.2)
        new = {p.suffix[1:]: p for p in set(sb.log_dir.iterdir()) - before}
        assert all(e in new for e in wanted), new
        return new

    return retry(rotated, timeout=10, interval=0.3)


@contextmanager
def logging(sb: Sandbox, **settings: str) -> Iterator[dict[str, Path]]:
    """The sandbox server with SETTINGS (ALTER SYSTEM, reloaded) writing fresh log files, given
    by extension; the settings are reset afterwards."""
    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
        for name, value in settings.items():
            c.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name),
                                                                  sql.Literal(value)))
        c.execute("SELECT pg_reload_conf()")
    try:
        retry(lambda: all(_show(sb, n) == v for n, v in settings.items()), timeout=10)
        yield _rotate(sb)
    finally:
        with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
            for name in settings:
                c.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
            c.execute("SELECT pg_reload_conf()")


def _errors(sb: Sandbox) -> dict[str, int]:
    raised = incidents.failing_statements(sb.url("app"))
    raised["40P01"] = incidents.deadlock(sb.url("app"))
    return raised


def _flushed(path: Path, needle: str) -> None:
    """Wait for the logging collector to have written NEEDLE (it writes asynchronously)."""
    retry(lambda: needle in path.read_text(errors="replace"), timeout=10, interval=0.2)


def _last_statement(sb: Sandbox, text: str = "SELECT 'flushed'") -> str:
    with psycopg.connect(sb.url("app")) as c:
        c.execute(text.encode())
    return text


@pytest.fixture(scope="module")
def own() -> Iterator[Sandbox]:
    """A server of its own for the tests that change how it logs (prefix, zone, durations):
    the shared sandbox's log, which later tests read, keeps one prefix and one zone."""
    base = make_base_dir("pg-runbooks-logging-")
    try:
        sb = server.start(base, os.environ.get("RUNBOOKS_TEST_BINDIR"), max_connections=20)
        demo.load(sb.url("app"))
        yield sb
    finally:
        server.stop(base, remove=True)


@pytest.mark.pg(">= 14")  # %Q needs compute_query_id (14+)
def test_every_prefix_escape_and_its_values(own: Sandbox) -> None:
    """Query ids are signed (about half are negative), non-session processes leave %u %d %r %h
    %i %v empty, padding adds spaces: every line the server writes must still match."""
    with logging(own, log_line_prefix=ALL_ESCAPES, compute_query_id="on", log_checkpoints="on",
                 log_min_duration_statement="0") as files:
        since = dt.datetime.now(dt.UTC)
        raised = _errors(own)
        with psycopg.connect(own.url("app")) as c:  # distinct shapes: distinct query ids
            for i in range(1, 31):
                c.execute(("SELECT " + ", ".join(["1"] * i)).encode())
        with psycopg.connect(own.url("postgres", "postgres"), autocommit=True) as c:
            c.execute("CHECKPOINT")  # a line of the checkpointer: a process without a session
        _flushed(files["log"], _last_statement(own))
        text = files["log"].read_text()
        assert re.search(r"\|-\d+\| *-\d+\|", text), "no negative query id was logged"
        assert re.search(r"\|checkpointer\|(LOG|DEBUG1):", text), "no session-less line"
        got = logs.scan(logs.local_files(str(files["log"])), "test", since, ALL_ESCAPES)
    assert got.counts.unmatched == 0 and got.records > 30
    assert got.errors_by_sqlstate == raised and not logs.setup_problems(got)
    assert {"app"} <= {r["user"] for r in got.errors}
    assert got.durations.count >= 30


@pytest.mark.parametrize("prefix", RDS, ids=["rds-colons", "rds-pgbadger"])
def test_managed_service_prefixes(own: Sandbox, prefix: str) -> None:
    """RDS writes %t (whole seconds) and no %e: errors in the window's first second count, and
    the SQLSTATEs come from the messages."""
    with logging(own, log_line_prefix=prefix, log_min_duration_statement="0") as files:
        since = dt.datetime.now(dt.UTC)
        raised = _errors(own)
        with psycopg.connect(own.url("app")) as c:
            for _ in range(3):
                c.execute("SELECT pg_sleep(0.01)")
        _flushed(files["log"], _last_statement(own))
        got = logs.scan_source(None, str(files["log"]), since, prefix)
    assert got.errors_by_sqlstate == raised and got.inferred == sum(raised.values())
    assert got.durations.statements["SELECT pg_sleep(?)"][0] == 3
    (dl,) = [r for r in got.errors if r["sqlstate"] == "40P01"]
    assert dl["user"] == "app" and dl["database"] == "cosnap" and dl["query"]


def test_one_space_after_the_severity(own: Sandbox, tmp_path: Path) -> None:
    """A shipper that collapses 'LOG:  ' to 'LOG: ' (and 'ms  statement' to 'ms statement'):
    the same records, errors and durations."""
    prefix = "%m [%p] %q%u@%d %a %e "
    with logging(own, log_min_duration_statement="0") as files:
        since = dt.datetime.now(dt.UTC)
        raised = _errors(own)
        _flushed(files["log"], _last_statement(own))
        written, shipped = tmp_path / "written.log", tmp_path / "shipped.log"
        written.write_text(files["log"].read_text())
    text = re.sub(r"(?<=[A-Z1-5]):  ", ": ", written.read_text())
    shipped.write_text(text.replace(" ms  ", " ms "))
    assert "LOG:  " not in shipped.read_text() and "ERROR: " in shipped.read_text()
    want = logs.scan(logs.local_files(str(written)), "test", since, prefix)
    got = logs.scan(logs.local_files(str(shipped)), "test", since, prefix)
    assert want.errors_by_sqlstate == got.errors_by_sqlstate == raised
    assert got.records == want.records and got.counts.unmatched == 0
    assert got.durations.count == want.durations.count > 0
    (dl,) = [r for r in got.errors if r["sqlstate"] == "40P01"]
    assert dl["detail"] and dl["query"]


@pytest.mark.parametrize("zone", ["America/New_York", "CET"])
def test_log_timezone_other_than_utc(own: Sandbox, zone: str) -> None:
    """Times in the log are in log_timezone (EST/EDT, CET/CEST): the window is the same instant
    whatever the zone, so errors raised just before it are left out and those in it counted."""
    with logging(own, log_timezone=zone, log_min_duration_statement="0") as files:
        incidents.failing_statements(own.url("app"))  # before the window
        time.sleep(1.1)
        since = dt.datetime.now(dt.UTC)
        raised = _errors(own)
        _flushed(files["log"], _last_statement(own))
        _flushed(files["csv"], "SELECT 'flushed'")
        for ext in (e for e in ("csv", "log", "json") if e in files):  # jsonlog: 15+
            got = logs.scan_source(None, str(files[ext]), since, "%m [%p] %q%u@%d %a %e ",
                                   log_timezone=zone)
            assert got.errors_by_sqlstate == raised, ext
            assert not logs.setup_problems(got), ext
            # without the zone, the abbreviation is not guessed: the scan says so
            blind = logs.scan_source(None, str(files[ext]), since, "%m [%p] %q%u@%d %a %e ")
            assert any("log_timezone" in p for p in logs.setup_problems(blind)), ext
        with Session(resolve(own.url("postgres"))) as s:  # the zone from the session
            assert s.facts.settings["log_timezone"] == zone
            got = logs.scan_source(s, "auto", since)
            assert got.errors_by_sqlstate == raised
            # (the last minute's files are read too, the previous test's zone among them)
            ours = dt.datetime.now(zoneinfo.ZoneInfo(zone)).tzname()
            assert not any(f"{ours} were read as UTC" in p for p in logs.setup_problems(got))
            got = logs.scan_source(s, str(files["log"]), since)
            assert got.errors_by_sqlstate == raised


def test_own_statements_and_the_window_end_are_not_counted(own: Sandbox) -> None:
    """The latency runbook's share of slow statements is the application's, in the window: its
    own diagnostic queries (queries.MARKER) and what runs after the window are left out."""
    with logging(own, log_min_duration_statement="0") as files:
        since = dt.datetime.now(dt.UTC)
        with psycopg.connect(own.url("app")) as c:
            for _ in range(3):
                c.execute("SELECT pg_sleep(0.01)")
            for _ in range(5):
                ours = f"SELECT {queries.MARKER} count(*) FROM pg_stat_activity"  # noqa: S608 - a constant
                c.execute(ours.encode())
        time.sleep(1.1)  # whole seconds apart, for %t as well
        until = dt.datetime.now(dt.UTC)
        time.sleep(1.1)
        _last_statement(own, "SELECT 'after the window'")
        _flushed(files["log"], "after the window")
        _flushed(files["csv"], "after the window")
        for ext in ("log", "csv"):
            whole = logs.scan_source(None, str(files[ext]), since, "%m [%p] %q%u@%d %a %e ")
            assert whole.marked == 5, ext
            assert not any(queries.MARKER in s for s in whole.durations.statements), ext
            assert "SELECT ?" in whole.durations.statements, ext  # 'after the window'
            got = logs.scan_source(None, str(files[ext]), since, "%m [%p] %q%u@%d %a %e ",
                                   until=until)
            assert "SELECT ?" not in got.durations.statements, ext
            assert got.durations.statements["SELECT pg_sleep(?)"][0] == 3, ext
            assert got.newest is not None and got.newest <= until, ext


# -- logs that cannot be read ------------------------------------------------------------------

def test_a_binary_file_is_not_read_as_an_empty_log() -> None:
    with pytest.raises(logs.LogUnreadable) as caught:
        logs.scan_source(None, "/bin/ls", None, "%m [%p] ")
    assert "not a PostgreSQL log" in caught.value.reason and "NUL" in caught.value.reason
    finding = logs.unreadable_finding(caught.value)
    assert (finding.check, finding.severity) == ("log_setup", "warning")
    assert "not a PostgreSQL log" in finding.title and finding.remediation == caught.value.fix


def test_text_that_is_no_log_is_not_read_as_an_empty_log(tmp_path: Path) -> None:
    (tmp_path / "notes.log").write_text("just some text\nabout nothing\n")
    (tmp_path / "data.csv").write_text("a,b,c\n1,2,3\n")
    for name in ("notes.log", "data.csv"):
        with pytest.raises(logs.LogUnreadable, match="not a PostgreSQL log"):
            logs.scan_source(None, str(tmp_path / name), None, "%m [%p] ")
    (tmp_path / "other.log").write_text("2026-11-27 10:00:00 UTC:1.2.3.4(5):a@b:[7]:LOG:  x\n")
    # a log, but written with another prefix: read, and a setup problem (a warning) says so
    other = logs.scan_source(None, str(tmp_path / "other.log"), None, "%m [%p] ")
    (problem,) = [p for p in logs.setup_problems(other) if "do not match" in p]
    assert "another prefix" in problem


def test_a_path_matching_nothing_says_which(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nowhere" / "*.csv")
    with pytest.raises(logs.LogUnreadable) as caught:
        logs.scan_source(None, pattern, None)
    assert pattern in caught.value.reason and pattern in caught.value.fix
    assert pattern in logs.unreadable_finding(caught.value).title


def test_an_empty_log_is_read_and_has_no_errors(tmp_path: Path) -> None:
    (tmp_path / "postgresql.csv").write_text("")
    got = logs.scan_source(None, str(tmp_path / "postgresql.csv"), None)
    assert got.records == 0 and got.errors_by_sqlstate == {}


def test_auto_without_pg_read_server_files_says_what_to_grant(quiet: Sandbox) -> None:
    with Session(resolve(quiet.url("monitor"))) as s, \
            pytest.raises(logs.LogUnreadable) as caught:
        logs.scan_source(s, "auto", None)
    assert caught.value.fix.startswith("GRANT pg_read_server_files TO \"monitor\";")
    finding = logs.unreadable_finding(caught.value)
    assert finding.severity == "warning" and "GRANT pg_read_server_files" in finding.remediation
