"""Transaction failures: the rollback rate over a window, the errors of the server log by
SQLSTATE category, deadlock cycles and foreign key violations.

Bounds (parameters): a rollback rate above 5 % is critical (the default alert threshold), above
2 % a warning; any deadlock in the window warns. Error categories and what to do about each
are in sqlstate.py.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import deadlocks, logs, present, queries, sqlstate
from ..errors import SkipStep
from ..findings import Figure, Finding, Metric, graded, records
from ..params import SAMPLE_SECONDS
from ..probes import catalog as _catalog  # noqa: F401 - registers the catalog probes
from ..probes.server_log import LogRead
from ..registry import Check, Param, Params, Probe, register, register_probe
from ..sqltext import columns, normalize_sql, qualified

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook

SEVERITY = {sqlstate.RETRYABLE: "warning", sqlstate.TIMEOUT: "warning",
            sqlstate.INTEGRITY: "warning", sqlstate.APP_BUG: "warning",
            sqlstate.PERMISSION: "warning", sqlstate.RESOURCES: "critical",
            sqlstate.OTHER: "info"}
FK_NAME = re.compile(r'foreign key constraint "([^"]+)"')
ROLLBACK_WARNING = Param("rollback_rate_warning", float, 0.02,
                         "share of transactions rolled back that warns", "share", 0, 1)
ROLLBACK_CRITICAL = Param("rollback_rate_critical", float, 0.05,
                          "share that pages (default alert above 5 %)", "share", 0, 1)
MIN_TRANSACTIONS = 20  # fewer in the window: too few to judge a rate


# -- counters over a window --------------------------------------------------------------------

@dataclass(frozen=True)
class Counters:
    database: str
    seconds: float
    delta: dict[str, int]
    totals: dict[str, int] = field(default_factory=dict)  # at the end of the window


def counters(rb: Runbook, p: Params) -> Counters:
    s = rb.session
    sql = queries.get("database_counters", s.facts.version_num)
    before = s.row(sql)
    started = time.monotonic()
    time.sleep(max(0.0, float(p["sample_seconds"])))
    after = s.row(sql)
    return Counters(s.facts.database, time.monotonic() - started,
                    {k: int(after[k] or 0) - int(before[k] or 0) for k in after},
                    {k: int(after[k] or 0) for k in after})


register_probe(Probe("counters", counters, "pg_stat_database's counters, twice.",
                     params=(SAMPLE_SECONDS,), needs=("connection",)))


def rollback_rate(c: Counters, p: Params) -> list[Finding]:
    d, secs = c.delta, p["sample_seconds"]
    total = d["xact_commit"] + d["xact_rollback"]
    found: list[Finding] = []
    if total < MIN_TRANSACTIONS:
        found.append(Finding("rollback_rate", "ok", f"Too few transactions to judge the rollback "
                             f"rate ({total} in {secs:g} s)",
                             metric=Metric("transactions", total, MIN_TRANSACTIONS)))
    else:
        rate = d["xact_rollback"] / total
        found.append(graded(
            "rollback_rate", "rollback_rate", rate, p["rollback_rate_warning"],
            p["rollback_rate_critical"],
            title=f"Rollback rate {rate:.1%} in the last {secs:g} s ({d['xact_rollback']} of "
                  f"{total} transactions)",
            detail=f"database {c.database}; the default alert is critical above 5 %",
            evidence=[d],
            remediation="see which errors cause them (below); rollbacks without errors are the "
                        "application's own ROLLBACK (a failed business check, a retry loop)"))
    if d["deadlocks"] > 0:
        per_min = d["deadlocks"] / max(secs, 1e-9) * 60
        found.append(Finding("deadlock_rate", "warning",
                             f"{d['deadlocks']} deadlock(s) in the last {secs:g} s "
                             f"({per_min:.1f} per minute)", "the cycles are listed below",
                             metric=Metric("deadlocks_per_minute", round(per_min, 2), 0),
                             remediation=deadlocks.FIX))
    return found


def transaction_figures(c: Counters) -> list[Figure]:
    """database_transactions_total of the metrics: the server's own cumulative counters."""
    if not c.totals:
        return []
    return [Figure("transactions", c.totals["xact_commit"], {"status": "success"}),
            Figure("transactions", c.totals["xact_rollback"], {"status": "rollback"})]


