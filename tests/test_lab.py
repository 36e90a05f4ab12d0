"""JupyterLab end to end: a real JupyterLab server and a real browser (Debian's chromium driven by
playwright) run the connectivity runbook's notebook as an on-call engineer would, against the
test sandbox with a leaking application in place, and look at what the page shows.

JupyterLab serves a copy of notebooks/ in a temporary directory (nothing is written into the
repository's notebooks), with its own config, data, runtime, settings and workspace directories
(no user's kernelspec or saved layout comes in). Screenshots are saved under the test's tmp_path
and copied to tests/output/.

The widget layer's DOM hooks (the control panel, the findings table, a live view, a plotly chart)
are looked for on every run; only those named in EXPECTED (or in $RUNBOOKS_LAB_EXPECT, a comma
list or ``all``) fail the test when missing: the others are reported as seen or not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nbformat
import pytest

from runbooks_lib.sandbox import incidents
from runbooks_lib.sandbox.server import Sandbox

from .conftest import ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, ViewportSize

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
HOOKS = ("panel", "findings", "live", "plotly")
# The hooks that must be there: all of HOOKS once the widget layer is merged.
EXPECTED: list[str] = list(HOOKS)
OUTPUT = ROOT / "tests" / "output"
NOTEBOOK = "connectivity.ipynb"
START_PAGE = "start_here.ipynb"  # the page `make lab` opens: the runbook is opened by its link
PROBE = "widget_probe.ipynb"  # not a runbook: proves that widgets and plotly render at all
VIEWPORT: ViewportSize = {"width": 1400, "height": 2300}  # tall: the notebook scrolls inside
WIDGETS_PLUGIN = "@jupyter-widgets/jupyterlab-manager:plugin"
LAB_EXTENSIONS = ("@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly")

# JavaScript run in the page (JupyterLab started with expose_app_in_browser): the notebook panel
# of a path, its kernel's status, whether every code cell has run, the errors in its outputs (an
# error output, or a traceback printed on stderr) and all its outputs as text.
FIND = ("(path) => Array.from(window.jupyterapp?.shell.widgets('main') ?? [])"
        ".find(w => w.context?.path === path)")
KERNEL_IDLE = f"""(path) => ({FIND})(path)?.sessionContext?.session?.kernel?.status === 'idle'"""
RUN_ALL = f"""(path) => {{
  const w = ({FIND})(path);
  window.jupyterapp.shell.activateById(w.id);
  void window.jupyterapp.commands.execute('notebook:run-all-cells');
}}"""
DONE = f"""(path) => {{
  const w = ({FIND})(path);
  if (w?.sessionContext?.session?.kernel?.status !== 'idle') return false;
  const code = w.content.widgets.filter(c => c.model.type === 'code');
  const prompts = Array.from(w.node.querySelectorAll('.jp-InputArea-prompt'));
  if (prompts.some(p => p.textContent.includes('*'))) return false;
  if (code.some(c => c.model.executionState === 'running')) return false;
  // every cell ran, or one failed (run-all stops there and leaves the others unrun)
  return code.every(c => c.model.executionCount !== null)
    || code.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'));
}}"""
ERRORS = f"""(path) => {{
  const w = ({FIND})(path);
  const errors = [];
  for (const c of w.content.widgets) {{
    if (c.model.type !== 'code') continue;
    for (const o of c.model.outputs.toJSON()) {{
      if (o.output_type === 'error') errors.push(`${{o.ename}}: ${{o.evalue}}`);
    }}
  }}
  const sel = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
  for (const e of w.node.querySelectorAll(sel)) {{
    if (/Traceback/.test(e.textContent)) errors.push(e.textContent.slice(0, 2000));
  }}
  return errors;
}}"""
OUTPUTS = f"""(path) => JSON.stringify(({FIND})(path).content.widgets
  .filter(c => c.model.type === 'code').map(c => c.model.outputs.toJSON()))"""
TOP = f"""async (path) => {{
  const w = ({FIND})(path);
  w.content.activeCellIndex = 0;
  await w.content.scrollToCell(w.content.widgets[0], 'start');
}}"""


def expected_hooks() -> set[str]:
    given = os.environ.get("RUNBOOKS_LAB_EXPECT", "")
    named = set(HOOKS) if given.strip() == "all" else {h.strip() for h in given.split(",") if h.strip()}
    unknown = named - set(HOOKS)
    assert not unknown, f"RUNBOOKS_LAB_EXPECT: unknown hooks {sorted(unknown)}; known: {HOOKS}"
    return set(EXPECTED) | named


@dataclass
class Lab:
    """A running JupyterLab: its URL, token, the directory it serves and its process."""

    base: str
    token: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def url(self, path: str) -> str:
        return f"{self.base}{path}{'&' if '?' in path else '?'}token={self.token}"

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.url(f"/api/{path}"), method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kernel_pids(self) -> list[int]:
        """The server's kernels (each in a session of its own: not in the server's group)."""
        return [pid for pid in children(self.proc.pid) if "ipykernel" in " ".join(cmdline(pid))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def stop(lab: Lab) -> None:
    """JupyterLab's process group terminated (it shuts its kernels down), then any kernel left."""
    kernels = lab.kernel_pids()
    with suppress(ProcessLookupError):
        os.killpg(lab.proc.pid, signal.SIGTERM)
    try:
        lab.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(lab.proc.pid, signal.SIGKILL)
        lab.proc.wait(timeout=10)
    for pid in kernels:
        if "ipykernel" in " ".join(cmdline(pid)):
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def write_probe(path: Path) -> None:
    """A notebook that shows an ipywidgets button and a plotly chart, nothing else."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import ipywidgets\nimport plotly.graph_objects as go\n\n"
        "button = ipywidgets.Button(description='Probe')\nbutton.add_class('rb-probe')\n"
        "display(button)\ngo.Figure(go.Bar(x=['a', 'b'], y=[1, 2]))")])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python",
                                 "name": "python3"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def lab(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on a copy of notebooks/, its runbooks pointed at the sandbox as monitor."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package: .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (dev extra)")
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    write_probe(root / PROBE)
    settings = base / "settings"
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token, port = os.urandom(24).hex(), free_port()
    env = {**os.environ, "JUPYTER_TOKEN": token, "DATABASE_URL": sandbox.url("monitor"),
           "RUNBOOKS_AUDIT_LOG": os.devnull,
           "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_DATA_DIR": str(base / "data"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces")}
    env.pop("JUPYTER_PATH", None)
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True", *(["--allow-root"] if os.geteuid() == 0 else [])]
    log = base / "jupyterlab.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=base, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    running = Lab(f"http://127.0.0.1:{port}", token, root, proc, log)
    try:
        started = time.monotonic()
        deadline = started + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{running.log_tail()}")
            with suppress(OSError):
                if "started" in running.api("status"):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer /api/status in 60 s:\n{running.log_tail()}")
            time.sleep(0.2)
        print(f"JupyterLab answered in {time.monotonic() - started:.1f} s")
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"],
                                     headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Console:
    """What the page said on its console, and the exceptions it did not catch."""

    messages: list[str]
    errors: list[str]


@pytest.fixture
def page(lab: Lab, browser: Browser) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    console = Console([], [])

    def said(msg: Any) -> None:
        console.messages.append(f"{msg.type}: {msg.text}")
        if msg.type == "error":
            console.errors.append(msg.text)

    pg.on("console", said)
    pg.on("pageerror", lambda exc: console.errors.append(f"uncaught: {exc}"))
    try:
        yield pg, console
    finally:
        context.close()
        with suppress(OSError):  # no session of a runbook left open for the next test
            for kernel in lab.api("kernels"):
                lab.api(f"kernels/{kernel['id']}", method="DELETE")


def open_and_run(lab: Lab, pg: Page, path: str, via: str = "") -> float:
    """PATH opened in JupyterLab (by its link on the notebook VIA, if given), all its cells run
    once its kernel is idle; the seconds the run took (kernel start excluded). The layout saved by
    an earlier test is reset: only what this test opens is open."""
    pg.goto(lab.url(f"/lab/tree/{via or path}?reset"))
    if via:
        # a relative link, rendered as the file's URL; JupyterLab opens it as a notebook
        pg.locator(f'.jp-RenderedMarkdown a[href*="/{path}"]').first.click()
    pg.wait_for_function(KERNEL_IDLE, arg=path, timeout=60_000)
    started = time.monotonic()
    pg.evaluate(RUN_ALL, path)
    pg.wait_for_function(DONE, arg=path, timeout=90_000, polling=250)
    return time.monotonic() - started


def screenshot(pg: Page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    pg.screenshot(path=str(shot), full_page=True)
    OUTPUT.mkdir(exist_ok=True)
    shutil.copy(shot, OUTPUT / name)
    print(f"screenshot: {shot} (copied to {OUTPUT / name})")
    return shot


def shown(pg: Page, selector: str, timeout: float, within: Locator | None = None) -> Locator:
    """The first SELECTOR (inside WITHIN), scrolled into view and visible; else AssertionError
    saying which element did not show within TIMEOUT ms."""
    from playwright.sync_api import Error, expect

    found = (within or pg.locator("body")).locator(selector).first
    try:
        found.wait_for(state="attached", timeout=timeout)
        found.scroll_into_view_if_needed(timeout=timeout)
        expect(found).to_be_visible(timeout=timeout)
    except (AssertionError, Error) as exc:
        raise AssertionError(f"no visible {selector} within {timeout / 1000:g} s") from exc
    return found


def button(within: Locator, label: str, timeout: float) -> Locator:
    from playwright.sync_api import Error, expect

    # an ipywidgets button's icon is part of its accessible name: match the label as a word
    found = within.get_by_role("button", name=re.compile(rf"^\W*{re.escape(label)}\s*$")).first
    try:
        expect(found).to_be_visible(timeout=timeout)
    except (AssertionError, Error) as exc:
        raise AssertionError(f"no button labelled {label!r} within {timeout / 1000:g} s") from exc
    return found


def panel_hook(pg: Page, timeout: float) -> None:
    """The control panel: an ipywidgets box of class rb-panel whose Run runs the checks again
    in the same kernel (its status line then says so)."""
    from playwright.sync_api import expect

    panel = shown(pg, ".rb-panel", timeout)
    button(panel, "Run", timeout).click(timeout=timeout)
    expect(panel).to_contain_text("ran again in", timeout=30_000)


def findings_hook(pg: Page, timeout: float) -> None:
    shown(pg, ".rb-findings-table", timeout)


def live_hook(pg: Page, timeout: float) -> None:
    """A live view (class rb-live): its Refresh button changes its .rb-live-stamp."""
    from playwright.sync_api import expect

    live = shown(pg, ".rb-live", timeout)
    stamp = shown(pg, ".rb-live-stamp", timeout, within=live)
    before = stamp.inner_text()
    for attempt in range(3):  # a stamp to the second may not change on a click within it
        button(live, "Refresh", timeout).click(timeout=timeout)
        try:
            expect(stamp).not_to_have_text(before, timeout=5_000)
            return
        except AssertionError as exc:
            if attempt == 2:
                raise AssertionError(
                    f".rb-live-stamp still {before!r} after 3 Refresh clicks") from exc


def plotly_hook(pg: Page, timeout: float) -> None:
    shown(pg, ".js-plotly-plot", timeout)


HOOK_CHECKS: dict[str, Callable[[Page, float], None]] = {
    "panel": panel_hook, "findings": findings_hook, "live": live_hook, "plotly": plotly_hook}


def test_connectivity_runbook_runs_clean_in_jupyterlab(
        lab: Lab, page: tuple[Page, Console], quiet: Sandbox, tmp_path: Path) -> None:
    pg, console = page
    started = time.monotonic()
    with incidents.leaking_app(quiet.url("app"), "cosnap-backend", idle=22, idle_in_transaction=1):
        ran = open_and_run(lab, pg, NOTEBOOK, via=START_PAGE)
        errors = pg.evaluate(ERRORS, NOTEBOOK)
        outputs = pg.evaluate(OUTPUTS, NOTEBOOK)
        kernels = lab.kernel_pids()
        pg.evaluate(TOP, NOTEBOOK)
        pg.wait_for_timeout(300)
        screenshot(pg, tmp_path, "connectivity.png")
        expected = expected_hooks()
        seen: dict[str, str] = {}
        for hook in HOOKS:
            try:
                HOOK_CHECKS[hook](pg, 15_000 if hook in expected else 1_000)
                seen[hook] = "seen"
            except AssertionError as exc:
                seen[hook] = f"missing: {exc}"
        live = pg.locator(".rb-live")
        page_text = live.first.inner_text() if live.count() else ""  # connections by app
        pg.evaluate(TOP, NOTEBOOK)
        screenshot(pg, tmp_path, "connectivity-after-hooks.png")
    print(f"run all cells: {ran:.1f} s; whole test body: {time.monotonic() - started:.1f} s")
    print("DOM hooks:", json.dumps(seen, indent=1))
    print("console:", "\n  ".join(console.messages))

    assert not errors, f"{NOTEBOOK}: cells failed:\n" + "\n---\n".join(errors)
    assert "cosnap-backend" in outputs + page_text, "the runbook did not see the leaking app"
    # the kernel is the interpreter that runs these tests (the project's venv): the python3
    # kernelspec says "python", which the server replaces with its own interpreter
    assert kernels and all(cmdline(k)[0] == sys.executable for k in kernels), [
        cmdline(k) for k in kernels]
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)
    missing = {h: s for h, s in seen.items() if h in expected and s != "seen"}
    assert not missing, f"widget layer hooks missing: {json.dumps(missing, indent=1)}"


def test_widgets_and_plotly_render_in_jupyterlab(lab: Lab, page: tuple[Page, Console],
                                                 tmp_path: Path) -> None:
    from playwright.sync_api import expect

    pg, console = page
    open_and_run(lab, pg, PROBE)
    config = json.loads(pg.locator("#jupyter-config-data").text_content() or "{}")
    loaded = {e["name"] for e in config.get("federated_extensions", [])}
    assert set(LAB_EXTENSIONS) <= loaded, f"lab extensions: {sorted(loaded)}"
    assert pg.evaluate(f"window.jupyterapp.isPluginActivated('{WIDGETS_PLUGIN}')")
    expect(pg.locator(".rb-probe")).to_have_text("Probe", timeout=15_000)
    expect(pg.locator(".js-plotly-plot").first).to_be_visible(timeout=15_000)
    screenshot(pg, tmp_path, "widget_probe.png")
    assert not pg.evaluate(ERRORS, PROBE)
    assert not console.errors, "browser console errors:\n" + "\n".join(console.errors)
