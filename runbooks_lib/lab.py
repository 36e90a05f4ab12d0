"""A runbook opened in JupyterLab by a person: the control panel at the top (the target
masked, the runbook's declared parameters as controls with their units and allowed values, a Run
button that runs the probes and checks again in the same kernel and redraws every section in
place, the steps' progress, the findings as one compact colour-coded table) and the live views.

The notebook's start cell calls `start()`: headless (`runbooks run`, papermill) it is the plain
Runbook and nothing here is built; the findings are the same. The panel is generated from the
registry's declarations: a parameter declared for a check appears with no code of its own.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from . import params as P
from . import present
from .findings import Report
from .live import LiveView
from .registry import Param, parameters
from .runbook import Runbook

# the connection and recording parameters stay in the parameters cell: a DSN typed into a
# widget would be stored with the notebook's widget state
LEFT_OUT = {p.name for p in (*P.CONNECTION, *P.RECORDING)}


def control(p: Param, value: Any) -> Any:
    """The widget for parameter P, holding VALUE: its unit in the label, its help and allowed
    values in the tooltip. Numbers are not clamped as they are typed (a 5 silently becoming 1 is
    worse than a refusal): Run checks every value against the declaration and says what is
    wrong."""
    import ipywidgets as w

    label = p.name + (f" ({p.unit})" if p.unit else "")
    common: dict[str, Any] = {"description": label, "tooltip": f"{p.help} ({p.allowed()})",
                              "style": {"description_width": "initial"},
                              "layout": w.Layout(width="auto")}
    if p.kind is bool:
        return w.Checkbox(value=bool(value), indent=False, **common)
    if p.choices:
        return w.Dropdown(options=list(p.choices), value=value, **common)
    if p.kind is int:
        return w.IntText(value=int(value), **common)
    if p.kind is float:
        return w.FloatText(value=float(value), step=None, **common)
    return w.Text(value=str(value), **common)


class Panel:
    """The widgets of one runbook's panel and the sections (one Output per step) it redraws."""

    def __init__(self, rb: LabRunbook) -> None:
        import ipywidgets as w

        assert rb.spec is not None
        self.rb = rb
        self.sections: dict[str, Any] = {}  # step key -> ipywidgets Output
        self.controls = {p.name: control(p, rb.params.get(p.name, p.default))
                         for p in parameters(rb.spec) if p.name not in LEFT_OUT}
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="run the probes and checks again with these values")
        self.run_button.on_click(lambda _: self.run())
        self.status = w.HTML()
        self.progress = w.IntProgress(value=0, min=0, max=len(rb.spec.steps),
                                      description="steps", layout=w.Layout(width="260px"))
        self.findings = w.HTML().add_class("rb-findings")
        server = rb.report.server_version or "not connected yet"
        self.header = w.HTML(
            f"<b>{html.escape(rb.name)}: {html.escape(rb.spec.title)}</b> &middot; target "
            f"<code>{html.escape(rb.report.target)}</code>")
        self.server = w.HTML(f"server: {html.escape(server)}")
        grid = w.GridBox(list(self.controls.values()), layout=w.Layout(
            grid_template_columns="repeat(auto-fill, minmax(300px, 1fr))", grid_gap="2px 12px"))
        settings = w.Accordion(children=[grid], titles=("parameters",))
        settings.selected_index = None
        self.box = w.VBox([self.header, self.server, settings,
                           w.HBox([self.run_button, self.progress, self.status]),
                           self.findings]).add_class("rb-panel")
        self.update()

    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items()}

    def run(self) -> None:
        """Run again with the panel's values: every section drawn so far is redrawn in place;
        a value the registry refuses is said and nothing runs."""
        assert self.rb.spec is not None
        try:
            given = P.from_namespace(parameters(self.rb.spec), {**self.rb.params, **self.values()})
        except P.UsageError as exc:
            self.status.value = (f'<span style="color:#c62828">not run: {html.escape(str(exc))}'
                                 "</span>")
            return
        self.run_button.disabled = True
        self.status.value = "running..."
        started = time.monotonic()
        try:
            self.rb.rerun(given)
        finally:
            self.run_button.disabled = False
        self.update(f"ran again in {time.monotonic() - started:.1f} s at {time.strftime('%H:%M:%S')}")

    @contextmanager
    def section(self, key: str) -> Iterator[None]:
        """Draw step KEY (or the verdict) into its section: shown in its cell the first time,
        emptied and redrawn in place afterwards."""
        import ipywidgets as w

        out = self.sections.get(key)
        if out is None:
            out = self.sections[key] = w.Output()
            present.show_widget(out)
        else:
            out.outputs = ()
        assert self.rb.spec is not None
        keys = [s.key for s in self.rb.spec.steps]
        if key in keys:
            self.progress.value = keys.index(key)
            self.progress.description = f"step {keys.index(key) + 1}/{len(keys)}"
        with present.into(out):
            yield

    def update(self, note: str = "") -> None:
        """The findings table, the status line and the steps' progress, from the report."""
        assert self.rb.spec is not None
        report = self.rb.report
        self.findings.value = present.findings_table_html(report.findings, report.skipped,
                                                          report.errors)
        total = len(self.rb.spec.steps)
        self.progress.value = len(report.steps_done)
        self.progress.description = f"{len(report.steps_done)}/{total} steps"
        if report.server_version:
            self.server.value = f"server: {html.escape(report.server_version)}"
        self.status.value = present.status_html(report.status, len(report.skipped)) + (
            f" &middot; {html.escape(note)}" if note else "")


class LabRunbook(Runbook):
    """The Runbook with the panel: each step drawn into a section the panel redraws, the
    findings table kept up to date, the live views, and Run (`rerun`)."""

    panel: Panel | None = None
    live_view: LiveView | None = None

    @classmethod
    def start(cls, name: str, namespace: Mapping[str, Any]) -> Runbook:
        rb = super().start(name, namespace)
        assert isinstance(rb, LabRunbook)
        if rb.params:  # parameters the registry refused: said by start, no panel to run
            rb.panel = Panel(rb)
            present.show_widget(rb.panel.box)
        return rb

    def section(self, key: str) -> AbstractContextManager[None]:
        return self.panel.section(key) if self.panel is not None else nullcontext()

    def changed(self) -> None:
        if self.panel is not None:
            self.panel.update()

    def live(self) -> None:
        if self.target is None:
            return
        if self.live_view is not None:
            self.live_view.close()
        self.live_view = LiveView(self.target, self.timeouts, self.name)
        present.show_widget(self.live_view.box)
        self.live_view.refresh()

    def rerun(self, params: dict[str, Any]) -> None:
        """The probes and checks again with PARAMS, in this kernel: a new connection, new
        snapshots, a new report (written to the same findings path), and the steps drawn so far
        run again in order, each redrawn in place, then the verdict."""
        if self.spec is None or self.target is None or self.panel is None:
            return  # nothing can run: the reason is already in the report
        self.close()
        self.snapshots.clear()
        self.unavailable = None
        self.params = params
        drawn = set(self.panel.sections)
        self.report = Report(runbook=self.name, target=self.report.target, path=self.report.path,
                             window=self.window())
        for s in self.spec.steps:
            if s.key in drawn:
                self.step(s.key)
        if "verdict" in drawn:
            self.finish()
        else:
            self.close()
            self.report.write()


def start(name: str, namespace: Mapping[str, Any]) -> Runbook:
    """The run of runbook NAME (the notebook's start cell): with the panel and the live views
    where a person is there, the plain Runbook headless."""
    if present.interactive():
        return LabRunbook.start(name, namespace)
    return Runbook.start(name, namespace)
