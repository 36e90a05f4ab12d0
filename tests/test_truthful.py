"""Truthful and safe: never green without evidence, no false alarm on a busy healthy server,
never more privilege than the statement's owner, printed SQL that runs as printed."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox, free_port

from .conftest import by_check, drill_args, findings_of, run_cli

EVIL = """
CREATE OR REPLACE FUNCTION public.shout() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    RAISE EXCEPTION 'shout() ran as superuser %', current_user;
  END IF;
  RETURN 1;
END $$"""


@pytest.mark.pg_stat_statements
def test_plans_run_other_roles_code_only_as_that_role(
        quiet: Sandbox, make_runbook: Callable[..., Runbook]) -> None:
    """Planning folds IMMUTABLE functions: a superuser target must not plan the application's
    statement as superuser (the function would run with privileges its owner lacks)."""
    with psycopg.connect(quiet.url("app"), autocommit=True) as c:
        c.execute(EVIL)

    def batch(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        for _ in range(20):
            conn.execute("SELECT id FROM users WHERE id = shout()")

    try:
        rb = make_runbook("latency", role="postgres", sample_seconds=1.5, plans_top_n=10)
        with incidents.workload(quiet.url("app"), batch):
            rb.check("latency.window")
        rb.check("latency.plans")
        planned = rb.snapshot("plans")
        ours = [p for p in planned if "shout()" in p.query]
        assert ours, [p.query for p in planned]
        for p in ours:
            assert "superuser" not in p.note, p.note
            assert p.user == "app" and (p.plan is not None or "GENERIC_PLAN" in p.note)
    finally:
        with psycopg.connect(quiet.url("app"), autocommit=True) as c:
            c.execute("DROP FUNCTION public.shout()")


@pytest.mark.pg_stat_statements
@pytest.mark.pg(">= 16")  # before 16 normalized texts are not planned at all (GENERIC_PLAN)
def test_a_role_that_may_not_become_the_owner_does_not_plan(
        quiet: Sandbox, make_runbook: Callable[..., Runbook]) -> None:
    rb = make_runbook("latency", role="monitor", sample_seconds=1.5)
    with incidents.workload(quiet.url("app"), incidents.healthy_batch):
        rb.check("latency.window")
    planned = rb.snapshot("plans")
    apps = [p for p in planned if p.user == "app"]
    assert apps and all(p.plan is None and "SET ROLE app" in p.note for p in apps)


QUOTED_SCHEMA = """
CREATE SCHEMA "Sales Data";
CREATE TABLE "Sales Data"."User" (id bigint PRIMARY KEY);
CREATE TABLE "Sales Data"."Post Items" (id bigint PRIMARY KEY,
    "authorId" bigint NOT NULL REFERENCES "Sales Data"."User" (id) ON DELETE CASCADE,
    "Title" text);
