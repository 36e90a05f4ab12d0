"""Step 5 of the restore drill: a restored copy checked exactly against its source.

`take` reads inside the caller's REPEATABLE READ transaction: export its snapshot to pg_dump
(``--snapshot``) or import pg_dump's (``SET TRANSACTION SNAPSHOT``), and the fingerprint sees
exactly the dumped rows while the source keeps taking writes. `compare` lists what differs, table
by table; `amcheck` runs pg_amcheck on the restored copy.

How content is hashed, and why (measured by benchmarks/fingerprint.py):

- A table with a primary key is read in key order, in chunks of ``chunk_rows`` (keyset
  pagination: ``WHERE (key) > (last) ORDER BY key LIMIT n``, the chunk's max giving the next
  ``last``; keys without max(), such as uuid or two columns, are found by an index probe). A
  chunk is its row count and the sum of its rows' 64-bit hashes, chained with SHA-256 in key
  order. A row's hash covers its key, so a changed or moved row changes its chunk, and the chunk
  list says where the first difference is. A sum, not a xor: duplicates cancel in a xor.
- "native" (PostgreSQL 14+): a row hashes with hash_record_extended over its columns, 2.5x
  faster than hashing its text; columns whose binary hash is not exact or not stable across a
  restore (enums hash their OID, numeric hashes 1.5 like 1.50, nondeterministic collations) go
  in as their text. Floats and jsonb hash by value (-0 like 0, as PostgreSQL's = has them).
  "text" hashes the row's text: the only method on 13, and both sides' when one side is 13.
- A table without a primary key has no order to keep: its rows are hashed as a multiset in one
  pass. Sorting by every column would spill the whole table to disk on each side.

The hashes are 64-bit and not cryptographic: they find accidental damage, not a forger.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.pq import TransactionStatus

from .. import queries
from ..errors import DrillError
from ..sqltext import ident, qualified
from ..target import mask_text
from . import tools

CHUNK_ROWS = 50_000
_BATCH = 100  # sequences read per statement
_MARK = sql.SQL(queries.MARKER)


@dataclass(frozen=True)
class TablePrint:
    schema: str
    name: str
    rows: int
    content: str  # SHA-256 hex over the chunks, in key order
    bytes: int  # pg_table_size, for MB/s
    ordered_by: str  # "primary key (id)" or "no primary key: rows as a multiset"
    seconds: float = 0.0
    chunks: tuple[tuple[str, str], ...] = ()  # (last key of the chunk, chunk digest)
    skipped: str = ""  # why the rows were not hashed (privilege, deadline): not comparable


@dataclass(frozen=True)
class SeqPrint:
    schema: str
    name: str
    last_value: int | None  # None: this role may not read the sequence
    is_called: bool
    increment: int
    owner: tuple[str, str, str] | None = None  # (schema, table, column) it is owned by
    column_max: int | None = None
    column_min: int | None = None

    @property
    def behind(self) -> bool:
        """Whether the next value is one the column already holds (the next insert fails)."""
        if self.last_value is None:
            return False
        nxt = self.last_value + (self.increment if self.is_called else 0)
        if self.increment > 0:
            return self.column_max is not None and nxt <= self.column_max
        return self.column_min is not None and nxt >= self.column_min

    @property
    def column(self) -> str:
        """The owning column as '"public"."users"."id"' ("" when not owned)."""
        return f"{qualified(*self.owner[:2])}.{ident(self.owner[2])}" if self.owner else ""

    @property
    def fix(self) -> str:
        """The statement that puts the sequence back past its column (runs as printed)."""
        if not self.owner:
            return ""
        return sql.SQL("SELECT setval({}, (SELECT {}({}) FROM {}));").format(
            sql.Literal(qualified(self.schema, self.name)),
            sql.SQL("max" if self.increment > 0 else "min"), sql.Identifier(self.owner[2]),
            sql.Identifier(*self.owner[:2])).as_string()


@dataclass(frozen=True)
class Fingerprint:
    objects: dict[str, int]  # count by kind: tables, indexes, constraints by type, ...
    tables: dict[str, TablePrint]  # key: '"public"."Post"'
    sequences: dict[str, SeqPrint]
    seconds: float
    object_names: dict[str, str] = field(default_factory=dict)  # md5 of the names, by kind
    method: str = "native"
    server_version: int = 0


@dataclass(frozen=True)
class Difference:
    """KIND: missing table, extra table, row count differs, content differs, not compared,
    object count differs, object names differ, missing sequence, extra sequence, sequence behind."""

    kind: str
    object: str
    source: Any
    restored: Any
    detail: str = ""


@dataclass(frozen=True)
class AmcheckResult:
    status: str  # "clean", "corrupt" or "skipped"
    why: str = ""  # when skipped: what stopped it and what to do
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # relation -> pg_amcheck's lines
    seconds: float = 0.0

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"


@dataclass(frozen=True)
class _Table:
    schema: str
    name: str
    bytes: int
    readable: bool
    key: list[str]
    max_key: bool  # a one-column key of a type with max(): chunks in one pass
    columns: list[str]
    native: list[bool]


class _Deadline(Exception):
    """The caller's deadline passed between two chunks."""


