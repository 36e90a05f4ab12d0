"""The runbooks of one run, in parallel: each in a thread that drives its own kernel process,
each stopped at its time limit (its kernel and what the kernel started are killed, so the thread
sees a dead kernel within a second and the runbook is reported as could not run), all stopped
by Ctrl-C or SIGTERM. A runbook that loads the source (a restore drill's backup reads every
table) starts first; the others' kernels start beside it and wait in their first step until
it is past that step (a go file the runner writes): its load is not reported as the
application's, and their kernels' start-up overlaps the backup.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from . import registry
from .findings import StepError, load

T = TypeVar("T")


class Control:
    """What the runner decided about the runbooks running in its threads: the kernel each one
    runs in (so a hung or interrupted one can be stopped) and why it was stopped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kernels: dict[str, int] = {}  # runbook -> kernel pid (its own process group)
        self.started: dict[str, float] = {}
        self.reasons: dict[str, StepError] = {}
        self.go_file: Path | None = None  # written when the source's loaders are past their step
        self.waits: set[str] = set()  # runbooks whose kernel waits for GO_FILE before sampling

    def begin(self, name: str) -> None:
        """NAME starts in this thread: the kernel this thread starts is NAME's, under this
        control (a thread's own, so that runs in one process, such as a sweep's, never mix)."""
        with self.lock:
            _THREAD_RUNBOOK.name = name
            _THREAD_RUNBOOK.control = self
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
    control: Control | None = None


_THREAD_RUNBOOK = _ThreadRunbook()


GO_ENV = "RUNBOOKS_GO_FILE"


def kernel_env() -> dict[str, str]:
    """What the kernel of this thread's runbook gets in its environment: the file to wait for
    before its first step, when a runbook that loads the source runs beside it."""
    control, name = _THREAD_RUNBOOK.control, _THREAD_RUNBOOK.name
    if control is None or control.go_file is None or name not in control.waits:
        return {}
    return {GO_ENV: str(control.go_file)}


def wait_for_go(poll_s: float = 0.1) -> None:
    """In a kernel: wait until the runner says the source is quiet (no wait outside a run; the
    runner kills a kernel that waits past its time limit)."""
    path = os.environ.get(GO_ENV)
    while path and not os.path.exists(path):
        time.sleep(poll_s)


def kernel_started(pid: int) -> None:
    control, name = _THREAD_RUNBOOK.control, _THREAD_RUNBOOK.name
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


INTERRUPTED = StepError("interrupted", "stopped by a signal (Ctrl-C or SIGTERM) before it "
                        "finished: what it found until then is in its report")


def _passed(findings_path: Path, step: str) -> bool:
    try:
        return step in load(findings_path).get("steps_done", [])
    except (OSError, ValueError):
        return False


def run(names: list[str], out: Path, params: dict[str, Any], typed: dict[str, Any],
        start: Callable[[str, Control], T], cell_s: int, runbook_s: float,
        jobs: int) -> tuple[list[T], bool]:
    """NAMES in JOBS threads (each runbook's work is in its own kernel process), each stopped
    after its time limit; Ctrl-C or SIGTERM stops them all. A runbook that loads the source
    (the drill's backup) starts first; the others' kernels start beside it and wait in their
    first step until it is past that step (the go file). Returns the
    outcomes in NAMES' order and whether the run was interrupted; every outcome's files are
    written."""
    control = Control()
    specs = {n: registry.runbook(n) for n in names}
    deadline = {n: limits(specs[n], params, cell_s, runbook_s)[1] for n in names}
    loaders = [n for n in names if specs[n].loads_source_until]
    others = sorted((n for n in names if n not in loaders), key=lambda n: -deadline[n])
    if loaders:  # the others' kernels start now and wait in their first step for the go file
        control.go_file = out / ".runbooks-go"
        control.go_file.unlink(missing_ok=True)
        control.waits = set(others)
    interrupted = False
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="runbook")
    futures: dict[str, Future[T]] = {}

    def submit(batch: list[str]) -> None:
        for n in batch:
            futures[n] = pool.submit(start, n, control)

    try:
        submit(loaders + others)
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
                            "limit): what it found until then is in its report"))
                go = control.go_file
                if go is not None and not go.exists() and (interrupted or all(
                        futures[n].done() or _passed(out / f"{n}.findings.json",
                                                     specs[n].loads_source_until)
                        for n in loaders)):
                    go.touch()
                pending = [f for f in futures.values() if not f.done()]
                if not pending:
                    break
                wait(pending, timeout=0.3, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                interrupted = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if control.go_file is not None:
            control.go_file.unlink(missing_ok=True)
    outcomes: list[T] = []
    for n in names:  # one that never started is said too (could not run: interrupted)
        if n not in futures or futures[n].cancelled():
            control.reasons.setdefault(n, StepError(
                "interrupted", "stopped by a signal (Ctrl-C or SIGTERM) before it started"))
            outcomes.append(start(n, control))
        else:
            outcomes.append(futures[n].result())
    for n in names:
        if n in control.reasons and n in futures and not futures[n].cancelled():
            specs[n].stopped(typed)
    return outcomes, interrupted


