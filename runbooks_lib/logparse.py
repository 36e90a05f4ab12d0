"""Server log bytes into Arrow record batches, whatever the format: csvlog, jsonlog (15+), or
stderr written with the server's ``log_line_prefix``.

Vectorized and streamed: pyarrow's CSV and JSON readers, and for stderr RE2 regexes applied to
whole blocks of lines at once, so memory stays flat in the log's size and Python only touches the
rare multi-line records (a deadlock's DETAIL, a statement on several lines). Every format comes
out with the same string COLUMNS; what cannot be read is counted in a `Counts`, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
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
BLOCK = 4 * 2**20

# -- log_line_prefix ---------------------------------------------------------------------------

SEVERITIES = ("DEBUG1|DEBUG2|DEBUG3|DEBUG4|DEBUG5|INFO|NOTICE|WARNING|ERROR|LOG|FATAL|PANIC|"
              "DETAIL|HINT|QUERY|CONTEXT|LOCATION|STATEMENT")
SECONDARY = ("DETAIL", "HINT", "QUERY", "CONTEXT", "LOCATION", "STATEMENT")
_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
_ZONE = r"(?: [A-Za-z0-9+\-:]+)?"
# escape -> (column it fills or None, RE2 pattern)
ESCAPES: dict[str, tuple[str | None, str]] = {
    "a": ("application", r".*?"), "u": ("user", r".*?"), "d": ("database", r".*?"),
    "r": (None, r".*?"), "h": (None, r".*?"), "b": (None, r".*?"), "i": (None, r".*?"),
    "p": ("pid", r"\d+"), "P": (None, r"\d*"), "c": (None, r"[0-9a-f]+\.[0-9a-f]+"),
    "l": (None, r"\d+"), "s": (None, _TIME + _ZONE), "v": (None, r"[0-9/]*"),
    "x": (None, r"\d+"), "e": ("sqlstate", r"[0-9A-Z]{5}"), "Q": (None, r"-?\d+"),
    "t": ("log_time", _TIME + _ZONE), "m": ("log_time", _TIME + r"\.\d+" + _ZONE),
    "n": (None, r"\d+\.\d+"),
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
    then the severity and the message. %q ends the prefix for non-session processes, so what
    follows it is optional. Padding (%-10u) is allowed around every field."""
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
    out.append(f"(?P<severity>{SEVERITIES}):  (?P<message>.*)$")
    return "".join(out)


# -- reading -----------------------------------------------------------------------------------

@dataclass
class Counts:
    """What a read could not use: malformed records and stderr lines the prefix does not match."""

    records: int = 0
    malformed: int = 0
    unmatched: int = 0


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


def batches(fh: IO[bytes], fmt: str, counts: Counts, prefix: str = "") -> Iterator[pa.RecordBatch]:
    """Record batches with COLUMNS from an open log file (csv, json or stderr with PREFIX)."""
    if fmt == "csv":
        yield from _csv(fh, counts)
    elif fmt == "json":
        yield from _json(fh, counts)
    else:
        yield from _stderr(fh, counts, prefix)


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


def _csv(fh: IO[bytes], counts: Counts) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    start = fh.tell()
    first = next(csv.reader(io.TextIOWrapper(io.BytesIO(fh.read(64 * 1024)), "utf-8",
                                             errors="replace", newline="")), [])
    fh.seek(start)
    n = len(first) if len(first) >= 23 else len(CSV_COLUMNS)
    names = CSV_COLUMNS[:n] + [f"extra_{i}" for i in range(n - len(CSV_COLUMNS))]
    wanted = [c for c in COLUMNS if c in names]

    def bad_row(_: Any) -> str:
        counts.malformed += 1
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
        counts.records += batch.num_rows
        yield _finish({c: batch.column(c) for c in wanted}, batch.num_rows)


def _json(fh: IO[bytes], counts: Counts) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.json as pajson

    schema = pa.schema([(k, pa.int64() if k == "pid" else pa.string()) for k in JSON_KEYS])
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    for block, _ in _blocks(fh):
        try:
            table = pajson.read_json(io.BytesIO(block), parse_options=parse,
                                     read_options=pajson.ReadOptions(use_threads=False,
                                                                     block_size=len(block) + 1))
        except pa.ArrowInvalid:  # a malformed or truncated line: this block line by line
            table = pa.Table.from_pylist(_json_lines(block, counts), schema=schema)
        counts.records += table.num_rows
        cols = {JSON_KEYS[k]: table.column(k).combine_chunks().cast(pa.string()) for k in JSON_KEYS}
        yield _finish(cols, table.num_rows)


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


