"""What a person sees in the notebook and in the HTML report.

Everything that came from the database is escaped: application names and query texts can hold
HTML. Figures are plotly specs emitted as the plotly MIME bundle (interactive in JupyterLab) plus an
HTML fragment without plotly.js; the report page loads plotly.js from a file beside it, offline
(page.py). Tables sit in a wrapper that scrolls sideways, so a wide one never runs off a phone's
screen; each finding carries the id the report's summary links to.
"""

from __future__ import annotations

import html
import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .findings import Finding, Skipped

if TYPE_CHECKING:  # pandas is imported late, see session.Session.frame
    import pandas as pd

_COLORS = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828"}


_SINK = threading.local()  # the Output widget a runbook section is being drawn into


def interactive() -> bool:
    """A person at a Jupyter front end, who can click: widgets are shown. A headless run
    (`runbooks run`, papermill, a script) shows none and its findings are the same. Jupyter's
    server names a kernel's notebook in JPY_SESSION_NAME; papermill does not."""
    if os.environ.get("RUNBOOKS_HEADLESS"):
        return False
    if not (os.environ.get("JPY_SESSION_NAME") or os.environ.get("RUNBOOKS_INTERACTIVE")):
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel is a dependency
        return False
    return getattr(get_ipython(), "kernel", None) is not None


@contextmanager
def into(output: Any) -> Iterator[None]:
    """Everything shown inside goes into OUTPUT (an ipywidgets Output), kept on the kernel's
    side: a section is redrawn in place by emptying it, and a test reads what it holds."""
    previous = getattr(_SINK, "output", None)
    _SINK.output = output
    try:
        yield
    finally:
        _SINK.output = previous


def _display(bundle: dict[str, Any]) -> None:
    """Send a MIME bundle to the notebook (or the section being drawn); do nothing outside
    IPython (scripts, tests)."""
    sink = getattr(_SINK, "output", None)
    if sink is not None:
        sink.outputs = (*sink.outputs, {"output_type": "display_data", "data": bundle,
                                        "metadata": {}})
        return
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - ipykernel is a dependency
        return
    if get_ipython() is None:
        return
    display(bundle, raw=True)


SMALL_TABLE = 12  # rows: a table this short is kept on one printed page


def table_html(df: pd.DataFrame, max_rows: int = 50) -> str:
    """DF escaped, in a wrapper that scrolls sideways (a wide table stays on a phone's screen);
    a short one is marked rb-small so that printing does not split it."""
    shown = df.head(max_rows)
    small = " rb-small" if len(shown) <= SMALL_TABLE else ""
    out = (f'<div class="rb-scroll{small}" style="overflow-x:auto;max-width:100%">'
           + shown.to_html(index=False, escape=True, border=0, classes="rb-table", na_rep="")
           + "</div>")
    if len(df) > max_rows:
        out += f"<p><i>{len(df) - max_rows} more rows not shown</i></p>"
    return out


def finding_html(f: Finding, anchor: str = "") -> str:
    """One finding; ANCHOR (finding-<index in the findings JSON>) is the id the report's
    summary links to. Its evidence is collapsed: the title, detail and Next come first."""
    e = html.escape
    color = _COLORS.get(f.severity, "#555")
    ident = f' id="{e(anchor)}"' if anchor else ""
    parts = [
        f'<div{ident} class="rb-finding rb-{e(f.severity)}" style="border-left:6px solid {color};'
        'padding:4px 10px;margin:6px 0">',
        f'<b style="color:{color}">{e(f.severity.upper())}</b> '
        f"<b>{e(f.title)}</b> <code>{e(f.check)}</code>",
    ]
    if f.detail:
        parts.append(f"<div>{e(f.detail)}</div>")
    if f.remediation:
        parts.append(f"<div><i>Next:</i> {e(f.remediation)}</div>")
    if f.evidence:
        parts.append('<details class="rb-evidence"><summary>evidence</summary>')
        import pandas as pd

        parts.append(table_html(pd.DataFrame(f.evidence), max_rows=20))
        parts.append("</details>")
    parts.append("</div>")
    return "".join(parts)


