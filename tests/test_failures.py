"""Every transaction-failures check: its incident injected for real (finding, severity and
category asserted) and a healthy workload that stays quiet."""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks_lib.probes.server_log import LogRead
from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import incidents as inc
from runbooks_lib.sandbox.server import Sandbox

from .conftest import by_check, findings_of, retry, run_cli, skipped


@pytest.fixture
def failures_rb(make_runbook: Callable[..., Runbook]) -> Callable[..., Runbook]:
    return functools.partial(make_runbook, "transaction_failures", role="postgres")


def since_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def later(fn: Callable[..., object], *args: object) -> None:
    """FN(*ARGS) a moment after the window's first snapshot."""
    time.sleep(0.2)
    fn(*args)


def logged(log: LogRead) -> dict[str, int]:
    """The errors by SQLSTATE the log read found."""
    return log.require().errors_by_sqlstate


def read_until(failures_rb: Callable[..., Runbook], done: Callable[[Runbook], bool],
               **params: Any) -> Runbook:
    """A runbook whose log read satisfies DONE: the logging collector writes asynchronously,
    and a run reads the log once, so each attempt is a fresh run (the others closed)."""
    def attempt() -> Runbook | None:
        rb = failures_rb(**params)
        rb.check("transaction_failures.log")
        if done(rb):
            return rb
        rb.close()
        return None

    found = retry(attempt, timeout=10, interval=0.3)
    assert found is not None
    return found


def log_of(rb: Runbook) -> LogRead:
    log: LogRead = rb.snapshot("log_errors")
    return log


def read_when_logged(failures_rb: Callable[..., Runbook], since: str, check: str,
                     **params: Any) -> Runbook:
    """Read the log until its errors by SQLSTATE include CHECK."""
    def done(rb: Runbook) -> bool:
        rb.check("transaction_failures.errors_by_sqlstate")
        return bool(by_check(rb, check))

    return read_until(failures_rb, done, since=since, **params)


def test_healthy_workload_is_quiet(quiet: Sandbox, failures_rb: Callable[..., Runbook]) -> None:
    since = since_now()
    rb = failures_rb(sample_seconds=1.5, since=since)
    with inc.workload(quiet.url("app"), inc.healthy_batch):
        data = rb.run_all()
    bad = [f.title for f in rb.report.findings if f.severity in ("warning", "critical")]
    assert not bad and not rb.report.errors and not data["errors"]
    (rate,) = by_check(rb, "rollback_rate")
    assert "Rollback rate 0.0%" in rate.title
    assert [f.severity for f in by_check(rb, "errors")] == ["ok"]  # the log was read
    assert not by_check(rb, "log_setup")


def test_errors_are_classified_with_remediation(quiet: Sandbox,
                                                failures_rb: Callable[..., Runbook]) -> None:
    since = since_now()
    raised = inc.failing_statements(quiet.url("app"), times=2)
    assert inc.deadlock(quiet.url("app")) == 1
    assert inc.serialization_failure(quiet.url("app")) == 1
    assert inc.idle_in_transaction_timeout(quiet.url("app")) == 1
    expected = sum(raised.values()) + 3  # + the deadlock, the 40001 and the FATAL 25P03
    rb = read_until(failures_rb, lambda rb: len(log_of(rb).errors) == expected, since=since)
    rb.check("transaction_failures.errors_by_sqlstate")
    sev = {f.check: f for f in rb.report.findings}
    integrity = sev["errors_integrity"]
    assert integrity.severity == "warning"
    assert "23503 foreign_key_violation x2" in integrity.title and "23505" in integrity.title
    assert "insert parents before children" in integrity.remediation
    retry_ = sev["errors_retryable-transient"]
    assert retry_.severity == "warning"
    assert "40P01 deadlock_detected x1" in retry_.title and "40001" in retry_.title
    assert "backoff and jitter" in retry_.remediation and "retryable: yes" in retry_.detail
    timeout = sev["errors_timeout"]
    assert "query_canceled (statement_timeout) x2" in timeout.title and "25P03" in timeout.title
    bug = sev["errors_application-bug"]
    assert "22012" in bug.title and "42P01" in bug.title
    assert any("FROM no_such_table" in e["statement"] for e in bug.evidence)
    assert raised["23503"] == 2
    assert not rb.report.errors


