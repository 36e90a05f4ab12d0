"""The notebook's side of a runbook run: one object that holds the target, the diagnostic
session and the findings, and writes the findings JSON after every step.

A step is a function decorated with `step`: whatever happens inside it (a missing privilege, an
unreachable server, a bug), the notebook goes on, the reason lands in the findings JSON under
``skipped`` or ``errors``, and no traceback reaches the report.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from . import present
from .errors import ConnectError, RunbookError, SkipStep, TargetError
from .findings import Finding, Report, Skipped, StepError
from .session import Session, Timeouts
from .target import DEFAULT_TARGET, Target, mask_text, resolve

log = logging.getLogger("runbooks_lib")

P = ParamSpec("P")
R = TypeVar("R")


class _Attempt:
    """A connection attempt running in a thread, started when the Runbook is created so that the
    network wait overlaps the notebook's imports (pandas alone takes 0.3 s)."""

    def __init__(self, connect: Callable[[], Session]) -> None:
        self.started = time.monotonic()
        self.seconds = 0.0
        self.session: Session | None = None
        self.error: ConnectError | None = None
        self._connect = connect
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.session = self._connect()
        except ConnectError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - reported like any failed attempt
            self.error = ConnectError(mask_text(f"{type(exc).__name__}: {exc}"))
        # a connection's own set-up time, without the server-facts queries that follow it
        self.seconds = self.session.connect_s if self.session else time.monotonic() - self.started

    def wait(self) -> _Attempt:
        self._thread.join()
        return self


