"""The runbooks as tools in JupyterLab, driven in a real kernel on the sandbox: the control
panel's Run redraws what the incident changed, the live views refresh through one session, an
action runs only after the typed confirmation, and a refusal is a message. `Button.click()`
fires the same handlers a person's click does. A headless run of the same notebook shows no
widget and finds the same."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psycopg
import pytest

from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import ROOT, retry, run_cli

pytestmark = pytest.mark.slow
WIDGET = "application/vnd.jupyter.widget-view+json"


class Kernel:
    """An IPython kernel of this interpreter, as JupyterLab starts one (JPY_SESSION_NAME set:
    a person is there)."""

    def __init__(self, env: dict[str, str], sockets: Path) -> None:
        from jupyter_client.manager import KernelManager

        full = {**os.environ, **env, "JPY_SESSION_NAME": "connectivity.ipynb"}
        full.pop("RUNBOOKS_HEADLESS", None)
        self.km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets))
        self.km.start_kernel(env=full, cwd=str(ROOT))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> str:
        """CODE run in the kernel; its stdout; AssertionError with the traceback on an error."""
        out: list[str] = []
        errors: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream" and content["name"] == "stdout":
                out.append(content["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(content["traceback"]))

        self.kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        assert not errors, errors[0]
        return "".join(out)

    def value(self, expr: str) -> Any:
        return json.loads(self.run(f"import json as _j; print(_j.dumps({expr}, default=str))"))

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def kernel(quiet: Sandbox, tmp_path: Path) -> Iterator[Kernel]:
    k = Kernel({"RB_MONITOR": quiet.url("monitor"), "RB_ADMIN": quiet.url("postgres"),
                "PYTHONPATH": str(ROOT)}, tmp_path / "kernel")
    k.run(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
          "from runbooks_lib.lab import start\n"
          "from runbooks_lib import present\n"
          "def shown(out):\n"
          "    return '\\n'.join(str(o['data'].get('text/plain', '')) + str(o['data'].get("
          "'text/html', '')) for o in out.outputs)\n")
    yield k
    k.close()


def start(k: Kernel, tmp_path: Path, **params: Any) -> None:
    """The runbook's start cell and every step cell, as Run All would run them."""
    given = {"target": "env:RB_MONITOR", "findings_path": str(tmp_path / "c.findings.json"),
             "audit_log": str(tmp_path / "audit.jsonl"), **params}
    k.run(f"rb = start('connectivity', {given!r})\n"
          "assert present.interactive() and rb.panel is not None\n"
          "for s in rb.spec.steps:\n"
          "    rb.step(s.key)\n"
          "verdict = rb.finish()\n")


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def alive(sb: Sandbox, pids: list[int]) -> set[int]:
    with psycopg.connect(sb.url("postgres")) as c:
        rows = c.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        return {int(r[0]) for r in rows.fetchall()}


def test_run_redraws_every_section_when_the_incident_changes(kernel: Kernel, quiet: Sandbox,
                                                             tmp_path: Path) -> None:
    start(kernel, tmp_path, leak_idle_age_s=1)
    assert kernel.value("rb.report.status") == "ok"
    # checks that did not run are rows of the table, and the status is never a bare green ok
    skipped = kernel.value("len(rb.report.skipped)")
    assert skipped and "did not run" in kernel.value("rb.panel.findings.value")
    assert f"ok, {skipped} checks skipped" in kernel.value("rb.panel.status.value")
    before = kernel.value("shown(rb.panel.sections['leaks'])")
    assert "leaky-api" not in before
    assert kernel.value("sorted(rb.panel.sections)") == sorted(
        ["reachability", "usage", "holders", "leaks", "budget", "action", "verdict"])
    with incidents.leaking_app(quiet.url("app"), "leaky-api", idle=22):  # 22 of 27 slots
        time.sleep(1.1)
        kernel.run("rb.panel.run_button.click()")
        table = kernel.value("rb.panel.findings.value")
        usage = kernel.value("shown(rb.panel.sections['usage'])")
        leaks = kernel.value("shown(rb.panel.sections['leaks'])")
        # a threshold changed in the panel: the same incident, judged again
        kernel.run("rb.panel.controls['connection_usage_warning'].value = 0.4\n"
                   "rb.panel.controls['connection_usage_critical'].value = 0.5\n"
                   "rb.panel.run_button.click()")
        critical = kernel.value("rb.report.status")
        verdict = kernel.value("shown(rb.panel.sections['verdict'])")
    assert "rb-findings-table" in table and "leaky-api" in table and "warning" in table
    assert "81%" in usage and "leaky-api" in leaks
    assert critical == "critical"
    assert "connectivity: status critical" in verdict, "the verdict is redrawn too"
    on_disk = json.loads((tmp_path / "c.findings.json").read_text())
    assert on_disk["status"] == "critical", "the findings file follows the panel"
    # each section is redrawn in place: one Output per step, not one more per run
    assert kernel.value("len(rb.panel.sections)") == 7
    # a value out of its declared range, or a warning above its critical: said, nothing runs
    kernel.run("rb.panel.controls['connection_usage_critical'].value = 5\n"
               "rb.panel.run_button.click()")
    assert "connection_usage_critical=5.0: expected a number from 0.01 to 1" in kernel.value(
        "rb.panel.status.value")
    kernel.run("rb.panel.controls['connection_usage_critical'].value = 0.5\n"
               "rb.panel.controls['connection_usage_warning'].value = 0.9\n"
               "rb.panel.run_button.click()")
    assert "the warning level must not be above the critical one" in kernel.value(
        "rb.panel.status.value")
    assert kernel.value("rb.report.status") == "critical", "nothing ran"


