"""The HTML report page (page.py): the summary a person reads first, anchors that work, database
strings escaped, plotly.js loaded from one file beside the reports, the page small.

Most tests render a recorded run of `runbooks demo` (tests/data: the connectivity runbook's
executed notebook, stored as .ipynb.json so that ruff leaves its cells alone, and its findings
JSON); one runs latency against the sandbox with the demo's incidents."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import psycopg
import pytest

from runbooks_lib import page, present, stories
from runbooks_lib.findings import Finding
from runbooks_lib.sandbox import incidents as inc
from runbooks_lib.sandbox.server import Sandbox

from .conftest import run_cli

DATA = Path(__file__).parent / "data"
EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
MB = 1_000_000


def recorded() -> tuple[Any, dict[str, Any]]:
    nb = nbformat.read(DATA / "connectivity.ipynb.json", as_version=4)
    return nb, json.loads((DATA / "connectivity.findings.json").read_text())


def summary_of(text: str) -> str:
    start, end = text.index('<header class="rb-summary'), text.index("</header>")
    return text[start:end]


def hrefs(text: str) -> list[str]:
    return re.findall(r'href="#(finding-\d+)"', text)


def ids(text: str) -> list[str]:
    return re.findall(r'id="(finding-\d+)"', text)


class Scripts(HTMLParser):
    """Every <script> of a page as the browser parses it: its src and its text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._src: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._src = dict(attrs).get("src") or ""
            self.found.append((self._src, ""))

    def handle_data(self, data: str) -> None:
        if self._src is not None:
            src, text = self.found[-1]
            self.found[-1] = (src, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._src = None


def sections(text: str) -> list[str]:
    """The details part of a page cut at each step heading."""
    return re.split(r"<h2[ >]", text[text.index('<main class="rb-details">'):])


def assert_well_formed(text: str) -> None:
    """Every summary link has its target, no id twice, and plotly.js is never inline."""
    assert hrefs(text), "the summary links to evidence"
    assert set(hrefs(text)) <= set(ids(text)), set(hrefs(text)) - set(ids(text))
    assert len(ids(text)) == len(set(ids(text)))
    scripts = Scripts(text).found
    assert all(len(body) < 20_000 for _, body in scripts), "plotly.js inline"
    assert "Plotly.newPlot" not in text or ("plotly.min.js", "") in scripts
    for part in sections(text):  # within a step, the charts come after the tables
        if "rb-figure" in part and "<table" in part:
            assert part.rindex("<table") < part.index('class="rb-figure"'), part[:200]


# -- pure page tests on the recorded run -------------------------------------------------------

def test_the_summary_comes_first_and_ranks_the_stories() -> None:
    nb, data = recorded()
    data["findings"][2]["severity"] = "critical"  # idle in transaction: now the worst
    data["findings"][5]["severity"] = "info"  # the connection budget: a story for information
    text = page.render(nb, data)
    assert text.index('<header class="rb-summary') < text.index("<h1>") < text.index("<h2")
    head = summary_of(text)
    ranked = stories.stories({"connectivity": data})
    leads = [s.lead.anchor for s in ranked]
    assert leads[0] == "finding-2" and [s.severity for s in ranked][:2] == ["critical", "warning"]
    shown = [a for a in hrefs(head) if a in leads]
    assert shown == leads, "stories in severity order, each linked to its evidence"
    for story in ranked:
        assert f"<b>Next:</b> {story.next}" in head.replace("&#x27;", "'")
    # merged findings under their lead, info after the warnings, ok folded into a count
    assert head.index('href="#finding-1"') < head.index('same story: <a href="#finding-3"')
    assert head.index('href="#finding-1"') < head.index("For information") \
        < head.index('href="#finding-5"')
    assert "1 check ok" in head and "Server reachable" not in head
    assert "PostgreSQL 18.6" in head and "postgresql://postgres:***@127.0.0.1" in head
    assert "ran 5.3 s" in head and "<dt>window</dt>" not in head, "no window invented"
    assert_well_formed(text)


def test_window_parameters_are_shown_when_the_json_has_them() -> None:
    nb, data = recorded()
    data["window"] = {"sample_seconds": 5, "since": "15m"}
    assert "<dt>window</dt><dd>sample_seconds 5, since 15m</dd>" in summary_of(page.render(nb, data))


def test_a_runbook_that_could_not_run_says_so_first_with_the_step() -> None:
    nb, data = recorded()
    data["status"] = "could not run"
    data["errors"] = [{"step": "cell 9 (5. Leak suspects)", "message": "RuntimeError: it broke"}]
    data["skipped"] = [{"check": "connection_budget", "reason": "pool size unknown: set pool_size"}]
    text = page.render(nb, data)
    head = summary_of(text)
    assert 'class="rb-status-could-not-run">could not run' in head
    assert "could not run</b> at step <b>cell 9 (5. Leak suspects)</b>: RuntimeError: it broke" \
        in head
    assert head.index("could not run</b> at step") < head.index('<ol class="rb-stories">')
    assert 'class="rb-status-ok"' not in text
    assert "skipped <code>connection_budget</code>: pool size unknown: set pool_size" in head


def test_a_table_that_is_a_findings_evidence_is_shown_once() -> None:
    nb, data = recorded()
    text = page.render(nb, data)
    assert "<h4>connection attempts</h4>" not in text  # the reachability finding carries it
    assert text.count("<th>attempt</th>") == 1
    assert "would affect" not in text.split("7. Safe action")[1].split('class="rb-finding')[0]
    assert "<h4>connections per client</h4>" in text, "a different table stays"


def test_evidence_is_collapsed_on_screen_and_printed_open() -> None:
    nb, data = recorded()
    text = page.render(nb, data)
    assert '<details class="rb-evidence">' in text and "<details open" not in text
    assert 'addEventListener("beforeprint"' in text and 'addEventListener("afterprint"' in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1"/>' in text
    css = text[text.index("@media print"):]
    assert ".modebar" in css and "break-after:avoid" in css and "break-inside:avoid" in css
    assert 'class="rb-scroll' in text, "tables scroll inside a wrapper"


def test_plotly_is_loaded_from_the_url_given() -> None:
    nb, data = recorded()
    text = page.render(nb, data, "../plotly.min.js")
    assert '<script src="../plotly.min.js"></script>' in text
    assert "cdn.plot.ly" not in text and "https://" not in "".join(s for s, _ in Scripts(text).found)
    no_charts = page.render({"cells": []}, data)
    assert "plotly.min.js\"" not in no_charts


def test_database_strings_are_escaped_everywhere() -> None:
    """An application name, a query text and a title holding HTML, made into outputs by
    present.py as a run makes them, and into the summary from the JSON."""
    evil_finding = Finding("blocking", "critical", f"pid 7 ({EVIL}) blocks 2 sessions",
                           f"last query: SELECT '{EVIL}'", evidence=[{"pid": 7, "application": EVIL}],
                           remediation=f"terminate {EVIL}")
    query = f'SELECT 1 AS "</script>{EVIL}"'
    outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": present.finding_html(
            evil_finding, "finding-0"), "text/plain": "x"}),
        nbformat.v4.new_output("display_data", data={"text/html": "<h4>who</h4>" + present.table_html(
            pd.DataFrame([{"application": EVIL, "query": query}])), "text/plain": "x"}),
        nbformat.v4.new_output("display_data", data=present.figure_bundle(
            {"data": [{"type": "bar", "x": [1], "y": [query]}], "layout": {"title": {"text": EVIL}}})),
        nbformat.v4.new_output("stream", name="stdout", text=EVIL),
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("## 1. Step"),
                                         nbformat.v4.new_code_cell("x", outputs=outputs)])
    data = {"runbook": "latency", "target": f"postgresql://u:***@h/{EVIL}", "server_version": "18.1",
            "started_at": "2026-11-27T22:00:00Z", "duration_s": 1.0, "status": "critical",
            "findings": [json.loads(json.dumps(evil_finding.__dict__))],
            "skipped": [{"check": EVIL, "reason": EVIL}], "errors": []}
    text = page.render(nb, data)
    assert EVIL not in text and ESCAPED in summary_of(text)
    scripts = Scripts(text).found
    # ours only: plotly.js, the print script, one per chart; '</script>' in a query ends none
    assert len(scripts) == 3 and scripts[0] == ("plotly.min.js", "")
    assert "Plotly.newPlot" in scripts[2][1] and "\\u003c/script>" in scripts[2][1]
    assert_well_formed(text)


