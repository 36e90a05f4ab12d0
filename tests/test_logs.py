"""Reading the server log: real errors raised on the sandbox are counted the same from its csvlog,
jsonlog and stderr files (and as Python's csv module counts them), multi-line records survive
block boundaries, durations give the right quantiles, and bad input (malformed lines, a wrong or
thin prefix, a file rotated or removed mid-read, no file at all) is a clear note, never a crash."""

from __future__ import annotations

import csv
import datetime as dt
import glob
import math
import os
from pathlib import Path

import numpy as np
import pytest

from runbooks_lib import deadlocks, logparse, logs
from runbooks_lib.errors import SkipStep
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import retry

PREFIX = "%m [%p] %q%u@%d %a %e "


def csv_module_counts(pattern: str, since: dt.datetime) -> dict[str, int]:
    """The reference: the same csvlog files through Python's csv module."""
    counts: dict[str, int] = {}
    for path in sorted(glob.glob(pattern)):
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.reader(fh):
                when = dt.datetime.fromisoformat(row[0].replace(" UTC", "+00:00"))
                if row[11] in logs.ERROR_LEVELS and when >= since:
                    counts[row[12]] = counts.get(row[12], 0) + 1
    return counts


def scan(pattern: str, since: dt.datetime | None = None, prefix: str = PREFIX,
         slow_ms: float = math.inf) -> logs.Scan:
    return logs.scan(logs.local_files(pattern), pattern, since, prefix, slow_ms)


def test_formats_agree_on_real_errors(quiet: Sandbox) -> None:
    since = dt.datetime.now(dt.UTC)
    raised = incidents.failing_statements(quiet.url("app"), times=3)
    raised["40P01"] = incidents.deadlock(quiet.url("app"))
    assert raised == {"23503": 3, "23505": 3, "22012": 3, "42P01": 3, "57014": 3, "40P01": 1}
    kinds = ["*.csv", "*.log"] + (["*.json"] if quiet.major >= 15 else [])

    def logged() -> bool:  # the logging collector writes asynchronously
        return all(scan(str(quiet.log_dir / k), since).errors_by_sqlstate == raised for k in kinds)

    retry(logged, timeout=10, interval=0.3)
    assert csv_module_counts(str(quiet.log_dir / "*.csv"), since) == raised
    for k in kinds:
        got = scan(str(quiet.log_dir / k), since)
        # (unmatched lines may exist: when log_destination changes back from stderr, the
        # server writes its notice in csv and json format into the stderr file)
        assert got.malformed == 0 and not logs.setup_problems(got), k
        (dl,) = [r for r in got.errors if r["sqlstate"] == "40P01"]
        cycle = deadlocks.parse(dl)
        assert len(cycle.edges) == 2 and cycle.relations == ["users"], (k, dl["detail"])
        assert dl["query"].startswith("UPDATE users") and dl["application"] == "cosnap-backend"
        fk = next(r for r in got.errors if r["sqlstate"] == "23503")
        assert fk["user"] == "app" and fk["database"] == "cosnap" and fk["detail"], k


STDERR = """\
2026-11-27 10:00:00.100 UTC [11] app@cosnap api 00000 LOG:  duration: 1.500 ms  statement: SELECT 1
2026-11-27 10:00:00.200 UTC [12] app@cosnap api 40P01 ERROR:  deadlock detected
2026-11-27 10:00:00.200 UTC [12] app@cosnap api 40P01 DETAIL:  Process 12 waits for \
ShareLock on transaction 5; blocked by process 13.
\tProcess 13 waits for ShareLock on transaction 4; blocked by process 12.
\tProcess 12: UPDATE a SET x = 1 WHERE id = 1
\tProcess 13: UPDATE a SET x = 1 WHERE id = 2
2026-11-27 10:00:00.200 UTC [12] app@cosnap api 40P01 HINT:  See server log for query details.
2026-11-27 10:00:00.200 UTC [12] app@cosnap api 40P01 CONTEXT:  while updating tuple (0,1) in relation "a"
2026-11-27 10:00:00.200 UTC [12] app@cosnap api 40P01 STATEMENT:  UPDATE a
\t  SET x = 1 WHERE id = 1
2026-11-27 10:00:00.300 UTC [7] LOG:  checkpoint starting: time
"""


