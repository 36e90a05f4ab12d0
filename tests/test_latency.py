"""Every latency check: its incident injected for real (finding and severity asserted) and a
healthy workload on which it stays quiet."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks_lib import latency as lat
from runbooks_lib.findings import Finding
from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import incidents as inc
from runbooks_lib.sandbox.server import Sandbox

from .conftest import by_check, findings_of, retry, run_cli

SMALL = 500  # the demo tables are small: treat 500 rows as large in these tests
# Left out by `make test-matrix` on servers whose binaries do not ship pg_stat_statements.
needs_statements = pytest.mark.pg_stat_statements


@pytest.fixture
def latency_rb(make_runbook: Callable[..., Runbook]) -> Callable[..., Runbook]:
    return functools.partial(make_runbook, "latency", role="postgres")



def severities(rb: Runbook) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in rb.report.findings:
        out.setdefault(f.check, set()).add(f.severity)
    return out


@needs_statements
def test_healthy_workload_is_quiet(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.workload(quiet.url("app"), inc.healthy_batch) as w:
        lat.run_all(rb, 2)
        assert w.rounds > 10
    bad = {c: s for c, s in severities(rb).items() if s & {"warning", "critical"}}
    assert not bad, [f.title for f in rb.report.findings if f.severity in ("warning", "critical")]
    assert not rb.report.errors
    assert by_check(rb, "top_queries") or by_check(rb, "dominant_query")


def missing_index_run(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> tuple[Runbook, Any]:
    """The missing-index incident under load: found in the top queries and the scans; returns
    the runbook and what the plans step showed."""
    rb = latency_rb()
    with inc.missing_index(quiet.url("app")), inc.workload(quiet.url("app"),
                                                           inc.verification_lookups):
        lat.window(rb, 2, SMALL)
        lat.top_queries(rb)
        lat.seq_scans(rb, SMALL)
        out = lat.plans(rb, large_table_rows=SMALL)
    (dom,) = by_check(rb, "dominant_query")
    assert dom.severity == "warning" and "verification_codes" in dom.title
    (scan,) = by_check(rb, "seq_scan")
    assert scan.severity == "warning" and "public.verification_codes" in scan.title
    return rb, out


@needs_statements
@pytest.mark.pg(">= 16")
def test_missing_index_found_in_top_queries_scans_and_plans(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb, _ = missing_index_run(quiet, latency_rb)
    (plan,) = [f for f in by_check(rb, "plan_seq_scan") if "verification_codes" in f.title]
    assert plan.severity == "warning"
    assert "CREATE INDEX CONCURRENTLY ON public.verification_codes (email, scene, code)" \
        in plan.remediation


@needs_statements
@pytest.mark.pg("< 16")
def test_missing_index_before_16_says_generic_plans_need_16(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    _, out = missing_index_run(quiet, latency_rb)
    assert out is not None and out["plan"].str.contains("GENERIC_PLAN").any()


def test_lock_chain_tree_has_root_and_both_waiters_at_their_depth(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.lock_chain(quiet.url("app")) as chain:
        time.sleep(1.1)
        tree = lat.blocking(rb, warning_s=1, critical_s=600)
    assert tree is not None
    depth = dict(zip(tree["pid"], tree["depth"], strict=True))
    assert depth[chain.root] == 0
    assert sorted(depth[p] for p in chain.waiters) == [1, 2]
    (f,) = by_check(rb, "blocking")
    assert f.severity == "warning"
    assert f"pid {chain.root}" in f.title and "blocks 2 session(s)" in f.title
    assert "2 level(s) deep" in f.title and "idle in transaction" in f.title


def test_lock_wait_past_critical_threshold(quiet: Sandbox,
                                           latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.lock_chain(quiet.url("app")):
        time.sleep(1.1)
        lat.blocking(rb, warning_s=0.2, critical_s=1)
    assert [f.severity for f in by_check(rb, "blocking")] == ["critical"]


def test_terminate_root_blocker_preview_then_action(
        quiet: Sandbox, latency_rb: Callable[..., Runbook], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    rb = latency_rb()
    with inc.lock_chain(quiet.url("app")) as chain:
        time.sleep(0.6)
        lat.blocking(rb, warning_s=0.1, critical_s=600)
        lat.signal_blocker(rb, "terminate", min_wait_s=0.5, allow_actions=False)
        with psycopg.connect(quiet.url("postgres")) as c:
            assert c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                             (chain.root,)).fetchone() == (1,)
        lat.signal_blocker(rb, "terminate", min_wait_s=0.5, allow_actions=True)

        def root_gone() -> bool:
            with psycopg.connect(quiet.url("postgres")) as c:
                return c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                 (chain.root,)).fetchone() is None

        retry(root_gone, timeout=5)
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["previewed", "executed"]
    assert lines[1]["pids"] == [chain.root] and lines[1]["action"] == "terminate"
    assert [f.title for f in by_check(rb, "action_terminate")][-1] == \
        "Action terminate: 1 of 1 sessions ended"


@needs_statements
def test_n_plus_one_is_flagged_with_evidence(quiet: Sandbox,
                                             latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.workload(quiet.url("app"), inc.posts_then_authors, "feed-api"):
        lat.window(rb, 2)
        lat.n_plus_one(rb)
    (f,) = by_check(rb, "n_plus_one")
    assert f.severity == "warning" and "heuristic" in f.title
    assert "FROM users WHERE id = $1" in f.title
    ev = f.evidence[0]
    assert "FROM posts" in ev["parent_statement"]
    assert abs(ev["parent_rows"] - ev["calls"]) <= 0.2 * ev["calls"]


def test_long_query_and_long_transaction(quiet: Sandbox,
                                         latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.long_query(quiet.url("app"), 60) as pid, \
            inc.leaking_app(quiet.url("app"), "batch-job", idle=0, idle_in_transaction=1) as held:
        time.sleep(1.2)
        lat.long_running(rb, query_warning_s=1, query_critical_s=600, transaction_warning_s=1,
                         transaction_critical_s=600)
        idle_pid = held.pids[0]
    (q,) = [f for f in by_check(rb, "long_query") if f"pid {pid}" in f.title]
    assert q.severity == "warning" and "report-job" in q.title and "pg_sleep" in q.detail
    (t,) = [f for f in by_check(rb, "long_transaction") if f"pid {idle_pid}" in f.title]
    assert t.severity == "warning" and "idle in transaction" in t.title


def test_duplicate_and_unused_index(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.duplicate_index(quiet.url("app")):
        lat.duplicate_indexes(rb)
        lat.unused_indexes(rb, min_mb=0)
    (dup,) = by_check(rb, "duplicate_index")
    assert dup.severity == "warning" and "posts_user_id" in dup.title
    assert any("posts_user_id_dup_idx" in f.title for f in by_check(rb, "unused_index"))


def test_invalid_index(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.invalid_index(quiet.url("app")):
        lat.invalid_indexes(rb)
    (f,) = by_check(rb, "invalid_index")
    assert f.severity == "warning" and "posts_user_id_unique_idx" in f.title


def test_fk_without_index(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.fk_without_index(quiet.url("app")):
        lat.fk_without_index(rb)
    (f,) = by_check(rb, "fk_without_index")
    assert f.severity == "warning" and "comments(user_id)" in f.title
    assert "comments_user_id_fkey" in f.title and "users" in f.detail
    assert f.remediation == "CREATE INDEX CONCURRENTLY ON comments (user_id);"


def test_dead_tuples_with_autovacuum_disabled(quiet: Sandbox,
                                              latency_rb: Callable[..., Runbook]) -> None:
    with inc.dead_tuples(quiet.url("app"), "comments"):
        def found() -> Finding | None:
            rb = latency_rb()
            lat.dead_tuples(rb, ratio_warning=0.2, min_dead=1000)
            hits = [f for f in by_check(rb, "dead_tuples") if "public.comments" in f.title]
            return hits[0] if hits else None

        f = retry(found, timeout=10, interval=0.5)
    assert f is not None
    assert f.severity == "warning" and "autovacuum is disabled" in f.title
    assert "RESET (autovacuum_enabled)" in f.remediation


def test_cache_hit_ratio_drops_with_disk_reads(quiet: Sandbox,
                                               latency_rb: Callable[..., Runbook]) -> None:
    def measured() -> Finding:
        rb = latency_rb()
        lat.cache_hit(rb, warning=0.9999, min_blocks=1000)
        (f,) = by_check(rb, "cache_hit")
        assert f.evidence and f.evidence[0]["table"] == "cold_archive", f.evidence
        return f

    with inc.cold_reads(quiet.url("app")):
        # Before 15 the stats collector counts the scans' reads a moment later: ask again.
        f = retry(measured, timeout=10, interval=0.5)
    assert f.severity == "warning" and f.metric is not None
    assert f.metric.value is not None and f.metric.value < 0.9999


def test_xid_age_thresholds(latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    lat.xid_age(rb)
    lat.xid_age(rb, warning=1e-9, critical=0.75)
    assert [f.severity for f in by_check(rb, "xid_age")] == ["ok", "warning"]


@needs_statements
def test_slow_share_from_the_server_log(quiet: Sandbox,
                                        latency_rb: Callable[..., Runbook]) -> None:
    def slow_and_fast(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT pg_sleep(0.3)")
        for _ in range(3):
            conn.execute("SELECT 1")

    rb = latency_rb()
    with inc.workload(quiet.url("app"), slow_and_fast, "slow-api"):
        lat.window(rb, 2)
    time.sleep(0.5)  # the logging collector writes asynchronously
    out = lat.slow_share(rb, "auto", slow_query_ms=250, slow_query_share_warning=0.10)
    assert out is not None and "server log directory" in out["source"]
    (f,) = by_check(rb, "slow_query_share")
    assert f.severity == "warning", f.title
    assert f.metric is not None and 0.15 < float(f.metric.value or 0) < 0.35  # ~1 in 4 calls


def test_p95_when_every_statement_is_logged_read_from_files(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    """The same p95 and count from the csvlog, jsonlog and stderr files of one workload."""
    with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
        c.execute("ALTER DATABASE cosnap SET log_min_duration_statement = 0")
    outs = {}
    try:
        rb = latency_rb()
        with inc.workload(quiet.url("app"), inc.healthy_batch):
            lat.window(rb, 1.5)
        time.sleep(0.5)
        for kind in ["*.csv", "*.log"] + (["*.json"] if quiet.major >= 15 else []):
            outs[kind] = lat.slow_share(rb, str(quiet.log_dir / kind), slow_query_ms=2000,
                                        p95_target_ms=0.001)
    finally:
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute("ALTER DATABASE cosnap RESET log_min_duration_statement")
    first = outs["*.csv"]
    assert first is not None and first["logged"] > 50 and first["source"].endswith("*.csv")
    for kind, out in outs.items():
        assert out is not None and (out["logged"], out["p95_ms"]) == (first["logged"],
                                                                      first["p95_ms"]), kind
    p95 = by_check(rb, "p95_latency")
    assert len(p95) == len(outs) and p95[0].severity == "warning"
    assert "p95 statement time" in p95[0].title


def test_durations_not_logged_is_not_guessed(quiet: Sandbox,
                                             latency_rb: Callable[..., Runbook]) -> None:
    with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
        c.execute("ALTER DATABASE cosnap SET log_min_duration_statement = -1")
    try:
        rb = latency_rb()
        lat.slow_share(rb)
    finally:
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute("ALTER DATABASE cosnap RESET log_min_duration_statement")
    assert not by_check(rb, "slow_query_share")
    assert any(s.check == "slow_share" and "not measurable" in s.reason for s in rb.report.skipped)


def test_monitor_role_degrades_with_reasons(quiet: Sandbox,
                                            latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(role="monitor")
    with inc.lock_chain(quiet.url("app")) as chain:
        lat.window(rb, 1)
        lat.top_queries(rb)
        lat.slow_share(rb)
        tree = lat.blocking(rb, warning_s=0, critical_s=600)
        lat.tables_and_indexes(rb)
    assert not rb.report.errors
    assert tree is not None and chain.root in set(tree["pid"])
    assert any(s.check == "slow_share" and "pg_read_server_files" in s.reason
               for s in rb.report.skipped)


def test_without_pg_stat_statements_skips_and_falls_back(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(database="postgres")  # the extension exists only in cosnap
    with inc.long_query(quiet.url("app"), 30):
        lat.window(rb, 1)
        lat.top_queries(rb)
        lat.n_plus_one(rb)
    reasons = {s.check: s.reason for s in rb.report.skipped}
    assert "CREATE EXTENSION pg_stat_statements" in reasons["top_queries"]
    assert "n_plus_one" in reasons and not rb.report.errors


def test_catalog_checks_do_not_wait_behind_an_exclusive_lock(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    locker = psycopg.connect(quiet.url("app"))
    locker.execute("LOCK TABLE comments IN ACCESS EXCLUSIVE MODE")
    try:
        rb = latency_rb()
        started = time.monotonic()
        lat.tables_and_indexes(rb)
        elapsed = time.monotonic() - started
    finally:
        locker.rollback()
        locker.close()
    assert not rb.report.errors and not [s for s in rb.report.skipped if "locked" in s.reason]
    assert elapsed < 5, "no catalog query may wait behind the lock"


@pytest.mark.slow
def test_latency_notebook_headless(quiet: Sandbox, tmp_path: Path) -> None:
    with inc.missing_index(quiet.url("app")), inc.workload(quiet.url("app"),
                                                           inc.verification_lookups):
        proc = run_cli("run", "latency", "--out", str(tmp_path), "-p", "sample_seconds=2",
                       "-p", f"large_table_rows={SMALL}",
                       env={"DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    data = json.loads((tmp_path / "latency.findings.json").read_text())
    assert not data["errors"], data["errors"]
    assert findings_of(data, "seq_scan")[0]["severity"] == "warning"
    assert (tmp_path / "latency.html").exists()


@needs_statements
def test_other_roles_hidden_statements_are_folded_per_role(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(role="app")  # no pg_read_all_stats: other roles' texts are hidden

    def admin_batch(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT count(*) FROM pg_class")
        conn.execute("SELECT count(*) FROM pg_attribute")

    with inc.workload(quiet.url("postgres"), admin_batch, "admin-script") as w:
        before = w.rounds
        lat.window(rb, 1)
        after = w.rounds
        shown = lat.top_queries(rb)
    assert shown is not None
    folded = shown[shown["query"].str.startswith("<insufficient privilege>")]
    assert not folded.duplicated(["user", "database"]).any()
    admin = folded[(folded["user"] == "postgres") & (folded["database"] == "cosnap")]
    assert list(admin["query"]) == ["<insufficient privilege>: statements of role postgres "
                                    "(grant pg_read_all_stats to see them)"]
    calls = int(admin["calls"].iloc[0])
    # two statements per round; a many-to-many merge on NULL queryids would multiply this
    assert after - before <= calls <= 2 * (after - before + 2)


@needs_statements
def test_a_statement_also_run_nested_is_counted_once(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    """With pg_stat_statements.track = all, the same statement run inside a function gets a
    second entry (toplevel = false) on 14+: the window shows one row with both counts."""
    with psycopg.connect(quiet.url("app"), autocommit=True) as c:
        c.execute("CREATE OR REPLACE FUNCTION nested_lookup() RETURNS bigint LANGUAGE sql AS "
                  "'SELECT count(*) FROM posts WHERE user_id = 3'")

    def batch(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT count(*) FROM posts WHERE user_id = 3")
        conn.execute("SELECT nested_lookup()")

    rb = latency_rb()
    try:
        with inc.workload(quiet.url("app"), batch, "nested-app"):
            lat.window(rb, 1)
        shown = lat.top_queries(rb)
    finally:
        with psycopg.connect(quiet.url("app"), autocommit=True) as c:
            c.execute("DROP FUNCTION IF EXISTS nested_lookup()")
    assert shown is not None
    rows = shown[shown["query"].str.contains("FROM posts WHERE user_id = ", regex=False)]
    assert len(rows) == 1
