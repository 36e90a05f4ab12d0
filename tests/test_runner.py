"""`runbooks run` end to end, as a scheduler calls it: papermill, HTML, findings JSON, summary,
exit status, and secrets kept out of every file."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox, free_port

from .conftest import ROOT, findings_of, run_cli

pytestmark = pytest.mark.slow


def outputs(out: Path, name: str = "connectivity") -> dict[str, Any]:
    for suffix in (".ipynb", ".html", ".findings.json"):
        assert (out / f"{name}{suffix}").exists(), suffix
    assert (out / "summary.json").exists()
    return json.loads((out / f"{name}.findings.json").read_text())  # type: ignore[no-any-return]


def assert_secret_absent(out: Path, secret: str) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert secret not in text, f"password leaked into {path.name}"


def test_list_shows_runbooks_and_parameters() -> None:
    proc = run_cli("list")
    assert proc.returncode == 0, proc.stderr
    assert "connectivity:" in proc.stdout
    assert "connection_usage_warning (float) = 0.8" in proc.stdout


def test_healthy_run_exits_0_with_all_outputs(quiet: Sandbox, tmp_path: Path) -> None:
    with incidents.leaking_app(quiet.url("app"), "cosnap-backend", idle=3):  # a warm pool
        proc = run_cli("run", "connectivity", "--out", str(tmp_path), "-p", "pool_size=5",
                       env={"DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = outputs(tmp_path)
    assert data["status"] == "ok" and data["runbook"] == "connectivity"
    assert data["target"] == f"postgresql://monitor:***@127.0.0.1:{quiet.port}/cosnap"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == 0 and summary["runbooks"][0]["name"] == "connectivity"
    assert json.loads((tmp_path / "alerts.json").read_text()) == []
    metrics = (tmp_path / "metrics.prom").read_text()
    label = f'target="127.0.0.1:{quiet.port}/cosnap"'
    assert f'pg_runbooks_status_code{{runbook="connectivity",{label}}} 0.0' in metrics
    assert f'pg_runbooks_check_connection_usage_ratio{{runbook="connectivity",{label}}}' in metrics
    html = (tmp_path / "connectivity.html").read_text()
    assert "Plotly.newPlot" in html and "cdn.plot.ly" not in html.split("</head>")[1]
    assert "from runbooks_lib import" not in html, "code cells are hidden in the report"
    assert_secret_absent(tmp_path, quiet.passwords["monitor"])


def test_exhaustion_is_critical_and_the_runbook_completes(quiet: Sandbox, tmp_path: Path) -> None:
    with incidents.exhausted(quiet.url("app"), "cosnap-backend"):
        proc = run_cli("run", "connectivity", "--out", str(tmp_path),
                       "--target", quiet.url("app", connection_limit="5"),
                       "-p", f"admin_target={quiet.url('postgres')}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    data = outputs(tmp_path)
    (f,) = findings_of(data, "too_many_clients")
    assert f["severity"] == "critical"
    (usage,) = findings_of(data, "connection_usage")
    assert usage["severity"] == "critical" and "cosnap-backend" in usage["detail"]
    assert findings_of(data, "pool_overflow"), "27 connections for a pool of 5"
    assert not data["errors"]
    for role in ("app", "postgres"):
        assert_secret_absent(tmp_path, quiet.passwords[role])


def test_unreachable_server_is_critical_within_the_connect_budget(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = run_cli("run", "connectivity", "--out", str(tmp_path), "--target",
                   f"postgresql://app:hunter22@127.0.0.1:{port}/cosnap", "-p", "connect_timeout_s=2")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    data = outputs(tmp_path)
    (f,) = findings_of(data, "reachability")
    assert f["severity"] == "critical" and "refused" in f["title"] and "3 attempt" in f["title"]
    attempts = [e for e in f["evidence"] if "attempt" in e]
    assert sum(a["seconds"] for a in attempts) < 2 + 1
    assert {s["check"] for s in data["skipped"]} >= {"connection_usage", "idle_in_transaction"}
    assert not data["errors"]
    assert_secret_absent(tmp_path, "hunter22")


@pytest.fixture
def silent_server() -> Iterator[int]:
    with incidents.silent_server() as port:
        yield port


def test_silent_server_times_out_once_within_budget(silent_server: int, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_cli("run", "connectivity", "--out", str(tmp_path), "--target",
                   f"postgresql://app:pw@127.0.0.1:{silent_server}/cosnap",
                   "-p", "connect_timeout_s=2")
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (f,) = findings_of(outputs(tmp_path), "reachability")
    assert f["severity"] == "critical" and "timeout" in f["title"]
    attempts = [e for e in f["evidence"] if "attempt" in e]
    assert len(attempts) == 1 and 1.5 < attempts[0]["seconds"] < 3.5
    assert elapsed < 60  # a loose bound against hangs; the real figure is in benchmarks/


def test_wrong_password_is_authentication_and_never_written(quiet: Sandbox, tmp_path: Path) -> None:
    wrong = "Wr0ngPassw0rd-xyz"
    proc = run_cli("run", "connectivity", "--out", str(tmp_path),
                   env={"DATABASE_URL": quiet.url("app", password=wrong)})
    assert proc.returncode == 2
    (f,) = findings_of(outputs(tmp_path), "reachability")
    assert "authentication" in f["title"] and "password authentication failed" in f["detail"]
    attempts = [e for e in f["evidence"] if "attempt" in e]
    assert len(attempts) == 1, "authentication failures are not retried"
    assert_secret_absent(tmp_path, wrong)
    assert wrong not in proc.stdout + proc.stderr


def test_report_escapes_what_came_from_the_database(quiet: Sandbox, tmp_path: Path) -> None:
    evil = "<script>alert('pwn')</script>"
    with incidents.leaking_app(quiet.url("app"), evil, idle=23):
        proc = run_cli("run", "connectivity", "--out", str(tmp_path),
                       env={"DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    html = (tmp_path / "connectivity.html").read_text()
    assert evil not in html
    assert "&lt;script&gt;alert(&#x27;pwn&#x27;)&lt;/script&gt;" in html or \
           "&lt;script&gt;alert('pwn')&lt;/script&gt;" in html
    (usage,) = findings_of(outputs(tmp_path), "connection_usage")
    assert evil in usage["detail"], "the JSON keeps the raw name; only HTML escapes"


def copy_notebook(nbdir: Path, name: str, edit: Any) -> None:
    """NAME's real notebook into NBDIR, its cells passed through EDIT (a list -> list)."""
    nbdir.mkdir(exist_ok=True)
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nb.cells = edit(nb.cells)
    nbformat.write(nb, nbdir / f"{name}.ipynb")


