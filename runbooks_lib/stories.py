"""Findings read as stories: related findings merged, ranked by what to look at first.

A statement's share of the database time, its sequential-scan plan, the scans of its table and
the foreign key without an index on that table are one story; so is the same root blocker seen
by the latency and the transaction-failures runbooks. Findings are linked when their evidence
names the same subject (a query id, a table, a backend pid, a client): SUBJECTS below says which
evidence fields name a subject, per finding `check`, in one place. Everything that ranks or
deduplicates findings (the report's summary, the overview, alerts, the terminal, history) reads
them through this module.

>>> a = {"check": "dominant_query", "severity": "warning", "title": "q", "evidence": [{"queryid": "7"}]}
>>> b = {"check": "plan_seq_scan", "severity": "warning", "title": "p",
...      "evidence": [{"queryid": "7", "relation": "public.posts"}]}
>>> c = {"check": "seq_scan", "severity": "critical", "title": "s",
...      "evidence": [{"schema": "public", "table": "posts"}]}
>>> [s.title for s in stories({"latency": {"findings": [a, b, c]}})]
['s']
>>> len(stories({"latency": {"findings": [a, b, c]}})[0].findings)
3
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .findings import SEVERITIES

LOUD = ("warning", "critical")

# finding check -> (evidence field, subject kind, every evidence row or only the first)
SUBJECTS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    "dominant_query": (("queryid", "query", False),),
    "slow_query": (("queryid", "query", False),),
    "plan_seq_scan": (("queryid", "query", False), ("relation", "table", False)),
    "seq_scan": (("table", "table", False),),
    "fk_without_index": (("child_table", "table", False),),
    "dead_tuples": (("table", "table", False),),
    "duplicate_index": (("index", "index", True),),
    "unused_index": (("index", "index", False),),
    "invalid_index": (("index", "index", False),),
    "deadlock": (("pattern", "deadlock", False),),
    "action_cancel": (("pid", "pid", True),),
    "blocking": (("pid", "pid", True),),
    "idle_in_transaction": (("pid", "pid", True),),
    "action_terminate": (("pid", "pid", True),),
    "long_query": (("pid", "pid", True),),
    "long_transaction": (("pid", "pid", True),),
    "leak_suspect": (("application", "client", False),),
    "pool_overflow": (("application", "client", False),),
    "connection_usage": (("application", "client", False),),
}


def _name(value: Any) -> str:
    """A table's name without schema or quotes, lower case: plans and catalogs spell it
    differently (verification_codes, public.verification_codes, "public"."Post")."""
    text = str(value).rsplit(".", 1)[-1].strip('"')
    return text if text != text.lower() else text.lower()


# about the run's target itself: the same finding from every runbook of a run is one story
ABOUT_TARGET = ("reachability", "too_many_clients", "xid_age", "log_setup", "log_coverage",
                "log_malformed")


def subjects(finding: Mapping[str, Any]) -> set[str]:
    """The subjects a finding's evidence names, as 'kind:value' strings."""
    out: set[str] = set()
    if finding.get("check") in ABOUT_TARGET:
        out.add(f"target:{finding.get('check')}")
    rows = [r for r in finding.get("evidence") or [] if isinstance(r, Mapping)]
    for key, kind, every in SUBJECTS.get(str(finding.get("check")), ()):
        for row in rows if every else rows[:1]:
            value = row.get(key)
            if value in (None, ""):
                continue
            out.add(f"{kind}:{_name(value) if kind == 'table' else value}")
    return out


def identity(runbook: str, finding: Mapping[str, Any]) -> str:
    """A finding's name that stays the same from one run to the next (its figures change):
    the check and its subjects; a backend is named by its application (its pid changes every
    night); else the title up to its first colon or parenthesis, numbers blanked.

    >>> identity("latency", {"check": "load", "title": "Average active sessions 2.8 (Lock 70%)"})
    'latency/load/Average active sessions #'
    """
    subj = sorted(s for s in subjects(finding) if not s.startswith("pid:"))
    rows = [r for r in finding.get("evidence") or [] if isinstance(r, Mapping)]
    if len(subj) < len(subjects(finding)) and rows and rows[0].get("application"):
        subj.append(f"app:{rows[0]['application']}")
    if subj:
        what = ",".join(subj)
    else:
        head = re.split(r":| \(", str(finding.get("title", "")), maxsplit=1)[0]
        what = re.sub(r"\d[\d.,]*", "#", head).strip()
    return f"{runbook}/{finding.get('check')}/{what}"


@dataclass
class Item:
    """One finding of one runbook, with its place in that runbook's findings JSON."""

    runbook: str
    index: int
    finding: Mapping[str, Any]

    @property
    def severity(self) -> str:
        return str(self.finding.get("severity", "ok"))

    @property
    def anchor(self) -> str:
        """The id of its evidence in the runbook's HTML report."""
        return f"finding-{self.index}"


@dataclass
class Story:
    """Findings about the same subject; the most severe one speaks for them."""

    findings: list[Item] = field(default_factory=list)

    @property
    def lead(self) -> Item:
        return max(self.findings, key=lambda i: (SEVERITIES.index(i.severity), -i.index))

    @property
    def severity(self) -> str:
        return self.lead.severity

    @property
    def title(self) -> str:
        return str(self.lead.finding.get("title", ""))

    @property
    def next(self) -> str:
        """The first remediation among its findings, the lead's first."""
        for item in [self.lead, *self.findings]:
            text = str(item.finding.get("remediation") or "").strip()
            if text:
                return text
        return ""

    @property
    def runbooks(self) -> list[str]:
        return list(dict.fromkeys(i.runbook for i in self.findings))

    @property
    def related(self) -> list[Item]:
        """Its other findings, each once: the same root blocker seen by two runbooks (the
        same check about the same subjects) is shown once."""
        def same(item: Item) -> tuple[str, str]:
            f = item.finding
            return str(f.get("check")), ",".join(sorted(subjects(f))) or str(f.get("title"))

        seen = {same(self.lead)}
        out = []
        for item in self.findings:
            if item is not self.lead and same(item) not in seen:
                seen.add(same(item))
                out.append(item)
        return out

    def key(self) -> str:
        return identity(self.lead.runbook, self.lead.finding)


def stories(reports: Mapping[str, Mapping[str, Any]], least: str = "info") -> list[Story]:
    """The findings of REPORTS (runbook name -> findings JSON) at least as severe as LEAST,
    merged by shared subject and ranked: critical first, then the stories with more
    findings, then the runbooks' order."""
    items = [Item(name, i, f) for name, data in reports.items()
             for i, f in enumerate(data.get("findings") or [])
             if SEVERITIES.index(str(f.get("severity", "ok"))) >= SEVERITIES.index(least)]
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, item in enumerate(items):
        for s in subjects(item.finding):
            if s in owner:
                parent[root(i)] = root(owner[s])
            else:
                owner[s] = i
    groups: dict[int, Story] = {}
    for i, item in enumerate(items):
        groups.setdefault(root(i), Story()).findings.append(item)
    order = {name: n for n, name in enumerate(reports)}
    return sorted(groups.values(), key=lambda s: (-SEVERITIES.index(s.severity),
                                                  -len(s.findings),
                                                  order[s.lead.runbook], s.lead.index))


def loud(reports: Mapping[str, Mapping[str, Any]]) -> list[Story]:
    """The warning and critical stories: what a person is told first."""
    return stories(reports, least="warning")


def counts(findings: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Findings by severity, every severity present (0 when none)."""
    out = dict.fromkeys(reversed(SEVERITIES), 0)
    for f in findings:
        out[str(f.get("severity", "ok"))] += 1
    return out