def show_findings(findings: list[Finding], first: int | None = None) -> None:
    """FINDINGS shown; FIRST is the index of the first one in the findings JSON, which makes
    each one's anchor (finding-<index>)."""
    if not findings:
        return
    text = "\n".join(f"[{f.severity}] {f.title}" for f in findings)
    body = "".join(finding_html(f, "" if first is None else f"finding-{first + i}")
                   for i, f in enumerate(findings))
    _display({"text/html": body, "text/plain": text})


def show_skipped(skipped: Skipped) -> None:
    e = html.escape
    _display({
        "text/html": f'<div class="rb-skipped" style="color:#666">skipped <code>{e(skipped.check)}'
                     f"</code>: {e(skipped.reason)}</div>",
        "text/plain": f"skipped {skipped.check}: {skipped.reason}",
    })


def show_error(step: str, message: str) -> None:
    e = html.escape
    _display({
        "text/html": f'<div class="rb-error" style="color:#c62828">step <b>{e(step)}</b> failed: '
                     f"{e(message)}</div>",
        "text/plain": f"step {step} failed: {message}",
    })


def show_table(df: pd.DataFrame, caption: str = "", max_rows: int = 50,
               collapsed: bool = False) -> None:
    """DF under CAPTION; COLLAPSED puts it in a closed <details> whose summary is the caption
    (another ordering of a table already shown: there when wanted, not in the way)."""
    c = html.escape(caption)
    if collapsed:
        inner = "<p><i>none</i></p>" if df.empty else table_html(df, max_rows)
        _display({"text/html": f'<details class="rb-more"><summary>{c}</summary>{inner}</details>',
                  "text/plain": f"{caption}: none" if df.empty else df.head(max_rows).to_string()})
        return
    head = f"<h4>{c}</h4>" if caption else ""
    if df.empty:
        _display({"text/html": head + "<p><i>none</i></p>", "text/plain": f"{caption}: none"})
        return
    _display({"text/html": head + table_html(df, max_rows), "text/plain": df.head(max_rows).to_string()})


def show_text(text: str) -> None:
    _display({"text/html": f"<p>{html.escape(text)}</p>", "text/plain": text})


def show_refusal(text: str) -> None:
    """An action that was not done, and why (with the grant to ask for)."""
    _display({"text/html": f'<div class="rb-refusal" style="color:#c62828">{html.escape(text)}'
                           "</div>", "text/plain": text})


def show_widget(widget: Any) -> None:
    """An ipywidgets widget, into the section being drawn when there is one."""
    _display({"application/vnd.jupyter.widget-view+json": {
        "model_id": widget.model_id, "version_major": 2, "version_minor": 0},
        "text/plain": repr(widget)})


def status_color(status: str) -> str:
    """A run's status or a finding's severity as its colour; could not run is as red as
    critical."""
    return _COLORS.get(status, _COLORS["critical"] if status == "could not run" else "#555")


class Progress:
    """A progress bar for a long step (a log scan, a sampling window) where a person is there;
    elsewhere a no-op, so a step reports its progress unconditionally. Made by the runbook
    (`rb.progress(label)`) and handed to the code doing the work."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def start(self, total: float) -> None:
        if total <= 0 or not interactive():
            return
        import ipywidgets as w

        self.bar = w.FloatProgress(value=0, min=0, max=float(total), description=self.label,
                                   style={"description_width": "initial"})
        show_widget(self.bar)

    def update(self, done: float) -> None:
        if self.bar is not None:
            self.bar.value = min(float(done), self.bar.max)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.value = self.bar.max
            self.bar.bar_style = "success"


_RANK = {"critical": 0, "warning": 1, "info": 2}


def status_html(status: str, skipped: int) -> str:
    """A run's status for the panel: never a green ok beside checks that did not run."""
    e = html.escape
    if skipped and status in ("ok", "info"):
        return (f'status <b style="color:#666">{e(status)}, {skipped} checks skipped</b> '
                "(see below: not run is not ok)")
    return f'status <b style="color:{status_color(status)}">{e(status)}</b>'


def _chip(label: str, color: str) -> str:
    return (f'<span style="background:{color};color:#fff;border-radius:3px;padding:1px 6px;'
            f'font-size:85%">{html.escape(label)}</span>')