def test_deadlock_cycles_and_fk_violations(quiet: Sandbox,
                                           failures_rb: Callable[..., Runbook]) -> None:
    since = since_now()
    inc.deadlock(quiet.url("app"))
    with inc.fk_without_index(quiet.url("app")), psycopg.connect(quiet.url("app")) as c:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            c.execute("INSERT INTO comments (post_id, user_id, body) VALUES (1, 999999999, 'x')")
        c.rollback()
        inc.failing_statements(quiet.url("app"))  # comments_post_id_fkey, indexed
        rb = read_when_logged(failures_rb, since, "errors_retryable-transient")
        rb.check("transaction_failures.deadlocks")
        rb.check("transaction_failures.fk_violations")
    (d,) = by_check(rb, "deadlock")
    assert d.severity == "warning" and "on users" in d.title
    assert "in one order" in d.remediation and "retry 40P01" in d.remediation
    assert d.metric is not None and d.metric.value == 1
    fk = {f.title.split(" of foreign key ")[1].split(":")[0]: f for f in by_check(rb, "fk_violation")}
    assert fk["comments_user_id_fkey"].severity == "warning"
    assert "indexed: NO" in fk["comments_user_id_fkey"].detail
    assert 'CREATE INDEX CONCURRENTLY ON "public"."comments" ("user_id");' \
        in fk["comments_user_id_fkey"].remediation
    assert "indexed: yes" in fk["comments_post_id_fkey"].detail
    assert "CREATE INDEX" not in fk["comments_post_id_fkey"].remediation
    assert not rb.report.errors


def test_rollback_burst_is_critical(quiet: Sandbox, failures_rb: Callable[..., Runbook]) -> None:
    rb = failures_rb(sample_seconds=1.5)
    burst = threading.Thread(target=later, args=(inc.rollbacks, quiet.url("app"), 60))
    burst.start()
    rb.check("transaction_failures.counters")
    burst.join()
    (f,) = by_check(rb, "rollback_rate")
    assert f.severity == "critical" and f.metric is not None and (f.metric.value or 0) > 0.5


def test_deadlock_in_the_window_warns(quiet: Sandbox, failures_rb: Callable[..., Runbook]) -> None:
    rb = failures_rb(sample_seconds=1.5)
    t = threading.Thread(target=later, args=(inc.deadlock, quiet.url("app")))
    t.start()
    rb.check("transaction_failures.counters")
    t.join()
    (f,) = by_check(rb, "deadlock_rate")
    assert f.severity == "warning" and "1 deadlock(s)" in f.title


def test_monitor_role_without_log_access_warns_never_says_no_error(
        failures_rb: Callable[..., Runbook]) -> None:
    rb = failures_rb(role="monitor", log_source="auto", since="5m", sample_seconds=0.5)
    data = rb.run_all()
    (setup,) = by_check(rb, "log_setup")
    assert setup.severity == "warning" and "not read" in setup.title
    assert "pg_read_server_files" in setup.detail + setup.remediation
    assert not by_check(rb, "errors"), "no 'No error logged' without a log read"
    assert any("not read" in r for r in skipped(rb, "errors_by_sqlstate"))
    assert skipped(rb, "deadlocks") and skipped(rb, "fk_violations")
    assert data["status"] != "ok" and not rb.report.errors


def test_malformed_log_file_is_counted(tmp_path: Path, failures_rb: Callable[..., Runbook]) -> None:
    line = ('2026-11-27 23:35:17.123 UTC,"app","cosnap",1,"h:1",a.1,1,"SELECT",'
            '2026-11-27 23:35:00 UTC,3/4,0,ERROR,22012,"division by zero",,,,,,'
            '"SELECT 1/0",,,"cosnap-backend","client backend",,0\n')
    (tmp_path / "pg.csv").write_text(line + "garbage\n" + line)
    rb = failures_rb(log_source=str(tmp_path / "*.csv"), since="2026-11-27T00:00:00")
    rb.check("transaction_failures.log")
    rb.check("transaction_failures.errors_by_sqlstate")
    (m,) = by_check(rb, "log_malformed")
    assert m.severity == "info" and m.title.startswith("1 malformed")
    (bug,) = by_check(rb, "errors_application-bug")
    assert "22012 division_by_zero x2" in bug.title
    assert not rb.report.errors