INSERT INTO "Sales Data"."User" SELECT g FROM generate_series(1, 200) g;
INSERT INTO "Sales Data"."Post Items" SELECT g, 1 + g % 200, 'x' FROM generate_series(1, 3000) g;
CREATE INDEX "Post Items by Title" ON "Sales Data"."Post Items" ("Title");
CREATE INDEX "Post Items by Title again" ON "Sales Data"."Post Items" ("Title");
ALTER TABLE "Sales Data"."Post Items" SET (autovacuum_enabled = false);
UPDATE "Sales Data"."Post Items" SET "Title" = 'y';
ANALYZE "Sales Data"."Post Items";
"""


@pytest.fixture
def quoted(quiet: Sandbox) -> Iterator[Sandbox]:
    with psycopg.connect(quiet.url("app"), autocommit=True) as c:
        c.execute(QUOTED_SCHEMA)
    try:
        yield quiet
    finally:
        with psycopg.connect(quiet.url("app"), autocommit=True) as c:
            c.execute('DROP SCHEMA "Sales Data" CASCADE')


def test_every_printed_statement_runs_as_printed(
        quoted: Sandbox, make_runbook: Callable[..., Runbook]) -> None:
    """Mixed case and spaces in schema, table, column and index names: the advice the
    engineer pastes (CREATE INDEX, DROP INDEX, ALTER TABLE, VACUUM) executes as printed."""
    def deletes(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with conn.transaction(force_rollback=True):
            conn.execute('DELETE FROM "Sales Data"."User" WHERE id = 7')
        time.sleep(0.05)

    rb = make_runbook("latency", role="app", sample_seconds=1.5, large_table_rows=100,
                      dead_tuples_min=100)
    with incidents.workload(quoted.url("app"), deletes):
        rb.step("window")
    rb.step("tables_and_indexes")
    wanted = {"fk_without_index": '"Sales Data"."Post Items" ("authorId")',
              "duplicate_index": '"Sales Data"."Post Items by Title',
              "dead_tuples": '"Sales Data"."Post Items"'}
    printed = []
    for check, name in wanted.items():
        mine = [f for f in by_check(rb, check) if name in f.remediation]
        assert mine and mine[0].severity == "warning", (check, by_check(rb, check))
        printed.append(mine[0].remediation)
    with psycopg.connect(quoted.url("app"), autocommit=True) as c:
        for text in printed:
            for statement in (s.strip() for s in text.split(";")):
                if statement and not statement.startswith("look for"):
                    c.execute(statement.encode())  # raises if it does not run as printed
        row = c.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'Sales Data' "
                        "AND indexdef LIKE '%\"authorId\"%'").fetchone()
        assert row == (1,)


def signal_root_blocker(quiet: Sandbox, make_runbook: Callable[..., Runbook],
                        action: str) -> tuple[Runbook, int, str]:
    """The latency runbook's action on the lock chain's idle-in-transaction root, allowed:
    the runbook, the root's pid and its state afterwards ('' when gone)."""
    rb = make_runbook("latency", role="postgres", blocker_action=action,
                      blocker_min_wait_s=0.5, allow_actions=True)
    with incidents.lock_chain(quiet.url("app"), "cosnap-backend") as chain:
        time.sleep(1.0)
        rb.step("blocking")
        rb.step("signal_blocker")
        with psycopg.connect(quiet.url("postgres")) as c:
            row = c.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                            (chain.root,)).fetchone()
    return rb, chain.root, str(row[0]) if row else ""


