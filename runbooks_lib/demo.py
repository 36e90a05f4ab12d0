"""`runbooks demo`: the whole product on the embedded default, as a self-check.

Starts the sandbox, loads the demo application, injects the incidents of each runbook, runs the
runbooks headless, prints what they found and where the report is, and cleans the incidents up.
Exits 0 only when every runbook ran and found every incident the demo injected.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from . import registry, report
from .findings import SEVERITIES
from .sandbox import demo as demo_data
from .sandbox import incidents, server


@dataclass(frozen=True)
class Expect:
    """A finding the demo's incident must produce: check, lowest severity, a name it must cite."""

    runbook: str
    check: str
    severity: str
    mentions: str = ""


APP = "cosnap-backend"
EXPECTED = [
    Expect("connectivity", "connection_usage", "warning", APP),
    Expect("connectivity", "idle_in_transaction", "warning", APP),
    Expect("connectivity", "leak_suspect", "warning", APP),
    Expect("connectivity", "pool_overflow", "warning", APP),
    Expect("latency", "seq_scan", "warning", "verification_codes"),
    Expect("latency", "plan_seq_scan", "warning", "verification_codes"),
    Expect("latency", "blocking", "warning", APP),
    Expect("latency", "n_plus_one", "warning", "users"),
    Expect("latency", "duplicate_index", "warning", "posts_user_id_dup_idx"),
    Expect("latency", "fk_without_index", "warning", "comments_user_id_fkey"),
    Expect("latency", "fk_without_index", "warning", '"public"."comments" ("user_id")'),
    Expect("latency", "dead_tuples", "warning", "comment_likes"),
    Expect("transaction_failures", "errors_integrity", "warning", "23503"),
    Expect("transaction_failures", "errors_retryable-transient", "warning", "40P01"),
    Expect("transaction_failures", "errors_timeout", "warning", "statement_timeout"),
    Expect("transaction_failures", "deadlock", "warning", "users"),
    Expect("transaction_failures", "fk_violation", "warning", "comments_post_id_fkey"),
    # the restore drill proves, rather than finds: these must be ok, with their figures
    Expect("restore_drill", "backup_integrity", "ok", "authentication tag"),
    Expect("restore_drill", "restore", "ok", "Restore to usable"),
    Expect("restore_drill", "restore_verify", "ok", "verified row for row"),
    Expect("restore_drill", "restore_table", "ok", "restored alone"),
    Expect("restore_drill", "restore_pitr", "ok", "Point-in-time recovery proved"),
]
DRILL_FIGURES = ("rto_seconds", "table_rto_seconds", "pitr_rto_seconds", "rpo_seconds",
                 "tables_verified")  # the restore drill's proofs, printed although ok
PARAMS = {  # checked against the registry like any -p (tests keep them valid)
    # connectivity: the demo's incident is seconds old, so its thresholds are seconds
    "replicas": "3",
    "idle_in_transaction_warning_s": "2",
    "leak_idle_age_s": "2",
    "terminate_application": APP,
    "terminate_idle_s": "2",
    # latency: the demo's tables are small, so "large" is 500 rows
    "sample_seconds": "5",
    "large_table_rows": "500",
    "blocking_warning_s": "2",
    "dead_tuples_min": "1000",
}


def missed(out: Path, expected: list[Expect]) -> list[str]:
    """What the runbooks did not find, read back from their findings JSON."""
    problems: list[str] = []
    for e in expected:
        path = out / f"{e.runbook}.findings.json"
        if not path.exists():
            problems.append(f"{e.runbook}: no findings file")
            continue
        data = json.loads(path.read_text())
        if data.get("errors"):
            problems.append(f"{e.runbook}: could not run: {data['errors']}")
        hits = [f for f in data["findings"] if f["check"] == e.check
                and (f["severity"] == "ok" if e.severity == "ok"  # a proof: exactly ok
                     else SEVERITIES.index(f["severity"]) >= SEVERITIES.index(e.severity))
                and e.mentions in " ".join([f["title"], f["detail"], f["remediation"],
                                            json.dumps(f["evidence"])])]
        if not hits:
            problems.append(f"{e.runbook}: missed {e.check} >= {e.severity}"
                            + (f" naming {e.mentions}" if e.mentions else ""))
    return problems


