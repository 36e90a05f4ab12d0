"""SQLSTATE codes: names and classes from the server's own list, and what an on-call engineer
does about each kind of failure.

``sqlstate_codes.tsv`` is generated from PostgreSQL's ``errcodes.txt`` files (shipped in each
server's share directory) by ``python -m runbooks_lib.sqlstate NEWEST/errcodes.txt OLDER/...``:
the union, newest first, since codes come and go (72000 snapshot_too_old is gone in 17, but a 16
server still raises it). A test checks the table against the installed servers' lists, so it is
never hand-typed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

TSV = "sqlstate_codes.tsv"


@dataclass(frozen=True)
class Code:
    sqlstate: str
    name: str  # condition name, e.g. deadlock_detected
    kind: str  # E (error), W (warning), S (success)
    class_code: str  # first two characters
    class_name: str  # e.g. Transaction Rollback


def parse_errcodes(text: str) -> list[Code]:
    """The codes of an errcodes.txt: 'Section: Class 40 - Transaction Rollback' headers, then
    lines 'SQLSTATE  E/W/S  ERRCODE_MACRO  condition_name'."""
    codes, class_name = [], ""
    for line in text.splitlines():
        m = re.match(r"Section: Class (\w\w) - (.+)", line)
        if m:
            class_name = m.group(2).strip()
            continue
        m = re.match(r"([0-9A-Z]{5})\s+([EWS])\s+ERRCODE_\w+(?:\s+(\w+))?", line)
        if m and m.group(3):  # lines without a condition name are macro aliases of a named code
            codes.append(Code(m.group(1), m.group(3), m.group(2), m.group(1)[:2], class_name))
    return codes


def merge(*lists: list[Code]) -> list[Code]:
    """The union of several versions' codes, the first (newest) list winning, sorted."""
    out: dict[str, Code] = {}
    for codes in lists:
        for c in codes:
            out.setdefault(c.sqlstate, c)
    return sorted(out.values(), key=lambda c: c.sqlstate)


def to_tsv(codes: list[Code]) -> str:
    rows = ["sqlstate\tname\tkind\tclass_code\tclass_name"]
    rows += [f"{c.sqlstate}\t{c.name}\t{c.kind}\t{c.class_code}\t{c.class_name}" for c in codes]
    return "\n".join(rows) + "\n"


@cache
def table() -> dict[str, Code]:
    text = resources.files(__package__).joinpath(TSV).read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines()[1:]:
        code, name, kind, cls, cls_name = line.split("\t")
        out[code] = Code(code, name, kind, cls, cls_name)
    return out


def lookup(sqlstate: str) -> Code:
    """The code's entry; an unknown code is named after its class (or 'unknown')."""
    sqlstate = (sqlstate or "").strip().upper()
    known = table().get(sqlstate)
    if known:
        return known
    parent = table().get(sqlstate[:2] + "000")
    return Code(sqlstate, "unknown", "E", sqlstate[:2],
                parent.class_name if parent else "unknown class")


# -- categories: what to do ---------------------------------------------------------------------

RETRYABLE = "retryable-transient"
TIMEOUT = "timeout"
INTEGRITY = "integrity"
APP_BUG = "application-bug"
RESOURCES = "resources"
PERMISSION = "permission"
OTHER = "other"

REMEDIATION = {
    RETRYABLE: "retry the whole transaction with exponential backoff and jitter (for example "
               "3 retries); for deadlocks (40P01) also take locks in one consistent order",
    TIMEOUT: "find what made it slow (the latency runbook: plans, lock waits); raise the timeout "
             "only for statements that are legitimately long, and lower "
             "idle_in_transaction_session_timeout offenders' transaction scope",
    INTEGRITY: "fix the data flow: insert parents before children or cascade the delete "
               "(23503), upsert instead of insert (23505), validate input (23502, 23514)",
    APP_BUG: "a bug in the statement or its parameters: find the statement and the deploy that "
             "introduced it; retrying will not help",
    RESOURCES: "the server ran out of something (connections, memory, disk): see the "
               "connectivity runbook for 53300 and the server's resources for the rest",
    PERMISSION: "grant the missing privilege to the application's role, or fix the role it "
                "connects as",
    OTHER: "read the messages and the statements below",
}


