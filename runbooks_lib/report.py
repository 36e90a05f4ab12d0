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
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import registry
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
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                _kernel_started(process.pid)

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


class Control:
    """What the runner decided about the runbooks running in its threads: the kernel each one
    runs in (so a hung or interrupted one can be stopped) and why it was stopped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kernels: dict[str, int] = {}  # runbook -> kernel pid (its own process group)
        self.started: dict[str, float] = {}
        self.reasons: dict[str, StepError] = {}

    def begin(self, name: str) -> None:
        with self.lock:
            _THREAD_RUNBOOK.name = name
            self.started[name] = time.monotonic()

    def stop(self, name: str, why: StepError) -> None:
        """Kill NAME's kernel and everything it started (pg_dump, psql): its thread's papermill
        sees a dead kernel within a second and the runbook is reported as could not run."""
        with self.lock:
            self.reasons.setdefault(name, why)
            pid = self.kernels.get(name)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


class _ThreadRunbook(threading.local):
    name = ""


_THREAD_RUNBOOK = _ThreadRunbook()
_CONTROL: Control | None = None  # the run in progress (one per process: see claimed())


def _kernel_started(pid: int) -> None:
    control, name = _CONTROL, _THREAD_RUNBOOK.name
    if control is not None and name:
        with control.lock:
            control.kernels[name] = pid
        if name in control.reasons:  # stopped while its kernel was starting
            control.stop(name, control.reasons[name])


def limits(spec: registry.RunbookSpec, given: dict[str, Any], cell_s: int,
           runbook_s: float) -> tuple[int, float]:
    """The time limits of one runbook (a cell, the whole run): a drill's long phases have
    their own, the spec's time_limit parameter in minutes."""
    if not spec.time_limit:
        return cell_s, runbook_s
    minutes = float(given.get(spec.time_limit, registry.parameter(spec.time_limit).default))
    return max(cell_s, int(minutes * 60) + 120), max(runbook_s, minutes * 60 + 300)


def run_one(name: str, path: Path, out: Path, params: dict[str, Any], secrets: list[str],
            timeout_s: int, target_shown: str, control: Control | None = None) -> Outcome:
    import papermill

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
    timeout_s, _ = limits(spec, given, timeout_s, 0)
    failure: StepError | None = None
    try:
        if control is not None and name in control.reasons:
            raise RuntimeError("stopped before it started")  # its files are still written
        papermill.execute_notebook(str(path), str(nb_out), parameters=given, kernel_name="python3",
                                   progress_bar=False, log_output=False,
                                   execution_timeout=timeout_s, cwd=str(out),
                                   kernel_manager_class=kernel_manager_class())
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
        nb = sanitize_notebook(nb_out, secrets) if nb_out.exists() else {"cells": []}
        write_text(html_out, render_html(nb, data))
    except Exception as exc:  # noqa: BLE001 - the JSON must still say what happened
        data["errors"].append({"step": "html", "message": mask_text(str(exc), *secrets)})
        data["status"] = COULD_NOT_RUN
        write_json(findings_path, data)
    counts = {s: sum(1 for f in data["findings"] if f["severity"] == s)
              for s in ("critical", "warning", "info", "ok")}
    counts["skipped"] = len(data.get("skipped", []))
    return Outcome(name, data["status"], exit_code(data["status"]), data["duration_s"], counts,
                   data["errors"], {"notebook": nb_out.name, "html": html_out.name,
                                    "findings": findings_path.name}, data["findings"])


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal, after every output was written."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("interrupted")
        self.summary = summary


INTERRUPTED = StepError("interrupted", "stopped by a signal (Ctrl-C or SIGTERM) before it "
                        "finished: the findings above are what it found until then")


def _passed(findings_path: Path, step: str) -> bool:
    try:
        return step in load(findings_path).get("steps_done", [])
    except (OSError, ValueError):
        return False