def show_counters(c: Counters, found: list[Finding], p: Params) -> None:
    import pandas as pd

    present.show_table(pd.DataFrame([c.delta]), f"{c.database}: the last {c.seconds:.0f} s")


register(Check(
    "transaction_failures.counters", "Commits, rollbacks and deadlocks now",
    """pg_stat_database's counters twice, sample_seconds apart: the rollback rate of the
    window (judged once the window holds enough transactions) and any deadlock in it.""",
    rollback_rate, probes=("counters",), params=(ROLLBACK_WARNING, ROLLBACK_CRITICAL),
    emits=("rollback_rate", "deadlock_rate"), show=show_counters, figures=transaction_figures))


# -- the log -----------------------------------------------------------------------------------

def log_setup(log: LogRead, p: Params) -> list[Finding]:
    if log.scan is None:
        assert log.unreadable is not None
        return [unreadable(log.unreadable)]
    found = logs.setup_findings(log.scan)
    if log.statements_logged:
        found.append(Finding("log_setup", "info",
                             f"log_min_error_statement is {log.statements_logged}: failing "
                             "statements are not logged",
                             remediation="ALTER SYSTEM SET log_min_error_statement = 'error'; "
                                         "SELECT pg_reload_conf();"))
    return found


def unreadable(exc: SkipStep) -> Finding:
    """The log could not be read: a warning that says why and the fix, never 'no error'."""
    if isinstance(exc, logs.LogUnreadable):
        return logs.unreadable_finding(exc)
    return Finding("log_setup", "warning", "The server log was not read: no error can be "
                   "counted", str(exc), remediation=str(exc).split(": ", 1)[-1])


def show_log(log: LogRead, found: list[Finding], p: Params) -> None:
    scan = log.scan
    if scan is None:
        return
    newest = f"; newest record {scan.newest:%Y-%m-%d %H:%M:%S} UTC" if scan.newest else ""
    present.show_text(f"{sum(log.counts.values())} errors since "
                      f"{log.start:%Y-%m-%d %H:%M:%S} UTC in {scan.in_window} of {scan.records} "
                      f"records read from {scan.source} ({len(scan.files)} file(s){newest})"
                      + (f"; {scan.malformed} malformed records skipped" if scan.malformed
                         else ""))
    capped = [c for c, n in scan.errors_by_sqlstate.items() if n > logs.MAX_ERRORS]
    if capped:
        present.show_text(f"the tables, deadlock patterns and FK counts below use the latest "
                          f"{logs.MAX_ERRORS} errors of each SQLSTATE ({', '.join(capped)} had "
                          "more); the counts by SQLSTATE are exact")


register(Check(
    "transaction_failures.log", "The server log",
    """The errors (ERROR, FATAL, PANIC) of the window from the server log, in one streaming
    pass. A log that could not be read, or cannot be trusted (a log_line_prefix without fields,
    lines that do not match it), is a log_setup warning saying exactly what to fix: a report
    that says no error without having read one is never given.""",
    log_setup, probes=("log_errors",),
    emits=("log_setup", "log_coverage", "log_malformed"), show=show_log))


# -- errors by SQLSTATE ------------------------------------------------------------------------

def classified(log: LogRead) -> pd.DataFrame:
    df = log.errors
    df = df.assign(sqlstate=df["sqlstate"].fillna(""))
    return df.assign(
        name=[sqlstate.detail_name(c, m) for c, m in zip(df["sqlstate"], df["message"],
                                                          strict=True)],
        category=[sqlstate.category(c) for c in df["sqlstate"]],
        statement=[normalize_sql(q) for q in df["query"].fillna("")],
        application=df["application"].fillna("").replace("", "(none)"))


