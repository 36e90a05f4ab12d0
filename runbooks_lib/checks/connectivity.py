"""Connectivity checks: who holds the connection slots, is something leaking, does the plan fit.

Thresholds (parameters): connection usage warning above 80 %, critical above 95 % of the slots
open to ordinary roles (the default alert thresholds); idle in transaction warning above 60 s,
critical above 10 min (check_postgres's txn_idle warns at 30 s); a leak suspect is a client with
10 or more connections idle for more than 10 min (PgHero flags idle connections; our bound is
per client so the culprit is named).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .. import present
from ..errors import SkipStep
from ..findings import Figure, Finding, Metric, Skipped, graded, records
from ..params import ALLOW_ACTIONS
from ..probes.activity import IDLE_IN_TX, Activity, Slots
from ..probes.connection import TargetInfo
from ..registry import Check, Param, Params, Probe, register, register_probe

if TYPE_CHECKING:
    import pandas as pd

    from ..actions import Plan
    from ..runbook import Runbook

USAGE_WARNING = Param("connection_usage_warning", float, 0.80,
                      "share of available slots in use that warns (default alert above 80 %)",
                      "share", 0.01, 1)
USAGE_CRITICAL = Param("connection_usage_critical", float, 0.95,
                       "share that is pool exhaustion (default alert above 95 %)", "share", 0.01, 1)
IDLE_TX_WARNING = Param("idle_in_transaction_warning_s", float, 60.0,
                        "a session idle in transaction longer than this warns", "s", 0)
IDLE_TX_CRITICAL = Param("idle_in_transaction_critical_s", float, 600.0,
                         "and pages when longer than this", "s", 0)
LEAK_COUNT = Param("leak_idle_count", int, 10,
                   "idle connections from one client that suggest a leak", "", 1)
LEAK_AGE = Param("leak_idle_age_s", float, 600.0,
                 "when the oldest of them has been idle this long", "s", 0)
POOL_SIZE = Param("pool_size", int, 0,
                  "connections per application instance; 0 means connection_limit in the target URL",
                  "", 0)
REPLICAS = Param("replicas", int, 1, "application instances (pods) sharing the database", "", 1)
OTHER = Param("other_consumers", int, 0,
              "connections planned for other clients (jobs, BI, migrations)", "", 0)
TERMINATE_APP = Param("terminate_application", str, "",
                      "application whose sessions idle in transaction the action targets")
TERMINATE_IDLE = Param("terminate_idle_s", float, 600.0,
                       "the action ends those idle in transaction longer than this", "s", 0)


def holder_summary(act: pd.DataFrame) -> str:
    """The application holding the most connections, named with its idle share."""
    if act.empty:
        return ""
    app = act["application"].value_counts().index[0]
    mine = act[act["application"] == app]
    idle = int(mine["state"].isin(["idle", *IDLE_IN_TX]).sum())
    return (f"{app} holds {len(mine)} connections ({idle} idle or idle in transaction) "
            f"from {mine['client_addr'].nunique()} client address(es) as "
            f"{', '.join(sorted(mine['user'].dropna().unique()))}")


# -- usage -------------------------------------------------------------------------------------

def usage(slots: Slots, activity: Activity, p: Params) -> list[Finding]:
    act = activity.sessions
    avail = max(1, slots.available)
    share = slots.used / avail
    by_app = (act.groupby(["application", "state"]).size().rename("count").reset_index()
              .sort_values("count", ascending=False))
    return [graded(
        "connection_usage", "connection_usage_ratio", share,
        p["connection_usage_warning"], p["connection_usage_critical"],
        title=f"Connection slots {share:.0%} used ({slots.used} of {avail})",
        detail=f"max_connections {slots.max_connections} minus {slots.superuser_reserved} "
               f"superuser and {slots.reserved} reserved slots; idle sessions count as used. "
               f"{holder_summary(act)}".strip(),
        evidence=records(by_app),
        remediation="find the application holding idle connections below; lower its pool size "
                    "or fix the leak (one PrismaClient per process); terminate idle-in-"
                    "transaction sessions if needed; put PgBouncer in front rather than "
                    "raising max_connections")]


def usage_figures(slots: Slots, activity: Activity) -> list[Figure]:
    """database_connections_active and _max of the metrics: the slots as the usage judges them."""
    return [Figure("connections_active", slots.used), Figure("connections_max", slots.available)]


register(Check(
    "connectivity.connection_usage", "Connection usage",
    """Client connections against the slots open to ordinary roles (max_connections minus the
    superuser and reserved slots). Idle connections count: they hold a slot. Above the critical
    threshold the next connection may fail with `too many clients already`: find the holder,
    lower its pool, put a pooler in front.""",
    usage, probes=("slots", "activity"), params=(USAGE_WARNING, USAGE_CRITICAL),
    emits=("connection_usage",), figures=usage_figures))


# -- visibility --------------------------------------------------------------------------------

def visibility(activity: Activity, p: Params) -> list[Finding | Skipped]:
    if activity.sees_all:
        return []
    return [Skipped("visibility", f"role {activity.role} lacks pg_read_all_stats: other roles' "
                    "client addresses and queries are hidden; grant pg_monitor")]


register(Check(
    "connectivity.visibility", "What the role can see",
    """Without pg_read_all_stats (pg_monitor), other roles' client addresses and queries are
    hidden: the holders below are then incomplete. Grant pg_monitor to the runbook's role.""",
    visibility, probes=("activity",)))


