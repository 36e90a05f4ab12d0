"""The latency runbook: the app is slow; is it the database, and which query, lock or table?

Answers for the last few minutes (a sampling window), with the lifetime view beside it, since
PgHero's lifetime-only view is its users' top complaint. Thresholds (all parameters):
- one statement taking more than 30 % of the window's database time is called out;
- slow statement: more than 2 s (seed); slow share warning above 10 % of calls (seed); p95 target
  200 ms (seed);
- lock waits: warning over 1 min, critical over 2 min;
- long queries 60 s, long transactions 1 h (pg_activity and check_postgres use similar bounds);
- sequential scans on tables of 10,000+ rows, cache hit ratio 99 %, unused indexes of 10 MB+
  (PgHero's bounds); dead tuples above 20 % of a table (autovacuum's default scale factor);
  transaction ID age above 50 % (warning) and 75 % (critical) of the 2^31 wraparound horizon.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pandas as pd
import psycopg

from . import actions, logs, present, queries
from .errors import SkipStep
from .findings import Finding, Metric, grade, ratio, records
from .runbook import Runbook, step
from .session import Session

NAME = "latency"
COUNTERS = ["calls", "total_exec_time", "rows", "shared_blks_hit", "shared_blks_read",
            "temp_blks_read", "temp_blks_written"]
TABLE_COUNTERS = ["seq_scan", "seq_tup_read", "idx_scan"]
KEY = ["queryid", "userid", "dbid"]
WRAPAROUND = 2**31


def _short(text: str, n: int = 90) -> str:
    one = " ".join(str(text).split())
    return one if len(one) <= n else one[: n - 1] + "…"


# -- the sampling window ---------------------------------------------------------------------

def _statements(s: Session, showtext: bool = True) -> pd.DataFrame:
    if "pg_stat_statements" not in s.facts.extensions:
        raise SkipStep("pg_stat_statements is not installed in this database: add it to "
                       "shared_preload_libraries, restart, then CREATE EXTENSION pg_stat_statements")
    try:
        df = s.frame(queries.get("statements", s.facts.version_num), {"showtext": showtext})
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise SkipStep("pg_stat_statements is created but not loaded: add it to "
                       "shared_preload_libraries and restart") from None
    return one_row_per_statement(df)


HIDDEN = "<insufficient privilege>"


def one_row_per_statement(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (queryid, user, database) of a snapshot. Other roles' statements that we may
    not see (NULL queryid, text hidden) become one row per role and database: their time still
    counts. On 14+ a statement also run nested (track = all: inside a function, under EXPLAIN)
    has a second entry with toplevel = false, added to its top-level one. Without this, the
    window diff would double nested statements and pair hidden ones many-to-many."""
    hidden = df["queryid"].isna()
    if hidden.any():
        df = df.assign(
            queryid=df["queryid"].where(~hidden, "hidden:" + df["userid"].astype(str) + ":"
                                        + df["dbid"].astype(str)),
            query=df["query"].where(~hidden, f"{HIDDEN}: statements of role "
                                    + df["user"].astype(str)
                                    + " (grant pg_read_all_stats to see them)"))
    if not df.duplicated(KEY).any():
        return df
    rest = [c for c in df.columns if c not in KEY + COUNTERS]
    return (df.groupby(KEY, as_index=False, sort=False)
              .agg({**{c: "sum" for c in COUNTERS}, **{c: "first" for c in rest}}))


@step("window")
def window(rb: Runbook, sample_seconds: float = 10, large_table_rows: int = 10000,
           interval_s: float = 0.1) -> dict[str, Any]:
    """Two snapshots SAMPLE_SECONDS apart (statements, scan counters of the tables of
    LARGE_TABLE_ROWS or more) and, in between, pg_stat_activity sampled every INTERVAL_S: the
    data of steps 1, 3, 6 and 8."""
    s = rb.session
    data = rb.data
    try:
        data["stmts_before"] = _statements(s, showtext=False)
    except SkipStep as exc:
        data["stmts_skip"] = str(exc)
    scans = queries.get("table_scans")
    data["scans_before"] = s.frame(scans, {"min_rows": large_table_rows})
    sample_sql = queries.get("wait_sample")
    started = time.monotonic()
    data["window_start"] = dt.datetime.now(dt.UTC)
    frames, n = [], 0
    while True:
        frames.append(s.frame(sample_sql))
        n += 1
        left = sample_seconds - (time.monotonic() - started)
        if left <= 0:
            break
        time.sleep(min(interval_s, left))
    data["samples"] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    data["n_samples"] = n
    data["window_s"] = time.monotonic() - started
    if "stmts_skip" not in data:
        data["stmts_after"] = _statements(s)
    data["scans_after"] = s.frame(scans, {"min_rows": large_table_rows})
    present.show_text(f"sampled {data['window_s']:.1f} s: {n} activity samples")
    return {"window_s": data["window_s"], "samples": n}


