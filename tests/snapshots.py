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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from runbooks_lib.probes.activity import AGE_BUCKETS, Activity, Slots
from runbooks_lib.probes.connection import Reach, TargetInfo

if TYPE_CHECKING:
    from runbooks_lib.actions import Plan

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
CAUSES = ("too_many_clients", "authentication", "database_missing", "no_permission",
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


BUILDERS: dict[str, Callable[[Any], Any]] = {
    "activity": activity,
    "slots": slots,
    "connection": connection,
    "target": target,
    "session_stats": session_stats,
    "terminate_plan": terminate_plan,
}


def build(probe: str, value: Any) -> Any:
    """The snapshot of PROBE described by VALUE."""
    if probe not in BUILDERS:
        raise KeyError(f"no snapshot builder for probe {probe!r} (add one to tests/snapshots.py "
                       f"BUILDERS); builders: {sorted(BUILDERS)}")
    return BUILDERS[probe](value)
