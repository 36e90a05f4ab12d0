"""Parameters: the ones every runbook shares, and validation of given values against the
registry before anything runs (a typo such as `allow_action=true` must never run silently).

>>> validate(["connectivity"], {"allow_action": "true"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
runbooks_lib.params.UsageError: unknown parameter allow_action (did you mean allow_actions?)...; the ...
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .registry import Param, Value

EXIT_USAGE = 64  # sysexits.h EX_USAGE: bad arguments, nothing ran

TARGET = Param("target", str, "env:DATABASE_URL",
               "server to diagnose: env:VAR, service:NAME or a DSN handed over by the runner")
ADMIN_TARGET = Param("admin_target", str, "",
                     "reserved or superuser target used when normal slots are exhausted")
CONNECT_TIMEOUT = Param("connect_timeout_s", float, 5.0,
                        "connection budget shared by all attempts", "s", 0.5, 300)
STATEMENT_TIMEOUT = Param("statement_timeout_ms", int, 5000, "per diagnostic query", "ms", 100,
                          600_000)
LOCK_TIMEOUT = Param("lock_timeout_ms", int, 1000, "never wait longer behind a DDL lock", "ms",
                     10, 60_000)
CONNECT_ATTEMPTS = Param("connect_attempts", int, 3,
                         "attempts before the server counts as unreachable (alert after 3)",
                         "", 1, 10)
CONNECT_WARNING = Param("connect_warning_s", float, 1.0, "a slower connection set-up warns", "s",
                        0, 300)
ALLOW_ACTIONS = Param("allow_actions", bool, False,
                      "actions only preview unless true (then they run and are audited)")
AUDIT_LOG = Param("audit_log", str, "",
                  "JSONL file of actions; empty means RUNBOOKS_AUDIT_LOG or the state directory")
FINDINGS_PATH = Param("findings_path", str, "",
                      "where the findings JSON is written (set by runbooks run)")
SAMPLE_SECONDS = Param("sample_seconds", float, 10.0,
                       "the window: two snapshots this far apart", "s", 0, 3600)
LOG_SOURCE = Param("log_source", str, "auto",
                   "server log: auto (through SQL) or a path or glob of csvlog, jsonlog or "
                   "stderr files")
LOG_LINE_PREFIX = Param("log_line_prefix", str, "",
                        "stderr files: the prefix they were written with (empty: the server setting)")

CONNECTION = (TARGET, ADMIN_TARGET, CONNECT_ATTEMPTS, CONNECT_WARNING, CONNECT_TIMEOUT,
              STATEMENT_TIMEOUT, LOCK_TIMEOUT)
RECORDING = (AUDIT_LOG, FINDINGS_PATH)


class UsageError(ValueError):
    """A parameter the user gave is unknown, of the wrong type or out of range: exit 64."""


def declared(names: list[str]) -> dict[str, Param]:
    """The parameters of runbooks NAMES, by name."""
    from . import registry

    out: dict[str, Param] = {}
    for name in names:
        for p in registry.parameters(registry.runbook(name)):
            out.setdefault(p.name, p)
    return out


def misordered(values: Mapping[str, Any]) -> list[str]:
    """Each X_warning above its X_critical (X_warning_s and X_critical_s alike): the warning
    level is the lower one for every threshold pair the runbooks declare."""
    problems = []
    for name, value in values.items():
        if "_warning" not in name:
            continue
        other = name.replace("_warning", "_critical")
        if other in values and isinstance(value, int | float) and value > values[other]:
            problems.append(f"{name}={value!r} is above {other}={values[other]!r}: the warning "
                            "level must not be above the critical one")
    return problems


def validate(names: list[str], given: Mapping[str, str]) -> dict[str, Value]:
    """-p KEY=VALUE pairs typed and checked against the parameters of runbooks NAMES."""
    known = declared(names)
    out: dict[str, Value] = {}
    problems: list[str] = []
    for key, text in given.items():
        p = known.get(key)
        if p is None:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"unknown parameter {key}{hint}; the parameters of "
                            f"{', '.join(names)}: {', '.join(sorted(known))}")
            continue
        try:
            out[key] = p.parse(text)
        except ValueError as exc:
            problems.append(str(exc))
    if not problems:
        problems = misordered({**{n: p.default for n, p in known.items()}, **out})
    if problems:
        raise UsageError("; ".join(problems))
    return out


def from_namespace(params: list[Param], namespace: Mapping[str, Any]) -> dict[str, Value]:
    """The values of PARAMS in a notebook's namespace (its parameters cell, papermill's
    injection), checked; a missing one takes its default."""
    out: dict[str, Value] = {}
    problems: list[str] = []
    for p in params:
        try:
            out[p.name] = p.check(namespace.get(p.name, p.default))
        except ValueError as exc:
            problems.append(str(exc))
    problems = problems or misordered(out)
    if problems:
        raise UsageError("; ".join(problems))
    return out
