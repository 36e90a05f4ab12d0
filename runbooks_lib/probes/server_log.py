"""The server log, for the transaction-failures runbook: the errors of the window in one
streaming pass (runbooks_lib.logs). A log that could not be read is a result too, not a silent
empty one: the checks turn it into a warning that says why and how to fix it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import logs
from ..errors import SkipStep
from ..params import LOG_LINE_PREFIX, LOG_SOURCE
from ..registry import Param, Params, Probe, register_probe

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook

SINCE = Param("since", str, "1h", "log window: 15m, 1h, 1d or an ISO time",
              form=logs.parse_since, form_help="15m, 1h, 1d or an ISO 8601 time")
MAX_MB = Param("log_max_mb", float, 50.0,
               "with log_source auto, read at most the last this many MB", "MB", 0.01, 100_000)
OUR_APPLICATIONS = "runbooks/"  # our own sessions' errors are not the application's
AUTOVACUUM_ENDED = "terminating autovacuum process"
ERROR_COLUMNS = ["time", "log_time", "user", "database", "application", "severity", "sqlstate",
                 "message", "detail", "context", "query"]


@dataclass(frozen=True)
class LogRead:
    """The errors read from the log since START, or why the log could not be read."""

    start: dt.datetime
    scan: logs.Scan | None
    errors: pd.DataFrame
    unreadable: SkipStep | None = None
    statements_logged: str = ""  # log_min_error_statement when failing statements are not logged
    counts: dict[str, int] = field(default_factory=dict)  # exact, by SQLSTATE, of `errors`' kind
    problems: tuple[str, ...] = ()  # why the read may be blind (logs.setup_problems)

    def require(self) -> logs.Scan:
        """The scan, when the log was read; SkipStep otherwise."""
        if self.scan is None:
            reason = str(self.unreadable)
            raise SkipStep(reason if reason.startswith("the server log was not read") else
                           f"the server log was not read: {reason}")
        return self.scan

    def none_found(self, what: str) -> None:
        """Nothing of WHAT was found: fine when the log can be trusted, otherwise SkipStep (a
        log read with the wrong prefix finds nothing, and that is no evidence of health)."""
        if self.problems:
            raise SkipStep(f"no {what} found, but the log cannot be trusted, so this is no "
                           f"evidence: {self.problems[0]}")


def read(rb: Runbook, p: Params) -> LogRead:
    import pandas as pd

    since = logs.parse_since(p["since"])
    start = since or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    source = p["log_source"]
    empty = pd.DataFrame(columns=ERROR_COLUMNS)
    setting = ""
    try:
        session = rb.session if source in ("", "auto") else rb.session_or_none()
        if session is not None:
            setting = session.facts.settings.get("log_min_error_statement", "error")
            setting = setting if setting in ("log", "fatal", "panic") else ""
        scan = logs.scan_source(session, source, start, p["log_line_prefix"],
                                int(p["log_max_mb"] * 2**20), durations=False,
                                progress=rb.progress("reading the server log (MB)"))
    except SkipStep as exc:
        return LogRead(start, None, empty, exc, setting)
    return read_from(start, scan, session.facts.database if session else None, setting)


def read_from(start: dt.datetime, scan: logs.Scan, database: str | None,
              statements_logged: str = "") -> LogRead:
    """The scan's errors as the checks read them: without our own sessions' errors (a refused
    diagnostic query is no application error) nor autovacuum's being cancelled and, when the
    database is known, without other databases' errors; the exact counts by SQLSTATE reduced
    to match."""
    import pandas as pd

    errors = pd.DataFrame(list(scan.errors), columns=ERROR_COLUMNS)
    drop = errors["application"].fillna("").str.startswith(OUR_APPLICATIONS)
    # autovacuum cancelled by DDL (DROP DATABASE ends it with 57P01): no application's failure
    drop |= errors["message"].fillna("").str.startswith(AUTOVACUUM_ENDED)
    if database is not None:
        drop |= errors["database"].fillna("").ne("") & errors["database"].ne(database)
    counts = dict(scan.errors_by_sqlstate)
    for code, n in errors.loc[drop, "sqlstate"].fillna("").replace("", "(none)") \
            .value_counts().items():
        counts[str(code)] = max(0, counts.get(str(code), 0) - int(n))
    return LogRead(start, scan, errors[~drop].reset_index(drop=True), None, statements_logged,
                   {c: n for c, n in counts.items() if n}, tuple(logs.setup_problems(scan)))


register_probe(Probe("log_errors", read, __doc__ or "",
                     params=(LOG_SOURCE, LOG_LINE_PREFIX, SINCE, MAX_MB)))