# -- holders and idle in transaction -----------------------------------------------------------

def idle_in_transaction(activity: Activity, p: Params) -> list[Finding]:
    act = activity.sessions
    warn, crit = p["idle_in_transaction_warning_s"], p["idle_in_transaction_critical_s"]
    idle_tx = act[act["state"].isin(IDLE_IN_TX)].sort_values("state_age_s", ascending=False)
    late = idle_tx[idle_tx["state_age_s"] > warn]
    if late.empty:
        oldest = round(float(idle_tx["state_age_s"].max()), 1) if len(idle_tx) else 0
        return [Finding("idle_in_transaction", "ok",
                        f"No session idle in transaction for more than {warn:g} s",
                        f"{len(idle_tx)} idle in transaction now",
                        metric=Metric("idle_in_transaction_max_seconds", oldest, warn))]
    first = late.iloc[0]
    oldest = float(first["state_age_s"])
    apps = ", ".join(f"{a} ({n})" for a, n in late["application"].value_counts().items())
    return [graded(
        "idle_in_transaction", "idle_in_transaction_max_seconds", oldest, warn, crit,
        title=f"{len(late)} session(s) idle in transaction longer than {warn:g} s (oldest "
              f"{oldest:.0f} s: pid {first['pid']}, {first['application']})",
        detail=f"by application: {apps}. They hold locks and snapshots (blocking vacuum) and "
               "their connection slots.",
        evidence=records(late[["pid", "application", "user", "client_addr", "database",
                               "state_age_s", "xact_age_s", "query"]]),
        remediation="fix the code path that opens a transaction and waits (missing commit or "
                    "rollback, an external call inside $transaction); set "
                    "idle_in_transaction_session_timeout; end them with the safe action of this "
                    "runbook if urgent")]


def show_holders(activity: Activity, found: list[Finding], p: Params) -> None:
    act = activity.sessions
    grouped = (act.groupby(["application", "user", "client_addr", "database", "state"],
                           dropna=False, observed=True)
               .agg(count=("pid", "size"), oldest_s=("conn_age_s", "max"),
                    longest_in_state_s=("state_age_s", "max"))
               .round(1).reset_index().sort_values("count", ascending=False))
    present.show_table(grouped, "connections by application, user, client, database and state")
    buckets = (act.groupby(["application", "age_bucket"], observed=False).size()
               .rename("count").reset_index())
    ages = buckets.pivot(index="application", columns="age_bucket", values="count")
    ages.columns.name = None
    present.show_table(ages.reset_index(), "connection age by application")
    if not act.empty:
        counts = act.groupby(["application", "state"]).size().rename("connections").reset_index()
        present.show_figure(present.stacked_bars(counts, "application", "connections", "state",
                                                 "Connections by state per application"))
        present.show_figure(present.histogram(act.assign(age_s=act["conn_age_s"].round(1)),
                                              "age_s", "application",
                                              "Connection age (seconds)"))
    idle_tx = act[act["state"].isin(IDLE_IN_TX)].sort_values("state_age_s", ascending=False)
    # the ones past the threshold are the finding's evidence below: listed there, not twice
    listed = {row.get("pid") for f in found if f.severity != "ok" for row in f.evidence}
    rest = idle_tx[~idle_tx["pid"].isin(listed)].round({"state_age_s": 1, "xact_age_s": 1})
    if listed and rest.empty:
        return
    present.show_table(rest[["pid", "application", "user", "client_addr", "state_age_s",
                             "xact_age_s", "query"]],
                       "sessions idle in transaction" + (" (under the threshold)" if listed else ""))


