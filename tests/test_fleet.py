"""The fleet sweep on the sandbox: twenty databases (two with an incident, one down port, one
wrong password), at most one connection per target at any moment, the same findings through a
real `dask scheduler` with two `dask worker` processes, a bad fleet file refused with its line,
and no secret in any output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbooks_lib import fleet, sweep
from runbooks_lib.params import EXIT_USAGE, UsageError
from runbooks_lib.sandbox import incidents as inc
from runbooks_lib.sandbox.server import Sandbox, free_port

from .conftest import retry, run_cli

pytestmark = pytest.mark.slow

N = 20
DIAGNOSTIC = ["connectivity", "latency", "transaction_failures"]
WRONG_PASSWORD = "not-the-password-Zq81"
DUPLICATE, INVALID = "db05", "db11"  # the two databases with an injected incident


def _db(i: int) -> str:
    return f"fleet_{i:02d}"


@pytest.fixture(scope="module")
def databases(sandbox: Sandbox) -> Iterator[list[str]]:
    """N databases made from the demo database as a template, dropped afterwards."""
    names = [_db(i) for i in range(N)]
    retry(lambda: _quiet_on(sandbox, "cosnap"), timeout=20)
    with psycopg.connect(sandbox.url("postgres", "postgres"), autocommit=True) as c:
        for name in names:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}" TEMPLATE cosnap STRATEGY file_copy')
    try:
        yield names
    finally:
        with psycopg.connect(sandbox.url("postgres", "postgres"), autocommit=True) as c:
            for name in names:
                c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _quiet_on(sb: Sandbox, db: str) -> bool:
    with psycopg.connect(sb.url("postgres", "postgres")) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid()", (db,)).fetchone()
        return row is not None and row[0] == 0


@pytest.fixture(scope="module")
def fleet_env(sandbox: Sandbox, databases: list[str], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Path, dict[str, str]]]:
    """The fleet file and the environment the workers resolve it from; the two incidents
    staged for the module's tests."""
    env: dict[str, str] = {}
    lines = ["runbooks: [connectivity, latency, transaction_failures]",
             "params:", "  sample_seconds: 0.5", "  log_max_mb: 1", "  since: 10m", "targets:"]
    for i, db in enumerate(databases):
        env[f"FLEET_DB{i:02d}"] = sandbox.url("postgres", db)
        lines.append(f"  - name: db{i:02d}\n    target: env:FLEET_DB{i:02d}\n    tags: [sandbox]")
    env["FLEET_DOWN"] = sandbox.url("postgres", databases[0]).replace(
        f":{sandbox.port}/", f":{free_port()}/")
    env["FLEET_BADPW"] = sandbox.url("postgres", databases[0], password=WRONG_PASSWORD)
    lines += ["  - name: down\n    target: env:FLEET_DOWN",
              "  - name: badpw\n    target: env:FLEET_BADPW\n    params: {connect_attempts: 1}"]
    path = tmp_path_factory.mktemp("fleet") / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n")
    with ExitStack() as stack:
        stack.enter_context(inc.duplicate_index(sandbox.url("postgres", _db(5))))
        stack.enter_context(inc.invalid_index(sandbox.url("postgres", _db(11))))
        yield path, env