def test_live_views_refresh_through_one_session(kernel: Kernel, quiet: Sandbox,
                                                tmp_path: Path) -> None:
    start(kernel, tmp_path)
    kernel.run("rb.live()")
    first = kernel.value("rb.live_view.said")
    assert first.startswith("refreshed"), first
    with incidents.lock_chain(quiet.url("app")), \
            incidents.leaking_app(quiet.url("app"), "leaky-api", idle=3):
        time.sleep(1.1)
        kernel.run("rb.live_view.refresh_button.click()")
        views = kernel.value("[rb.live_view.connections.value, rb.live_view.tree.value, "
                             "rb.live_view.rounds]")
        kernel.run("rb.live_view.start_auto(limit_s=5)")
        peak = 0
        for _ in range(20):
            with psycopg.connect(quiet.url("postgres")) as c:
                n = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                              "'runbooks/connectivity/live'").fetchone()
            peak = max(peak, int(n[0]) if n else 0)
            time.sleep(0.3)
        retry(lambda: kernel.value("rb.live_view.auto.value") is False, timeout=15)
    connections, tree, rounds = views
    assert "leaky-api" in connections and "idle" in connections
    assert "└" in tree, "a waiter is drawn under its blocker"
    assert rounds == 2
    assert peak == 1, "the live views hold exactly one connection"
    assert "auto-refresh stopped" in kernel.value("rb.live_view.said")
    assert kernel.value("rb.live_view.rounds") >= 3
    assert "Plotly" in kernel.value("shown(rb.live_view.load)")


def test_an_action_runs_only_after_the_typed_confirmation(kernel: Kernel, quiet: Sandbox,
                                                          tmp_path: Path) -> None:
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0,
                               idle_in_transaction=2) as held:
        time.sleep(1.1)
        start(kernel, tmp_path, admin_target="env:RB_ADMIN", terminate_application="stuck-worker",
              terminate_idle_s=1, allow_actions=True)
        pids = sorted(held.pids)
        assert kernel.value("len(rb.confirmations)") == 1
        c = "rb.confirmations[0]"
        # a wrong name: the button stays disabled, and a click does nothing
        kernel.run(f"{c}.text.value = 'stuck-workr'\n{c}.button.click()")
        assert kernel.value(f"{c}.button.disabled") is True
        time.sleep(0.5)
        assert alive(quiet, pids) == set(pids)
        assert [a["decision"] for a in audit(tmp_path)] == []
        # the right name: enabled; the click acts and shows what really happened
        kernel.run(f"{c}.text.value = 'stuck-worker'")
        assert kernel.value(f"{c}.button.disabled") is False
        kernel.run(f"{c}.button.click()")
        retry(lambda: not alive(quiet, pids), timeout=5)
        result = kernel.value(f"shown({c}.result)")
    assert "2 of 2 sessions ended" in result and "re-checked on the server" in result
    assert [a["decision"] for a in audit(tmp_path)] == ["executed"]
    # a second click does nothing more
    kernel.run(f"{c}.button.click()")
    assert [a["decision"] for a in audit(tmp_path)] == ["executed"]


def test_cancel_does_nothing_and_is_audited(kernel: Kernel, quiet: Sandbox,
                                            tmp_path: Path) -> None:
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0,
                               idle_in_transaction=1) as held:
        time.sleep(1.1)
        start(kernel, tmp_path, admin_target="env:RB_ADMIN", terminate_application="stuck-worker",
              terminate_idle_s=1, allow_actions=True)
        kernel.run("rb.confirmations[0].cancel.click()\n"
                   "rb.confirmations[0].text.value = 'stuck-worker'\n"
                   "rb.confirmations[0].button.click()")
        time.sleep(0.5)
        assert alive(quiet, held.pids) == set(held.pids)
        assert "nothing done" in kernel.value("shown(rb.confirmations[0].result)")
    assert [a["decision"] for a in audit(tmp_path)] == ["declined"]


