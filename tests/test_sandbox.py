"""The embedded server's lifecycle, and the demo built on it."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import psycopg
import pytest

from runbooks_lib import demo
from runbooks_lib.sandbox import server
from runbooks_lib.sandbox.server import Sandbox

from .conftest import make_base_dir, run_cli

pytestmark = pytest.mark.slow


def postgres_processes(datadir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "postgres" in cmd and str(datadir) in cmd:
                pids.append(int(proc.name))
    return pids


def test_start_is_idempotent_and_stop_leaves_no_process() -> None:
    base = make_base_dir("pg-runbooks-lifecycle-")
    try:
        sb = server.start(base, max_connections=20)
        again = server.start(base, max_connections=20)
        assert (again.port, again.passwords) == (sb.port, sb.passwords)
        assert postgres_processes(sb.datadir)
        assert oct((base / "sandbox.json").stat().st_mode)[-3:] == "600"
        with psycopg.connect(sb.url("postgres", "postgres")) as c:
            settings: dict[str, str] = dict(c.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses',"
                " 'max_connections', 'logging_collector', 'log_lock_waits',"
                " 'shared_preload_libraries')").fetchall())
            assert settings == {"listen_addresses": "127.0.0.1", "max_connections": "20",
                                "logging_collector": "on", "log_lock_waits": "on",
                                "shared_preload_libraries": "pg_stat_statements"}
        restarted = server.start(base, max_connections=25)
        with psycopg.connect(restarted.url("postgres", "postgres")) as c:
            assert c.execute("SHOW max_connections").fetchone() == ("25",)
        assert server.stop(base) is True
        assert server.stop(base) is False
        assert not postgres_processes(sb.datadir)
        assert server.status(base)[1] is False
    finally:
        server.stop(base, remove=True)
        shutil.rmtree(base, ignore_errors=True)


def test_roles_and_demo_schema(sandbox: Sandbox) -> None:
    with psycopg.connect(sandbox.url("postgres")) as c:
        tables = {r[0] for r in c.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"users", "posts", "comments", "post_likes", "comment_likes", "subscriptions",
                "payments", "refresh_tokens", "verification_codes"} <= tables
        fks = c.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()
        assert fks == (11,)
        ext = c.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
        assert ext.fetchone() == (1,)
        monitor = c.execute("SELECT pg_has_role('monitor', 'pg_monitor', 'USAGE'),"
                            " (SELECT rolsuper FROM pg_roles WHERE rolname = 'monitor')")
        assert monitor.fetchone() == (True, False)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(sandbox.url("app", password="wrong"))


def test_sandbox_cli_status_and_url(sandbox: Sandbox) -> None:
    proc = run_cli("sandbox", "status", "--dir", sandbox.base)
    assert proc.returncode == 0 and "running" in proc.stdout
    proc = run_cli("sandbox", "url", "--dir", sandbox.base, "--role", "monitor")
    assert proc.stdout.strip() == sandbox.url("monitor")


def test_demo_finds_every_injected_incident(tmp_path: Path) -> None:
    base = make_base_dir("pg-runbooks-demo-")
    try:
        proc = run_cli("demo", "--out", str(tmp_path / "out"),
                       env={"RUNBOOKS_SANDBOX_DIR": str(base)}, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "demo ok" in proc.stdout and "connectivity.html" in proc.stdout
        assert not demo.missed(tmp_path / "out", demo.EXPECTED)
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["runbooks"][0]["status"] == "warning"
    finally:
        server.stop(base, remove=True)


def test_demo_self_check_reports_what_a_healthy_run_misses(quiet: Sandbox, tmp_path: Path) -> None:
    """Every runbook runs (each findings file exists), so each expectation is missed for the
    right reason: the healthy server has no incident."""
    now = dt.datetime.now(dt.UTC).isoformat()  # earlier tests' errors are in the log before it
    proc = run_cli("run", "--all", "--out", str(tmp_path), "-p", "sample_seconds=1",
                   "-p", f"since={now}", env={"DATABASE_URL": quiet.url("postgres")})
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    problems = demo.missed(tmp_path, demo.EXPECTED)
    assert len(problems) == len(demo.EXPECTED), problems
    assert all(": missed " in p for p in problems), problems
    assert "missed connection_usage >= warning naming cosnap-backend" in problems[0]


def test_demo_expectations_agree_with_the_registry() -> None:
    """Each expectation names a finding that a check of its runbook emits, every runbook has
    one, and the demo's parameters are valid for the runbooks it runs."""
    from runbooks_lib import params, registry

    emitted = {name: {e for c in registry.checks_of(registry.runbook(name)) for e in c.emits}
               for name in registry.runbooks()}
    for e in demo.EXPECTED:
        assert e.check in emitted[e.runbook], e
    assert {e.runbook for e in demo.EXPECTED} == set(registry.runbooks())
    params.validate(list(registry.runbooks()), {**demo.PARAMS, "log_source": "/x/*.csv"})
