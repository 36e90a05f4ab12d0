"""Stories: related findings merged by the subject their evidence names, on a recorded run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runbooks_lib import stories

RUN = Path(__file__).parent / "data" / "demo_run"


def recorded() -> dict[str, dict[str, Any]]:
    return {n: json.loads((RUN / f"{n}.findings.json").read_text())
            for n in ("connectivity", "latency", "transaction_failures", "restore_drill")}


def test_the_blocker_seen_by_two_runbooks_is_one_story() -> None:
    loud = stories.loud(recorded())
    with_blocking = [s for s in loud
                     if any(i.finding["check"] == "blocking" for i in s.findings)]
    assert len(with_blocking) == 1
    (story,) = with_blocking
    assert {"latency", "transaction_failures"} <= set(story.runbooks)
    checks = [story.lead.finding["check"], *(i.finding["check"] for i in story.related)]
    assert checks.count("blocking") == 1, "the same blocker is listed once"


def test_a_table_s_scans_its_plan_and_its_unindexed_foreign_key_are_one_story() -> None:
    loud = stories.loud(recorded())
    comments = [s for s in loud if "comments" in s.title or
                any("comments" in str(i.finding["title"]) for i in s.findings)]
    story = max(comments, key=lambda s: len(s.findings))
    checks = {i.finding["check"] for i in story.findings}
    assert {"seq_scan", "plan_seq_scan", "fk_without_index"} <= checks


def test_unrelated_findings_stay_apart_and_critical_comes_first() -> None:
    reports = recorded()
    reports["latency"]["findings"].append(
        {"check": "xid_age", "severity": "critical", "title": "wraparound near", "evidence": []})
    loud = stories.loud(reports)
    assert loud[0].severity == "critical" and loud[0].title == "wraparound near"
    assert len(loud[0].findings) == 1
    titles = [s.title for s in loud]
    assert any("deadlock" in t for t in titles) and any("integrity" in t for t in titles)


def test_identity_ignores_numbers_but_not_subjects() -> None:
    a = {"check": "connection_usage", "title": "Connection slots 94% used (91 of 97)",
         "evidence": [{"application": "cosnap-backend", "state": "idle", "count": 80}]}
    b = {**a, "title": "Connection slots 95% used (92 of 97)"}
    c = {**a, "evidence": [{"application": "reporting", "state": "idle", "count": 80}]}
    assert stories.identity("connectivity", a) == stories.identity("connectivity", b)
    assert stories.identity("connectivity", a) != stories.identity("connectivity", c)
    d = {"check": "errors_timeout", "title": "3 timeout error(s) since 22:45 UTC"}
    e = {"check": "errors_timeout", "title": "7 timeout error(s) since 23:45 UTC"}
    assert stories.identity("transaction_failures", d) == stories.identity("transaction_failures", e)


def test_a_blocker_is_named_by_its_application_not_its_pid() -> None:
    """pids change every night: a blocker of the same application is the same finding."""
    a = {"check": "blocking", "title": "pid 14848 (cosnap-backend, idle in transaction) blocks 2",
         "evidence": [{"pid": 14848, "application": "cosnap-backend"}, {"pid": 14849}]}
    b = {"check": "blocking", "title": "pid 29268 (cosnap-backend, idle in transaction) blocks 3",
         "evidence": [{"pid": 29268, "application": "cosnap-backend"}]}
    c = {**b, "evidence": [{"pid": 29268, "application": "billing"}]}
    assert stories.identity("latency", a) == stories.identity("latency", b)
    assert stories.identity("latency", a) == "latency/blocking/app:cosnap-backend"
    assert stories.identity("latency", b) != stories.identity("latency", c)


def test_an_unreachable_server_is_one_story_not_one_per_runbook() -> None:
    down = {"check": "reachability", "severity": "critical",
            "title": "Database unreachable after 3 attempt(s): refused (127.0.0.1:1)",
            "evidence": [{"attempt": 1, "ok": False, "seconds": 0.01, "cause": "refused"}]}
    reports = {n: {"findings": [dict(down)]}
               for n in ("connectivity", "latency", "transaction_failures", "restore_drill")}
    (story,) = stories.loud(reports)
    assert len(story.runbooks) == 4 and story.related == []
