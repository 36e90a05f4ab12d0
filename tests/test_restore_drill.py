"""The restore-drill runbook on the sandbox: real backups, real restores, real files.

Each test runs the runbook's steps as the notebook does (`rb.step`), with backups written to a
temporary backup_dir and scratch databases on the sandbox itself (its `postgres` database as the
restore target: the source is `cosnap`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks_lib.drill import archive, keys, restore
from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox.server import Sandbox
from runbooks_lib.target import resolve

from .conftest import by_check, retry, skipped

pytestmark = pytest.mark.slow
STEPS = ("inventory", "backup", "integrity", "restore", "verify", "one_table", "pitr", "cleanup")


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RB_TEST_BACKUP_KEY", keys.generate())
    return "RB_TEST_BACKUP_KEY"


@pytest.fixture
def drill(make_runbook: Callable[..., Runbook], quiet: Sandbox, tmp_path: Path,
          key_env: str, monkeypatch: pytest.MonkeyPatch, drill_dir: Path) -> Callable[..., Runbook]:
    monkeypatch.setenv("RB_TEST_RESTORE", quiet.url("postgres", "postgres"))
    monkeypatch.setenv("RUNBOOKS_DRILL_DIR", str(drill_dir))

    def make(**params: Any) -> Runbook:
        params.setdefault("backup_dir", str(tmp_path / "backups"))
        params.setdefault("restore_target", "env:RB_TEST_RESTORE")
        params.setdefault("encryption_key_env", key_env)
        params.setdefault("pitr", False)
        params.setdefault("bindir", os.environ.get("RUNBOOKS_TEST_BINDIR", ""))
        return make_runbook("restore_drill", "postgres", **params)
    return make


def run(rb: Runbook, steps: tuple[str, ...] = STEPS) -> Runbook:
    for step in steps:
        rb.step(step)
    return rb


def databases(sb: Sandbox) -> set[str]:
    with psycopg.connect(sb.url("postgres", "postgres")) as c:
        return {r[0] for r in c.execute("SELECT datname FROM pg_database")}


def one(rb: Runbook, check: str) -> Any:
    """The first finding of CHECK (the others, and why, in the message when it is missing)."""
    found = by_check(rb, check)
    assert found, "\n".join([f"no {check} among:"] + [
        f"{f.severity} {f.check}: {f.title}: {f.detail}" for f in rb.report.findings]
        + [f"skipped {s.check}: {s.reason}" for s in rb.report.skipped]
        + [f"error {e.step}: {e.message}" for e in rb.report.errors])
    return found[0]


def severity(rb: Runbook, check: str) -> tuple[str, str]:
    f = one(rb, check)
    return f.severity, f"{f.title}: {f.detail}"


def test_a_full_drill_verifies_every_table_and_cleans_up(drill: Callable[..., Runbook],
                                                         quiet: Sandbox) -> None:
    before = databases(quiet)
    rb = run(drill(pitr=True))
    assert not rb.report.errors, rb.report.errors
    assert severity(rb, "backup")[0] == "ok", severity(rb, "backup")
    assert severity(rb, "backup_integrity")[0] == "ok", severity(rb, "backup_integrity")
    assert one(rb, "restore").metric.name == "rto_seconds"
    verified = one(rb, "restore_verify")
    assert verified.severity == "ok" and verified.metric.name == "tables_verified"
    assert verified.metric.value >= 8  # the demo app's tables
    if by_check(rb, "restore_amcheck"):
        assert severity(rb, "restore_amcheck")[0] == "ok", severity(rb, "restore_amcheck")
    else:  # builds without contrib (the 13, 14 and 16 wheels) have no amcheck: said, not ok
        assert "amcheck" in " ".join(skipped(rb, "restore_amcheck")), rb.report.skipped
    assert severity(rb, "restore_table")[0] == "ok", severity(rb, "restore_table")
    assert severity(rb, "restore_cleanup")[0] == "ok", severity(rb, "restore_cleanup")
    assert databases(quiet) == before  # the scratch databases are gone
    pitr = by_check(rb, "restore_pitr")
    if pitr:  # the sandbox's binaries: the drill ran (elsewhere it says why not)
        assert pitr[0].severity == "ok", pitr
        assert one(rb, "restore_rpo").metric.name == "rpo_seconds"
    else:
        assert skipped(rb, "pitr"), rb.report.skipped
    with psycopg.connect(quiet.url("postgres")) as c:
        row = c.execute("SELECT to_regclass('runbooks_drill_marker')").fetchone()
        assert row is not None and row[0] is None


@pytest.fixture
def writer(quiet: Sandbox) -> Iterator[threading.Event]:
    """The app updating posts without pause while the drill runs."""
    stop = threading.Event()

    def loop() -> None:
        with psycopg.connect(quiet.url("app"), autocommit=True) as c:
            while not stop.is_set():
                c.execute("UPDATE posts SET title = title || '.' WHERE id = "
                          "(SELECT min(id) FROM posts)")
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield stop
    stop.set()
    t.join()


def test_writes_during_the_dump_still_verify(drill: Callable[..., Runbook],
                                             writer: threading.Event) -> None:
    rb = run(drill(), ("backup", "integrity", "restore", "verify", "cleanup"))
    assert one(rb, "restore_verify").severity == "ok", by_check(rb, "restore_verify")


def test_an_altered_copy_is_caught_table_by_table(drill: Callable[..., Runbook],
                                                 quiet: Sandbox) -> None:
    rb = run(drill(), ("backup", "integrity", "restore"))
    scratch = rb.snapshot("restored").database
    with psycopg.connect(quiet.url("postgres", scratch), autocommit=True) as c:
        c.execute("UPDATE comments SET body = 'altered' WHERE id = (SELECT min(id) FROM comments)")
        c.execute("DELETE FROM post_likes WHERE ctid = (SELECT min(ctid) FROM post_likes)")
    run(rb, ("verify", "cleanup"))
    bad = [f for f in by_check(rb, "restore_verify") if f.severity == "critical"]
    text = " ".join(f.title for f in bad)
    assert '"public"."comments"' in text and '"public"."post_likes"' in text, bad


def test_a_flipped_byte_is_critical_and_nothing_is_restored(drill: Callable[..., Runbook],
                                                            quiet: Sandbox, tmp_path: Path) -> None:
    run(drill(), ("backup", "cleanup"))
    sets = sorted(p for p in (tmp_path / "backups").iterdir() if p.is_dir())
    victim = max((f for f in sets[-1].rglob("*") if f.is_file() and f.name != "manifest.json"
                  and f.name != "fingerprint.json"), key=lambda f: f.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    before = databases(quiet)
    rb = run(drill(take_backup=False), ("backup", "integrity", "restore", "verify", "cleanup"))
    bad = [f for f in by_check(rb, "backup_integrity") if f.severity == "critical"]
    assert bad and victim.name.removesuffix(".tink") in bad[0].title, by_check(rb, "backup_integrity")
    assert skipped(rb, "restore") and "integrity" in skipped(rb, "restore")[0]
    assert databases(quiet) == before


def test_a_wrong_key_is_critical(drill: Callable[..., Runbook], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    run(drill(), ("backup", "cleanup"))
    monkeypatch.setenv("RB_OTHER_KEY", keys.generate())
    rb = run(drill(take_backup=False, encryption_key_env="RB_OTHER_KEY"),
             ("backup", "integrity", "restore", "cleanup"))
    bad = [f for f in by_check(rb, "backup_integrity") if f.severity == "critical"]
    assert bad, by_check(rb, "backup_integrity")
    assert skipped(rb, "restore")


def test_the_source_database_as_restore_target_is_refused(drill: Callable[..., Runbook],
                                                          quiet: Sandbox,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TEST_RESTORE", quiet.url("postgres"))  # cosnap itself
    before = databases(quiet)
    rb = run(drill(), ("backup", "integrity", "restore", "cleanup"))
    refused = one(rb, "restore_refused")
    assert refused.severity == "critical" and "source database cosnap" in refused.detail
    assert databases(quiet) == before


def test_an_existing_scratch_name_is_refused(drill: Callable[..., Runbook],
                                             quiet: Sandbox) -> None:
    rb = run(drill(scratch_name="cosnap"), ("backup", "restore", "cleanup"))
    assert one(rb, "restore_refused").severity == "critical"
    with psycopg.connect(quiet.url("postgres", "postgres"), autocommit=True) as c:
        c.execute("CREATE DATABASE drill_taken")
    try:
        rb = run(drill(scratch_name="drill_taken"), ("backup", "restore", "cleanup"))
        assert "already exists" in one(rb, "restore_refused").detail
        assert "drill_taken" in databases(quiet)  # not ours: never dropped
    finally:
        with psycopg.connect(quiet.url("postgres", "postgres"), autocommit=True) as c:
            c.execute("DROP DATABASE drill_taken")


def test_a_legacy_openssl_backup_restores_but_is_not_authenticated(
        drill: Callable[..., Runbook], quiet: Sandbox, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks_lib.drill import archive

    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY", "correct horse battery staple")
    (tmp_path / "backups").mkdir()
    archive.write_legacy(quiet.url("postgres"), tmp_path / "backups" /
                         "cosnap-2025-01-01T02-00-00-daily.dump.gz.enc",
                         passphrase="correct horse battery staple",
                         bindir=os.environ.get("RUNBOOKS_TEST_BINDIR") or None)
    rb = run(drill(take_backup=False), ("inventory", "backup", "integrity", "restore", "verify",
                                         "cleanup"))
    integrity = by_check(rb, "backup_integrity")
    assert any(f.severity == "warning" and "not authenticated" in f.title for f in integrity)
    assert one(rb, "restore").metric.name == "rto_seconds"


def test_unreachable_restore_target_is_a_clear_refusal(drill: Callable[..., Runbook],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RB_TEST_RESTORE", "postgresql://x:secretpw@127.0.0.1:1/postgres")
    rb = run(drill(), ("backup", "restore", "cleanup"))
    refused = one(rb, "restore_refused")
    assert "secretpw" not in refused.detail and "cannot reach" in refused.detail



def test_an_interrupted_drill_is_cleaned_up_by_the_next(drill: Callable[..., Runbook],
                                                         quiet: Sandbox, drill_dir: Path) -> None:
    """A drill killed half-way (SIGTERM, a reboot) left a decrypted staging directory, a
    scratch database and the marker table; its log says so and its process is gone."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    log = restore.DrillLog(drill_dir / "drill_killed" / "drill.jsonl")
    log.record("started", "drill", str(dead.pid))
    staging = drill_dir / "drill_killed" / "staging"
    staging.mkdir()
    (staging / "toc.dat").write_text("plaintext of the backup")
    log.record("created", "directory", str(staging))
    with psycopg.connect(quiet.url("postgres", "postgres"), autocommit=True) as c:
        c.execute("CREATE DATABASE drill_killed")
    log.record("created", "database", "drill_killed",
               resolve(quiet.url("postgres", "postgres")).masked())
    with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
        c.execute("CREATE TABLE runbooks_drill_marker (id int)")
    log.record("created", "table", "runbooks_drill_marker", resolve(quiet.url("postgres")).masked())
    rb = run(drill(), ("backup", "cleanup"))
    left = one(rb, "drill_leftovers")
    assert left.severity == "warning" and "drill_killed" in left.detail, left
    assert not staging.exists()
    assert "drill_killed" not in databases(quiet)
    with psycopg.connect(quiet.url("postgres")) as c:
        row = c.execute("SELECT to_regclass('runbooks_drill_marker')").fetchone()
        assert row is not None and row[0] is None