def run_parallel(names: list[str], out: Path, params: dict[str, Any], typed: dict[str, Any],
                 secrets: list[str], cell_s: int, runbook_s: float, jobs: int,
                 shown: str) -> tuple[list[Outcome], bool]:
    """NAMES in JOBS threads (each runbook's work is in its own kernel process), each stopped
    after its time limit; Ctrl-C or SIGTERM stops them all. A runbook that loads the source
    (the drill's backup) starts first and the others once it is past that step. Returns the
    outcomes in NAMES' order and whether the run was interrupted; every outcome's files are
    written."""
    global _CONTROL
    books = available()
    control = Control()
    _CONTROL = control
    specs = {n: registry.runbook(n) for n in names}
    deadline = {n: limits(specs[n], params, cell_s, runbook_s)[1] for n in names}
    loaders = [n for n in names if specs[n].loads_source_until]
    waiting = sorted((n for n in names if n not in loaders), key=lambda n: -deadline[n])
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="runbook")
    futures: dict[str, Future[Outcome]] = {}

    def submit(batch: list[str]) -> None:
        for n in batch:
            futures[n] = pool.submit(run_one, n, books[n], out, params, secrets, cell_s, shown,
                                     control)

    try:
        submit(loaders)
        while True:
            try:  # a signal may arrive anywhere in here: the next turn stops everything
                now = time.monotonic()
                for n, f in futures.items():
                    if f.done():
                        continue
                    begun = control.started.get(n)
                    if interrupted:
                        if not f.cancel():  # not started yet: cancelled; running: stopped
                            control.stop(n, INTERRUPTED)
                    elif begun is not None and now - begun > deadline[n]:
                        control.stop(n, StepError(
                            "timeout", f"stopped after {deadline[n]:.0f} s (the runbook time "
                            "limit): the findings above are what it found until then"))
                if waiting and not interrupted and all(
                        futures[n].done() or _passed(out / f"{n}.findings.json",
                                                     specs[n].loads_source_until)
                        for n in loaders):
                    submit(waiting)
                    waiting = []
                pending = [f for f in futures.values() if not f.done()]
                if not pending and (not waiting or interrupted):
                    break
                wait(pending, timeout=0.3, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                interrupted = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _CONTROL = None
    outcomes = []
    for n in names:  # one that never started is said too (could not run: interrupted)
        if n not in futures or futures[n].cancelled():
            control.reasons.setdefault(n, StepError(
                "interrupted", "stopped by a signal (Ctrl-C or SIGTERM) before it started"))
            outcomes.append(run_one(n, books[n], out, params, secrets, cell_s, shown, control))
        else:
            outcomes.append(futures[n].result())
    for n in names:
        if n in control.reasons and n in futures and not futures[n].cancelled():
            specs[n].stopped(typed)
    return outcomes, interrupted


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


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:0 auto;
padding:0 16px 40px;color:#222;line-height:1.45}
.rb-banner{padding:10px 12px;margin:12px 0;border:1px solid #ccc;border-radius:4px;background:#fafafa}
.rb-status-ok,.rb-status-info{color:#2e7d32}.rb-status-warning{color:#ef6c00}
.rb-status-critical,.rb-status-could-not-run{color:#c62828}
.rb-banner-could-not-run,.rb-banner-critical{border-color:#c62828;background:#fdecea}
table.rb-table{border-collapse:collapse;font-size:13px;margin:6px 0}
table.rb-table th,table.rb-table td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
table.rb-table th{background:#f0f0f0}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
code{background:#f0f0f0;padding:0 3px}
.rb-stderr{color:#c62828}
"""


def _output_html(output: Any) -> str:
    """One cell output. HTML outputs were escaped by present.py when they were made; text is
    escaped here. Widgets have no place in a static report: their text form is shown."""
    import html

    kind = output.get("output_type")
    if kind == "stream":
        cls = ' class="rb-stderr"' if output.get("name") == "stderr" else ""
        return f"<pre{cls}>{html.escape(output.get('text', ''))}</pre>"
    if kind == "error":
        return f'<pre class="rb-stderr">{html.escape(output.get("ename", ""))}: ' \
               f'{html.escape(output.get("evalue", ""))}</pre>'
    data = output.get("data", {})
    if "text/html" in data:
        value = data["text/html"]
        return "".join(value) if isinstance(value, list) else str(value)
    if "image/png" in data:
        return f'<img src="data:image/png;base64,{data["image/png"]}"/>'
    if "text/plain" in data:
        return f"<pre>{html.escape(str(data['text/plain']))}</pre>"
    return ""


def render_html(nb: Any, data: dict[str, Any]) -> str:
    """The executed notebook as a standalone page: the markdown explanations and the outputs,
    code hidden, plotly.js embedded once (offline, no CDN)."""
    import html
    from importlib import resources

    import mistune

    md = mistune.create_markdown(escape=True, plugins=["table", "strikethrough"])
    e = html.escape
    status = str(data.get("status", ""))
    css = status.replace(" ", "-")
    banner = (f'<div class="rb-banner rb-banner-{e(css)}"><b>{e(data["runbook"])}</b> on <code>'
              f'{e(data["target"])}</code>, PostgreSQL '
              f"{e(str(data.get('server_version') or '(not reached)'))}, started "
              f"{e(data['started_at'])}: "
              f'status <b class="rb-status-{e(css)}">{e(status)}</b>'
              + (f" ({len(data['skipped'])} check{'s' if len(data['skipped']) != 1 else ''} "
                 "skipped: see below)" if data.get("skipped") else "")
              + "".join(f"<br><b>could not run</b> {e(err['step'])}: {e(err['message'])}"
                        for err in data.get("errors", []))
              + "</div>")
    parts: list[str] = []
    for cell in nb.get("cells", []):
        if "papermill-error-cell-tag" in cell.get("metadata", {}).get("tags", []):
            continue  # papermill's raw-HTML pointer to the failed cell: the banner says it
        if cell.get("cell_type") == "markdown":
            parts.append(str(md(cell.get("source", ""))))
        elif cell.get("cell_type") == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            if "parameters" in tags or "injected-parameters" in tags:
                continue
            parts.extend(_output_html(o) for o in cell.get("outputs", []))
    body = "\n".join(p for p in parts if p)
    uses_plotly = "Plotly.newPlot" in body
    plotly_js = ""
    if uses_plotly:
        js = resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text("utf-8")
        plotly_js = f'<script type="text/javascript">{js}</script>'
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            f"<title>{e(data['runbook'])}: {e(status)}</title><style>{_CSS}</style>{plotly_js}"
            f"</head><body>{banner}{body}</body></html>\n")


def render_overview(nb: Any, summary: dict[str, Any]) -> str:
    """The overview notebook as a page: the run's status in the banner, no findings of its own."""
    data = {"runbook": "health overview", "target": summary.get("target", ""),
            "server_version": None, "started_at": summary.get("started_at", ""),
            "status": summary.get("status", ""), "findings": [], "skipped": [],
            "errors": []}
    return render_html(nb, data)


def _password(spec: str) -> str:

    try:
        return resolve(spec).password
    except Exception:  # noqa: BLE001 - the notebook reports a bad target itself
        return ""


def _label(spec: str) -> str:

    try:
        return resolve(spec).label()
    except Exception:  # noqa: BLE001
        return "unknown"


def _shown(spec: str) -> str:

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


@dataclass
class Options:
    """What a run does beyond the runbooks' own files (the scheduler's half)."""

    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    cell_timeout_s: int = 600  # one notebook cell
    runbook_timeout_s: float = 900  # one runbook, whole (a drill's own limit may be longer)
    metrics_file: Path | None = None  # a stable path for node_exporter's textfile collector
    pushgateway: str = ""
    alert_webhook: str = ""
    alert_least: str = "warning"  # the run status that sends the webhook
    keep_days: float = 30  # history and run directories kept under the reports root
    overview: bool | None = None  # None: when more than one runbook ran


def run(names: list[str], target: str, out: Path | None = None,
        params: dict[str, str] | None = None, options: Options | None = None,
        ) -> tuple[int, dict[str, Any]]:
    """Run runbooks NAMES against TARGET in parallel; write every output; return (exit
    status, summary). Names and parameters are checked before any kernel starts (UsageError:
    nothing ran). Interrupted (after every output is written) on Ctrl-C or SIGTERM."""
    from . import outputs

    opts = options or Options()
    check_names(names)
    typed: dict[str, Any] = dict(validate(names, params or {}))
    typed["target"] = typed.get("target", target)
    typed = absolute_paths(typed)
    out = (out or default_out_dir()).resolve()  # the kernel runs with cwd=out: no relative paths
    with claimed(out):
        safe, env = hide_secrets(typed)
        secrets = [_password(v) for k, v in typed.items()
                   if (k in SECRET_PARAMS or k.endswith("_target")) and isinstance(v, str)]
        shown, label = _shown(str(typed["target"])), _label(str(typed["target"]))
        started = dt.datetime.now(dt.UTC)
        with _environ({**env, "RUNBOOKS_HEADLESS": "1"}):
            outcomes, interrupted = run_parallel(names, out, safe, typed, secrets,
                                                 opts.cell_timeout_s, opts.runbook_timeout_s,
                                                 opts.jobs, shown)
        code = max((o.exit_code for o in outcomes), default=0)
        summary = {
            "started_at": iso(started),
            "finished_at": iso(dt.datetime.now(dt.UTC)),
            "target": shown,
            "target_label": label,
            "out_dir": str(out),
            "status": status_of([o.status for o in outcomes if o.status != COULD_NOT_RUN],
                                sum(o.status == COULD_NOT_RUN for o in outcomes)),
            "exit_code": code,
            "runbooks": [{"name": o.name, "status": o.status, "exit_code": o.exit_code,
                          "duration_s": o.duration_s, "findings": o.counts,
                          "skipped": o.counts["skipped"], "errors": o.errors,
                          "files": o.files} for o in outcomes],
        }
        if interrupted:
            summary["interrupted"] = True
        outputs.finish(out, summary, opts, secrets, interrupted)
    if interrupted:  # every output written: now stop, as the signal asked
        raise Interrupted(summary)
    return code, summary