def test_assets_are_written_once(tmp_path: Path) -> None:
    packaged = resources.files("plotly").joinpath("package_data", page.PLOTLY_JS).read_bytes()
    assert page.write_assets(tmp_path) == "plotly.min.js"
    written = tmp_path / "plotly.min.js"
    assert written.read_bytes() == packaged
    before = written.stat()
    assert page.write_assets(tmp_path) == "plotly.min.js"
    after = written.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rewritten"
    written.write_text("truncated")  # an interrupted copy by another tool: replaced
    page.write_assets(tmp_path)
    assert written.stat().st_size == len(packaged)
    assert [p.name for p in tmp_path.iterdir()] == ["plotly.min.js"], "no temporary file left"


def test_a_finding_carries_its_index_in_the_findings_json(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from runbooks_lib.runbook import Runbook

    rb = Runbook("connectivity", target="env:RB_HTML_TEST_UNSET",  # no connection attempt
                 findings_path=str(tmp_path / "f.json"))
    shown: list[str] = []
    monkeypatch.setattr(present, "_display", lambda bundle: shown.append(bundle["text/html"]))
    rb.add(Finding("a", "ok", "first"))
    rb.add([Finding("b", "warning", "second"), Finding("c", "info", "third")])
    saved = json.loads((tmp_path / "f.json").read_text())["findings"]
    assert [f["check"] for f in saved] == ["a", "b", "c"]
    assert ids("".join(shown)) == ["finding-0", "finding-1", "finding-2"]


# -- one real run ------------------------------------------------------------------------------

def evil_statements(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """A statement whose text (kept by pg_stat_statements: an identifier is no constant) holds
    HTML and a closing script tag; of a shape no other test runs (pg_stat_statements keeps the
    text first seen for a query id, and an alias does not change the id)."""
    for _ in range(20):
        conn.execute(f'SELECT length(pg_sleep(0.002)::text) AS "</script>{EVIL}"'.encode())


@pytest.mark.slow
@pytest.mark.pg_stat_statements
def test_latency_report_of_a_real_incident(quiet: Sandbox, tmp_path: Path) -> None:
    app = quiet.url("app")
    with inc.missing_index(app), inc.workload(app, inc.verification_lookups, EVIL), \
            inc.workload(app, evil_statements, EVIL), inc.lock_chain(app, EVIL):
        proc = run_cli("run", "latency", "--out", str(tmp_path), "-p", "sample_seconds=2",
                       "-p", "large_table_rows=500", env={"DATABASE_URL": quiet.url("postgres")})
    assert proc.returncode in (1, 2), proc.stdout + proc.stderr
    data = json.loads((tmp_path / "latency.findings.json").read_text())
    assert not data["errors"], data["errors"]
    path = tmp_path / "latency.html"
    text = path.read_text()
    assert path.stat().st_size < MB, path.stat().st_size
    assert (tmp_path / "plotly.min.js").stat().st_size > 3 * MB, "plotly.js beside the report"
    assert_well_formed(text)
    # the summary: before the first step, every loud story in order with its Next and link
    head = summary_of(text)
    assert text.index(head) < text.index("<h2")
    loud = stories.loud({"latency": data})
    assert loud and any(s.lead.finding["check"] == "dominant_query" for s in loud)
    at = [head.index(f'href="#{s.lead.anchor}"') for s in loud]
    assert at == sorted(at)
    unescaped = head.replace("&#x27;", "'").replace("&quot;", '"')
    assert all(f"<b>Next:</b> {s.next}" in unescaped for s in loud if s.next)
    # escaped: the application name in the blocking finding, the query text in tables and chart
    assert EVIL not in text
    assert any(EVIL in f["title"] for f in data["findings"]), "the incident reached a title"
    assert ESCAPED in head
    figures = text.count('class="rb-figure"')
    assert len(Scripts(text).found) == 2 + figures
    # one table of the top statements; its other orderings collapsed
    step = sections(text)[[i for i, s in enumerate(sections(text)) if "Top queries" in s[:80]][0]]
    assert step.count("<h4>top statements in the last") == 1
    assert step.count('<details class="rb-more"><summary>the same statements by') >= 2
    assert "lifetime view" in step.split('<details class="rb-more">', 1)[1]
    assert "&lt;/script&gt;" + ESCAPED in step, "the query text, escaped in the table"
    assert "\\u003c/script>\\u003cscript>alert(1)" in step, "and in the chart's JSON"