def take(conn: psycopg.Connection[Any], *, chunk_rows: int = CHUNK_ROWS,
         tables: Sequence[str] | None = None, deadline: float | None = None,
         method: str | None = None) -> Fingerprint:
    """The fingerprint of CONN's database as its current transaction sees it.

    Runs in the caller's REPEATABLE READ (or SERIALIZABLE) transaction, inside a savepoint it
    rolls back: nothing it sets outlives it and the transaction stays open. On an idle
    connection it opens and ends a REPEATABLE READ READ ONLY transaction of its own. TABLES
    limits the hashed tables (names as '"public"."Post"', public.Post or Post). DEADLINE is a
    time.monotonic() instant: tables not hashed by then are marked skipped, not left out.
    METHOD: "native" (14+, the default there) or "text"; use the source's on the restored side.
    """
    started = time.monotonic()
    version = conn.info.server_version
    method = method or ("native" if version >= 140000 else "text")
    if method not in ("native", "text") or (method == "native" and version < 140000):
        raise DrillError(f"fingerprint method {method!r} is not available on PostgreSQL "
                         f"{version // 10000}: use method='text' on both sides")
    status = conn.info.transaction_status
    if status not in (TransactionStatus.IDLE, TransactionStatus.INTRANS):
        raise DrillError("take() needs an idle connection or one inside a healthy transaction")
    chunk_rows = max(1, chunk_rows)
    with conn.transaction(force_rollback=True):
        if status == TransactionStatus.IDLE:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:
            level = _fetch(conn, sql.SQL("SELECT current_setting('transaction_isolation')"))[0]
            if level not in ("repeatable read", "serializable"):
                raise DrillError(f"take() needs a REPEATABLE READ transaction, not {level}: "
                                 "each chunk would see other rows")
        conn.execute(queries.get("fingerprint_settings", version).encode())
        objects = conn.execute(queries.get("fingerprint_objects", version).encode()).fetchall()
        found = [_Table(*row) for row in
                 conn.execute(queries.get("fingerprint_tables", version).encode())]
        wanted = set(tables or ())
        prints = {qualified(t.schema, t.name): _table(conn, t, chunk_rows, method, deadline)
                  for t in found
                  if not wanted or wanted & {qualified(t.schema, t.name), f"{t.schema}.{t.name}", t.name}}
        sequences = _sequences(conn, version)
    return Fingerprint({k: int(n) for k, n, _ in objects}, prints, sequences,
                       time.monotonic() - started, {k: str(d) for k, _, d in objects}, method, version)


def _table(conn: psycopg.Connection[Any], t: _Table, chunk_rows: int, method: str,
           deadline: float | None) -> TablePrint:
    """One table's print, in a savepoint of its own: a table this role may not read, or one
    the deadline cuts short, is marked skipped and the others go on."""
    ordered_by = (f"primary key ({', '.join(ident(k) for k in t.key)})" if t.key
                  else "no primary key: rows as a multiset")
    started = time.monotonic()
    why = "" if t.readable else "no SELECT privilege on the table"
    result: tuple[int, str, tuple[tuple[str, str], ...]] = (0, "", ())
    try:  # rolled back: the statement_timeout set for the deadline ends with the table
        with conn.transaction(force_rollback=True):
            if deadline is not None and not why:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    raise _Deadline
                conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(left_ms),))
            if not why:
                result = _hash(conn, t, chunk_rows, method, deadline)
    except (_Deadline, errors.QueryCanceled) as exc:
        late = deadline is not None and time.monotonic() >= deadline
        why = "the deadline passed" if late or isinstance(exc, _Deadline) else str(exc)
    except errors.InsufficientPrivilege as exc:  # row-level security, as pg_dump would fail
        why = mask_text(str(exc).strip())
    return TablePrint(t.schema, t.name, result[0], result[1], int(t.bytes), ordered_by,
                      time.monotonic() - started, result[2], why)


