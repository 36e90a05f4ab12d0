"""Reading the server log: real errors raised on the sandbox are counted by SQLSTATE, the
vectorized scan agrees with the plain csv parser, and bad input never crashes."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from runbooks_lib import logs
from runbooks_lib.errors import SkipStep
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import retry


def csv_module_counts(pattern: str) -> dict[str, int]:
    """The reference: the same files through Python's csv module."""
    counts: dict[str, int] = {}
    for path in sorted(Path(p) for p in glob.glob(pattern)):
        records, _ = logs.parse_csvlog(path.read_text(errors="replace"))
        for r in records:
            if r["severity"] in logs.ERROR_LEVELS:
                counts[r["sqlstate"]] = counts.get(r["sqlstate"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def test_real_errors_are_counted_by_sqlstate(quiet: Sandbox) -> None:
    pattern = str(quiet.log_dir / "*.csv")
    before = logs.scan_errors(pattern).errors_by_sqlstate
    raised = incidents.failing_statements(quiet.url("app"), times=3)
    raised["40P01"] = incidents.deadlock(quiet.url("app"))
    assert raised == {"23503": 3, "23505": 3, "22012": 3, "42P01": 3, "57014": 3, "40P01": 1}

    def logged() -> bool:
        after = logs.scan_errors(pattern).errors_by_sqlstate
        return all(after.get(c, 0) - before.get(c, 0) == n for c, n in raised.items())

    retry(logged, timeout=10, interval=0.3)  # the logging collector writes asynchronously
    scan = logs.scan_errors(pattern)
    assert scan.malformed == 0 and scan.records > 0
    assert scan.errors_by_sqlstate == csv_module_counts(pattern)


def test_malformed_and_truncated_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    good = ('2026-11-27 23:35:17.123 UTC,"app","cosnap",123,"127.0.0.1:5000",abc.1,1,"INSERT",'
            '2026-11-27 23:35:00 UTC,3/4,0,ERROR,23505,"duplicate key value violates unique '
            'constraint ""users_email_key""","Key (email)=(a@b.c) already exists.",,,,,'
            '"INSERT INTO users ...",,,"cosnap-backend","client backend",,0\n')
    multi = good.replace('"INSERT INTO users ..."', '"INSERT INTO users\nVALUES (1)"')
    text = good + "this is not a csvlog line\n" + multi + good + good[: len(good) // 2]
    path = tmp_path / "postgresql.csv"
    path.write_text(text)
    scan = logs.scan_errors(str(path))
    assert scan.errors_by_sqlstate == {"23505": 3}
    assert scan.malformed == 2  # the garbage line and the truncated last record


def test_missing_log_file_is_a_clear_skip(tmp_path: Path) -> None:
    with pytest.raises(SkipStep, match="no log file matches"):
        logs.scan_errors(str(tmp_path / "*.csv"))