class Runbook:
    """State shared by the steps of one runbook run."""

    def __init__(
        self,
        name: str,
        target: str = DEFAULT_TARGET,
        admin_target: str = "",
        findings_path: str = "",
        timeouts: Timeouts = Timeouts(),
        audit_log: str = "",
    ) -> None:
        self.name = name
        self.timeouts = timeouts
        self.audit_log = audit_log
        self.target: Target | None = None
        self.admin: Target | None = None
        self._session: Session | None = None
        self.unavailable: str | None = None  # why there is no session, once we know
        self.data: dict[str, Any] = {}  # snapshots shared between steps
        path = Path(findings_path) if findings_path else None
        self.report = Report(runbook=name, target=mask_text(target or DEFAULT_TARGET), path=path)
        try:
            self.target = resolve(target)
            self.report.target = self.target.masked()
        except TargetError as exc:  # a configuration problem: the runbook could not run
            self.unavailable = str(exc)
            self.error("target", str(exc))
        if admin_target:
            try:
                self.admin = resolve(admin_target)
            except TargetError as exc:
                self.skip("admin_target", str(exc))
        self._first: _Attempt | None = None
        if self.target is not None:
            target_ = self.target
            self._first = _Attempt(lambda: self.open_session(target_))
        self.report.write()

    @property
    def secrets(self) -> list[str]:
        return [t.password for t in (self.target, self.admin) if t is not None]

    def mask(self, text: str) -> str:
        return mask_text(text, *self.secrets)

    # -- the session -------------------------------------------------------------------------

    def open_session(self, target: Target) -> Session:
        s = Session(target, application_name=f"runbooks/{self.name}", timeouts=self.timeouts)
        self.report.server_version = s.facts.version
        return s

    def attempt(self, target: Target) -> _Attempt:
        """One timed connection attempt; the first one on the main target is already under way."""
        if target is self.target and self._first is not None:
            first, self._first = self._first, None
            return first.wait()
        return _Attempt(lambda: self.open_session(target)).wait()

    def use(self, session: Session) -> None:
        """Make SESSION the one the following steps use (e.g. the admin session)."""
        self._session = session
        self.report.server_version = session.facts.version
        self.unavailable = None

    @property
    def session(self) -> Session:
        """The diagnostic session, connected on first use; SkipStep when the server is out of reach."""
        if self._session is not None:
            return self._session
        if self.unavailable:
            raise SkipStep(f"no connection: {self.unavailable}")
        assert self.target is not None
        first = self.attempt(self.target)
        if first.session is not None:
            self.use(first.session)
            return first.session
        exc = first.error
        assert exc is not None
        if exc.cause == "too_many_clients" and self.admin is not None:
            self.use(self.open_session(self.admin))
            self.add(Finding("too_many_clients", "critical",
                             "Connection slots exhausted (53300): diagnosing through admin_target",
                             self.mask(str(exc)), remediation="see who holds the slots below"))
        else:
            self.unavailable = str(exc)
            self.add(Finding("reachability", "critical", f"Cannot connect ({exc.cause})",
                             self.mask(str(exc))))
            raise SkipStep(f"no connection: {exc.cause}")
        assert self._session is not None
        return self._session

    def session_or_none(self) -> Session | None:
        """The session when the server can be reached, else None: for steps that also work
        without it (a log read from files)."""
        try:
            return self.session
        except SkipStep:
            return None

    def cached(self, key: str, compute: Callable[[], R]) -> R:
        """COMPUTE once per run and share it between steps; a SkipStep is remembered too, so a
        slow query that timed out is not retried by every step that needs it."""
        if key not in self.data:
            try:
                self.data[key] = compute()
            except SkipStep as exc:
                self.data[key] = exc
        value = self.data[key]
        if isinstance(value, SkipStep):
            raise SkipStep(str(value))
        result: R = value
        return result

    def close(self) -> None:
        if self._first is not None:  # an attempt no step used
            first, self._first = self._first.wait(), None
            if first.session is not None:
                first.session.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- recording -----------------------------------------------------------------------------

    def add(self, findings: Finding | list[Finding]) -> list[Finding]:
        batch = [findings] if isinstance(findings, Finding) else list(findings)
        for f in batch:
            f.title, f.detail = self.mask(f.title), self.mask(f.detail)
        self.report.findings.extend(batch)
        self.report.write()
        present.show_findings(batch)
        return batch

    def skip(self, check: str, reason: str) -> None:
        s = Skipped(check, self.mask(reason))
        self.report.skipped.append(s)
        self.report.write()
        present.show_skipped(s)

    def error(self, step: str, message: str) -> None:
        self.report.errors.append(StepError(step, self.mask(message)))
        self.report.write()
        present.show_error(step, self.mask(message))

    def finish(self) -> dict[str, Any]:
        """Close the session, write the JSON one last time and show the verdict."""
        self.close()
        self.report.write()
        data = self.report.to_dict()
        counts = {s: sum(1 for f in self.report.findings if f.severity == s)
                  for s in ("critical", "warning", "info")}
        present.show_text(f"{self.name}: status {data['status']} "
                          f"({counts['critical']} critical, {counts['warning']} warning, "
                          f"{counts['info']} info, {len(self.report.skipped)} skipped, "
                          f"{len(self.report.errors)} errors)")
        return data


def step(name: str) -> Callable[[Callable[P, R]], Callable[P, R | None]]:
    """Run a runbook step so that nothing it raises stops the notebook.

    The decorated function takes the Runbook as first argument. SkipStep becomes a "skipped"
    entry, any other exception an error entry with a masked message; the findings JSON is
    written either way.
    """

    def deco(fn: Callable[P, R]) -> Callable[P, R | None]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
            rb = args[0]
            assert isinstance(rb, Runbook)
            try:
                return fn(*args, **kwargs)
            except SkipStep as exc:
                rb.skip(name, str(exc))
            except RunbookError as exc:
                rb.error(name, str(exc))
            except Exception as exc:  # noqa: BLE001 - a runbook must finish and say what failed
                log.debug("step %s failed", name, exc_info=True)
                rb.error(name, f"{type(exc).__name__}: {exc}")
            finally:
                rb.report.write()
            return None

        return wrapper

    return deco


def default_audit_log() -> Path:
    """Where actions are recorded unless a parameter says otherwise."""
    env = os.environ.get("RUNBOOKS_AUDIT_LOG")
    if env:
        return Path(env)
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "pg-runbooks" / "audit.jsonl"
