"""One safe diagnostic connection to the target.

Read-only by default, with connect, statement and lock timeouts and an application_name
that says who we are, so a runbook never makes an incident worse and is easy to spot in
``pg_stat_activity``. Server facts (version, privileges, extensions, settings) are probed once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import dict_row

from . import queries
from .errors import ConnectError, ProbeError, SkipStep
from .target import Target, mask_text

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("runbooks_lib")


@dataclass(frozen=True)
class Timeouts:
    """Bounds on every diagnostic action (DESIGN 5)."""

    connect_s: float = 5.0
    statement_ms: int = 5000
    lock_ms: int = 1000


# (cause, needles in the libpq/server message, SQLSTATEs, what to check next)
_CAUSES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("configuration", ("definition of service", "service file", "invalid connection option",
                       "invalid uri query parameter", "missing \"=\" after"), (),
     "the target itself is wrong: check the service name in pg_service.conf or the DSN"),
    ("too_many_clients", ("too many clients", "remaining connection slots are reserved"),
     ("53300",), "connection slots are exhausted: find who holds them (admin_target) and "
     "terminate idle or leaked sessions, or lower the application's pool size"),
    ("authentication", ("password authentication failed", "no pg_hba.conf entry",
                        "authentication failed", "no password supplied",
                        "pg_hba.conf rejects"),
     ("28P01", "28000"), "check the user and password in the secret store and pg_hba.conf"),
    ("database_missing", ("does not exist",), ("3D000",),
     "check the database name in the target; list databases with \\l as an admin"),
    ("no_permission", ("permission denied",), ("42501",),
     "grant CONNECT on the database to the role"),
    ("starting_up", ("starting up", "in recovery mode", "not yet accepting connections"),
     ("57P03",), "the server is starting or recovering: watch its log and retry in a minute"),
    ("shutting_down", ("shutting down",), ("57P01", "57P02"),
     "the server is shutting down: check who stopped it and whether a failover is under way"),
    ("dns", ("could not translate host name", "name or service not known",
             "temporary failure in name resolution", "nodename nor servname"), (),
     "the host name does not resolve: check DNS and the host in the target"),
    ("refused", ("connection refused",), (),
     "nothing listens on that address and port: is the server (or pgbouncer) running, "
     "and listen_addresses / the port right?"),
    ("tls", ("ssl", "tls", "certificate"), (),
     "TLS negotiation failed: check sslmode and the server's certificate and ssl setting"),
    ("timeout", ("timeout expired", "timed out", "connection timeout"), (),
     "no answer within connect_timeout: a firewall dropping packets, a hung server or a "
     "saturated network; check the route and the server's load"),
    ("unreachable", ("no route to host", "network is unreachable"), (),
     "no route to the host: check the network path and security groups"),
]


def classify_connect_error(exc: BaseException) -> tuple[str, str | None, str]:
    """Return (cause, sqlstate, what to check next) for a failed connection attempt."""
    sqlstate = getattr(exc, "sqlstate", None)
    text = str(exc).lower()
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return "timeout", sqlstate, dict((c[0], c[3]) for c in _CAUSES)["timeout"]
    for cause, needles, states, advice in _CAUSES:
        if (sqlstate and sqlstate in states) or any(n in text for n in needles):
            return cause, sqlstate, advice
    return "unknown", sqlstate, "read the error message and the server log"


def connect(
    target: Target,
    application_name: str,
    timeouts: Timeouts = Timeouts(),
    read_only: bool = True,
) -> psycopg.Connection[dict[str, Any]]:
    """Open one connection with our safety settings, or raise a classified ConnectError."""
    try:
        conn = psycopg.connect(
            target.conninfo,
            connect_timeout=max(1, round(timeouts.connect_s)),
            application_name=application_name,
            autocommit=True,
            row_factory=dict_row,
        )
    except psycopg.Error as exc:
        cause, sqlstate, advice = classify_connect_error(exc)
        message = mask_text(str(exc).strip(), target.password)
        raise ConnectError(
            f"cannot connect to {target.masked()} ({cause}): {message}. Next: {advice}",
            cause=cause,
            sqlstate=sqlstate,
        ) from None
    if target.pgbouncer:
        conn.prepare_threshold = None  # transaction pooling cannot keep prepared statements
    with conn.cursor() as cur:
        cur.execute(queries.tag(
            "SELECT set_config('statement_timeout', %s, false),"
            " set_config('lock_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false),"
            " set_config('default_transaction_read_only', %s, false)").encode(),
            (
                f"{timeouts.statement_ms}ms",
                f"{timeouts.lock_ms}ms",
                f"{max(timeouts.statement_ms * 6, 60000)}ms",
                "on" if read_only else "off",
            ),
        )
    return conn


@dataclass
class ServerFacts:
    """What the runbooks need to know about the server, probed once per session."""

    version_num: int
    version: str
    current_user: str
    database: str
    is_superuser: bool
    in_recovery: bool
    roles: set[str] = field(default_factory=set)
    extensions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    def has_role(self, role: str) -> bool:
        """Superusers hold every privilege; others need membership of the predefined role."""
        return self.is_superuser or role in self.roles

    @property
    def sees_all_sessions(self) -> bool:
        return self.has_role("pg_read_all_stats") or self.has_role("pg_monitor")


class Session:
    """A diagnostic session: queries return DataFrames; failures degrade to SkipStep."""

    def __init__(
        self,
        target: Target,
        application_name: str = "runbooks",
        timeouts: Timeouts = Timeouts(),
        read_only: bool = True,
    ) -> None:
        self.target = target
        self.timeouts = timeouts
        started = time.monotonic()
        self.conn = connect(target, application_name, timeouts, read_only)
        self.connect_s = time.monotonic() - started
        self.facts = self._probe_facts()

    def _probe_facts(self) -> ServerFacts:
        row = self.row(queries.get("server_facts"))
        ext = self.frame(queries.get("extensions"))
        settings = self.frame(queries.get("settings"))
        return ServerFacts(
            version_num=int(row["version_num"]),
            version=str(row["version"]),
            current_user=str(row["current_user"]),
            database=str(row["database"]),
            is_superuser=bool(row["is_superuser"]),
            in_recovery=bool(row["in_recovery"]),
            roles=set(row["roles"] or []),
            extensions=dict(zip(ext["extname"], ext["extversion"], strict=True)),
            settings=dict(zip(settings["name"], settings["setting"], strict=True)),
        )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn permission, timeout and lock problems into SkipStep with the reason."""
        try:
            yield
        except pgerrors.InsufficientPrivilege as exc:
            raise SkipStep(f"{what}: no permission ({exc.diag.message_primary}); "
                           "grant pg_monitor to the runbook's role") from None
        except pgerrors.LockNotAvailable:
            raise SkipStep(f"{what}: skipped: locked (waited lock_timeout "
                           f"{self.timeouts.lock_ms} ms behind another session's lock)") from None
        except pgerrors.QueryCanceled:
            raise SkipStep(f"{what}: cancelled by statement_timeout "
                           f"({self.timeouts.statement_ms} ms)") from None
        except pgerrors.UndefinedTable as exc:
            raise SkipStep(f"{what}: {exc.diag.message_primary}") from None
        except psycopg.OperationalError as exc:
            raise ProbeError(f"{what}: connection lost: "
                             f"{mask_text(str(exc), self.target.password)}") from None

    def frame(self, sql: str, params: dict[str, Any] | tuple[Any, ...] | None = None) -> pd.DataFrame:
        """Run one query and return its rows as a DataFrame (columns kept when empty)."""
        import pandas as pd  # imported late: the first connection attempt overlaps this import

        with self._guard(queries.name_of(sql)), self.conn.cursor() as cur:
            cur.execute(sql.encode(), params)
            rows = cur.fetchall()
            cols = [d.name for d in cur.description or []]
        return pd.DataFrame(rows, columns=cols)

    def row(self, sql: str, params: dict[str, Any] | tuple[Any, ...] | None = None) -> dict[str, Any]:
        df = self.frame(sql, params)
        if df.empty:
            raise ProbeError(f"{queries.name_of(sql)} returned no row")
        return {str(k): v for k, v in df.iloc[0].to_dict().items()}