def _stderr(fh: IO[bytes], counts: Counts, prefix: str) -> Iterator[pa.RecordBatch]:
    """stderr lines: the prefix regex over each block's lines at once; tab-indented lines
    continue the previous line's message; DETAIL/HINT/CONTEXT/STATEMENT lines are folded into
    the record they belong to (the previous one of the same process). The lines from the last
    record on are carried into the next block, so a record is never split."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    pattern = prefix_regex(prefix)
    carry = ""
    for block, final in _blocks(fh):
        text = carry + block.decode("utf-8", errors="replace")
        last = text.endswith("\n")
        lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
        if last:
            lines = lines.slice(0, len(lines) - 1)
        parsed = pc.extract_regex(lines, pattern)
        matched = np.asarray(parsed.is_valid())
        severity = parsed.field("severity")
        secondary = np.asarray(pc.fill_null(pc.is_in(severity, pa.array(SECONDARY)), False))
        primary = matched & ~secondary
        if not final and primary.any():  # not the end: carry from the last primary record on
            cut = int(np.flatnonzero(primary)[-1])
            carry = "\n".join(lines.slice(cut).to_pylist()) + "\n"
            lines, parsed = lines.slice(0, cut), parsed.slice(0, cut)
            matched, secondary, primary = matched[:cut], secondary[:cut], primary[:cut]
            severity = parsed.field("severity")
        else:
            carry = ""
        cont = np.asarray(pc.fill_null(pc.starts_with(lines, "\t"), False))
        blank = np.asarray(pc.equal(pc.binary_length(lines), 0))
        counts.unmatched += int((~matched & ~cont & ~blank).sum())
        counts.records += int(primary.sum())
        if not primary.any():
            continue
        message = parsed.field("message")
        if cont.any():
            message = _join_continuations(lines, message, matched, cont)
        names = [f.name for f in parsed.type]
        cols: dict[str, Any] = {c: parsed.field(c) for c in names if c in COLUMNS}
        cols["message"] = message
        if secondary.any():
            cols.update(_fold_secondary(parsed, message, primary, secondary, names))
        keep = pa.array(primary)
        n = int(primary.sum())
        yield _finish({c: (v.filter(keep) if v is not None else None) for c, v in cols.items()},
                      n)


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
            owners.setdefault(owner, []).append(line[1:])
    if not owners:
        return message
    rows = sorted(owners)
    firsts = message.take(pa.array(rows)).to_pylist()
    joined = [f"{a}\n" + "\n".join(owners[r]) for r, a in zip(rows, firsts, strict=True)]
    mask = np.zeros(len(message), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(message, pa.array(mask), pa.array(joined, message.type))


def _fold_secondary(parsed: Any, message: Any, primary: Any, secondary: Any,
                    names: list[str]) -> dict[str, Any]:
    """DETAIL/HINT/CONTEXT/STATEMENT lines as columns of their record: the previous primary
    line, of the same process when the prefix has %p."""
    import numpy as np
    import pyarrow as pa

    idx = np.arange(len(primary))
    owner = np.maximum.accumulate(np.where(primary, idx, -1))
    rows = np.flatnonzero(secondary)
    sev = parsed.field("severity").take(pa.array(rows)).to_pylist()
    text = message.take(pa.array(rows)).to_pylist()
    pids = parsed.field("pid").to_pylist() if "pid" in names else None
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


def to_utc(log_time: pa.Array) -> pa.Array:
    """'2026-11-27 23:35:17.123 UTC' (or +03, -0330) strings as UTC timestamps, vectorized.
    Other zone names are taken as UTC (the sandbox and most servers log in UTC)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = pc.extract_regex(log_time, r"^(?P<t>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
                                       r" ?(?P<z>[^ ]*)")
    t = pc.cast(parts.field("t"), pa.timestamp("us"))
    zones = [z for z in pc.unique(parts.field("z")).to_pylist() if z]
    for zone in zones:
        m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", zone)
        if not m:
            continue
        minutes = (int(m.group(2)) * 60 + int(m.group(3) or 0)) * (1 if m.group(1) == "+" else -1)
        shifted = pc.subtract(t, pa.scalar(minutes * 60_000_000, pa.duration("us")))
        t = pc.if_else(pc.equal(parts.field("z"), zone), shifted, t)
    return t.cast(pa.timestamp("us", tz="UTC"))


def open_text(data: bytes | Iterable[bytes]) -> IO[bytes]:
    """Bytes read through SQL as a file for `batches`."""
    return io.BufferedReader(io.BytesIO(data if isinstance(data, bytes) else b"".join(data)))
