"""The PITR drill on the real sandbox: a target between two markers recovered exactly, nothing
left behind (marker table, slot, server, directories), and unmet() naming the exact fix."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runbooks_lib.drill import pitr, tools
from runbooks_lib.errors import DrillError
from runbooks_lib.sandbox.server import Sandbox

from .conftest import make_base_dir, retry

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


def _one(sb: Sandbox, query: str) -> object:
    with psycopg.connect(sb.url("postgres")) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def _processes_under(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _leftovers(sb: Sandbox, workdir: Path) -> list[str]:
    """What a drill in WORKDIR could have left: the marker table, its slot, a server, files."""
    left = []
    if _one(sb, f"SELECT to_regclass('public.{pitr.MARKER}')") is not None:
        left.append("marker table")
    if _one(sb, "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'runbooks_pitr%'"):
        left.append("replication slot")
    left += _processes_under(workdir)
    left += [str(p) for p in workdir.iterdir()] if workdir.exists() else []
    return left


@pytest.fixture(scope="module")
def drill(sandbox: Sandbox) -> Iterator[tuple[pitr.PitrResult, list[str], Path]]:
    """One full drill as the superuser, shared by the tests that look at its result."""
    base = make_base_dir("pg-runbooks-pitr-")
    lines: list[str] = []
    try:
        result = pitr.run_drill(sandbox.url("postgres"), base / "work", sandbox.bindir,
                                say=lines.append, timeout=300)
        yield result, lines, base / "work"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_target_recovered_exactly(drill: tuple[pitr.PitrResult, list[str], Path]) -> None:
    result, lines, _ = drill
    assert result.before_present, lines
    assert not result.after_present, lines
    assert result.ok
    assert result.last_commit is not None and result.last_commit <= result.target_time
    assert 0 <= result.rpo_seconds < 5
    assert result.rpo_seconds == (result.target_time - result.last_commit).total_seconds()


def test_phases_timed_and_said(drill: tuple[pitr.PitrResult, list[str], Path]) -> None:
    result, lines, workdir = drill
    for phase in ("base_backup_seconds", "verify_seconds", "copy_seconds", "replay_seconds",
                  "wal_seconds"):
        assert getattr(result, phase) > 0, phase
    assert result.rto_seconds == pytest.approx(
        result.copy_seconds + result.replay_seconds + (result.combine_seconds or 0))
    assert result.backup_bytes > 5_000_000
    assert all(line.startswith("pitr: ") for line in lines), lines
    assert any("base backup" in line and " MB in " in line for line in lines), lines
    assert any("recovered exactly to the target" in line for line in lines), lines
    assert f"table public.{pitr.MARKER} (database cosnap)" in result.created
    for name in ("base", "wal", "restored"):
        assert f"directory {workdir / name}" in result.created
    assert result.kept is None


def test_nothing_left_behind(sandbox: Sandbox,
                             drill: tuple[pitr.PitrResult, list[str], Path]) -> None:
    _, _, workdir = drill
    assert _leftovers(sandbox, workdir) == []
    assert not workdir.exists()  # the drill made it, the drill removed it


@pytest.mark.pg(">= 17")
def test_incremental_backup_used_on_17(drill: tuple[pitr.PitrResult, list[str], Path]) -> None:
    result, lines, workdir = drill
    assert result.incremental == "used", lines
    assert result.incremental_seconds is not None and result.combine_seconds is not None
    assert f"directory {workdir / 'incr'}" in result.created


@pytest.mark.pg("< 17")
def test_incremental_skipped_before_17(sandbox: Sandbox,
                                       drill: tuple[pitr.PitrResult, list[str], Path]) -> None:
    result, _, _ = drill
    assert result.incremental == (f"skipped: PostgreSQL {sandbox.major} has no incremental "
                                  "backups (17+)")
    assert result.incremental_seconds is None and result.combine_seconds is None


def test_failed_drill_cleans_up(sandbox: Sandbox) -> None:
    """Out of time right after the marker table and slot exist: both go, and every directory."""
    base = make_base_dir("pg-runbooks-pitr-")
    lines: list[str] = []
    try:
        with pytest.raises(DrillError, match="time|did not finish"):
            pitr.run_drill(sandbox.url("postgres"), base / "work", sandbox.bindir, timeout=0.01,
                           say=lines.append)
        assert any("marker table" in line and "created" in line for line in lines), lines
        retry(lambda: _leftovers(sandbox, base / "work") == [], timeout=10)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_lost_wal_fails_the_drill(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """WAL gone between fetching and recovery (a lost archive): the server's own refusal to
    stop short of the target is the drill's error, never a copy of the backup reported as ok."""
    fetch = pitr._Drill.fetch_wal

    def lose_wal(self: pitr._Drill, last: Path, endpos: str) -> Path:
        wal = fetch(self, last, endpos)
        for segment in wal.iterdir():
            segment.unlink()
        return wal

    monkeypatch.setattr(pitr._Drill, "fetch_wal", lose_wal)
    base = make_base_dir("pg-runbooks-pitr-")
    try:
        with pytest.raises(DrillError, match="recovery ended before configured recovery target"):
            pitr.run_drill(sandbox.url("postgres"), base / "work", sandbox.bindir,
                           say=lambda _: None)
        assert _leftovers(sandbox, base / "work") == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unmet_none_for_a_superuser(sandbox: Sandbox) -> None:
    assert pitr.unmet(sandbox.url("postgres"), sandbox.bindir) is None


