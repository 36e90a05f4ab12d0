"""The inventory of a backup directory: a table of cases on listings, no file needed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from runbooks_lib.drill.inventory import Policy, SetInfo, inventory, kind_from_name

NOW = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)


def listing(*sets: str) -> list[SetInfo]:
    """SetInfo from "KIND ISO-TIME" (a trailing "!" marks a set whose manifest is unreadable)."""
    out = []
    for spec in sets:
        kind, when = spec.rstrip("!").split()
        time = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
        name = f"{time:%Y%m%dT%H%M%SZ}-{kind}"
        out.append(SetInfo(Path(name), name, kind, time, 1000,
                           problem="manifest unreadable" if spec.endswith("!") else ""))
    return out


def week(*skip: int) -> list[str]:
    """Daily sets at 02:00 from 11-21 to 11-28 but the days in SKIP, and a full on 11-22."""
    return ["full 2026-11-22T03:00"] + [f"daily 2026-11-{d}T02:00" for d in range(21, 29)
                                        if d not in skip]


CASES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("no backups at all", [],
     {"newest": None, "newest_age_h": None, "missing_days": [], "full_status": "missing",
      "missing_months": [], "prune": []}),
    ("a complete week", week(),
     {"newest_age_h": 8, "missing_days": [], "full_status": "ok", "prune": []}),
    ("a missing daily day", week(25),
     {"missing_days": ["2026-11-25"], "full_status": "ok"}),
    ("a full or monthly set covers its day", week(22, 23) + ["monthly 2026-11-23T04:00"],
     {"missing_days": []}),
    ("the newest backup is over age; today is not yet missing", week(26, 27, 28),
     {"newest_age_h": 3 * 24 + 8, "missing_days": ["2026-11-26", "2026-11-27"]}),
    ("days before the first backup are not missing",
     ["daily 2026-11-26T02:00", "full 2026-11-27T02:00"],
     {"missing_days": [], "full_status": "ok", "missing_months": []}),
    ("the weekly full is late", [f"daily 2026-11-{d}T02:00" for d in range(21, 29)]
     + ["full 2026-11-15T03:00"],
     {"full_status": "late", "full_age_h": 13 * 24 + 7}),
    ("no full at all", [f"daily 2026-11-{d}T02:00" for d in range(21, 29)],
     {"full_status": "missing", "last_full": None}),
    ("a monthly set counts as a full", ["monthly 2026-11-27T02:00"], {"full_status": "ok"}),
    ("a complete month without its monthly set",
     ["daily 2026-08-15T02:00", "monthly 2026-10-01T02:00"] + week(),
     {"missing_months": ["2026-09"]}),
    ("months older than the monthly retention are not missing",
     ["daily 2025-06-15T02:00"] + [f"monthly 2026-{m:02d}-01T02:00" for m in range(1, 12)],
     {"missing_months": ["2025-12"]}),
    ("retention preview",
     week() + ["daily 2026-11-20T02:00", "daily 2026-11-10T02:00", "full 2026-11-01T03:00",
               "full 2026-10-20T03:00", "monthly 2025-12-01T02:00", "monthly 2025-11-01T02:00"],
     {"prune": ["20251101T020000Z-monthly", "20261020T030000Z-full", "20261110T020000Z-daily",
                "20261120T020000Z-daily"]}),
    ("the newest and the last full are kept whatever their age",
     ["daily 2026-09-01T02:00", "full 2026-08-01T02:00", "daily 2026-07-01T02:00"],
     {"prune": ["20260701T020000Z-daily"], "newest_age_h": 88 * 24 + 8}),
    ("an unreadable set is never counted", ["daily 2026-11-28T02:00!"],
     {"newest": None, "unusable": ["20261128T020000Z-daily"], "missing_days": []}),
]


@pytest.mark.parametrize("sets, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_inventory(sets: list[str], expected: dict[str, Any]) -> None:
    inv = inventory(listing(*sets), Policy(), NOW)
    hours = {k: None if v is None else v.total_seconds() / 3600
             for k, v in (("newest_age_h", inv.newest_age), ("full_age_h", inv.full_age))}
    got = {
        **hours, "missing_days": [d.isoformat() for d in inv.missing_days],
        "full_status": inv.full_status, "missing_months": inv.missing_months,
        "prune": [s.name for s in inv.prune], "unusable": [s.name for s in inv.unusable],
        "newest": inv.newest, "last_full": inv.last_full,
    }
    assert {k: got[k] for k in expected} == expected


def test_policy_is_a_parameter() -> None:
    sets = listing(*week(26))
    assert inventory(sets, Policy(daily_keep_days=1), NOW).missing_days == []
    assert [s.name for s in inventory(sets, Policy(daily_keep_days=2), NOW).prune] == [
        f"202611{d}T020000Z-daily" for d in range(21, 26)]  # the full of the 22nd is kept
    assert inventory(sets, Policy(full_every_days=3), NOW).full_status == "late"


@pytest.mark.parametrize("name, kind", [
    ("cosnap-weekly-2026-11-22T02-00-00.dump.gz.enc", "full"),
    ("cosnap_full_20261122T020000Z.dump", "full"),
    ("cosnap-monthly-2026-11.dump.gz", "monthly"),
    ("cosnap-archive.sql.gz", "monthly"),
    ("cosnap-incremental-2026-11-27.dump", "daily"),
    ("cosnap-2026-11-27.dump", "daily"),
    ("fullstack-2026-11-27.dump", "daily"),  # a word, not a part of one
])
def test_kind_from_legacy_name(name: str, kind: str) -> None:
    assert kind_from_name(name) == kind