@pytest.mark.parametrize("block", [0, 200, 900])
def test_stderr_records_survive_block_boundaries(tmp_path: Path, block: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if block:
        monkeypatch.setattr(logparse, "BLOCK", block)
    path = tmp_path / "postgresql.log"
    path.write_text(STDERR * 3)
    got = scan(str(path))
    assert got.records == 9 and got.counts.unmatched == 0
    assert got.errors_by_sqlstate == {"40P01": 3}
    for r in got.errors:
        assert deadlocks.parse(r).statements == {12: "UPDATE a SET x = 1 WHERE id = 1",
                                                 13: "UPDATE a SET x = 1 WHERE id = 2"}
        assert r["query"] == "UPDATE a\n  SET x = 1 WHERE id = 1" and r["hint"].startswith("See server log")
        assert r["context"].startswith("while updating tuple")
    assert got.durations.count == 3 and got.durations.statements == {"SELECT ?": [3, 4.5, 1.5]}


def test_wrong_or_thin_prefix_says_what_to_add(tmp_path: Path) -> None:
    path = tmp_path / "postgresql.log"
    path.write_text(STDERR)
    wrong = "%t [%p]: [%l-1] user=%u,db=%d "
    got = scan(str(path), prefix=wrong)
    assert got.records == 0 and got.counts.unmatched == 7
    (problem, missing) = logs.setup_problems(got)
    assert "lacks %e (SQLSTATE), %a (application name)" in problem
    assert "do not match log_line_prefix" in missing and "another prefix" in missing
    assert logparse.prefix_missing(PREFIX) == []
    assert logs.setup_problems(scan(str(path))) == []


def test_malformed_and_truncated_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    good = ('2026-11-27 23:35:17.123 UTC,"app","cosnap",123,"127.0.0.1:5000",abc.1,1,"INSERT",'
            '2026-11-27 23:35:00 UTC,3/4,0,ERROR,23505,"duplicate key value violates unique '
            'constraint ""users_email_key""","Key (email)=(a@b.c) already exists.",,,,,'
            '"INSERT INTO users ...",,,"cosnap-backend","client backend",,0\n')
    multi = good.replace('"INSERT INTO users ..."', '"INSERT INTO users\nVALUES (1)"')
    (tmp_path / "postgresql.csv").write_text(
        good + "this is not a csvlog line\n" + multi + good + good[: len(good) // 2])
    got = scan(str(tmp_path / "*.csv"))
    assert got.errors_by_sqlstate == {"23505": 3}
    assert got.malformed == 2  # the garbage line and the truncated last record
    record = ('{"timestamp":"2026-11-27 23:35:17.123 UTC","user":"app","dbname":"cosnap",'
              '"pid":5,"error_severity":"ERROR","state_code":"22012","message":"division by zero"}')
    (tmp_path / "postgresql.json").write_text(
        record + "\n{not json\n" + record + "\n" + record[:40])
    got = scan(str(tmp_path / "*.json"))
    assert got.errors_by_sqlstate == {"22012": 2} and got.malformed == 2


def test_rotated_or_removed_mid_read_is_noted(tmp_path: Path) -> None:
    for name in ("a.log", "b.log", "c.log"):
        (tmp_path / name).write_text(STDERR)
    listed = logs.local_files(str(tmp_path / "*.log"))
    (tmp_path / "a.log").unlink()  # rotated away after the listing
    (tmp_path / "b.log").write_text(STDERR[:150])  # truncated on rotation
    got = logs.scan(listed, "test", prefix=PREFIX)
    assert got.errors_by_sqlstate == {"40P01": 1}  # c.log's deadlock; b.log lost its own
    assert len(got.notes) == 2
    assert "a.log: could not be read" in got.notes[0] and "b.log: shrank" in got.notes[1]


def test_missing_log_file_is_a_clear_skip(tmp_path: Path) -> None:
    with pytest.raises(SkipStep, match="no log file matches"):
        logs.local_files(str(tmp_path / "*.csv"))


def test_window_skips_old_files_and_old_records(tmp_path: Path) -> None:
    old, new = tmp_path / "old.log", tmp_path / "new.log"
    old.write_text(STDERR)
    new.write_text(STDERR.replace("2026-11-27 10:00:00.2", "2026-11-27 11:00:00.2"))
    os.utime(old, (0, 0))
    got = scan(str(tmp_path / "*.log"), dt.datetime(2026, 11, 27, 10, 30, tzinfo=dt.UTC))
    assert got.files == [str(new)] and got.errors_by_sqlstate == {"40P01": 1}
    assert got.in_window == 1 and got.newest == dt.datetime(2026, 11, 27, 11, 0, 0, 200000,
                                                            tzinfo=dt.UTC)


def test_duration_quantiles_within_a_tenth_of_a_percent(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    values = np.round(rng.lognormal(1.0, 1.5, 20_000), 3)
    lines = [f"2026-11-27 10:00:00.100 UTC [1] app@cosnap api 00000 LOG:  duration: {v:.3f} ms"
             f"  execute <unnamed>: SELECT {i % 7}\n" for i, v in enumerate(values)]
    lines.append("2026-11-27 10:00:00.100 UTC [1] app@cosnap api 00000 LOG:  duration: 9 ms"
                 "  parse <unnamed>: SELECT 1\n")  # parse/bind are not statements run
    path = tmp_path / "d.log"
    path.write_text("".join(lines))
    got = scan(str(path), slow_ms=10.0)
    d = got.durations
    assert d.count == len(values) and d.over == int((values > 10.0).sum())
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        assert exact <= d.quantile(q) <= exact * 1.001 + 1e-3, q
    assert list(d.statements) == ["SELECT ?"] and d.statements["SELECT ?"][0] == len(values)
    assert d.slowest[0]["duration_ms"] == values.max() and len(d.slowest) == 10
    assert math.isnan(logs.Durations().quantile(0.95))


def test_duration_without_statement_and_extended_protocol(tmp_path: Path) -> None:
    lines = ["LOG:  duration: 5.000 ms",  # log_duration: the statement was logged before
             "LOG:  duration: 0.100 ms  parse S_1: SELECT $1",
             "LOG:  duration: 0.200 ms  bind S_1: SELECT $1",
             "LOG:  duration: 7.000 ms  execute S_1: SELECT $1",
             "DETAIL:  parameters: $1 = '42'"]
    path = tmp_path / "p.log"
    path.write_text("".join(f"2026-11-27 10:00:00.100 UTC [1] a@b c 00000 {ln}\n" for ln in lines))
    d = scan(str(path), slow_ms=6.0).durations
    assert d.count == 2 and d.over == 1
    assert d.statements == {"": [1, 5.0, 5.0], "SELECT ?": [1, 7.0, 7.0]}


def test_default_prefix_without_sqlstate_reads_codes_from_messages(tmp_path: Path) -> None:
    """PostgreSQL's default log_line_prefix '%m [%p] ' has no %e: codes come from the messages,
    and the setup problem says what to add."""
    plain = "".join(ln.replace("app@cosnap api 40P01 ", "").replace("app@cosnap api 00000 ", "")
                    + "\n" for ln in STDERR.splitlines())
    path = tmp_path / "postgresql.log"
    path.write_text(plain + "2026-11-27 10:00:01.000 UTC [14] ERROR:  duplicate key value "
                    'violates unique constraint "users_email_key"\n')
    got = scan(str(path), prefix="%m [%p] ")
    assert got.errors_by_sqlstate == {"40P01": 1, "23505": 1} and got.inferred == 2
    (dl,) = [r for r in got.errors if r["sqlstate"] == "40P01"]
    assert len(deadlocks.parse(dl).edges) == 2
    (problem,) = logs.setup_problems(got)
    assert "lacks %e (SQLSTATE)" in problem and "2 SQLSTATEs were read from the messages" in problem


def test_a_directory_of_mixed_formats_reads_one_of_them(tmp_path: Path) -> None:
    (tmp_path / "postgresql.log").write_text(STDERR)
    (tmp_path / "postgresql.csv").write_text("")
    assert [f.fmt for f in logs.local_files(str(tmp_path))] == ["csv"]
    (tmp_path / "postgresql.csv").unlink()
    assert scan(str(tmp_path)).errors_by_sqlstate == {"40P01": 1}


def test_a_bounded_read_says_how_far_back_it_reaches(tmp_path: Path) -> None:
    path = tmp_path / "postgresql.log"
    path.write_text(STDERR.replace("10:00:00.", "09:00:00.") + STDERR)
    early = dt.datetime(2026, 11, 27, 8, tzinfo=dt.UTC)
    got = logs.scan(logs.local_files(str(path)), "test", early, PREFIX, max_bytes=600)
    assert got.cut_short and got.oldest is not None and got.oldest.hour == 10
    (coverage,) = [f for f in logs.setup_findings(got) if f.check == "log_coverage"]
    assert coverage.severity == "info" and "reaches back only to 2026-11-27 10:00:00" in coverage.title
    whole = logs.scan(logs.local_files(str(path)), "test", early, PREFIX)
    assert not whole.cut_short and not logs.setup_findings(whole)


# every value an escape can take, as the server writes it (documentation of log_line_prefix)
VALUES = {
    "%r": ["[local]", "127.0.0.1(5432)", "::1(51234)", "2001:db8::7(6543)", "db.example.com(5432)",
           ""],
    "%h": ["[local]", "::1", "fe80::1%eth0", "10.0.0.5", ""],
    "%L": ["[local]", "[none]", "::1", "192.168.1.2"],
    "%a": ["", "[unknown]", "psql", "my app: v2 (prod)"],
    "%u": ["", "[unknown]", "app", "Weird User"],
    "%b": ["client backend", "autovacuum worker", "postmaster", "parallel worker"],
    "%i": ["", "idle", "idle in transaction", "SELECT", "CREATE TABLE", "authentication"],
    "%P": ["", "4242"],
    "%v": ["", "3/17", "-1/0"],
    "%x": ["0", "4294967295"],
    "%Q": ["0", "-4812266451860814998", "7795398772459631263"],
    "%c": ["6b0b15ac.320f"],
    "%l": ["1", "123456"],
    "%n": ["1795888556.431"],
    "%s": ["2026-11-27 09:00:00 UTC", "2026-11-27 04:00:00 EST", "2026-11-27 12:00:00 +03",
           "2026-11-27 12:30:00 +0530", "2026-11-27 10:00:00 CET"],
    "%t": ["2026-11-27 10:00:00 UTC", "2026-11-27 05:00:00 EST", "2026-11-27 13:30:00 +0330",
           "2026-11-27 10:00:00 GMT", "2026-11-27 07:00:00 -03"],
    "%e": ["00000", "40P01", "XX000"],
}


@pytest.mark.parametrize("escape", sorted(VALUES))
@pytest.mark.parametrize("pad", ["", "-20", "20"])
def test_every_value_of_every_escape_matches(tmp_path: Path, escape: str, pad: str) -> None:
    prefix = f"%m [%p] {escape[0]}{pad}{escape[1]}|%q%u@%d "
    lines = []
    for v in VALUES[escape]:
        text = f"{v:<20}" if pad == "-20" else f"{v:>20}" if pad else v
        lines.append(f"2026-11-27 10:00:00.100 UTC [11] {text}|app@db ERROR:  boom {v}\n")
        lines.append(f"2026-11-27 10:00:00.100 UTC [11] {text}|LOG:  checkpoint {v}\n")
    path = tmp_path / "p.log"
    path.write_text("".join(lines))
    got = scan(str(path), prefix=prefix)
    assert got.counts.unmatched == 0 and got.records == len(lines), escape
    assert [r["message"] for r in got.errors] == [f"boom {v}" for v in VALUES[escape]]


def test_times_in_a_named_zone_are_placed_through_log_timezone(tmp_path: Path) -> None:
    """EST, EDT, CET are abbreviations: only the server's log_timezone says what they stand
    for. The hour that repeats when clocks go back is told apart by them."""
    lines = ("2026-11-01 01:30:00.000 EDT [1] a@b c 40P01 ERROR:  first\n"
             "2026-11-01 01:30:00.000 EST [1] a@b c 40P01 ERROR:  second\n")
    path = tmp_path / "ny.log"
    path.write_text(lines)
    window = dt.datetime(2026, 11, 1, 6, tzinfo=dt.UTC)  # 01:00 EST, after 01:30 EDT
    files = logs.local_files(str(path))
    got = logs.scan(files, "t", window, PREFIX, log_timezone="America/New_York")
    assert [(r["message"], r["time"].hour) for r in got.errors] == [("second", 6)]
    both = logs.scan(files, "t", None, PREFIX, log_timezone="America/New_York")
    assert [r["time"].hour for r in both.errors] == [5, 6]
    blind = logs.scan(files, "t", window, PREFIX)  # no zone known: not guessed, but said
    assert any("zone EDT, EST were read as UTC" in p for p in logs.setup_problems(blind))
    wrong = logs.scan(files, "t", window, PREFIX, log_timezone="Europe/Nowhere")
    assert any("Europe/Nowhere" in p for p in logs.setup_problems(wrong))


def test_whole_second_times_keep_the_window_s_first_second(tmp_path: Path) -> None:
    """%t has no milliseconds: a record of the second the window starts (or ends) in counts."""
    path = tmp_path / "t.log"
    path.write_text("2026-11-27 10:00:00 UTC [1] ERROR:  division by zero\n"
                    "2026-11-27 10:00:05 UTC [1] ERROR:  division by zero\n")
    got = logs.scan(logs.local_files(str(path)), "t", dt.datetime(2026, 11, 27, 10, 0, 0, 400000,
                                                                  tzinfo=dt.UTC), "%t [%p] ",
                    until=dt.datetime(2026, 11, 27, 10, 0, 4, 900000, tzinfo=dt.UTC))
    assert got.errors_by_sqlstate == {"22012": 1} and got.in_window == 1


def test_epoch_times_of_percent_n(tmp_path: Path) -> None:
    path = tmp_path / "n.log"
    path.write_text("1795888556.431 [1] ERROR:  division by zero\n")
    got = logs.scan(logs.local_files(str(path)), "t", dt.datetime(2026, 11, 28, tzinfo=dt.UTC),
                    "%n [%p] ")
    assert got.errors_by_sqlstate == {"22012": 1}
    assert got.errors[0]["time"] == dt.datetime.fromtimestamp(1795888556.431, dt.UTC)