def test_a_runbook_failing_half_way_still_writes_what_it_found(quiet: Sandbox,
                                                              tmp_path: Path) -> None:
    nbdir = tmp_path / "notebooks"

    def explode_after_usage(cells: list[Any]) -> list[Any]:
        at = next(i for i, c in enumerate(cells) if c.source == 'rb.step("usage")') + 1
        return [*cells[:at], nbformat.v4.new_markdown_cell("## Step two: look at something"),
                nbformat.v4.new_code_cell(
                    "raise RuntimeError('step two exploded with password=hunter22')"),
                *cells[at:]]

    copy_notebook(nbdir, "connectivity", explode_after_usage)
    out = tmp_path / "out"
    proc = run_cli("run", "connectivity", "--out", str(out),
                   env={"RUNBOOKS_NOTEBOOK_DIR": str(nbdir), "PYTHONPATH": str(ROOT),
                        "DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "connectivity: could not run" in proc.stdout
    data = outputs(out)
    assert [f["check"] for f in data["findings"]] == ["reachability", "connection_usage"]
    assert data["status"] == "could not run"
    (err,) = data["errors"]
    assert err["step"].endswith("(Step two: look at something)")
    assert "RuntimeError: step two exploded" in err["message"]
    assert "hunter22" not in json.dumps(data)
    html = (out / "connectivity.html").read_text()
    assert "step two exploded" in html and "hunter22" not in html
    assert 'class="rb-status-could-not-run"' in html and 'class="rb-status-ok"' not in html
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 3 and summary["status"] == "could not run"
    assert summary["runbooks"][0]["status"] == "could not run"


def test_notebooks_run_clean_under_nbval_lax(quiet: Sandbox) -> None:
    import subprocess

    env = {**os.environ, "DATABASE_URL": quiet.url("monitor"),
           "RUNBOOKS_AUDIT_LOG": os.devnull}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--nbval-lax", str(ROOT / "notebooks")], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_missing_target_variable_means_could_not_run(tmp_path: Path) -> None:
    proc = run_cli("run", "connectivity", "--out", str(tmp_path), unset=("DATABASE_URL",))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    data = outputs(tmp_path)
    (err,) = data["errors"]
    assert err["step"] == "target" and "DATABASE_URL is not set" in err["message"]
    assert data["status"] == "could not run"
    assert "connectivity: could not run" in proc.stdout and ": ok" not in proc.stdout
    html = (tmp_path / "connectivity.html").read_text()
    assert "could not run" in html and 'class="rb-status-ok"' not in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "could not run" and summary["exit_code"] == 3
    assert "Traceback" not in proc.stdout + proc.stderr


def test_relative_out_dir_and_default_out_dir(quiet: Sandbox, tmp_path: Path) -> None:
    env = {"DATABASE_URL": quiet.url("monitor")}
    with incidents.leaking_app(quiet.url("app"), "leaky-api", idle=23):  # 85 %: a warning
        proc = run_cli("run", "connectivity", "--out", "rel/out", env=env, cwd=tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert outputs(tmp_path / "rel" / "out")["status"] == "warning"
        proc = run_cli("run", "connectivity", env=env, cwd=tmp_path)  # reports/<timestamp>/
        assert proc.returncode == 1, proc.stdout + proc.stderr
    (default,) = (p for p in (tmp_path / "reports").iterdir() if p.is_dir())
    assert outputs(default)["status"] == "warning"
    assert (tmp_path / "reports" / "history.jsonl").exists(), "the reports root keeps history"


def test_a_notebook_that_writes_no_findings_could_not_run(tmp_path: Path) -> None:
    nbdir = tmp_path / "notebooks"
    copy_notebook(nbdir, "connectivity",
                  lambda cells: [c for c in cells if c.cell_type == "markdown"
                                 or "parameters" in c.metadata.get("tags", [])])
    proc = run_cli("run", "connectivity", "--out", str(tmp_path / "out"),
                   env={"RUNBOOKS_NOTEBOOK_DIR": str(nbdir)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    (err,) = outputs(tmp_path / "out")["errors"]
    assert "wrote no findings" in err["message"]


@pytest.mark.parametrize(("args", "says"), [
    (["run", "connectivity", "-p", "allow_action=true"], "did you mean allow_actions?"),
    (["run", "connectivity", "-p", "connection_usage_warning=2.5"],
     "connection_usage_warning='2.5': expected a number from 0.01 to 1"),
    (["run", "connectivity", "-p", "connect_timeout_s=-1"], "connect_timeout_s='-1'"),
    (["run", "latency", "-p", "sample_seconds=abc"], "sample_seconds='abc': expected a number"),
    (["run", "latency", "-p", "blocker_action=kill"], "one of cancel, terminate"),
    (["run", "connectivity", "-p", "connection_usage_warning=0.99"],
     "connection_usage_warning=0.99 is above connection_usage_critical=0.95"),
    (["run", "conectivity"], "unknown runbook conectivity (did you mean connectivity?)"),
    (["run"], "name one or more runbooks"),
    (["run", "connectivity", "-p", "novalue"], "-p takes KEY=VALUE"),
    (["run", "connectivity", "--bogus"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_64_before_anything_runs(tmp_path: Path, args: list[str],
                                                   says: str) -> None:
    proc = run_cli(*args, "--out", str(tmp_path / "out")) if args[0] == "run" and \
        "--bogus" not in args else run_cli(*args)
    assert proc.returncode == 64, proc.stdout + proc.stderr
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_out_that_is_a_file_or_unwritable_is_a_usage_error(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        proc = run_cli("run", "connectivity", "--out", str(out))
        assert proc.returncode == 64, proc.stdout + proc.stderr
        assert "--out" in proc.stderr and "Traceback" not in proc.stderr


def test_two_runs_into_one_out_dir_are_refused(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with (out / ".runbooks.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run in progress
        proc = run_cli("run", "connectivity", "--out", str(out))
    assert proc.returncode == 64 and "another run is writing there" in proc.stderr
    assert not (out / "summary.json").exists()


def test_every_declared_parameter_is_seen_by_papermill() -> None:
    """papermill drops a parameter whose comment it cannot parse: then -p does not inject it."""
    import papermill

    from runbooks_lib import registry

    for name in registry.runbooks():
        seen = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))
        declared = {p.name: p for p in registry.parameters(registry.runbook(name))}
        assert set(seen) == set(declared), name
        for pname, p in declared.items():
            assert seen[pname]["inferred_type_name"] == p.type_name, pname


def test_a_clean_run_prints_only_its_results(quiet: Sandbox, tmp_path: Path) -> None:
    proc = run_cli("run", "connectivity", "--out", str(tmp_path), "-p", "pool_size=5",
                   env={"DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[0].startswith("connectivity: ok")


def test_reports_are_no_more_readable_than_the_umask_allows(quiet: Sandbox,
                                                            tmp_path: Path) -> None:
    proc = run_cli("run", "connectivity", "--out", str(tmp_path / "out"),
                   env={"DATABASE_URL": quiet.url("monitor")}, umask=0o077)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (tmp_path / "out").iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, f"{path.name} readable by others"


def test_a_missing_service_is_a_configuration_error_not_a_down_server(tmp_path: Path) -> None:
    proc = run_cli("run", "connectivity", "--out", str(tmp_path), "--target", "service:nosuch")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    data = outputs(tmp_path)
    assert data["status"] == "could not run" and not findings_of(data, "reachability")
    (err,) = data["errors"]
    assert 'definition of service "nosuch" not found' in err["message"]
    assert "pg_service.conf" in err["message"]
