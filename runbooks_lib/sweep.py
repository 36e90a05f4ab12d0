"""A sweep: the fleet's runbooks on every target, as tasks on Dask distributed.

One task per target runs that target's runbooks one after the other, in-process from the
registry (no kernel): at most one connection to a target at any moment, whatever the cluster's
size. The client keeps at most ``jobs`` tasks in flight (bounded total concurrency: a hundred
databases on one server get ``jobs`` connections, not a hundred). A task carries the target's
name and its ``env:VAR`` / ``service:NAME`` reference, never a secret: the worker resolves it
from its own environment (runbooks_lib.target), and sends back only masked text. The worker
writes nothing the client must share a disk for: the files come back in the task's result and
the client writes them (fleet_report.py), so the same code runs on a LocalCluster, on
``dask scheduler`` / ``dask worker`` by hand, dask-jobqueue or dask-kubernetes.

A target whose status is at least ``notebooks`` (warning by default) then gets its executed
notebooks and HTML pages through papermill (report.run_one), again one runbook at a time.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import outputs
from .findings import COULD_NOT_RUN, SEVERITIES, StepError, iso, write_json
from .fleet import TargetResult
from .target import mask_text

if TYPE_CHECKING:
    from distributed import Client, Future

    from .fleet import Fleet
    from .report import Outcome
    from .runbook import Runbook

log = logging.getLogger("runbooks_lib")

NOTEBOOKS = ("all", "info", "warning", "critical", "none")  # --notebooks: the least status
PLOTLY_SRC = "../plotly.min.js"  # the fleet directory holds one copy for every target's pages


@dataclass(frozen=True)
class Limits:
    """What every target's task gets besides its name and reference (no secret here)."""

    runbook_timeout_s: float = 900.0
    cell_timeout_s: int = 600
    notebooks: str = "warning"
    retry_after_s: float = 2.0  # before the one retry of a transient connect failure


def due(status: str, least: str) -> bool:
    """Whether a target of STATUS gets its notebooks rendered at LEAST (--notebooks); could not
    run counts as the most severe.

    >>> [due(s, "warning") for s in ("ok", "info", "warning", "critical", "could not run")]
    [False, False, True, True, True]
    >>> due("ok", "all"), due("could not run", "none")
    (True, False)
    """
    if least == "none":
        return False
    if least == "all":
        return True
    rank = SEVERITIES.index(status) if status in SEVERITIES else len(SEVERITIES)
    return rank >= SEVERITIES.index(least)


# -- the worker's side ---------------------------------------------------------------------------

def _cancel_query(rb: Runbook) -> None:
    """At the runbook's time limit: the statement it waits on is cancelled (it then fails as
    cancelled and the step loop stops), its connection stays the only one."""
    session = rb._session  # noqa: SLF001 - the live session only: never open one from here
    if session is not None:
        try:
            session.conn.cancel_safe(timeout=2)
        except Exception:  # noqa: BLE001 - best effort; the step loop stops at the deadline
            log.debug("cancel failed", exc_info=True)


def _connect_failure(rb: Runbook) -> str:
    """The cause of the runbook's failed connection when it is worth one retry, else ''."""
    from .probes.connection import TRANSIENT, Reach

    reach = rb.snapshots.get("connection")
    if isinstance(reach, Reach) and not reach.connected and reach.cause in TRANSIENT:
        return reach.cause
    return ""


