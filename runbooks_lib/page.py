"""The standalone HTML page of a runbook report: a summary read in ten seconds, then the details.

The summary is made from the findings JSON alone: status (a runbook that could not run says
so first, with the failed step), target, server, when and how long, the findings ranked and
merged as stories (stories.py) with their Next and a link to their evidence, the checks that
were skipped and why. The details are the executed notebook: its explanations and outputs,
code hidden; within a step, charts come after the tables, and a table shown again as a
finding's evidence is shown once.

plotly.js (4.8 MB) is not embedded in every page: the page loads it with <script src> from a
file written once beside the reports (write_assets), so a report still works offline, with no
CDN (DESIGN 9). Everything that came from the database is escaped: the notebook's outputs by
present.py when they were made, the summary here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from . import stories
from .findings import write_text

PLOTLY_JS = "plotly.min.js"
PLOTLY_MIME = "application/vnd.plotly.v1+json"

_CSS = """
*,*::before,*::after{box-sizing:border-box}
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:0 auto;
padding:0 16px 40px;color:#222;line-height:1.45;font-size:15px}
a{color:#1565c0}
.rb-summary{padding:10px 14px;margin:12px 0 28px;border:1px solid #ccc;border-left:8px solid #2e7d32;
border-radius:4px;background:#fafafa}
.rb-banner-warning{border-color:#ef6c00;background:#fff8f1}
.rb-banner-critical,.rb-banner-could-not-run{border-color:#c62828;background:#fdecea}
.rb-title{font-size:1.5em;margin:0 0 2px;overflow-wrap:anywhere}
.rb-status-ok,.rb-status-info{color:#2e7d32}.rb-status-warning{color:#ef6c00}
.rb-status-critical,.rb-status-could-not-run{color:#c62828}
.rb-tally{margin:0 0 8px;color:#444}
.rb-facts{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:1px 12px;margin:0 0 10px;
font-size:.93em}
.rb-facts dt{color:#666}.rb-facts dd{margin:0;overflow-wrap:anywhere}
.rb-cnr{margin:8px 0;padding:6px 10px;border:1px solid #c62828;border-radius:4px;background:#fff;
overflow-wrap:anywhere}
.rb-stories{margin:6px 0;padding-left:1.6em}
.rb-story{margin:0 0 8px;overflow-wrap:anywhere}
.rb-sev{display:inline-block;min-width:5.2em;padding:0 4px;border-radius:3px;color:#fff;
background:#555;font-size:11px;font-weight:bold;text-align:center;text-transform:uppercase;
vertical-align:1px}
.rb-sev-critical{background:#c62828}.rb-sev-warning{background:#ef6c00}.rb-sev-info{background:#1565c0}
.rb-sev-ok{background:#2e7d32}
.rb-next{font-size:.93em}
.rb-related{margin:2px 0;padding-left:1.4em;list-style:none;color:#555;font-size:.93em}
.rb-more-stories{margin:10px 0 2px;font-size:.93em;font-weight:bold;color:#444}
.rb-oks{margin:8px 0 2px;color:#2e7d32}
.rb-skips{margin:4px 0;padding-left:1.4em;color:#666;font-size:.93em;overflow-wrap:anywhere}
.rb-scroll{overflow-x:auto;max-width:100%}
table.rb-table{border-collapse:collapse;font-size:13px;margin:6px 0}
table.rb-table th,table.rb-table td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
table.rb-table td{max-width:36em;overflow-wrap:break-word}
table.rb-table th{background:#f0f0f0}
.rb-finding{overflow-wrap:anywhere}
details>summary{cursor:pointer;color:#1565c0}
.rb-figure{max-width:100%}
img{max-width:100%}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:12px}
code{background:#f0f0f0;padding:0 3px;overflow-wrap:anywhere}
.rb-stderr{color:#c62828}
@media (max-width:600px){
body{padding:0 10px 24px;font-size:14px}
h1{font-size:1.5em}h2{font-size:1.25em}
.rb-summary{padding:8px 10px}
.rb-facts{grid-template-columns:minmax(0,1fr)}
.rb-facts dt{margin-top:3px}
}
@media print{
body{max-width:none;padding:0;font-size:12px}
.modebar,.modebar-container,.rb-no-print{display:none!important}
h1,h2,h3,h4,.rb-title{break-after:avoid;page-break-after:avoid}
.rb-finding,.rb-story,.rb-small,.rb-summary li,tr{break-inside:avoid;page-break-inside:avoid}
.rb-figure{break-inside:avoid}
.rb-scroll{overflow:visible}
table.rb-table{font-size:10px}
table.rb-table td{max-width:none}
table.rb-table th{overflow-wrap:anywhere}
a{color:#000;text-decoration:underline}
a[href^="http"]::after{content:" (" attr(href) ")"}
details>summary{color:#000}
}
"""

# A separate rule: a browser that does not know ::details-content drops only this one.
_PRINT_DETAILS_CSS = "@media print{details::details-content{display:block;content-visibility:visible}}"

# Print the evidence: every closed <details> opened before printing and closed again after;
# charts resized to the paper. Without plotly.min.js beside the page, say so where charts were.
_JS = """(function(){var opened=[];
function resize(){if(window.Plotly){document.querySelectorAll(".rb-figure.js-plotly-plot")
.forEach(function(d){Plotly.Plots.resize(d);});}}
addEventListener("beforeprint",function(){opened=[].filter.call(document.querySelectorAll("details"),
function(d){return !d.open;});opened.forEach(function(d){d.open=true;});resize();});
addEventListener("afterprint",function(){opened.forEach(function(d){d.open=false;});opened=[];resize();});
addEventListener("DOMContentLoaded",function(){if(window.Plotly){return;}
document.querySelectorAll(".rb-figure").forEach(function(d){d.style.height="auto";
d.textContent="chart not shown: plotly.min.js was not found beside this report";});});})();"""


def write_assets(directory: Path) -> str:
    """plotly.min.js from the installed plotly package written into DIRECTORY once (kept when a
    file of the same size is there), atomically and no more readable than the umask allows;
    returns its name, the URL a page in DIRECTORY gives to render()."""
    from importlib import resources

    source = resources.files("plotly").joinpath("package_data", PLOTLY_JS)
    dest = directory / PLOTLY_JS
    data = source.read_bytes()
    if dest.is_file() and dest.stat().st_size == len(data):
        return PLOTLY_JS
    write_text(dest, data.decode("utf-8"))
    return PLOTLY_JS


def render(nb: Any, data: Mapping[str, Any], plotly_src: str = PLOTLY_JS) -> str:
    """The report page of one runbook run: the summary of DATA (its findings JSON), then the
    executed notebook NB; PLOTLY_SRC is the relative URL of plotly.js (see write_assets)."""
    title = f"{data.get('runbook', '')}: {data.get('status', '')}"
    return document(title, nb, lambda anchors: summary_html(data, anchors), plotly_src)


def document(title: str, nb: Any, top: Callable[[set[str]], str],
             plotly_src: str = PLOTLY_JS) -> str:
    """A page: TOP (given the finding anchors the page holds), then the executed notebook NB
    (its markdown and outputs, code hidden)."""
    e = html.escape
    body = details_html(nb)
    anchors = set(re.findall(r'id="(finding-\d+)"', body))
    plotly = (f'<script src="{e(plotly_src)}"></script>'
              if plotly_src and "Plotly.newPlot" in body else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>"
            '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
            f"<title>{e(title)}</title>"
            f"<style>{_CSS}</style><style>{_PRINT_DETAILS_CSS}</style>{plotly}"
            f"<script>{_JS}</script></head><body>\n{top(anchors)}\n"
            f'<main class="rb-details">\n{body}\n</main></body></html>\n')


# -- the summary -------------------------------------------------------------------------------

def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _titled(item: stories.Item, anchors: Collection[str]) -> str:
    """A finding's title, linked to its evidence below when the page holds it."""
    title = html.escape(str(item.finding.get("title", "")))
    return f'<a href="#{item.anchor}">{title}</a>' if item.anchor in anchors else title


def _badge(severity: str) -> str:
    return f'<span class="rb-sev rb-sev-{html.escape(severity)}">{html.escape(severity)}</span>'


def _story_html(story: stories.Story, anchors: Collection[str]) -> str:
    parts = [f'<li class="rb-story">{_badge(story.severity)} {_titled(story.lead, anchors)}']
    if story.next:
        parts.append(f'<div class="rb-next"><b>Next:</b> {html.escape(story.next)}</div>')
    related = story.related
    if related:
        parts.append('<ul class="rb-related">' + "".join(
            f"<li>same story: {_titled(i, anchors)} ({html.escape(i.severity)})</li>"
            for i in related) + "</ul>")
    parts.append("</li>")
    return "".join(parts)


def summary_html(data: Mapping[str, Any], anchors: Collection[str] = ()) -> str:
    """What a person reads first: the status and where it ran, the failed step when it could
    not run, the warning and critical stories with their Next, then the info ones, the count
    of ok checks and the skipped ones (never counted as ok). ANCHORS are the finding ids the
    page holds: only those are linked."""
    e = html.escape
    name = str(data.get("runbook", ""))
    status = str(data.get("status", ""))
    css = status.replace(" ", "-")
    findings = list(data.get("findings") or [])
    skipped = list(data.get("skipped") or [])
    errors = list(data.get("errors") or [])
    n = stories.counts(findings)
    tally = ", ".join(f"{n[s]} {s}" for s in ("critical", "warning", "info") if n[s])
    tally = ", ".join(t for t in (tally, f"{n['ok']} ok" if n["ok"] else "",
                                  f"{len(skipped)} skipped" if skipped else "") if t)
    facts = [("target", f"<code>{e(str(data.get('target', '')))}</code>"),
             ("server", f"PostgreSQL {e(str(data.get('server_version')))}"
              if data.get("server_version") else "not reached")]
    when = e(str(data.get("started_at", "")))
    ran = _duration(data.get("duration_s"))
    facts.append(("started", when + (f", ran {e(ran)}" if ran else "")))
    window = data.get("window")
    if isinstance(window, Mapping) and window:
        facts.append(("window", e(", ".join(f"{k} {v}" for k, v in window.items()))))
    parts = [f'<header class="rb-summary rb-banner rb-banner-{e(css)}" id="summary">',
             f'<h1 class="rb-title">{e(name)}: <b class="rb-status-{e(css)}">{e(status)}</b></h1>',
             f'<p class="rb-tally">{e(tally or "no findings")}</p>' if status else ""]
    parts += [f'<div class="rb-cnr"><b>could not run</b> at step <b>{e(str(err.get("step", "")))}'
              f'</b>: {e(str(err.get("message", "")))}</div>' for err in errors]
    parts.append('<dl class="rb-facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
                 + "</dl>")
    ranked = stories.stories({name: data})
    loud = [s for s in ranked if s.severity in stories.LOUD]
    rest = [s for s in ranked if s.severity not in stories.LOUD]
    if loud:
        parts.append('<ol class="rb-stories">' + "".join(_story_html(s, anchors) for s in loud)
                     + "</ol>")
    if rest:
        parts.append('<p class="rb-more-stories">For information</p><ol class="rb-stories">'
                     + "".join(_story_html(s, anchors) for s in rest) + "</ol>")
    if n["ok"]:
        parts.append(f'<p class="rb-oks">{_plural(n["ok"], "check")} ok'
                     + (" until it stopped" if errors else "") + "</p>")
    if skipped:
        parts.append('<ul class="rb-skips">' + "".join(
            f'<li>skipped <code>{e(str(s.get("check", "")))}</code>: {e(str(s.get("reason", "")))}'
            "</li>" for s in skipped) + "</ul>")
    parts.append("</header>")
    return "\n".join(p for p in parts if p)


# -- the details -------------------------------------------------------------------------------

def _output_html(output: Any) -> str:
    """One cell output. HTML outputs were escaped by present.py when they were made; text is
    escaped here. Widgets have no place in a static report: their text form is shown."""
    e = html.escape
    kind = output.get("output_type")
    if kind == "stream":
        cls = ' class="rb-stderr"' if output.get("name") == "stderr" else ""
        return f"<pre{cls}>{e(output.get('text', ''))}</pre>"
    if kind == "error":
        return f'<pre class="rb-stderr">{e(output.get("ename", ""))}: {e(output.get("evalue", ""))}</pre>'
    data = output.get("data", {})
    if "text/html" in data:
        value = data["text/html"]
        return "".join(value) if isinstance(value, list) else str(value)
    if "image/png" in data:
        return f'<img alt="" src="data:image/png;base64,{e(str(data["image/png"]))}"/>'
    if "text/plain" in data:
        return f"<pre>{e(str(data['text/plain']))}</pre>"
    return ""


_TABLE = re.compile(r"<table\b.*?</table>", re.S)
# a table present.show_table made: its caption, the scrolling wrapper, the table, nothing else
_SHOWN_TABLE = re.compile(r'\s*(?:<h4>[^<]*</h4>)?\s*(?:<div class="rb-scroll[^"]*"[^>]*>)?\s*'
                          r"(<table\b.*?</table>)\s*(?:</div>)?\s*", re.S)


def cell_html(outputs: list[Any]) -> list[str]:
    """One step's outputs as shown: a table that a finding of the same step carries as its
    evidence is shown once (in the finding), and the charts come after the tables."""
    parts = []
    for o in outputs:
        h = _output_html(o)
        parts.append((PLOTLY_MIME in o.get("data", {}) or "Plotly.newPlot" in h, h))
    evidence = {t for _, h in parts if 'class="rb-finding' in h for t in _TABLE.findall(h)}
    kept = []
    for figure, h in parts:
        shown = _SHOWN_TABLE.fullmatch(h)
        if shown and 'class="rb-finding' not in h and shown.group(1) in evidence:
            continue
        kept.append((figure, h))
    return [h for figure, h in kept if not figure] + [h for figure, h in kept if figure]


def details_html(nb: Any) -> str:
    """The notebook's markdown and outputs, code and parameters hidden."""
    import mistune

    md = mistune.create_markdown(escape=True, plugins=["table", "strikethrough"])
    parts: list[str] = []
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if "papermill-error-cell-tag" in tags:
            continue  # papermill's raw-HTML pointer to the failed cell: the summary says it
        if cell.get("cell_type") == "markdown":
            text = str(md(cell.get("source", "")))
            parts.append(text.replace("<table>", '<div class="rb-scroll"><table>')
                         .replace("</table>", "</table></div>"))
        elif cell.get("cell_type") == "code":
            if "parameters" in tags or "injected-parameters" in tags:
                continue
            parts.extend(cell_html(cell.get("outputs", [])))
    return "\n".join(p for p in parts if p)
