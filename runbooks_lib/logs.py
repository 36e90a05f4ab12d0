"""The server log: where it is, and what a streaming scan of it finds.

Sources: files (a path or a glob: csvlog ``*.csv``, jsonlog ``*.json``, anything else is stderr
written with ``log_line_prefix``), read whole and streamed; or, with ``auto``, the server's own
log directory through SQL (``pg_ls_logdir`` with pg_monitor, ``pg_read_binary_file`` with
superuser or pg_read_server_files), bounded to the last ``max_bytes``. One pass gives what the
runbooks show: errors by SQLSTATE (exact counts, the latest records kept), and statement
durations (count, share over a threshold, a histogram for the p95, per-statement totals).
Memory stays flat in the log's size; bad input is counted and noted, never fatal.
"""

from __future__ import annotations

import collections
import datetime as dt
import glob
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import deadlocks, logparse, queries
from .errors import SkipStep

if TYPE_CHECKING:
    import pyarrow as pa

    from .session import Session

ERROR_LEVELS = ("ERROR", "FATAL", "PANIC")
MAX_ERRORS = 50_000  # error records kept for the tables (the latest); counts are always exact
MAX_STATEMENTS = 5_000  # distinct normalized statements kept with their durations
# duration histogram: bucket b holds durations up to 1 µs * GROWTH**b, so a quantile read from
# it is at most 0.1 % above the true value, in 28,000 counters whatever the log's size
GROWTH = 1.001
BUCKETS = 28_000
# pg_ls_logdir() and some file systems give whole seconds: a file is skipped as older than the
# window only when it was last written this long before the window's start
MTIME_SLACK = dt.timedelta(minutes=1)
DURATION = (r"(?s)^duration: (?P<ms>[0-9.]+) ms(?:  (?P<kind>statement|execute|parse|bind)"
            r"[^:]*: (?P<sql>.*))?")


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """The `since` parameter: '' (none), '15m', '2h', '1d', or an ISO 8601 time (UTC if naive).

    >>> parse_since("2h", dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)).hour
    10
    """
    text = (text or "").strip()
    if not text:
        return None
    now = now or dt.datetime.now(dt.UTC)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - dt.timedelta(**{unit: float(m.group(1))})
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


# -- sources -----------------------------------------------------------------------------------

@dataclass
class LogFile:
    """One log file: a local path, or a name in the server's log directory (read through SQL)."""

    name: str
    size: int
    modified: dt.datetime
    fmt: str
    server: bool = False


def local_files(pattern: str) -> list[LogFile]:
    """The files matching PATTERN (a path or a glob), oldest first."""
    out = []
    for p in glob.glob(pattern):
        try:
            st = Path(p).stat()
        except OSError:
            continue
        if Path(p).is_file():
            out.append(LogFile(p, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC),
                               logparse.kind(p)))
    if not out:
        raise SkipStep(f"no log file matches {pattern}")
    return sorted(out, key=lambda f: (f.modified, f.name))


def server_files(session: Session) -> tuple[list[LogFile], str]:
    """The server's log files of the best format it writes (csvlog, jsonlog, then stderr),
    oldest first, and the server's log_line_prefix."""
    settings = session.facts.settings
    dest = settings.get("log_destination", "")
    if settings.get("logging_collector") != "on":
        raise SkipStep("logging_collector is off: the server log is not in files PostgreSQL can "
                       "list; pass log_source as a path or glob to the log files")
    fmt = next((f for f, d in (("csv", "csvlog"), ("json", "jsonlog"), ("stderr", "stderr"))
                if d in dest), "")
    if not fmt:
        raise SkipStep(f"log_destination is '{dest}': add csvlog (or jsonlog on 15+, or stderr) "
                       "to read the log through SQL, or pass log_source as a path")
    if not session.facts.has_role("pg_read_server_files"):
        raise SkipStep(f"role {session.facts.current_user} cannot read server files: grant "
                       "pg_read_server_files, or pass log_source as a path to the log files")
    listed = session.frame(queries.get("log_files"))
    files = [LogFile(str(n), int(s), m.to_pydatetime(), fmt, server=True)
             for n, s, m in zip(listed["name"], listed["size"], listed["modification"],
                                strict=True)
             if logparse.kind(str(n)) == fmt]
    if not files:
        raise SkipStep(f"no {fmt} log file in the server's log directory")
    return sorted(files, key=lambda f: (f.modified, f.name)), settings.get("log_line_prefix", "")


