"""Deadlock forensics on real deadlocks raised on the sandbox, and on DETAIL texts of other
shapes (three processes, something unexpected)."""

from __future__ import annotations

import datetime as dt
import time

from runbooks_lib import deadlocks, logs
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import retry


def test_real_deadlocks_group_into_one_pattern(quiet: Sandbox) -> None:
    pattern = str(quiet.log_dir / "*.csv")
    since = dt.datetime.now(dt.UTC)
    assert incidents.deadlock(quiet.url("app")) + incidents.deadlock(quiet.url("app")) == 2

    def logged() -> list[dict[str, object]]:
        got = logs.scan(logs.local_files(pattern), pattern, since, durations=False)
        new = [r for r in got.errors if r["sqlstate"] == "40P01"]
        return new if len(new) == 2 else []  # the logging collector writes asynchronously

    records = retry(logged, timeout=10, interval=0.3)
    groups = deadlocks.group(records)
    assert len(groups) == 1
    g = groups.iloc[0]
    assert g["count"] == 2 and g["processes"] == 2 and g["relations"] == "users"
    assert g["pattern"] == ("UPDATE users SET updated_at = updated_at WHERE id = ? waits for "
                            "ShareLock on transaction -> UPDATE users SET updated_at = "
                            "updated_at WHERE id = ? waits for ShareLock on transaction")
    d = deadlocks.parse(records[0])
    assert {e.waiter for e in d.edges} == {e.blocker for e in d.edges}, "a closed cycle"


def test_three_process_cycle_is_the_same_pattern_from_any_start() -> None:
    def record(a: int, b: int, c: int) -> dict[str, str]:
        sql = {a: "UPDATE a SET x = 1 WHERE id = 5", b: "UPDATE b SET x = 2 WHERE id = 6",
               c: "DELETE FROM c WHERE id = 7"}
        return {"log_time": time.strftime("%Y-%m-%d %H:%M:%S UTC"), "context": "",
                "detail": f"Process {a} waits for ShareLock on transaction 10; blocked by process {b}.\n"
                          f"Process {b} waits for ExclusiveLock on tuple (0,1) of relation 1 of "
                          f"database 2; blocked by process {c}.\n"
                          f"Process {c} waits for ShareLock on transaction 12; blocked by process {a}.\n"
                          + "".join(f"Process {p}: {s}\n" for p, s in sql.items())}

    groups = deadlocks.group([record(1, 2, 3), record(7, 8, 9)])
    assert list(groups["count"]) == [2] and list(groups["processes"]) == [3]
    assert "DELETE FROM c WHERE id = ?" in groups.iloc[0]["pattern"]


def test_unexpected_detail_is_reported_not_fatal() -> None:
    groups = deadlocks.group([{"log_time": "x", "detail": "something else entirely"}])
    assert groups.iloc[0]["pattern"] == "(DETAIL not in the expected form)"
    assert deadlocks.group([]).empty
