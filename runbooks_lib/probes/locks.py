"""Locks and open transactions now: the blocking tree (with prepared transactions as roots),
long-running statements and transactions, prepared transactions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import queries
from ..registry import Param, Params, Probe, register_probe
from .activity import SEES_ALL

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook

QUERY_WARNING = Param("long_query_warning_s", float, 60.0,
                      "statements running longer than this warn", "s", 0)
XACT_WARNING = Param("long_transaction_warning_s", float, 3600.0,
                     "transactions open longer than this warn", "s", 0)


def blocking_tree(df: pd.DataFrame) -> pd.DataFrame:
    """Order sessions as a tree: each root blocker, then its waiters depth-first, with depth."""
    import pandas as pd

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

    age = {int(p): float(a) if pd.notna(a) else 0.0
           for p, a in zip(df["pid"], df["xact_age_s"], strict=True)}
    for r in sorted(roots, key=lambda p: -age[p]):
        walk(r, 0, r)
    for p in df["pid"]:  # cycles (a deadlock about to be detected) have no root
        walk(int(p), 0, int(p))
    return pd.DataFrame(out)


def with_prepared_roots(df: pd.DataFrame, holders: pd.DataFrame) -> pd.DataFrame:
    """Replace the 0 that pg_blocking_pids gives for a prepared transaction by a row of its own
    (a negative pseudo-pid), so the tree names it as the root: gid, owner and age."""
    import pandas as pd

    if holders.empty:
        return df
    ids = {gid: -(i + 1) for i, gid in enumerate(sorted(set(holders["gid"])))}
    by_waiter: dict[int, list[int]] = {}
    for w, gid in zip(holders["waiter"], holders["gid"], strict=True):
        by_waiter.setdefault(int(w), []).append(ids[gid])
    blocked_by = [sorted({*(int(b) for b in (by or []) if int(b) != 0),
                          *by_waiter.get(int(pid), [])})
                  for pid, by in zip(df["pid"], df["blocked_by"], strict=True)]
    first = holders.drop_duplicates("gid")
    roots = pd.DataFrame({
        "pid": [ids[g] for g in first["gid"]], "blocked_by": [[] for _ in range(len(first))],
        "user": first["owner"].tolist(), "database": first["database"].tolist(),
        "application": [f"prepared transaction {g}" for g in first["gid"]],
        "client_addr": None, "state": "prepared", "wait_event_type": None, "wait_event": None,
        "waiting_s": 0.0, "xact_age_s": first["age_s"].tolist(),
        "state_age_s": first["age_s"].tolist(),
        "query": [f"PREPARE TRANSACTION '{g}'" for g in first["gid"]],
        "gid": first["gid"].tolist()})
    waiting = df.copy()
    waiting["blocked_by"] = pd.Series(blocked_by, index=df.index, dtype=object)
    return pd.concat([waiting, roots], ignore_index=True)


def blocking(rb: Runbook, p: Params) -> pd.DataFrame:
    s = rb.session
    df = s.frame(queries.get("blocking"))
    orphans = [int(pid) for pid, by in zip(df["pid"], df["blocked_by"], strict=True)
               if 0 in [int(b) for b in by or []]]
    if orphans:
        holders = s.frame(queries.get("prepared_lock_holders"), {"pids": orphans})
        df = with_prepared_roots(df, holders)
    return blocking_tree(df)


def long_running(rb: Runbook, p: Params) -> pd.DataFrame:
    return rb.session.frame(queries.get("long_running"),
                            {"query_s": p.get("long_query_warning_s", QUERY_WARNING.default),
                             "xact_s": p.get("long_transaction_warning_s",
                                             XACT_WARNING.default)})


def prepared(rb: Runbook, p: Params) -> pd.DataFrame:
    return rb.session.frame(queries.get("prepared_xacts"))


CONNECTED = ("connection",)
register_probe(Probe("blocking", blocking, "Sessions waiting for locks and their blockers.",
                     requires=SEES_ALL, needs=CONNECTED))
register_probe(Probe("long_running", long_running, "Long statements and transactions.",
                     params=(QUERY_WARNING, XACT_WARNING), requires=SEES_ALL, needs=CONNECTED))
register_probe(Probe("prepared_xacts", prepared, "Prepared (two-phase) transactions.",
                     needs=CONNECTED))
