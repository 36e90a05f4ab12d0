"""Snapshots from YAML: one small builder per probe name, so a check's test case states only what
it cares about and the builder fills in the rest the way the probe would.

A builder takes the YAML value given for its probe (a mapping, a list, or null for all the
defaults) and returns the probe's snapshot. Unknown keys and unknown values of closed sets
(session states, failure causes) are errors: a typo must never make a case pass silently.
To cover another probe, write a builder and add it to BUILDERS under the probe's name.

>>> act = activity({"sessions": [{"application": "api", "state": "idle", "count": 2}]})
>>> act.sessions[["pid", "application", "state"]].to_dict(orient="list")
{'pid': [1000, 1001], 'application': ['api', 'api'], 'state': ['idle', 'idle']}
>>> slots({"max_connections": 20, "superuser_reserved": 0, "used": 5}).available
20
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from runbooks_lib import logparse, logs
from runbooks_lib.errors import SkipStep
from runbooks_lib.probes.activity import AGE_BUCKETS, Activity, Slots
from runbooks_lib.probes.connection import Reach, TargetInfo
from runbooks_lib.probes.locks import blocking_tree, with_prepared_roots
from runbooks_lib.probes.plans import Planned
from runbooks_lib.probes.server_log import ERROR_COLUMNS, LogRead, read_from
from runbooks_lib.probes.window import COUNTERS, TABLE_COUNTERS, WRITE_COUNTERS, Window
from runbooks_lib.sqltext import columns as sql_columns
from runbooks_lib.sqltext import ident, qualified

if TYPE_CHECKING:
    from runbooks_lib.actions import Plan
    from runbooks_lib.checks.failures import Counters, Violations
    from runbooks_lib.checks.statements import Durations

NOW = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)  # the server's now() in every snapshot

# The columns of queries/activity.sql, in its order (the probe adds age_bucket).
ACTIVITY_COLUMNS = ("pid", "database", "user", "application", "client_addr", "state",
                    "wait_event_type", "wait_event", "backend_start", "xact_start", "state_change",
                    "conn_age_s", "state_age_s", "xact_age_s", "waiting_on_lock", "query")
# pg_stat_activity.state, and the query's placeholder for NULL (another role's session)
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)",
          "fastpath function call", "disabled", "(unknown)")
IN_TRANSACTION = ("active", "idle in transaction", "idle in transaction (aborted)",
                  "fastpath function call")
# ConnectError.cause: the causes runbooks_lib.session classifies, and its fallback
CAUSES = ("configuration", "too_many_clients", "authentication", "database_missing", "no_permission",
          "starting_up", "shutting_down", "dns", "refused", "tls", "timeout", "unreachable",
          "unknown")
SESSION_STATS_COLUMNS = ("database", "sessions", "sessions_abandoned", "sessions_fatal",
                         "sessions_killed", "session_time_s", "idle_in_transaction_time_s",
                         "stats_reset")
PREVIEW_COLUMNS = ("pid", "user", "application", "client_addr", "idle_s", "last_query",
                   "signalled")


def fields(value: Any, allowed: tuple[str, ...] | set[str], what: str) -> dict[str, Any]:
    """VALUE as a mapping holding only ALLOWED keys (null is the empty mapping)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{what}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise KeyError(f"{what}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return dict(value)


def rows(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{what}: expected a list, got {value!r}")
    return value


def one_of(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what}: {value!r} is not one of {allowed}")
    return str(value)


def before(age_s: float | None) -> dt.datetime | None:
    return None if age_s is None else NOW - dt.timedelta(seconds=age_s)


# -- activity ----------------------------------------------------------------------------------

SESSION_KEYS = (*(c for c in ACTIVITY_COLUMNS if c not in ("backend_start", "xact_start",
                                                            "state_change")),
                "count", "hidden")


def session_rows(spec: Mapping[str, Any], first_pid: int) -> list[tuple[Any, ...]]:
    """One YAML session row as rows of the activity query: COUNT copies (distinct pids), the
    timestamps derived from the ages. HIDDEN is another role's session seen without
    pg_read_all_stats: no address, state, ages nor query."""
    row = fields(spec, SESSION_KEYS, "activity session")
    count = int(row.pop("count", 1))
    hidden = bool(row.pop("hidden", False))
    if hidden:
        defaults: dict[str, Any] = {
            "client_addr": "(hidden)", "state": "(unknown)", "state_age_s": None,
            "xact_age_s": None, "conn_age_s": None, "query": "<insufficient privilege>"}
        row = {**defaults, **row}
    state = one_of(row.get("state", "idle"), STATES, "activity session state")
    state_age = row.get("state_age_s", 1.0)
    xact_age = row.get("xact_age_s", state_age if state in IN_TRANSACTION else None)
    ages = [a for a in (state_age, xact_age) if a is not None]
    conn_age = row.get("conn_age_s", max(ages) if ages else None)
    waiting = state not in ("active", "(unknown)")
    values: dict[str, Any] = {
        "database": "app", "user": "app", "application": "api", "client_addr": "10.0.0.1",
        "wait_event_type": "Client" if waiting else None,
        "wait_event": "ClientRead" if waiting else None,
        "waiting_on_lock": False, "query": "SELECT 1", **row,
        "state": state, "conn_age_s": conn_age, "state_age_s": state_age, "xact_age_s": xact_age,
        "backend_start": before(conn_age), "xact_start": before(xact_age),
        "state_change": before(state_age),
    }
    out = []
    for n in range(count):
        values["pid"] = row.get("pid", first_pid) + n
        out.append(tuple(values[c] for c in ACTIVITY_COLUMNS))
    return out


def activity(value: Any) -> Activity:
    """{sessions: [row...], sees_all: true, role: monitor}; a bare list is the sessions."""
    spec = fields({"sessions": value} if isinstance(value, list) else value,
                  ("sessions", "sees_all", "role"), "activity")
    table: list[tuple[Any, ...]] = []
    for item in rows(spec.get("sessions"), "activity sessions"):
        table += session_rows(item, 1000 + len(table))
    # built as the probe builds it: Session.frame, then the age buckets
    frame = pd.DataFrame(table, columns=list(ACTIVITY_COLUMNS))
    frame["age_bucket"] = pd.cut(frame["conn_age_s"].astype(float),
                                 bins=[b[0] for b in AGE_BUCKETS] + [math.inf],
                                 labels=[b[2] for b in AGE_BUCKETS])
    return Activity(frame, bool(spec.get("sees_all", True)), str(spec.get("role", "monitor")))


# -- slots -------------------------------------------------------------------------------------

def slots(value: Any) -> Slots:
    """{max_connections: 100, superuser_reserved: 3, reserved: 0, used: 0}."""
    spec = fields(value, ("max_connections", "superuser_reserved", "reserved", "used"), "slots")
    values = {"max_connections": 100, "superuser_reserved": 3, "reserved": 0, "used": 0, **spec}
    return Slots(**{k: int(v) for k, v in values.items()})


# -- connection and target ---------------------------------------------------------------------

def connection(value: Any) -> Reach:
    """{attempts: [{seconds, cause}...], cause, message, network, admin, host, port, ...}.

    Connected when CAUSE is empty (the default: one attempt of 0.05 s); else the attempts
    failed (default: three, each with CAUSE) and MESSAGE is the masked ConnectError text."""
    spec = fields(value, ("attempts", "host", "port", "version", "where", "cause", "message",
                          "network", "admin"), "connection")
    host, port = str(spec.get("host", "db.internal")), int(spec.get("port", 5432))
    version = str(spec.get("version", "17.2"))
    cause = one_of(spec["cause"], CAUSES, "connection cause") if spec.get("cause") else ""
    given = rows(spec.get("attempts"), "connection attempts")
    if not given:
        given = [{"cause": cause}] * 3 if cause else [{"seconds": 0.05}]
    attempts = []
    for n, item in enumerate(given, 1):
        row = fields(item, ("seconds", "cause", "ok"), "connection attempt")
        failed = one_of(row["cause"], CAUSES, "attempt cause") if row.get("cause") else ""
        attempts.append({"attempt": n, "ok": bool(row.get("ok", not failed)),
                         "seconds": round(float(row.get("seconds", 0.05)), 3), "cause": failed})
    last = attempts[-1]
    if cause and (any(a["ok"] for a in attempts) or last["cause"] != cause):
        raise ValueError(f"connection: no attempt may succeed and the last must fail with "
                         f"{cause!r} when cause is {cause!r}")
    if not cause and not last["ok"]:
        raise ValueError("connection: the last attempt must succeed when no cause is given")
    if cause:
        default_message = (f"cannot connect to postgresql://app:***@{host}:{port}/app ({cause}): "
                           "connection failed. Next: read the error message and the server log")
        return Reach(pd.DataFrame(attempts), host, port, cause=cause,
                     message=str(spec.get("message", default_message)),
                     network=dict(spec.get("network") or {}), admin=str(spec.get("admin", "")))
    where = (f"PostgreSQL {version} at {host}:{port}, TLS on, as app on app")
    return Reach(pd.DataFrame(attempts), host, port, version, str(spec.get("where", where)),
                 network=dict(spec.get("network") or {}), admin=str(spec.get("admin", "")))


def target(value: Any) -> TargetInfo:
    """{connection_limit: null}: the Prisma pool size in the target URL, if any."""
    spec = fields(value, ("connection_limit",), "target")
    limit = spec.get("connection_limit")
    return TargetInfo(None if limit is None else int(limit))


# -- session counters and the action's plan ----------------------------------------------------

def session_stats(value: Any) -> pd.DataFrame:
    """[{database, sessions, sessions_abandoned, ...}...]: pg_stat_database's counters."""
    table = []
    for item in rows(value, "session_stats"):
        row = fields(item, SESSION_STATS_COLUMNS, "session_stats row")
        table.append({"database": "app", "sessions": 0, "sessions_abandoned": 0,
                      "sessions_fatal": 0, "sessions_killed": 0, "session_time_s": 0.0,
                      "idle_in_transaction_time_s": 0.0, "stats_reset": NOW, **row})
    return pd.DataFrame(table, columns=list(SESSION_STATS_COLUMNS))


def terminate_plan(value: Any) -> Plan:
    """{application: api, older_than_s: 600, sessions: [{pid, idle_s, ...}...]}: the preview."""
    from runbooks_lib.actions import Plan  # imported late: only the action's cases need it

    spec = fields(value, ("application", "older_than_s", "sessions"), "terminate_plan")
    app, older = str(spec.get("application", "api")), float(spec.get("older_than_s", 600.0))
    table = []
    for n, item in enumerate(rows(spec.get("sessions"), "terminate_plan sessions")):
        row = fields(item, PREVIEW_COLUMNS, "terminate_plan session")
        table.append({"pid": 2000 + n, "user": "app", "application": app,
                      "client_addr": "10.0.0.1", "idle_s": older + 1, "last_query": "SELECT 1",
                      "signalled": None, **row})
    preview = pd.DataFrame(table, columns=list(PREVIEW_COLUMNS))
    params = {"application": app, "older_than_s": older, "dry_run": True, "pids": []}
    return Plan("terminate", f"sessions of {app!r} idle in transaction for more than {older:g} s",
                preview, "-- terminate_idle_in_transaction (not run by these tests)",
                {**params, "dry_run": False, "pids": preview["pid"].tolist()})


# -- the sampling window (probes/window.py) ----------------------------------------------------

# queries/statements.sql, in its order (the window's delta adds mean_ms, rows_per_call, time_share)
STATEMENT_COLUMNS = ("queryid", "userid", "dbid", "current_db", "user", "database", "calls",
                     "total_exec_time", "rows", "shared_blks_hit", "shared_blks_read",
                     "temp_blks_read", "temp_blks_written", "query")
DEFAULT_QUERY = "SELECT * FROM orders WHERE id = $1"
SAMPLE_COLUMNS = ("ts", "wait_event_type", "wait_event", "application", "query")
STATEMENTS_MISSING = ("pg_stat_statements is not installed in this database: add it to "
                      "shared_preload_libraries, restart, then CREATE EXTENSION "
                      "pg_stat_statements")


def statement_rows(value: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both snapshots of pg_stat_statements from rows of what happened in the window:
    {query, calls, mean_ms (or total_exec_time, ms), rows (default: one per call), user, ...,
    before: {calls, total_exec_time, rows, ...}} (the counters at the window's start: a
    statement's lifetime before the window, none by default)."""
    before, after = [], []
    for n, item in enumerate(rows(value, "window statements")):
        row = fields(item, (*STATEMENT_COLUMNS, "mean_ms", "before"), "window statement")
        calls = int(row.get("calls", 1))
        if "mean_ms" in row and "total_exec_time" in row:
            raise ValueError("window statement: give mean_ms or total_exec_time, not both")
        total = float(row.pop("mean_ms")) * calls if "mean_ms" in row else float(
            row.get("total_exec_time", 1.0 * calls))
        lifetime = fields(row.pop("before", None), tuple(COUNTERS), "window statement before")
        window = {**{c: row.get(c, 0) for c in COUNTERS}, "calls": calls,
                  "total_exec_time": total, "rows": row.get("rows", calls)}
        ids = {"queryid": str(row.get("queryid", 7000 + n)), "userid": int(row.get("userid", 10)),
               "dbid": int(row.get("dbid", 5)), "current_db": bool(row.get("current_db", True)),
               "user": str(row.get("user", "app")), "database": str(row.get("database", "app")),
               "query": str(row.get("query", DEFAULT_QUERY))}
        start = {c: lifetime.get(c, 0) for c in COUNTERS}
        before.append({**ids, **start})
        after.append({**ids, **{c: start[c] + window[c] for c in COUNTERS}})
    return (pd.DataFrame(before, columns=list(STATEMENT_COLUMNS)),
            pd.DataFrame(after, columns=list(STATEMENT_COLUMNS)))


def counter_rows(value: Any, counters: list[str], what: str) -> pd.DataFrame:
    """[{relid, <counter>...}]: the window's growth of COUNTERS per relid (0 by default), as
    counter_delta gives it (columns <counter>_window)."""
    table = []
    for item in rows(value, what):
        row = fields(item, ("relid", *counters), what)
        table.append({"relid": int(row["relid"]),
                      **{f"{c}_window": int(row.get(c, 0)) for c in counters}})
    return pd.DataFrame(table, columns=["relid", *(f"{c}_window" for c in counters)])


def window(value: Any) -> Window:
    """{seconds: 10, n_samples: 100, statements: [...], statements_skipped: '',
    samples: [{wait_event_type, wait_event, application, query, count}...],
    blocks: {blks_hit, blks_read}, writes: [{relid, n_tup_del, ...}], scans: [{relid, ...}]}.

    STATEMENTS_SKIPPED (say true for the usual reason, or the text) means pg_stat_statements
    could not be read: no statements snapshot at all. A sample row with no wait event is on
    CPU, as the sampling query reports it."""
    spec = fields(value, ("seconds", "n_samples", "statements", "statements_skipped", "samples",
                          "blocks", "writes", "scans", "database"), "window")
    seconds = float(spec.get("seconds", 10.0))
    skipped = spec.get("statements_skipped") or ""
    if skipped is True:
        skipped = STATEMENTS_MISSING
    if skipped and spec.get("statements"):
        raise ValueError("window: statements_skipped means there are no statements")
    before, after = statement_rows(spec.get("statements"))
    table = []
    for item in rows(spec.get("samples"), "window samples"):
        row = fields(item, (*SAMPLE_COLUMNS[1:], "count"), "window sample")
        kind = str(row.get("wait_event_type", "CPU"))
        sample = {"ts": NOW, "wait_event_type": kind,
                  "wait_event": str(row.get("wait_event", "CPU" if kind == "CPU" else kind)),
                  "application": str(row.get("application", "api")),
                  "query": str(row.get("query", "SELECT 1"))}
        table += [dict(sample) for _ in range(int(row.get("count", 1)))]
    blocks = fields(spec.get("blocks"), ("blks_hit", "blks_read"), "window blocks")
    return Window(
        seconds=seconds, start=NOW - dt.timedelta(seconds=seconds), end=NOW,
        samples=pd.DataFrame(table, columns=list(SAMPLE_COLUMNS)),
        n_samples=int(spec.get("n_samples", round(seconds * 10))),
        database=str(spec.get("database", "app")),
        stmts_before=None if skipped else before, stmts_after=None if skipped else after,
        statements_skipped=str(skipped),
        scans=counter_rows(spec.get("scans"), TABLE_COUNTERS, "window scans"),
        blocks={"blks_hit": int(blocks.get("blks_hit", 0)),
                "blks_read": int(blocks.get("blks_read", 0)), "stats_reset": None},
        writes=counter_rows(spec.get("writes"), WRITE_COUNTERS, "window writes"))


# -- tables and indexes (probes/catalog.py) ----------------------------------------------------

# queries/table_stats.sql, in its order; the probe adds the autovacuum settings and the
# window's scans (<counter>_window)
TABLE_COLUMNS = ("relid", "schema", "table", "size_bytes", "est_rows", "seq_scan", "seq_tup_read",
                 "idx_scan", "n_live_tup", "n_dead_tup", "last_vacuum", "last_autovacuum",
                 "heap_blks_hit", "heap_blks_read", "reloptions")
SETTINGS = {"autovacuum_vacuum_scale_factor": "0.2", "autovacuum_vacuum_threshold": "50"}


def tables(value: Any) -> pd.DataFrame:
    """[{table, schema: public, n_live_tup: 100000, est_rows (= n_live_tup), n_dead_tup: 0,
    seq_scan_window, seq_tup_read_window, idx_scan_window (0), reloptions: [...], ...}]: the
    tables frame as the probe builds it (the server's autovacuum settings at their defaults;
    lifetime counters default to the window's)."""
    from runbooks_lib.probes.catalog import reloption

    window_cols = tuple(f"{c}_window" for c in TABLE_COUNTERS)
    table = []
    for n, item in enumerate(rows(value, "tables")):
        row = fields(item, (*TABLE_COLUMNS, *window_cols, "last_autovacuum_minutes_ago"),
                     "tables row")
        live = int(row.get("n_live_tup", 100_000))
        ago = row.pop("last_autovacuum_minutes_ago", None)
        out: dict[str, Any] = {
            "relid": 16_400 + n, "schema": "public", "table": f"t{n}",
            "est_rows": float(live), "n_live_tup": live, "n_dead_tup": 0,
            "last_vacuum": None,
            "last_autovacuum": None if ago is None else NOW - dt.timedelta(minutes=float(ago)),
            "heap_blks_hit": 0, "heap_blks_read": 0, "reloptions": [],
            **{c: 0 for c in window_cols}, **row}
        out.setdefault("size_bytes", int(out["est_rows"] * 100))
        for c in TABLE_COUNTERS:
            out.setdefault(c, out[f"{c}_window"])
        table.append(out)
    df = pd.DataFrame(table, columns=[*TABLE_COLUMNS, *window_cols])
    opts = df["reloptions"]
    df["autovacuum_enabled"] = [reloption(o, "autovacuum_enabled") or "true" for o in opts]
    df["vacuum_scale_factor"] = [float(reloption(o, "autovacuum_vacuum_scale_factor")
                                       or SETTINGS["autovacuum_vacuum_scale_factor"])
                                 for o in opts]
    df["vacuum_threshold"] = [float(reloption(o, "autovacuum_vacuum_threshold")
                                    or SETTINGS["autovacuum_vacuum_threshold"]) for o in opts]
    return df[[c for c in df.columns if c not in window_cols] + list(window_cols)]


def regclass(schema: str, name: str) -> str:
    """NAME as ::regclass::text prints it with search_path public: quoted when it must be."""
    def quote(part: str) -> str:
        return part if re.fullmatch(r"[a-z_][a-z0-9_$]*", part) else ident(part)
    return quote(name) if schema == "public" else f"{quote(schema)}.{quote(name)}"


FK_COLUMNS = ("constraint_name", "child_table", "parent_table", "child_relid", "parent_relid",
              "child_schema", "child_name", "columns", "child_size_bytes", "child_est_rows",
              "on_delete")
ON_DELETE = ("CASCADE", "SET NULL", "SET DEFAULT", "RESTRICT", "NO ACTION")


def fk_unindexed(value: Any) -> pd.DataFrame:
    """[{child_name: comments, child_schema: public, columns: [post_id], parent_table: posts,
    child_relid: 16402 (+2 per row), parent_relid: 16401 (+2 per row), ...}]: foreign keys
    without an index (queries/fk_without_index.sql); child_table is printed as regclass does."""
    table = []
    for n, item in enumerate(rows(value, "fk_unindexed")):
        row = fields(item, FK_COLUMNS, "fk_unindexed row")
        schema, name = str(row.get("child_schema", "public")), str(row.get("child_name",
                                                                             "comments"))
        cols = [str(c) for c in row.get("columns", ["post_id"])]
        table.append({
            "constraint_name": f"{name}_{'_'.join(cols)}_fkey", "child_table":
            regclass(schema, name), "parent_table": "posts", "child_relid": 16_402 + 2 * n,
            "parent_relid": 16_401 + 2 * n, "child_size_bytes": 8_192_000,
            "child_est_rows": 100_000.0, **row, "child_schema": schema, "child_name": name,
            "columns": cols,
            "on_delete": one_of(row.get("on_delete", "NO ACTION"), ON_DELETE, "on_delete")})
    return pd.DataFrame(table, columns=list(FK_COLUMNS))


INDEX_KEYS = ("indexrelid", "schema", "table", "index", "method", "size_bytes", "idx_scan",
              "is_unique", "is_primary", "backs_constraint", "predicate", "key", "columns")


def index_rows(value: Any, what: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """Index rows as the index queries return them, with the definition the probe assembles
    (catalog.with_definitions) from COLUMNS (default [id])."""
    table = []
    for n, item in enumerate(rows(value, what)):
        row = fields(item, tuple(k for k in INDEX_KEYS if k in columns or k == "columns"),
                     f"{what} row")
        out: dict[str, Any] = {"indexrelid": 17_000 + n, "schema": "public", "table": "t",
                               "index": f"t_idx{n}", "method": "btree", "size_bytes": 16 * 2**20,
                               "idx_scan": 0, "is_unique": False, "is_primary": False,
                               "backs_constraint": False, "predicate": "", **row}
        cols = [str(c) for c in out.pop("columns", ["id"])]
        out.setdefault("key", f"{out['table']}|{','.join(cols)}|{out['predicate']}")
        out["definition"] = (
            f"CREATE {'UNIQUE ' if out['is_unique'] else ''}INDEX {ident(out['index'])} ON "
            f"{qualified(out['schema'], out['table'])} USING {out['method']} "
            f"({sql_columns(cols)})" + (f" WHERE {out['predicate']}" if out["predicate"] else ""))
        table.append(out)
    return pd.DataFrame(table, columns=[*columns, "definition"])


def unused_indexes(value: Any) -> pd.DataFrame:
    """[{index, table, schema, size_bytes (16 MB), columns, ...}]: queries/unused_indexes.sql
    (which already left out the indexes below unused_index_min_mb)."""
    return index_rows(value, "unused_indexes", ("indexrelid", "schema", "table", "index",
                                                "method", "size_bytes", "idx_scan", "is_unique",
                                                "predicate"))


def duplicate_indexes(value: Any) -> pd.DataFrame:
    """[{index, table, columns, is_primary, is_unique, backs_constraint, idx_scan, ...}]: the
    rows of queries/duplicate_indexes.sql; rows of one table with the same columns and
    predicate share a key (give KEY to say otherwise)."""
    return index_rows(value, "duplicate_indexes", (
        "indexrelid", "key", "schema", "table", "index", "method", "size_bytes", "idx_scan",
        "is_unique", "is_primary", "backs_constraint", "predicate"))


def invalid_indexes(value: Any) -> pd.DataFrame:
    """[{index, table, schema, columns, is_unique, predicate}]: queries/invalid_indexes.sql."""
    return index_rows(value, "invalid_indexes", ("indexrelid", "schema", "table", "index",
                                                 "method", "is_unique", "predicate"))


def xid_age(value: Any) -> pd.DataFrame:
    """[{database: app, xid_age: 1000000, mxid_age, freeze_max_age: 200000000}], oldest first
    as the query orders them."""
    table = []
    for item in rows(value, "xid_age") or [{}]:
        row = fields(item, ("database", "xid_age", "mxid_age", "freeze_max_age"), "xid_age row")
        table.append({"database": "app", "xid_age": 1_000_000, "mxid_age": 1000,
                      "freeze_max_age": 200_000_000, **row})
    df = pd.DataFrame(table, columns=["database", "xid_age", "mxid_age", "freeze_max_age"])
    return df.sort_values("xid_age", ascending=False, kind="stable").reset_index(drop=True)


# -- locks (probes/locks.py) -------------------------------------------------------------------

BLOCKING_COLUMNS = ("pid", "blocked_by", "user", "database", "application", "client_addr",
                    "state", "wait_event_type", "wait_event", "waiting_s", "xact_age_s",
                    "state_age_s", "query")


def blocking(value: Any) -> pd.DataFrame:
    """{sessions: [{pid, blocked_by: [pids], state, waiting_s, xact_age_s, ...}],
    prepared: [{gid, owner, database, age_s, waiters: [pids]}]} (a bare list is the sessions):
    the rows of queries/blocking.sql, then the probe's with_prepared_roots and blocking_tree. A
    session waiting on a prepared transaction lists 0 in blocked_by, as pg_blocking_pids does.
    A waiter is active and waits on a Lock; a root is idle in transaction by default."""
    spec = fields({"sessions": value} if isinstance(value, list) else value,
                  ("sessions", "prepared"), "blocking")
    table = []
    for n, item in enumerate(rows(spec.get("sessions"), "blocking sessions")):
        row = fields(item, BLOCKING_COLUMNS, "blocking session")
        waits = bool(row.get("blocked_by"))
        state = one_of(row.get("state", "active" if waits else "idle in transaction"), STATES,
                       "blocking session state")
        state_age = float(row.get("state_age_s", row.get("waiting_s", 30.0)))
        table.append({
            "pid": 3000 + n, "blocked_by": [], "user": "app", "database": "app",
            "application": "api", "client_addr": "10.0.0.1", "state": state,
            "wait_event_type": "Lock" if waits else ("Client" if state != "active" else None),
            "wait_event": "transactionid" if waits else (
                "ClientRead" if state != "active" else None),
            "waiting_s": state_age, "xact_age_s": max(state_age, 60.0), "state_age_s": state_age,
            "query": "UPDATE accounts SET balance = balance - $1 WHERE id = $2", **row})
    df = pd.DataFrame(table, columns=list(BLOCKING_COLUMNS))
    holders = []
    for item in rows(spec.get("prepared"), "blocking prepared"):
        row = fields(item, ("gid", "owner", "database", "age_s", "waiters"), "prepared holder")
        for waiter in row.get("waiters", []):
            holders.append({"waiter": int(waiter), "gid": str(row.get("gid", "tx-1")),
                            "owner": str(row.get("owner", "app")),
                            "database": str(row.get("database", "app")),
                            "age_s": float(row.get("age_s", 600.0))})
    if holders:
        df = with_prepared_roots(df, pd.DataFrame(holders))
    return blocking_tree(df)


LONG_COLUMNS = ("pid", "user", "database", "application", "client_addr", "state", "query_age_s",
                "xact_age_s", "holds_snapshot", "query")


def long_running(value: Any) -> pd.DataFrame:
    """[{pid, state: active, query_age_s: 1, xact_age_s (= query_age_s), holds_snapshot: true,
    ...}]: the rows of queries/long_running.sql."""
    table = []
    for n, item in enumerate(rows(value, "long_running")):
        row = fields(item, LONG_COLUMNS, "long_running row")
        state = one_of(row.get("state", "active"), STATES, "long_running state")
        age = float(row.get("query_age_s", 1.0))
        table.append({"pid": 4000 + n, "user": "app", "database": "app", "application": "api",
                      "client_addr": "10.0.0.1", "query_age_s": age, "xact_age_s": age,
                      "holds_snapshot": True, "query": "SELECT pg_sleep(1000)", **row,
                      "state": state})
    return pd.DataFrame(table, columns=list(LONG_COLUMNS))


def prepared_xacts(value: Any) -> pd.DataFrame:
    """[{gid, owner: app, database: app, age_s: 10, xid}]: queries/prepared_xacts.sql."""
    table = []
    for n, item in enumerate(rows(value, "prepared_xacts")):
        row = fields(item, ("gid", "owner", "database", "age_s", "xid"), "prepared_xacts row")
        table.append({"gid": f"tx-{n + 1}", "owner": "app", "database": "app", "age_s": 10.0,
                      "xid": str(900 + n), **row})
    return pd.DataFrame(table, columns=["gid", "owner", "database", "age_s", "xid"])


BLOCKER_PREVIEW = ("pid", "user", "application", "client_addr", "state", "xact_age_s",
                   "last_query", "signalled")


def blocker_plan(value: Any) -> Plan:
    """{action: cancel, sessions: [{pid, ...}], notes: [...]}: the plan the probe previews
    (queries/signal_blocker.sql with dry_run) and the roots it leaves out, with why."""
    from runbooks_lib.actions import Plan  # imported late: only the action's cases need it

    spec = fields(value, ("action", "sessions", "notes", "min_wait_s"), "blocker_plan")
    action = one_of(spec.get("action", "cancel"), ("cancel", "terminate"), "blocker action")
    table = []
    for n, item in enumerate(rows(spec.get("sessions"), "blocker_plan sessions")):
        row = fields(item, BLOCKER_PREVIEW, "blocker_plan session")
        table.append({"pid": 3000 + n, "user": "app", "application": "api",
                      "client_addr": "10.0.0.1", "state": "active", "xact_age_s": 120.0,
                      "last_query": "UPDATE accounts SET balance = 0", "signalled": None, **row})
    preview = pd.DataFrame(table, columns=list(BLOCKER_PREVIEW))
    pids = [int(p) for p in preview["pid"]]
    min_wait = float(spec.get("min_wait_s", 60.0))
    return Plan(action, f"root blockers whose waiters waited >= {min_wait:g} s", preview,
                "-- signal_blocker (not run by these tests)",
                {"pids": pids, "mode": action, "dry_run": False},
                [str(n) for n in rows(spec.get("notes"), "blocker_plan notes")])


# -- plans (probes/plans.py) -------------------------------------------------------------------

def plan_node(value: Any) -> dict[str, Any]:
    """{node: Seq Scan, relation, schema: public, filter, cost, children: [...]} as the
    EXPLAIN (FORMAT JSON) node it stands for."""
    spec = fields(value, ("node", "relation", "schema", "filter", "cost", "children"),
                  "plan node")
    node: dict[str, Any] = {"Node Type": str(spec.get("node", "Seq Scan")),
                            "Total Cost": float(spec.get("cost", 1000.0))}
    if "relation" in spec:
        node["Relation Name"] = str(spec["relation"])
        node["Schema"] = str(spec.get("schema", "public"))
    elif "schema" in spec:
        raise ValueError("plan node: a schema needs a relation")
    if spec.get("filter") is not None:
        node["Filter"] = str(spec["filter"])
    children = [plan_node(c) for c in rows(spec.get("children"), "plan node children")]
    if children:
        node["Plans"] = children
    return node


def plans(value: Any) -> list[Planned]:
    """[{query, user: app, mean_ms: 5, calls: 100, plan: <node>, note}] (a plan of null is a
    statement not planned, NOTE saying why); or {statements_skipped: reason}: the probe reads
    the window's statements, and without them it skips."""
    if isinstance(value, Mapping):
        spec = fields(value, ("statements_skipped",), "plans")
        raise SkipStep(str(spec.get("statements_skipped") or STATEMENTS_MISSING))
    out = []
    for n, item in enumerate(rows(value, "plans")):
        row = fields(item, ("queryid", "query", "user", "mean_ms", "calls", "plan", "note"),
                     "plans row")
        plan = None if row.get("plan") is None else plan_node(row["plan"])
        out.append(Planned(str(row.get("queryid", 7000 + n)),
                           str(row.get("query", DEFAULT_QUERY)),
                           str(row.get("user", "app")), float(row.get("mean_ms", 5.0)),
                           int(row.get("calls", 100)), plan, str(row.get("note", ""))))
    return out


# -- the server log (probes/server_log.py, logs.py) ---------------------------------------------

SCAN_KEYS = ("source", "files", "prefix", "records", "unmatched", "malformed", "notes",
             "cut_short", "oldest_minutes_ago", "inferred")
LOG_FILE = "/var/log/postgresql/postgresql-2025-01-01.csv"
MESSAGES = {
    "40P01": "deadlock detected",
    "40001": "could not serialize access due to concurrent update",
    "23503": 'insert or update on table "comments" violates foreign key constraint '
             '"comments_post_id_fkey"',
    "23505": 'duplicate key value violates unique constraint "users_email_key"',
    "57014": "canceling statement due to statement timeout",
    "42P01": 'relation "missing" does not exist',
    "53100": 'could not extend file "base/16384/16400": No space left on device',
    "XX000": "could not read block 12 in file \"base/16384/16400\": read only 0 of 8192 bytes",
}
DEADLOCK_DETAIL = (
    "Process 101 waits for ShareLock on transaction 831; blocked by process 102.\n"
    "Process 102 waits for ShareLock on transaction 830; blocked by process 101.\n"
    "Process 101: UPDATE accounts SET balance = balance - 1 WHERE id = 1\n"
    "Process 102: UPDATE accounts SET balance = balance - 1 WHERE id = 2")
DEADLOCK_CONTEXT = 'while updating tuple (0,1) in relation "accounts"'


def log_scan(spec: Mapping[str, Any], since: dt.datetime, records: int) -> logs.Scan:
    """A logs.Scan as one pass over the files would leave it (RECORDS read in the window)."""
    files = [str(f) for f in spec.get("files", [LOG_FILE])]
    counts = logparse.Counts(records=int(spec.get("records", records)),
                             malformed=int(spec.get("malformed", 0)),
                             unmatched=int(spec.get("unmatched", 0)))
    oldest = spec.get("oldest_minutes_ago")
    return logs.Scan(source=str(spec.get("source", files[0] if len(files) == 1 else "*.csv")),
                     since=since, prefix=str(spec.get("prefix", "%m [%p] %q%u@%d %a %e ")),
                     files=files, counts=counts, in_window=counts.records,
                     oldest=since if oldest is None else NOW - dt.timedelta(minutes=float(oldest)),
                     newest=NOW, cut_short=bool(spec.get("cut_short", False)),
                     notes=[str(n) for n in spec.get("notes", [])],
                     inferred=int(spec.get("inferred", 0)))


def not_read(value: Any) -> SkipStep:
    """What reading the log raised: {reason, fix} is the LogUnreadable the log sources raise;
    a text, any other SkipStep (no connection to read the log through, say)."""
    if isinstance(value, Mapping):
        spec = fields(value, ("reason", "fix"), "unreadable")
        return logs.LogUnreadable(str(spec["reason"]), str(spec["fix"]))
    return SkipStep(str(value))


def log_errors(value: Any) -> LogRead:
    """{errors: [{sqlstate, message, detail, context, query, application, minutes_ago, count}],
    since_minutes: 60, errors_by_sqlstate: {code: n}, statements_logged: '', unreadable: '',
    <scan keys>}: what the probe read. UNREADABLE ({reason, fix}, or a SkipStep's text) is a
    log not read;
    ERRORS_BY_SQLSTATE the exact counts when the scan kept fewer records than it counted
    (default: counted from ERRORS). Messages of common codes and a deadlock's DETAIL default to
    what PostgreSQL logs."""
    spec = fields(value, ("errors", "since_minutes", "errors_by_sqlstate", "statements_logged",
                          "unreadable", *SCAN_KEYS), "log_errors")
    start = NOW - dt.timedelta(minutes=float(spec.get("since_minutes", 60)))
    logged = str(spec.get("statements_logged", ""))
    if spec.get("unreadable"):
        if set(spec) - {"unreadable", "since_minutes", "statements_logged"}:
            raise ValueError("log_errors: an unreadable log has no errors nor scan")
        return LogRead(start, None, pd.DataFrame(columns=ERROR_COLUMNS),
                       not_read(spec["unreadable"]), logged)
    table = []
    for item in rows(spec.get("errors"), "log_errors errors"):
        row = fields(item, ("sqlstate", "message", "detail", "context", "query", "user",
                            "database", "application", "severity", "minutes_ago", "count"),
                     "log error")
        code = str(row.get("sqlstate", "")) if row.get("sqlstate") is not None else ""
        when = NOW - dt.timedelta(minutes=float(row.get("minutes_ago", 5)))
        record = {"time": when, "log_time": when.strftime("%Y-%m-%d %H:%M:%S.000 UTC"),
                  "user": str(row.get("user", "app")), "database": str(row.get("database", "app")),
                  "application": row.get("application", "api"),
                  "severity": one_of(row.get("severity", "ERROR"), logs.ERROR_LEVELS,
                                     "log error severity"),
                  "sqlstate": code or None,
                  "message": str(row.get("message", MESSAGES.get(code, f"error {code}"))),
                  "detail": row.get("detail", DEADLOCK_DETAIL if code == "40P01" else None),
                  "context": row.get("context", DEADLOCK_CONTEXT if code == "40P01" else None),
                  "query": row.get("query", "UPDATE accounts SET balance = 0 WHERE id = 1")}
        table += [dict(record) for _ in range(int(row.get("count", 1)))]
    scan = log_scan(spec, start, len(table) + 100)
    scan.keep(table)
    exact: dict[str, int] = {}
    for r in table:
        exact[r["sqlstate"] or "(none)"] = exact.get(r["sqlstate"] or "(none)", 0) + 1
    scan.errors_by_sqlstate = {str(k): int(v) for k, v in
                               (spec.get("errors_by_sqlstate") or exact).items()}
    return read_from(start, scan, None, logged)


def duration_stats(given: Mapping[Any, Any], slow_ms: float) -> logs.Durations:
    """{ms: count}: durations as logs._durations aggregates them (histogram of logs.GROWTH)."""
    values = np.repeat(np.array([float(ms) for ms in given], dtype=float),
                       [int(n) for n in given.values()])
    d = logs.Durations()
    if not len(values):
        return d
    d.count, d.over = len(values), int((values > slow_ms).sum())
    b = np.ceil(np.log(np.maximum(values, 1e-3) / 1e-3) / math.log(logs.GROWTH)).astype(np.int64)
    d.histogram = np.bincount(np.clip(b, 0, logs.BUCKETS - 1), minlength=logs.BUCKETS)
    d.slowest = [{"log_time": NOW, "duration_ms": float(ms), "user": "app", "database": "app",
                  "application": "api", "statement": "SELECT ?"}
                 for ms in sorted(values, reverse=True)[:10]]
    return d


def log_durations(value: Any) -> Durations:
    """{durations: {ms: count}, lmds: 0, calls: null, slow_ms: 2000, unreadable: '',
    <scan keys>}: statement durations of the window from the log. SLOW_MS is the probe's
    slow_query_ms (give it beside a slow_query_ms override); CALLS the window's calls counted
    by pg_stat_statements (null without it); LMDS log_min_duration_statement. UNREADABLE
    ({reason, fix}, or a text) is a log the probe could not read: it skips."""
    from runbooks_lib.checks.statements import Durations

    spec = fields(value, ("durations", "lmds", "calls", "slow_ms", "unreadable", *SCAN_KEYS),
                  "log_durations")
    if spec.get("unreadable"):
        raise not_read(spec["unreadable"])
    start = NOW - dt.timedelta(seconds=10)
    stats = duration_stats(dict(spec.get("durations") or {}), float(spec.get("slow_ms", 2000.0)))
    scan = log_scan(spec, start, stats.count + 10)
    scan.durations = stats
    calls = spec.get("calls")
    return Durations(scan, start, int(spec.get("lmds", 0)), None if calls is None else int(calls))


# -- transaction counters and FK violations (checks/failures.py) --------------------------------

DATABASE_COUNTERS = ("xact_commit", "xact_rollback", "deadlocks", "conflicts", "temp_files",
                     "temp_bytes", "sessions_killed", "sessions_abandoned", "sessions_fatal")


def counters(value: Any) -> Counters:
    """{xact_commit: 1000, xact_rollback: 0, deadlocks: 0, ..., seconds: 10}: the growth of
    pg_stat_database's counters over the window (queries/database_counters*.sql, 14+)."""
    from runbooks_lib.checks.failures import Counters

    spec = fields(value, ("database", "seconds", *DATABASE_COUNTERS), "counters")
    delta = {c: int(spec.get(c, 1000 if c == "xact_commit" else 0)) for c in DATABASE_COUNTERS}
    return Counters(str(spec.get("database", "app")), float(spec.get("seconds", 10.0)), delta)


FK_CONSTRAINT_COLUMNS = ("constraint_name", "child_table", "parent_table", "child_schema",
                         "child_name", "columns", "on_delete")


def fk_violations(value: Any) -> Violations:
    """{violations: [{constraint, count: 1, table}], constraints: [{constraint_name,
    child_schema, child_name, columns, parent_table, on_delete}], unindexed: [names],
    unreadable: ''}: 23503 errors of the log (their messages name the constraint) and the
    catalog's rows for them (queries/fk_constraints.sql: a dropped constraint has none), counted
    the way the probe counts them. UNREADABLE: the log was not read, and the probe skips."""
    from runbooks_lib.checks.failures import FK_NAME, Violations

    spec = fields(value, ("violations", "constraints", "unindexed", "unreadable"),
                  "fk_violations")
    if spec.get("unreadable"):
        raise SkipStep(f"the server log was not read: {spec['unreadable']}")
    errors = []
    for item in rows(spec.get("violations"), "fk_violations violations"):
        row = fields(item, ("constraint", "count", "table"), "fk violation")
        msg = (f'insert or update on table "{row.get("table", "comments")}" violates foreign '
               f'key constraint "{row["constraint"]}"')
        errors += [{"time": NOW, "user": "app", "application": "api", "sqlstate": "23503",
                    "message": msg, "detail": "Key (post_id)=(42) is not present in table.",
                    "query": "INSERT INTO comments (post_id) VALUES ($1)"}
                   for _ in range(int(row.get("count", 1)))]
    fk = pd.DataFrame(errors, columns=["time", "user", "application", "sqlstate", "message",
                                       "detail", "query"])
    counts = fk["message"].str.extract(FK_NAME)[0].dropna().value_counts()
    table = []
    for item in rows(spec.get("constraints"), "fk_violations constraints"):
        row = fields(item, FK_CONSTRAINT_COLUMNS, "fk constraint")
        schema, name = str(row.get("child_schema", "public")), str(row.get("child_name",
                                                                             "comments"))
        table.append({"child_table": regclass(schema, name), "parent_table": "posts",
                      "columns": ["post_id"], "on_delete": "NO ACTION", **row,
                      "child_schema": schema, "child_name": name})
    info = pd.DataFrame(table, columns=list(FK_CONSTRAINT_COLUMNS))
    unindexed = {str(n) for n in rows(spec.get("unindexed"), "fk_violations unindexed")}
    return Violations(counts, fk, info, unindexed if len(counts) else set())


BUILDERS: dict[str, Callable[[Any], Any]] = {
    "activity": activity,
    "slots": slots,
    "connection": connection,
    "target": target,
    "session_stats": session_stats,
    "terminate_plan": terminate_plan,
    "window": window,
    "tables": tables,
    "fk_unindexed": fk_unindexed,
    "unused_indexes": unused_indexes,
    "duplicate_indexes": duplicate_indexes,
    "invalid_indexes": invalid_indexes,
    "xid_age": xid_age,
    "blocking": blocking,
    "long_running": long_running,
    "prepared_xacts": prepared_xacts,
    "blocker_plan": blocker_plan,
    "plans": plans,
    "log_errors": log_errors,
    "log_durations": log_durations,
    "counters": counters,
    "fk_violations": fk_violations,
}


def build(probe: str, value: Any) -> Any:
    """The snapshot of PROBE described by VALUE."""
    if probe not in BUILDERS:
        raise KeyError(f"no snapshot builder for probe {probe!r} (add one to tests/snapshots.py "
                       f"BUILDERS); builders: {sorted(BUILDERS)}")
    return BUILDERS[probe](value)


from .snapshots_drill import BUILDERS as _DRILL_BUILDERS  # noqa: E402 - they use the helpers above

BUILDERS.update(_DRILL_BUILDERS)