def code_table(log: LogRead, df: pd.DataFrame) -> pd.DataFrame:
    table = (df.groupby(["sqlstate", "name", "category"])
               .agg(count=("time", "size"), first=("time", "min"), last=("time", "max"))
               .reset_index().sort_values("count", ascending=False))
    table["class"] = [sqlstate.lookup(c).class_name for c in table["sqlstate"]]
    log.require()
    exact = log.counts
    if sum(exact.values()) > len(df):  # the tables keep the latest errors; counts stay exact
        table["count"] = [exact.get(c or "(none)", n) for c, n in
                          zip(table["sqlstate"], table["count"], strict=True)]
    return table


def by_sqlstate(log: LogRead, p: Params) -> list[Finding]:
    log.require()
    if log.errors.empty:
        log.none_found("error")
        return [Finding("errors", "ok", f"No error logged since {log.start:%H:%M:%S} UTC")]
    df = classified(log)
    table = code_table(log, df)
    found = []
    for cat, group in df.groupby("category"):
        codes = table[table["category"] == cat]
        top = (group.groupby(["statement", "user", "database", "application"], dropna=False)
                    .size().rename("count").reset_index().sort_values("count", ascending=False))
        sev = SEVERITY.get(str(cat), "info")
        if cat == sqlstate.OTHER and group["sqlstate"].str.startswith("XX").any():
            sev = "critical"  # internal errors: corruption or a server bug
        listed = ", ".join(f"{r['sqlstate']} {r['name']} x{r['count']}"
                           for _, r in codes.head(5).iterrows())
        count = int(codes["count"].sum())  # exact, where the records kept are the latest
        apps = ", ".join(f"{a} ({n})" for a, n in
                         group["application"].value_counts().head(3).items())
        found.append(Finding(
            f"errors_{cat}", sev,
            f"{count} {cat} error(s) since {log.start:%H:%M} UTC: {listed}",
            f"by application: {apps}; retryable: {'yes' if cat == sqlstate.RETRYABLE else 'no'}",
            metric=Metric("errors", count), evidence=records(top.head(10)),
            remediation=sqlstate.REMEDIATION[str(cat)]))
    return found


def error_figures(log: LogRead) -> list[Figure]:
    """database_errors_total of the metrics: errors in the log window by class, every class
    given (0 when none), so a quiet night is a 0 and not a missing series."""
    counts = dict.fromkeys((str(c) for c in SEVERITY), 0)
    if not log.errors.empty:
        table = code_table(log, classified(log))
        for cat, n in table.groupby("category")["count"].sum().items():
            counts[str(cat)] = int(n)
    return [Figure("log_errors", n, {"class": c}) for c, n in counts.items()]


def show_errors(log: LogRead, found: list[Finding], p: Params) -> None:
    if log.scan is None or log.errors.empty:
        return
    df = classified(log)
    present.show_table(code_table(log, df), "errors by SQLSTATE")
    per_min = (df.assign(minute=df["time"].dt.floor("min")).groupby(["minute", "category"])
                 .size().rename("errors").reset_index())
    present.show_figure(present.stacked_bars(per_min.assign(minute=per_min["minute"].astype(str)),
                                             "minute", "errors", "category",
                                             "Errors per minute by category"))


register(Check(
    "transaction_failures.errors_by_sqlstate", "Errors by SQLSTATE",
    """Every error classified by SQLSTATE (names from the server's own errcodes.txt) into
    retryable-transient, timeout, integrity, application-bug, permission and resources, with
    the statements, users and applications behind them and what to do about each category.""",
    by_sqlstate, probes=("log_errors",),
    emits=("errors", *(f"errors_{c}" for c in SEVERITY)), show=show_errors,
    figures=error_figures))


# -- deadlock forensics ------------------------------------------------------------------------

def deadlock_groups(log: LogRead) -> pd.DataFrame:
    df = log.errors
    rows = [{str(k): v for k, v in r.items()}
            for r in df[df["sqlstate"] == "40P01"].to_dict(orient="records")]
    return deadlocks.group(rows)


