"""Headless runs: execute runbook notebooks with papermill and write the outputs of the contract.

Per runbook ``NAME.ipynb``, ``NAME.html`` (code hidden, see page.py) and ``NAME.findings.json``;
the runbooks of a run in parallel (parallel.py); then the run's own outputs (outputs.py).
Secrets never become notebook parameters: a literal DSN is handed to the kernel in an
environment variable and the notebook gets ``env:NAME`` (papermill stores every parameter in
the executed notebook: its issues #271, #416, #706).
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

from . import notebooks, outputs, page, parallel, registry, stories
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
            timeout_s: int, target_shown: str, control: parallel.Control | None = None,
            plotly_src: str | None = None) -> Outcome:
    """Runbook NAME's notebook executed into OUT, its HTML and findings JSON written whatever
    happened; PLOTLY_SRC is where its page finds plotly.js (default: written into OUT)."""
    started = time.monotonic()
    if control is not None:
        control.begin(name)
    nb_out, html_out = out / f"{name}.ipynb", out / f"{name}.html"
    findings_path = out / f"{name}.findings.json"
    findings_path.unlink(missing_ok=True)
    spec = registry.runbook(name)
    declared = {p.name for p in registry.parameters(spec)}
    given = {k: v for k, v in params.items() if k in declared}
    given["findings_path"] = str(findings_path)
    timeout_s, _ = parallel.limits(spec, given, timeout_s, 0)
    failure: StepError | None = None
    try:
        if control is not None and name in control.reasons:
            raise RuntimeError("stopped before it started")  # its files are still written
        notebooks.execute(path, nb_out, given, timeout_s)
    except Exception as exc:  # noqa: BLE001 - papermill raises many kinds; all end in the report
        failure = _failed_step(exc, nb_out, secrets)
        log.debug("runbook %s failed", name, exc_info=True)
    if control is not None and name in control.reasons:  # stopped: say why, not the symptom
        failure = control.reasons[name]
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
        nb = notebooks.sanitize(nb_out, secrets) if nb_out.exists() else {"cells": []}
        write_text(html_out, page.render(nb, data, plotly_src or page.write_assets(out)))
    except Exception as exc:  # noqa: BLE001 - the JSON must still say what happened
        data["errors"].append({"step": "html", "message": mask_text(str(exc), *secrets)})
        data["status"] = COULD_NOT_RUN
        write_json(findings_path, data)
    return outcome(name, data)


def outcome(name: str, data: dict[str, Any]) -> Outcome:
    """The runner's record of runbook NAME from its findings JSON DATA (its files named as in
    the single-target layout)."""
    counts = stories.counts(data["findings"])
    counts["skipped"] = len(data.get("skipped", []))
    return Outcome(name, data["status"], exit_code(data["status"]), data["duration_s"], counts,
                   data["errors"], {"notebook": f"{name}.ipynb", "html": f"{name}.html",
                                    "findings": f"{name}.findings.json"}, data["findings"])


def summary_of(outcomes: list[Outcome], started: dt.datetime, shown: str, label: str,
               out: Path) -> dict[str, Any]:
    """summary.json of one target's run (DESIGN.md section 3): its status is the worst of its
    runbooks', could not run when one could not."""
    return {
        "started_at": iso(started),
        "finished_at": iso(dt.datetime.now(dt.UTC)),
        "target": shown,
        "target_label": label,
        "out_dir": str(out),
        "status": status_of([o.status for o in outcomes if o.status != COULD_NOT_RUN],
                            sum(o.status == COULD_NOT_RUN for o in outcomes)),
        "exit_code": max((o.exit_code for o in outcomes), default=0),
        "runbooks": [{"name": o.name, "status": o.status, "exit_code": o.exit_code,
                      "duration_s": o.duration_s, "findings": o.counts,
                      "skipped": o.counts["skipped"], "errors": o.errors,
                      "files": o.files} for o in outcomes],
    }


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal, after every output was written."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("interrupted")
        self.summary = summary


def _password(spec: str) -> str:

    try:
        return resolve(spec).password
    except Exception:  # noqa: BLE001 - the notebook reports a bad target itself
        return ""


def described(spec: str) -> tuple[str, str]:
    """The target as shown (masked) and its label for metrics and history, resolved once."""
    try:
        target = resolve(spec)
    except Exception:  # noqa: BLE001 - the notebook reports a bad target itself
        return mask_text(spec), "unknown"
    return target.masked(), target.label()


def default_out_dir() -> Path:
    return Path("reports") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def check_names(names: list[str]) -> None:
    """Every name a runbook with a notebook; else a usage error naming the valid ones."""
    import difflib

    books = [b for b in notebooks.available() if b in registry.runbooks()]
    for n in names:
        if n not in books:
            if n == outputs.OVERVIEW:
                raise UsageError(f"{n} is not run by name: `runbooks run --all` (or two "
                                 "runbooks or more) writes it after the runbooks")
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
        params: dict[str, str] | None = None, options: outputs.Options | None = None,
        ) -> tuple[int, dict[str, Any]]:
    """Run runbooks NAMES against TARGET in parallel; write every output; return (exit
    status, summary). Names and parameters are checked before any kernel starts (UsageError:
    nothing ran). Interrupted (after every output is written) on Ctrl-C or SIGTERM."""
    opts = options or outputs.Options()
    check_names(names)
    typed: dict[str, Any] = dict(validate(names, params or {}))
    typed["target"] = typed.get("target", target)
    typed = absolute_paths(typed)
    out = (out or default_out_dir()).resolve()  # the kernel runs with cwd=out: no relative paths
    with claimed(out):
        safe, env = hide_secrets(typed)
        secrets = [_password(v) for k, v in typed.items()
                   if (k in SECRET_PARAMS or k.endswith("_target")) and isinstance(v, str)]
        shown, label = described(str(typed["target"]))
        started = dt.datetime.now(dt.UTC)
        with _environ({**env, "RUNBOOKS_HEADLESS": "1"}):
            books = notebooks.available()

            def start(name: str, control: parallel.Control) -> Outcome:
                return run_one(name, books[name], out, safe, secrets, opts.cell_timeout_s,
                               shown, control)

            outcomes, interrupted = parallel.run(names, out, safe, typed, start,
                                                 opts.cell_timeout_s, opts.runbook_timeout_s,
                                                 opts.jobs)
        summary = summary_of(outcomes, started, shown, label, out)
        code = int(summary["exit_code"])
        if interrupted:
            summary["interrupted"] = True
        outputs.finish(out, summary, opts, secrets, interrupted)
    if interrupted:  # every output written: now stop, as the signal asked
        raise Interrupted(summary)
    return code, summary
