"""What a run leaves for the scheduler and for people, once its runbooks are done.

In the run directory: ``summary.json`` (written first, so whatever fails later the run's
result is on disk), ``alerts.json``, ``metrics.prom``, ``health_overview.ipynb``/``.html``,
``index.html`` and ``plotly.min.js``; under the reports root (the run directory's parent) the
history. Then the deliveries: a stable metrics file, a Pushgateway, a webhook. A delivery that
fails is said in ``summary.json`` and on the terminal; it never fails the run or loses a file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import alerts, history, metrics, notebooks, overview, page
from .findings import run_reports, write_json, write_text
from .target import mask_text

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger("runbooks_lib")
OVERVIEW = "health_overview"


@dataclass
class Options:
    """What a run does beyond the runbooks' own files (the scheduler's half)."""

    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    cell_timeout_s: int = 600  # one notebook cell
    runbook_timeout_s: float = 900  # one runbook, whole (a drill's own limit may be longer)
    metrics_file: Path | None = None  # a stable path for node_exporter's textfile collector
    pushgateway: str = ""
    alert_webhook: str = ""
    alert_least: str = "warning"  # the run status that sends the webhook
    keep_days: float = 30  # history and run directories kept under the reports root
    overview: bool | None = None  # None: when more than one runbook ran


def write_metrics(registry: Collector, out: Path, opts: Options, problems: list[str]) -> None:
    """The run's metrics.prom, and the stable --metrics-file when asked: a file that cannot be
    written there is a problem of the run, never its failure."""
    metrics.write_file(registry, out / "metrics.prom")
    if opts.metrics_file is not None:
        try:
            metrics.write_file(registry, opts.metrics_file)
        except OSError as exc:
            problems.append(f"--metrics-file {opts.metrics_file}: {exc.strerror or exc}")


def finish(out: Path, summary: dict[str, Any], opts: Options, secrets: list[str],
           interrupted: bool) -> None:
    """Every output of a run after its runbooks; problems land in summary['problems']."""
    problems: list[str] = []
    summary["problems"] = problems
    write_json(out / "summary.json", summary)
    reports = run_reports(out, summary)

    entries = alerts.entries(summary, reports)
    write_json(out / "alerts.json", entries)
    summary["alerts"] = len(entries)

    root = out.parent
    try:
        history.record(root, out, summary, reports, summary["target_label"])
        removed = history.prune(root, opts.keep_days)
        if removed:
            summary["pruned"] = [str(p) for p in removed]
    except OSError as exc:
        problems.append(f"history not recorded under {root}: {exc.strerror or exc}")

    overview = opts.overview if opts.overview is not None else len(summary["runbooks"]) > 1
    if overview and not interrupted:
        try:
            run_overview(out, summary, secrets, opts.cell_timeout_s)
            summary["overview"] = f"{OVERVIEW}.html"
        except Exception as exc:  # noqa: BLE001 - the runbooks' reports stand without it
            problems.append(f"overview not written: {mask_text(str(exc), *secrets)[:300]}")

    registry = metrics.build([metrics.Run(summary["target_label"], summary, reports,
                                          time.time())],
                             previous=opts.metrics_file)
    write_metrics(registry, out, opts, problems)
    if opts.pushgateway:
        error = metrics.push(registry, opts.pushgateway, summary["target_label"])
        if error:
            problems.append(error)

    if opts.alert_webhook and alerts.due(summary["status"], opts.alert_least):
        payload = alerts.message(summary, entries, str(out / "index.html"))
        sent = alerts.deliver(opts.alert_webhook, payload)
        summary["alert_sent"] = sent.ok
        if not sent.ok:
            problems.append(f"alert webhook not delivered: {sent.error}")

    write_text(out / "index.html", index_html(out, summary))
    write_json(out / "summary.json", summary)


def run_overview(out: Path, summary: dict[str, Any], secrets: list[str], timeout_s: int) -> None:
    """notebooks/health_overview.ipynb executed on this run, exported like a report."""
    nb_out = out / f"{OVERVIEW}.ipynb"
    notebooks.execute(notebooks.notebook_dir() / f"{OVERVIEW}.ipynb", nb_out,
                      {"run_dir": str(out)}, timeout_s)
    nb = notebooks.sanitize(nb_out, secrets)
    title = f"health overview: {summary.get('status', '')}"
    banner = overview.banner_html(summary)  # the run's status before anything else
    write_text(out / f"{OVERVIEW}.html",
               page.document(title, nb, lambda _: banner, page.write_assets(out)))


def index_html(out: Path, summary: dict[str, Any]) -> str:
    """The run directory's front page: the overview, each report and every file."""
    import html

    e = html.escape
    rows = []
    if summary.get("overview"):
        rows.append(f'<li><a href="{OVERVIEW}.html"><b>Health overview</b></a></li>')
    for rb in summary["runbooks"]:
        f = rb["files"]
        more = ", ".join(f'<a href="{e(f[k])}">{label}</a>' for k, label in
                         (("findings", "findings JSON"), ("notebook", "notebook"))
                         if (out / f[k]).exists())  # a runbook stopped early has no notebook
        rows.append(f'<li><a href="{e(f["html"])}">{e(rb["name"])}</a>: {e(rb["status"])}'
                    + (f" ({more})" if more else "") + "</li>")
    files = "".join(f'<li><a href="{n}">{n}</a></li>'
                    for n in ("summary.json", "alerts.json", "metrics.prom") if (out / n).exists())
    problems = "".join(f"<li>{e(p)}</li>" for p in summary.get("problems", []))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>pg-runbooks run {e(summary['started_at'])}: {e(summary['status'])}</title>"
            "<style>body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
            "max-width:900px;margin:0 auto;padding:0 16px 40px;line-height:1.5}"
            "code{overflow-wrap:anywhere}</style></head>"
            f"<body><h1>Run of {e(summary['started_at'])}</h1>"
            f"<p>Status <b>{e(summary['status'])}</b> (exit {summary['exit_code']}) for "
            f"<code>{e(summary['target'])}</code></p><ul>{''.join(rows)}</ul>"
            f"<h2>Files</h2><ul>{files}</ul>"
            + (f"<h2>Problems</h2><ul>{problems}</ul>" if problems else "")
            + "</body></html>\n")
