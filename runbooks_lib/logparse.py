"""Server log bytes into Arrow record batches, whatever the format: csvlog, jsonlog (15+), or
stderr written with the server's ``log_line_prefix``.

Vectorized and streamed: pyarrow's CSV and JSON readers, and for stderr RE2 regexes applied to
whole blocks of lines at once, so memory stays flat in the log's size and Python only touches the
rare multi-line records (a deadlock's DETAIL, a statement on several lines). Every format comes
out with the same string COLUMNS; what cannot be read is counted in a `Counts`, never fatal.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("log_time", "user", "database", "pid", "application", "severity", "sqlstate",
           "message", "detail", "hint", "context", "query")

# csvlog columns by position (13: 24 columns; 14 added leader_pid and query_id)
CSV_COLUMNS = ["log_time", "user", "database", "pid", "connection_from", "session_id",
               "session_line_num", "command_tag", "session_start", "vxid", "txid", "severity",
               "sqlstate", "message", "detail", "hint", "internal_query", "internal_query_pos",
               "context", "query", "query_pos", "location", "application", "backend_type",
               "leader_pid", "query_id"]
# jsonlog keys -> our columns (keys with empty values are left out of a jsonlog record)
JSON_KEYS = {"timestamp": "log_time", "user": "user", "dbname": "database", "pid": "pid",
             "application_name": "application", "error_severity": "severity",
             "state_code": "sqlstate", "message": "message", "detail": "detail", "hint": "hint",
             "context": "context", "statement": "query"}
RECORD_START = re.compile(rb"(?m)^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
BLOCK = 2 * 2**20

# -- log_line_prefix ---------------------------------------------------------------------------

SEVERITIES = ("DEBUG1|DEBUG2|DEBUG3|DEBUG4|DEBUG5|INFO|NOTICE|WARNING|ERROR|LOG|FATAL|PANIC|"
              "DETAIL|HINT|QUERY|CONTEXT|LOCATION|STATEMENT")
SEPARATOR = ":  "  # after the severity of every stderr line the server writes
# ... which some log shippers collapse to ': ': both are read
SEPARATOR_RE = ": {1,2}"
SECONDARY = ("DETAIL", "HINT", "QUERY", "CONTEXT", "LOCATION", "STATEMENT")
_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
# pg_strftime's %Z: an abbreviation (UTC, EST, CEST), or a numeric one (+03, -0330, +0545)
_ZONE = r"(?: [A-Za-z0-9+\-:]*)?"
_ANY = r".*?"  # names and text: any characters, spaces included, or none
# escape -> (column it fills or None, RE2 pattern for every value the server can write there).
# Session-less processes (checkpointer, autovacuum) write nothing for %u %d %r %h %i %v, and
# '[unknown]' or '[none]' or '[local]' where the docs say so; %Q and %v can be negative.
ESCAPES: dict[str, tuple[str | None, str]] = {
    "a": ("application", _ANY), "u": ("user", _ANY), "d": ("database", _ANY),
    "r": (None, _ANY), "h": (None, _ANY), "L": (None, _ANY), "b": (None, _ANY),
    "i": (None, _ANY),
    "p": ("pid", r"\d+"), "P": (None, r"\d*"), "c": (None, r"[0-9a-f]+\.[0-9a-f]+"),
    "l": (None, r"\d+"), "s": (None, _TIME + _ZONE), "v": (None, r"(?:-?\d+/\d+)?"),
    "x": (None, r"\d+"), "e": ("sqlstate", r"[0-9A-Z]{5}"), "Q": (None, r"-?\d+"),
    "t": ("log_time", _TIME + _ZONE), "m": ("log_time", _TIME + r"\.\d+" + _ZONE),
    "n": ("log_time", r"\d+\.\d+"),
}
NEEDED = (("log_time", "%m (time with milliseconds; %t also works)"), ("pid", "%p (process ID)"),
          ("sqlstate", "%e (SQLSTATE)"), ("user", "%u (user)"), ("database", "%d (database)"),
          ("application", "%a (application name)"))
RECOMMENDED_PREFIX = "%m [%p] %q%u@%d %a %e "


def prefix_columns(prefix: str) -> set[str]:
    """The columns a log_line_prefix fills.

    >>> sorted(prefix_columns("%t [%p]: "))
    ['log_time', 'pid']
    """
    cols = (ESCAPES[c][0] for c in re.findall(r"%(?:-?\d+)?(.)", prefix.replace("%%", ""))
            if c in ESCAPES)
    return {c for c in cols if c}


def prefix_missing(prefix: str) -> list[str]:
    """What the prefix lacks of what the runbooks need, as the escapes to add.

    >>> prefix_missing("%m [%p] ")
    ['%e (SQLSTATE)', '%u (user)', '%d (database)', '%a (application name)']
    """
    have = prefix_columns(prefix)
    return [what for col, what in NEEDED if col not in have]


def prefix_regex(prefix: str) -> str:
    """An RE2 pattern for one stderr line written with PREFIX: named groups for the columns,
    then the severity, ': ' or ':  ' and the message."""
    return prefix_head(prefix) + SEPARATOR_RE + r"(?P<message>[^\n]*)\n?$"


def prefix_head(prefix: str) -> str:
    """The pattern of a line's start up to its severity. %q ends the prefix for non-session
    processes, so what follows it is optional. Padding (%-10u, %10p) is allowed around every
    field."""
    out, named, optional = ["^"], set(), False
    i = 0
    while i < len(prefix):
        ch = prefix[i]
        if ch != "%":
            out.append(re.escape(ch))
            i += 1
            continue
        m = re.match(r"%(-?\d+)?(.)", prefix[i:])
        if not m:
            out.append("%")
            break
        i += m.end()
        pad, esc = m.group(1), m.group(2)
        if esc == "%":
            out.append("%")
        elif esc == "q":
            out.append("(?:")
            optional = True
        elif esc in ESCAPES:
            col, pattern = ESCAPES[esc]
            body = f"(?P<{col}>{pattern})" if col and col not in named else f"(?:{pattern})"
            if col:
                named.add(col)
            out.append(f" *{body} *" if pad else body)
        else:
            out.append(".*?")  # an escape we do not know: anything
    if optional:
        out.append(")?")
    out.append(f"(?P<severity>{SEVERITIES})")
    return "".join(out)


# -- reading -----------------------------------------------------------------------------------

@dataclass
class Counts:
    """What a read could not use: malformed records and stderr lines the prefix does not match."""

    records: int = 0
    malformed: int = 0
    unmatched: int = 0

    def add(self, other: Counts) -> None:
        self.records += other.records
        self.malformed += other.malformed
        self.unmatched += other.unmatched


def kind(name: str) -> str:
    """'csv', 'json' or 'stderr', from a log file's name."""
    return "csv" if name.endswith(".csv") else "json" if name.endswith(".json") else "stderr"


