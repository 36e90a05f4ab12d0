"""Plans of the top statements: a sequential scan on a large table, with the index that would
serve its filter, written so that it runs as printed (identifiers quoted)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .. import present
from ..errors import SkipStep
from ..findings import Finding
from ..probes import catalog as _catalog  # noqa: F401 - registers the tables probe
from ..probes.plans import ANALYZE, TOP_N, Planned
from ..probes.window import LARGE_TABLE_ROWS
from ..registry import Check, Params, register
from ..sqltext import ident, qualified, short

if TYPE_CHECKING:
    import pandas as pd

NAME = r'"(?:[^"]|"")+"|[a-z_][a-z0-9_$]*'
CAST = re.compile(r'::(?:"(?:[^"]|"")+"|[a-z_][a-z0-9_]*(?: varying| precision| with(?:out)? time '
                  r'zone)?)(?:\[\])?', re.I)
FILTER_COLUMN = re.compile(rf"(?:(?:{NAME})\.)?({NAME})\)?\s*(?:=|<>|<=|>=|<|>|~~|ANY)", re.I)


def seq_scans_of(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan] if plan.get("Node Type") == "Seq Scan" else []
    for child in plan.get("Plans", []):
        out.extend(seq_scans_of(child))
    return out


def suggest_index(scan: dict[str, Any]) -> str | None:
    """An index for a sequential scan's filter: its column(s) compared with a value, quoted.

    >>> suggest_index({"Filter": '("authorId" = 5)', "Relation Name": "Post", "Schema": "public"})
    'CREATE INDEX CONCURRENTLY ON "public"."Post" ("authorId");'
    >>> suggest_index({"Filter": "((o.status)::text = 'open'::text)", "Relation Name": "orders"})
    'CREATE INDEX CONCURRENTLY ON "orders" ("status");'
    """
    cols: list[str] = []
    for m in FILTER_COLUMN.finditer(CAST.sub("", scan.get("Filter", ""))):
        name = m.group(1)
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name
        if name.lower() not in ("and", "or", "not") and name not in cols:
            cols.append(name)
    if not cols:
        return None
    target = qualified(scan.get("Schema", ""), scan.get("Relation Name", ""))
    return f"CREATE INDEX CONCURRENTLY ON {target} ({', '.join(ident(c) for c in cols[:3])});"


def rows_of(tables: pd.DataFrame, schema: str, relname: str) -> float:
    hit = tables[(tables["table"] == relname) & ((tables["schema"] == schema) | (schema == ""))]
    return float(max(hit["est_rows"].max(), hit["n_live_tup"].max())) if len(hit) else 0.0


def plans(planned: list[Planned], tables: pd.DataFrame, p: Params) -> list[Finding]:
    large = p["large_table_rows"]
    if planned and all(st.plan is None for st in planned):
        raise SkipStep(f"none of the {len(planned)} top statements could be planned: "
                       f"{planned[0].note}")
    found = []
    for st in planned:
        for sc in seq_scans_of(st.plan or {}):
            rows = rows_of(tables, sc.get("Schema", ""), sc.get("Relation Name", ""))
            if rows < large:
                continue
            idx = suggest_index(sc)
            found.append(Finding(
                "plan_seq_scan", "warning",
                f"Plan scans {sc.get('Relation Name')} sequentially (~{rows:,.0f} rows): "
                f"{short(st.query)}",
                f"filter: {sc.get('Filter', '(none)')}; statement mean {st.mean_ms:.1f} ms, "
                f"{st.calls} calls in the window" + (f"; suggested index: {idx}" if idx else ""),
                evidence=[{"queryid": st.queryid, "node": sc.get("Node Type"),
                           "relation": sc.get("Relation Name"), "filter": sc.get("Filter"),
                           "total_cost": sc.get("Total Cost"), "suggested_index": idx}],
                remediation=idx or "index the columns this statement filters or joins on"))
    return found or [Finding("plans", "ok", "No top statement plans a sequential scan on a "
                             f"table of {large}+ rows")]


def show_plans(planned: list[Planned], tables: pd.DataFrame, found: list[Finding],
               p: Params) -> None:
    import pandas as pd

    present.show_table(pd.DataFrame([{
        "queryid": st.queryid, "user": st.user,
        "plan": st.note or (st.plan or {}).get("Node Type"),
        "total_cost": (st.plan or {}).get("Total Cost"),
        "seq_scans": ", ".join(sc.get("Relation Name", "") for sc in seq_scans_of(st.plan or {})),
        "query": st.query} for st in planned]),
        "plans of the top statements (EXPLAIN, each as the role that ran it)")


register(Check(
    "latency.plans", "Plans of the top statements",
    """EXPLAIN (never ANALYZE unless explain_analyze) of the window's top statements, each
    planned as the role that ran it (planning runs IMMUTABLE functions). A sequential scan on a
    large table comes with the index that would serve its filter.""",
    plans, probes=("plans", "tables"), params=(TOP_N, LARGE_TABLE_ROWS, ANALYZE),
    emits=("plan_seq_scan", "plans"), show=show_plans))