def test_a_drill_stopped_by_sigterm_writes_what_it_found_and_leaves_nothing(
        quiet: Sandbox, tmp_path: Path, drill_dir: Path, key_env: str) -> None:
    """cron or systemd stops a job with SIGTERM: the partial report is written (status could
    not run), and the decrypted staging and scratch databases are removed at once."""
    before = databases(quiet)
    env = {**os.environ, "DATABASE_URL": quiet.url("postgres"), "RUNBOOKS_DRILL_DIR": str(drill_dir)}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbooks_lib", "run", "restore_drill", "--out", str(out),
         "-p", f"restore_target={quiet.url('postgres', 'postgres')}",
         "-p", f"backup_dir={tmp_path / 'backups'}", "-p", f"encryption_key_env={key_env}",
         "-p", f"bindir={os.environ.get('RUNBOOKS_TEST_BINDIR', '')}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def restored() -> bool:  # stop it once its scratch database exists: mid-drill
        return any(d.startswith("drill_") for d in databases(quiet) - before)
    retry(restored, timeout=60)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    data = json.loads((out / "restore_drill.findings.json").read_text())
    assert data["status"] == "could not run" and data["errors"][-1]["step"] == "interrupted"
    assert data["findings"] and (out / "restore_drill.html").exists()
    assert (out / "summary.json").exists()
    assert databases(quiet) == before
    assert not list(drill_dir.rglob("staging"))