def audited(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_cancel_cannot_help_an_idle_root_and_says_so(
        quiet: Sandbox, make_runbook: Callable[..., Runbook], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    rb, root, state = signal_root_blocker(quiet, make_runbook, "cancel")
    assert state == "idle in transaction", "the root is untouched"
    notes = by_check(rb, "action_cancel")
    assert notes and all("cancelled" not in f.title for f in notes)
    (note,) = [f for f in notes if f"pid {root}" in f.title]
    assert "cancel cannot help" in note.detail and "terminate would end its session" in note.detail
    assert all(a["decision"] != "executed" for a in audited(tmp_path))


def test_terminate_reports_the_sessions_really_gone(
        quiet: Sandbox, make_runbook: Callable[..., Runbook], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    rb, root, state = signal_root_blocker(quiet, make_runbook, "terminate")
    assert state == ""
    (done,) = by_check(rb, "action_terminate")
    assert done.severity == "info" and "1 of 1 sessions ended" in done.title
    (line,) = [a for a in audited(tmp_path) if a["decision"] == "executed"]
    assert line["result"]["effective"] == [root] and line["result"]["unchanged"] == []


def test_latency_on_an_unreachable_server_claims_nothing_ok(tmp_path: Path) -> None:
    port = free_port()
    proc = run_cli("run", "latency", "--out", str(tmp_path), "--target",
                   f"postgresql://app:pw@127.0.0.1:{port}/cosnap", "-p", "connect_timeout_s=1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "latency.findings.json").read_text())
    assert [f["check"] for f in data["findings"]] == ["reachability"]
    assert "average_active_sessions" not in (tmp_path / "metrics.prom").read_text()
    assert data["skipped"], "each check says why it did not run"


def test_a_log_that_could_not_be_read_is_never_green(tmp_path: Path, quiet: Sandbox) -> None:
    for source in ("/bin/ls", str(tmp_path / "nothing-*.csv")):
        out = tmp_path / Path(source).name.replace("*", "x")
        proc = run_cli("run", "transaction_failures", "--out", str(out), "-p",
                       f"log_source={source}", "-p", "sample_seconds=0",
                       env={"DATABASE_URL": quiet.url("monitor")})
        assert proc.returncode == 1, proc.stdout + proc.stderr
        data = json.loads((out / "transaction_failures.findings.json").read_text())
        (setup,) = findings_of(data, "log_setup")
        assert setup["severity"] == "warning" and setup["remediation"]
        assert not findings_of(data, "errors"), "no 'No error logged' without a log"
        summary = json.loads((out / "summary.json").read_text())
        assert summary["runbooks"][0]["skipped"] >= 3


@pytest.mark.slow
@pytest.mark.pg_stat_statements
def test_a_busy_healthy_server_gives_no_warning(quiet: Sandbox, tmp_path: Path,
                                                drill_dir: Path) -> None:
    """pgbench (TPC-B with foreign keys) from 4 clients while every runbook runs: no warning,
    no critical, exit 0. A nightly report that warns every night is switched off."""
    pgbench = shutil.which("pgbench", path=quiet.bindir)
    assert pgbench, f"no pgbench in {quiet.bindir}"
    with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS bench")
        c.execute("CREATE DATABASE bench OWNER app")
    with psycopg.connect(quiet.url("postgres", "bench"), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_stat_statements")
    url = quiet.url("app", "bench")
    subprocess.run([pgbench, "-i", "-I", "dtgvpf", "-s", "2", "-q", url], check=True,
                   capture_output=True)
    with psycopg.connect(url) as c:  # a server in its steady state has its data in memory
        c.execute("SELECT count(*) FROM pgbench_accounts")
    since = dt.datetime.now(dt.UTC).isoformat()  # earlier tests' errors are in the log before
    load = subprocess.Popen([pgbench, "-c", "4", "-j", "2", "-T", "60", "-R", "300", "-n", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(3)
        proc = run_cli("run", "--all", "--out", str(tmp_path), "-p", "sample_seconds=5",
                       "-p", f"since={since}", *drill_args(quiet, tmp_path),
                       env={"DATABASE_URL": quiet.url("postgres", "bench"),
                            "RUNBOOKS_DRILL_DIR": str(drill_dir)}, timeout=300)
    finally:
        load.terminate()
        load.wait(timeout=30)
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS bench WITH (FORCE)")
    loud = []
    for name in ("connectivity", "latency", "transaction_failures", "restore_drill"):
        data = json.loads((tmp_path / f"{name}.findings.json").read_text())
        loud += [(name, f["check"], f["title"]) for f in data["findings"]
                 if f["severity"] in ("warning", "critical")]
        assert not data["errors"], data["errors"]
    assert not loud, loud
    assert proc.returncode == 0, proc.stdout + proc.stderr


class Forwarder:
    """A TCP port that forwards to the sandbox once opened: a server that comes back."""

    def __init__(self, to_port: int) -> None:
        self.port, self.to_port = free_port(), to_port
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.to_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


def test_a_server_that_came_back_is_reached_not_reported_from_a_stale_attempt(
        quiet: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In JupyterLab the first attempt starts when the notebook opens; a server that is back
    by the time the reachability step runs is reachable, not 'unreachable after 1 attempt'."""
    fwd = Forwarder(quiet.port)
    monkeypatch.setenv("RB_BACK_URL", quiet.url("monitor").replace(f":{quiet.port}/",
                                                                   f":{fwd.port}/"))
    rb = Runbook.start("connectivity", {"target": "env:RB_BACK_URL", "connect_attempts": 1,
                                        "findings_path": str(tmp_path / "f.json")})
    try:
        time.sleep(1.5)  # the first attempt was refused and is stale now
        fwd.open()
        rb.step("reachability")
        (f,) = by_check(rb, "reachability")
        assert f.severity == "ok", f.title
    finally:
        rb.close()
        fwd.close()


def test_a_prepared_transaction_is_named_as_the_root_blocker(
        quiet: Sandbox, make_runbook: Callable[..., Runbook]) -> None:
    """pg_blocking_pids() says 0 for a lock held by a prepared transaction: the tree names it
    (gid, owner) instead of saying no session waits for a lock."""
    holder = psycopg.connect(quiet.url("app"), autocommit=True)
    holder.execute("BEGIN")
    holder.execute("UPDATE users SET updated_at = updated_at WHERE id = 3")
    holder.execute("PREPARE TRANSACTION 'payment-42'")
    holder.close()
    waiter = psycopg.connect(quiet.url("app"), autocommit=True)
    thread = threading.Thread(target=_ignore, args=(
        waiter, "UPDATE users SET updated_at = now() WHERE id = 3"), daemon=True)
    thread.start()
    try:
        time.sleep(1.5)
        rb = make_runbook("latency", role="monitor", blocking_warning_s=1)
        rb.step("blocking")
        (f,) = by_check(rb, "blocking")
        assert f.severity == "warning", f.title
        assert "Prepared transaction 'payment-42' (owner app) blocks 1 session" in f.title
        assert "ROLLBACK PREPARED 'payment-42'" in f.remediation
    finally:
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute("ROLLBACK PREPARED 'payment-42'")
        thread.join(timeout=10)
        waiter.close()


def _ignore(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(statement.encode())