def deadlock_cycles(log: LogRead, p: Params) -> list[Finding]:
    log.require()
    groups = deadlock_groups(log)
    if groups.empty:
        log.none_found("deadlock")
    return [Finding("deadlock", "warning",
                    f"{r['count']} deadlock(s) of one pattern on {r['relations']}",
                    f"{r['processes']} processes in the cycle; first {r['first']}, last "
                    f"{r['last']}; {r['pattern']}",
                    metric=Metric("deadlocks", int(r["count"])),
                    evidence=[{"pattern": r["pattern"], "example_detail": r["example"]}],
                    remediation=deadlocks.FIX)
            for _, r in groups.iterrows()] or [
        Finding("deadlock", "ok", "No deadlock logged")]


def show_deadlocks(log: LogRead, found: list[Finding], p: Params) -> None:
    present.show_table(deadlock_groups(log).drop(columns=["example"]), "deadlocks by pattern")


register(Check(
    "transaction_failures.deadlocks", "Deadlock cycles",
    """The cycle of each deadlock (40P01) from the log's DETAIL, grouped by pattern: the same
    statements waiting for the same lock modes on the same kind of object. Make every code path
    take these locks in one order, keep transactions short, retry 40P01.""",
    deadlock_cycles, probes=("log_errors",), emits=("deadlock",), show=show_deadlocks))


# -- foreign key violations --------------------------------------------------------------------

@dataclass(frozen=True)
class Violations:
    """FK violations of the log by constraint, with each constraint's tables and whether its
    referencing columns are indexed."""

    counts: pd.Series
    errors: pd.DataFrame
    constraints: pd.DataFrame
    unindexed: set[str]
    problems: tuple[str, ...] = ()  # the log's, when it may be blind


def violations(rb: Runbook, p: Params) -> Violations:
    log: LogRead = rb.snapshot("log_errors")
    log.require()
    fk = log.errors[log.errors["sqlstate"] == "23503"]
    counts = fk["message"].str.extract(FK_NAME)[0].dropna().value_counts()
    s = rb.session
    info = s.frame(queries.get("fk_constraints"), {"names": list(counts.index)})
    unindexed: set[str] = set(rb.snapshot("fk_unindexed")["constraint_name"]) if len(counts) \
        else set()
    return Violations(counts, fk, info, unindexed, log.problems)


register_probe(Probe("fk_violations", violations,
                     "FK violations of the log, with their constraints from the catalog.",
                     needs=("log_errors", "connection")))


def fk_violations(v: Violations, p: Params) -> list[Finding]:
    if v.counts.empty:
        if v.problems:
            raise SkipStep("no foreign key violation found, but the log cannot be trusted, so "
                           f"this is no evidence: {v.problems[0]}")
        return [Finding("fk_violation", "ok", "No foreign key violation logged")]
    found = []
    for name, n in v.counts.items():
        row = v.constraints[v.constraints["constraint_name"] == name]
        r: dict[str, Any] = {str(k): v for k, v in row.iloc[0].to_dict().items()} if len(row) \
            else {}
        child = f"{r.get('child_table', '?')}({', '.join(r.get('columns', []))})"
        indexed = name not in v.unindexed
        create = (f"; CREATE INDEX CONCURRENTLY ON "
                  f"{qualified(r.get('child_schema', ''), r.get('child_name', '?'))} "
                  f"({columns(list(r.get('columns', [])))});")
        found.append(Finding(
            "fk_violation", "warning",
            f"{n} violation(s) of foreign key {name}: {child} -> {r.get('parent_table', '?')}",
            f"ON DELETE {r.get('on_delete', '?')}; child columns indexed: "
            f"{'yes' if indexed else 'NO (every parent delete scans the child)'}",
            metric=Metric("fk_violations", int(n)),
            evidence=records(v.errors[v.errors["message"].str.contains(f'"{name}"',
                                                                       regex=False)]
                             [["time", "user", "application", "message", "detail", "query"]]
                             .head(5)),
            remediation="insert the parent before the child (or in the same transaction), or "
                        "delete children first / use ON DELETE CASCADE where it is meant"
                        + ("" if indexed or not r else create)))
    return found


register(Check(
    "transaction_failures.fk_violations", "Foreign key violations",
    """The constraints named by 23503 errors, their parent and child tables, and whether the
    child's columns are indexed (without an index every parent delete scans the child).""",
    fk_violations, probes=("fk_violations",), emits=("fk_violation",)))
