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
import concurrent.futures
import datetime as dt
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import logparse, logsource, logtime, queries, sqlstate, sqltext
from .findings import Finding
from .logsource import LogFile as LogFile
from .logsource import LogUnreadable as LogUnreadable
from .logsource import local_files as local_files
from .logsource import parse_since as parse_since
from .logsource import server_files as server_files
from .logsource import unreadable_finding as unreadable_finding

if TYPE_CHECKING:
    import pyarrow as pa

    from .present import Progress
    from .session import Session

ERROR_LEVELS = ("ERROR", "FATAL", "PANIC")
# error records kept for the tables and the deadlock and FK steps: the latest this many of each
# SQLSTATE (memory stays bounded on a log of millions of errors); counts are always exact
MAX_ERRORS = 5_000
MAX_STATEMENTS = 5_000  # distinct normalized statements kept with their durations
WORKERS = min(4, os.cpu_count() or 1)  # threads analysing pieces of a file at once
# duration histogram: bucket b holds durations up to 1 µs * GROWTH**b, so a quantile read from
# it is at most 0.1 % above the true value, in 28,000 counters whatever the log's size
GROWTH = 1.001
BUCKETS = 28_000
# pg_ls_logdir() and some file systems give whole seconds: a file is skipped as older than the
# window only when it was last written this long before the window's start
MTIME_SLACK = dt.timedelta(minutes=1)
DURATION_HEAD = r"^duration: (?P<ms>[0-9.]+) ms(?: {1,2}(?P<kind>statement|execute|parse|bind))?"


# -- what a scan finds -------------------------------------------------------------------------

