"""What the database did during the window: the statements that took its time, the load by
wait event, N+1 patterns, and statement durations from the server log.

Bounds (parameters): a statement above 30 % of the window's database time is called out (a
warning when it alone keeps half a core busy); a statement slower than 2 s is slow, and more
than 10 % slow statements warn; the p95 target is 200 ms (the default alert thresholds).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import logs, present
from ..errors import SkipStep
from ..findings import Finding, Metric, graded, records
from ..params import LOG_LINE_PREFIX, LOG_SOURCE
from ..probes import catalog as _catalog  # noqa: F401 - registers the catalog probes
from ..probes.window import Window
from ..registry import Check, Param, Params, Probe, register, register_probe
from ..sqltext import ident, short

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook

DOMINANT = Param("dominant_share", float, 0.30,
                 "one statement above this share of the window time is called out", "share",
                 0.01, 1)
SLOW_MS = Param("slow_query_ms", float, 2000.0, "a statement slower than this is slow", "ms", 1)
SLOW_SHARE = Param("slow_query_share_warning", float, 0.10,
                   "warn when more than this share of statements is slow", "share", 0, 1)
P95_TARGET = Param("p95_target_ms", float, 200.0, "p95 statement time target", "ms", 1)
LOCK_SHARE = Param("lock_share_warning", float, 0.5,
                   "warn when this share of active time waits for locks", "share", 0.01, 1)
SINCE = Param("since", str, "",
              "log window for durations: empty (the sampling window), 15m, 1h or an ISO time",
              form=logs.parse_since, form_help="15m, 1h, 1d or an ISO 8601 time")
N1_CALLS = Param("n_plus_one_min_calls", int, 100,
                 "calls in the window before a per-row statement is an N+1 suspect", "", 1)
BUSY_SHARE = 0.5  # a dominant statement that keeps half a core busy is a warning
SHOWN = ["queryid", "time_share", "total_exec_time", "calls", "mean_ms", "rows", "shared_blks_read",
         "temp_blks_written", "user", "database", "query"]


# -- the window itself -------------------------------------------------------------------------

def window(w: Window, p: Params) -> list[Finding]:
    return []  # the window is the evidence of the checks below


def show_window(w: Window, found: list[Finding], p: Params) -> None:
    present.show_text(f"sampled {w.seconds:.1f} s: {w.n_samples} activity samples")
    if w.stmts_before is None:
        seen = (w.samples.groupby("query").size().rename("samples").reset_index()
                .sort_values("samples", ascending=False)) if not w.samples.empty else w.samples
        present.show_table(seen.head(10), "statements seen active while sampling "
                                          "pg_stat_activity (fallback without pg_stat_statements)")


register(Check(
    "latency.window", "The sampling window",
    """Two snapshots sample_seconds apart, pg_stat_activity sampled every 100 ms in between:
    everything below is judged over this window, not over the server's lifetime.""",
    window, probes=("window",), show=show_window))


# -- top statements ----------------------------------------------------------------------------

CHEAP_MS = 1.0  # a statement faster than this per call dominates by its number of calls


def top_queries(w: Window, p: Params) -> list[Finding]:
    if w.stmts_before is None:
        return [Finding("statements_setup", "warning",
                        "Statement statistics unavailable: the top statements cannot be measured",
                        w.statements_skipped,
                        remediation=w.statements_skipped.split(": ", 1)[-1])]
    delta = w.delta
    dominant, slow_ms = p["dominant_share"], p["slow_query_ms"]
    shown = rounded(delta)
    found: list[Finding] = []
    for _, r in delta[delta["time_share"] > dominant].iterrows():
        busy = float(r["total_exec_time"]) / 1000 / max(w.seconds, 1e-9)
        found.append(Finding(
            "dominant_query", "warning" if busy >= BUSY_SHARE else "info",
            f"One statement takes {r['time_share']:.0%} of the database time in the last "
            f"{w.seconds:.0f} s: {short(r['query'])}",
            f"{int(r['calls'])} calls, mean {r['mean_ms']:.1f} ms, {int(r['rows'])} rows, "
            f"user {r['user']}, database {r['database']}, queryid {r['queryid']}; it kept "
            f"{busy:.2f} sessions busy on average",
            metric=Metric("query_time_share", round(float(r["time_share"]), 4), dominant),
            evidence=records(shown.loc[[r.name], SHOWN]),
            remediation=(f"it is cheap per call ({r['mean_ms']:.2f} ms): fewer calls help more "
                         "than an index; batch them (an N+1 loop?) or cache the result"
                         if r["mean_ms"] < CHEAP_MS else
                         "look at its plan and the tables it scans (below); add the missing "
                         "index or cache the result")))
    for _, r in delta[delta["mean_ms"] > slow_ms].head(5).iterrows():
        found.append(Finding(
            "slow_query", "warning",
            f"Slow statement: mean {r['mean_ms'] / 1000:.1f} s over {int(r['calls'])} calls: "
            f"{short(r['query'])}",
            f"user {r['user']}, database {r['database']}; slower than {slow_ms:g} ms",
            metric=Metric("query_mean_ms", round(float(r["mean_ms"]), 1), slow_ms),
            evidence=records(shown.loc[[r.name], SHOWN]),
            remediation="look at its plan and at lock waits (below)"))
    total_ms = float(delta["total_exec_time"].sum())
    return found or [Finding("top_queries", "ok",
                             f"No statement dominates the last {w.seconds:.0f} s "
                             f"({len(delta)} statements, {total_ms:.0f} ms of database time)")]