def _row_hash(t: _Table, method: str) -> sql.Composable:
    if method == "text":
        return sql.SQL("hashtextextended(ROW(t.*)::text, 0)")
    cols = [sql.SQL("t.{}" if native else 't.{}::text COLLATE "C"').format(sql.Identifier(c))
            for c, native in zip(t.columns, t.native, strict=True)]
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(cols))


def _hash(conn: psycopg.Connection[Any], t: _Table, chunk_rows: int, method: str,
          deadline: float | None) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    """(rows, content digest, chunks) of one table, memory bounded on both sides."""
    table = sql.Identifier(t.schema, t.name)
    aggregate = sql.SQL("SELECT {} count(*), coalesce(sum({}), 0)::text FROM {} AS t").format(
        _MARK, _row_hash(t, method), table)
    digest = hashlib.sha256()
    if not t.key:
        count, total = _fetch(conn, aggregate)
        digest.update(f"{count} {total}".encode())
        return int(count), digest.hexdigest(), ()
    key = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(k)) for k in t.key)
    rows, chunks, last = 0, list[tuple[str, str]](), None
    while True:  # key values go back as untyped literals: no %-placeholders next to identifiers
        if deadline is not None and time.monotonic() >= deadline:
            raise _Deadline
        since: list[sql.Composable] = [_compare(key, ">", last)] if last else []
        if t.max_key:  # one pass: the chunk's last key is its max
            count, total, top = _fetch(conn, sql.SQL(
                "SELECT {} count(*), coalesce(sum(c.h), 0)::text, max(c.k)::text FROM "
                "(SELECT {} AS k, {} AS h FROM {} AS t {} ORDER BY {} LIMIT {}) AS c").format(
                _MARK, key, _row_hash(t, method), table, _where(since), key,
                sql.Literal(chunk_rows)))
            bound, shown = ((top,) if count == chunk_rows else None), top
        else:  # an index probe finds the chunk's last key, then that key range is aggregated
            bound = conn.execute(sql.SQL("SELECT {} {} FROM {} AS t {} ORDER BY {} OFFSET {} "
                                         "LIMIT 1").format(
                _MARK, sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(k))
                                          for k in t.key),
                table, _where(since), key, sql.Literal(chunk_rows - 1)), prepare=False).fetchone()
            upto = [_compare(key, "<=", bound)] if bound else []
            count, total = _fetch(conn, aggregate + sql.SQL(" ") + _where(since + upto))
            shown = (bound[0] if len(bound) == 1 else f"({', '.join(bound)})") if bound else "end"
        if count:
            line = f"{count} {total}\n"
            digest.update(line.encode())
            chunks.append((shown, hashlib.sha256(line.encode()).hexdigest()[:16]))
            rows += int(count)
        if bound is None:
            return rows, digest.hexdigest(), tuple(chunks)
        last = tuple(bound)


def _fetch(conn: psycopg.Connection[Any], query: sql.Composable) -> tuple[Any, ...]:
    row = conn.execute(query.as_bytes(conn), prepare=False).fetchone()
    assert row is not None, "an aggregate returns a row"
    return tuple(row)


def _compare(key: sql.Composable, op: str, values: Sequence[str]) -> sql.Composable:
    return sql.SQL("({}) {} ({})").format(key, sql.SQL(op),
                                          sql.SQL(", ").join(sql.Literal(v) for v in values))


def _where(conds: list[sql.Composable]) -> sql.Composable:
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")