def skip_partial(fh: IO[bytes], fmt: str) -> None:
    """After a seek into the middle of a file: move to the start of the next whole record."""
    pos = fh.tell()
    head = fh.read(2**20)
    if fmt == "csv":
        m = RECORD_START.search(head, 1)
        cut = m.start() if m else len(head)
    else:
        cut = head.find(b"\n") + 1 if b"\n" in head else len(head)
    fh.seek(pos + cut)


Task = Callable[[], tuple["pa.RecordBatch | None", Counts]]


def tasks(fh: IO[bytes], fmt: str, counts: Counts, prefix: str = "") -> Iterator[Task]:
    """The file as independent pieces of work, each giving a record batch with COLUMNS and its
    own counts, so that they can run on several cores. Reading stays sequential (and counts
    what it finds in COUNTS); stderr blocks are cut before a record's first line, never inside
    a record."""
    if fmt == "csv":
        yield from _csv(fh, counts)
    elif fmt == "json":
        for block, _ in _blocks(fh):
            yield functools.partial(_json_block, block)
    else:
        pattern = prefix_regex(prefix)
        head = prefix_head(prefix) + "$" if SEPARATOR not in re.sub(r"%(-?\d+)?.", "\0",
                                                                      prefix) else ""
        for data in _stderr_blocks(fh, re.compile(pattern, re.M)):
            yield functools.partial(_stderr_block, data, pattern, head)