def rounded(delta: pd.DataFrame) -> pd.DataFrame:
    return delta.assign(time_share=delta["time_share"].round(3),
                        total_exec_time=delta["total_exec_time"].round(1),
                        mean_ms=delta["mean_ms"].round(2))


def show_top(w: Window, found: list[Finding], p: Params) -> None:
    """One table of the window's statements by total time (with the columns the other orderings
    sort by); those orderings and the lifetime view collapsed below it, not four copies."""
    if w.stmts_after is None:
        return
    shown = rounded(w.delta)
    present.show_table(shown[SHOWN].head(10), f"top statements in the last {w.seconds:.0f} s "
                                              "by total time")
    for col, title in (("mean_ms", "mean time"), ("calls", "calls"),
                       ("shared_blks_read", "blocks read from disk")):
        if shown[col].sum() > 0:
            present.show_table(shown.sort_values(col, ascending=False)[SHOWN].head(5),
                               f"the same statements by {title}", collapsed=True)
    lifetime = w.stmts_after.assign(
        mean_ms=lambda d: (d["total_exec_time"] / d["calls"].clip(lower=1)).round(2))
    present.show_table(lifetime.sort_values("total_exec_time", ascending=False)
                       [["total_exec_time", "calls", "mean_ms", "rows", "user", "database",
                         "query"]].head(10), "lifetime view (since the last stats reset)",
                       collapsed=True)
    if not shown.empty:
        top = shown.head(10).iloc[::-1]
        ranks = range(len(top), 0, -1)  # the table's rows: two texts may shorten alike
        present.show_figure({"data": [{"type": "bar", "orientation": "h",
                                       "x": top["time_share"].tolist(),
                                       "y": [f"#{n} {short(q, 30)}"
                                             for n, q in zip(ranks, top["query"], strict=True)],
                                       "hovertext": [short(q, 200) for q in top["query"]]}],
                             "layout": {"title": {"text": "Share of database time, last "
                                                          f"{w.seconds:.0f} s"},
                                        "yaxis": {"automargin": True},
                                        "xaxis": {"tickformat": ".0%"}}})


register(Check(
    "latency.top_queries", "Top statements now",
    """The statements that took the database's time during the window (pg_stat_statements,
    two snapshots). One statement above dominant_share is called out, a warning when it alone
    keeps half a core busy; statements slower than slow_query_ms on average warn. Without
    pg_stat_statements this is a warning that says how to enable it.""",
    top_queries, probes=("window",), params=(DOMINANT, SLOW_MS),
    emits=("dominant_query", "slow_query", "top_queries", "statements_setup"), show=show_top))


# -- slow share and p95 from the server log ----------------------------------------------------

@dataclass(frozen=True)
class Durations:
    """Statement durations logged during the window, beside the window's calls."""

    scan: logs.Scan
    start: dt.datetime
    lmds: int  # log_min_duration_statement, ms
    calls: int | None  # calls in the window (pg_stat_statements), None without it


def log_durations(rb: Runbook, p: Params) -> Durations:
    s = rb.session
    w: Window = rb.snapshot("window")
    lmds = int(s.facts.settings.get("log_min_duration_statement", "-1") or -1)
    source = p["log_source"]
    if lmds < 0 and source in ("", "auto"):
        raise SkipStep("not measurable: log_min_duration_statement is off, so the server logs no "
                       "durations; set it (0 logs every statement) or pass log_source")
    start = logs.parse_since(p["since"]) or w.start
    scan = logs.scan_source(s, source, start, p["log_line_prefix"], slow_ms=p["slow_query_ms"],
                            errors=False, until=w.end,  # the same population as the window
                            progress=rb.progress("reading the server log (MB)"))
    calls = None if w.stmts_after is None else int(w.delta["calls"].sum())
    return Durations(scan, start, lmds, calls)