def in_process(name: str, spec: str, params: dict[str, Any], findings_path: Path,
               cell_s: int, runbook_s: float) -> tuple[dict[str, Any], str]:
    """Runbook NAME on SPEC without a kernel: Runbook.run_all's steps, stopped at the time
    limit (the statement under way is cancelled, the findings so far are kept); returns its
    findings JSON and the cause of a transient connect failure ('' for none)."""
    from . import parallel, registry
    from .runbook import Runbook

    started = time.monotonic()
    _, limit = parallel.limits(registry.runbook(name), params, cell_s, runbook_s)
    try:
        rb = Runbook.start(name, {**params, "target": spec, "findings_path": str(findings_path)})
    except Exception as exc:  # noqa: BLE001 - a runbook must end in its report, never the sweep
        from .findings import Report

        data = Report(runbook=name, target=mask_text(spec)).to_dict()
        data["errors"].append({"step": "start", "message": mask_text(f"{type(exc).__name__}: "
                                                                     f"{exc}")})
        data["status"] = COULD_NOT_RUN
        return data, ""
    watchdog = threading.Timer(limit, _cancel_query, (rb,))
    watchdog.daemon = True
    watchdog.start()
    try:
        for step in rb.spec.steps if rb.spec is not None else ():
            if time.monotonic() - started > limit:
                break
            rb.step(step.key)
        if time.monotonic() - started > limit:  # stopped, or its last step cut at the limit
            rb.error("timeout", stopped_at(limit).message)
    except Exception as exc:  # noqa: BLE001 - steps guard their checks; this is a last resort
        rb.error("runbook", f"{type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()
        data = rb.finish()
    return data, _connect_failure(rb)


def stopped_at(limit: float) -> StepError:
    return StepError("timeout", f"stopped after {limit:.0f} s (the runbook time limit): what it "
                     "found until then is in its report")


def render(name: str, path: Path, work: Path, params: dict[str, Any], secrets: list[str],
           limits: Limits, shown: str) -> Outcome:
    """Runbook NAME's notebook through papermill (report.run_one) into WORK, its kernel killed at
    the runbook's time limit (it is then reported as could not run, saying so)."""
    from . import parallel, registry, report

    control = parallel.Control()  # this thread's: other targets' kernels are not its own
    _, limit = parallel.limits(registry.runbook(name), params, limits.cell_timeout_s,
                               limits.runbook_timeout_s)
    timer = threading.Timer(limit, control.stop, (name, stopped_at(limit)))
    timer.daemon = True
    timer.start()
    try:
        return report.run_one(name, path, work, params, secrets, limits.cell_timeout_s, shown,
                              control, PLOTLY_SRC)
    finally:
        timer.cancel()


def run_target(name: str, spec: str, runbooks: list[str], params: dict[str, Any],
               limits: Limits) -> TargetResult:
    """One target's runbooks, one after the other (one connection at a time), on a worker;
    then, when its status is at least limits.notebooks, its notebooks through papermill.
    Never raises for anything the target does: a down server is the target's finding."""
    from . import notebooks, page, report
    from .target import resolve

    os.environ.setdefault("RUNBOOKS_HEADLESS", "1")  # a worker process has no person at it
    t0 = time.monotonic()
    shown, label = report.described(spec)
    try:
        secrets = [resolve(spec).password]
    except Exception:  # noqa: BLE001 - the runbooks report a bad target themselves
        secrets = []
    result = TargetResult(name, shown, label, iso(dt.datetime.now(dt.UTC)))
    work = Path(tempfile.mkdtemp(prefix="runbooks-sweep-"))
    try:
        datas: dict[str, dict[str, Any]] = {}
        retried = False
        for book in runbooks:
            path = work / f"{book}.findings.json"
            data, transient = in_process(book, spec, params, path, limits.cell_timeout_s,
                                         limits.runbook_timeout_s)
            if transient and not retried:  # once per target: a second failure is the finding
                retried = True
                time.sleep(limits.retry_after_s)
                data, _ = in_process(book, spec, params, path, limits.cell_timeout_s,
                                     limits.runbook_timeout_s)
                result.retried.append(book)
            write_json(path, data)
            datas[book] = data
        result.outcomes = [report.outcome(b, datas[b]) for b in runbooks]
        if due(result.status, limits.notebooks):
            books = notebooks.available()
            result.outcomes = [render(b, books[b], work, {**params, "target": spec}, secrets,
                                      limits, shown) for b in runbooks]
            result.rendered = True
        else:
            from .findings import write_text

            for b in runbooks:  # the page of the findings, without a notebook
                write_text(work / f"{b}.html", page.render({"cells": []}, datas[b], PLOTLY_SRC))
        for p in sorted(work.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.name != page.PLOTLY_JS:
                result.files[p.name] = mask_text(p.read_text(encoding="utf-8"), *secrets)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.duration_s = round(time.monotonic() - t0, 3)
    return result


def lost(name: str, runbooks: list[str], why: str) -> TargetResult:
    """The result of a target whose task never came back (a worker died twice, the sweep was
    interrupted): every runbook could not run, saying why."""
    from .findings import Report
    from .report import outcome

    result = TargetResult(name, "", "unknown", iso(dt.datetime.now(dt.UTC)))
    for book in runbooks:
        data = Report(runbook=book, target="").to_dict()
        data["errors"].append({"step": "sweep", "message": why})
        data["status"] = COULD_NOT_RUN
        data["duration_s"] = 0.0
        result.files[f"{book}.findings.json"] = _json(data)
        result.outcomes.append(outcome(book, data))
    return result


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"


# -- the client's side ---------------------------------------------------------------------------

@contextmanager
def client(scheduler: str, jobs: int, verbose: bool = False) -> Iterator[Client]:
    """A Dask client: on the cluster at SCHEDULER, else on an in-process LocalCluster of worker
    processes (no daemon, nothing to install) with JOBS threads in all."""
    from distributed import Client, LocalCluster

    if not verbose:
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler:
        from .errors import RunbookError

        try:
            c = Client(scheduler, timeout=15, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise RunbookError(f"cannot reach the Dask scheduler at {mask_text(scheduler)}: "
                               f"{mask_text(str(exc))[:300]}") from None
        try:
            c.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError:
            c.close()
            raise RunbookError(f"the Dask scheduler at {mask_text(scheduler)} has no worker "
                               f"(none joined within {WORKERS_WAIT_S:g} s): start `dask worker "
                               "ADDRESS` with the targets' environment") from None
        try:
            yield c
        finally:
            c.close()
        return
    workers = max(1, min(jobs, os.cpu_count() or 1))
    dashboard = ":0" if importlib.util.find_spec("bokeh") is not None else None
    with LocalCluster(n_workers=workers, threads_per_worker=max(1, -(-jobs // workers)),
                      processes=True, dashboard_address=dashboard,
                      silence_logs=logging.DEBUG if verbose else logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as c:
        yield c


def dashboard(c: Client, local: bool) -> str:
    """The dashboard's address when the scheduler runs one, else ''. Its pages need bokeh: a
    local cluster starts none without it (the scheduler's HTTP service is still listed)."""
    if local and importlib.util.find_spec("bokeh") is None:
        return ""
    try:
        running = "dashboard" in (c.scheduler_info().get("services") or {})
    except Exception:  # noqa: BLE001 - only a hint for the user
        return ""
    return str(c.dashboard_link) if running else ""


def _bar(total: int, quiet: bool) -> Any:
    """A progress bar: tqdm's widget in JupyterLab, a text bar on a terminal, nothing in cron."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(total=total, desc="targets", unit="target", disable=True if quiet else None,
                file=sys.stderr)


@dataclass(frozen=True)
class Task:
    name: str
    spec: str
    params: dict[str, Any]


def execute(c: Client, tasks: list[Task], runbooks: list[str], limits: Limits, jobs: int,
            quiet: bool = False) -> tuple[dict[str, TargetResult], bool]:
    """TASKS on the cluster behind C, at most JOBS in flight; returns the results by target
    name and whether the sweep was interrupted (then the targets not done say so)."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    waiting = iter(tasks)
    names: dict[str, str] = {}  # future key -> target name
    results: dict[str, TargetResult] = {}
    futures: set[Future[TargetResult]] = set()  # in flight (a result is released once read)

    def submit() -> Future[TargetResult] | None:
        task = next(waiting, None)
        if task is None:
            return None
        f: Future[TargetResult] = c.submit(
            run_target, task.name, task.spec, runbooks, task.params, limits,
            key=f"runbooks-target-{task.name}-{token}", pure=False, retries=1)
        names[str(f.key)] = task.name
        futures.add(f)
        return f

    interrupted = False
    bar = _bar(len(tasks), quiet)
    try:
        first = [f for _ in range(max(1, jobs)) if (f := submit()) is not None]
        done = as_completed(first, loop=c.loop)
        for f in done:
            name = names[str(f.key)]
            try:
                results[name] = f.result()
            except Exception as exc:  # noqa: BLE001 - the worker died twice: that target's failure
                results[name] = lost(name, runbooks, mask_text(
                    f"its task failed on the cluster: {type(exc).__name__}: {exc}")[:500])
            futures.discard(f)
            f.release()  # the worker drops its copy: memory stays flat over a long fleet
            bar.update(1)
            more = submit()
            if more is not None:
                done.add(more)
    except KeyboardInterrupt:
        interrupted = True
        c.cancel(list(futures))
    finally:
        bar.close()
    for task in tasks:
        if task.name not in results:
            results[task.name] = lost(task.name, runbooks, "stopped by a signal (Ctrl-C or "
                                      "SIGTERM) before this target was done")
    return results, interrupted


WORKERS_WAIT_S = 60.0  # an external scheduler with no worker is said, never waited on forever
SCHEDULER = re.compile(r"^(tcp|tls|ucx|inproc)://\S+$")  # what a Dask client connects to


def checked_params(fleet: Fleet, given: dict[str, str]) -> dict[str, Any]:
    """-p KEY=VALUE for every target, checked against the fleet's runbooks (UsageError): no
    target or secret, and no action (a sweep diagnoses, it never acts on a fleet)."""
    from .fleet import is_reference
    from .params import UsageError, validate

    out = dict(validate(fleet.runbooks, given))
    for key, value in out.items():
        if key == "target" or key == "findings_path":
            raise UsageError(f"-p {key}: set by the sweep for each target (the fleet file "
                             "names the targets)")
        if key.endswith("_target") and isinstance(value, str) and value \
                and not is_reference(value):
            raise UsageError(f"-p {key}: give env:VAR or service:NAME (a sweep hands no "
                             "secret to its workers)")
        if key == "allow_actions" and value:
            raise UsageError("-p allow_actions: a sweep never acts (run the runbook on that "
                             "target to act, after its preview)")
    return out


@contextmanager
def held_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM noted rather than raised inside: a second Ctrl-C while the sweep's
    outputs are written would otherwise leave half of them after saying all were written."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    kinds = (signal.SIGINT, signal.SIGTERM)
    before = {k: signal.signal(k, lambda n, _frame: caught.append(n)) for k in kinds}
    try:
        yield caught
    finally:
        for k, handler in before.items():
            signal.signal(k, handler)


def default_out_dir() -> Path:
    return Path("reports") / dt.datetime.now(dt.UTC).strftime("fleet-%Y%m%dT%H%M%SZ")


def run(fleet: Fleet, out: Path | None = None, overrides: dict[str, str] | None = None,
        options: outputs.Options | None = None, scheduler: str = "", notebooks: str = "warning",
        quiet: bool = False, verbose: bool = False) -> tuple[int, dict[str, Any]]:
    """The sweep of FLEET: -p OVERRIDES (over the file's parameters) checked before anything
    runs (UsageError), the targets' tasks on Dask, every output written into OUT; returns (exit
    status, the fleet's summary). Interrupted (report.Interrupted) after writing on Ctrl-C."""
    from . import fleet_report
    from .errors import RunbookError
    from .params import UsageError
    from .report import Interrupted, absolute_paths, claimed

    opts = options or outputs.Options()
    if notebooks not in NOTEBOOKS:
        raise UsageError(f"--notebooks {notebooks}: one of {', '.join(NOTEBOOKS)}")
    given = checked_params(fleet, overrides or {})
    out = (out or default_out_dir()).resolve()
    limits = Limits(opts.runbook_timeout_s, opts.cell_timeout_s, notebooks)
    tasks = [Task(t.name, t.spec, absolute_paths({**t.params, **given})) for t in fleet.targets]
    started = dt.datetime.now(dt.UTC)
    fresh = not out.exists()
    with claimed(out):
        cluster = ExitStack()
        try:
            c = cluster.enter_context(client(scheduler, opts.jobs, verbose))
            link = dashboard(c, not scheduler)
            if link and not quiet:
                print(f"Dask dashboard: {link}", file=sys.stderr)
            results, interrupted = execute(c, tasks, fleet.runbooks, limits, opts.jobs, quiet)
        except RunbookError:  # no cluster: nothing ran, leave no empty run directory behind
            with held_signals():
                cluster.close()
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            raise
        except KeyboardInterrupt:  # while the cluster was starting: no target ran
            results = {t.name: lost(t.name, fleet.runbooks, "stopped by a signal (Ctrl-C or "
                                    "SIGTERM) before the sweep started") for t in tasks}
            interrupted = True
        with held_signals() as caught:  # the cluster's shutdown and every output, whole
            cluster.close()
            summary = fleet_report.write(out, fleet, results, started, opts, interrupted)
        interrupted = interrupted or bool(caught)
    if interrupted:
        raise Interrupted(summary)
    return int(summary["exit_code"]), summary