def test_kept_scratch_databases_are_dropped_as_printed(drill: Callable[..., Runbook],
                                                       quiet: Sandbox) -> None:
    before = databases(quiet)
    rb = run(drill(keep_scratch=True), ("backup", "integrity", "restore", "one_table", "cleanup"))
    kept = one(rb, "restore_cleanup")
    assert kept.severity == "info" and len(databases(quiet) - before) == 2
    with psycopg.connect(quiet.url("postgres", "postgres"), autocommit=True) as c:
        for statement in kept.remediation.split(": ", 1)[1].split(" DROP"):
            c.execute(statement if statement.startswith("DROP") else "DROP" + statement)
    assert databases(quiet) == before


def test_an_existing_encrypted_set_is_verified_from_its_sealed_fingerprint(
        drill: Callable[..., Runbook], tmp_path: Path) -> None:
    run(drill(), ("backup", "cleanup"))
    (set_dir,) = [p for p in (tmp_path / "backups").iterdir() if p.is_dir()]
    plain = (set_dir / "manifest.json").read_text()
    assert json.loads(plain)["fingerprint"] == archive.SEALED
    assert "comments" not in plain  # table names and row counts only in the sealed copy
    rb = run(drill(take_backup=False), ("backup", "integrity", "restore", "verify", "cleanup"))
    assert severity(rb, "restore_verify")[0] == "ok", severity(rb, "restore_verify")