def _sequences(conn: psycopg.Connection[Any], version: int) -> dict[str, SeqPrint]:
    """Every sequence's state and the extremes of the column it feeds.

    Sequence values are not transactional: like pg_dump, this reads them as they are now."""
    seqs = conn.execute(queries.get("fingerprint_sequences", version).encode()).fetchall()
    values = _union(conn, [sql.SQL("SELECT {}::int4, last_value, is_called FROM {}").format(
        sql.Literal(i), sql.Identifier(s[0], s[1])) for i, s in enumerate(seqs) if s[3]])
    extremes = _union(conn, [sql.SQL("SELECT {}::int4, max(t.{c})::int8, min(t.{c})::int8 "
                                     "FROM {} AS t").format(sql.Literal(i),
                                                            sql.Identifier(s[4], s[5]),
                                                            c=sql.Identifier(s[6]))
                             for i, s in enumerate(seqs) if s[7]])
    out: dict[str, SeqPrint] = {}
    for i, (schema, name, increment, _, tschema, tname, column, _) in enumerate(seqs):
        last, called = values.get(i, (None, False))
        cmax, cmin = extremes.get(i, (None, None))
        owner = (tschema, tname, column) if column else None
        out[qualified(schema, name)] = SeqPrint(schema, name, last, bool(called), int(increment),
                                                owner, cmax, cmin)
    return out


def _union(conn: psycopg.Connection[Any], selects: list[sql.Composable]) -> dict[int, tuple[Any, ...]]:
    """Many one-row SELECTs, _BATCH to a statement: {first column: the other columns}."""
    out: dict[int, tuple[Any, ...]] = {}
    for i in range(0, len(selects), _BATCH):
        parts = [sql.SQL("({})").format(s) for s in selects[i:i + _BATCH]]
        query = sql.SQL("SELECT {} * FROM ({}) AS s").format(_MARK, sql.SQL(" UNION ALL ").join(parts))
        for row in conn.execute(query, prepare=False):
            out[int(row[0])] = tuple(row[1:])
    return out


def behind_sequences(fp: Fingerprint) -> list[str]:
    """Sequences whose next value their column already holds: a restore that fails on the
    next insert (pg_dump read the sequence before rows it does not cover were written)."""
    return [key for key, s in sorted(fp.sequences.items()) if s.behind]


def compare(source: Fingerprint, restored: Fingerprint) -> list[Difference]:
    """What differs between the source and the restored copy: tables first, table by table,
    then objects by kind, then sequences. Empty when they are the same."""
    out: list[Difference] = []
    same_method = source.method == restored.method
    for key in sorted(source.tables.keys() | restored.tables.keys()):
        s, r = source.tables.get(key), restored.tables.get(key)
        if r is None:
            assert s is not None
            out.append(Difference("missing table", key, s.rows, None, "not in the restored copy"))
        elif s is None:
            out.append(Difference("extra table", key, None, r.rows, "not in the source"))
        elif s.skipped or r.skipped:
            side = f"source: {s.skipped}" if s.skipped else f"restored copy: {r.skipped}"
            out.append(Difference("not compared", key, s.rows, r.rows, side))
        elif s.rows != r.rows:
            out.append(Difference("row count differs", key, s.rows, r.rows, _where_differs(s, r)))
        elif same_method and s.content != r.content:
            out.append(Difference("content differs", key, s.content[:16], r.content[:16],
                                  _where_differs(s, r)))
    if not same_method and source.tables:
        out.append(Difference("not compared", "content", source.method, restored.method,
                              f"hashed differently: take the restored fingerprint with "
                              f"method={source.method!r}"))
    for kind in sorted(source.objects.keys() | restored.objects.keys()):
        a, b = source.objects.get(kind, 0), restored.objects.get(kind, 0)
        if a != b:
            out.append(Difference("object count differs", kind, a, b))
        elif source.object_names.get(kind) != restored.object_names.get(kind):
            out.append(Difference("object names differ", kind, a, b, "same number, other names"))
    for key in sorted(source.sequences.keys() | restored.sequences.keys()):
        sp, rp = source.sequences.get(key), restored.sequences.get(key)
        if rp is None:
            out.append(Difference("missing sequence", key, sp and sp.last_value, None))
        elif sp is None:
            out.append(Difference("extra sequence", key, None, rp.last_value))
        elif rp.behind:
            bound = rp.column_max if rp.increment > 0 else rp.column_min
            out.append(Difference("sequence behind", key, sp.last_value, rp.last_value,
                                  f"{rp.column} already holds {bound}: the next insert fails "
                                  f"on a duplicate; fix: {rp.fix}"))
    return out