register_probe(Probe("log_durations", log_durations,
                     "Statement durations from the server log, for the window.",
                     params=(LOG_SOURCE, LOG_LINE_PREFIX, SINCE, SLOW_MS),
                     needs=("connection", "window")))


def slow_share(d: Durations, p: Params) -> list[Finding]:
    scan, lmds, calls = d.scan, d.lmds, d.calls
    slow_ms, warn = p["slow_query_ms"], p["slow_query_share_warning"]
    found = logs.setup_findings(scan)
    n_slow, logged = scan.durations.over, scan.durations.count
    if lmds == 0 and logged:
        p95 = scan.durations.quantile(0.95)
        share, denominator = n_slow / logged, logged
        found.append(Finding(
            "p95_latency", "warning" if p95 > p["p95_target_ms"] else "ok",
            f"p95 statement time {p95:.1f} ms over {logged} logged statements "
            f"(target {p['p95_target_ms']:g} ms)",
            f"source: {scan.source}; every statement is logged (log_min_duration_statement = 0); "
            "the p95 is read from a histogram with 0.1 % resolution",
            metric=Metric("p95_ms", round(p95, 2), p["p95_target_ms"])))
    elif calls and 0 <= lmds <= slow_ms:
        share, denominator = n_slow / calls, calls
    else:
        raise SkipStep(f"not measurable: {logged} logged durations and "
                       f"{'no' if not calls else calls} calls counted in the window; "
                       f"log_min_duration_statement is {lmds} ms (needs 0, or at most "
                       f"{slow_ms:g} ms with pg_stat_statements)")
    found.append(graded(
        "slow_query_share", "slow_query_share", share, warn, 1.0,
        title=f"{share:.1%} of statements slower than {slow_ms:g} ms ({n_slow} of {denominator})",
        detail=f"source: {scan.source}", evidence=records(_slowest(scan)),
        remediation="the slowest statements are listed: look at their plans"))
    return found


def _slowest(scan: logs.Scan) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(scan.durations.slowest)


def show_durations(d: Durations, found: list[Finding], p: Params) -> None:
    import pandas as pd

    scan = d.scan
    present.show_text(f"durations from {scan.source} since {d.start:%H:%M:%S} UTC: "
                      f"{scan.durations.count} logged (log_min_duration_statement = {d.lmds} ms)"
                      + (f"; {scan.malformed} malformed records skipped" if scan.malformed
                         else ""))
    if d.lmds != 0 and d.calls:
        over = scan.durations.count
        present.show_text(f"p95 is below {d.lmds} ms ({over} of {d.calls} calls took longer)"
                          if over / d.calls < 0.05 else
                          f"p95 is not measurable: {over / d.calls:.0%} of calls exceed "
                          f"log_min_duration_statement ({d.lmds} ms)")
    if scan.durations.statements:
        present.show_table(pd.DataFrame(list(logs.statements(scan.durations))).head(10),
                           "logged statements by total time")


register(Check(
    "latency.slow_share", "Slow statements and p95 from the server log",
    """Durations from the server log (never guessed): the share of statements slower than
    slow_query_ms and, when every statement is logged, the p95 against its target. A log that
    cannot be trusted (a prefix without fields, lines that do not match) is a log_setup
    warning.""",
    slow_share, probes=("log_durations",), params=(SLOW_SHARE, P95_TARGET),
    emits=("p95_latency", "slow_query_share", "log_setup", "log_coverage", "log_malformed"),
    show=show_durations))


# -- load --------------------------------------------------------------------------------------

# a warning needs at least one session waiting for a lock on average over the window: a busy
# healthy server with a hot row (pgbench's branches) has brief lock waits between its commits
# that make up most of a small active time, and no one waits long
LOCK_SESSIONS = 1.0


def load(w: Window, p: Params) -> list[Finding]:
    if not w.sees_all:
        raise SkipStep(f"role {w.role} lacks pg_read_all_stats: other roles' sessions show no "
                       f"state, so the load cannot be measured; GRANT pg_monitor TO {ident(w.role)}")
    samples, n = w.samples, max(1, w.n_samples)
    if samples.empty:
        return [Finding("load", "ok", "No active session while sampling",
                        f"{n} samples of pg_stat_activity over {w.seconds:.0f} s",
                        metric=Metric("average_active_sessions", 0.0))]
    aas = len(samples) / n
    by_type = samples.groupby("wait_event_type").size().sort_values(ascending=False)
    top = wait_events(samples)
    lock_share = float(by_type.get("Lock", 0)) / len(samples)
    waiting = aas * lock_share  # sessions waiting for a lock, on average over the window
    sev = "warning" if lock_share >= p["lock_share_warning"] and waiting >= LOCK_SESSIONS else \
        "info"
    mix = ", ".join(f"{k} {v / len(samples):.0%}" for k, v in by_type.head(4).items())
    return [Finding("load", sev, f"Average active sessions {aas:.2f} ({mix})",
                    f"top wait: {top.iloc[0]['wait_event_type']}/{top.iloc[0]['wait_event']}",
                    metric=Metric("average_active_sessions", round(aas, 3)),
                    evidence=records(top.head(10)),
                    remediation="" if sev == "info" else
                    "sessions mostly wait for locks: see the blocking tree")]


