"""The transaction-failures runbook: which errors, how many, since when, are they retryable, and
who causes them. From the database's counters (a window) and the server log (csvlog/jsonlog).

Thresholds (parameters): rollback rate critical above 5 % (seed), warning above 2 %; any deadlock
in the window warns; a prepared transaction older than 5 min warns. Error categories and what to
do about each are in sqlstate.py.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pandas as pd

from . import deadlocks, latency, logs, present, queries, sqlstate
from .errors import SkipStep
from .findings import Finding, Metric, grade, ratio, records
from .runbook import Runbook, step

NAME = "transaction_failures"
SEVERITY = {sqlstate.RETRYABLE: "warning", sqlstate.TIMEOUT: "warning",
            sqlstate.INTEGRITY: "warning", sqlstate.APP_BUG: "warning",
            sqlstate.PERMISSION: "warning", sqlstate.RESOURCES: "critical",
            sqlstate.OTHER: "info"}
FK_NAME = re.compile(r'foreign key constraint "([^"]+)"')


# -- step 1: counters over a window ------------------------------------------------------------

@step("counters")
def counters(rb: Runbook, sample_seconds: float = 10, rollback_rate_warning: float = 0.02,
             rollback_rate_critical: float = 0.05, min_transactions: int = 20) -> dict[str, Any]:
    s = rb.session
    sql = queries.get("database_counters", s.facts.version_num)
    before = s.row(sql)
    time.sleep(max(0.0, sample_seconds))
    after = s.row(sql)
    delta = {k: int(after[k] or 0) - int(before[k] or 0) for k in after}
    present.show_table(pd.DataFrame([delta]), f"{s.facts.database}: the last {sample_seconds:g} s")
    total = delta["xact_commit"] + delta["xact_rollback"]
    found = []
    if total < min_transactions:
        found.append(Finding("rollback_rate", "ok", f"Too few transactions to judge the rollback "
                             f"rate ({total} in {sample_seconds:g} s)",
                             metric=Metric("transactions", total, min_transactions)))
    else:
        rate = delta["xact_rollback"] / total
        sev = grade(rate, ratio(rollback_rate_warning), ratio(rollback_rate_critical))
        found.append(Finding(
            "rollback_rate", sev,
            f"Rollback rate {rate:.1%} in the last {sample_seconds:g} s "
            f"({delta['xact_rollback']} of {total} transactions)",
            f"database {s.facts.database}; the seed's alert is critical above 5 %",
            metric=Metric("rollback_rate", round(rate, 4), ratio(rollback_rate_critical)
                          if sev == "critical" else ratio(rollback_rate_warning)),
            evidence=[delta],
            remediation="" if sev == "ok" else
            "see which errors cause them (step 4); rollbacks without errors are the "
            "application's own ROLLBACK (a failed business check, a retry loop)"))
    if delta["deadlocks"] > 0:
        per_min = delta["deadlocks"] / max(sample_seconds, 1e-9) * 60
        found.append(Finding("deadlock_rate", "warning",
                             f"{delta['deadlocks']} deadlock(s) in the last {sample_seconds:g} s "
                             f"({per_min:.1f} per minute)", "the cycles are in step 5",
                             metric=Metric("deadlocks_per_minute", round(per_min, 2), 0),
                             remediation=deadlocks.FIX))
    rb.add(found)
    return delta


# -- step 2: open risk now ---------------------------------------------------------------------

@step("prepared_transactions")
def prepared(rb: Runbook, warning_s: float = 300) -> pd.DataFrame:
    df = rb.session.frame(queries.get("prepared_xacts"))
    old = df[df["age_s"] > warning_s]
    rb.add([Finding("prepared_transaction", "warning",
                    f"Prepared transaction {r['gid']} open for {r['age_s']:.0f} s",
                    f"owner {r['owner']}, database {r['database']}: it holds its locks and the "
                    "xmin horizon until COMMIT PREPARED or ROLLBACK PREPARED, even across restarts",
                    evidence=records(old.loc[[i]]),
                    remediation=f"COMMIT PREPARED '{r['gid']}' or ROLLBACK PREPARED '{r['gid']}' "
                                "after checking with its transaction manager")
            for i, r in old.iterrows()]
           or [Finding("prepared_transaction", "ok", "No old prepared transaction")])
    return df


def open_risk(rb: Runbook, long_transaction_warning_s: float = 3600,
              long_transaction_critical_s: float = 14400, blocking_warning_s: float = 60,
              blocking_critical_s: float = 120, prepared_warning_s: float = 300) -> None:
    """Step 2 in one call: long and idle transactions, lock waits, prepared transactions and
    transaction ID age (the latency runbook's checks, one piece of code for both)."""
    latency.long_running(rb, transaction_warning_s=long_transaction_warning_s,
                         transaction_critical_s=long_transaction_critical_s)
    latency.blocking(rb, blocking_warning_s, blocking_critical_s)
    prepared(rb, prepared_warning_s)
    latency.xid_age(rb)


# -- step 3: the server log --------------------------------------------------------------------

ERROR_COLUMNS = ["time", "log_time", "user", "database", "application", "severity", "sqlstate",
                 "message", "detail", "context", "query"]


@step("log")
def read_log(rb: Runbook, log_source: str = "auto", since: str = "1h", max_mb: float = 50,
             log_line_prefix: str = "") -> pd.DataFrame:
    """The errors (ERROR, FATAL, PANIC) of the window from the server log, in one streaming
    pass: through SQL for 'auto' (the last MAX_MB), or whole csvlog / jsonlog / stderr files
    from a path or glob. The setup is checked first, and a blind spot is a finding."""
    start = logs.parse_since(since) or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    session = rb.session if log_source in ("", "auto") else rb.session_or_none()
    if session is not None:
        setting = session.facts.settings.get("log_min_error_statement", "error")
        if setting in ("log", "fatal", "panic"):
            rb.skip("log_statements", f"log_min_error_statement is {setting}: failing "
                    "statements are not logged; set it to error")
    scan = logs.scan_source(session, log_source, start, log_line_prefix, int(max_mb * 2**20),
                            durations=False)
    df = pd.DataFrame(list(scan.errors), columns=ERROR_COLUMNS)
    rb.data["errors"] = df
    rb.data["error_counts"] = scan.errors_by_sqlstate
    rb.data["log_since"] = start
    newest = f"; newest record {scan.newest:%Y-%m-%d %H:%M:%S} UTC" if scan.newest else ""
    present.show_text(f"{sum(scan.errors_by_sqlstate.values())} errors since "
                      f"{start:%Y-%m-%d %H:%M:%S} UTC in {scan.in_window} of {scan.records} "
                      f"records read from {scan.source} ({len(scan.files)} file(s){newest})"
                      + (f"; {scan.malformed} malformed records skipped" if scan.malformed else ""))
    rb.add(logs.setup_findings(scan))
    capped = {c: n for c, n in scan.errors_by_sqlstate.items() if n > logs.MAX_ERRORS}
    if capped:
        present.show_text(f"the tables, deadlock patterns and FK counts below use the latest "
                          f"{logs.MAX_ERRORS} errors of each SQLSTATE ({', '.join(capped)} had "
                          "more); the counts by SQLSTATE are exact")
    return df


def _errors(rb: Runbook) -> pd.DataFrame:
    if "errors" not in rb.data:
        raise SkipStep("no log was read (step 3 was skipped)")
    df: pd.DataFrame = rb.data["errors"]
    return df


# -- step 4: errors by SQLSTATE ----------------------------------------------------------------

@step("errors_by_sqlstate")
def by_sqlstate(rb: Runbook) -> pd.DataFrame:
    df = _errors(rb)
    since = rb.data["log_since"]
    if df.empty:
        rb.add(Finding("errors", "ok", f"No error logged since {since:%H:%M:%S} UTC"))
        return df
    df = df.assign(sqlstate=df["sqlstate"].fillna(""))
    df = df.assign(
        name=[sqlstate.detail_name(c, m) for c, m in zip(df["sqlstate"], df["message"], strict=True)],
        category=[sqlstate.category(c) for c in df["sqlstate"]],
        statement=[deadlocks.normalize_sql(q) for q in df["query"].fillna("")])
    table = (df.groupby(["sqlstate", "name", "category"])
               .agg(count=("time", "size"), first=("time", "min"), last=("time", "max"))
               .reset_index().sort_values("count", ascending=False))
    table["class"] = [sqlstate.lookup(c).class_name for c in table["sqlstate"]]
    exact = rb.data.get("error_counts", {})
    if sum(exact.values()) > len(df):  # the tables keep the latest errors; counts stay exact
        table["count"] = [exact.get(c or "(none)", n) for c, n in
                          zip(table["sqlstate"], table["count"], strict=True)]
    present.show_table(table, "errors by SQLSTATE")
    per_min = (df.assign(minute=df["time"].dt.floor("min")).groupby(["minute", "category"])
                 .size().rename("errors").reset_index())
    present.show_figure(present.stacked_bars(per_min.assign(minute=per_min["minute"].astype(str)),
                                             "minute", "errors", "category",
                                             "Errors per minute by category"))
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
        apps = ", ".join(f"{a} ({n})" for a, n in group["application"].value_counts().head(3).items())
        found.append(Finding(
            f"errors_{cat}", sev,
            f"{len(group)} {cat} error(s) since {since:%H:%M} UTC: {listed}",
            f"by application: {apps}; retryable: "
            f"{'yes' if cat == sqlstate.RETRYABLE else 'no'}",
            metric=Metric("errors", len(group)),
            evidence=records(top.head(10)),
            remediation=sqlstate.REMEDIATION[str(cat)]))
    rb.add(found)
    return table


# -- step 5: deadlock forensics ----------------------------------------------------------------

@step("deadlocks")
def deadlock_cycles(rb: Runbook) -> pd.DataFrame:
    df = _errors(rb)
    rows = [{str(k): v for k, v in r.items()}
            for r in df[df["sqlstate"] == "40P01"].to_dict(orient="records")]
    groups = deadlocks.group(rows)
    present.show_table(groups.drop(columns=["example"]), "deadlocks by pattern")
    rb.add([Finding("deadlock", "warning",
                    f"{r['count']} deadlock(s) of one pattern on {r['relations']}: "
                    f"{r['pattern'][:160]}",
                    f"{r['processes']} processes in the cycle; first {r['first']}, last "
                    f"{r['last']}",
                    metric=Metric("deadlocks", int(r["count"])),
                    evidence=[{"pattern": r["pattern"], "example_detail": r["example"]}],
                    remediation=deadlocks.FIX)
            for _, r in groups.iterrows()]
           or [Finding("deadlock", "ok", "No deadlock logged")])
    return groups


# -- step 6: FK violations and cascades --------------------------------------------------------

@step("fk_violations")
def fk_violations(rb: Runbook) -> pd.DataFrame:
    df = _errors(rb)
    fk = df[df["sqlstate"] == "23503"]
    names = fk["message"].str.extract(FK_NAME)[0].dropna()
    if names.empty:
        rb.add(Finding("fk_violation", "ok", "No foreign key violation logged"))
        return pd.DataFrame()
    counts = names.value_counts()
    s = rb.session
    info = s.frame(queries.get("fk_constraints"), {"names": list(counts.index)})
    unindexed = set(s.frame(queries.get("fk_without_index"))["constraint_name"])
    found = []
    for name, n in counts.items():
        row = info[info["constraint_name"] == name]
        r = row.iloc[0].to_dict() if len(row) else {}
        child = f"{r.get('child_table', '?')}({', '.join(r.get('columns', []))})"
        indexed = name not in unindexed
        found.append(Finding(
            "fk_violation", "warning",
            f"{n} violation(s) of foreign key {name}: {child} -> {r.get('parent_table', '?')}",
            f"ON DELETE {r.get('on_delete', '?')}; child columns indexed: "
            f"{'yes' if indexed else 'NO (every parent delete scans the child)'}",
            metric=Metric("fk_violations", int(n)),
            evidence=records(fk[fk["message"].str.contains(f'"{name}"', regex=False)]
                             [["time", "user", "application", "message", "detail", "query"]]
                             .head(5)),
            remediation="insert the parent before the child (or in the same transaction), "
                        "or delete children first / use ON DELETE CASCADE where it is meant"
                        + ("" if indexed else f"; CREATE INDEX CONCURRENTLY ON {child};")))
    rb.add(found)
    return counts.rename("violations").reset_index()


def run_all(rb: Runbook, **p: Any) -> dict[str, Any]:
    """All steps with notebook-style parameters (the notebook calls them one per cell)."""
    counters(rb, p.get("sample_seconds", 10), p.get("rollback_rate_warning", 0.02),
             p.get("rollback_rate_critical", 0.05))
    open_risk(rb)
    read_log(rb, p.get("log_source", "auto"), p.get("since", "1h"), p.get("log_max_mb", 50),
             p.get("log_line_prefix", ""))
    by_sqlstate(rb)
    deadlock_cycles(rb)
    fk_violations(rb)
    return rb.finish()
