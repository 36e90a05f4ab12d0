"""SQL text for people: statements normalized for grouping, shortened for titles, and
identifiers quoted so that every statement printed for an engineer to paste runs as printed
(Prisma's names are mixed case: "Post"."authorId").

>>> normalize_sql("UPDATE users SET n = 'x' WHERE id = 42")
'UPDATE users SET n = ? WHERE id = ?'
>>> qualified("public", "Post")
'"public"."Post"'
>>> ident('we"ird name')
'"we""ird name"'
"""

from __future__ import annotations

import re

# literals and parameters (RE2-compatible: logs.normalized applies it vectorized)
LITERALS = r"'(?:[^']|'')*'|\$\d+|\b\d+(?:\.\d+)?\b"


def normalize_sql(text: str) -> str:
    """Literals and parameters become '?', so the same statement with other values matches."""
    return " ".join(re.sub(LITERALS, "?", text or "").split())


def short(text: str, n: int = 90) -> str:
    """One line of at most N characters, for a finding's title."""
    one = " ".join(str(text).split())
    return one if len(one) <= n else one[: n - 1] + "…"


def ident(name: str) -> str:
    """An identifier quoted the way quote_ident does when it must: always, so that mixed case,
    spaces, keywords and quotes in a name survive a paste."""
    return '"' + str(name).replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}" if schema else ident(name)


def columns(names: list[str]) -> str:
    return ", ".join(ident(c) for c in names)