def _where_differs(s: TablePrint, r: TablePrint) -> str:
    """Where in key order the two tables first differ, from their chunk digests."""
    pairs = zip(s.chunks, r.chunks, strict=False)
    i = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(s.chunks), len(r.chunks)))
    if not s.chunks or i >= len(s.chunks):
        return f"ordered by {s.ordered_by}" + (f", after key {s.chunks[-1][0]}" if s.chunks else "")
    start = f"after key {s.chunks[i - 1][0]} " if i else ""
    return f"first difference {start}up to key {s.chunks[i][0]} (in {s.ordered_by} order)"


_RELATION = re.compile(r'^(?:heap table|btree index|toast table) "([^"]*)"')
_NOT_CORRUPTION = ("permission denied", "does not exist", "canceling statement", "lock timeout")
_NO_PRIVILEGE = ("no privilege to run amcheck: a superuser installs it (or lets pg_amcheck do so) "
                 "and may GRANT EXECUTE on its functions to the drill's role")


def amcheck(restored_conninfo: str, *, heapallindexed: bool = True, jobs: int = 2,
            bindir: str | Path | None = None, timeout: float = 3600) -> AmcheckResult:
    """pg_amcheck on the restored copy: heap and btree checks, lines grouped per relation.

    It installs amcheck when missing (--install-missing) and drops it again afterwards, so the
    copy keeps the source's extensions. What keeps it from running (no pg_amcheck, no amcheck
    on the server, no privilege) is a "skipped" result that says why, never an exception.
    """
    started = time.monotonic()
    had = True
    try:
        program = tools.find("pg_amcheck", bindir)
        with psycopg.connect(restored_conninfo, autocommit=True) as conn:
            had = _fetch(conn, sql.SQL("SELECT exists (SELECT FROM pg_extension "
                                       "WHERE extname = 'amcheck')"))[0]
        proc = tools.run([program, "--install-missing", f"--jobs={max(1, jobs)}",
                          *(["--heapallindexed"] if heapallindexed else []), "{conninfo}"],
                         restored_conninfo, timeout=timeout, ok=(0, 2))
    except (DrillError, psycopg.Error) as exc:
        text = mask_text(str(exc).strip())
        if "permission denied" in text:
            text = _NO_PRIVILEGE
        elif "is not available" in text or "control file" in text:
            text = ("the amcheck extension is not installed on the server: install PostgreSQL's "
                    "contrib modules (Debian: postgresql-contrib)")
        return AmcheckResult("skipped", text, {}, time.monotonic() - started)
    finally:
        if not had:  # remove what --install-missing added
            with contextlib.suppress(psycopg.Error), psycopg.connect(
                    restored_conninfo, autocommit=True) as conn:
                conn.execute("DROP EXTENSION IF EXISTS amcheck")
    found: dict[str, list[str]] = {}
    current = ""
    for line in proc.stdout.splitlines():
        if m := _RELATION.match(line):
            current = m.group(1)
            found.setdefault(current, [])
        elif line.strip() and current:
            found[current].append(line.strip())
    problems = [p.removeprefix("ERROR:").strip() for lines in found.values() for p in lines]
    if problems and all(any(n in p for n in _NOT_CORRUPTION) for p in problems):
        why = _NO_PRIVILEGE if "permission denied" in problems[0] else problems[0]
        return AmcheckResult("skipped", f"pg_amcheck could not check: {why}", {},
                             time.monotonic() - started)
    return AmcheckResult("corrupt" if found else "clean", "", found, time.monotonic() - started)


def to_dict(fp: Fingerprint) -> dict[str, Any]:
    """FP as JSON data, for the backup's manifest: a later drill of that set
    (take_backup=false) still compares the restored rows with the source as it was dumped."""
    import dataclasses

    return dataclasses.asdict(fp)


def from_dict(data: dict[str, Any] | None) -> Fingerprint | None:
    """A fingerprint from `to_dict`; None when absent or of another layout."""
    if not data:
        return None
    try:
        rest = dict(data)
        tables = {k: TablePrint(**{**t, "chunks": tuple(tuple(c) for c in t["chunks"])})
                  for k, t in rest.pop("tables").items()}
        seqs = {k: SeqPrint(**{**q, "owner": tuple(q["owner"]) if q["owner"] else None})
                for k, q in rest.pop("sequences").items()}
        return Fingerprint(tables=tables, sequences=seqs, **rest)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