def drill_params(sb: server.Sandbox) -> dict[str, str]:
    """The restore drill's backups and key beside the sandbox (the key made once, mode 600)."""
    from .drill import keys

    key = Path(sb.base) / "backup-key.json"
    if not key.exists():
        keys.save_new(key)
    return {"backup_dir": str(Path(sb.base) / "backups"), "encryption_key_file": str(key)}


def main(out: Path | None = None, bin_dir: str | None = None) -> int:
    out = out or Path("reports") / f"demo-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    print("starting the sandbox (embedded PostgreSQL) ...", flush=True)
    sb = server.start(bin_dir=bin_dir, max_connections=100)
    rows = demo_data.load(sb.url("app"))
    print(f"PostgreSQL {sb.major} on 127.0.0.1:{sb.port}; demo app loaded "
          f"({rows['users']} users, {rows['posts']} posts, {rows['comments']} comments)")
    # the app makes the incidents; the runbooks look as the sandbox's superuser, which sees every
    # session and plans statements as their owner (SET ROLE); the pool size is the app's
    app, app_url = sb.url("app"), sb.url("postgres", connection_limit="5", pool_timeout="60")
    print("injecting: FK and unique violations, statement timeouts, a division by zero, a "
          "deadlock and a serialization failure (they land in the server log)", flush=True)
    incidents.failing_statements(app, times=3)
    incidents.deadlock(app)
    incidents.serialization_failure(app)
    with ExitStack() as stack:
        print(f"injecting: {APP} leaks 80 idle connections and 5 idle in transaction "
              "(15 PrismaClient instances, pool 5)", flush=True)
        stack.enter_context(incidents.leaking_app(app, APP, idle=80, idle_in_transaction=5))
        print("injecting: verification_codes lost its index under a hot lookup; a posts-then-"
              "authors N+1 loop; a row lock held idle in transaction with two waiters; a "
              "duplicate index; an unindexed foreign key under account deletions; dead tuples "
              "with autovacuum off",
              flush=True)
        stack.enter_context(incidents.missing_index(app))
        stack.enter_context(incidents.workload(app, incidents.verification_lookups, APP))
        stack.enter_context(incidents.workload(app, incidents.posts_then_authors, APP))
        stack.enter_context(incidents.lock_chain(app, APP))
        stack.enter_context(incidents.duplicate_index(app))
        stack.enter_context(incidents.fk_without_index(app))
        stack.enter_context(incidents.dead_tuples(app, "comment_likes"))
        stack.enter_context(incidents.workload(app, incidents.account_deletions, APP))
        time.sleep(2.5)  # let the incidents age past the demo's thresholds
        # the sandbox's csvlog files, read whole (auto would read them through SQL)
        params = {**PARAMS, "log_source": str(sb.log_dir / "*.csv"), **drill_params(sb)}
        code, summary = report.run(list(registry.runbooks()), app_url, out, params)
    for rb in summary["runbooks"]:
        data = json.loads((out / rb["files"]["findings"]).read_text())
        print(f"\n{rb['name']}: {rb['status']} (exit {rb['exit_code']})")
        for f in data["findings"]:
            figure = (f.get("metric") or {}).get("name") in DRILL_FIGURES
            if f["severity"] != "ok" or figure:
                print(f"  [{f['severity']}] {f['title']}")
    problems = missed(out, EXPECTED)
    print()
    for rb in summary["runbooks"]:
        print(f"report: {(out / rb['files']['html']).resolve()}")
    if summary.get("overview"):
        print(f"overview: {(out / summary['overview']).resolve()}")
    print(f"index: {(out / 'index.html').resolve()}")
    print(f"summary: {(out / 'summary.json').resolve()}  (run exit status {code})")
    for problem in summary.get("problems", []):
        print(f"warning: {problem}")
    if problems:
        print("\nDEMO FAILED: " + "; ".join(problems))
        return 1
    print(f"\ndemo ok: every injected incident was found ({len(EXPECTED)} checks)")
    return 0
