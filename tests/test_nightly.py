"""The nightly run as a scheduler drives it: runbooks in parallel with a time limit each, the
overview and index, metrics, history, the webhook and the terminal, on the sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runbooks_lib.drill import keys
from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import ROOT, drill_args, retry, run_cli

pytestmark = pytest.mark.slow


def samples(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return [(s.name, tuple(sorted(s.labels.items())), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples]


class Hook(BaseHTTPRequestHandler):
    """A Slack-compatible webhook (POST) and a Pushgateway (PUT) on one port."""

    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append({"pushed": self.path, "body": body.decode()})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("H", (Hook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/SECRET", received
    server.shutdown()


def test_all_in_parallel_writes_index_overview_metrics_and_history(
        quiet: Sandbox, tmp_path: Path, drill_dir: Path) -> None:
    root = tmp_path / "reports"
    metrics_file = tmp_path / "textfile" / "pg_runbooks.prom"
    metrics_file.parent.mkdir()  # node_exporter's textfile directory exists
    env = {"DATABASE_URL": quiet.url("postgres"), "RUNBOOKS_DRILL_DIR": str(drill_dir),
           "RUNBOOKS_BACKUP_KEY": keys.generate()}
    for run in ("first", "second"):
        proc = run_cli("run", "--all", "--out", str(root / run), "--jobs", "4",
                       "-p", "sample_seconds=2", *drill_args(quiet, tmp_path),
                       "--metrics-file", str(metrics_file), env=env, timeout=300)
        assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    out = root / "second"
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["problems"], summary["problems"]
    names = [rb["name"] for rb in summary["runbooks"]]
    assert names == ["connectivity", "latency", "transaction_failures", "restore_drill"]
    # in parallel: every runbook started before the first one finished
    spans = []
    for name in names:
        data = json.loads((out / f"{name}.findings.json").read_text())
        spans.append((data["started_at"], data["duration_s"]))
    first_end = min(_epoch(s) + d for s, d in spans)
    assert all(_epoch(s) < first_end for s, _ in spans), spans
    index = (out / "index.html").read_text()
    for link in ("health_overview.html", *(f"{n}.html" for n in names), "summary.json",
                 "metrics.prom"):
        assert f'href="{link}"' in index, link
    overview = (out / "health_overview.html").read_text()
    for area in ("connections", "latency", "transaction failures", "backups"):
        assert area in overview
    assert "First recorded run" not in overview and "0 new" in overview
    # metrics: parseable, no duplicate series, every series names the target
    text = metrics_file.read_text()
    assert text == (out / "metrics.prom").read_text()
    found = samples(text)
    keys_ = [(n, labels) for n, labels, _ in found]
    assert len(keys_) == len(set(keys_)), "duplicate series"
    label = f"127.0.0.1:{quiet.port}/cosnap"
    assert all(dict(labels).get("target") == label for _, labels in keys_)
    assert any(n == "database_connections_active" for n, _ in keys_)
    assert not list(metrics_file.parent.glob("*.tmp*")), "written atomically"
    # history: both runs, the second compared with the first
    hist = run_cli("history", "--root", str(root))
    assert hist.returncode == 0, hist.stderr
    assert hist.stdout.count(label) >= 2, hist.stdout


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_hung_runbook_is_stopped_at_its_time_limit_and_reported(quiet: Sandbox,
                                                                   tmp_path: Path) -> None:
    """latency sampling for 300 s under a 25 s limit: stopped, could not run (exit 3), what it
    found kept, the other runbook's result untouched, and the run never waits the 300 s. The
    limit leaves connectivity (about 4 s alone) room on a busy CI machine: at 5 s it was stopped
    too there."""
    proc = run_cli("run", "connectivity", "latency", "--out", str(tmp_path), "--runbook-timeout",
                   "25", "-p", "sample_seconds=300", env={"DATABASE_URL": quiet.url("postgres")},
                   timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    latency = json.loads((tmp_path / "latency.findings.json").read_text())
    assert latency["status"] == "could not run"
    assert latency["errors"][-1]["step"] == "timeout", latency["errors"]
    assert latency["findings"], "what it found before the limit is kept"
    assert (tmp_path / "latency.html").exists()
    conn = json.loads((tmp_path / "connectivity.findings.json").read_text())
    assert conn["status"] in ("ok", "info") and not conn["errors"]
    assert "latency: could not run" in proc.stdout and "timeout" in proc.stdout


def test_sigterm_stops_every_runbook_and_writes_every_output(quiet: Sandbox,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": quiet.url("postgres")}
    proc = subprocess.Popen([sys.executable, "-m", "runbooks_lib", "run", "connectivity",
                             "latency", "transaction_failures", "--out", str(tmp_path),
                             "-p", "sample_seconds=60"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    retry(lambda: (tmp_path / "latency.findings.json").exists(), timeout=30)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] and summary["exit_code"] == 3
    for name in ("latency", "transaction_failures"):
        data = json.loads((tmp_path / f"{name}.findings.json").read_text())
        assert data["status"] == "could not run" and data["errors"][-1]["step"] == "interrupted"
    assert (tmp_path / "index.html").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--metrics-file", "/nonexistent-dir/pg.prom"], "is not a directory this user may write"),
    (["--keep-days", "-5"], "--keep-days -5"),
    (["--all", "connectivity"], "not both"),
    (["--alert-webhook", "hooks.example.com/x"], "http:// or https://"),
    (["health_overview"], "not run by name"),
])
def test_scheduler_options_are_checked_before_anything_runs(tmp_path: Path, args: list[str],
                                                           says: str) -> None:
    names = [] if "--all" in args or "health_overview" in args else ["connectivity"]
    proc = run_cli("run", *names, *args, "--out", str(tmp_path / "out"),
                   env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"})
    assert proc.returncode == 64, proc.stdout + proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing ran"


def test_a_parallel_run_leaves_the_process_in_its_directory(quiet: Sandbox, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels run in the run directory, the process stays where it was: `runbooks demo`
    reads its relative --out after the run (papermill's cwd chdirs the whole process, and
    threads restoring it in turn left it inside a run directory)."""
    from runbooks_lib import outputs, report

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", quiet.url("monitor"))
    code, summary = report.run(["connectivity", "transaction_failures"], "env:DATABASE_URL",
                               Path("rel/out"), {"sample_seconds": "1"},
                               outputs.Options(jobs=2, overview=False))
    assert os.getcwd() == str(tmp_path)
    assert code in (0, 1) and len(summary["runbooks"]) == 2
    for rb in summary["runbooks"]:
        assert (Path("rel/out") / rb["files"]["findings"]).exists()