@dataclass
class Durations:
    """Statement durations (log_min_duration_statement / log_duration), aggregated as read."""

    count: int = 0
    over: int = 0  # slower than the scan's slow_ms
    histogram: Any = None  # numpy int64[BUCKETS]
    statements: dict[str, list[float]] = field(default_factory=dict)  # calls, total, max ms
    slowest: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: Durations) -> None:
        self.count += other.count
        self.over += other.over
        if other.histogram is not None:
            self.histogram = (other.histogram if self.histogram is None
                              else self.histogram + other.histogram)
        for sql, (calls, total, most) in other.statements.items():
            key = sql if (sql in self.statements or len(self.statements) < MAX_STATEMENTS) \
                else "(other statements)"
            acc = self.statements.setdefault(key, [0, 0.0, 0.0])
            acc[0] += calls
            acc[1] += total
            acc[2] = max(acc[2], most)
        self.slowest = sorted(self.slowest + other.slowest, key=lambda r: -r["duration_ms"])[:10]

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
    prefix: str = ""  # the log_line_prefix stderr files were read with
    until: dt.datetime | None = None
    log_timezone: str = ""  # the zone the log's times are in ('' = unknown)
    files: list[str] = field(default_factory=list)
    counts: logparse.Counts = field(default_factory=logparse.Counts)
    in_window: int = 0
    oldest: dt.datetime | None = None  # of the records read, in the window or not
    newest: dt.datetime | None = None
    cut_short: bool = False  # max_bytes left older parts of the window unread
    errors_by_sqlstate: dict[str, int] = field(default_factory=dict)
    warnings_by_sqlstate: dict[str, int] = field(default_factory=dict)
    kept: dict[str, collections.deque[dict[str, Any]]] = field(default_factory=dict)
    durations: Durations = field(default_factory=Durations)
    notes: list[str] = field(default_factory=list)
    inferred: int = 0  # SQLSTATEs read from the message (no %e in the prefix)
    bytes_read: int = 0
    head: bytes = b""  # the start of the first file read, to say what it is when nothing parsed
    marked: int = 0  # durations of our own diagnostic statements, not counted

    @property
    def malformed(self) -> int:
        return self.counts.malformed

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The error records kept (the latest MAX_ERRORS of each SQLSTATE), oldest first."""
        rows = [r for kept in self.kept.values() for r in kept]
        return sorted(rows, key=lambda r: r["time"] or dt.datetime.min.replace(tzinfo=dt.UTC))

    def keep(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            code = r["sqlstate"] or ""
            if code not in self.kept:
                self.kept[code] = collections.deque(maxlen=MAX_ERRORS)
            self.kept[code].append(r)

    def merge(self, part: Scan, counts: logparse.Counts) -> None:
        """Add what a worker found in one piece of a file (in file order)."""
        self.counts.add(counts)
        self.in_window += part.in_window
        if part.newest is not None and (self.newest is None or part.newest > self.newest):
            self.newest = part.newest
        if part.oldest is not None and (self.oldest is None or part.oldest < self.oldest):
            self.oldest = part.oldest
        for mine, theirs in ((self.errors_by_sqlstate, part.errors_by_sqlstate),
                             (self.warnings_by_sqlstate, part.warnings_by_sqlstate)):
            for code, n in theirs.items():
                mine[code] = mine.get(code, 0) + n
        for rows in part.kept.values():
            self.keep(list(rows))
        self.durations.merge(part.durations)
        self.inferred += part.inferred
        self.marked += part.marked

    @property
    def records(self) -> int:
        return self.counts.records


def scan(files: list[LogFile], source: str, since: dt.datetime | None = None, prefix: str = "",
         slow_ms: float = math.inf, session: Session | None = None,
         max_bytes: int | None = None, errors: bool = True, durations: bool = True, *,
         until: dt.datetime | None = None, log_timezone: str = "",
         progress: Progress | None = None) -> Scan:
    """One streaming pass over FILES (oldest first): errors by SQLSTATE and durations of the
    records at or after SINCE and at or before UNTIL, their times read in LOG_TIMEZONE (the
    server's; '' = unknown: abbreviations other than UTC's are then noted as unresolved). With
    MAX_BYTES, only the last that many bytes of the newest files. A file that vanishes or
    shrinks while it is read (rotation) is noted, not fatal."""
    out = Scan(source=source, since=since, prefix=prefix, until=until, log_timezone=log_timezone)
    zone = logtime.LogZone(log_timezone)
    window = Window(since, until, zone)
    budget = max_bytes if max_bytes is not None else math.inf
    chosen: list[tuple[LogFile, int]] = []
    for f in reversed(files):
        if since is not None and f.modified < since - MTIME_SLACK:
            break  # older files: nothing at or after SINCE (they were closed before it)
        if budget <= 0:
            out.cut_short = True
            break
        offset = int(max(0, f.size - budget))
        out.cut_short |= offset > 0
        chosen.append((f, offset))
        budget -= f.size - offset
    if progress is not None:
        progress.start(sum(f.size - o for f, o in chosen) / 2**20)
    for f, offset in reversed(chosen):
        try:
            fh = logsource.open_file(f, offset, session)
        except (OSError, RuntimeError) as exc:
            out.notes.append(f"{f.name}: could not be read ({exc.__class__.__name__}: "
                             f"{str(exc)[:120]}); rotated away or removed while reading?")
            continue
        out.files.append(f.name)
        begin = fh.tell()
        if not out.head:
            out.head = fh.read(4096)
            fh.seek(begin)
        with fh, concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            pending: collections.deque[concurrent.futures.Future[tuple[Scan, Any]]] = \
                collections.deque()
            for task in logparse.tasks(fh, f.fmt, out.counts, prefix):
                pending.append(pool.submit(_work, task, window, slow_ms, errors, durations))
                while len(pending) > 2:  # a bounded window keeps memory flat
                    out.merge(*pending.popleft().result())
                    if progress is not None:
                        progress.update((out.bytes_read + fh.tell() - begin) / 2**20)
            while pending:
                out.merge(*pending.popleft().result())
            end = fh.tell()
        out.bytes_read += end - begin
        if not f.server and end + offset < f.size:
            out.notes.append(f"{f.name}: shrank while it was read ({end + offset} of {f.size} "
                             "bytes): rotated with log_truncate_on_rotation?")
    if progress is not None:
        progress.finish()
    if zone.error:
        out.notes.append(f"{zone.error}: times read as UTC unless they say their offset; pass "
                         "the server's log_timezone (SHOW log_timezone)")
    elif zone.unresolved:
        names = ", ".join(sorted(zone.unresolved))
        out.notes.append(
            f"log times in zone {names} were read as UTC, so the window may be off: "
            + (f"log_timezone '{log_timezone}' does not use {names}; pass the zone the files "
               "were written in as log_timezone" if log_timezone else
               "pass the server's log_timezone (SHOW log_timezone) as log_timezone"))
    return out


@dataclass(frozen=True)
class Window:
    """The records counted: logged at or after SINCE and at or before UNTIL, read in ZONE."""

    since: dt.datetime | None
    until: dt.datetime | None
    zone: logtime.LogZone


def _work(task: logparse.Task, window: Window, slow_ms: float, errors: bool,
          durations: bool) -> tuple[Scan, logparse.Counts]:
    """One piece of a file, parsed and analysed on a worker thread (pyarrow releases the GIL)."""
    part = Scan(source="")
    batch, counts = task()
    if batch is not None:
        _take(part, batch, window, slow_ms, errors, durations)
    return part, counts


def _take(out: Scan, batch: pa.RecordBatch, window: Window, slow_ms: float, errors: bool,
          durations: bool) -> None:
    """One batch into OUT, a fresh part (merged into the total by Scan.merge)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    zone = window.zone
    # within a file, the earliest and latest strings are the earliest and latest times
    bounds = pc.min_max(batch.column("log_time"))
    first, last = logtime.to_utc(pa.array([bounds["min"].as_py(), bounds["max"].as_py()],
                                           pa.string()), zone).to_pylist()
    out.oldest = first
    if window.since is not None:
        batch = batch.filter(logtime.at_or_after(batch.column("log_time"), window.since, zone))
    if window.until is not None and batch.num_rows:
        before = logtime.at_or_before(batch.column("log_time"), window.until, zone)
        if not pc.all(before).as_py():
            batch = batch.filter(before)
            if batch.num_rows:
                last = logtime.to_utc(pa.array([pc.max(batch.column("log_time")).as_py()],
                                                pa.string()), zone)[0].as_py()
    if not batch.num_rows:
        return
    out.in_window = batch.num_rows
    out.newest = last  # the batch's latest record is in the window when any record is
    severity = batch.column("severity")
    if errors:
        for levels, into in ((ERROR_LEVELS, out.errors_by_sqlstate),
                             (("WARNING",), out.warnings_by_sqlstate)):
            hits = pc.is_in(severity, pa.array(levels))
            if not pc.any(hits).as_py():
                continue
            hit = batch.filter(hits)
            if hit.column("sqlstate").null_count:  # a prefix without %e: read the message
                hit = _infer_sqlstate(out, hit)
            for item in pc.value_counts(hit.column("sqlstate")).to_pylist():
                code = item["values"] or "(none)"
                into[code] = into.get(code, 0) + int(item["counts"])
            if levels == ERROR_LEVELS:
                rows = hit.append_column("time", logtime.to_utc(hit.column("log_time"), zone))
                out.keep(rows.to_pylist())
    if durations:
        out.marked += _durations(out.durations, batch, slow_ms, zone)