def _blocks(fh: IO[bytes], size: int = 0) -> Iterator[tuple[bytes, bool]]:
    """(block of whole lines, is it the last one); the last may lack its newline (a truncated
    write)."""
    size = size or BLOCK
    carry = b""
    chunk = fh.read(size)
    while chunk:
        following = fh.read(size)
        data = carry + chunk
        cut = data.rfind(b"\n") + 1 if following else len(data)
        carry = data[cut:]
        if cut:
            yield data[:cut], not following
        chunk = following


def _finish(columns: dict[str, Any], n: int) -> pa.RecordBatch:
    import pyarrow as pa

    return pa.RecordBatch.from_arrays(
        [columns[c] if columns.get(c) is not None else pa.nulls(n, pa.string()) for c in COLUMNS],
        names=list(COLUMNS))


def _csv(fh: IO[bytes], counts: Counts) -> Iterator[Task]:
    """pyarrow's CSV reader parses on its own threads: its batches are the tasks' results."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    start = fh.tell()
    first = next(csv.reader(io.TextIOWrapper(io.BytesIO(fh.read(64 * 1024)), "utf-8",
                                             errors="replace", newline="")), [])
    fh.seek(start)
    n = len(first) if len(first) >= 23 else len(CSV_COLUMNS)
    names = CSV_COLUMNS[:n] + [f"extra_{i}" for i in range(n - len(CSV_COLUMNS))]
    wanted = [c for c in COLUMNS if c in names]
    bad = Counts()

    def bad_row(_: Any) -> str:
        bad.malformed += 1
        return "skip"

    try:
        reader = pacsv.open_csv(
            fh, read_options=pacsv.ReadOptions(column_names=names, block_size=2**20),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=bad_row),
            convert_options=pacsv.ConvertOptions(include_columns=wanted,
                                                  column_types={c: pa.string() for c in wanted}))
    except pa.ArrowInvalid:  # empty file
        return
    for batch in reader:
        done = (_finish({c: batch.column(c) for c in wanted}, batch.num_rows),
                Counts(records=batch.num_rows))
        yield functools.partial(lambda d: d, done)
    counts.add(bad)


@functools.cache
def _json_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(k, pa.int64() if k == "pid" else pa.string()) for k in JSON_KEYS])


def _json_block(block: bytes) -> tuple[pa.RecordBatch | None, Counts]:
    import pyarrow as pa
    import pyarrow.json as pajson

    found = Counts()
    schema = _json_schema()
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(io.BytesIO(block), parse_options=parse,
                                 read_options=pajson.ReadOptions(use_threads=False,
                                                                 block_size=len(block) + 1))
    except pa.ArrowInvalid:  # a malformed or truncated line: this block line by line
        table = pa.Table.from_pylist(_json_lines(block, found), schema=schema)
    found.records = table.num_rows
    cols = {JSON_KEYS[k]: table.column(k).combine_chunks().cast(pa.string()) for k in JSON_KEYS}
    return _finish(cols, table.num_rows), found


def _json_lines(block: bytes, counts: Counts) -> list[dict[str, Any]]:
    rows = []
    for line in block.splitlines():
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            rows.append({k: (int(v) if k == "pid" else str(v)) for k, v in raw.items()
                         if k in JSON_KEYS})
        except (ValueError, TypeError, AttributeError):
            counts.malformed += 1
    return rows


def _stderr_blocks(fh: IO[bytes], line: re.Pattern[str], lookback: int = 10_000) -> Iterator[bytes]:
    """Blocks of stderr lines cut before the last record's first line (a prefixed line that is
    not DETAIL/HINT/CONTEXT/STATEMENT...): what follows is carried into the next block, so a
    record and its continuation lines are never split. Only the block's last lines are tried."""
    carry = b""
    for block, final in _blocks(fh):
        data = carry + block
        cut, end = len(data), len(data) - 1
        for _ in range(0 if final else lookback):
            start = data.rfind(b"\n", 0, end) + 1
            m = line.match(data[start:end].decode("utf-8", errors="replace"))
            if m and m.group("severity") not in SECONDARY:
                cut = start
                break
            if start == 0:
                break
            end = start - 1
        if cut:
            yield data[:cut]
        carry = data[cut:]
    if carry:
        yield carry


