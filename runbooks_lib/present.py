"""What a person sees in the notebook and in the HTML report.

Everything that came from the database is escaped: application names and query texts can hold
HTML. Plotly figures are emitted as the plotly MIME bundle (interactive in JupyterLab) plus an
HTML fragment without plotly.js; the report embeds plotly.js once, offline (report.py).
"""

from __future__ import annotations

import html
import json
from typing import Any

import pandas as pd

from .findings import Finding, Skipped

_COLORS = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828"}


def _display(bundle: dict[str, Any]) -> None:
    """Send a MIME bundle to the notebook; do nothing outside IPython (scripts, tests)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - ipykernel is a dependency
        return
    if get_ipython() is None:
        return
    display(bundle, raw=True)


def table_html(df: pd.DataFrame, max_rows: int = 50) -> str:
    shown = df.head(max_rows)
    out = shown.to_html(index=False, escape=True, border=0, classes="rb-table", na_rep="")
    if len(df) > max_rows:
        out += f"<p><i>{len(df) - max_rows} more rows not shown</i></p>"
    return out


def finding_html(f: Finding) -> str:
    e = html.escape
    color = _COLORS.get(f.severity, "#555")
    parts = [
        f'<div class="rb-finding rb-{e(f.severity)}" style="border-left:6px solid {color};'
        'padding:4px 10px;margin:6px 0">',
        f'<b style="color:{color}">{e(f.severity.upper())}</b> '
        f"<b>{e(f.title)}</b> <code>{e(f.check)}</code>",
    ]
    if f.detail:
        parts.append(f"<div>{e(f.detail)}</div>")
    if f.remediation:
        parts.append(f"<div><i>Next:</i> {e(f.remediation)}</div>")
    if f.evidence:
        parts.append("<details><summary>evidence</summary>")
        parts.append(table_html(pd.DataFrame(f.evidence), max_rows=20))
        parts.append("</details>")
    parts.append("</div>")
    return "".join(parts)


def show_findings(findings: list[Finding]) -> None:
    if not findings:
        return
    text = "\n".join(f"[{f.severity}] {f.title}" for f in findings)
    _display({"text/html": "".join(finding_html(f) for f in findings), "text/plain": text})


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


def show_table(df: pd.DataFrame, caption: str = "", max_rows: int = 50) -> None:
    head = f"<h4>{html.escape(caption)}</h4>" if caption else ""
    if df.empty:
        _display({"text/html": head + "<p><i>none</i></p>", "text/plain": f"{caption}: none"})
        return
    _display({"text/html": head + table_html(df, max_rows), "text/plain": df.head(max_rows).to_string()})


def show_text(text: str) -> None:
    _display({"text/html": f"<p>{html.escape(text)}</p>", "text/plain": text})


def figure_bundle(fig: Any) -> dict[str, Any]:
    """The plotly MIME bundle plus an HTML fragment that expects plotly.js on the page.

    '</' is escaped in the embedded JSON so that a query text holding '</script>' cannot end
    the script tag early (DESIGN 9).
    """
    spec = json.loads(fig.to_json())
    fragment = fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})
    return {
        "application/vnd.plotly.v1+json": spec,
        "text/html": fragment,
        "text/plain": f"<figure: {spec.get('layout', {}).get('title', {}).get('text', '')}>",
    }


def show_figure(fig: Any) -> None:
    _display(figure_bundle(fig))