def _infer_sqlstate(out: Scan, hit: pa.RecordBatch) -> pa.RecordBatch:
    """Errors without a SQLSTATE get the one their message stands for (sqlstate.BY_MESSAGE);
    errors and warnings are few, so this runs in Python."""
    import pyarrow as pa

    codes = hit.column("sqlstate").to_pylist()
    messages = hit.column("message").to_pylist()
    filled = [c if c else sqlstate.from_message(m) or None for c, m in zip(codes, messages,
                                                                            strict=True)]
    out.inferred += sum(1 for c, f in zip(codes, filled, strict=True) if not c and f)
    i = hit.schema.get_field_index("sqlstate")
    return hit.set_column(i, "sqlstate", pa.array(filled, pa.string()))


def normalized(sql: pa.Array) -> pa.Array:
    """sqltext.normalize_sql, vectorized (the same patterns through RE2)."""
    import pyarrow.compute as pc

    sql = pc.replace_substring_regex(sql, sqltext.LITERALS, "?")
    # only runs and non-space whitespace: replacing every single space costs 5x more
    sql = pc.utf8_trim_whitespace(pc.replace_substring_regex(sql, r"\s{2,}|[\t\n\r\f\v]", " "))
    return pc.utf8_slice_codeunits(sql, 0, 500)


