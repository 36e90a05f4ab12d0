"""What a sweep leaves: each target's directory in the single-target layout, then the fleet's
own files.

``DIR/<target>/``: ``NAME.findings.json``, ``NAME.html`` (and ``NAME.ipynb`` where a notebook
was rendered), ``summary.json``, ``alerts.json`` and ``index.html``, as ``runbooks run``
writes them. ``DIR/``: ``summary.json`` (one entry per target), ``index.html`` (one row per
target: status per runbook, top finding, link), ``metrics.prom`` (every series labelled with the
target's fleet name), ``alerts.json`` (one alert per target, its stories deduplicated across its
runbooks) and one ``plotly.min.js`` for every page. Each target is recorded in the history under
the reports root (DIR's parent) by its fleet name.
"""

from __future__ import annotations

import datetime as dt
import html
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import alerts, history, metrics, outputs, page, stories
from .findings import COULD_NOT_RUN, SEVERITIES, iso, run_reports, status_of, write_json, write_text
from .fleet import Fleet, TargetResult
from .report import summary_of

RANK = (*SEVERITIES, COULD_NOT_RUN)


def _rank(status: str) -> int:
    return RANK.index(status) if status in RANK else len(RANK)


def top_finding(summary: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]]) -> str:
    """What a reader of the fleet's index looks at first for a target: a runbook that could not
    run, else its first warning or critical story, else that nothing is loud."""
    for book in summary.get("runbooks") or []:
        if book.get("status") == COULD_NOT_RUN:
            errors = book.get("errors") or [{"step": "", "message": "no error recorded"}]
            return f"{book['name']} could not run: {errors[0]['step']}: {errors[0]['message']}"
    loud = stories.loud(reports)
    if loud:
        more = f" (+{len(loud) - 1} more)" if len(loud) > 1 else ""
        return f"[{loud[0].severity}] {loud[0].title}{more}"
    return "no warning or critical finding"


def _target_files(out: Path, result: TargetResult, tags: tuple[str, ...]) -> tuple[
        dict[str, Any], dict[str, dict[str, Any]]]:
    """The target's directory written from what its worker sent back; its summary and reports."""
    tdir = out / result.name
    tdir.mkdir(parents=True, exist_ok=True)
    for name, text in result.files.items():
        write_text(tdir / Path(name).name, text)
    started = dt.datetime.fromisoformat(result.started_at.replace("Z", "+00:00"))
    summary = summary_of(result.outcomes, started, result.shown, result.label, tdir)
    summary.update({"name": result.name, "tags": list(tags), "rendered": result.rendered,
                    "retried": result.retried, "problems": []})
    write_json(tdir / "summary.json", summary)
    reports = run_reports(tdir, summary)
    write_json(tdir / "alerts.json", alerts.entries(summary, reports))
    write_text(tdir / "index.html", outputs.index_html(tdir, summary))
    return summary, reports


def write(out: Path, fleet: Fleet, results: Mapping[str, TargetResult], started: dt.datetime,
          opts: outputs.Options, interrupted: bool = False) -> dict[str, Any]:
    """Every output of the sweep into OUT; returns the fleet's summary (also summary.json)."""
    problems: list[str] = []
    targets: list[dict[str, Any]] = []
    runs: list[metrics.Run] = []
    fleet_alerts: list[dict[str, Any]] = []
    if any(r.rendered for r in results.values()):
        page.write_assets(out)
    now = time.time()
    for t in fleet.targets:
        result = results[t.name]
        summary, reports = _target_files(out, result, t.tags)
        try:
            history.record(out.parent, out / t.name, summary, reports, t.name)
        except OSError as exc:
            problems.append(f"history of {t.name} not recorded under {out.parent}: "
                            f"{exc.strerror or exc}")
        runs.append(metrics.Run(t.name, summary, reports, now))
        entries = alerts.entries(summary, reports)
        if entries:  # one alert per target: its stories already merged across its runbooks
            fleet_alerts.append({
                "target": t.name, "status": summary["status"],
                "severity": "critical" if _rank(summary["status"]) >= _rank("critical")
                else entries[0]["severity"],
                "title": top_finding(summary, reports), "report": f"{t.name}/index.html",
                "key": f"{t.name}/{entries[0]['key']}", "entries": entries})
        targets.append({
            "name": t.name, "tags": list(t.tags), "target": summary["target"],
            "target_label": summary["target_label"], "status": summary["status"],
            "exit_code": summary["exit_code"], "duration_s": result.duration_s,
            "runbooks": {b["name"]: b["status"] for b in summary["runbooks"]},
            "top": top_finding(summary, reports), "dir": t.name,
            "rendered": result.rendered, "retried": result.retried,
            "summary": summary})
    statuses = [t["status"] for t in targets]
    fleet_summary: dict[str, Any] = {
        "started_at": iso(started), "finished_at": iso(dt.datetime.now(dt.UTC)),
        "fleet": fleet.source, "out_dir": str(out), "runbooks": fleet.runbooks,
        "status": status_of([s for s in statuses if s != COULD_NOT_RUN],
                            statuses.count(COULD_NOT_RUN)),
        "exit_code": max((t["exit_code"] for t in targets), default=0),
        "counts": {s: statuses.count(s) for s in reversed(RANK)},
        "targets": [{k: v for k, v in t.items() if k != "summary"} for t in targets],
        "alerts": len(fleet_alerts), "problems": problems}
    if interrupted:
        fleet_summary["interrupted"] = True
    write_json(out / "summary.json", fleet_summary)
    write_json(out / "alerts.json", fleet_alerts)
    registry = metrics.build(runs, previous=opts.metrics_file)
    outputs.write_metrics(registry, out, opts, problems)
    if opts.alert_webhook:
        by_name = {x["name"]: x for x in targets}
        for entry in fleet_alerts:
            mine = by_name[entry["target"]]
            if not alerts.due(mine["status"], opts.alert_least):
                continue
            payload = alerts.message(mine["summary"], entry["entries"],
                                     str(out / mine["name"] / "index.html"))
            sent = alerts.deliver(opts.alert_webhook, payload)
            if not sent.ok:
                problems.append(f"alert for {mine['name']} not delivered: {sent.error}")
    write_text(out / "index.html", index_html(fleet_summary))
    write_json(out / "summary.json", fleet_summary)
    return fleet_summary


