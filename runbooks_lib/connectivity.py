"""The connectivity runbook: can clients connect, who holds the slots, is something leaking.

Thresholds (defaults from the seed's alert table, every one a notebook parameter):
- connection usage: warning > 80 %, critical > 95 % of the slots open to ordinary roles;
- unreachable after 3 attempts: critical;
- idle in transaction: warning > 60 s, critical > 10 min (pg_activity highlights the same state;
  check_postgres's txn_idle defaults to warning at 30 s);
- leak suspect: a client with >= 10 idle connections idle for > 10 min (PgHero flags idle
  connections; our bound is per client so the culprit is named).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any

import pandas as pd

from . import actions, present, queries
from .errors import ConnectError, SkipStep
from .findings import Finding, Metric, grade, ratio, records
from .runbook import Runbook, step
from .session import Session

NAME = "connectivity"
TRANSIENT = {"refused", "timeout", "too_many_clients", "starting_up", "shutting_down",
             "unknown", "unreachable", "dns"}
AGE_BUCKETS = [(-math.inf, 60, "< 1 min"), (60, 3600, "1 min - 1 h"), (3600, math.inf, "> 1 h")]
IDLE_IN_TX = ("idle in transaction", "idle in transaction (aborted)")


# -- step 1: reachability --------------------------------------------------------------------

def _probe_network(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """DNS and TCP timings for the first host of the target (libpq's own attempts follow)."""
    out: dict[str, Any] = {"host": host, "port": port}
    if not host or host.startswith("/"):
        out["tcp"] = "unix socket"
        return out
    t0 = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        out["dns_error"] = str(exc)
        return out
    out["dns_ms"] = round((time.monotonic() - t0) * 1000, 1)
    out["addresses"] = sorted({str(i[4][0]) for i in infos})
    family, _, _, _, addr = infos[0]
    t0 = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(addr)
            out["tcp_ms"] = round((time.monotonic() - t0) * 1000, 1)
        except OSError as exc:
            out["tcp_error"] = exc.strerror or type(exc).__name__
    return out


def _network_hint(net: dict[str, Any]) -> str:
    """What the DNS/TCP probe adds to libpq's message."""
    if "dns_error" in net:
        return f" DNS: {net['dns_error']}."
    if "tcp_ms" in net:
        return (f" TCP connect to {net['host']}:{net['port']} succeeded in {net['tcp_ms']} ms: "
                "something listens, so look at the server (or pooler) itself.")
    if "tcp_error" in net:
        return f" TCP connect to {net['host']}:{net['port']}: {net['tcp_error']}."
    return ""


@step("reachability")
def reachability(rb: Runbook, attempts: int = 3, connect_warning_s: float = 1.0) -> pd.DataFrame:
    """Up to ATTEMPTS connection attempts within the connect_timeout budget, timed; then the
    session the next steps use (through admin_target when slots are exhausted)."""
    if rb.target is None:
        raise SkipStep(f"no target: {rb.unavailable}")
    p = rb.target.params
    host = p.get("hostaddr") or p.get("host", "localhost").split(",")[0]
    port = int((p.get("port") or "5432").split(",")[0])
    budget = rb.timeouts.connect_s
    net: dict[str, Any] = {}
    # DNS and TCP are probed beside the first attempt, so the diagnosis costs no wall time
    prober = threading.Thread(target=lambda: net.update(_probe_network(host, port, budget)),
                              daemon=True)
    prober.start()
    rows: list[dict[str, Any]] = []
    session: Session | None = None
    failure: ConnectError | None = None
    started: float | None = None
    for n in range(1, attempts + 1):
        done = rb.attempt(rb.target)
        started = done.started if started is None else started
        rows.append({"attempt": n, "ok": done.session is not None,
                     "seconds": round(done.seconds, 3),
                     "cause": done.error.cause if done.error else ""})
        if done.session is not None:
            session = done.session
            break
        failure = done.error
        assert failure is not None
        spent = time.monotonic() - started
        if failure.cause not in TRANSIENT or spent + 0.25 * n >= budget or n == attempts:
            break
        time.sleep(0.25 * n)
    tries = pd.DataFrame(rows)
    if session is None and started is not None:
        prober.join(timeout=max(0.0, budget - (time.monotonic() - started)))
    present.show_table(tries, "connection attempts")
    if session is not None:
        info = session.conn.info
        tls = "TLS on" if info.pgconn.ssl_in_use else "TLS off"
        secs = float(tries["seconds"].iloc[-1])
        sev = "warning" if secs > connect_warning_s else "ok"
        retried = len(tries) - 1
        rb.add(Finding(
            "reachability", sev,
            f"Server reachable in {secs * 1000:.0f} ms"
            + (f" after {retried} failed attempt(s)" if retried else ""),
            f"PostgreSQL {session.facts.version} at {info.host}:{info.port}, {tls}, "
            f"as {session.facts.current_user} on {session.facts.database}",
            metric=Metric("connect_seconds", round(secs, 3), connect_warning_s),
            evidence=records(tries),
            remediation="slow connection set-up: check DNS, TLS and authentication (LDAP/PAM) "
                        "latency, or put a pooler in front" if sev == "warning" else ""))
        rb.use(session)
        return tries
    assert failure is not None
    cause = failure.cause
    if cause == "too_many_clients":
        rb.add(Finding(
            "too_many_clients", "critical",
            "Too many clients: connection slots are exhausted (53300)",
            rb.mask(str(failure)),
            metric=Metric("connection_usage_ratio", 1.0, None),
            evidence=records(tries),
            remediation="find who holds the slots (the next steps, through admin_target), "
                        "terminate leaked or idle-in-transaction sessions, lower pool sizes; "
                        "use one PrismaClient per process"))
        if rb.admin is not None:
            try:
                rb.use(rb.open_session(rb.admin))
                present.show_text("Normal slots exhausted: continuing through admin_target.")
            except ConnectError as exc:
                rb.unavailable = str(exc)
                rb.skip("admin_target", f"admin_target could not connect either: {exc}")
        else:
            rb.unavailable = "connection slots exhausted and no admin_target given"
            rb.skip("admin_target", "give admin_target (a superuser, or a role with "
                    "pg_use_reserved_connections on 16+) to see who holds the slots")
        return tries
    rb.unavailable = str(failure)
    where = f"{host}:{port}"
    rb.add(Finding(
        "reachability", "critical",
        f"Database unreachable after {len(tries)} attempt(s): {cause.replace('_', ' ')} "
        f"({where})",
        rb.mask(str(failure)) + _network_hint(dict(net)),
        metric=Metric("connect_failures", len(tries), 3),
        evidence=[*records(tries), {k: str(v) for k, v in dict(net).items()}],
        remediation=str(failure).split("Next: ", 1)[-1]))
    return tries


# -- shared snapshot -------------------------------------------------------------------------

def activity(rb: Runbook) -> pd.DataFrame:
    """Client sessions, fetched once per run and shared by the steps below."""

    def fetch() -> pd.DataFrame:
        s = rb.session
        snap = s.frame(queries.get("activity", s.facts.version_num))
        snap["age_bucket"] = pd.cut(snap["conn_age_s"].astype(float),
                                    bins=[b[0] for b in AGE_BUCKETS] + [math.inf],
                                    labels=[b[2] for b in AGE_BUCKETS])
        if not s.facts.sees_all_sessions:
            rb.skip("visibility", f"role {s.facts.current_user} lacks pg_read_all_stats: other "
                    "roles' client addresses and queries are hidden; grant pg_monitor")
        return snap

    return rb.cached("activity", fetch)


def slots(rb: Runbook) -> dict[str, int]:
    def fetch() -> dict[str, int]:
        row = rb.session.row(queries.get("connection_slots"))
        row["available"] = row["max_connections"] - row["superuser_reserved"] - row["reserved"]
        return {k: int(v) for k, v in row.items()}

    return rb.cached("slots", fetch)


# -- step 3: usage ---------------------------------------------------------------------------

@step("connection_usage")
def usage(rb: Runbook, warning: float = 0.80, critical: float = 0.95) -> dict[str, int]:
    warning, critical = ratio(warning), ratio(critical)
    sl = slots(rb)
    act = activity(rb)
    used, avail = sl["used"], max(1, sl["available"])
    share = used / avail
    sev = grade(share, warning, critical)
    by_app = (act.groupby(["application", "state"]).size().rename("count").reset_index()
              .sort_values("count", ascending=False))
    top = ""
    if not act.empty:
        app = act["application"].value_counts().index[0]
        mine = act[act["application"] == app]
        idle = int(mine["state"].isin(["idle", *IDLE_IN_TX]).sum())
        top = (f"{app} holds {len(mine)} connections ({idle} idle or idle in transaction) "
               f"from {mine['client_addr'].nunique()} client address(es) as "
               f"{', '.join(sorted(mine['user'].dropna().unique()))}")
    rb.add(Finding(
        "connection_usage", sev,
        f"Connection slots {share:.0%} used ({used} of {avail})",
        f"max_connections {sl['max_connections']} minus {sl['superuser_reserved']} superuser "
        f"and {sl['reserved']} reserved slots; idle sessions count as used. {top}".strip(),
        metric=Metric("connection_usage_ratio", round(share, 4),
                      critical if sev == "critical" else warning),
        evidence=records(by_app),
        remediation="" if sev == "ok" else
        "find the application holding idle connections below; lower its pool size or fix the "
        "leak (one PrismaClient per process); terminate idle-in-transaction sessions if needed; "
        "put PgBouncer in front rather than raising max_connections"))
    return sl


# -- step 4: who holds them ------------------------------------------------------------------

@step("holders")
def holders(rb: Runbook, idle_in_transaction_warning_s: float = 60,
            idle_in_transaction_critical_s: float = 600) -> pd.DataFrame:
    act = activity(rb)
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
    _figures(act)
    idle_tx = act[act["state"].isin(IDLE_IN_TX)].sort_values("state_age_s", ascending=False)
    present.show_table(idle_tx[["pid", "application", "user", "client_addr", "state_age_s",
                                "xact_age_s", "query"]], "sessions idle in transaction")
    late = idle_tx[idle_tx["state_age_s"] > idle_in_transaction_warning_s]
    if late.empty:
        rb.add(Finding("idle_in_transaction", "ok",
                       f"No session idle in transaction for more than "
                       f"{idle_in_transaction_warning_s:g} s",
                       f"{len(idle_tx)} idle in transaction now",
                       metric=Metric("idle_in_transaction_max_seconds",
                                     round(float(idle_tx["state_age_s"].max()), 1)
                                     if len(idle_tx) else 0, idle_in_transaction_warning_s)))
    else:
        first = late.iloc[0]
        oldest = float(first["state_age_s"])
        sev = grade(oldest, idle_in_transaction_warning_s, idle_in_transaction_critical_s)
        apps = ", ".join(f"{a} ({n})" for a, n in late["application"].value_counts().items())
        rb.add(Finding(
            "idle_in_transaction", sev,
            f"{len(late)} session(s) idle in transaction longer than "
            f"{idle_in_transaction_warning_s:g} s (oldest {oldest:.0f} s: pid {first['pid']}, "
            f"{first['application']})",
            f"by application: {apps}. They hold locks and snapshots (blocking vacuum) and "
            "their connection slots.",
            metric=Metric("idle_in_transaction_max_seconds", round(oldest, 1),
                          idle_in_transaction_critical_s if sev == "critical"
                          else idle_in_transaction_warning_s),
            evidence=records(late[["pid", "application", "user", "client_addr", "database",
                                   "state_age_s", "xact_age_s", "query"]]),
            remediation="fix the code path that opens a transaction and waits (missing "
                        "commit/rollback, an external call inside $transaction); set "
                        "idle_in_transaction_session_timeout; terminate with step 7 if urgent"))
    _session_stats(rb)
    return grouped


def _session_stats(rb: Runbook) -> None:
    s = rb.session
    try:
        stats = s.frame(queries.get("session_stats", s.facts.version_num))
    except SkipStep as exc:
        rb.skip("session_stats", str(exc))
        return
    present.show_table(stats, "session counters since the last stats reset (14+)")


def _figures(act: pd.DataFrame) -> None:
    if act.empty:
        return
    counts = act.groupby(["application", "state"]).size().rename("connections").reset_index()
    present.show_figure(present.stacked_bars(counts, "application", "connections", "state",
                                             "Connections by state per application"))
    ages = act.assign(age_minutes=(act["conn_age_s"] / 60).round(2))
    present.show_figure(present.histogram(ages, "age_minutes", "application",
                                          "Connection age (minutes)"))


# -- step 5: leak suspects -------------------------------------------------------------------

@step("leak_suspects")
def leaks(rb: Runbook, leak_idle_count: int = 10, leak_idle_age_s: float = 600,
          pool_size: int = 0) -> pd.DataFrame:
    act = activity(rb)
    pool = pool_size or (rb.target.connection_limit if rb.target else None) or 0
    per_client = (act.assign(idle=act["state"].isin(["idle", *IDLE_IN_TX]))
                  .groupby(["application", "client_addr", "user"], dropna=False)
                  .agg(connections=("pid", "size"), idle=("idle", "sum"),
                       oldest_idle_s=("state_age_s",
                                      lambda s: float(s[act.loc[s.index, "state"] != "active"]
                                                      .max() if len(s) else 0)))
                  .reset_index().sort_values("connections", ascending=False))
    per_client["oldest_idle_s"] = per_client["oldest_idle_s"].fillna(0).round(1)
    suspects = per_client[(per_client["idle"] >= leak_idle_count)
                          & (per_client["oldest_idle_s"] >= leak_idle_age_s)]
    found: list[Finding] = []
    for _, r in suspects.iterrows():
        found.append(Finding(
            "leak_suspect", "warning",
            f"Leak suspect: {r['application']} from {r['client_addr']} holds {r['idle']} idle "
            f"connections, oldest idle {r['oldest_idle_s']:.0f} s",
            f"user {r['user']}; {r['connections']} connections in all. Connections idle this "
            "long in such numbers are rarely a warm pool: usually clients created per request or "
            "per module and never closed.",
            metric=Metric("idle_connections", int(r["idle"]), leak_idle_count),
            evidence=[{k: r[k] for k in per_client.columns}],
            remediation="make sure the app creates one client (PrismaClient) per process and "
                        "disconnects on shutdown; set an idle timeout on the pool"))
    if pool:
        over = per_client[per_client["connections"] > pool]
        for _, r in over.iterrows():
            pools = math.ceil(int(r["connections"]) / pool)
            found.append(Finding(
                "pool_overflow", "warning",
                f"{r['application']} from {r['client_addr']} holds {r['connections']} "
                f"connections, more than its pool size {pool}: about {pools} pools",
                "One client process should never exceed its pool size: several pools exist "
                "(many PrismaClient instances, as in the seed's 15 modules) or the pool size is "
                "not what you think (Prisma 7 with the pg adapter ignores connection_limit; the "
                "adapter's max, default 10, applies).",
                metric=Metric("connections_per_client", int(r["connections"]), pool),
                evidence=[{k: r[k] for k in per_client.columns}],
                remediation="share one client instance per process (singleton); check the "
                            "adapter's max"))
    else:
        rb.skip("pool_overflow", "pool size unknown: set pool_size or connection_limit in the "
                "target URL")
    if not found:
        found.append(Finding("leak_suspect", "ok", "No leak suspect",
                             f"no client holds {leak_idle_count}+ connections idle for more "
                             f"than {leak_idle_age_s:g} s"
                             + (f" or more than its pool size {pool}" if pool else "")))
    rb.add(found)
    present.show_table(per_client, "connections per client")
    return per_client


# -- step 6: connection budget ---------------------------------------------------------------

@step("connection_budget")
def budget(rb: Runbook, replicas: int = 1, pool_size: int = 0, other_consumers: int = 0,
           warning: float = 0.80) -> dict[str, Any]:
    limit = rb.target.connection_limit if rb.target else None
    pool = pool_size or limit
    if not pool:
        raise SkipStep("pool size unknown: give pool_size, or connection_limit in the target's "
                       "URL (Prisma's default is num_cpus * 2 + 1; with the pg adapter its max, "
                       "default 10)")
    source = "pool_size parameter" if pool_size else "connection_limit in the target URL"
    warning = ratio(warning)
    sl = slots(rb)
    avail = sl["available"]
    planned = replicas * pool + other_consumers
    share = planned / max(1, avail)
    sev = "critical" if planned > avail else ("warning" if share > warning else "ok")
    plan = {"replicas": replicas, "pool_size": pool, "pool_size_from": source,
            "other_consumers": other_consumers, "planned": planned, "available": avail,
            "in_use_now": sl["used"]}
    rb.add(Finding(
        "connection_budget", sev,
        f"Connection budget: {replicas} x {pool} + {other_consumers} = {planned} planned "
        f"for {avail} slots ({share:.0%})",
        f"pool size from the {source}; every replica opens its full pool at peak. "
        "Prisma 7 with @prisma/adapter-pg ignores connection_limit: its max applies.",
        metric=Metric("connection_budget_ratio", round(share, 4), 1.0 if sev == "critical"
                      else warning),
        evidence=[plan],
        remediation="" if sev == "ok" else
        "lower connection_limit per replica (the seed: 5 per pod), put PgBouncer in "
        "transaction mode in front, or raise max_connections with memory to match"))
    return plan


# -- step 7: safe action ---------------------------------------------------------------------

@step("terminate_idle_in_transaction")
def terminate_idle_in_transaction(rb: Runbook, application: str = "", older_than_s: float = 600,
                                  allow_actions: bool = False) -> pd.DataFrame | None:
    if not application:
        raise SkipStep("no application chosen: set terminate_application to preview its "
                       "sessions idle in transaction")
    plan = actions.terminate_idle_in_transaction_plan(rb.session, application, older_than_s)
    return actions.run(rb, plan, allow_actions)


# -- the whole runbook, for scripts and the demo ---------------------------------------------

def run_all(rb: Runbook, **p: Any) -> dict[str, Any]:
    """All steps with notebook-style parameters (the notebook calls them one per cell)."""
    reachability(rb)
    usage(rb, p.get("connection_usage_warning", 0.80), p.get("connection_usage_critical", 0.95))
    holders(rb, p.get("idle_in_transaction_warning_s", 60),
            p.get("idle_in_transaction_critical_s", 600))
    leaks(rb, p.get("leak_idle_count", 10), p.get("leak_idle_age_s", 600), p.get("pool_size", 0))
    budget(rb, p.get("replicas", 1), p.get("pool_size", 0), p.get("other_consumers", 0),
           p.get("connection_usage_warning", 0.80))
    terminate_idle_in_transaction(rb, p.get("terminate_application", ""),
                                  p.get("terminate_idle_s", 600), p.get("allow_actions", False))
    return rb.finish()