class Sampler:
    """pg_stat_activity sampled every 20 ms: the most sessions of the runbooks seen at once
    per database."""

    def __init__(self, sb: Sandbox) -> None:
        self.peak: dict[str, int] = {}
        self.samples = 0
        self.conn = psycopg.connect(sb.url("postgres", "postgres"), autocommit=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            rows = self.conn.execute(
                "SELECT datname, count(*) FROM pg_stat_activity WHERE application_name "
                "LIKE 'runbooks/%' AND datname IS NOT NULL GROUP BY datname").fetchall()
            for db, n in rows:
                self.peak[db] = max(self.peak.get(db, 0), int(n))
            self.samples += 1
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()


def _findings(out: Path) -> dict[str, dict[str, Any]]:
    """Per target: its status, each runbook's status, and its loud (check, severity) pairs."""
    summary = json.loads((out / "summary.json").read_text())
    found: dict[str, dict[str, Any]] = {}
    for t in summary["targets"]:
        loud = set()
        for book in DIAGNOSTIC:
            data = json.loads((out / t["dir"] / f"{book}.findings.json").read_text())
            loud |= {(f["check"], f["severity"]) for f in data["findings"]
                     if f["severity"] in ("warning", "critical")}
        found[t["name"]] = {"status": _loud(t["status"]), "loud": loud,
                            "runbooks": {b: _loud(s) for b, s in t["runbooks"].items()}}
    return found


def _loud(status: str) -> str:
    """A status as an alert sees it: ok and info both quiet (a log line from another test, or
    from this fleet's refused logins, may add an info finding between two sweeps)."""
    return "quiet" if status in ("ok", "info") else status


def _no_secret(sb: Sandbox, out: Path, *texts: str) -> None:
    secrets = [*sb.passwords.values(), WRONG_PASSWORD]
    for path in [p for p in out.rglob("*") if p.is_file()]:
        body = path.read_text(encoding="utf-8", errors="replace")
        for s in secrets:
            assert s not in body, f"a password in {path}"
    for text in texts:
        for s in secrets:
            assert s not in text, "a password on the terminal"


@pytest.fixture(scope="module")
def local_run(sandbox: Sandbox, fleet_env: tuple[Path, dict[str, str]],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Sampler, float]:
    path, env = fleet_env
    out = tmp_path_factory.mktemp("sweep") / "out"
    sampler = Sampler(sandbox)
    t0 = time.monotonic()
    try:
        done = run_cli("fleet", "run", str(path), "--out", str(out), "--jobs", "6",
                       "--notebooks", "critical", env=env, timeout=240)
    finally:
        sampler.close()
    return out, done, sampler, time.monotonic() - t0


def test_fleet_reports_each_target_with_one_connection_each(
        sandbox: Sandbox, local_run: tuple[Path, Any, Sampler, float]) -> None:
    out, done, sampler, wall = local_run
    assert done.returncode == 2, done.stderr[-2000:]  # critical: the down and refusing targets
    assert "Traceback" not in done.stderr
    found = _findings(out)
    assert len(found) == N + 2
    assert ("duplicate_index", "warning") in found[DUPLICATE]["loud"]
    assert ("invalid_index", "warning") in found[INVALID]["loud"]
    assert found["down"]["status"] == "critical"
    assert ("reachability", "critical") in found["down"]["loud"]
    assert found["badpw"]["status"] == "critical"
    assert ("reachability", "critical") in found["badpw"]["loud"]
    badpw = json.loads((out / "badpw" / "connectivity.findings.json").read_text())
    assert any("authentication" in f["title"] for f in badpw["findings"])
    for name, f in found.items():
        if name in (DUPLICATE, INVALID, "down", "badpw"):
            continue
        assert f["status"] == "quiet", (name, f)
    # the sweep never held two connections to one target, and it did sample the runbooks
    assert sampler.samples > 20 and len(sampler.peak) >= N // 2, sampler.peak
    assert max(sampler.peak.values()) == 1, sampler.peak
    # the single-target layout per target; notebooks for those at least warning only
    summary = json.loads((out / "summary.json").read_text())
    by = {t["name"]: t for t in summary["targets"]}
    assert by["down"]["retried"] == ["connectivity"]  # one retry of a refused connection
    assert by["badpw"]["retried"] == []  # a wrong password is no transient failure
    for name in (DUPLICATE, "down"):  # --notebooks critical: the down target's only
        assert by[name]["rendered"] == (name == "down")
        assert (out / name / "latency.ipynb").exists() == (name == "down")
        assert (out / name / "latency.html").exists()
        target_summary = json.loads((out / name / "summary.json").read_text())
        assert [b["name"] for b in target_summary["runbooks"]] == DIAGNOSTIC
        assert target_summary["exit_code"] == (1 if name == DUPLICATE else 2)
    assert (out / "plotly.min.js").exists()  # one copy for every rendered page
    index = (out / "index.html").read_text()
    assert index.count("<tr>") == N + 3 and 'href="db05/latency.html"' in index
    metrics = (out / "metrics.prom").read_text()
    series = [ln for ln in metrics.splitlines() if ln and not ln.startswith("#")]
    assert series and all('target="' in ln for ln in series)
    assert 'pg_runbooks_status_code{runbook="connectivity",target="down"} 2.0' in metrics
    fleet_alerts = json.loads((out / "alerts.json").read_text())
    targets = [a["target"] for a in fleet_alerts]
    assert sorted(targets) == sorted({DUPLICATE, INVALID, "down", "badpw"})  # one per target
    history = [json.loads(ln) for ln in (out.parent / "history.jsonl").read_text().splitlines()]
    assert sorted(r["target_label"] for r in history) == sorted(found)  # by fleet name
    _no_secret(sandbox, out.parent, done.stdout, done.stderr)  # the history beside it too
    print(f"local sweep of {N + 2} targets: {wall:.1f} s")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_the_same_fleet_on_a_dask_scheduler_and_two_workers(
        sandbox: Sandbox, fleet_env: tuple[Path, dict[str, str]],
        local_run: tuple[Path, Any, Sampler, float], tmp_path: Path) -> None:
    path, env = fleet_env
    dask = str(Path(sys.executable).parent / "dask")
    full = {**os.environ, **env}
    scheduler_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                             "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                            full, tmp_path / "scheduler.log"))
        address = str(retry(lambda: scheduler_file.exists() and json.loads(
            scheduler_file.read_text())["address"], timeout=60))
        for n in range(2):
            procs.append(_start([dask, "worker", address, "--nthreads", "3", "--nworkers", "1",
                                 "--no-dashboard", "--name", f"w{n}", "--local-directory",
                                 str(tmp_path / f"w{n}")], full, tmp_path / f"worker{n}.log"))
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
        out = tmp_path / "out"
        done = run_cli("fleet", "run", str(path), "--out", str(out), "--scheduler", address,
                       "--notebooks", "none", env={}, unset=tuple(env), timeout=240)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    # the client had no target variable at all: the workers resolved every one
    assert done.returncode == 2, done.stderr[-2000:]
    assert _findings(out) == _findings(local_run[0])
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
    _no_secret(sandbox, out, done.stdout, done.stderr, logs)


BAD = [
    ("targets:\n  - name: a\n    target: env:A\n    password: hunter2\n", 4, "no password"),
    ("targets:\n  - name: a\n    target: postgresql://u:hunter2@h/db\n", 3, "never a DSN"),
    ("runbooks: [connectivity, latencyy]\ntargets:\n  - {name: a, target: env:A}\n", 1,
     "unknown runbook latencyy (did you mean latency?)"),
    ("runbooks: [connectivity]\ntargets:\n  - name: a\n    target: env:A\n    params:\n"
     "      connection_usage_warning: 7\n", 6, "connection_usage_warning"),
    ("runbooks: [connectivity]\nparams:\n  sample_secs: 1\ntargets:\n  - {name: a, target: env:A}\n",
     3, "unknown parameter sample_secs"),
    ("targets:\n  - {name: a, target: env:A}\n  - {name: a, target: env:B}\n", 3, "given twice"),
    ("targets:\n  - {name: a, target: env:A, tag: [x]}\n", 2, "unknown key tag (did you mean tags?)"),
    ("runbooks: [connectivity]\ntargets:\n  - name: a\n    target: env:A\n    params:\n"
     "      admin_target: postgresql://postgres:hunter2@h/db\n", 6, "never a DSN"),
    ("targets: [\n", 2, "not valid YAML"),
    ("runbooks: [connectivity]\ntargets:\n  - name: a\n    target: env:A\n    params:\n"
     "      allow_actions: true\n", 6, "allow_actions: a sweep never acts"),
]


@pytest.mark.parametrize(("text", "line", "says"), BAD)
def test_a_bad_fleet_file_is_refused_with_its_line(text: str, line: int, says: str) -> None:
    with pytest.raises(UsageError) as err:
        fleet.parse(text, "fleet.yaml")
    message = str(err.value)
    assert message.startswith(f"fleet.yaml:{line}: ") and says in message, message
    assert "hunter2" not in message


def test_the_cli_refuses_a_bad_fleet_file_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(BAD[0][0])
    done = run_cli("fleet", "run", str(path), "--out", str(tmp_path / "out"))
    assert done.returncode == EXIT_USAGE
    assert f"{path}:4: " in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()
    path.write_text("targets:\n  - {name: a, target: env:A}\n")
    done = run_cli("fleet", "run", str(path), "-p", "admin_target=host=h password=hunter2",
                   "--out", str(tmp_path / "out"))
    assert done.returncode == EXIT_USAGE and "hunter2" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["run", "--scheduler", "http://u:hunter2@h:8786"], "give the scheduler's address"),
    (["run", "-p", "allow_actions=true"], "a sweep never acts"),
    (["check", "-p", "connect_attempts=0"], "connect_attempts='0'"),
    (["check", "-p", "target=postgresql://u:hunter2@h/db"], "set by the sweep"),
    (["run", "--out", "EARLIER"], "holds an earlier run"),
])
def test_bad_options_are_refused_before_anything_runs(tmp_path: Path, args: list[str],
                                                       says: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("runbooks: [connectivity]\ntargets:\n  - {name: a, target: env:A}\n")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "summary.json").write_text("{}")
    args = [str(earlier) if a == "EARLIER" else a for a in args]
    out = [] if "--out" in args or args[0] == "check" else ["--out", str(tmp_path / "out")]
    done = run_cli("fleet", args[0], str(path), *args[1:], *out)
    assert done.returncode == EXIT_USAGE, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "out").exists()


