"""The SQLSTATE table comes from the server's own errcodes.txt, and failures get the right
category."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbooks_lib import sqlstate
from runbooks_lib.sandbox.server import bindir


def test_committed_table_holds_the_server_list_verbatim() -> None:
    errcodes = bindir().parent / "share" / "errcodes.txt"
    generated = sqlstate.parse_errcodes(errcodes.read_text())
    assert len(generated) > 250
    table = sqlstate.table()
    assert [table.get(c.sqlstate) for c in generated] == generated, \
        f"regenerate: python -m runbooks_lib.sqlstate {errcodes} /usr/share/postgresql/*/errcodes.txt"
    # sorted, no duplicates, same format as the generator writes
    committed = (Path(sqlstate.__file__).parent / sqlstate.TSV).read_text()
    assert committed == sqlstate.to_tsv(sqlstate.merge(list(table.values())))


def test_older_servers_codes_are_all_known() -> None:
    older = Path("/usr/share/postgresql/15/errcodes.txt")
    if not older.exists():
        pytest.skip("no system PostgreSQL 15 errcodes.txt here")
    codes = {c.sqlstate for c in sqlstate.parse_errcodes(older.read_text())}
    assert codes <= set(sqlstate.table())
    assert sqlstate.lookup("72000").name == "snapshot_too_old"  # gone in 17, raised before


def test_lookup_names_and_classes() -> None:
    assert sqlstate.lookup("40P01").name == "deadlock_detected"
    assert sqlstate.lookup("23503").class_name == "Integrity Constraint Violation"
    unknown = sqlstate.lookup("23ZZZ")
    assert unknown.name == "unknown" and unknown.class_name == "Integrity Constraint Violation"


@pytest.mark.parametrize(("code", "cat"), [
    ("40001", "retryable-transient"), ("40P01", "retryable-transient"),
    ("55P03", "retryable-transient"), ("08006", "retryable-transient"),
    ("53300", "retryable-transient"), ("57P01", "retryable-transient"),
    ("57014", "timeout"), ("25P03", "timeout"),
    ("23503", "integrity"), ("23505", "integrity"), ("23502", "integrity"), ("23514", "integrity"),
    ("42P01", "application-bug"), ("22P02", "application-bug"), ("42501", "permission"),
    ("53100", "resources"), ("XX000", "other"),
])
def test_categories(code: str, cat: str) -> None:
    assert sqlstate.category(code) == cat
    assert sqlstate.REMEDIATION[cat]


def test_query_canceled_is_split_by_cause() -> None:
    assert sqlstate.detail_name("57014", "canceling statement due to statement timeout") == \
        "query_canceled (statement_timeout)"
    assert sqlstate.detail_name("57014", "canceling statement due to user request") == \
        "query_canceled (user cancel)"
    assert sqlstate.detail_name("57014", "canceling statement due to lock timeout") == \
        "query_canceled (lock_timeout)"