def findings_table_html(findings: list[Finding], skipped: Sequence[Skipped] = (),
                        errors: Sequence[Any] = ()) -> str:
    """The findings as one compact table, worst first: severity, title, Next; the detail and
    the evidence open from the title. Failed steps and skipped checks follow, each with its
    reason (a check that did not run is said, never counted as ok). Escaped like everything
    else."""
    e = html.escape
    rows = []
    for err in errors:
        rows.append(f'<tr class="rb-row rb-error" style="vertical-align:top"><td>'
                    f'{_chip("failed", _COLORS["critical"])}</td><td>step {e(err.step)} failed'
                    f"</td><td>{e(err.message)}</td></tr>")
    order = sorted(range(len(findings)), key=lambda i: (_RANK.get(findings[i].severity, 3), i))
    for i in order:
        f = findings[i]
        inner = f"<div>{e(f.detail)}</div>" if f.detail else ""
        if f.evidence:
            import pandas as pd

            inner += table_html(pd.DataFrame(f.evidence), max_rows=20)
        title = (f"<details><summary>{e(f.title)}</summary>{inner}</details>" if inner
                 else e(f.title))
        rows.append(f'<tr class="rb-row rb-{e(f.severity)}" style="vertical-align:top"><td>'
                    f"{_chip(f.severity, _COLORS.get(f.severity, '#555'))}</td><td>{title}</td>"
                    f"<td>{e(f.remediation)}</td></tr>")
    for s in skipped:
        rows.append(f'<tr class="rb-row rb-skipped" style="vertical-align:top;color:#666"><td>'
                    f'{_chip("skipped", "#777")}</td><td>{e(s.check)} did not run</td>'
                    f"<td>{e(s.reason)}</td></tr>")
    body = "".join(rows) or '<tr><td colspan="3"><i>no findings yet</i></td></tr>'
    return ('<div class="rb-scroll" style="overflow-x:auto;max-width:100%">'
            '<table class="rb-findings-table" style="border-collapse:collapse;width:100%">'
            '<colgroup><col style="width:6em"><col style="width:45%"><col></colgroup>'
            "<thead><tr><th>severity</th><th>finding</th><th>Next</th></tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def script_json(value: Any) -> str:
    """JSON safe inside a <script> tag: '<' is escaped, so a query text holding '</script>'
    cannot end the tag early (DESIGN 9)."""
    from .findings import jsonable

    return json.dumps(jsonable(value)).replace("<", "\\u003c")


def figure_bundle(spec: dict[str, Any]) -> dict[str, Any]:
    """A plotly figure spec as the plotly MIME bundle (interactive in JupyterLab) plus an HTML
    fragment that expects plotly.js on the page (the report loads it from a file beside it)."""
    div = f"rb-fig-{uuid.uuid4().hex[:12]}"
    fragment = (f'<div id="{div}" class="rb-figure" style="height:420px"></div>'
                f'<script type="text/javascript">(function(){{var s={script_json(spec)};'
                f'if(window.Plotly){{Plotly.newPlot("{div}",s.data,s.layout,'
                '{"responsive":true,"displaylogo":false});}})();</script>')
    title = spec.get("layout", {}).get("title", {}).get("text", "")
    return {"application/vnd.plotly.v1+json": json.loads(script_json(spec)),
            "text/html": fragment, "text/plain": f"<figure: {title}>"}


def show_figure(spec: dict[str, Any]) -> None:
    _display(figure_bundle(spec))


def stacked_bars(df: pd.DataFrame, x: str, y: str, color: str, title: str) -> dict[str, Any]:
    """Bars of Y per X, stacked by COLOR: a plotly spec built directly (plotly.express costs
    0.2 s of import and validation per run)."""
    traces = [{"type": "bar", "name": str(key), "x": group[x].astype(str).tolist(),
               "y": group[y].tolist()} for key, group in df.groupby(color, sort=True)]
    return {"data": traces, "layout": {"title": {"text": title}, "barmode": "stack",
                                       "xaxis": {"title": {"text": x}},
                                       "yaxis": {"title": {"text": y}}}}


def histogram(df: pd.DataFrame, x: str, color: str, title: str, nbins: int = 30) -> dict[str, Any]:
    traces = [{"type": "histogram", "name": str(key), "x": group[x].tolist(), "nbinsx": nbins}
              for key, group in df.groupby(color, sort=True)]
    return {"data": traces, "layout": {"title": {"text": title}, "barmode": "stack",
                                       "xaxis": {"title": {"text": x}},
                                       "yaxis": {"title": {"text": "count"}}}}
