"""Every connectivity check: its incident injected for real (finding and severity asserted) and
a healthy server on which it stays quiet."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import MAX_CONNECTIONS, by_check, retry, skipped

AVAILABLE = MAX_CONNECTIONS - 3  # superuser_reserved_connections = 3



def test_healthy_server_is_quiet(runbook: Callable[..., Runbook]) -> None:
    rb = runbook(idle_in_transaction_warning_s=1, leak_idle_age_s=1, pool_size=10, replicas=2)
    data = rb.run_all()
    assert data["status"] == "ok", data["findings"]
    assert not data["errors"]
    checks = {f["check"] for f in data["findings"]}
    assert {"reachability", "connection_usage", "idle_in_transaction", "leak_suspect",
            "connection_budget"} <= checks
    # the findings file on disk is the same report
    on_disk = json.loads(Path(rb.report.path or "").read_text())
    assert on_disk["status"] == "ok" and on_disk["server_version"]


def test_leak_near_the_limit_is_attributed_to_the_app(quiet: Sandbox,
                                                      runbook: Callable[..., Runbook]) -> None:
    rb = runbook(connection_usage_warning=0.80, connection_usage_critical=0.95)
    with incidents.leaking_app(quiet.url("app"), "leaky-api", idle=22):  # 22/27 = 81 %
        rb.step("reachability")
        rb.check("connectivity.connection_usage")
    (f,) = by_check(rb, "connection_usage")
    assert f.severity == "warning"
    assert "81%" in f.title and "22 of 27" in f.title
    assert "leaky-api holds 22 connections" in f.detail
    assert f.metric is not None and f.metric.value == pytest.approx(22 / AVAILABLE, abs=1e-3)


def test_usage_above_critical_threshold(quiet: Sandbox, runbook: Callable[..., Runbook]) -> None:
    rb = runbook()
    with incidents.leaking_app(quiet.url("app"), "leaky-api", idle=26):  # 26/27 = 96 %
        rb.check("connectivity.connection_usage")
    (f,) = by_check(rb, "connection_usage")
    assert f.severity == "critical"


def test_idle_in_transaction_session_is_reported(quiet: Sandbox,
                                                 runbook: Callable[..., Runbook]) -> None:
    rb = runbook(idle_in_transaction_warning_s=1, idle_in_transaction_critical_s=600)
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0,
                               idle_in_transaction=1) as held:
        time.sleep(1.2)
        rb.step("holders")
        pid = held.pids[0]
    (f,) = by_check(rb, "idle_in_transaction")
    assert f.severity == "warning"
    assert f"pid {pid}" in f.title and "stuck-worker" in f.title
    assert f.evidence[0]["pid"] == pid and f.evidence[0]["query"] == "SELECT 1"


def test_idle_in_transaction_critical_past_second_threshold(
        quiet: Sandbox, runbook: Callable[..., Runbook]) -> None:
    rb = runbook(idle_in_transaction_warning_s=0.2, idle_in_transaction_critical_s=1)
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0, idle_in_transaction=1):
        time.sleep(1.2)
        rb.step("holders")
    (f,) = by_check(rb, "idle_in_transaction")
    assert f.severity == "critical"


def test_leak_suspect_and_pool_overflow(quiet: Sandbox, runbook: Callable[..., Runbook]) -> None:
    rb = runbook(url_params={"connection_limit": "5"}, leak_idle_count=10, leak_idle_age_s=1)
    with incidents.leaking_app(quiet.url("app"), "cosnap-backend", idle=12):
        time.sleep(1.1)
        rb.step("leaks")
    (leak,) = by_check(rb, "leak_suspect")
    assert leak.severity == "warning" and "cosnap-backend" in leak.title
    assert "12 idle" in leak.title
    (pool,) = by_check(rb, "pool_overflow")
    assert pool.severity == "warning" and "about 3 pools" in pool.title


def test_young_idle_connections_are_not_a_leak(quiet: Sandbox,
                                               runbook: Callable[..., Runbook]) -> None:
    rb = runbook(leak_idle_count=10, leak_idle_age_s=600, pool_size=20)
    with incidents.leaking_app(quiet.url("app"), "warm-pool", idle=12):
        rb.step("leaks")
    assert [f.severity for f in by_check(rb, "leak_suspect")] == ["ok"]
    assert [f.severity for f in by_check(rb, "pool_overflow")] == ["ok"]


@pytest.mark.parametrize(("replicas", "limit", "severity"),
                         [(3, 5, "ok"), (3, 8, "warning"), (3, 10, "critical")])
def test_connection_budget(runbook: Callable[..., Runbook], replicas: int, limit: int,
                           severity: str) -> None:
    rb = runbook(url_params={"connection_limit": str(limit)}, replicas=replicas)
    rb.step("budget")
    (f,) = by_check(rb, "connection_budget")
    assert f.severity == severity
    assert f"{replicas} x {limit}" in f.title and f"{AVAILABLE} slots" in f.title


def test_budget_without_pool_size_is_skipped_with_reason(runbook: Callable[..., Runbook]) -> None:
    rb = runbook(replicas=3)
    rb.step("budget")
    assert any("pool size unknown" in r for r in skipped(rb, "connection_budget"))


def test_exhausted_slots_through_admin_target(quiet: Sandbox, runbook: Callable[..., Runbook],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_ADMIN_URL", quiet.url("postgres"))
    with incidents.exhausted(quiet.url("app"), "cosnap-backend") as held:
        assert len(held.conns) == AVAILABLE
        rb = runbook(role="app", admin_target="env:RB_ADMIN_URL")
        data = rb.run_all()
    (f,) = [f for f in data["findings"] if f["check"] == "too_many_clients"]
    assert f["severity"] == "critical" and "53300" in f["title"]
    (usage,) = [f for f in data["findings"] if f["check"] == "connection_usage"]
    assert usage["severity"] == "critical" and "cosnap-backend" in usage["detail"]
    assert not data["errors"]


def test_exhausted_without_admin_target_still_completes(
        quiet: Sandbox, runbook: Callable[..., Runbook]) -> None:
    with incidents.exhausted(quiet.url("app"), "cosnap-backend"):
        rb = runbook(role="app")
        data = rb.run_all()
    assert data["status"] == "critical" and not data["errors"]
    assert any(s["check"] == "admin_target" for s in data["skipped"])


def test_monitor_role_sees_other_roles_sessions(quiet: Sandbox,
                                                runbook: Callable[..., Runbook]) -> None:
    rb = runbook(role="monitor")
    with incidents.leaking_app(quiet.url("app"), "cosnap-backend", idle=3):
        rb.step("usage")
        df = rb.snapshot("activity").sessions
    assert rb.session.facts.current_user == "monitor" and not rb.session.facts.is_superuser
    assert rb.session.facts.has_role("pg_monitor")
    mine = df[df["application"] == "cosnap-backend"]
    assert len(mine) == 3 and set(mine["client_addr"]) == {"127.0.0.1"}
    assert not [s for s in rb.report.skipped if s.check == "visibility"]


def test_app_role_without_pg_monitor_is_told_what_it_cannot_see(
        runbook: Callable[..., Runbook]) -> None:
    rb = runbook(role="app")
    rb.step("usage")
    assert any(s.check == "visibility" and "pg_monitor" in s.reason for s in rb.report.skipped)


def test_session_is_read_only_with_timeouts(runbook: Callable[..., Runbook]) -> None:
    rb = runbook(role="app")
    conn = rb.session.conn
    settings = {r["name"]: r["setting"] for r in conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout',"
        " 'lock_timeout', 'default_transaction_read_only', 'application_name')").fetchall()}
    assert settings == {"statement_timeout": "5000", "lock_timeout": "1000",
                        "default_transaction_read_only": "on",
                        "application_name": "runbooks/connectivity"}
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("DELETE FROM users")


def test_action_preview_changes_nothing_and_is_audited(
        quiet: Sandbox, runbook: Callable[..., Runbook], tmp_path: Path) -> None:
    rb = runbook(terminate_application="stuck-worker", terminate_idle_s=1)
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0,
                               idle_in_transaction=2) as held:
        time.sleep(1.1)
        rb.step("action")
        assert all(not c.closed and c.execute("SELECT 1").fetchone() == (1,) for c in held.conns)
        pids = sorted(held.pids)
    (f,) = by_check(rb, "action_terminate")
    assert f.severity == "info" and "would affect 2 sessions" in f.title
    (line,) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert line["decision"] == "previewed" and sorted(line["pids"]) == pids
    assert "***" in line["target"] or "@" not in line["target"]


def test_action_with_allow_actions_terminates_and_is_audited(
        quiet: Sandbox, runbook: Callable[..., Runbook], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    monkeypatch.setenv("RB_ADMIN_URL", quiet.url("postgres"))
    rb = runbook(admin_target="env:RB_ADMIN_URL", terminate_application="stuck-worker",
                 terminate_idle_s=1, allow_actions=True)
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=1,
                               idle_in_transaction=2) as held:
        time.sleep(1.1)
        idle_pid, *stuck = held.pids
        rb.step("action")

        def gone() -> bool:
            with psycopg.connect(quiet.url("postgres")) as c:
                alive = {r[0] for r in c.execute("SELECT pid FROM pg_stat_activity").fetchall()}
            return not (set(stuck) & alive) and idle_pid in alive

        retry(gone, timeout=5)
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["executed"]
    assert sorted(lines[0]["pids"]) == sorted(stuck)
    (f,) = by_check(rb, "action_terminate")
    assert "2 of 2 sessions ended" in f.title


def test_a_role_that_may_not_signal_is_refused_with_the_missing_privilege(
        quiet: Sandbox, runbook: Callable[..., Runbook], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    rb = runbook(role="monitor", terminate_application="stuck-worker", terminate_idle_s=1,
                 allow_actions=True)
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0,
                               idle_in_transaction=1) as held:
        time.sleep(1.1)
        rb.step("action")
        assert all(c.execute("SELECT 1").fetchone() == (1,) for c in held.conns)
    (f,) = by_check(rb, "action_terminate")
    assert f.severity == "warning" and "refused" in f.title
    assert "pg_signal_backend" in f.detail and "pg_monitor" not in f.detail
    (line,) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert line["decision"] == "refused" and "pg_signal_backend" in line["result"]
