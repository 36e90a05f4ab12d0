"""What a backup directory holds, against the schedule and the retention policy.

A pure function of the listing (``archive.sets``) and of the time, so that every rule is tested
on a table of cases without any file. It judges nothing: the runbook's checks grade the age of
the newest backup against the RPO and decide what a missing day is worth.

Kinds follow the schedule of the policy: ``full`` (weekly), ``daily`` (incremental) and
``monthly`` (the archive kept a year). A pg_dump is always complete, so a full or monthly set
also covers its day, and a monthly set also counts as a full one.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("full", "daily", "monthly")
_WORDS = (("monthly", "monthly"), ("archive", "monthly"), ("full", "full"), ("weekly", "full"),
          ("daily", "daily"), ("incremental", "daily"))


def kind_from_name(name: str) -> str:
    """The kind a legacy file's name tells (words full/weekly, daily/incremental,
    monthly/archive), daily when it tells none.

    >>> kind_from_name("cosnap-weekly-2026-11-22.dump.gz.enc"), kind_from_name("cosnap.dump")
    ('full', 'daily')
    """
    words = set(re.split(r"[^a-z]+", name.lower()))
    return next((kind for word, kind in _WORDS if word in words), "daily")


@dataclass(frozen=True)
class SetInfo:
    """One backup in a directory: a set of ours (a directory with its manifest) or a legacy file."""

    path: Path
    name: str
    kind: str
    time: dt.datetime  # UTC: the manifest's end time, a legacy name's timestamp, else the mtime
    size: int  # bytes on disk
    legacy: bool = False
    encrypted: bool = False
    problem: str = ""  # why this set cannot count as a backup (an unreadable manifest)


@dataclass(frozen=True)
class Policy:
    """The schedule and the retention, in days."""

    full_every_days: int = 7
    full_keep_days: int = 30
    daily_keep_days: int = 7
    monthly_keep_days: int = 365

    def keep_days(self, kind: str) -> int:
        return {"full": self.full_keep_days, "monthly": self.monthly_keep_days}.get(
            kind, self.daily_keep_days)


@dataclass
class Inventory:
    """The facts the runbook grades; ages are timedeltas, None when there is no such set."""

    now: dt.datetime
    policy: Policy
    count: dict[str, int]  # usable sets by kind
    newest: SetInfo | None
    newest_age: dt.timedelta | None  # for the RPO
    missing_days: list[dt.date]  # within the daily window, after the first backup, before today
    last_full: SetInfo | None  # full or monthly
    full_age: dt.timedelta | None
    full_status: str  # "ok", "late" (older than full_every_days) or "missing" (none at all)
    last_monthly: SetInfo | None
    missing_months: list[str]  # "2026-10": complete months in the window without a monthly set
    prune: list[SetInfo] = field(default_factory=list)  # what retention would remove (preview)
    unusable: list[SetInfo] = field(default_factory=list)  # sets with a problem, never counted

    @property
    def empty(self) -> bool:
        return self.newest is None


def _months(start: dt.date, end: dt.date) -> list[dt.date]:
    """First days of the months from START's to END's, both included."""
    out, d = [], start.replace(day=1)
    while d <= end:
        out.append(d)
        d = (d + dt.timedelta(days=32)).replace(day=1)
    return out


def inventory(sets: list[SetInfo], policy: Policy, now: dt.datetime) -> Inventory:
    """Ages, gaps and the prune preview of SETS at NOW (an aware datetime)."""
    now = now.astimezone(dt.UTC)
    usable = sorted((s for s in sets if not s.problem), key=lambda s: s.time)
    unusable = [s for s in sets if s.problem]
    count = {k: sum(1 for s in usable if s.kind == k) for k in KINDS}
    newest = usable[-1] if usable else None
    fulls = [s for s in usable if s.kind in ("full", "monthly")]
    monthlies = [s for s in usable if s.kind == "monthly"]
    last_full = fulls[-1] if fulls else None
    full_age = now - last_full.time if last_full else None
    if full_age is None:
        full_status = "missing"
    else:
        full_status = "late" if full_age > dt.timedelta(days=policy.full_every_days) else "ok"

    missing_days: list[dt.date] = []
    missing_months: list[str] = []
    if usable:
        first = usable[0].time.date()
        today = now.date()
        covered = {s.time.date() for s in usable}
        for back in range(policy.daily_keep_days, 0, -1):
            day = today - dt.timedelta(days=back)
            if day >= first and day not in covered:
                missing_days.append(day)
        months = {(s.time.year, s.time.month) for s in monthlies}
        start = max(first, today - dt.timedelta(days=policy.monthly_keep_days))
        for month in _months(start, today):
            complete = (month + dt.timedelta(days=32)).replace(day=1) <= today
            if month >= start and complete and (month.year, month.month) not in months:
                missing_months.append(f"{month.year:04d}-{month.month:02d}")

    # Retention in calendar days, as the windows above: a set is kept through its last day.
    last_monthly = monthlies[-1] if monthlies else None
    keep = {id(s) for s in (newest, last_full, last_monthly) if s is not None}  # whatever their age
    prune = [s for s in sorted(sets, key=lambda s: s.time) if id(s) not in keep
             and s.time.date() < now.date() - dt.timedelta(days=policy.keep_days(s.kind))]
    return Inventory(now, policy, count, newest, now - newest.time if newest else None,
                     missing_days, last_full, full_age, full_status,
                     last_monthly, missing_months, prune, unusable)