register(Check(
    "connectivity.idle_in_transaction", "Sessions idle in transaction",
    """A session idle in transaction holds its locks, its snapshot (vacuum cannot clean behind
    it) and a connection slot. Fix the code path that opens a transaction and waits; set
    idle_in_transaction_session_timeout; end them if urgent.""",
    idle_in_transaction, probes=("activity",), params=(IDLE_TX_WARNING, IDLE_TX_CRITICAL),
    emits=("idle_in_transaction",), show=show_holders))


def show_session_stats(stats: pd.DataFrame, found: list[Finding], p: Params) -> None:
    present.show_table(stats, "session counters since the last stats reset (14+)")


def session_counters(stats: pd.DataFrame, p: Params) -> list[Finding]:
    return []  # shown for the reader: abandoned, fatal and killed sessions since the reset


register(Check(
    "connectivity.session_stats", "Session counters",
    """On 14+, pg_stat_database counts sessions abandoned by clients, ended by FATAL errors or
    killed: a rising count of abandoned sessions is a client that does not close its
    connections.""",
    session_counters, probes=("session_stats",), show=show_session_stats))


# -- leaks and pools ---------------------------------------------------------------------------

def per_client(act: pd.DataFrame) -> pd.DataFrame:
    """Connections, idle ones and the oldest idle age per application, client and user. Sessions
    whose address the role may not see cannot be told apart by client: they are left out (the
    visibility check says so) rather than lumped into one false 'client'."""
    act = act[act["client_addr"] != "(hidden)"]
    out = (act.assign(idle=act["state"].isin(["idle", *IDLE_IN_TX]),
                      idle_age=act["state_age_s"].where(act["state"] != "active"))
           .groupby(["application", "client_addr", "user"], dropna=False)
           .agg(connections=("pid", "size"), idle=("idle", "sum"), oldest_idle_s=("idle_age", "max"))
           .reset_index().sort_values("connections", ascending=False))
    out["oldest_idle_s"] = out["oldest_idle_s"].fillna(0)
    return out


def pool_of(target: TargetInfo, p: Params) -> int:
    """The pool size: the parameter, else the target's Prisma connection_limit."""
    return int(p["pool_size"] or target.connection_limit or 0)


def leaks(activity: Activity, p: Params) -> list[Finding]:
    clients = per_client(activity.sessions)
    count, age = p["leak_idle_count"], p["leak_idle_age_s"]
    suspects = clients[(clients["idle"] >= count) & (clients["oldest_idle_s"] > age)]
    found = [Finding(
        "leak_suspect", "warning",
        f"Leak suspect: {r['application']} from {r['client_addr']} holds {r['idle']} idle "
        f"connections, oldest idle {r['oldest_idle_s']:.0f} s",
        f"user {r['user']}; {r['connections']} connections in all. Connections idle this long "
        "in such numbers are rarely a warm pool: usually clients created per request or per "
        "module and never closed.",
        metric=Metric("idle_connections", int(r["idle"]), count),
        evidence=[{k: r[k] for k in clients.columns}],
        remediation="make sure the app creates one client (PrismaClient) per process and "
                    "disconnects on shutdown; set an idle timeout on the pool")
        for _, r in suspects.iterrows()]
    return found or [Finding("leak_suspect", "ok", "No leak suspect",
                             f"no client holds {count}+ connections idle for more than "
                             f"{age:g} s")]


def show_clients(activity: Activity, found: list[Finding], p: Params) -> None:
    present.show_table(per_client(activity.sessions).round(1), "connections per client")


register(Check(
    "connectivity.leak_suspect", "Leak suspects",
    """A client (application and address) with many connections idle for a long time is rarely
    a warm pool: usually clients created per request or per module and never closed. Create one
    client per process and disconnect on shutdown.""",
    leaks, probes=("activity",), params=(LEAK_COUNT, LEAK_AGE), emits=("leak_suspect",),
    show=show_clients))


def pool_overflow(activity: Activity, target: TargetInfo, p: Params) -> list[Finding]:
    pool = pool_of(target, p)
    if not pool:
        raise SkipStep("pool size unknown: set pool_size or connection_limit in the target URL")
    clients = per_client(activity.sessions)
    found = []
    for _, r in clients[clients["connections"] > pool].iterrows():
        pools = math.ceil(int(r["connections"]) / pool)
        found.append(Finding(
            "pool_overflow", "warning",
            f"{r['application']} from {r['client_addr']} holds {r['connections']} connections, "
            f"more than its pool size {pool}: about {pools} pools",
            "One client process should never exceed its pool size: several pools exist (many "
            "PrismaClient instances, one per module) or the pool size is not what you think "
            "(Prisma 7 with the pg adapter ignores connection_limit; the adapter's max, default "
            "10, applies).",
            metric=Metric("connections_per_client", int(r["connections"]), pool),
            evidence=[{k: r[k] for k in clients.columns}],
            remediation="share one client instance per process (singleton); check the "
                        "adapter's max"))
    return found or [Finding("pool_overflow", "ok",
                             f"No client holds more than its pool size {pool}")]