def test_quiet_prints_nothing_on_a_healthy_run(quiet: Sandbox, tmp_path: Path) -> None:
    proc = run_cli("run", "connectivity", "--quiet", "--out", str(tmp_path),
                   env={"DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_a_blocker_seen_by_two_runbooks_is_one_alert_and_one_terminal_line(
        quiet: Sandbox, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    gateway = url.split("/services/")[0]
    with incidents.lock_chain(quiet.url("app"), "cosnap-backend"):
        proc = run_cli("run", "latency", "transaction_failures", "--quiet", "--out",
                       str(tmp_path), "--alert-webhook", url, "-p", "sample_seconds=2",
                       "-p", "blocking_warning_s=0.5", "--pushgateway", gateway,
                       env={"DATABASE_URL": quiet.url("postgres")})
    assert proc.returncode >= 1, proc.stdout + proc.stderr
    assert proc.stdout.count("blocks 2 session") == 1, proc.stdout  # --quiet: still printed
    (pushed,) = [r for r in received if "pushed" in r]
    assert pushed["pushed"].startswith("/metrics/job/pg_runbooks/target")
    assert ("pg_runbooks_status_code", (("runbook", "latency"),
                                        ("target", f"127.0.0.1:{quiet.port}/cosnap"))) in \
        [(n, labels) for n, labels, _ in samples(pushed["body"])]
    alerts = [r for r in received if "pushed" not in r]
    assert len(alerts) == 1, alerts
    text = json.dumps(alerts[0])
    assert text.count("blocks 2 session") == 1, text
    assert "SECRET" not in proc.stdout + proc.stderr
    assert quiet.passwords["postgres"] not in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["alert_sent"] is True and not summary["problems"]


def test_a_failing_webhook_is_reported_and_never_fails_the_run(quiet: Sandbox,
                                                               tmp_path: Path) -> None:
    from runbooks_lib.sandbox.server import free_port

    url = f"http://127.0.0.1:{free_port()}/services/T0/B0/SECRET"
    with incidents.lock_chain(quiet.url("app"), "cosnap-backend"):
        proc = run_cli("run", "latency", "--out", str(tmp_path), "--alert-webhook", url,
                       "-p", "sample_seconds=1", "-p", "blocking_warning_s=0.5",
                       env={"DATABASE_URL": quiet.url("postgres")})
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    assert "alert webhook not delivered" in proc.stdout
    assert "SECRET" not in proc.stdout + proc.stderr
    assert (tmp_path / "latency.html").exists() and (tmp_path / "summary.json").exists()