def test_stderr_log_with_its_prefix_and_with_a_wrong_one(
        quiet: Sandbox, failures_rb: Callable[..., Runbook]) -> None:
    since = since_now()
    raised = inc.failing_statements(quiet.url("app"))
    pattern = str(quiet.log_dir / "*.log")
    # the prefix: the server's
    rb = read_until(failures_rb, lambda rb: logged(log_of(rb)) == raised, log_source=pattern,
                    since=since)
    rb.check("transaction_failures.errors_by_sqlstate")
    assert by_check(rb, "errors_integrity") and not by_check(rb, "log_setup")
    wrong = failures_rb(log_source=pattern, since=since,
                        log_line_prefix="%t [%p]: user=%u,db=%d ")
    wrong.check("transaction_failures.log")
    (f,) = by_check(wrong, "log_setup")
    assert f.severity == "warning" and "%e (SQLSTATE)" in f.title and "%a" in f.title
    assert "another prefix" in f.detail
    assert not wrong.report.errors


def test_default_prefix_still_finds_deadlocks_and_says_to_add_sqlstate(
        quiet: Sandbox, failures_rb: Callable[..., Runbook], tmp_path: Path) -> None:
    """A server with PostgreSQL's default log_line_prefix '%m [%p] ': the sandbox's own stderr
    lines with the user, database, application and SQLSTATE fields taken out."""
    def copied() -> int:
        text = "".join(p.read_text() for p in sorted(quiet.log_dir.glob("*.log")))
        plain.write_text(re.sub(r"(?m)^(\S+ \S+ \S+ \[\d+\] )\S+@\S+ \S* ?[0-9A-Z]{5} ", r"\1",
                                text))
        return text.count("ERROR:  deadlock detected")

    plain = tmp_path / "postgresql.log"
    before = copied()
    since = since_now()
    inc.deadlock(quiet.url("app"))
    inc.failing_statements(quiet.url("app"))
    retry(lambda: copied() > before, timeout=10, interval=0.3)
    time.sleep(0.5)  # the rest of the errors
    copied()
    rb = failures_rb(log_source=str(plain), since=since, log_line_prefix="%m [%p] ")
    rb.check("transaction_failures.log")
    rb.check("transaction_failures.errors_by_sqlstate")
    rb.check("transaction_failures.deadlocks")
    (setup,) = by_check(rb, "log_setup")
    assert setup.severity == "warning" and "%e (SQLSTATE)" in setup.title
    (d,) = by_check(rb, "deadlock")
    assert d.severity == "warning" and "on users" in d.title
    (retry_f,) = by_check(rb, "errors_retryable-transient")
    assert "40P01" in retry_f.title
    assert by_check(rb, "errors_integrity") and not rb.report.errors


def test_auto_reads_a_stderr_only_server_through_sql_and_its_tail(
        quiet: Sandbox, failures_rb: Callable[..., Runbook]) -> None:
    def destination(value: str | None) -> None:
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute(f"ALTER SYSTEM SET log_destination = '{value}'" if value
                      else "ALTER SYSTEM RESET log_destination")
            c.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)

    destination("stderr")
    try:
        since = since_now()
        raised = inc.failing_statements(quiet.url("app"))
        for max_mb in (50, 0.02):  # the whole files, then only their last 20 kB
            # the prefix: the server's
            rb = read_until(failures_rb, lambda rb: logged(log_of(rb)) == raised,
                            log_source="auto", since=since, log_max_mb=max_mb)
            assert "stderr" in log_of(rb).require().source
            assert not by_check(rb, "log_setup") and not rb.report.errors
    finally:
        destination(None)


@pytest.mark.slow
def test_transaction_failures_notebook_headless(quiet: Sandbox, tmp_path: Path) -> None:
    since = since_now()
    inc.failing_statements(quiet.url("app"))
    time.sleep(1)
    proc = run_cli("run", "transaction_failures", "--out", str(tmp_path), "-p", "sample_seconds=1",
                   "-p", f"since={since}", env={"DATABASE_URL": quiet.url("postgres")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "transaction_failures.findings.json").read_text())
    assert not data["errors"]
    assert findings_of(data, "errors_integrity")[0]["severity"] == "warning"