# -- what a scan finds -------------------------------------------------------------------------

@dataclass
class Durations:
    """Statement durations (log_min_duration_statement / log_duration), aggregated as read."""

    count: int = 0
    over: int = 0  # slower than the scan's slow_ms
    histogram: Any = None  # numpy int64[BUCKETS]
    statements: dict[str, list[float]] = field(default_factory=dict)  # calls, total, max ms
    slowest: list[dict[str, Any]] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        """The Q quantile in ms, at most 0.1 % above the exact value."""
        import numpy as np

        if not self.count:
            return math.nan
        b = int(np.searchsorted(np.cumsum(self.histogram), math.ceil(q * self.count)))
        return float(1e-3 * GROWTH ** b)


@dataclass
class Scan:
    """What one pass over the log found, and what it could not read."""

    source: str
    since: dt.datetime | None = None
    files: list[str] = field(default_factory=list)
    counts: logparse.Counts = field(default_factory=logparse.Counts)
    in_window: int = 0
    newest: dt.datetime | None = None
    errors_by_sqlstate: dict[str, int] = field(default_factory=dict)
    warnings_by_sqlstate: dict[str, int] = field(default_factory=dict)
    errors: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_ERRORS))
    durations: Durations = field(default_factory=Durations)
    notes: list[str] = field(default_factory=list)

    @property
    def malformed(self) -> int:
        return self.counts.malformed

    @property
    def records(self) -> int:
        return self.counts.records


def scan(files: list[LogFile], source: str, since: dt.datetime | None = None, prefix: str = "",
         slow_ms: float = math.inf, session: Session | None = None,
         max_bytes: int | None = None, errors: bool = True, durations: bool = True) -> Scan:
    """One streaming pass over FILES (oldest first): errors by SQLSTATE and durations of the
    records at or after SINCE. With MAX_BYTES, only the last that many bytes of the newest
    files. A file that vanishes or shrinks while it is read (rotation) is noted, not fatal."""
    import numpy as np
    import pyarrow as pa

    out = Scan(source=source, since=since)
    out.durations.histogram = np.zeros(BUCKETS, dtype=np.int64)
    budget = max_bytes if max_bytes is not None else math.inf
    chosen: list[tuple[LogFile, int]] = []
    for f in reversed(files):
        if budget <= 0 or (since is not None and f.modified < since - MTIME_SLACK):
            break  # older files: nothing at or after SINCE (they were closed before it)
        offset = int(max(0, f.size - budget))
        chosen.append((f, offset))
        budget -= f.size - offset
    since_ts = pa.scalar(since, pa.timestamp("us", tz="UTC")) if since else None
    for f, offset in reversed(chosen):
        try:
            fh = _open(f, offset, session)
        except (OSError, RuntimeError) as exc:
            out.notes.append(f"{f.name}: could not be read ({exc.__class__.__name__}: "
                             f"{str(exc)[:120]}); rotated away or removed while reading?")
            continue
        out.files.append(f.name)
        with fh:
            for batch in logparse.batches(fh, f.fmt, out.counts, prefix):
                _take(out, batch, since_ts, slow_ms, errors, durations)
            end = fh.tell()
        if not f.server and end + offset < f.size:
            out.notes.append(f"{f.name}: shrank while it was read ({end + offset} of {f.size} "
                             "bytes): rotated with log_truncate_on_rotation?")
    return out