def wait_events(samples: pd.DataFrame) -> pd.DataFrame:
    top = (samples.groupby(["wait_event_type", "wait_event"]).size().rename("samples")
           .reset_index().sort_values("samples", ascending=False))
    return top.assign(share=(top["samples"] / len(samples)).round(3))


def show_load(w: Window, found: list[Finding], p: Params) -> None:
    import pandas as pd

    if w.samples.empty:
        return
    present.show_table(wait_events(w.samples).head(15), "top wait events (share of active time)")
    ts = pd.to_datetime(w.samples["ts"], utc=True)
    series = w.samples.assign(t=(ts - ts.min()).dt.total_seconds().round(1))
    per = series.groupby(["t", "wait_event_type"]).size().rename("sessions").reset_index()
    present.show_figure({"data": [{"type": "scatter", "mode": "lines", "stackgroup": "one",
                                   "name": str(k), "x": g["t"].tolist(),
                                   "y": g["sessions"].tolist()}
                                  for k, g in per.groupby("wait_event_type")],
                         "layout": {"title": {"text": "Active sessions by wait event type"},
                                    "xaxis": {"title": {"text": "seconds into the window"}},
                                    "yaxis": {"title": {"text": "sessions"}}}})


register(Check(
    "latency.load", "Database load",
    """Active sessions sampled every 100 ms, by wait event: CPU, IO, Lock, LWLock, Client. A
    load made mostly of lock waits, with at least one session waiting on average, is a
    warning: see the blocking tree.""",
    load, probes=("window",), params=(LOCK_SHARE,), emits=("load",), show=show_load))


# -- N+1 ---------------------------------------------------------------------------------------

MAX_ROWS_PER_CALL, MAX_MEAN_MS, TOLERANCE = 1.5, 5.0, 0.2
RI_QUERY = "OPERATOR(pg_catalog."  # the server's own foreign key checks and cascades: no app loop


def n_plus_one(w: Window, p: Params) -> list[Finding]:
    """Heuristic: a statement called very often, about 1 row per call, fast, whose call count
    matches the rows returned by another statement in the same window."""
    d = w.delta
    d = d[~d["query"].str.contains(RI_QUERY, regex=False)]
    min_calls = p["n_plus_one_min_calls"]
    many = d[(d["calls"] >= min_calls) & (d["rows_per_call"] <= MAX_ROWS_PER_CALL)
             & (d["mean_ms"] <= MAX_MEAN_MS)]
    found = []
    for _, b in many.iterrows():
        parents = d[(d["queryid"] != b["queryid"]) & (d["calls"] * 5 <= b["calls"])
                    & ((d["rows"] - b["calls"]).abs() <= TOLERANCE * b["calls"])]
        for _, a in parents.head(1).iterrows():
            row: dict[str, Any] = {
                "per_row_statement": b["query"], "calls": int(b["calls"]),
                "parent_statement": a["query"], "parent_calls": int(a["calls"]),
                "parent_rows": int(a["rows"])}
            found.append(Finding(
                "n_plus_one", "warning",
                f"N+1 suspect (heuristic): {short(b['query'], 70)} ran {int(b['calls'])} times, "
                f"once per row of {short(a['query'], 60)}",
                f"{int(a['calls'])} calls of the parent returned {int(a['rows'])} rows, then the "
                f"child ran {int(b['calls'])} times ({b['rows_per_call']:.2f} rows and "
                f"{b['mean_ms']:.2f} ms per call) in the window; user {b['user']}",
                metric=Metric("per_row_calls", int(b["calls"]), min_calls), evidence=[row],
                remediation="load the related rows in one query (Prisma: include/select on "
                            "the relation, or findMany with `in`) instead of one per row"))
    return found or [Finding("n_plus_one", "ok", "No N+1 pattern in the window")]


register(Check(
    "latency.n_plus_one", "N+1 suspects",
    """A statement called very often, about one row per call and fast, whose call count
    matches the rows another statement returned in the same window: the classic posts, then
    one user per post loop. Load the related rows in one query.""",
    n_plus_one, probes=("window",), params=(N1_CALLS,), emits=("n_plus_one",)))
