"""The notebook's side of a runbook run: one object that holds the target, the diagnostic
session and the findings, and writes the findings JSON after every step.

A notebook cell runs one step (`rb.step("usage")`): the step's declared checks read the
snapshots of their probes (fetched once per run) and return findings; whatever happens inside
one (a missing privilege, an unreachable server, a bug), the notebook goes on, the reason lands
in the findings JSON under ``skipped`` or ``errors``, and no traceback reaches the report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import present
from .errors import ConnectError, RunbookError, SkipStep, TargetError
from .findings import Finding, Report, Skipped, StepError
from .session import Session, Timeouts
from .target import DEFAULT_TARGET, Target, mask_text, resolve

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from .registry import RunbookSpec

log = logging.getLogger("runbooks_lib")



class _Attempt:
    """A connection attempt running in a thread, started when the Runbook is created so that the
    network wait overlaps the notebook's imports (pandas alone takes 0.3 s)."""

    def __init__(self, connect: Callable[[], Session]) -> None:
        self.started = time.monotonic()
        self.seconds = 0.0
        self.session: Session | None = None
        self.error: ConnectError | None = None
        self.finished = self.started
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
        self.finished = time.monotonic()

    def stale(self, after_s: float = 1.0) -> bool:
        """A failed attempt that ended a while ago says nothing about the server now."""
        return self.session is None and time.monotonic() - self.finished > after_s

    def wait(self) -> _Attempt:
        self._thread.join()
        return self


WINDOW_PARAMS = ("sample_seconds", "since")  # shown at the top of the report