def _open(f: LogFile, offset: int, session: Session | None) -> IO[bytes]:
    if f.server:
        if session is None:
            raise RuntimeError("no session to read server files with")
        fh: IO[bytes] = io.BufferedReader(io.BytesIO(_read_server_file(session, f, offset)))
    else:
        fh = open(f.name, "rb")  # noqa: SIM115 (closed by the caller)
        fh.seek(offset)
    if offset:
        logparse.skip_partial(fh, f.fmt)
    return fh


def _read_server_file(session: Session, f: LogFile, offset: int,
                      piece: int = 16 * 2**20) -> bytes:
    import psycopg

    parts = []
    pos = offset
    while pos < f.size:
        try:
            row = session.row(queries.get("read_log"), {"name": f.name, "offset": pos,
                                                        "length": min(piece, f.size - pos)})
        except psycopg.Error as exc:
            raise RuntimeError(str(exc).splitlines()[0]) from None
        chunk = bytes(row["chunk"] or b"")
        if not chunk:
            break
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


def _take(out: Scan, batch: pa.RecordBatch, since: Any, slow_ms: float, errors: bool,
          durations: bool) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    times = logparse.to_utc(batch.column("log_time"))
    if since is not None:
        keep = pc.fill_null(pc.greater_equal(times, since), False)
        batch, times = batch.filter(keep), times.filter(keep)
    if not batch.num_rows:
        return
    out.in_window += batch.num_rows
    newest = pc.max(times).as_py()
    if newest is not None and (out.newest is None or newest > out.newest):
        out.newest = newest
    severity = batch.column("severity")
    if errors:
        for levels, into in ((ERROR_LEVELS, out.errors_by_sqlstate),
                             (("WARNING",), out.warnings_by_sqlstate)):
            hits = pc.is_in(severity, pa.array(levels))
            if not pc.any(hits).as_py():
                continue
            for item in pc.value_counts(batch.column("sqlstate").filter(hits)).to_pylist():
                code = item["values"] or "(none)"
                into[code] = into.get(code, 0) + int(item["counts"])
            if levels == ERROR_LEVELS:
                rows = batch.filter(hits).append_column("time", times.filter(hits))
                out.errors.extend(rows.to_pylist())
    if durations:
        _durations(out.durations, batch, times, slow_ms)


def normalized(sql: pa.Array) -> pa.Array:
    """deadlocks.normalize_sql, vectorized (the same patterns through RE2)."""
    import pyarrow.compute as pc

    for pattern in deadlocks.LITERALS:
        sql = pc.replace_substring_regex(sql, pattern, "?")
    sql = pc.utf8_trim_whitespace(pc.replace_substring_regex(sql, r"\s+", " "))
    return pc.utf8_slice_codeunits(sql, 0, 500)


def _durations(d: Durations, batch: pa.RecordBatch, times: pa.Array, slow_ms: float) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    message = batch.column("message")
    is_dur = pc.fill_null(pc.starts_with(message, "duration: "), False)
    if not pc.any(is_dur).as_py():
        return
    parts = pc.extract_regex(message.filter(is_dur), DURATION)
    kind = parts.field("kind")
    # parse and bind of the extended protocol are logged apart from their execute: not counted
    counted = pc.fill_null(pc.invert(pc.is_in(kind, pa.array(["parse", "bind"]))), True)
    counted = pc.and_(counted, parts.is_valid())
    parts = parts.filter(counted)
    rows = batch.filter(is_dur).filter(counted)
    ms = pc.cast(parts.field("ms"), pa.float64())
    n = len(ms)
    if not n:
        return
    values = np.asarray(ms)
    d.count += n
    d.over += int((values > slow_ms).sum())
    b = np.ceil(np.log(np.maximum(values, 1e-3) / 1e-3) / math.log(GROWTH)).astype(np.int64)
    d.histogram += np.bincount(np.clip(b, 0, BUCKETS - 1), minlength=BUCKETS)
    sql = pc.coalesce(parts.field("sql"), rows.column("query"), pa.scalar("", pa.string()))
    stmt = normalized(sql.cast(pa.large_string()))
    table = pa.table({"statement": stmt, "ms": ms})
    for r in table.group_by("statement").aggregate(
            [("ms", "count"), ("ms", "sum"), ("ms", "max")]).to_pylist():
        key = r["statement"] if (r["statement"] in d.statements
                                 or len(d.statements) < MAX_STATEMENTS) else "(other statements)"
        acc = d.statements.setdefault(key, [0, 0.0, 0.0])
        acc[0] += r["ms_count"]
        acc[1] += r["ms_sum"]
        acc[2] = max(acc[2], r["ms_max"])
    top = pc.select_k_unstable(ms, k=min(10, n), sort_keys=[("ms", "descending")])
    when = times.filter(is_dur).filter(counted)
    for i in top.to_pylist():
        d.slowest.append({"log_time": when[i].as_py(),
                          "duration_ms": values[i], "user": rows.column("user")[i].as_py(),
                          "database": rows.column("database")[i].as_py(),
                          "application": rows.column("application")[i].as_py(),
                          "statement": stmt[i].as_py()})
    d.slowest = sorted(d.slowest, key=lambda r: -r["duration_ms"])[:10]