def statement_delta(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per statement, what happened between two snapshots of one_row_per_statement (a
    statement evicted or reset in between counts from zero)."""
    merged = after.merge(before[KEY + COUNTERS], on=KEY, how="left", suffixes=("", "_before"))
    for c in COUNTERS:
        prev = merged[f"{c}_before"].fillna(0)
        delta = merged[c] - prev
        merged[c] = delta.where(delta >= 0, merged[c])
    merged = merged.drop(columns=[f"{c}_before" for c in COUNTERS])
    ours = merged["query"].str.contains(queries.MARKER, regex=False)
    merged = merged[(merged["calls"] > 0) & ~ours].copy()
    for c in COUNTERS:
        if c != "total_exec_time":
            merged[c] = merged[c].astype("int64")
    merged["mean_ms"] = merged["total_exec_time"] / merged["calls"]
    merged["rows_per_call"] = merged["rows"] / merged["calls"]
    total = merged["total_exec_time"].sum()
    merged["time_share"] = merged["total_exec_time"] / total if total > 0 else 0.0
    return merged.sort_values("total_exec_time", ascending=False)


def _window_statements(rb: Runbook) -> pd.DataFrame:
    if "stmts_skip" in rb.data:
        raise SkipStep(rb.data["stmts_skip"])
    if "stmts_after" not in rb.data:
        raise SkipStep("no sampling window: run the window step first")
    return rb.cached("stmts_delta", lambda: statement_delta(rb.data["stmts_before"],
                                                            rb.data["stmts_after"]))


# -- step 1: top queries now -----------------------------------------------------------------

SHOWN = ["time_share", "total_exec_time", "calls", "mean_ms", "rows", "shared_blks_read",
         "temp_blks_written", "user", "database", "query"]


@step("top_queries")
def top_queries(rb: Runbook, dominant_share: float = 0.30, slow_query_ms: float = 2000,
                busy_share: float = 0.5) -> pd.DataFrame | None:
    """A statement above DOMINANT_SHARE of the window's database time is called out: a warning
    when it alone keeps the server busy (its time >= BUSY_SHARE of the window, half a core on
    average), information otherwise: on a quiet server some statement always dominates."""
    try:
        delta = _window_statements(rb)
    except SkipStep as exc:
        rb.skip("top_queries", str(exc))
        _fallback_from_samples(rb)
        return None
    dominant_share = ratio(dominant_share)
    w = rb.data["window_s"]
    shown = delta.assign(time_share=delta["time_share"].round(3),
                         total_exec_time=delta["total_exec_time"].round(1),
                         mean_ms=delta["mean_ms"].round(2))
    for col, title in (("total_exec_time", "total time"), ("mean_ms", "mean time"),
                       ("calls", "calls"), ("rows", "rows"),
                       ("shared_blks_read", "blocks read from disk"),
                       ("temp_blks_written", "temp blocks written")):
        if shown[col].sum() > 0:
            present.show_table(shown.sort_values(col, ascending=False)[SHOWN].head(10),
                               f"top statements in the last {w:.0f} s by {title}")
    lifetime = rb.data["stmts_after"].assign(
        mean_ms=lambda d: (d["total_exec_time"] / d["calls"].clip(lower=1)).round(2))
    present.show_table(lifetime.sort_values("total_exec_time", ascending=False)
                       [["total_exec_time", "calls", "mean_ms", "rows", "user", "database",
                         "query"]].head(10), "lifetime view (since the last stats reset)")
    if not delta.empty:
        top = shown.head(10).iloc[::-1]
        present.show_figure({"data": [{"type": "bar", "orientation": "h",
                                       "x": top["time_share"].tolist(),
                                       "y": [_short(q, 60) for q in top["query"]]}],
                             "layout": {"title": {"text": f"Share of database time, last {w:.0f} s"},
                                        "margin": {"l": 420}, "xaxis": {"tickformat": ".0%"}}})
    found: list[Finding] = []
    total_ms = float(delta["total_exec_time"].sum())
    for _, r in delta[delta["time_share"] > dominant_share].iterrows():
        busy = float(r["total_exec_time"]) / 1000 / max(w, 1e-9)
        found.append(Finding(
            "dominant_query", "warning" if busy >= busy_share else "info",
            f"One statement takes {r['time_share']:.0%} of the database time in the last "
            f"{w:.0f} s: {_short(r['query'])}",
            f"{int(r['calls'])} calls, mean {r['mean_ms']:.1f} ms, {int(r['rows'])} rows, "
            f"user {r['user']}, database {r['database']}, queryid {r['queryid']}; it kept "
            f"{busy:.2f} sessions busy on average",
            metric=Metric("query_time_share", round(float(r["time_share"]), 4), dominant_share),
            evidence=records(shown.loc[[r.name], SHOWN]),
            remediation="look at its plan (step 7) and the tables it scans (step 6); add the "
                        "missing index or cache the result"))
    slow = delta[delta["mean_ms"] > slow_query_ms]
    for _, r in slow.head(5).iterrows():
        found.append(Finding(
            "slow_query", "warning",
            f"Slow statement: mean {r['mean_ms'] / 1000:.1f} s over {int(r['calls'])} calls: "
            f"{_short(r['query'])}",
            f"user {r['user']}, database {r['database']}; slower than {slow_query_ms:g} ms",
            metric=Metric("query_mean_ms", round(float(r["mean_ms"]), 1), slow_query_ms),
            evidence=records(shown.loc[[r.name], SHOWN]),
            remediation="EXPLAIN it (step 7); check lock waits (step 4)"))
    if not found:
        found.append(Finding("top_queries", "ok",
                             f"No statement dominates the last {w:.0f} s "
                             f"({len(delta)} statements, {total_ms:.0f} ms of database time)"))
    rb.add(found)
    return shown


def _fallback_from_samples(rb: Runbook) -> None:
    samples: pd.DataFrame = rb.data.get("samples", pd.DataFrame())
    if samples.empty:
        present.show_text("no active session was seen while sampling pg_stat_activity")
        return
    seen = (samples.groupby("query").size().rename("samples").reset_index()
            .sort_values("samples", ascending=False))
    present.show_table(seen.head(10), "statements seen active while sampling pg_stat_activity "
                                      "(fallback without pg_stat_statements)")


# -- step 2: slow-query share and p95 --------------------------------------------------------

@step("slow_share")
def slow_share(rb: Runbook, log_source: str = "auto", slow_query_ms: float = 2000,
               slow_query_share_warning: float = 0.10, p95_target_ms: float = 200,
               since: str = "", log_line_prefix: str = "") -> dict[str, Any]:
    """Durations from the server log (never guessed): the share of calls slower than
    SLOW_QUERY_MS and the p95, against the seed's targets."""
    s = rb.session
    lmds = int(s.facts.settings.get("log_min_duration_statement", "-1") or -1)
    if lmds < 0 and (log_source in ("", "auto")):
        raise SkipStep("not measurable: log_min_duration_statement is off, so the server logs no "
                       "durations; set it (0 logs every statement) or pass log_source")
    start = (logs.parse_since(since) or rb.data.get("window_start")
             or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    scan = logs.scan_source(s, log_source, start, log_line_prefix, slow_ms=slow_query_ms,
                            errors=False)
    d = scan.durations
    rb.add(logs.setup_findings(scan))
    calls = None
    if "stmts_after" in rb.data and "stmts_skip" not in rb.data:
        calls = int(_window_statements(rb)["calls"].sum())
    result: dict[str, Any] = {"source": scan.source, "logged": d.count, "window_calls": calls,
                              "log_min_duration_statement_ms": lmds}
    present.show_text(f"durations from {scan.source} since {start:%H:%M:%S} UTC: {d.count} "
                      f"logged (log_min_duration_statement = {lmds} ms)"
                      + (f"; {scan.malformed} malformed records skipped" if scan.malformed else ""))
    n_slow = d.over
    if lmds == 0 and d.count:
        total = d.count
        p95 = d.quantile(0.95)
        share = n_slow / total
        result.update(p95_ms=p95, slow_share=share)
        rb.add(Finding("p95_latency", "warning" if p95 > p95_target_ms else "ok",
                       f"p95 statement time {p95:.1f} ms over {total} logged statements "
                       f"(target {p95_target_ms:g} ms)",
                       f"source: {scan.source}; every statement is logged "
                       "(log_min_duration_statement = 0); the p95 is read from a histogram "
                       "with 0.1 % resolution",
                       metric=Metric("p95_ms", round(p95, 2), p95_target_ms)))
    elif calls and 0 <= lmds <= slow_query_ms:
        over = d.count
        share = n_slow / calls
        result.update(slow_share=share)
        bound = (f"p95 is below {lmds} ms ({over} of {calls} calls took longer)"
                 if over / calls < 0.05 else
                 f"p95 is not measurable: {over / calls:.0%} of calls exceed "
                 f"log_min_duration_statement ({lmds} ms)")
        present.show_text(bound)
    else:
        raise SkipStep(f"not measurable: {d.count} logged durations and "
                       f"{'no' if not calls else calls} calls counted in the window; "
                       f"log_min_duration_statement is {lmds} ms (needs 0, or at most "
                       f"{slow_query_ms:g} ms with pg_stat_statements)")
    if d.statements:
        present.show_table(pd.DataFrame(list(logs.statements(d))).head(10),
                           "logged statements by total time")
    warn = ratio(slow_query_share_warning)
    share = float(result.get("slow_share", 0.0))
    slowest = pd.DataFrame(d.slowest)
    rb.add(Finding("slow_query_share", grade(share, warn, 1.0),
                   f"{share:.1%} of statements slower than {slow_query_ms:g} ms ({n_slow} of "
                   f"{calls if calls and lmds != 0 else d.count})",
                   f"source: {scan.source}",
                   metric=Metric("slow_query_share", round(share, 4), warn),
                   evidence=records(slowest),
                   remediation="" if share <= warn else
                   "the slowest statements are listed: EXPLAIN them (step 7)"))
    return result


# -- step 3: database load -------------------------------------------------------------------

@step("load")
def load(rb: Runbook, lock_share_warning: float = 0.5) -> pd.DataFrame:
    samples: pd.DataFrame = rb.data.get("samples", pd.DataFrame())
    n = max(1, int(rb.data.get("n_samples", 0)))
    if samples.empty:
        rb.add(Finding("load", "ok", "No active session while sampling",
                       f"{n} samples of pg_stat_activity over {rb.data.get('window_s', 0):.0f} s",
                       metric=Metric("average_active_sessions", 0.0)))
        return samples
    aas = len(samples) / n
    by_type = samples.groupby("wait_event_type").size().sort_values(ascending=False)
    top = (samples.groupby(["wait_event_type", "wait_event"]).size().rename("samples")
           .reset_index().sort_values("samples", ascending=False))
    top["share"] = (top["samples"] / len(samples)).round(3)
    present.show_table(top.head(15), "top wait events (share of active time)")
    ts = pd.to_datetime(samples["ts"], utc=True)
    series = samples.assign(t=(ts - ts.min()).dt.total_seconds().round(1))
    per = series.groupby(["t", "wait_event_type"]).size().rename("sessions").reset_index()
    present.show_figure({"data": [{"type": "scatter", "mode": "lines", "stackgroup": "one",
                                   "name": str(k), "x": g["t"].tolist(), "y": g["sessions"].tolist()}
                                  for k, g in per.groupby("wait_event_type")],
                         "layout": {"title": {"text": "Active sessions by wait event type"},
                                    "xaxis": {"title": {"text": "seconds into the window"}},
                                    "yaxis": {"title": {"text": "sessions"}}}})
    lock_share = float(by_type.get("Lock", 0)) / len(samples)
    sev = "warning" if lock_share >= ratio(lock_share_warning) and aas >= 0.5 else "info"
    mix = ", ".join(f"{k} {v / len(samples):.0%}" for k, v in by_type.head(4).items())
    rb.add(Finding("load", sev, f"Average active sessions {aas:.2f} ({mix})",
                   f"top wait: {top.iloc[0]['wait_event_type']}/{top.iloc[0]['wait_event']}",
                   metric=Metric("average_active_sessions", round(aas, 3)),
                   evidence=records(top.head(10)),
                   remediation="" if sev == "info" else
                   "sessions mostly wait for locks: see the blocking tree (step 4)"))
    return top


# -- step 4: blocking ------------------------------------------------------------------------

def blocking_tree(df: pd.DataFrame) -> pd.DataFrame:
    """Order sessions as a tree: each root blocker, then its waiters depth-first, with depth."""
    if df.empty:
        return df.assign(depth=pd.Series(dtype=int), root=pd.Series(dtype=int))
    children: dict[int, list[int]] = {}
    blocked = set()
    for pid, by in zip(df["pid"], df["blocked_by"], strict=True):
        for b in by or []:
            children.setdefault(int(b), []).append(int(pid))
            blocked.add(int(pid))
    rows = df.set_index("pid")
    roots = [int(p) for p in df["pid"] if int(p) not in blocked]
    out: list[dict[str, Any]] = []
    seen: set[int] = set()

    def walk(pid: int, depth: int, root: int) -> None:
        if pid in seen or pid not in rows.index:
            return
        seen.add(pid)
        out.append({"pid": pid, "depth": depth, "root": root,
                    **{str(k): v for k, v in rows.loc[pid].to_dict().items()}})
        for c in sorted(children.get(pid, [])):
            walk(c, depth + 1, root)

    age = {int(p): float(a) if pd.notna(a) else 0.0 for p, a in zip(df["pid"], df["xact_age_s"], strict=True)}
    for r in sorted(roots, key=lambda p: -age[p]):
        walk(r, 0, r)
    for p in df["pid"]:  # cycles (a deadlock about to be detected) have no root
        walk(int(p), 0, int(p))
    return pd.DataFrame(out)


@step("blocking")
def blocking(rb: Runbook, warning_s: float = 60, critical_s: float = 120) -> pd.DataFrame:
    s = rb.session
    tree = blocking_tree(s.frame(queries.get("blocking")))
    rb.data["blocking"] = tree
    if tree.empty:
        rb.add(Finding("blocking", "ok", "No session waits for a lock"))
        return tree
    shown = tree.assign(waiting_s=tree["waiting_s"].round(1), xact_age_s=tree["xact_age_s"].round(1),
                        pid=["  " * d + str(p) for d, p in zip(tree["depth"], tree["pid"], strict=True)])
    present.show_table(shown[["pid", "depth", "blocked_by", "state", "wait_event", "waiting_s",
                              "xact_age_s", "application", "user", "client_addr", "query"]],
                       "blocking tree (root blockers first, waiters indented)")
    present.show_figure({"data": [{"type": "treemap",
                                   "ids": [str(p) for p in tree["pid"]],
                                   "labels": [f"pid {p} ({a})" for p, a in
                                              zip(tree["pid"], tree["application"], strict=True)],
                                   "parents": ["" if d == 0 else str(list(b)[0])
                                               for d, b in zip(tree["depth"], tree["blocked_by"],
                                                               strict=True)]}],
                         "layout": {"title": {"text": "Blocking tree"}}})
    found = []
    for root, group in tree.groupby("root", sort=False):
        r = group.iloc[0]
        waiters = group[group["depth"] > 0]
        if waiters.empty:
            continue
        longest = float(waiters["waiting_s"].max())
        sev = grade(longest, warning_s, critical_s)
        sev = "info" if sev == "ok" else sev
        found.append(Finding(
            "blocking", sev,
            f"pid {root} ({r['application']}, {r['state']}) blocks {len(waiters)} session(s), "
            f"longest wait {longest:.0f} s, {int(group['depth'].max())} level(s) deep",
            f"root blocker: user {r['user']} from {r['client_addr']}, transaction open "
            f"{float(r['xact_age_s'] or 0):.0f} s, last query: {_short(r['query'], 200)}",
            metric=Metric("lock_wait_seconds", round(longest, 1),
                          critical_s if sev == "critical" else warning_s),
            evidence=records(group[["pid", "depth", "blocked_by", "state", "waiting_s",
                                    "application", "user", "query"]]),
            remediation="end the root blocker's transaction (commit/rollback in the app); if it "
                        "is idle in transaction, cancel or terminate it with the action below"))
    rb.add(found or [Finding("blocking", "ok", "No session waits for a lock")])
    return tree


@step("signal_blocker")
def signal_blocker(rb: Runbook, mode: str = "cancel", min_wait_s: float = 60,
                   allow_actions: bool = False) -> pd.DataFrame | None:
    """Cancel (or terminate) root blockers whose waiters waited MIN_WAIT_S: guarded action."""
    if mode not in ("cancel", "terminate"):
        raise SkipStep(f"blocker_action must be cancel or terminate, not {mode!r}")
    tree: pd.DataFrame = rb.data.get("blocking", pd.DataFrame())
    if tree.empty:
        raise SkipStep("no blocking tree: nothing to act on")
    waiters = tree[(tree["depth"] > 0) & (tree["waiting_s"] >= min_wait_s)]
    roots = sorted({int(r) for r in waiters["root"]})
    sql = queries.get("signal_blocker")
    params = {"pids": roots, "mode": mode, "dry_run": True}
    preview = rb.session.frame(sql, params)
    plan = actions.Plan(action=mode, description=f"root blockers whose waiters waited "
                        f">= {min_wait_s:g} s", preview=preview, sql=sql,
                        params={**params, "dry_run": False})
    return actions.run(rb, plan, allow_actions)


# -- step 5: long-running queries and transactions -------------------------------------------

@step("long_running")
def long_running(rb: Runbook, query_warning_s: float = 60, query_critical_s: float = 600,
                 transaction_warning_s: float = 3600,
                 transaction_critical_s: float = 4 * 3600) -> pd.DataFrame:
    df = rb.session.frame(queries.get("long_running"),
                          {"query_s": query_warning_s, "xact_s": transaction_warning_s})
    present.show_table(df.round(1), "long-running statements and transactions")
    found = []
    q = df[(df["state"] == "active") & (df["query_age_s"] > query_warning_s)]
    for _, r in q.iterrows():
        found.append(Finding(
            "long_query", grade(float(r["query_age_s"]), query_warning_s, query_critical_s),
            f"Statement running {r['query_age_s']:.0f} s: pid {r['pid']} ({r['application']})",
            f"user {r['user']}, database {r['database']}, from {r['client_addr']}: "
            f"{_short(r['query'], 200)}",
            metric=Metric("query_seconds", round(float(r["query_age_s"]), 1), query_warning_s),
            evidence=records(df.loc[[r.name]]),
            remediation="EXPLAIN it (step 7); cancel it if it hurts (pg_cancel_backend)"))
    t = df[df["xact_age_s"] > transaction_warning_s]
    for _, r in t.iterrows():
        found.append(Finding(
            "long_transaction",
            grade(float(r["xact_age_s"]), transaction_warning_s, transaction_critical_s),
            f"Transaction open {r['xact_age_s']:.0f} s: pid {r['pid']} ({r['application']}, "
            f"{r['state']})",
            f"user {r['user']}, database {r['database']}, from {r['client_addr']}; "
            + ("it holds a snapshot, so VACUUM cannot remove dead rows newer than it. "
               if r["holds_snapshot"] else "") + f"last query: {_short(r['query'], 200)}",
            metric=Metric("transaction_seconds", round(float(r["xact_age_s"]), 1),
                          transaction_warning_s),
            evidence=records(df.loc[[r.name]]),
            remediation="find the code path that keeps the transaction open; terminate the "
                        "session if it blocks vacuum or others"))
    rb.add(found or [Finding("long_running", "ok",
                             f"No statement over {query_warning_s:g} s and no transaction "
                             f"over {transaction_warning_s:g} s")])
    return df


# -- step 6: tables and indexes --------------------------------------------------------------

def reloption(options: list[str] | None, name: str) -> str | None:
    """One storage parameter from pg_class.reloptions ('autovacuum_enabled=false', ...)."""
    for opt in options or []:
        key, _, value = opt.partition("=")
        if key == name:
            return value
    return None


def _table_stats(s: Session, min_rows: int) -> pd.DataFrame:
    df = s.frame(queries.get("table_stats"), {"min_rows": min_rows})
    st = s.facts.settings
    opts = df["reloptions"]
    df["autovacuum_enabled"] = [reloption(o, "autovacuum_enabled") or "true" for o in opts]
    df["vacuum_scale_factor"] = [float(reloption(o, "autovacuum_vacuum_scale_factor")
                                       or st.get("autovacuum_vacuum_scale_factor", "0.2"))
                                 for o in opts]
    df["vacuum_threshold"] = [float(reloption(o, "autovacuum_vacuum_threshold")
                                    or st.get("autovacuum_vacuum_threshold", "50")) for o in opts]
    return df


def _window_scans(rb: Runbook) -> pd.DataFrame | None:
    """Per table, the scans of the sampling window (the two light snapshots' difference)."""
    before, after = rb.data.get("scans_before"), rb.data.get("scans_after")
    if before is None or after is None:
        return None
    m = after.merge(before, on="relid", how="left", suffixes=("", "_before"))
    out = pd.DataFrame({"relid": m["relid"]})
    for c in TABLE_COUNTERS:
        out[f"{c}_window"] = (m[c] - m[f"{c}_before"]).fillna(0).clip(lower=0)
    return out


def _tables(rb: Runbook, min_rows: int) -> pd.DataFrame:
    """Tables with at least MIN_ROWS live or dead tuples, with the window's scans merged in.
    Fetched once per run for the smallest threshold asked (tables_and_indexes asks for the
    smallest first); a larger threshold filters that frame."""
    for threshold, df in rb.data.get("tables_fetched", []):
        if threshold <= min_rows:
            size = df[["est_rows", "n_live_tup", "n_dead_tup"]].max(axis=1)
            kept: pd.DataFrame = df[size >= min_rows]
            return kept

    def fetch() -> pd.DataFrame:
        df = _table_stats(rb.session, min_rows)
        scans = _window_scans(rb)
        if scans is not None:
            df = df.merge(scans, on="relid", how="left")
            for c in TABLE_COUNTERS:
                df[f"{c}_window"] = df[f"{c}_window"].fillna(0)
        return df

    df = rb.cached(f"tables:{min_rows}", fetch)
    rb.data.setdefault("tables_fetched", []).append((min_rows, df))
    return df


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f} MB"


@step("seq_scans")
def seq_scans(rb: Runbook, large_table_rows: int = 10000) -> None:
    t = _tables(rb, large_table_rows)
    windowed = "seq_scan_window" in t
    col = "seq_tup_read_window" if windowed else "seq_tup_read"
    big = t[(t["est_rows"].clip(lower=0) >= large_table_rows) | (t["n_live_tup"] >= large_table_rows)]
    hot = big[(big[col] >= large_table_rows) & (big["seq_scan_window" if windowed else "seq_scan"] > 0)]
    hot = hot.sort_values(col, ascending=False)
    present.show_table(big.sort_values(col, ascending=False)[
        ["schema", "table", "est_rows", "size_bytes", "seq_scan", "idx_scan", "seq_tup_read",
         *([c + "_window" for c in TABLE_COUNTERS] if windowed else [])]].head(15),
        "sequential scans on large tables" + (" (window and lifetime)" if windowed else ""))
    rb.data["seq_scan_tables"] = set(hot["table"])
    chart = big.sort_values(col, ascending=False).head(15).iloc[::-1]
    if not chart.empty:
        present.show_figure({"data": [
            {"type": "bar", "orientation": "h", "name": "rows read by sequential scans",
             "x": chart[col].tolist(), "y": chart["table"].tolist()},
            {"type": "bar", "orientation": "h", "name": "index scans",
             "x": chart["idx_scan_window" if windowed else "idx_scan"].tolist(),
             "y": chart["table"].tolist()}],
            "layout": {"title": {"text": "Large tables: rows read by sequential scans vs index "
                                          "scans" + (" (window)" if windowed else "")},
                       "barmode": "group", "xaxis": {"type": "log"}}})
    found = []
    for _, r in hot.head(10).iterrows():
        scans = int(r["seq_scan_window" if windowed else "seq_scan"])
        found.append(Finding(
            "seq_scan", "warning",
            f"Sequential scans on {r['schema']}.{r['table']} ({int(r['n_live_tup'])} rows): "
            f"{scans} scans read {int(r[col])} rows" + (" in the window" if windowed else ""),
            f"size {_mb(r['size_bytes'])} (pg_class estimate); index scans "
            f"{int(r['idx_scan_window' if windowed else 'idx_scan'])}",
            metric=Metric("seq_tup_read", int(r[col]), large_table_rows),
            evidence=records(t.loc[[r.name], ["schema", "table", "est_rows", "seq_scan",
                                              "seq_tup_read", "idx_scan"]]),
            remediation="find the statement (steps 1 and 7) and index its filter columns"))
    rb.add(found or [Finding("seq_scan", "ok",
                             f"No sequential scan on a table of {large_table_rows}+ rows"
                             + (" in the window" if windowed else ""))])


@step("cache_hit")
def cache_hit(rb: Runbook, warning: float = 0.99, min_blocks: int = 10000,
              large_table_rows: int = 10000) -> None:
    """The database's buffer cache hit ratio (one row of pg_stat_database, whatever the
    catalog's size), with the large tables that read the most blocks as evidence."""
    row = rb.session.row(queries.get("cache_hit"))
    h, r = float(row["blks_hit"] or 0), float(row["blks_read"] or 0)
    if h + r < min_blocks:
        rb.add(Finding("cache_hit", "ok", f"Cache hit ratio not judged: {int(h + r)} block "
                       f"accesses since the stats reset (< {min_blocks})"))
        return
    share = h / (h + r)
    try:
        t = _tables(rb, large_table_rows)
        readers = (t.assign(hit_ratio=(t["heap_blks_hit"] / (t["heap_blks_hit"]
                                                            + t["heap_blks_read"]).clip(lower=1))
                            .round(4)).sort_values("heap_blks_read", ascending=False).head(5))
    except SkipStep:  # the ratio stands on its own; the evidence is a bonus
        readers = pd.DataFrame(columns=["schema", "table", "heap_blks_read", "heap_blks_hit",
                                        "hit_ratio"])
    rb.add(Finding(
        "cache_hit", "warning" if share < ratio(warning) else "ok",
        f"Cache hit ratio {share:.2%} in {rb.session.facts.database}",
        f"{int(r)} blocks read from disk or the OS cache, {int(h)} found in shared buffers "
        f"(tables, indexes and catalogs, since {row['stats_reset'] or 'the stats reset'})",
        metric=Metric("cache_hit_ratio", round(share, 5), ratio(warning)),
        evidence=records(readers[["schema", "table", "heap_blks_read", "heap_blks_hit",
                                  "hit_ratio"]]),
        remediation="" if share >= ratio(warning) else
        "the working set does not fit shared_buffers: raise it (about 25 % of RAM), or stop "
        "the scans that read the most blocks (listed)"))


@step("fk_without_index")
def fk_without_index(rb: Runbook, min_rows: int = 0) -> pd.DataFrame:
    df = rb.session.frame(queries.get("fk_without_index"))
    df = df[df["child_est_rows"].clip(lower=0) >= min_rows]
    present.show_table(df, "foreign keys without an index on the referencing columns")
    found = [Finding(
        "fk_without_index", "warning",
        f"Foreign key {r['constraint_name']}: {r['child_table']}({', '.join(r['columns'])}) has "
        f"no index",
        f"every DELETE or key UPDATE on {r['parent_table']} scans {r['child_table']} "
        f"(~{max(0, int(r['child_est_rows']))} rows; ON DELETE {r['on_delete']}): the seed's 30 s "
        "account deletion",
        evidence=records(df.loc[[i]]),
        remediation=f"CREATE INDEX CONCURRENTLY ON {r['child_table']} "
                    f"({', '.join(r['columns'])});")
        for i, r in df.iterrows()]
    rb.add(found or [Finding("fk_without_index", "ok", "Every foreign key is indexed")])
    return df


def with_definitions(rb: Runbook, ix: pd.DataFrame) -> pd.DataFrame:
    """IX (a few reported indexes) with their definitions, assembled from the catalogs."""
    if ix.empty:
        return ix.assign(definition=pd.Series(dtype=str))
    cols = rb.session.frame(queries.get("index_columns"),
                            {"oids": [int(o) for o in ix["indexrelid"]]})
    names = dict(zip(cols["indexrelid"], cols["columns"], strict=True))
    return ix.assign(definition=[
        f"CREATE {'UNIQUE ' if u else ''}INDEX {i} ON {s}.{t} USING {m} "
        f"({', '.join(names.get(o, []))})" + (f" WHERE {p}" if p else "")
        for o, u, i, s, t, m, p in zip(ix["indexrelid"], ix["is_unique"], ix["index"],
                                       ix["schema"], ix["table"], ix["method"], ix["predicate"],
                                       strict=True)])


@step("unused_indexes")
def unused_indexes(rb: Runbook, min_mb: float = 10) -> None:
    unused = rb.session.frame(queries.get("unused_indexes"), {"min_bytes": int(min_mb * 2**20)})
    unused = with_definitions(rb, unused.head(20))
    found = [Finding(
        "unused_index", "warning",
        f"Unused index {r['schema']}.{r['index']} on {r['table']} ({_mb(r['size_bytes'])}, 0 scans)",
        f"{r['definition']}. It slows every write and costs memory; 0 scans since the stats reset "
        "(check replicas before dropping: their scans are not counted here)",
        metric=Metric("index_size_bytes", int(r["size_bytes"]), int(min_mb * 2**20)),
        evidence=records(unused.loc[[i], ["schema", "table", "index", "size_bytes", "idx_scan",
                                          "definition"]]),
        remediation=f"DROP INDEX CONCURRENTLY {r['schema']}.{r['index']};")
        for i, r in unused.iterrows()]
    rb.add(found or [Finding("unused_index", "ok",
                             f"No unused index of {min_mb:g} MB or more")])


@step("duplicate_indexes")
def duplicate_indexes(rb: Runbook) -> None:
    dups = with_definitions(rb, rb.session.frame(queries.get("duplicate_indexes")))
    found = []
    for _, group in dups.groupby("key"):
        keep = group.sort_values(["is_primary", "is_unique", "backs_constraint", "idx_scan"],
                                 ascending=False).iloc[0]
        for _, r in group[group["indexrelid"] != keep["indexrelid"]].iterrows():
            found.append(Finding(
                "duplicate_index", "warning",
                f"Duplicate index {r['schema']}.{r['index']} repeats {keep['index']} on "
                f"{r['table']}",
                f"same columns, operator classes, expressions and predicate: {r['definition']}",
                evidence=records(group[["index", "size_bytes", "idx_scan", "is_unique",
                                        "definition"]]),
                remediation=f"DROP INDEX CONCURRENTLY {r['schema']}.{r['index']};"))
    rb.add(found or [Finding("duplicate_index", "ok", "No duplicate index")])


@step("invalid_indexes")
def invalid_indexes(rb: Runbook) -> None:
    bad = with_definitions(rb, rb.session.frame(queries.get("invalid_indexes")))
    found = [Finding(
        "invalid_index", "warning",
        f"Invalid index {r['schema']}.{r['index']} on {r['table']}",
        "left by a failed CREATE INDEX CONCURRENTLY or REINDEX: the planner ignores it, writes "
        f"still maintain it. {r['definition']}",
        evidence=records(bad.loc[[i], ["schema", "table", "index", "definition"]]),
        remediation=f"DROP INDEX CONCURRENTLY {r['schema']}.{r['index']}; then create it again")
        for i, r in bad.iterrows()]
    rb.add(found or [Finding("invalid_index", "ok", "No invalid index")])


@step("dead_tuples")
def dead_tuples(rb: Runbook, ratio_warning: float = 0.20, min_dead: int = 10000) -> None:
    t = _tables(rb, min_dead)
    dead_share = t["n_dead_tup"] / (t["n_live_tup"] + t["n_dead_tup"]).clip(lower=1)
    threshold = t["vacuum_threshold"] + t["vacuum_scale_factor"] * t["est_rows"].clip(lower=0)
    t = t.assign(dead_share=dead_share.round(3), autovacuum_due=t["n_dead_tup"] > threshold,
                 autovacuum_threshold=threshold.round(0))
    bad = t[(t["dead_share"] > ratio(ratio_warning)) & (t["n_dead_tup"] >= min_dead)]
    present.show_table(t.sort_values("n_dead_tup", ascending=False)[
        ["schema", "table", "n_live_tup", "n_dead_tup", "dead_share", "autovacuum_enabled",
         "last_autovacuum", "last_vacuum"]].head(15), "dead tuples and vacuum")
    found = []
    for _, r in bad.sort_values("n_dead_tup", ascending=False).head(10).iterrows():
        off = str(r["autovacuum_enabled"]).lower() in ("false", "off", "0", "no")
        last = r["last_autovacuum"] if pd.notna(r["last_autovacuum"]) else None
        found.append(Finding(
            "dead_tuples", "warning",
            f"{r['schema']}.{r['table']}: {r['dead_share']:.0%} dead tuples "
            f"({int(r['n_dead_tup'])} dead, {int(r['n_live_tup'])} live)"
            + (": autovacuum is disabled on it" if off else ""),
            ("autovacuum_enabled = false on this table. " if off else "")
            + ("autovacuum is behind: it is due past "
               f"{int(r['autovacuum_threshold'])} dead tuples. " if r["autovacuum_due"] and not off
               else "")
            + f"last autovacuum: {last or 'never'}; dead rows bloat the table and every "
            "scan reads them",
            metric=Metric("dead_tuple_ratio", float(r["dead_share"]), ratio(ratio_warning)),
            evidence=records(t.loc[[r.name], ["schema", "table", "n_live_tup", "n_dead_tup",
                                              "autovacuum_enabled", "last_autovacuum"]]),
            remediation=(f"ALTER TABLE {r['schema']}.{r['table']} RESET (autovacuum_enabled); "
                         if off else "") + f"VACUUM (VERBOSE) {r['schema']}.{r['table']}; look "
                         "for long transactions holding back the xmin horizon (step 5)"))
    rb.add(found or [Finding("dead_tuples", "ok",
                             f"No table with more than {ratio(ratio_warning):.0%} dead tuples")])


@step("xid_age")
def xid_age(rb: Runbook, warning: float = 0.50, critical: float = 0.75) -> None:
    df = rb.session.frame(queries.get("xid_age"))
    df = df.assign(share=df["xid_age"] / WRAPAROUND)
    present.show_table(df.round({"share": 4}), "transaction ID age per database")
    r = df.iloc[0]
    sev = grade(float(r["share"]), ratio(warning), ratio(critical))
    rb.add(Finding(
        "xid_age", sev,
        f"Oldest transaction ID age: {int(r['xid_age']):,} in {r['database']} "
        f"({r['share']:.1%} of the wraparound horizon)",
        f"autovacuum_freeze_max_age is {int(r['freeze_max_age']):,}",
        metric=Metric("xid_age_ratio", round(float(r["share"]), 6), ratio(warning)),
        evidence=records(df),
        remediation="" if sev == "ok" else
        "VACUUM (FREEZE) the oldest tables; find what holds back freezing (long transactions, "
        "prepared transactions, replication slots)"))


def tables_and_indexes(rb: Runbook, large_table_rows: int = 10000, cache_hit_warning: float = 0.99,
                       unused_index_min_mb: float = 10, dead_tuple_ratio_warning: float = 0.20,
                       dead_tuples_min: int = 10000, xid_age_warning: float = 0.50,
                       xid_age_critical: float = 0.75) -> None:
    """Step 6 in one call; each check is its own step, so one failure skips only itself."""
    try:  # one fetch for the smallest threshold; every check below filters it
        _tables(rb, min(large_table_rows, dead_tuples_min))
    except SkipStep:
        pass  # remembered: each check that needs the tables says it was skipped, and why
    seq_scans(rb, large_table_rows)
    cache_hit(rb, cache_hit_warning, large_table_rows=large_table_rows)
    fk_without_index(rb)
    unused_indexes(rb, unused_index_min_mb)
    duplicate_indexes(rb)
    invalid_indexes(rb)
    dead_tuples(rb, dead_tuple_ratio_warning, dead_tuples_min)
    xid_age(rb, xid_age_warning, xid_age_critical)


# -- step 7: plans ---------------------------------------------------------------------------

_EXPLAINABLE = re.compile(r"^\s*(select|with|insert|update|delete|merge|values|table)\b", re.I)
_FILTER_COLUMN = re.compile(r"\(?\(?\s*([a-z_][a-z0-9_]*)\s*(?:=|<|>|~~|<=|>=|ANY)", re.I)


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if plan.get("Node Type") == "Seq Scan":
        out.append(plan)
    for child in plan.get("Plans", []):
        out.extend(_scans(child))
    return out


def suggest_index(scan: dict[str, Any]) -> str | None:
    """An index for a sequential scan's filter: its column(s) compared with a value."""
    cond = scan.get("Filter", "")
    cols = []
    for m in _FILTER_COLUMN.finditer(cond):
        if m.group(1).lower() not in ("and", "or", "not") and m.group(1) not in cols:
            cols.append(m.group(1))
    if not cols:
        return None
    rel = scan.get("Relation Name", "")
    schema = scan.get("Schema", "")
    return f"CREATE INDEX CONCURRENTLY ON {schema + '.' if schema else ''}{rel} ({', '.join(cols[:3])});"


@step("plans")
def plans(rb: Runbook, top_n: int = 5, large_table_rows: int = 10000,
          explain_analyze: bool = False) -> pd.DataFrame:
    s = rb.session
    delta = _window_statements(rb)
    here = delta[delta["current_db"].astype(bool) & delta["query"].str.match(_EXPLAINABLE)]
    generic = s.facts.version_num >= 160000
    if "hypopg" not in s.facts.extensions:
        rb.skip("hypopg", "hypopg is not installed: plans with the suggested index are not costed "
                "(CREATE EXTENSION hypopg)")
    else:
        rb.skip("hypopg", "hypopg is installed, but costing plans with the suggested index is not "
                "implemented yet: create it with hypopg_create_index() and EXPLAIN by hand")
    rows, found = [], []
    for _, r in here.head(top_n).iterrows():
        text = str(r["query"])
        has_params = bool(re.search(r"\$\d", text))
        if has_params and not generic:
            rows.append({"queryid": r["queryid"], "plan": "skipped: normalized text needs "
                         "GENERIC_PLAN (16+)", "query": text})
            continue
        opts = ["VERBOSE", "FORMAT JSON"]
        if has_params:
            opts.append("GENERIC_PLAN")
        elif explain_analyze and text.lstrip().lower().startswith(("select", "with", "values", "table")):
            opts.append("ANALYZE")
        try:
            plan = s.conn.execute(f"EXPLAIN {queries.MARKER} ({', '.join(opts)}) {text}"
                                  .encode()).fetchone()
        except psycopg.Error as exc:
            rows.append({"queryid": r["queryid"], "plan": f"skipped: {exc.diag.message_primary}",
                         "query": text})
            continue
        assert plan is not None
        tree = plan["QUERY PLAN"][0]["Plan"]
        big = [sc for sc in _scans(tree) if float(sc.get("Plan Rows", 0)) >= 0 and
               _rel_rows(rb, sc.get("Relation Name", ""), large_table_rows) >= large_table_rows]
        rows.append({"queryid": r["queryid"], "total_cost": tree.get("Total Cost"),
                     "plan": tree.get("Node Type"), "seq_scans": ", ".join(
                         sc.get("Relation Name", "") for sc in _scans(tree)), "query": text})
        for sc in big:
            idx = suggest_index(sc)
            found.append(Finding(
                "plan_seq_scan", "warning",
                f"Plan scans {sc.get('Relation Name')} sequentially "
                f"(~{_rel_rows(rb, sc.get('Relation Name', ''), large_table_rows):,.0f} rows): "
                f"{_short(text)}",
                f"filter: {sc.get('Filter', '(none)')}; statement mean {r['mean_ms']:.1f} ms, "
                f"{int(r['calls'])} calls in the window"
                + (f"; suggested index: {idx}" if idx else ""),
                evidence=[{"queryid": r["queryid"], "node": sc.get("Node Type"),
                           "relation": sc.get("Relation Name"), "filter": sc.get("Filter"),
                           "total_cost": sc.get("Total Cost"), "suggested_index": idx}],
                remediation=idx or "index the columns this statement filters or joins on"))
    out = pd.DataFrame(rows)
    present.show_table(out, "plans of the top statements (EXPLAIN"
                       + (", GENERIC_PLAN for normalized texts)" if generic else ")"))
    rb.add(found or [Finding("plans", "ok", "No top statement plans a sequential scan on a "
                             f"table of {large_table_rows}+ rows")])
    return out


def _rel_rows(rb: Runbook, relname: str, large_table_rows: int) -> float:
    """Rows of a relation, 0 for one under LARGE_TABLE_ROWS (not fetched)."""
    t = _tables(rb, large_table_rows)
    hit = t[t["table"] == relname]
    return float(max(hit["est_rows"].max(), hit["n_live_tup"].max())) if len(hit) else 0.0


# -- step 8: N+1 suspects --------------------------------------------------------------------

@step("n_plus_one")
def n_plus_one(rb: Runbook, min_calls: int = 100, max_rows_per_call: float = 1.5,
               max_mean_ms: float = 5.0, tolerance: float = 0.2) -> pd.DataFrame:
    """Heuristic: a statement called very often, ~1 row per call, fast, whose call count matches
    the rows returned by another statement in the same window (the seed's posts-then-users loop)."""
    d = _window_statements(rb)
    many = d[(d["calls"] >= min_calls) & (d["rows_per_call"] <= max_rows_per_call)
             & (d["mean_ms"] <= max_mean_ms)]
    found, rows = [], []
    for _, b in many.iterrows():
        parents = d[(d["queryid"] != b["queryid"]) & (d["calls"] * 5 <= b["calls"])
                    & ((d["rows"] - b["calls"]).abs() <= tolerance * b["calls"])]
        for _, a in parents.head(1).iterrows():
            rows.append({"per_row_statement": b["query"], "calls": int(b["calls"]),
                         "parent_statement": a["query"], "parent_calls": int(a["calls"]),
                         "parent_rows": int(a["rows"])})
            found.append(Finding(
                "n_plus_one", "warning",
                f"N+1 suspect (heuristic): {_short(b['query'], 70)} ran {int(b['calls'])} times, "
                f"once per row of {_short(a['query'], 60)}",
                f"{int(a['calls'])} calls of the parent returned {int(a['rows'])} rows, then the "
                f"child ran {int(b['calls'])} times ({b['rows_per_call']:.2f} rows and "
                f"{b['mean_ms']:.2f} ms per call) in the window; user {b['user']}",
                metric=Metric("per_row_calls", int(b["calls"]), min_calls),
                evidence=[rows[-1]],
                remediation="load the related rows in one query (Prisma: include/select on the "
                            "relation, or findMany with `in`) instead of one per row"))
    out = pd.DataFrame(rows)
    present.show_table(out, "N+1 suspects (heuristic)")
    rb.add(found or [Finding("n_plus_one", "ok", "No N+1 pattern in the window")])
    return out


# -- the whole runbook, for scripts, tests and benchmarks ------------------------------------

def run_all(rb: Runbook, sample_seconds: float = 10, **p: Any) -> dict[str, Any]:
    """All steps with notebook-style parameters (the notebook calls them one per cell)."""
    large = p.get("large_table_rows", 10000)
    window(rb, sample_seconds, large)
    top_queries(rb, p.get("dominant_share", 0.30), p.get("slow_query_ms", 2000))
    slow_share(rb, p.get("log_source", "auto"), p.get("slow_query_ms", 2000),
               p.get("slow_query_share_warning", 0.10), p.get("p95_target_ms", 200),
               p.get("since", ""), p.get("log_line_prefix", ""))
    load(rb, p.get("lock_share_warning", 0.5))
    blocking(rb, p.get("blocking_warning_s", 60), p.get("blocking_critical_s", 120))
    long_running(rb, p.get("long_query_warning_s", 60), p.get("long_query_critical_s", 600),
                 p.get("long_transaction_warning_s", 3600),
                 p.get("long_transaction_critical_s", 14400))
    tables_and_indexes(rb, large, p.get("cache_hit_warning", 0.99),
                       p.get("unused_index_min_mb", 10), p.get("dead_tuple_ratio_warning", 0.20),
                       p.get("dead_tuples_min", 10000), p.get("xid_age_warning", 0.50),
                       p.get("xid_age_critical", 0.75))
    plans(rb, p.get("plans_top_n", 5), large, p.get("explain_analyze", False))
    n_plus_one(rb, p.get("n_plus_one_min_calls", 100))
    return rb.finish()