register(Check(
    "connectivity.pool_overflow", "Pool overflow",
    """A client holding more connections than its pool size means several pools: one
    PrismaClient per module instead of one per process. Share one instance.""",
    pool_overflow, probes=("activity", "target"), params=(POOL_SIZE,), emits=("pool_overflow",)))


# -- connection budget -------------------------------------------------------------------------

def budget(slots: Slots, target: TargetInfo, p: Params) -> list[Finding]:
    pool = pool_of(target, p)
    if not pool:
        raise SkipStep("pool size unknown: give pool_size, or connection_limit in the target's "
                       "URL (Prisma's default is num_cpus * 2 + 1; with the pg adapter its max, "
                       "default 10)")
    source = "pool_size parameter" if p["pool_size"] else "connection_limit in the target URL"
    replicas, other = p["replicas"], p["other_consumers"]
    avail = slots.available
    planned = replicas * pool + other
    share = planned / max(1, avail)
    plan = {"replicas": replicas, "pool_size": pool, "pool_size_from": source,
            "other_consumers": other, "planned": planned, "available": avail,
            "in_use_now": slots.used}
    return [graded(
        "connection_budget", "connection_budget_ratio", share,
        p["connection_usage_warning"], 1.0,
        title=f"Connection budget: {replicas} x {pool} + {other} = {planned} planned for "
              f"{avail} slots ({share:.0%})",
        detail=f"pool size from the {source}; every replica opens its full pool at peak. "
               "Prisma 7 with @prisma/adapter-pg ignores connection_limit: its max applies.",
        evidence=[plan],
        remediation="lower connection_limit per replica (for example 5 per pod), put PgBouncer "
                    "in transaction mode in front, or raise max_connections with memory to "
                    "match")]


register(Check(
    "connectivity.connection_budget", "Connection budget",
    """Every replica opens its whole pool at peak: replicas x pool size + other consumers must
    fit in the available slots. Over them is critical (the next deploy or scale-out exhausts
    the server); above the usage warning share it warns.""",
    budget, probes=("slots", "target"), params=(REPLICAS, POOL_SIZE, OTHER, USAGE_WARNING),
    emits=("connection_budget",)))


# -- the safe action ---------------------------------------------------------------------------

def terminate_plan(rb: Runbook, p: Params) -> Plan | None:
    from ..actions import terminate_idle_in_transaction_plan

    if not p["terminate_application"]:
        raise SkipStep("no application chosen: set terminate_application to preview its "
                       "sessions idle in transaction")
    plan = terminate_idle_in_transaction_plan(rb.session, p["terminate_application"],
                                              p["terminate_idle_s"])
    if plan.preview.empty:  # a typo in the name previews nothing: say which names are there
        plan.notes.append(absent_application(rb, p["terminate_application"]))
    return plan


def absent_application(rb: Runbook, name: str) -> str:
    """Why a preview for application NAME is empty, with the closest connected name."""
    import difflib

    try:
        apps = sorted(set(rb.snapshot("activity").sessions["application"].astype(str)))
    except SkipStep:
        apps = []
    if name not in apps:
        close = difflib.get_close_matches(name, apps, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else (
            f"; connected now: {', '.join(apps[:10])}" if apps else "")
        return f"no session of application {name!r} is connected{hint}"
    return (f"no session of application {name!r} has been idle in transaction for that long "
            "(terminate_idle_s)")


register_probe(Probe("terminate_plan", terminate_plan,
                     "Sessions of one application idle in transaction, previewed.",
                     params=(TERMINATE_APP, TERMINATE_IDLE), needs=("connection",)))


def terminate(plan: Plan, p: Params) -> list[Finding]:
    """What the preview leaves out (the action itself reports what it did: runbooks_lib.actions)."""
    return [Finding("action_terminate", "info", f"Nothing to terminate: {note}", note)
            for note in plan.notes]


register(Check(
    "connectivity.terminate_idle_in_transaction", "Safe action: end sessions idle in transaction",
    """Lists the sessions of terminate_application idle in transaction for longer than
    terminate_idle_s. A preview unless allow_actions is true; the statement re-checks every
    condition, runs in its own session, and every decision is appended to the audit log.""",
    terminate, probes=("terminate_plan",), params=(ALLOW_ACTIONS,), emits=("action_terminate",),
    act=True))
