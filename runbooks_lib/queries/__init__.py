"""The SQL of pg-runbooks, one ``.sql`` file per query and per version range.

A query that changed across PostgreSQL versions has one file per range, named
``NAME_post_VVVVVV.sql`` for servers at or above that ``server_version_num``, and ``NAME.sql`` for
the oldest. `get` walks that ladder downwards. Each file opens with a comment that says what the
query is for and what changed between versions.

>>> get("extensions").name
'extensions'
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

from ..errors import SkipStep

MARKER = "/* pg-runbooks */"


class Query(str):
    """SQL text that remembers its file name, for messages such as "skipped: activity".

    Every query starts with MARKER, so that our own diagnostic statements can be told apart in
    pg_stat_statements and in the server log (and left out of the workload we measure)."""

    name: str

    def __new__(cls, text: str, name: str) -> Query:
        self = super().__new__(cls, text)
        self.name = name
        return self


@cache
def _variants(name: str) -> list[tuple[int, str]]:
    """(minimum server_version_num, file name) for every file of a query, newest first."""
    found: list[tuple[int, str]] = []
    for entry in resources.files(__package__).iterdir():
        m = re.fullmatch(rf"{re.escape(name)}(?:_post_(\d+))?\.sql", entry.name)
        if m:
            found.append((int(m.group(1) or 0), entry.name))
    return sorted(found, reverse=True)


@cache
def _read(filename: str) -> str:
    return resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")


def get(name: str, version_num: int = 0) -> Query:
    """The text of query NAME for a server at VERSION_NUM (0: the newest variant).

    Raises SkipStep when no variant exists for that version (a feature the server lacks).
    """
    variants = _variants(name)
    if not variants:
        raise KeyError(f"no query file named {name}")
    for minimum, filename in variants:
        if version_num == 0 or version_num >= minimum:
            return Query(tag(_read(filename)), name)
    oldest = variants[-1][0]
    raise SkipStep(f"{name}: needs PostgreSQL {oldest // 10000} or later")


def tag(text: str) -> str:
    r"""Put MARKER after the statement's first keyword: pg_stat_statements drops leading comments
    but keeps those inside a statement.

    >>> tag("-- why\nSELECT 1")
    '-- why\nSELECT /* pg-runbooks */ 1'
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("--"):
            keyword, _, rest = line.partition(" ")
            lines[i] = f"{keyword} {MARKER} {rest}".rstrip()
            break
    return "\n".join(lines)


def tagged(query: Any, conn: Any) -> bytes:
    """QUERY (text or a psycopg.sql composition) tagged like the query files, as bytes for
    CONN: the restore drill's and the session's own statements, so the latency runbook beside
    them leaves them out of the application's top statements and never plans them."""
    text = query if isinstance(query, str) else query.as_string(conn)
    return tag(text).encode()


def name_of(sql: str) -> str:
    return getattr(sql, "name", "query")