def statements(d: Durations) -> Iterator[dict[str, Any]]:
    """Per normalized statement: calls, total and mean and max ms, slowest total first."""
    for sql, (calls, total, most) in sorted(d.statements.items(), key=lambda kv: -kv[1][1]):
        yield {"statement": sql, "calls": int(calls), "total_ms": round(total, 3),
               "mean_ms": round(total / calls, 3) if calls else 0.0, "max_ms": most}


# -- the one call the runbooks make -------------------------------------------------------------

def scan_source(session: Session | None, log_source: str, since: dt.datetime | None,
                prefix: str = "", max_bytes: int = 50 * 2**20, slow_ms: float = math.inf,
                errors: bool = True, durations: bool = True) -> Scan:
    """Scan LOG_SOURCE: 'auto' (the server's log directory through SQL, the last MAX_BYTES) or
    a path / glob (whole files). PREFIX: the stderr log_line_prefix ('' = the server's)."""
    if log_source and log_source != "auto":
        files = local_files(log_source)
        if not prefix and session is not None and any(f.fmt == "stderr" for f in files):
            prefix = session.facts.settings.get("log_line_prefix", "")
        source, limit, reader = log_source, None, None
    else:
        if session is None:
            raise SkipStep("no connection to read the server log through; pass log_source")
        files, server_prefix = server_files(session)
        prefix = prefix or server_prefix
        source = f"server log directory ({files[-1].fmt}, through SQL, last " \
                 f"{max_bytes / 2**20:g} MB)"
        limit, reader = max_bytes, session
    if any(f.fmt == "stderr" for f in files) and not prefix:
        raise SkipStep("stderr log files need the server's log_line_prefix: pass it as the "
                       "log_line_prefix parameter (SHOW log_line_prefix on the server)")
    return scan(files, source, since, prefix, slow_ms, reader, limit, errors, durations)


def setup_problems(result: Scan, prefix: str, fmt_stderr: bool) -> list[str]:
    """Why a scan may be blind: a prefix that lacks fields or does not match, files that could
    not be read. Empty when the log can be trusted."""
    problems = list(result.notes)
    if fmt_stderr:
        missing = logparse.prefix_missing(prefix)
        if missing:
            problems.append(f"log_line_prefix '{prefix}' lacks {', '.join(missing)}: add them, "
                            f"e.g. log_line_prefix = '{logparse.RECOMMENDED_PREFIX}'")
        c = result.counts
        if c.unmatched and c.unmatched >= max(1, c.records) * 0.1:
            problems.append(f"{c.unmatched} lines do not match log_line_prefix '{prefix}' "
                            f"({c.records} do): the files were written with another prefix; "
                            "pass the one they were written with as log_line_prefix")
    return problems