def test_signals_while_the_outputs_are_written_are_held() -> None:
    with sweep.held_signals() as caught:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # delivered here: noted, not raised
    assert caught == [signal.SIGINT]


def test_notebooks_threshold() -> None:
    assert [sweep.due(s, "critical") for s in ("warning", "critical")] == [False, True]


def test_a_runbook_past_its_time_limit_is_stopped_and_could_not_run(
        quiet: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_ONE", quiet.url("postgres"))
    t0 = time.monotonic()
    data, transient = sweep.in_process("latency", "env:FLEET_ONE", {"sample_seconds": 3.0},
                                       tmp_path / "latency.findings.json", 600, 1.0)
    assert time.monotonic() - t0 < 10
    assert data["status"] == "could not run" and transient == ""
    assert [e["step"] for e in data["errors"]] == ["timeout"]
    assert "stopped after 1 s" in data["errors"][0]["message"]
    assert data["steps_done"] and "plans" not in data["steps_done"]  # stopped between steps


def test_a_rendered_notebook_past_its_time_limit_is_killed_and_could_not_run(
        quiet: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks_lib import notebooks

    monkeypatch.setenv("FLEET_ONE", quiet.url("postgres"))
    monkeypatch.setenv("RUNBOOKS_HEADLESS", "1")
    limits = sweep.Limits(runbook_timeout_s=4.0, cell_timeout_s=60)
    t0 = time.monotonic()
    done = sweep.render("latency", notebooks.available()["latency"], tmp_path,
                        {"target": "env:FLEET_ONE", "sample_seconds": 30.0}, [], limits, "shown")
    assert time.monotonic() - t0 < 20
    assert done.status == "could not run"
    assert done.errors[-1] == {"step": "timeout", "message": sweep.stopped_at(4.0).message}
    assert (tmp_path / "latency.html").exists() and (tmp_path / "latency.findings.json").exists()
