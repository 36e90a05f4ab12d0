"""Checks every runbook shares: can we connect at all (and how fast)."""

from __future__ import annotations

from typing import Any

from .. import present
from ..errors import TargetError
from ..findings import Finding, Metric, Skipped, records
from ..params import CONNECT_ATTEMPTS, CONNECT_WARNING
from ..probes import activity as _activity  # noqa: F401 - registers the activity probes
from ..probes.connection import Reach
from ..registry import Check, Params, register


def network_hint(net: dict[str, Any]) -> str:
    """What the DNS/TCP probe adds to libpq's message."""
    if "dns_error" in net:
        return f" DNS: {net['dns_error']}."
    if "tcp_ms" in net:
        return (f" TCP connect to {net['host']}:{net['port']} succeeded in {net['tcp_ms']} ms: "
                "something listens, so look at the server (or pooler) itself.")
    if "tcp_error" in net:
        return f" TCP connect to {net['host']}:{net['port']}: {net['tcp_error']}."
    return ""


def reachability(reach: Reach, p: Params) -> list[Finding | Skipped]:
    tries = reach.attempts
    if reach.connected:
        secs = float(tries["seconds"].iloc[-1])
        retried = len(tries) - 1
        sev = "warning" if secs > p["connect_warning_s"] else "ok"
        return [Finding(
            "reachability", sev,
            f"Server reachable in {secs * 1000:.0f} ms"
            + (f" after {retried} failed attempt(s)" if retried else ""),
            reach.where, metric=Metric("connect_seconds", round(secs, 3), p["connect_warning_s"]),
            evidence=records(tries),
            remediation="slow connection set-up: check DNS, TLS and authentication (LDAP/PAM) "
                        "latency, or put a pooler in front" if sev == "warning" else "")]
    if reach.cause == "too_many_clients":
        out: list[Finding | Skipped] = [Finding(
            "too_many_clients", "critical",
            "Too many clients: connection slots are exhausted (53300)"
            + (": diagnosing through admin_target" if reach.admin == "used" else ""),
            reach.message, metric=Metric("connection_usage_ratio", 1.0, None),
            evidence=records(tries),
            remediation="find who holds the slots (the next steps, through admin_target), "
                        "terminate leaked or idle-in-transaction sessions, lower pool sizes; "
                        "use one PrismaClient per process")]
        if reach.admin != "used":
            out.append(Skipped("admin_target", reach.admin))
        return out
    if reach.cause == "configuration":  # no server was asked: the runbook could not run
        raise TargetError(reach.message)
    cause = reach.cause.replace("_", " ")
    refused_us = reach.cause in ("authentication", "database_missing", "no_permission")
    return [Finding(
        "reachability", "critical",
        f"Cannot connect: {cause} ({reach.host}:{reach.port}): the server answers but refuses "
        "this target" if refused_us else
        f"Database unreachable after {len(tries)} attempt(s): {cause} ({reach.host}:{reach.port})",
        reach.message + network_hint(reach.network),
        metric=Metric("connect_failures", len(tries), p["connect_attempts"]),
        evidence=[*records(tries), *([{k: str(v) for k, v in reach.network.items()}]
                                     if reach.network else [])],
        remediation=reach.message.split("Next: ", 1)[1] if "Next: " in reach.message else
        "check that the server runs and accepts connections from here")]


def show_attempts(reach: Reach, found: list[Finding], p: Params) -> None:
    present.show_table(reach.attempts, "connection attempts")


REACHABILITY = register(Check(
    "shared.reachability", "Reachability",
    """Up to `connect_attempts` timed attempts within the connect budget. A failure is
    classified (DNS, refused, timeout, TLS, authentication, missing database, too many clients,
    starting up or shutting down) and says what to check next. Unreachable after the attempts
    is critical; exhausted slots continue through admin_target when it is given.""",
    reachability, probes=("connection",), params=(CONNECT_ATTEMPTS, CONNECT_WARNING),
    emits=("reachability", "too_many_clients"), show=show_attempts))