def test_a_refusal_is_a_message_with_the_grant(kernel: Kernel, quiet: Sandbox,
                                               tmp_path: Path) -> None:
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0,
                               idle_in_transaction=1) as held:
        time.sleep(1.1)
        start(kernel, tmp_path, terminate_application="stuck-worker", terminate_idle_s=1,
              allow_actions=True)  # as monitor: pg_monitor, no pg_signal_backend
        shown = kernel.value("shown(rb.panel.sections['action'])")
        assert alive(quiet, held.pids) == set(held.pids)
    assert kernel.value("len(rb.confirmations)") == 0, "no button that could not work"
    assert 'GRANT pg_signal_backend TO &quot;monitor&quot;' in shown and "Traceback" not in shown
    assert [a["decision"] for a in audit(tmp_path)] == ["refused"]
    # a finding, as headless: the panel's status is not ok while sessions were left alone
    assert kernel.value("rb.report.status") == "warning"
    assert "refused" in kernel.value("rb.panel.findings.value")
    # actions off: the preview says how to turn them on
    start(kernel, tmp_path, terminate_application="stuck-worker", terminate_idle_s=1)
    assert kernel.value("len(rb.confirmations)") == 0


def test_headless_shows_no_widget_and_finds_the_same(kernel: Kernel, quiet: Sandbox,
                                                     tmp_path: Path) -> None:
    with incidents.leaking_app(quiet.url("app"), "leaky-api", idle=22):
        time.sleep(1.1)
        start(kernel, tmp_path, leak_idle_age_s=1)
        interactive = kernel.value("sorted({(f.check, f.severity) for f in rb.report.findings})")
        proc = run_cli("run", "connectivity", "--out", str(tmp_path / "h"), "-p",
                       "leak_idle_age_s=1", env={"DATABASE_URL": quiet.url("monitor")})
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    nb = nbformat.read(tmp_path / "h" / "connectivity.ipynb", as_version=4)
    kinds = {k for c in nb.cells for o in c.get("outputs", []) for k in o.get("data", {})}
    assert WIDGET not in kinds
    data = json.loads((tmp_path / "h" / "connectivity.findings.json").read_text())
    assert sorted([f["check"], f["severity"]] for f in data["findings"]) == interactive


def test_a_log_scan_shows_its_progress(kernel: Kernel, tmp_path: Path) -> None:
    line = {"timestamp": "2026-11-28 10:00:00.000 UTC", "user": "app", "dbname": "cosnap",
            "pid": 4242, "error_severity": "ERROR", "state_code": "40P01",
            "message": "deadlock detected", "application_name": "cosnap-backend",
            "backend_type": "client backend"}
    log = tmp_path / "postgresql.json"
    log.write_text("".join(json.dumps({**line, "pid": i}) + "\n" for i in range(20000)))
    kernel.run(
        "import ipywidgets as w\n"
        "from runbooks_lib import logs\n"
        "out = w.Output()\n"
        f"with present.into(out):\n    scan = logs.scan_source(None, {str(log)!r}, None, "
        "progress=present.Progress('reading the server log (MB)'))\n"
        "(b,) = [w.Widget.widgets[o['data'][" + repr(WIDGET) + "]['model_id']] for o in "
        "out.outputs]\n")
    bar = kernel.value("[b.description, b.value, b.max, b.bar_style, "
                       "scan.errors_by_sqlstate.get('40P01')]")
    label, value, top, style, deadlocks = bar
    assert "server log" in label and top == pytest.approx(log.stat().st_size / 2**20)
    assert value == top and style == "success" and deadlocks == 20000


def test_a_misspelled_application_is_named_with_the_closest_one(kernel: Kernel, quiet: Sandbox,
                                                                tmp_path: Path) -> None:
    with incidents.leaking_app(quiet.url("app"), "stuck-worker", idle=0, idle_in_transaction=1):
        time.sleep(1.1)
        start(kernel, tmp_path, admin_target="env:RB_ADMIN", terminate_application="stuck-workr",
              terminate_idle_s=1, allow_actions=True)
        table = kernel.value("rb.panel.findings.value")
    assert "did you mean &#x27;stuck-worker&#x27;?" in table
    assert kernel.value("len(rb.confirmations)") == 0
    assert [a["decision"] for a in audit(tmp_path)] == ["nothing_to_do"]
