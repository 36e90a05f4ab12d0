"""Every latency check: its incident injected for real (finding and severity asserted) and a
healthy workload on which it stays quiet."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from runbooks_lib import registry
from runbooks_lib.findings import Finding
from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import incidents as inc
from runbooks_lib.sandbox.server import Sandbox

from .conftest import by_check, findings_of, retry, run_cli, skipped

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


def delta(rb: Runbook) -> pd.DataFrame:
    """The window's statements (what the top statements table shows)."""
    shown: pd.DataFrame = rb.snapshot("window").delta
    return shown


@needs_statements
def test_healthy_workload_is_quiet(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(sample_seconds=2)
    with inc.workload(quiet.url("app"), inc.healthy_batch) as w:
        data = rb.run_all()
        assert w.rounds > 10
    bad = {c: s for c, s in severities(rb).items() if s & {"warning", "critical"}}
    assert not bad, [f.title for f in rb.report.findings if f.severity in ("warning", "critical")]
    assert not rb.report.errors and not data["errors"]
    assert by_check(rb, "top_queries") or by_check(rb, "dominant_query")


def missing_index_run(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> Runbook:
    """The missing-index incident under load: found in the top queries and the scans."""
    rb = latency_rb(sample_seconds=2, large_table_rows=SMALL)
    with inc.missing_index(quiet.url("app")), inc.workload(quiet.url("app"),
                                                           inc.verification_lookups):
        rb.check("latency.window")
        rb.check("latency.top_queries")
        rb.check("latency.seq_scans")
        rb.check("latency.plans")
    (dom,) = by_check(rb, "dominant_query")
    assert dom.severity == "warning" and "verification_codes" in dom.title
    (scan,) = by_check(rb, "seq_scan")
    assert scan.severity == "warning" and "public.verification_codes" in scan.title
    assert not rb.report.errors
    return rb


@needs_statements
@pytest.mark.pg(">= 16")
def test_missing_index_found_in_top_queries_scans_and_plans(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = missing_index_run(quiet, latency_rb)
    (plan,) = [f for f in by_check(rb, "plan_seq_scan") if "verification_codes" in f.title]
    assert plan.severity == "warning"
    assert plan.remediation == ('CREATE INDEX CONCURRENTLY ON "public"."verification_codes" '
                                '("email", "scene", "code");')


@needs_statements
@pytest.mark.pg("< 16")
def test_missing_index_before_16_says_generic_plans_need_16(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = missing_index_run(quiet, latency_rb)
    assert any("GENERIC_PLAN" in p.note for p in rb.snapshot("plans"))


def test_lock_chain_tree_has_root_and_both_waiters_at_their_depth(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(blocking_warning_s=1, blocking_critical_s=600)
    with inc.lock_chain(quiet.url("app")) as chain:
        time.sleep(1.1)
        rb.check("shared.blocking")
    tree = rb.snapshot("blocking")
    depth = dict(zip(tree["pid"], tree["depth"], strict=True))
    assert depth[chain.root] == 0
    assert sorted(depth[p] for p in chain.waiters) == [1, 2]
    (f,) = by_check(rb, "blocking")
    assert f.severity == "warning"
    assert f"pid {chain.root}" in f.title and "blocks 2 session(s)" in f.title
    assert "2 level(s) deep" in f.title and "idle in transaction" in f.title


def test_another_database_s_lock_chain_is_reported_there_only(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    """Databases of one server (a fleet sweeps each): a lock chain and a long transaction in
    one are that database's findings, not every database's."""
    with psycopg.connect(quiet.url("postgres", "postgres"), autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS side WITH (FORCE)")
        c.execute("CREATE DATABASE side TEMPLATE cosnap")
    bounds = {"blocking_warning_s": 0.5, "blocking_critical_s": 600,
              "long_transaction_warning_s": 0.5, "long_transaction_critical_s": 600}
    try:
        here = latency_rb(**bounds)
        there = latency_rb(database="side", **bounds)
        with inc.lock_chain(quiet.url("app", "side")) as chain:
            time.sleep(1.1)
            for rb in (here, there):
                rb.check("shared.blocking")
                rb.check("shared.long_running")
        loud = [(f.check, f.title) for f in here.report.findings
                if f.severity in ("warning", "critical")]
        assert not loud, loud
        (f,) = by_check(there, "blocking")
        assert f.severity == "warning" and f"pid {chain.root}" in f.title
        assert any(f"pid {chain.root}" in t.title for t in by_check(there, "long_transaction"))
    finally:
        here.close()
        there.close()
        with psycopg.connect(quiet.url("postgres", "postgres"), autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS side WITH (FORCE)")


def test_lock_wait_past_critical_threshold(quiet: Sandbox,
                                           latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(blocking_warning_s=0.2, blocking_critical_s=1)
    with inc.lock_chain(quiet.url("app")):
        time.sleep(1.1)
        rb.check("shared.blocking")
    assert [f.severity for f in by_check(rb, "blocking")] == ["critical"]


def test_terminate_root_blocker_preview_then_action(
        quiet: Sandbox, latency_rb: Callable[..., Runbook], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    terminate = functools.partial(latency_rb, blocking_warning_s=0.1, blocking_critical_s=600,
                                  blocker_action="terminate", blocker_min_wait_s=0.5)
    with inc.lock_chain(quiet.url("app")) as chain:
        time.sleep(0.6)
        preview = terminate(allow_actions=False)
        preview.check("shared.blocking")
        preview.check("latency.signal_blocker")
        with psycopg.connect(quiet.url("postgres")) as c:
            assert c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                             (chain.root,)).fetchone() == (1,)
        rb = terminate(allow_actions=True)
        rb.check("latency.signal_blocker")

        def root_gone() -> bool:
            with psycopg.connect(quiet.url("postgres")) as c:
                return c.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                 (chain.root,)).fetchone() is None

        retry(root_gone, timeout=5)
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["decision"] for x in lines] == ["previewed", "executed"]
    assert lines[0]["pids"] == [chain.root]
    assert lines[1]["pids"] == [chain.root] and lines[1]["action"] == "terminate"
    assert [f.severity for f in by_check(preview, "action_terminate")] == ["info"]
    assert "allow_actions is off" in by_check(preview, "action_terminate")[0].title
    assert [f.title for f in by_check(rb, "action_terminate")][-1] == \
        "Action terminate: 1 of 1 sessions ended"
    assert not preview.report.errors and not rb.report.errors


@needs_statements
def test_n_plus_one_is_flagged_with_evidence(quiet: Sandbox,
                                             latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(sample_seconds=2)
    with inc.workload(quiet.url("app"), inc.posts_then_authors, "feed-api"):
        rb.check("latency.n_plus_one")
    (f,) = by_check(rb, "n_plus_one")
    assert f.severity == "warning" and "heuristic" in f.title
    assert "FROM users WHERE id = $1" in f.title
    ev = f.evidence[0]
    assert "FROM posts" in ev["parent_statement"]
    assert abs(ev["parent_rows"] - ev["calls"]) <= 0.2 * ev["calls"]


def test_long_query_and_long_transaction(quiet: Sandbox,
                                         latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(long_query_warning_s=1, long_query_critical_s=600,
                    long_transaction_warning_s=1, long_transaction_critical_s=600)
    with inc.long_query(quiet.url("app"), 60) as pid, \
            inc.leaking_app(quiet.url("app"), "batch-job", idle=0, idle_in_transaction=1) as held:
        time.sleep(1.2)
        rb.check("shared.long_running")
        idle_pid = held.pids[0]
    (q,) = [f for f in by_check(rb, "long_query") if f"pid {pid}" in f.title]
    assert q.severity == "warning" and "report-job" in q.title and "pg_sleep" in q.detail
    (t,) = [f for f in by_check(rb, "long_transaction") if f"pid {idle_pid}" in f.title]
    assert t.severity == "warning" and "idle in transaction" in t.title


def test_duplicate_and_unused_index(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(unused_index_min_mb=0)
    with inc.duplicate_index(quiet.url("app")):
        rb.check("latency.duplicate_indexes")
        rb.check("latency.unused_indexes")
    (dup,) = by_check(rb, "duplicate_index")
    assert dup.severity == "warning" and "posts_user_id" in dup.title
    assert dup.remediation.startswith('DROP INDEX CONCURRENTLY "public".')
    assert any("posts_user_id_dup_idx" in f.title for f in by_check(rb, "unused_index"))


def test_invalid_index(quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    with inc.invalid_index(quiet.url("app")):
        rb.check("latency.invalid_indexes")
    (f,) = by_check(rb, "invalid_index")
    assert f.severity == "warning" and "posts_user_id_unique_idx" in f.title


FK_INDEX = 'CREATE INDEX CONCURRENTLY ON "public"."comments" ("user_id");'


def test_fk_without_index_and_no_cost_in_the_window_is_advice(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(sample_seconds=1)
    with inc.fk_without_index(quiet.url("app")):
        rb.check("latency.fk_without_index")
    (f,) = by_check(rb, "fk_without_index")
    assert f.severity == "info" and "comments(user_id)" in f.title
    assert "comments_user_id_fkey" in f.title and "users" in f.detail
    assert "no cost seen now" in f.detail
    assert f.remediation == FK_INDEX
    assert not rb.report.errors


def test_fk_without_index_warns_when_parent_deletes_pay_for_it(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(sample_seconds=2)
    with inc.fk_without_index(quiet.url("app")), \
            inc.workload(quiet.url("app"), inc.account_deletions, "admin-app") as w:
        rb.check("latency.fk_without_index")
        assert w.rounds > 0
    (f,) = by_check(rb, "fk_without_index")
    assert f.severity == "warning" and "comments(user_id)" in f.title
    assert "comments_user_id_fkey" in f.title and "users" in f.detail
    assert f.metric is not None and (f.metric.value or 0) > 0
    assert f.remediation == FK_INDEX
    assert not rb.report.errors


def test_dead_tuples_with_autovacuum_disabled(quiet: Sandbox,
                                              latency_rb: Callable[..., Runbook]) -> None:
    with inc.dead_tuples(quiet.url("app"), "comments"):
        def found() -> Finding | None:
            rb = latency_rb(sample_seconds=0, dead_tuple_ratio_warning=0.2,
                            dead_tuples_min=1000)
            rb.check("latency.dead_tuples")
            rb.close()
            hits = [f for f in by_check(rb, "dead_tuples") if "public.comments" in f.title]
            return hits[0] if hits else None

        f = retry(found, timeout=10, interval=0.5)
    assert f is not None
    assert f.severity == "warning" and "autovacuum is disabled" in f.title
    assert 'ALTER TABLE "public"."comments" RESET (autovacuum_enabled)' in f.remediation


def test_cache_hit_ratio_drops_with_disk_reads(quiet: Sandbox,
                                               latency_rb: Callable[..., Runbook]) -> None:
    """The ratio is the window's: the cold table is scanned while the window is open."""
    def scan_cold(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT count(*) FROM cold_archive")

    def measured() -> Runbook:
        rb = latency_rb(sample_seconds=2)
        rb.check("latency.cache_hit")
        (f,) = by_check(rb, "cache_hit")
        assert f.severity == "warning", f.title  # before 15 the counts may come late: again
        return rb

    # larger than shared_buffers (128 MB): however the server caches, every scan reads again
    with inc.cold_reads(quiet.url("app"), mb=160, scans=1), \
            inc.workload(quiet.url("app"), scan_cold) as w:
        rb = retry(measured, timeout=20, interval=0.5)
        assert w.rounds > 0
    (f,) = by_check(rb, "cache_hit")
    assert f.severity == "warning", f.title
    assert f.metric is not None and f.metric.value is not None and f.metric.value < 0.99
    assert f.evidence[0]["table"] == "cold_archive"
    blocks = rb.snapshot("window").blocks
    assert blocks["blks_hit"] + blocks["blks_read"] >= 10000


@pytest.mark.pg(">= 15")  # before 15 earlier tests' block counts may arrive during the window
def test_cache_hit_ratio_not_judged_on_a_quiet_window(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    """Lifetime counters are not judged: a window with few block accesses says nothing."""
    rb = latency_rb(sample_seconds=0.5)
    rb.check("latency.cache_hit")
    (f,) = by_check(rb, "cache_hit")
    assert f.severity == "info" and "not judged" in f.title and "< 10000" in f.title
    assert not rb.report.errors


def test_xid_age_thresholds(latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb()
    rb.check("shared.xid_age")
    assert [f.severity for f in by_check(rb, "xid_age")] == ["ok"]
    # a fresh sandbox's age (~1e-6 of the horizon) is far below the lowest allowed bound (0.01):
    # the grading is judged on the same real snapshot with a bound validation would refuse
    with pytest.raises(ValueError, match="xid_age_warning"):
        registry.parameter("xid_age_warning").check(1e-9)
    check = registry.CHECKS["shared.xid_age"]
    (f,) = check.evaluate(rb.snapshot("xid_age"), {**rb.params, "xid_age_warning": 1e-9,
                                                   "xid_age_critical": 0.75})
    assert isinstance(f, Finding) and f.severity == "warning"


@needs_statements
def test_slow_share_from_the_server_log(quiet: Sandbox,
                                        latency_rb: Callable[..., Runbook]) -> None:
    def slow_and_fast(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT pg_sleep(0.3)")
        for _ in range(3):
            conn.execute("SELECT 1")

    rb = latency_rb(sample_seconds=2, log_source="auto", slow_query_ms=250,
                    slow_query_share_warning=0.10)
    with inc.workload(quiet.url("app"), slow_and_fast, "slow-api"):
        rb.check("latency.window")
    time.sleep(0.5)  # the logging collector writes asynchronously
    rb.check("latency.slow_share")
    assert "server log directory" in rb.snapshot("log_durations").scan.source
    (f,) = by_check(rb, "slow_query_share")
    assert f.severity == "warning", f.title
    assert f.metric is not None and 0.15 < float(f.metric.value or 0) < 0.35  # ~1 in 4 calls


def test_p95_when_every_statement_is_logged_read_from_files(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    """The p95 from the csvlog, jsonlog and stderr files, each over its own window: only the
    statements of the window count (not those logged after it, nor the runbook's own)."""
    with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
        c.execute("ALTER DATABASE cosnap SET log_min_duration_statement = 0")
    kinds = ["*.csv", "*.log"] + (["*.json"] if quiet.major >= 15 else [])

    def batch(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        inc.healthy_batch(conn)
        conn.execute("SELECT pg_sleep(0.005)")  # a p95 above the lowest target allowed (1 ms)

    rbs: dict[str, Runbook] = {}
    try:
        with inc.workload(quiet.url("app"), batch):
            for kind in kinds:
                rbs[kind] = latency_rb(sample_seconds=1.5, log_source=str(quiet.log_dir / kind),
                                       slow_query_ms=2000, p95_target_ms=1)
                rbs[kind].check("latency.window")
            time.sleep(1.5)  # statements after the last window: in the log, not counted
        time.sleep(0.5)  # the logging collector writes asynchronously
        for rb in rbs.values():
            rb.check("latency.slow_share")
    finally:
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute("ALTER DATABASE cosnap RESET log_min_duration_statement")
    for kind, rb in rbs.items():
        scan = rb.snapshot("log_durations").scan
        window = rb.snapshot("window")
        assert 50 < scan.durations.count, kind
        # about one batch every 20 ms over 1.5 s, 4 statements each: not the 3 s of the log
        assert scan.durations.count < 4 * window.seconds / 0.015, kind
        assert scan.source.endswith(kind)
        (p95,) = by_check(rb, "p95_latency")
        assert p95.severity == "warning" and "p95 statement time" in p95.title, kind
        assert not rb.report.errors, kind


def test_durations_not_logged_is_not_guessed(quiet: Sandbox,
                                             latency_rb: Callable[..., Runbook]) -> None:
    with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
        c.execute("ALTER DATABASE cosnap SET log_min_duration_statement = -1")
    try:
        rb = latency_rb(sample_seconds=0)
        rb.check("latency.slow_share")
    finally:
        with psycopg.connect(quiet.url("postgres"), autocommit=True) as c:
            c.execute("ALTER DATABASE cosnap RESET log_min_duration_statement")
    assert not by_check(rb, "slow_query_share")
    assert any("not measurable" in r for r in skipped(rb, "slow_share"))
    assert not rb.report.errors


def test_monitor_role_degrades_with_reasons(quiet: Sandbox,
                                            latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(role="monitor", sample_seconds=1, blocking_warning_s=0,
                    blocking_critical_s=600)
    with inc.lock_chain(quiet.url("app")) as chain:
        rb.check("latency.window")
        rb.check("latency.top_queries")
        rb.check("latency.slow_share")
        rb.check("shared.blocking")
        rb.step("tables_and_indexes")
    assert not rb.report.errors, rb.report.errors
    tree = rb.snapshot("blocking")
    assert chain.root in set(tree["pid"])
    assert any("pg_read_server_files" in r for r in skipped(rb, "slow_share"))


def test_without_pg_stat_statements_warns_and_falls_back(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    rb = latency_rb(database="postgres", sample_seconds=1)  # the extension exists only in cosnap
    with inc.long_query(quiet.url("app"), 30):
        rb.check("latency.window")
        rb.check("latency.top_queries")
        rb.check("latency.n_plus_one")
    (setup,) = by_check(rb, "statements_setup")
    assert setup.severity == "warning"
    assert "CREATE EXTENSION pg_stat_statements" in setup.detail
    assert "CREATE EXTENSION pg_stat_statements" in setup.remediation
    assert not by_check(rb, "top_queries") and not by_check(rb, "dominant_query")
    assert skipped(rb, "n_plus_one") and not rb.report.errors
    assert rb.snapshot("window").n_samples > 1  # the fallback: pg_stat_activity samples


def test_catalog_checks_do_not_wait_behind_an_exclusive_lock(
        quiet: Sandbox, latency_rb: Callable[..., Runbook]) -> None:
    locker = psycopg.connect(quiet.url("app"))
    locker.execute("LOCK TABLE comments IN ACCESS EXCLUSIVE MODE")
    try:
        rb = latency_rb(sample_seconds=0)
        started = time.monotonic()
        rb.step("tables_and_indexes")
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
    rb = latency_rb(role="app", sample_seconds=1)  # no pg_read_all_stats: others' texts hidden

    def admin_batch(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT count(*) FROM pg_class")
        conn.execute("SELECT count(*) FROM pg_attribute")

    with inc.workload(quiet.url("postgres"), admin_batch, "admin-script") as w:
        before = w.rounds
        rb.check("latency.window")
        after = w.rounds
        rb.check("latency.top_queries")
    assert not rb.report.errors
    shown = delta(rb)
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

    rb = latency_rb(sample_seconds=1)
    try:
        with inc.workload(quiet.url("app"), batch, "nested-app"):
            rb.check("latency.window")
        rb.check("latency.top_queries")
    finally:
        with psycopg.connect(quiet.url("app"), autocommit=True) as c:
            c.execute("DROP FUNCTION IF EXISTS nested_lookup()")
    assert not rb.report.errors
    shown = delta(rb)
    rows = shown[shown["query"].str.contains("FROM posts WHERE user_id = ", regex=False)]
    assert len(rows) == 1
