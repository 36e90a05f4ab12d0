"""Deadlock forensics: the cycle of each 40P01 from the server log's DETAIL, grouped by pattern.

PostgreSQL logs a deadlock as DETAIL lines 'Process A waits for MODE on OBJECT; blocked by
process B.' (one per edge of the cycle) followed by 'Process A: STATEMENT', and a CONTEXT such
as 'while updating tuple (0,2) in relation "users"'. Two deadlocks share a pattern when the same
statements wait for the same lock modes on the same kind of object, whichever process came first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .sqltext import LITERALS, normalize_sql  # noqa: F401 - LITERALS: logs reads it here

EDGE = re.compile(r"Process (\d+) waits for (\w+) on (.+?); blocked by process (\d+)\.")
STATEMENT = re.compile(r"^Process (\d+): (.*)$", re.M)
RELATION = re.compile(r'relation "([^"]+)"')
FIX = ("make every code path take these locks in one order (for example update rows ORDER BY "
       "id, or lock them first with SELECT ... FOR UPDATE ORDER BY id), keep the transactions "
       "short, and retry 40P01 with backoff and jitter")


@dataclass
class Edge:
    waiter: int
    mode: str
    target: str  # 'transaction 831', 'tuple (0,2) of relation 16412 of database 16387', ...
    blocker: int


@dataclass
class Deadlock:
    log_time: str
    edges: list[Edge]
    statements: dict[int, str] = field(default_factory=dict)
    relations: list[str] = field(default_factory=list)
    raw: str = ""

    @property
    def parsed(self) -> bool:
        return bool(self.edges)


def lock_kind(target: str) -> str:
    """'tuple (0,2) of relation 16412 ...' -> 'tuple'; 'transaction 831' -> 'transaction'."""
    return target.split(" ", 1)[0] if target else "?"


def parse(record: dict[str, Any]) -> Deadlock:
    detail = record.get("detail") or ""
    edges = [Edge(int(a), mode, target, int(b)) for a, mode, target, b in EDGE.findall(detail)]
    statements = {int(pid): sql for pid, sql in STATEMENT.findall(detail)}
    relations = RELATION.findall(record.get("context") or "")
    return Deadlock(str(record.get("log_time") or ""), edges, statements, relations, detail)


def pattern(d: Deadlock) -> str:
    """The cycle without pids or values, rotated to a canonical start."""
    if not d.parsed:
        return "(DETAIL not in the expected form)"
    steps = [f"{normalize_sql(d.statements.get(e.waiter, '?'))} waits for {e.mode} on "
             f"{lock_kind(e.target)}" for e in d.edges]
    start = min(range(len(steps)), key=lambda i: steps[i])
    return " -> ".join(steps[start:] + steps[:start])


def group(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Deadlocks grouped by pattern: count, first and last time, relations, an example."""
    rows = []
    for r in records:
        d = parse(r)
        rows.append({"pattern": pattern(d), "processes": len(d.edges),
                     "relations": ", ".join(sorted(set(d.relations))) or "?",
                     "log_time": d.log_time, "example": d.raw})
    if not rows:
        return pd.DataFrame(columns=["pattern", "count", "processes", "relations", "first",
                                     "last", "example"])
    df = pd.DataFrame(rows)
    return (df.groupby("pattern", sort=False)
              .agg(count=("pattern", "size"), processes=("processes", "max"),
                   relations=("relations", lambda s: ", ".join(sorted(set(s)))),
                   first=("log_time", "min"), last=("log_time", "max"), example=("example", "first"))
              .reset_index().sort_values("count", ascending=False))
