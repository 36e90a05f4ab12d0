"""Plans of the window's top statements, each planned under its owner's role.

Planning evaluates a statement's IMMUTABLE functions, so EXPLAIN under the runbook's role (a
superuser, through admin_target) would run an application role's code with privileges it does
not have. Each statement is planned after SET ROLE to the role that ran it; when the session may
not take that role, the statement is not planned and the reason is said."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from .. import queries
from ..registry import Param, Params, Probe, register_probe
from .window import Window

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook
    from ..session import Session

TOP_N = Param("plans_top_n", int, 5, "EXPLAIN this many top statements", "", 0, 50)
ANALYZE = Param("explain_analyze", bool, False,
                "run EXPLAIN ANALYZE (executes the SELECT) instead of EXPLAIN")
EXPLAINABLE = re.compile(r"^\s*(select|with|insert|update|delete|merge|values|table)\b", re.I)


@dataclass(frozen=True)
class Planned:
    """One top statement and its plan (None when it was not planned: `note` says why)."""

    queryid: str
    query: str
    user: str
    mean_ms: float
    calls: int
    plan: dict[str, Any] | None
    note: str = ""


def explain(s: Session, text: str, user: str, opts: list[str]) -> dict[str, Any]:
    """The JSON plan of TEXT, planned as USER (SET ROLE, reset afterwards)."""
    statement = f"EXPLAIN {queries.MARKER} ({', '.join(opts)}) {text}".encode()
    switch = user != s.facts.current_user
    if switch:
        s.conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(user)))
    try:
        row = s.conn.execute(statement).fetchone()
    finally:
        if switch:
            s.conn.execute("RESET ROLE")
    assert row is not None
    plan: dict[str, Any] = row["QUERY PLAN"][0]["Plan"]
    return plan


def plans(rb: Runbook, p: Params) -> list[Planned]:
    s = rb.session
    w: Window = rb.snapshot("window")
    delta: pd.DataFrame = w.delta
    here = delta[delta["current_db"].astype(bool) & delta["query"].str.match(EXPLAINABLE)]
    generic = s.facts.version_num >= 160000
    out = []
    allowed: dict[str, bool] = {}
    for _, r in here.head(int(p["plans_top_n"])).iterrows():
        text, user = str(r["query"]), str(r["user"])
        base = Planned(str(r["queryid"]), text, user, float(r["mean_ms"]), int(r["calls"]), None)

        has_params = bool(re.search(r"\$\d", text))
        if has_params and not generic:
            out.append(replace(base, note="not planned: a normalized text needs GENERIC_PLAN (16+)"))
            continue
        opts = ["VERBOSE", "FORMAT JSON"]
        if has_params:
            opts.append("GENERIC_PLAN")
        elif p["explain_analyze"] and text.lstrip().lower().startswith(
                ("select", "with", "values", "table")):
            opts.append("ANALYZE")
        if user not in allowed:
            allowed[user] = s.facts.is_superuser or user == s.facts.current_user or bool(
                s.row(queries.get("may_set_role", s.facts.version_num), {"role": user})["allowed"])
        if not allowed[user]:
            out.append(replace(base, note=(
                f"not planned: planning runs its functions, so it is planned only as its owner "
                f"{user}, and role {s.facts.current_user} may not SET ROLE {user}")))
            continue
        try:
            out.append(replace(base, plan=explain(s, text, user, opts)))
        except psycopg.Error as exc:
            out.append(replace(base, note=f"not planned: {exc.diag.message_primary}"))
    return out


register_probe(Probe("plans", plans, __doc__ or "", params=(TOP_N, ANALYZE),
                     needs=("connection", "window", "tables")))
