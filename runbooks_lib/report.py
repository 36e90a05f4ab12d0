"""Headless runs: execute runbook notebooks with papermill and write the outputs of the contract.

Per runbook ``NAME.ipynb``, ``NAME.html`` (code hidden, plotly.js embedded once so charts work
offline) and ``NAME.findings.json``; for the run ``summary.json``, ``alerts.json`` and
``metrics.prom`` (Prometheus textfile format). Secrets never become notebook parameters: a
literal DSN is handed to the kernel in an environment variable and the notebook gets ``env:NAME``
(papermill stores every parameter in the executed notebook: its issues #271, #416, #706).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import page, registry
from .findings import (
    COULD_NOT_RUN,
    Report,
    StepError,
    exit_code,
    iso,
    load,
    status_of,
    write_json,
    write_text,
)
from .params import UsageError, validate
from .target import mask_text, resolve

log = logging.getLogger("runbooks_lib")

SECRET_PARAMS = ("target", "admin_target", "restore_target")
# parameters naming files or directories (log_source: a path or glob, or auto)
PATH_PARAMS = ("log_source", "audit_log", "backup_dir", "encryption_key_file", "bindir")


def notebook_dir() -> Path:
    env = os.environ.get("RUNBOOKS_NOTEBOOK_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(notebook_dir().glob("*.ipynb"))}


def kernel_manager_class() -> type:
    """Kernels over IPC (Unix sockets in a private directory): no "running over TCP without
    encryption" warning per run, and no port collisions between kernels started at once."""
    import subprocess
    import tempfile

    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:
            return str(Path(tempfile.mkdtemp(prefix="runbooks-kernel-")) / "k")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            # the kernel's own stderr is no result: cell errors come back through the protocol,
            # and libzmq or the kernel's logger print tracebacks while it is torn down
            kw["stderr"] = kw["stdout"] = subprocess.DEVNULL  # its output is in the protocol
            await AsyncKernelManager._async_launch_kernel(self, kernel_cmd, **kw)

    return IPCKernelManager


@contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def absolute_paths(params: dict[str, Any]) -> dict[str, Any]:
    """Relative paths made absolute against our working directory: the kernel runs in --out.

    >>> absolute_paths({"bindir": "pg/bin"})["bindir"] == os.path.join(os.getcwd(), "pg/bin")
    True
    >>> absolute_paths({"log_source": "auto", "jobs": 2, "backup_dir": "/srv/b"})
    {'log_source': 'auto', 'jobs': 2, 'backup_dir': '/srv/b'}
    """
    out = dict(params)
    for key in PATH_PARAMS:
        value = out.get(key)
        if isinstance(value, str) and value and value != "auto":
            out[key] = os.path.abspath(os.path.expanduser(value))
    return out


