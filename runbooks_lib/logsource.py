"""Where the server log is and how its bytes are read: files matching a path or glob, or the
server's log directory through SQL (``pg_ls_logdir`` with pg_monitor, ``pg_read_binary_file``
with superuser or pg_read_server_files). A log that cannot be read raises LogUnreadable with the
reason and the exact fix: never an empty log that looks like a healthy one."""

from __future__ import annotations

import datetime as dt
import glob
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from . import logparse, queries
from .errors import SkipStep
from .findings import Finding
from .sqltext import ident

if TYPE_CHECKING:
    from .session import Session


class LogUnreadable(SkipStep):
    """The log could not be read at all, which is not the same as a log that holds no error:
    REASON says why, FIX exactly what to do (unreadable_finding turns it into a warning)."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"the server log was not read: {reason}; {fix}")
        self.reason = reason
        self.fix = fix


def unreadable_finding(exc: LogUnreadable) -> Finding:
    """A log that was not read as a warning, never as a green 'no error logged'."""
    return Finding("log_setup", "warning", f"The server log was not read: {exc.reason}"[:240],
                   f"nothing was counted from the log; fix: {exc.fix}",
                   evidence=[{"reason": exc.reason, "fix": exc.fix}], remediation=exc.fix)


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
    """The files matching PATTERN (a path, a glob or a directory), oldest first; of one format
    only (csvlog, else jsonlog, else stderr) when several match, since a server writing more
    than one writes the same events to each."""
    if Path(pattern).is_dir():
        pattern = str(Path(pattern) / "*")
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
        raise LogUnreadable(f"no log file matches {pattern}",
                            f"log_source {pattern!r} matched no file: pass the path or glob of the "
                            "server's log files (log_directory, e.g. /var/lib/postgresql/data/log/"
                            "*.csv)")
    best = next(k for k in ("csv", "json", "stderr") if any(f.fmt == k for f in out))
    return sorted((f for f in out if f.fmt == best), key=lambda f: (f.modified, f.name))


def server_files(session: Session) -> tuple[list[LogFile], str]:
    """The server's log files of the best format it writes (csvlog, jsonlog, then stderr),
    oldest first, and the server's log_line_prefix."""
    settings = session.facts.settings
    dest = settings.get("log_destination", "")
    if settings.get("logging_collector") != "on":
        raise LogUnreadable("logging_collector is off: the server log is not in files PostgreSQL "
                            "can list", "pass log_source as a path or glob to the log files, or "
                            "set logging_collector = on (needs a restart)")
    fmt = next((f for f, d in (("csv", "csvlog"), ("json", "jsonlog"), ("stderr", "stderr"))
                if d in dest), "")
    if not fmt:
        raise LogUnreadable(f"log_destination is '{dest}', no file the server can list",
                            "ALTER SYSTEM SET log_destination = 'stderr,csvlog'; SELECT "
                            "pg_reload_conf(); or pass log_source as a path to the log files")
    if not session.facts.has_role("pg_read_server_files"):
        role = session.facts.current_user
        raise LogUnreadable(f"role {role} cannot read server files (needs pg_read_server_files)",
                            f"GRANT pg_read_server_files TO {ident(role)}; or pass log_source "
                            "as a path or glob to the log files")
    listed = session.frame(queries.get("log_files"))
    files = [LogFile(str(n), int(s), m.to_pydatetime(), fmt, server=True)
             for n, s, m in zip(listed["name"], listed["size"], listed["modification"],
                                strict=True)
             if logparse.kind(str(n)) == fmt]
    if not files:
        raise LogUnreadable(f"no {fmt} log file in the server's log directory",
                            f"check log_directory ({settings.get('log_directory', '?')}) and "
                            f"log_filename, or pass log_source as a path to the log files")
    return sorted(files, key=lambda f: (f.modified, f.name)), settings.get("log_line_prefix", "")


def open_file(f: LogFile, offset: int, session: Session | None) -> IO[bytes]:
    if f.server:
        if session is None:
            raise RuntimeError("no session to read server files with")
        fh: IO[bytes] = io.BufferedReader(io.BytesIO(read_server_file(session, f, offset)))
    else:
        fh = open(f.name, "rb")  # noqa: SIM115 (closed by the caller)
        fh.seek(offset)
    if offset:
        logparse.skip_partial(fh, f.fmt)
    return fh


def read_server_file(session: Session, f: LogFile, offset: int,
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
