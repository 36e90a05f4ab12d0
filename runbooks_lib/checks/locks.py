"""Checks shared by the latency and transaction-failures runbooks: lock waits (the blocking
tree), long statements and transactions, prepared transactions, transaction ID age.

Bounds (parameters): lock waits warn over 1 min and page over 2 min; statements over 60 s and
transactions over 1 h warn (pg_activity and check_postgres use similar bounds); transaction ID
age warns at 50 % and pages at 75 % of the 2^31 wraparound horizon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import present
from ..errors import SkipStep
from ..findings import Finding, graded, records
from ..params import ALLOW_ACTIONS
from ..probes import catalog as _catalog  # noqa: F401 - registers the catalog probes (xid_age)
from ..probes.locks import QUERY_WARNING, XACT_WARNING
from ..registry import Check, Param, Params, Probe, register, register_probe
from ..sqltext import short

if TYPE_CHECKING:
    import pandas as pd

    from ..actions import Plan
    from ..runbook import Runbook

WRAPAROUND = 2**31
BLOCKING_WARNING = Param("blocking_warning_s", float, 60.0, "a lock wait longer than this warns",
                         "s", 0)
BLOCKING_CRITICAL = Param("blocking_critical_s", float, 120.0, "and pages when longer", "s", 0)
QUERY_CRITICAL = Param("long_query_critical_s", float, 600.0,
                       "statements running longer than this page", "s", 0)
XACT_CRITICAL = Param("long_transaction_critical_s", float, 14400.0,
                      "transactions open longer than this page", "s", 0)
XID_WARNING = Param("xid_age_warning", float, 0.50,
                    "share of the 2^31 transaction ID horizon that warns", "share", 0.01, 1)
XID_CRITICAL = Param("xid_age_critical", float, 0.75, "share that pages", "share", 0.01, 1)
PREPARED_WARNING = Param("prepared_warning_s", float, 300.0,
                         "prepared transactions older than this warn", "s", 0)


# -- blocking ----------------------------------------------------------------------------------

def root_name(r: pd.Series) -> str:
    if int(r["pid"]) < 0:
        return f"Prepared transaction {r['gid']!r} (owner {r['user']})"
    return f"pid {r['pid']} ({r['application']}, {r['state']})"


def blocking(tree: pd.DataFrame, p: Params) -> list[Finding]:
    warn, crit = p["blocking_warning_s"], p["blocking_critical_s"]
    found = []
    for _, group in tree.groupby("root", sort=False):
        r = group.iloc[0]
        waiters = group[group["depth"] > 0]
        if waiters.empty:
            continue
        longest = float(waiters["waiting_s"].max())
        prepared = int(r["pid"]) < 0
        found.append(graded(
            "blocking", "lock_wait_seconds", longest, warn, crit, quiet="info",
            title=f"{root_name(r)} blocks {len(waiters)} session(s), longest wait "
                  f"{longest:.0f} s, {int(group['depth'].max())} level(s) deep",
            detail=(f"root blocker: prepared {float(r['xact_age_s'] or 0):.0f} s ago in "
                    f"database {r['database']}; a prepared transaction keeps its locks until "
                    "COMMIT PREPARED or ROLLBACK PREPARED, across restarts" if prepared else
                    f"root blocker: user {r['user']} from {r['client_addr']}, transaction open "
                    f"{float(r['xact_age_s'] or 0):.0f} s, last query: {short(r['query'], 200)}"),
            evidence=records(group[["pid", "depth", "blocked_by", "state", "waiting_s",
                                    "application", "user", "query"]]),
            remediation=(f"COMMIT PREPARED '{r['gid']}' or ROLLBACK PREPARED '{r['gid']}' after "
                         "checking with its transaction manager" if prepared else
                         "end the root blocker's transaction (commit or rollback in the app); "
                         "if it is idle in transaction, terminate its session")))
    return found or [Finding("blocking", "ok", "No session waits for a lock")]


def show_tree(tree: pd.DataFrame, found: list[Finding], p: Params) -> None:
    if tree.empty:
        return
    shown = tree.assign(waiting_s=tree["waiting_s"].round(1),
                        xact_age_s=tree["xact_age_s"].astype(float).round(1),
                        pid=["  " * d + str(p) for d, p in zip(tree["depth"], tree["pid"],
                                                               strict=True)])
    present.show_table(shown[["pid", "depth", "blocked_by", "state", "wait_event", "waiting_s",
                              "xact_age_s", "application", "user", "client_addr", "query"]],
                       "blocking tree (root blockers first, waiters indented)")
    present.show_figure({"data": [{
        "type": "treemap", "ids": [str(p) for p in tree["pid"]],
        "labels": [f"pid {p} ({a})" for p, a in zip(tree["pid"], tree["application"], strict=True)],
        "parents": ["" if d == 0 else str(list(b)[0])
                    for d, b in zip(tree["depth"], tree["blocked_by"], strict=True)]}],
        "layout": {"title": {"text": "Blocking tree"}}})


register(Check(
    "shared.blocking", "Lock waits",
    """Sessions waiting for a lock, as a tree under each root blocker (a session, or a prepared
    transaction, which pg_blocking_pids reports as pid 0). End the root blocker's transaction:
    commit or roll back in the application, terminate it if it is idle in transaction, or
    finish the prepared transaction.""",
    blocking, probes=("blocking",), params=(BLOCKING_WARNING, BLOCKING_CRITICAL),
    emits=("blocking",), show=show_tree))


# -- long statements and transactions ----------------------------------------------------------

def long_running(df: pd.DataFrame, p: Params) -> list[Finding]:
    qw, qc = p["long_query_warning_s"], p["long_query_critical_s"]
    tw, tc = p["long_transaction_warning_s"], p["long_transaction_critical_s"]
    found = []
    for _, r in df[(df["state"] == "active") & (df["query_age_s"] > qw)].iterrows():
        found.append(graded(
            "long_query", "query_seconds", float(r["query_age_s"]), qw, qc,
            title=f"Statement running {r['query_age_s']:.0f} s: pid {r['pid']} "
                  f"({r['application']})",
            detail=f"user {r['user']}, database {r['database']}, from {r['client_addr']}: "
                   f"{short(r['query'], 200)}",
            evidence=records(df.loc[[r.name]]),
            remediation="look at its plan; cancel it if it hurts (pg_cancel_backend)"))
    for _, r in df[df["xact_age_s"] > tw].iterrows():
        found.append(graded(
            "long_transaction", "transaction_seconds", float(r["xact_age_s"]), tw, tc,
            title=f"Transaction open {r['xact_age_s']:.0f} s: pid {r['pid']} ({r['application']}, "
                  f"{r['state']})",
            detail=f"user {r['user']}, database {r['database']}, from {r['client_addr']}; "
                   + ("it holds a snapshot, so VACUUM cannot remove dead rows newer than it. "
                      if r["holds_snapshot"] else "") + f"last query: {short(r['query'], 200)}",
            evidence=records(df.loc[[r.name]]),
            remediation="find the code path that keeps the transaction open; terminate the "
                        "session if it blocks vacuum or others"))
    return found or [Finding("long_running", "ok", f"No statement over {qw:g} s and no "
                             f"transaction over {tw:g} s")]


def show_long(df: pd.DataFrame, found: list[Finding], p: Params) -> None:
    present.show_table(df.round(1), "long-running statements and transactions")


register(Check(
    "shared.long_running", "Long statements and transactions",
    """A statement running for minutes holds its locks and a connection; a transaction open for
    an hour also holds back vacuum (dead rows newer than its snapshot stay). Look at the
    statement's plan, cancel it if it hurts, and find the code path that keeps transactions
    open.""",
    long_running, probes=("long_running",),
    params=(QUERY_WARNING, QUERY_CRITICAL, XACT_WARNING, XACT_CRITICAL),
    emits=("long_query", "long_transaction", "long_running"), show=show_long))


# -- prepared transactions ---------------------------------------------------------------------

def prepared(df: pd.DataFrame, p: Params) -> list[Finding]:
    old = df[df["age_s"] > p["prepared_warning_s"]]
    return [Finding("prepared_transaction", "warning",
                    f"Prepared transaction {r['gid']} open for {r['age_s']:.0f} s",
                    f"owner {r['owner']}, database {r['database']}: it holds its locks and the "
                    "xmin horizon until COMMIT PREPARED or ROLLBACK PREPARED, even across "
                    "restarts",
                    evidence=records(old.loc[[i]]),
                    remediation=f"COMMIT PREPARED '{r['gid']}' or ROLLBACK PREPARED "
                                f"'{r['gid']}' after checking with its transaction manager")
            for i, r in old.iterrows()] or [
        Finding("prepared_transaction", "ok", "No old prepared transaction")]


register(Check(
    "shared.prepared_transactions", "Prepared transactions",
    """A prepared (two-phase) transaction keeps its locks and the xmin horizon until someone
    commits or rolls it back, even across restarts. Ask its transaction manager, then COMMIT
    PREPARED or ROLLBACK PREPARED.""",
    prepared, probes=("prepared_xacts",), params=(PREPARED_WARNING,),
    emits=("prepared_transaction",)))


# -- transaction ID age ------------------------------------------------------------------------

def xid_age(df: pd.DataFrame, p: Params) -> list[Finding]:
    df = df.assign(share=df["xid_age"] / WRAPAROUND)
    r = df.iloc[0]
    return [graded(
        "xid_age", "xid_age_ratio", float(r["share"]), p["xid_age_warning"],
        p["xid_age_critical"],
        title=f"Oldest transaction ID age: {int(r['xid_age']):,} in {r['database']} "
              f"({r['share']:.1%} of the wraparound horizon)",
        detail=f"autovacuum_freeze_max_age is {int(r['freeze_max_age']):,}",
        evidence=records(df),
        remediation="VACUUM (FREEZE) the oldest tables; find what holds back freezing (long "
                    "transactions, prepared transactions, replication slots)")]


def show_xid(df: pd.DataFrame, found: list[Finding], p: Params) -> None:
    present.show_table(df.assign(share=(df["xid_age"] / WRAPAROUND).round(4)),
                       "transaction ID age per database")


register(Check(
    "shared.xid_age", "Transaction ID age",
    """Past 2^31 transactions since a table was last frozen the server stops accepting writes to
    protect itself. Freeze the oldest tables and find what holds freezing back.""",
    xid_age, probes=("xid_age",), params=(XID_WARNING, XID_CRITICAL), emits=("xid_age",),
    show=show_xid))


# -- the guarded action on root blockers -------------------------------------------------------

BLOCKER_ACTION = Param("blocker_action", str, "cancel",
                       "cancel (the statement) or terminate (the session) of root blockers",
                       choices=("cancel", "terminate"))
BLOCKER_MIN_WAIT = Param("blocker_min_wait_s", float, 60.0,
                         "act on root blockers whose waiters waited this long", "s", 0)


def blocker_plan(rb: Runbook, p: Params) -> Plan:
    """The root blockers whose waiters waited long enough, previewed. Cancelling cannot help a
    session idle in transaction (it runs no statement): such roots are left out of a cancel,
    with a note saying what terminate would do."""
    from .. import queries
    from ..actions import Plan

    tree: pd.DataFrame = rb.snapshot("blocking")
    if tree.empty:
        raise SkipStep("no session waits for a lock: nothing to act on")
    mode, min_wait = p["blocker_action"], p["blocker_min_wait_s"]
    waiters = tree[(tree["depth"] > 0) & (tree["waiting_s"] >= min_wait)]
    roots = tree[tree["pid"].isin(waiters["root"]) & (tree["depth"] == 0)]
    notes = []
    prepared = roots[roots["pid"] < 0]
    for _, r in prepared.iterrows():
        notes.append(f"{root_name(r)} has no session to signal: COMMIT PREPARED or ROLLBACK "
                     f"PREPARED '{r['gid']}'")
    idle = roots[roots["state"].astype(str).str.startswith("idle in transaction")]
    if mode == "cancel":
        for _, r in idle.iterrows():
            notes.append(f"pid {r['pid']} ({r['application']}) is idle in transaction: cancel "
                         "cannot help (it runs no statement); blocker_action=terminate would end "
                         "its session, roll back its transaction and release its locks")
        roots = roots[~roots["pid"].isin(idle["pid"])]
    pids = sorted(int(x) for x in roots["pid"] if int(x) > 0)
    sql = queries.get("signal_blocker")
    params = {"pids": pids, "mode": mode, "dry_run": True}
    preview = rb.session.frame(sql, params)
    return Plan(action=mode, description=f"root blockers whose waiters waited >= {min_wait:g} s",
                preview=preview, sql=sql, params={**params, "dry_run": False}, notes=notes,
                confirm=", ".join(str(int(x)) for x in preview["pid"]) if "pid" in preview
                else "")


register_probe(Probe("blocker_plan", blocker_plan, "Root blockers to signal, previewed.",
                     params=(BLOCKER_ACTION, BLOCKER_MIN_WAIT), needs=("blocking",)))


def signal_blocker(plan: Plan, p: Params) -> list[Finding]:
    return [Finding("action_" + plan.action, "info", note.split(":", 1)[0] + ": not signalled",
                    note) for note in plan.notes]


register(Check(
    "latency.signal_blocker", "Safe action: signal root blockers",
    """Cancel (the statement) or terminate (the session) of root blockers whose waiters waited
    blocker_min_wait_s. A preview unless allow_actions is true; the statement re-checks that
    each session still blocks someone, and the result is re-checked after signalling.""",
    signal_blocker, probes=("blocker_plan",), params=(ALLOW_ACTIONS,),
    emits=("action_cancel", "action_terminate"), act=True))