def _durations(d: Durations, batch: pa.RecordBatch, slow_ms: float,
               zone: logtime.LogZone | None = None) -> int:
    """The durations of one batch into D, a fresh part (merged into the total by Scan.merge).
    Our own diagnostic statements (queries.MARKER) are left out, so the share and the p95 are
    the application's: returns how many were."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    is_dur = pc.fill_null(pc.starts_with(batch.column("message"), "duration: "), False)
    if not pc.any(is_dur).as_py():
        return 0
    where = pc.indices_nonzero(is_dur)
    message = batch.column("message").take(where)
    # the number and kind sit in the first few characters: regex those only
    head = pc.extract_regex(pc.utf8_slice_codeunits(message, 0, 64), DURATION_HEAD)
    # parse and bind of the extended protocol are logged apart from their execute: not counted
    counted = pc.and_(pc.fill_null(pc.invert(pc.is_in(head.field("kind"),
                                                      pa.array(["parse", "bind"]))), True),
                      head.is_valid())
    where, message, head = where.filter(counted), message.filter(counted), head.filter(counted)
    if not len(where):
        return 0
    # 'duration: 1.2 ms  statement: SQL' (or execute <name>: SQL): SQL is after the 2nd ': ';
    # 'duration: 1.2 ms' alone (log_duration): the statement is the record's query, if any
    has_sql = pc.not_equal(head.field("kind"), "")
    parts = pc.split_pattern(pc.if_else(has_sql, message, ": : "), ": ", max_splits=2)
    sql = pc.if_else(has_sql, pc.list_element(parts, 2),
                     pc.fill_null(batch.column("query").take(where), ""))
    ours = pc.match_substring(sql, queries.MARKER)
    marked = pc.sum(ours).as_py() or 0
    if marked:
        theirs = pc.invert(ours)
        where, message, head, sql = (where.filter(theirs), message.filter(theirs),
                                     head.filter(theirs), sql.filter(theirs))
    n = len(where)
    if not n:
        return int(marked)
    ms = pc.cast(head.field("ms"), pa.float64())
    values = np.asarray(ms)
    d.count += n
    d.over += int((values > slow_ms).sum())
    b = np.ceil(np.log(np.maximum(values, 1e-3) / 1e-3) / math.log(GROWTH)).astype(np.int64)
    d.histogram = np.bincount(np.clip(b, 0, BUCKETS - 1), minlength=BUCKETS)
    stmt = normalized(sql)
    table = pa.table({"statement": stmt, "ms": ms})
    d.statements = {r["statement"]: [r["ms_count"], r["ms_sum"], r["ms_max"]]
                    for r in table.group_by("statement").aggregate(
                        [("ms", "count"), ("ms", "sum"), ("ms", "max")]).to_pylist()}
    top = pc.select_k_unstable(ms, k=min(10, n), sort_keys=[("ms", "descending")])
    best = batch.take(where.take(top)).append_column("statement", stmt.take(top))
    best = best.append_column("time", logtime.to_utc(best.column("log_time"), zone))
    for r in best.to_pylist():
        d.slowest.append({"log_time": r["time"], "duration_ms": float(r["message"].split()[1]),
                          "user": r["user"], "database": r["database"],
                          "application": r["application"], "statement": r["statement"]})
    d.slowest = sorted(d.slowest, key=lambda r: -r["duration_ms"])[:10]
    return int(marked)


def statements(d: Durations) -> Iterator[dict[str, Any]]:
    """Per normalized statement: calls, total and mean and max ms, slowest total first."""
    for sql, (calls, total, most) in sorted(d.statements.items(), key=lambda kv: -kv[1][1]):
        yield {"statement": sql, "calls": int(calls), "total_ms": round(total, 3),
               "mean_ms": round(total / calls, 3) if calls else 0.0, "max_ms": most}


# -- the one call the runbooks make -------------------------------------------------------------

def scan_source(session: Session | None, log_source: str, since: dt.datetime | None,
                prefix: str = "", max_bytes: int = 50 * 2**20, slow_ms: float = math.inf,
                errors: bool = True, durations: bool = True, *,
                until: dt.datetime | None = None, log_timezone: str | None = None,
                progress: Progress | None = None) -> Scan:
    """Scan LOG_SOURCE: 'auto' (the server's log directory through SQL, the last MAX_BYTES) or
    a path / glob (whole files). PREFIX: the stderr log_line_prefix ('' = the server's).
    LOG_TIMEZONE: the zone the log's times are in (None = the session's log_timezone).
    LogUnreadable when nothing could be read, so that 'not read' is never 'no error'."""
    if log_timezone is None:
        log_timezone = session.facts.settings.get("log_timezone", "") if session else ""
    if log_source and log_source != "auto":
        files = local_files(log_source)
        if not prefix and session is not None and any(f.fmt == "stderr" for f in files):
            prefix = session.facts.settings.get("log_line_prefix", "")
        source, limit, reader = log_source, None, None
    else:
        if session is None:
            raise LogUnreadable("no connection to read the server log through",
                                "pass log_source as a path or glob to the log files")
        files, server_prefix = server_files(session)
        prefix = prefix or server_prefix
        source = f"server log directory ({files[-1].fmt}, through SQL, last " \
                 f"{max_bytes / 2**20:g} MB)"
        limit, reader = max_bytes, session
    if any(f.fmt == "stderr" for f in files) and not prefix:
        raise LogUnreadable("stderr log files need the server's log_line_prefix",
                            "pass it as the log_line_prefix parameter (SHOW log_line_prefix on "
                            "the server)")
    result = scan(files, source, since, prefix, slow_ms, reader, limit, errors, durations,
                  until=until, log_timezone=log_timezone, progress=progress)
    if not result.files and files:
        newest = max(f.modified for f in files)
        if since is not None and not result.notes and newest < since:
            raise LogUnreadable(f"{source}: no file was written since {since:%Y-%m-%d %H:%M} UTC "
                                f"(the newest on {newest:%Y-%m-%d %H:%M}), so none holds the "
                                "window", "point log_source at the server's current log files "
                                "(its log_directory), or widen since")
        raise LogUnreadable(result.notes[0] if result.notes else f"{source}: no file read",
                            "check that the files exist and that this user may read them")
    if not result.records and result.bytes_read:
        unparsed = logparse.not_parsed(result.head, files[-1].fmt, ", ".join(result.files))
        if unparsed:
            raise LogUnreadable(*unparsed)
    return result


def setup_problems(result: Scan) -> list[str]:
    """Why a scan may be blind: a prefix that lacks fields or does not match, files that could
    not be read. Empty when the log can be trusted."""
    problems = list(result.notes)
    if any(logparse.kind(f) == "stderr" for f in result.files):
        prefix = result.prefix
        missing = logparse.prefix_missing(prefix)
        if missing:
            inferred = (f" ({result.inferred} SQLSTATEs were read from the messages instead)"
                        if result.inferred else "")
            problems.append(f"log_line_prefix '{prefix}' lacks {', '.join(missing)}: add them, "
                            f"e.g. log_line_prefix = '{logparse.RECOMMENDED_PREFIX}'{inferred}")
        c = result.counts
        if c.unmatched and c.unmatched >= max(1, c.records) * 0.1:
            problems.append(f"{c.unmatched} lines do not match log_line_prefix '{prefix}' "
                            f"({c.records} do): the files were written with another prefix; "
                            "pass the one they were written with as log_line_prefix")
    return problems


def setup_findings(result: Scan) -> list[Finding]:
    """The scan's blind spots as findings: a log that cannot be trusted warns (never a silently
    empty report); malformed records are information."""
    found = []
    problems = setup_problems(result)
    if problems:
        found.append(Finding("log_setup", "warning",
                             "The server log cannot be fully trusted: " + problems[0][:200],
                             "; ".join(problems[1:]) or f"source {result.source}",
                             evidence=[{"problem": p} for p in problems],
                             remediation="fix the logging setup as said, then re-run"))
    if result.cut_short and result.oldest and (result.since is None
                                               or result.oldest > result.since):
        found.append(Finding("log_coverage", "info",
                             f"The log read reaches back only to {result.oldest:%Y-%m-%d %H:%M:%S}"
                             " UTC, not to the window's start",
                             f"source {result.source}: the counts cover that part of the window",
                             remediation="raise log_max_mb, or pass log_source as a path or glob "
                                         "to the log files (read whole)"))
    if result.malformed:
        found.append(Finding("log_malformed", "info",
                             f"{result.malformed} malformed log records skipped",
                             f"source {result.source}: truncated or foreign lines; the counts "
                             "exclude them"))
    return found
