"""The connection probe: up to N timed attempts within the connect budget, a DNS/TCP probe beside
them, and the session every later probe uses (through admin_target when slots are exhausted)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConnectError
from ..registry import Params, Probe, register_probe
from ..session import Session

if TYPE_CHECKING:
    import pandas as pd

    from ..runbook import Runbook

TRANSIENT = {"refused", "timeout", "too_many_clients", "starting_up", "shutting_down",
             "unknown", "unreachable", "dns"}


@dataclass(frozen=True)
class Reach:
    """What the attempts found: the attempts themselves, the session facts when one
    connected, or the classified failure and what the network probe adds to it."""

    attempts: pd.DataFrame
    host: str
    port: int
    version: str = ""
    where: str = ""  # host:port, TLS, user and database of the session
    cause: str = ""  # of the last failure, when none connected
    message: str = ""  # masked
    network: dict[str, Any] = field(default_factory=dict)
    admin: str = ""  # 'used', or why admin_target could not help

    @property
    def connected(self) -> bool:
        return not self.cause


def probe_network(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """DNS and TCP timings for the first host of the target (libpq's own attempts follow)."""
    out: dict[str, Any] = {"host": host, "port": port}
    if not host or host.startswith("/"):
        out["tcp"] = "unix socket"
        return out
    t0 = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        out["dns_error"] = str(exc)
        return out
    out["dns_ms"] = round((time.monotonic() - t0) * 1000, 1)
    out["addresses"] = sorted({str(i[4][0]) for i in infos})
    family, _, _, _, addr = infos[0]
    t0 = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(addr)
            out["tcp_ms"] = round((time.monotonic() - t0) * 1000, 1)
        except OSError as exc:
            out["tcp_error"] = exc.strerror or type(exc).__name__
    return out


def fetch(rb: Runbook, p: Params) -> Reach:
    import pandas as pd

    if rb.target is None:
        from ..errors import SkipStep

        raise SkipStep(f"no target: {rb.unavailable}")
    tp = rb.target.params
    host = tp.get("hostaddr") or tp.get("host", "localhost").split(",")[0]
    port = int((tp.get("port") or "5432").split(",")[0])
    budget = rb.timeouts.connect_s
    net: dict[str, Any] = {}
    # DNS and TCP are probed beside the first attempt, so the diagnosis costs no wall time
    prober = threading.Thread(target=lambda: net.update(probe_network(host, port, budget)),
                              daemon=True)
    prober.start()
    rows: list[dict[str, Any]] = []
    session: Session | None = None
    failure: ConnectError | None = None
    started: float | None = None
    attempts = int(p.get("connect_attempts", 3))
    for n in range(1, attempts + 1):
        done = rb.attempt(rb.target)
        started = done.started if started is None else started
        rows.append({"attempt": n, "ok": done.session is not None,
                     "seconds": round(done.seconds, 3),
                     "cause": done.error.cause if done.error else ""})
        if done.session is not None:
            session = done.session
            break
        failure = done.error
        assert failure is not None
        spent = time.monotonic() - started
        if failure.cause not in TRANSIENT or spent + 0.25 * n >= budget or n == attempts:
            break
        time.sleep(0.25 * n)
    tries = pd.DataFrame(rows)
    if session is not None:
        info = session.conn.info
        rb.use(session)
        f = session.facts
        return Reach(tries, host, port, f.version,
                     f"PostgreSQL {f.version} at {info.host}:{info.port}, "
                     f"{'TLS on' if info.pgconn.ssl_in_use else 'TLS off'}, as {f.current_user} "
                     f"on {f.database}")
    assert failure is not None and started is not None
    prober.join(timeout=max(0.0, budget - (time.monotonic() - started)))
    admin = ""
    if failure.cause == "too_many_clients":
        if rb.admin is None:
            admin = ("give admin_target (a superuser, or a role with "
                     "pg_use_reserved_connections on 16+) to see who holds the slots")
            rb.unavailable = "connection slots exhausted and no admin_target given"
        else:
            try:
                rb.use(rb.open_session(rb.admin))
                admin = "used"
            except ConnectError as exc:
                rb.unavailable = str(exc)
                admin = f"admin_target could not connect either: {rb.mask(str(exc))}"
    else:
        rb.unavailable = str(failure)
    return Reach(tries, host, port, cause=failure.cause, message=rb.mask(str(failure)),
                 network=dict(net), admin=admin)


CONNECTION = register_probe(Probe(
    "connection", fetch,
    "Timed connection attempts, classified failures, and the session the other probes use."))


def facts(rb: Runbook, p: Params) -> Any:
    """The server facts probed once when the session opened (version, roles, settings)."""
    return rb.session.facts


FACTS = register_probe(Probe("facts", facts, "Server version, role, privileges and settings.",
                             needs=("connection",)))


@dataclass(frozen=True)
class TargetInfo:
    """What the target itself says (no server needed): the Prisma pool size in its URL."""

    connection_limit: int | None


def target_info(rb: Runbook, p: Params) -> TargetInfo:
    return TargetInfo(rb.target.connection_limit if rb.target else None)


TARGET = register_probe(Probe("target", target_info, "The target's own parameters."))