class Runbook:
    """State of one runbook run: the target, the diagnostic session, the probes' snapshots
    (each fetched once) and the findings, written to the findings JSON after every change."""

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
        self.snapshots: dict[str, Any] = {}  # probe name -> snapshot (or the SkipStep it raised)
        self.params: dict[str, Any] = {}
        self.confirmations: list[Any] = []  # actions waiting for a typed confirmation
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

    @classmethod
    def start(cls, name: str, namespace: Mapping[str, Any]) -> Runbook:
        """The run of runbook NAME with the parameters in NAMESPACE (the notebook's globals):
        the connection attempt starts first, then the checks are loaded and every parameter
        is checked against the registry (a bad value is an error: the runbook could not run)."""
        from . import params as P
        from . import registry

        try:
            base = P.from_namespace([*P.CONNECTION, *P.RECORDING], namespace)
        except P.UsageError as exc:
            rb = cls(name, target="", findings_path=str(namespace.get("findings_path", "")))
            rb.error("parameters", str(exc))
            return rb
        rb = cls(name, target=str(base["target"]), admin_target=str(base["admin_target"]),
                 findings_path=str(base["findings_path"]), audit_log=str(base["audit_log"]),
                 timeouts=Timeouts(float(base["connect_timeout_s"]),
                                   int(base["statement_timeout_ms"]),
                                   int(base["lock_timeout_ms"])))
        rb.spec = registry.runbook(name)  # imports the checks while the first attempt runs
        try:
            rb.params = P.from_namespace(registry.parameters(rb.spec), namespace)
        except P.UsageError as exc:
            rb.error("parameters", str(exc))
        rb.report.window = rb.window()
        return rb

    spec: RunbookSpec | None = None

    def window(self) -> dict[str, Any]:
        return {k: self.params[k] for k in WINDOW_PARAMS if self.params.get(k) not in (None, "")}

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
        """One timed connection attempt. The first one on the main target is already under
        way; once it has failed and gone stale (the server may be back), a new one is made."""
        if target is self.target and self._first is not None:
            first, self._first = self._first.wait(), None
            if first.session is not None or not first.stale():
                return first
        return _Attempt(lambda: self.open_session(target)).wait()

    def use(self, session: Session) -> None:
        """Make SESSION the one the following probes use (e.g. the admin session)."""
        self._session = session
        self.report.server_version = session.facts.version
        self.unavailable = None

    @property
    def session(self) -> Session:
        """The diagnostic session, opened by the connection probe; SkipStep when the server is
        out of reach (the reachability check says why)."""
        if self._session is not None:
            return self._session
        if self.unavailable:
            raise SkipStep(f"no connection: {self.unavailable}")
        from .probes import connection  # noqa: F401 - registers the probe

        self.snapshot("connection")
        if self._session is None:
            raise SkipStep(f"no connection: {self.unavailable or 'not connected'}")
        return self._session

    def session_or_none(self) -> Session | None:
        """The session when the server can be reached, else None: for probes that also work
        without it (a log read from files)."""
        try:
            return self.session
        except SkipStep:
            return None

    def close(self) -> None:
        if self._first is not None:  # an attempt no step used
            first, self._first = self._first.wait(), None
            if first.session is not None:
                first.session.close()
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- probes and checks ---------------------------------------------------------------------

    def snapshot(self, name: str) -> Any:
        """The snapshot of probe NAME, fetched once per run; a SkipStep is remembered too, so
        a slow query that timed out is not retried by every check that reads it."""
        from . import registry

        if name not in self.snapshots:
            probe = registry.PROBES[name]
            try:
                for dep in probe.needs:
                    self.snapshot(dep)
                if probe.requires != registry.Requires():
                    unmet = probe.requires.unmet(self.session.facts)
                    if unmet:
                        raise SkipStep(f"{name}: {unmet}")
                self.snapshots[name] = probe.fetch(self, self.params)
            except SkipStep as exc:
                self.snapshots[name] = exc
            except RunbookError as exc:  # reported once by the check that ran it; the checks
                # after it skip rather than run a failed phase again (a restore twice)
                self.snapshots[name] = SkipStep(f"{name} failed: {exc}")
                raise
        value = self.snapshots[name]
        if isinstance(value, SkipStep):
            raise SkipStep(str(value))
        return value

    def check(self, check_id: str) -> list[Finding]:
        """Run one declared check: its snapshots, its verdict, its evidence shown. Whatever
        happens (a missing privilege, an unreachable server, a bug), the run goes on and the
        reason lands in the findings JSON under skipped or errors."""
        from . import registry

        check = registry.CHECKS[check_id]
        name = check.short
        try:
            snaps = [self.snapshot(p) for p in check.probes]
            result = check.evaluate(*snaps, self.params)
            found = [f for f in result if isinstance(f, Finding)]
            for s in result:
                if isinstance(s, Skipped):
                    self.skip(s.check, s.reason)
            if check.figures is not None:
                self.report.figures.extend(check.figures(*snaps))
            if check.show is not None:
                check.show(*snaps, found, self.params)
            if check.act and snaps[-1] is not None:
                from . import actions

                actions.run(self, snaps[-1], bool(self.params.get("allow_actions", False)))
        except SkipStep as exc:
            self.skip(name, str(exc))
            return []
        except RunbookError as exc:
            self.error(name, str(exc))
            return []
        except Exception as exc:  # noqa: BLE001 - a runbook must finish and say what failed
            log.debug("check %s failed", check_id, exc_info=True)
            self.error(name, f"{type(exc).__name__}: {exc}")
            return []
        return self.add(found)

    def step(self, key: str) -> None:
        """Every check of the runbook's step KEY, in order (one notebook cell), shown in the
        step's section."""
        if self.spec is None or self.report.errors and self.report.errors[0].step == "parameters":
            return
        with self.section(key):
            self._step(key)
        self.changed()

    # -- what a person in JupyterLab adds (runbooks_lib.lab); headless these do nothing ------

    def section(self, key: str) -> AbstractContextManager[None]:
        """Where step KEY (or the verdict) is shown: the cell's output here; a section the
        control panel redraws in place in JupyterLab."""
        return nullcontext()

    def changed(self) -> None:
        """The report changed (the panel's findings table follows it in JupyterLab)."""

    def live(self) -> None:
        """Live views (connections, blocking tree, load) for a person in JupyterLab; a headless
        run shows nothing here."""

    def _step(self, key: str) -> None:
        assert self.spec is not None
        if not self.report.steps_done:  # in a nightly run beside a drill's backup: after it
            from .parallel import wait_for_go

            wait_for_go()
        for check_id in self.spec.step(key).checks:
            self.check(check_id)
        self.report.steps_done.append(key)
        self.report.write()

    def progress(self, label: str) -> present.Progress:
        """A progress bar for a long part of a step, shown in the step's section where a
        person is there."""
        return present.Progress(label)

    def run_all(self) -> dict[str, Any]:
        """Every step, then the verdict: the notebook without the notebook."""
        if self.spec is not None:
            for s in self.spec.steps:
                self.step(s.key)
        return self.finish()

    # -- recording -----------------------------------------------------------------------------

    def add(self, findings: Finding | list[Finding]) -> list[Finding]:
        batch = [findings] if isinstance(findings, Finding) else list(findings)
        for f in batch:
            f.title, f.detail = self.mask(f.title), self.mask(f.detail)
        first = len(self.report.findings)  # their indexes in the findings JSON: the anchors
        self.report.findings.extend(batch)
        self.report.write()
        present.show_findings(batch, first)
        self.changed()
        return batch

    def skip(self, check: str, reason: str) -> None:
        s = Skipped(check, self.mask(reason))
        self.report.skipped.append(s)
        self.report.write()
        present.show_skipped(s)
        self.changed()

    def error(self, step: str, message: str) -> None:
        self.report.errors.append(StepError(step, self.mask(message)))
        self.report.write()
        present.show_error(step, self.mask(message))
        self.changed()

    def finish(self) -> dict[str, Any]:
        """Close the session, write the JSON one last time and show the verdict (in its own
        section)."""
        self.close()
        self.report.write()
        data = self.report.to_dict()
        counts = {s: sum(1 for f in self.report.findings if f.severity == s)
                  for s in ("critical", "warning", "info")}
        text = (f"{self.name}: status {data['status']} "
                f"({counts['critical']} critical, {counts['warning']} warning, "
                f"{counts['info']} info, {len(self.report.skipped)} skipped, "
                f"{len(self.report.errors)} errors)")
        with self.section("verdict"):
            present.show_text(text)
        self.changed()
        return data
