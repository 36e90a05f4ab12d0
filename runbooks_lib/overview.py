"""The health overview of a run: one traffic light per area, the key figures against their
thresholds, the findings to look at first, what is new since the last run, and the links.

Read from a run directory's files only (summary.json, NAME.findings.json and the reports
root's history), so the nightly page, `runbooks history` and a notebook opened the next
morning all say the same thing. Everything from the database is escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import history, stories, trend
from .findings import COULD_NOT_RUN, run_reports

AREAS = (("connections", "connectivity"), ("latency", "latency"),
         ("transaction failures", "transaction_failures"), ("backups", "restore_drill"))
AREA_OF = {runbook: area for area, runbook in AREAS}
# (area runbook, finding check, label): the figures a manager looks for, with their thresholds
KEY_FIGURES = (
    ("connectivity", "connection_usage", "connection slots used"),
    ("connectivity", "reachability", "connect time"),
    ("latency", "slow_query_share", "statements slower than the slow threshold"),
    ("latency", "load", "average active sessions"),
    ("latency", "blocking", "longest lock wait"),
    ("transaction_failures", "rollback_rate", "rollback rate"),
    ("restore_drill", "backup_age", "newest backup age"),
    ("restore_drill", "restore", "restore time (RTO)"),
    ("restore_drill", "restore_rpo", "achieved RPO"),
)
COLORS = {"ok": "#2e7d32", "info": "#2e7d32", "warning": "#ef6c00", "critical": "#c62828",
          COULD_NOT_RUN: "#6a1b9a", "not run": "#757575"}  # any other (skipped checks): grey
e = html.escape


def shown_value(name: str, value: float) -> str:
    """A metric's value in the unit its name carries.

    >>> shown_value("connection_usage_ratio", 0.938), shown_value("rto_seconds", 95.0)
    ('93.8%', '1.6 min')
    """
    if name.endswith(("_ratio", "_share", "_rate")):
        return f"{value:.1%}"
    if name.endswith("_seconds"):
        if value >= 3600:
            return f"{value / 3600:.1f} h"
        return f"{value / 60:.1f} min" if value >= 90 else f"{value:.2f} s"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


@dataclass
class Overview:
    run_dir: Path
    summary: dict[str, Any]
    reports: dict[str, dict[str, Any]]
    diff: history.Diff | None = None
    past: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", COULD_NOT_RUN))

    def area_status(self, runbook: str) -> str:
        for rb in self.summary.get("runbooks", []):
            if rb["name"] == runbook:
                return str(rb["status"])
        return "not run"

    def lights_html(self) -> str:
        cells = []
        for area, runbook in AREAS:
            status = self.area_status(runbook)
            report = self.reports.get(runbook, {})
            loud = stories.loud({runbook: report}) if report else []
            skipped = report.get("skipped") or []
            why = e(loud[0].title) if loud else ("no warning" if status in ("ok", "info")
                                                 else "")
            if skipped and status in ("ok", "info"):  # never green without evidence
                status = f"{status}, {len(skipped)} skipped"
                why = e(f"{skipped[0].get('check', '')}: {skipped[0].get('reason', '')}")
            elif skipped:
                why += f"<br>{len(skipped)} check(s) skipped"
            link = f'<a href="{runbook}.html">report</a>' if runbook in self.reports else ""
            cells.append(
                f'<div class="ov-light" style="flex:1 1 170px;border:1px solid #ddd;padding:6px '
                f'10px;border-top:10px solid {COLORS.get(status, "#757575")}">'
                f"<b>{e(area)}</b><br><span style=\"color:{COLORS.get(status, '#757575')}\">"
                f"<b>{e(status)}</b></span><br><small>{why}</small><br>{link}</div>")
        return ('<div class="ov-lights" style="display:flex;flex-wrap:wrap;gap:10px">'
                + "".join(cells) + "</div>")

    def figures(self) -> list[dict[str, Any]]:
        """The key figures present in this run (a check that did not run gives none)."""
        rows = []
        for runbook, check, label in KEY_FIGURES:
            for f in self.reports.get(runbook, {}).get("findings", []):
                m = f.get("metric") or {}
                if f.get("check") == check and isinstance(m.get("value"), int | float):
                    threshold = m.get("threshold")
                    rows.append({"area": AREA_OF[runbook], "figure": label, "name": m["name"],
                                 "value": shown_value(m["name"], float(m["value"])),
                                 "threshold": shown_value(m["name"], float(threshold))
                                 if isinstance(threshold, int | float) else "",
                                 "severity": f.get("severity", "ok")})
                    break
        return rows

    def figures_html(self) -> str:
        rows = self.figures()
        if not rows:
            return "<p>No key figure was measured in this run.</p>"
        body = "".join(
            f"<tr><td>{e(r['area'])}</td><td>{e(r['figure'])}</td><td><b>{e(r['value'])}</b></td>"
            f"<td>{e(r['threshold'])}</td><td style=\"color:{COLORS.get(r['severity'], '#222')}\">"
            f"{e(r['severity'])}</td></tr>" for r in rows)
        return ('<div class="rb-scroll"><table class="rb-table"><tr><th>area</th><th>figure</th>'
                "<th>value</th><th>threshold</th><th>severity</th></tr>" + body + "</table></div>")

    def first_html(self, most: int = 3) -> str:
        loud = stories.loud(self.reports)
        if not loud:
            return "<p>Nothing to look at first: no warning or critical finding.</p>"
        items = []
        for s in loud[:most]:
            lead = s.lead
            also = "".join(f"<li>same story: {e(str(i.finding.get('title', '')))}</li>"
                           for i in s.related[:3])
            items.append(
                f'<li><b style="color:{COLORS[s.severity]}">{e(s.severity.upper())}</b> '
                f'<a href="{e(lead.runbook)}.html#{lead.anchor}">{e(s.title)}</a> '
                f"<small>({e(', '.join(s.runbooks))})</small>"
                + (f"<br><i>Next:</i> {e(s.next)}" if s.next else "")
                + (f"<ul>{also}</ul>" if also else "") + "</li>")
        more = len(loud) - most
        return ("<ol>" + "".join(items) + "</ol>"
                + (f"<p>{more} more warning or critical stories in the reports below.</p>"
                   if more > 0 else ""))

    def new_html(self) -> str:
        d = self.diff
        if d is None:
            return "<p>No history: this run could not be compared with an earlier one.</p>"
        if d.first_run:
            return "<p>First recorded run for this target: nothing to compare with yet.</p>"

        def listed(entries: list[dict[str, Any]]) -> str:
            return "<ul>" + "".join(
                f"<li>{e(str(x.get('severity', '')))}: {e(str(x.get('title', '')))} "
                f"<small>({e(str(x.get('runbook', '')))})</small></li>" for x in entries) + "</ul>"

        parts = [f"<p><b>{len(d.new)} new</b>, {len(d.gone)} gone, {len(d.still)} still open "
                 "since the previous run.</p>"]
        if d.new:
            parts.append("<h4>New</h4>" + listed(d.new))
        if d.gone:
            parts.append("<h4>Gone</h4>" + listed(d.gone))
        return "".join(parts)

    def trend_html(self, last: int = 10) -> str:
        if len(self.past) < 2:
            return ""
        return "<pre>" + e(trend.table(self.past, last=last)) + "</pre>"

    def links_html(self) -> str:
        rows = []
        for rb in self.summary.get("runbooks", []):
            files = rb.get("files", {})
            rows.append(f"<tr><td><a href=\"{e(files.get('html', ''))}\">{e(rb['name'])}</a></td>"
                        f"<td style=\"color:{COLORS.get(rb['status'], '#222')}\">{e(rb['status'])}"
                        f"</td><td>{rb['duration_s']:.1f} s</td>"
                        f"<td><a href=\"{e(files.get('findings', ''))}\">findings JSON</a> "
                        f"<a href=\"{e(files.get('notebook', ''))}\">notebook</a></td></tr>")
        return ('<div class="rb-scroll"><table class="rb-table"><tr><th>runbook</th><th>status'
                "</th><th>time</th><th>files</th></tr>" + "".join(rows) + "</table></div>")

    def show(self, part: str) -> None:
        """Show one section in the notebook (PART: lights, first, figures, new, trend,
        links)."""
        from .present import _display

        text = getattr(self, f"{part}_html")()
        _display({"text/html": text or "<p>(nothing yet)</p>", "text/plain": part})


def load(run_dir: str | Path) -> Overview:
    """The overview of RUN_DIR ('' or a reports root: its newest run)."""
    path = Path(run_dir or "reports")
    if not (path / "summary.json").exists():
        runs = sorted(p.parent for p in path.glob("*/summary.json"))
        if not runs:
            raise FileNotFoundError(f"no run in {path}: runbooks run --all writes one")
        path = runs[-1]
    summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    reports = run_reports(path, summary)
    ov = Overview(path, summary, reports)
    root, label = path.parent, str(summary.get("target_label", ""))
    try:
        ov.past = history.runs(root, label or None)
        mine = [r for r in ov.past if r.get("started_at") == summary.get("started_at")]
        if mine:
            ov.diff = history.diff(history.previous(root, label, str(summary["started_at"])),
                                   mine[-1])
    except OSError:
        pass
    return ov


class Missing:
    """No run to show: said once when it is found, instead of a traceback per cell."""

    def __init__(self, why: str) -> None:
        from .present import show_text

        show_text(f"overview not available: {why}")

    def show(self, part: str) -> None:
        """Nothing: the reason was shown once."""


def start(run_dir: str) -> Overview | Missing:
    """The overview of RUN_DIR; a missing or unreadable run is said once."""
    try:
        return load(run_dir)
    except (OSError, ValueError) as exc:
        return Missing(str(exc))


def banner_html(summary: Mapping[str, Any]) -> str:
    """The run's status, target and time, the first thing on the overview's page."""
    status = str(summary.get("status", COULD_NOT_RUN))
    color = COLORS.get(status, "#757575")
    return (f'<div class="rb-summary" style="border-left-color:{color}"><p>Status <b '
            f'style="color:{color}">{e(status)}</b> for <code>{e(str(summary.get("target", "")))}'
            f"</code>, run {e(str(summary.get('started_at', '')))} to "
            f"{e(str(summary.get('finished_at', '')))}.</p></div>")