_COLORS = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828",
           COULD_NOT_RUN: "#6a1b9a"}


def _status(status: str, href: str = "") -> str:
    e = html.escape
    text = f'<b style="color:{_COLORS.get(status, "#555")}">{e(status)}</b>'
    return f'<a href="{e(href)}">{text}</a>' if href else text


def index_html(summary: Mapping[str, Any]) -> str:
    """The fleet's front page: one row per target, the worst first; everything escaped (a top
    finding holds application names and query texts)."""
    e = html.escape
    books = list(summary["runbooks"])
    rows = []
    for t in sorted(summary["targets"], key=lambda t: (-_rank(t["status"]), t["name"])):
        cells = "".join(f"<td>{_status(t['runbooks'].get(b, ''), t['dir'] + '/' + b + '.html')}"
                        "</td>" for b in books)
        tags = " ".join(f"<code>{e(tag)}</code>" for tag in t["tags"])
        rows.append(f'<tr><td><a href="{e(t["dir"])}/index.html">{e(t["name"])}</a> {tags}'
                    f'<br/><small>{e(t["target_label"])}</small></td>'
                    f"<td>{_status(t['status'])}</td>{cells}<td>{e(t['top'])}</td></tr>")
    head = "".join(f"<th>{e(b)}</th>" for b in books)
    counts = ", ".join(f"{n} {e(s)}" for s, n in summary["counts"].items() if n)
    problems = "".join(f"<li>{e(p)}</li>" for p in summary.get("problems", []))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>pg-runbooks fleet {e(summary['started_at'])}: {e(summary['status'])}</title>"
            "<style>body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
            "margin:0 auto;padding:0 16px 40px;line-height:1.4}table{border-collapse:collapse}"
            "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;"
            "vertical-align:top}td:last-child{overflow-wrap:anywhere;max-width:40em}</style>"
            f"</head><body><h1>Fleet sweep of {e(summary['started_at'])}</h1>"
            f"<p>Status <b>{e(summary['status'])}</b> (exit {summary['exit_code']}) over "
            f"{len(summary['targets'])} targets: {counts}"
            + (" <b>(interrupted)</b>" if summary.get("interrupted") else "") + "</p>"
            f"<table><tr><th>target</th><th>status</th>{head}<th>top finding</th></tr>"
            f"{''.join(rows)}</table>"
            '<h2>Files</h2><ul><li><a href="summary.json">summary.json</a></li>'
            '<li><a href="alerts.json">alerts.json</a></li>'
            '<li><a href="metrics.prom">metrics.prom</a></li></ul>'
            + (f"<h2>Problems</h2><ul>{problems}</ul>" if problems else "")
            + "</body></html>\n")


def console(summary: Mapping[str, Any], quiet: bool) -> None:
    """One line per target at least warning (worst first), the counts and the index's path;
    QUIET: nothing unless the sweep's status is at least warning (cron mails what is printed)."""
    if quiet and summary["exit_code"] == 0:
        return
    for t in sorted(summary["targets"], key=lambda t: (-_rank(t["status"]), t["name"])):
        if _rank(t["status"]) >= _rank("warning"):
            print(f"{t['name']}: {t['status']}: {t['top'][:300]}")
    counts = ", ".join(f"{n} {s}" for s, n in summary["counts"].items() if n)
    print(f"fleet: {summary['status']} over {len(summary['targets'])} targets ({counts})")
    for problem in summary.get("problems", []):
        print(f"warning: {problem}")
    print(f"report: {Path(summary['out_dir']) / 'index.html'}")