def category(sqlstate: str, message: str = "") -> str:
    """The issue's categories: retryable-transient, timeout, integrity, application-bug, ..."""
    code = (sqlstate or "").upper()
    if code in ("40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03", "08000", "08003",
                "08006", "08001", "08004", "40003") or code.startswith("08"):
        return RETRYABLE
    if code in ("57014", "25P03", "25P04"):
        return TIMEOUT
    if code.startswith("23"):
        return INTEGRITY
    if code == "42501":
        return PERMISSION
    if code.startswith(("42", "22", "2B", "2F", "P0", "0A", "21", "25", "26", "34", "3D", "3F")):
        return APP_BUG
    if code.startswith("53"):
        return RESOURCES
    return OTHER


# Without %e in a stderr log_line_prefix, the code is read from the (English) message: the
# errors on-call engineers meet most, each message as PostgreSQL words it (elog.c callers).
BY_MESSAGE = (
    (r"^deadlock detected", "40P01"),
    (r"^could not serialize access", "40001"),
    (r"^canceling statement due to conflict with recovery", "40001"),
    (r"^canceling statement due to lock timeout", "55P03"),
    (r"^could not obtain lock", "55P03"),
    (r"^canceling statement due to (statement timeout|user request)", "57014"),
    (r"^terminating connection due to idle-in-transaction timeout", "25P03"),
    (r"^terminating connection due to administrator command", "57P01"),
    (r"^duplicate key value violates unique constraint", "23505"),
    (r"violates foreign key constraint", "23503"),
    (r"^null value in column .* violates not-null constraint", "23502"),
    (r"violates check constraint", "23514"),
    (r"^conflicting key value violates exclusion constraint", "23P01"),
    (r"^sorry, too many clients already", "53300"),
    (r"^remaining connection slots are reserved", "53300"),
    (r"^out of shared memory", "53200"),
    (r"^could not extend file|^could not write to file .*No space left", "53100"),
    (r"^current transaction is aborted", "25P02"),
    (r"^relation .* does not exist", "42P01"),
    (r"^column .* does not exist", "42703"),
    (r"^function .* does not exist", "42883"),
    (r"^syntax error at or near", "42601"),
    (r"^permission denied", "42501"),
    (r"^password authentication failed", "28P01"),
    (r'^role ".*" does not exist', "28000"),
    (r'^database ".*" does not exist', "3D000"),
    (r"^division by zero", "22012"),
    (r"^value too long for type", "22001"),
    (r"^invalid input syntax", "22P02"),
    (r"out of range", "22003"),
)


def from_message(message: str) -> str:
    """The SQLSTATE an English error message stands for, or '' when it is not one we know.

    >>> from_message('deadlock detected'), from_message('something else')
    ('40P01', '')
    """
    return next((code for pattern, code in _by_message() if pattern.search(message or "")), "")


@cache
def _by_message() -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(p), c) for p, c in BY_MESSAGE]


def detail_name(sqlstate: str, message: str = "") -> str:
    """The code's name, with 57014 split by its cause (statement timeout or user cancel)."""
    name = lookup(sqlstate).name
    if sqlstate == "57014":
        text = message.lower()
        if "statement timeout" in text:
            return "query_canceled (statement_timeout)"
        if "lock timeout" in text:
            return "query_canceled (lock_timeout)"
        if "user request" in text:
            return "query_canceled (user cancel)"
    return name


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m runbooks_lib.sqlstate NEWEST/errcodes.txt [OLDER/errcodes.txt ...]",
              file=sys.stderr)
        return 2
    codes = merge(*(parse_errcodes(Path(a).read_text(encoding="utf-8")) for a in argv))
    target = Path(__file__).with_name(TSV)
    target.write_text(to_tsv(codes), encoding="utf-8")
    print(f"{len(codes)} codes written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