def hide_secrets(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Replace literal DSNs in target-like parameters by env:RUNBOOKS_<NAME> references."""
    out, env = dict(params), {}
    for key, value in params.items():
        if (key in SECRET_PARAMS or key.endswith("_target")) and isinstance(value, str) \
                and value and not value.startswith(("env:", "service:")):
            var = f"RUNBOOKS_{key.upper()}"
            env[var] = value
            out[key] = f"env:{var}"
    return out, env


@dataclass
class Outcome:
    name: str
    status: str
    exit_code: int
    duration_s: float
    counts: dict[str, int]
    errors: list[dict[str, str]]
    files: dict[str, str]
    findings: list[dict[str, Any]] = field(default_factory=list)


def _heading_before(nb_path: Path, exec_count: int) -> str:
    """The markdown heading above the code cell that ran as EXEC_COUNT: the step's name."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been saved
        return ""
    heading = ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [ln for ln in cell.source.splitlines() if ln.startswith("#")]
            heading = lines[0].lstrip("# ").strip() if lines else heading
        elif cell.get("execution_count") == exec_count:
            return heading
    return ""


def _failed_step(exc: BaseException, nb_path: Path, secrets: list[str]) -> StepError:
    """The failed cell, named by its step heading, and the error: masked, no traceback."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    exec_count = getattr(exc, "exec_count", None)
    where = "notebook"
    if exec_count is not None:
        heading = _heading_before(nb_path, exec_count)
        where = f"cell {exec_count}" + (f" ({heading})" if heading else "")
    return StepError(mask_text(where, *secrets), mask_text(f"{ename}: {evalue}", *secrets)[:2000])


def run_one(name: str, path: Path, out: Path, params: dict[str, Any], secrets: list[str],
            timeout_s: int, target_shown: str) -> Outcome:
    import papermill

    started = time.monotonic()
    nb_out, html_out = out / f"{name}.ipynb", out / f"{name}.html"
    findings_path = out / f"{name}.findings.json"
    findings_path.unlink(missing_ok=True)
    declared = {p.name for p in registry.parameters(registry.runbook(name))}
    given = {k: v for k, v in params.items() if k in declared}
    given["findings_path"] = str(findings_path)
    if "drill_timeout_minutes" in declared:  # a drill's long phases have their own limit
        drill = registry.parameter("drill_timeout_minutes")
        timeout_s = max(timeout_s, int(float(given.get("drill_timeout_minutes",
                                                       drill.default)) * 60) + 120)
    failure: StepError | None = None
    interrupted = False
    try:
        papermill.execute_notebook(str(path), str(nb_out), parameters=given, kernel_name="python3",
                                   progress_bar=False, log_output=False,
                                   execution_timeout=timeout_s, cwd=str(out),
                                   kernel_manager_class=kernel_manager_class())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: what was found is still written, then we stop
        interrupted = True
        failure = StepError("interrupted", "stopped by a signal (Ctrl-C or SIGTERM) before it "
                            "finished: the findings above are what it found until then")
    except Exception as exc:  # noqa: BLE001 - papermill raises many kinds; all end in the report
        failure = _failed_step(exc, nb_out, secrets)
        log.debug("runbook %s failed", name, exc_info=True)
    if findings_path.exists():
        data = load(findings_path)
    else:
        data = Report(runbook=name, target=target_shown).to_dict()
        if failure is None:
            failure = StepError("notebook", f"{name} wrote no findings to {findings_path}: its "
                                "Runbook(...) must get findings_path from the parameters cell")
    if failure is not None:
        data.setdefault("errors", []).append({"step": failure.step, "message": failure.message})
    data["duration_s"] = round(time.monotonic() - started, 3)
    data["status"] = status_of([f["severity"] for f in data["findings"]], len(data["errors"]))
    write_json(findings_path, data)
    try:
        nb = sanitize_notebook(nb_out, secrets) if nb_out.exists() else {"cells": []}
        write_text(html_out, page.render(nb, data, page.write_assets(out)))
    except Exception as exc:  # noqa: BLE001 - the JSON must still say what happened
        data["errors"].append({"step": "html", "message": mask_text(str(exc), *secrets)})
        data["status"] = COULD_NOT_RUN
        write_json(findings_path, data)
    code = exit_code(data["status"])
    counts = {s: sum(1 for f in data["findings"] if f["severity"] == s)
              for s in ("critical", "warning", "info", "ok")}
    counts["skipped"] = len(data.get("skipped", []))
    outcome = Outcome(name, data["status"], code, data["duration_s"], counts, data["errors"],
                      {"notebook": nb_out.name, "html": html_out.name,
                       "findings": findings_path.name}, data["findings"])
    if interrupted:
        raise Interrupted(outcome)
    return outcome


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal, carrying the outcome of the runbook it stopped (written)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.name)
        self.outcome = outcome


def after_interrupt(typed: dict[str, Any]) -> None:
    """What a stopped restore drill left (decrypted staging, scratch databases, the marker
    table) removed now, rather than at the next drill: its kernel is gone."""
    from .drill import restore

    try:
        source = resolve(str(typed["target"]))
        server = restore.restore_server(str(typed.get("restore_target", "sandbox")),
                                        lambda _: None)
        restore.recover(restore.default_drill_dir(), None, server, source.conninfo, source.masked())
    except Exception:  # noqa: BLE001 - best effort: the next drill removes what is left
        log.debug("clean-up after an interrupt failed", exc_info=True)


def sanitize_notebook(nb_path: Path, secrets: list[str]) -> Any:
    """No traceback and no secret in the executed notebook: an error output becomes one masked
    line (the step and the error), and every text output is masked."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        clean = []
        for o in cell.get("outputs", []):
            if o.output_type == "error":
                o = nbformat.v4.new_output("stream", name="stderr",
                                           text=f"step failed: {o.ename}: {o.evalue}\n")
            if o.output_type == "stream":
                o.text = mask_text(o.text, *secrets)
            elif "data" in o:
                for mime in ("text/plain", "text/html", "text/markdown"):
                    if isinstance(o.data.get(mime), str):
                        o.data[mime] = mask_text(o.data[mime], *secrets)
            clean.append(o)
        cell.outputs = clean
    nbformat.write(nb, nb_path)
    return nb


def _password(spec: str) -> str:
    from .target import resolve

    try:
        return resolve(spec).password
    except Exception:  # noqa: BLE001 - the notebook reports a bad target itself
        return ""


def _shown(spec: str) -> str:
    from .target import resolve

    try:
        return resolve(spec).masked()
    except Exception:  # noqa: BLE001
        return mask_text(spec)


def default_out_dir() -> Path:
    return Path("reports") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def check_names(names: list[str]) -> None:
    """Every name a runbook with a notebook; else a usage error naming the valid ones."""
    import difflib

    books = available()
    for n in names:
        if n not in books or n not in registry.runbooks():
            close = difflib.get_close_matches(n, books, n=1)
            raise UsageError(f"unknown runbook {n}" + (f" (did you mean {close[0]}?)" if close
                                                       else "")
                             + f"; the runbooks: {', '.join(books)}")


@contextmanager
def claimed(out: Path) -> Iterator[Path]:
    """OUT created (or reused) for one run at a time: a second run into the same directory is
    refused, so no summary.json contradicts the findings beside it."""
    import fcntl

    try:
        out.mkdir(parents=True, exist_ok=True)
        fh = (out / ".runbooks.lock").open("a")
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise UsageError(f"--out {out}: another run is writing there; choose another "
                         "directory") from None
    try:
        yield out
    finally:
        fh.close()


def run(names: list[str], target: str, out: Path | None = None,
        params: dict[str, str] | None = None, timeout_s: int = 600) -> tuple[int, dict[str, Any]]:
    """Run runbooks NAMES against TARGET; write every output; return (exit status, summary).
    Names and parameters are checked before any kernel starts (UsageError: nothing ran)."""
    check_names(names)
    books = available()
    typed: dict[str, Any] = dict(validate(names, params or {}))
    typed["target"] = typed.get("target", target)
    typed = absolute_paths(typed)
    out = (out or default_out_dir()).resolve()  # the kernel runs with cwd=out: no relative paths
    with claimed(out):
        safe, env = hide_secrets(typed)
        secrets = [_password(v) for k, v in typed.items()
                   if (k in SECRET_PARAMS or k.endswith("_target")) and isinstance(v, str)]
        shown = _shown(str(typed["target"]))
        started = dt.datetime.now(dt.UTC)
        outcomes: list[Outcome] = []
        stopped: Interrupted | None = None
        with _environ({**env, "RUNBOOKS_HEADLESS": "1"}):
            for name in names:
                try:
                    outcomes.append(run_one(name, books[name], out, safe, secrets, timeout_s,
                                            shown))
                except Interrupted as exc:
                    outcomes.append(exc.outcome)
                    stopped = exc
                    if name == "restore_drill":
                        after_interrupt(typed)
                    break
        code = max((o.exit_code for o in outcomes), default=0)
        summary = {
            "started_at": iso(started),
            "finished_at": iso(dt.datetime.now(dt.UTC)),
            "target": shown,
            "out_dir": str(out),
            "status": status_of([o.status for o in outcomes if o.status != COULD_NOT_RUN],
                                sum(o.status == COULD_NOT_RUN for o in outcomes)),
            "exit_code": code,
            "runbooks": [{"name": o.name, "status": o.status, "exit_code": o.exit_code,
                          "duration_s": o.duration_s, "findings": o.counts,
                          "skipped": o.counts["skipped"], "errors": o.errors,
                          "files": o.files} for o in outcomes],
        }
        write_json(out / "summary.json", summary)
        write_alerts(out, outcomes, shown)
        write_metrics(out, outcomes)
    if stopped is not None:  # every output written: now stop, as the signal asked
        raise stopped
    return code, summary


def write_alerts(out: Path, outcomes: list[Outcome], target: str) -> None:
    """alerts.json: one entry per warning or critical finding, ready for a webhook."""
    alerts = [{"runbook": o.name, "target": target, "severity": f["severity"],
               "check": f["check"], "title": f["title"], "remediation": f.get("remediation", "")}
              for o in outcomes for f in o.findings if f["severity"] in ("warning", "critical")]
    alerts += [{"runbook": o.name, "target": target, "severity": "critical", "check": "runbook",
                "title": f"runbook could not run: {e['step']}: {e['message']}", "remediation": ""}
               for o in outcomes for e in o.errors]
    write_json(out / "alerts.json", alerts)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def write_metrics(out: Path, outcomes: list[Outcome]) -> None:
    """metrics.prom in the Prometheus textfile format (node_exporter's textfile collector)."""
    lines = ["# HELP pg_runbooks_exit_code Exit status of the runbook (0 ok, 1 warning, "
             "2 critical, 3 could not run).",
             "# TYPE pg_runbooks_exit_code gauge"]
    lines += [f'pg_runbooks_exit_code{{runbook="{o.name}"}} {o.exit_code}' for o in outcomes]
    lines += ["# HELP pg_runbooks_findings Findings by severity.", "# TYPE pg_runbooks_findings gauge"]
    lines += [f'pg_runbooks_findings{{runbook="{o.name}",severity="{s}"}} {n}'
              for o in outcomes for s, n in o.counts.items()]
    lines += ["# HELP pg_runbooks_metric The value each check measured.",
              "# TYPE pg_runbooks_metric gauge"]
    for o in outcomes:
        for f in o.findings:
            m = f.get("metric") or {}
            if isinstance(m.get("value"), int | float) and not isinstance(m.get("value"), bool):
                lines.append(f'pg_runbooks_metric{{runbook="{o.name}",check="{_label(f["check"])}",'
                             f'name="{_label(m["name"])}"}} {m["value"]}')
    lines += ["# HELP pg_runbooks_duration_seconds Wall time of the runbook run.",
              "# TYPE pg_runbooks_duration_seconds gauge"]
    lines += [f'pg_runbooks_duration_seconds{{runbook="{o.name}"}} {o.duration_s}'
              for o in outcomes]
    write_text(out / "metrics.prom", "\n".join(lines) + "\n")