def test_unmet_names_replication_for_the_app_role(sandbox: Sandbox, tmp_path: Path) -> None:
    reason = pitr.unmet(sandbox.url("app"), sandbox.bindir)
    assert reason is not None
    assert 'lacks REPLICATION' in reason and 'ALTER ROLE "app" REPLICATION' in reason
    assert sandbox.passwords["app"] not in reason
    with pytest.raises(DrillError, match="REPLICATION"):
        pitr.run_drill(sandbox.url("app"), tmp_path / "w", sandbox.bindir)
    assert _one(sandbox, f"SELECT to_regclass('public.{pitr.MARKER}')") is None


def test_unmet_names_the_major_for_other_binaries(sandbox: Sandbox, tmp_path: Path) -> None:
    embedded = tools.find("postgres").parent
    other = next((b for b in (DEBIAN_15, embedded) if (b / "postgres").exists()
                  and tools.major(b / "postgres") != sandbox.major), None)
    if other is None:
        pytest.skip("no PostgreSQL binaries of another major version on this machine")
    reason = pitr.unmet(sandbox.url("postgres"), other)
    assert reason is not None
    assert f"needs PostgreSQL {sandbox.major} server binaries" in reason
    assert f"postgres is {tools.major(other / 'postgres')}" in reason and "bindir" in reason
    empty = pitr.unmet(sandbox.url("postgres"), tmp_path)
    assert empty is not None and "pg_basebackup missing" in empty


def test_unmet_names_a_leftover_marker_table(sandbox: Sandbox) -> None:
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.{pitr.MARKER} (id int)")
        try:
            reason = pitr.unmet(sandbox.url("postgres"), sandbox.bindir)
        finally:
            conn.execute(f"DROP TABLE public.{pitr.MARKER}")
    assert reason is not None and f'DROP TABLE "public"."{pitr.MARKER}"' in reason


def _refused(url: str, bindir: str) -> str:
    reason = pitr.unmet(url, bindir) or ""
    return reason if "refuses" in reason else ""


def test_unmet_names_pg_hba_when_replication_is_refused(sandbox: Sandbox) -> None:
    """A role with REPLICATION that pg_hba.conf turns away on the replication pseudo-database."""
    hba = sandbox.datadir / "pg_hba.conf"
    original = hba.read_text()
    role, password = "rb_pitr_norepl", "rb-pitr-secret-pw"
    url = sandbox.url("postgres").replace(f"postgres:{sandbox.passwords['postgres']}",
                                          f"{role}:{password}")
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}'")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        try:
            with hba.open("w") as fh:  # in place: the file keeps its owner
                fh.write(f"host replication {role} 127.0.0.1/32 reject\n{original}")
            conn.execute("SELECT pg_reload_conf()")
            reason = retry(lambda: _refused(url, sandbox.bindir), timeout=10)  # the reload is asynchronous
        finally:
            hba.write_text(original)
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
            conn.execute(f"DROP ROLE {role}")
    assert "refuses a replication connection" in reason and "pg_hba.conf" in reason
    assert password not in reason and os.linesep not in reason