def _lines(data: bytes) -> pa.Array:
    """The lines of DATA as an Arrow string array over the same bytes (no copy; each line
    keeps its newline): numpy finds the newlines, Arrow checks the UTF-8 once."""
    import numpy as np
    import pyarrow as pa

    starts = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
    offsets = np.concatenate(([0], starts if len(starts) and starts[-1] == len(data)
                              else np.append(starts, len(data)))).astype(np.int32)
    lines = pa.Array.from_buffers(pa.binary(), len(offsets) - 1,
                                  [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        return lines.cast(pa.string())
    except pa.ArrowInvalid:  # not UTF-8 (a client's bytes in another encoding): replace them
        return _lines(data.decode("utf-8", errors="replace").encode())


def _stderr_block(data: bytes, pattern: str, head: str) -> tuple[pa.RecordBatch | None, Counts]:
    """stderr lines: the prefix regex over the block's lines at once; tab-indented lines
    continue the previous line's message; DETAIL/HINT/CONTEXT/STATEMENT lines are folded into
    the record they belong to (the previous one of the same process). HEAD (when the prefix's
    own text has no ':  '): the pattern of what precedes the first ':  ' of a line."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    found = Counts()
    lines = _lines(data)
    if head:  # the prefix regex on the part before the first ':  ' only: twice as fast
        has = pc.match_substring(lines, SEPARATOR)
        parts = pc.split_pattern(pc.if_else(has, lines, SEPARATOR), SEPARATOR, max_splits=1)
        parsed = pc.extract_regex(pc.list_element(parts, 0), head)
        message = pc.utf8_rtrim(pc.list_element(parts, 1), "\n")
        matched = np.array(pc.and_(parsed.is_valid(), has), dtype=bool)
    else:
        parsed = pc.extract_regex(lines, pattern)
        message = parsed.field("message")
        matched = np.array(parsed.is_valid(), dtype=bool)
    names = [f.name for f in parsed.type if f.name != "message"]
    fields = {n: parsed.field(n) for n in names}
    cont = np.asarray(pc.fill_null(pc.starts_with(lines, "\t"), False))
    blank = np.asarray(pc.less_equal(pc.binary_length(lines), 1))
    loose = ~matched & ~cont & ~blank
    if head and loose.any():  # 'LOG: ' (a shipper collapsed the two spaces): the whole regex
        fields, message = _reparse(lines, pattern, loose, matched, fields, message)
        loose &= ~matched
    severity = fields["severity"]
    secondary = np.asarray(pc.fill_null(pc.is_in(severity, pa.array(SECONDARY)), False))
    primary = matched & ~secondary
    found.unmatched = int(loose.sum())
    found.records = int(primary.sum())
    if not primary.any():
        return None, found
    if cont.any():
        message = _join_continuations(lines, message, matched, cont)
    cols: dict[str, Any] = {c: v for c, v in fields.items() if c in COLUMNS}
    cols["message"] = message
    if secondary.any():
        cols.update(_fold_secondary(fields, message, primary, secondary))
    keep = pa.array(primary)
    return _finish({c: (v.filter(keep) if v is not None else None) for c, v in cols.items()},
                   found.records), found


def _reparse(lines: Any, pattern: str, loose: Any, matched: Any, fields: dict[str, Any],
             message: Any) -> tuple[dict[str, Any], Any]:
    """The lines the fast path left (LOOSE) through the whole line's regex: the fields and
    messages of those it matches replace the nulls, and MATCHED is updated in place."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = np.flatnonzero(loose)
    again = pc.extract_regex(lines.take(pa.array(idx)), pattern)
    ok = np.asarray(again.is_valid())
    if not ok.any():
        return fields, message
    rows = idx[ok]
    mask = np.zeros(len(matched), dtype=bool)
    mask[rows] = True
    keep, where = pa.array(ok), pa.array(mask)
    out = {n: pc.replace_with_mask(v, where, again.field(n).filter(keep).cast(v.type))
           for n, v in fields.items()}
    matched[rows] = True
    return out, pc.replace_with_mask(message, where,
                                     pc.utf8_rtrim(again.field("message").filter(keep),
                                                   "\n").cast(message.type))


def _join_continuations(lines: Any, message: Any, matched: Any, cont: Any) -> Any:
    """Messages with their tab-indented continuation lines appended (Python for those only)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = np.flatnonzero(cont)
    owners: dict[int, list[str]] = {}
    texts = lines.take(pa.array(idx)).to_pylist()
    owner = -1
    prev = -2
    for i, line in zip(idx.tolist(), texts, strict=True):
        if i != prev + 1:
            owner = i - 1 if i > 0 and matched[i - 1] else -1
        prev = i
        if owner >= 0:
            owners.setdefault(owner, []).append(line[1:].rstrip("\n"))
    if not owners:
        return message
    rows = sorted(owners)
    firsts = message.take(pa.array(rows)).to_pylist()
    joined = [f"{a}\n" + "\n".join(owners[r]) for r, a in zip(rows, firsts, strict=True)]
    mask = np.zeros(len(message), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(message, pa.array(mask), pa.array(joined, message.type))


def _fold_secondary(fields: dict[str, Any], message: Any, primary: Any,
                    secondary: Any) -> dict[str, Any]:
    """DETAIL/HINT/CONTEXT/STATEMENT lines as columns of their record: the previous primary
    line, of the same process when the prefix has %p."""
    import numpy as np
    import pyarrow as pa

    idx = np.arange(len(primary))
    owner = np.maximum.accumulate(np.where(primary, idx, -1))
    rows = np.flatnonzero(secondary)
    sev = fields["severity"].take(pa.array(rows)).to_pylist()
    text = message.take(pa.array(rows)).to_pylist()
    pids = fields["pid"].to_pylist() if "pid" in fields else None
    target = {"DETAIL": "detail", "HINT": "hint", "CONTEXT": "context", "STATEMENT": "query",
              "QUERY": "query"}
    values: dict[str, dict[int, str]] = {c: {} for c in set(target.values())}
    for r, s, t in zip(rows.tolist(), sev, text, strict=True):
        o = int(owner[r])
        if pids is not None and o >= 0 and pids[o] != pids[r]:  # interleaved: search back
            o = next((j for j in range(o - 1, -1, -1) if primary[j] and pids[j] == pids[r]), -1)
        if o >= 0 and s in target:
            values[target[s]].setdefault(o, t)
    out = {}
    for col, got in values.items():
        if got:
            arr: list[str | None] = [None] * len(primary)
            for o, t in got.items():
                arr[o] = t
            out[col] = pa.array(arr, pa.large_string())
    return out


def not_parsed(head: bytes, fmt: str, where: str) -> tuple[str, str] | None:
    """(why, fix) for input of which no record was read, from its first bytes HEAD: binary data
    or something that is no PostgreSQL log. None for stderr lines that start with a time: a log
    written with another prefix, which the scan's setup problems already say (a warning)."""
    if fmt == "stderr" and b"\0" not in head and RECORD_START.search(head):
        return None
    what = "binary data (NUL bytes)" if b"\0" in head else f"{head[:40]!r}..."
    return (f"not a PostgreSQL log: no line matched csvlog/jsonlog/stderr in {where} "
            f"(it starts with {what})",
            "point log_source at the server's log files (its log_directory: *.csv, *.json or "
            "*.log)")
