"""Alerts: entries from a recorded demo run, the Slack payload, and delivery to real HTTP servers.

tests/data/demo_run/ is the demo run of 2026-11-28 (summary.json and the findings JSON of
its four runbooks): the idle-in-transaction blocker pid 31999 is seen by connectivity, latency
and transaction_failures there.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runbooks_lib import alerts, stories
from runbooks_lib.target import shown_url

RUN = Path(__file__).parent / "data" / "demo_run"
SECRET_PATH = "/services/T000/B000/SECRET"


def load_run() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    summary = json.loads((RUN / "summary.json").read_text())
    reports = {b["name"]: json.loads((RUN / b["files"]["findings"]).read_text())
               for b in summary["runbooks"]}
    return summary, reports


# --- entries -----------------------------------------------------------------------------------

def test_the_blocker_seen_by_latency_and_transaction_failures_is_one_entry() -> None:
    summary, reports = load_run()
    loud_blocking = [(name, f["title"]) for name, r in reports.items() for f in r["findings"]
                     if f["check"] == "blocking" and f["severity"] in ("warning", "critical")]
    assert [name for name, _ in loud_blocking] == ["latency", "transaction_failures"]  # the data

    found = alerts.entries(summary, reports)

    blocking = [e for e in found if "blocking" in e["checks"]]
    assert len(blocking) == 1
    entry = blocking[0]
    assert {"latency", "transaction_failures"} <= set(entry["runbooks"])
    assert entry["checks"].count("blocking") == 1
    assert entry["target"] == "postgresql://postgres:***@127.0.0.1:45669/cosnap"


def test_one_entry_per_loud_story_each_pointing_at_its_lead_finding() -> None:
    summary, reports = load_run()
    found = alerts.entries(summary, reports)
    loud_findings = sum(f["severity"] in ("warning", "critical")
                        for r in reports.values() for f in r["findings"])
    assert len(found) == len(stories.loud(reports)) == 16 < loud_findings == 23
    for entry in found:
        assert entry["kind"] == "finding"
        assert entry["severity"] in ("warning", "critical")
        page, _, anchor = entry["report"].partition("#finding-")
        runbook = page.removesuffix(".html")
        lead = reports[runbook]["findings"][int(anchor)]
        assert (lead["title"], lead["severity"], lead["check"]) == \
               (entry["title"], entry["severity"], entry["checks"][0])
        assert runbook in entry["runbooks"]
        assert entry["next"]
    assert len({e["key"] for e in found}) == len(found)
    pool = next(e for e in found if e["checks"][0] == "connection_usage")
    assert pool["checks"] == ["connection_usage", "leak_suspect", "pool_overflow"]


def test_a_runbook_that_could_not_run_is_a_critical_entry_first() -> None:
    summary, reports = load_run()
    book = next(b for b in summary["runbooks"] if b["name"] == "restore_drill")
    book["status"] = "could not run"
    book["errors"] = [{"step": "cell 9 (Restore)", "message": "DrillError: pg_restore exited 1"},
                      {"step": "html", "message": "disk full"}]

    found = alerts.entries(summary, reports)

    failed = [e for e in found if e["kind"] == "could not run"]
    assert len(failed) == 1 and found[0] is failed[0]
    entry = failed[0]
    assert entry["severity"] == "critical"
    assert entry["runbooks"] == ["restore_drill"]
    assert entry["report"] == "restore_drill.html"
    assert "cell 9 (Restore)" in entry["title"] and "pg_restore exited 1" in entry["title"]
    assert "(+1 more)" in entry["title"]
    assert entry["errors"] == book["errors"]
    assert len(found) == 17  # its partial findings still count


@pytest.mark.parametrize(("status", "least", "expected"), [
    ("ok", "ok", True), ("ok", "info", False), ("info", "info", True), ("info", "warning", False),
    ("warning", "warning", True), ("warning", "critical", False), ("critical", "critical", True),
    ("critical", "warning", True), ("could not run", "critical", True),
    ("could not run", "warning", True), ("ok", "warning", False), ("something new", "critical", True),
])
def test_due(status: str, least: str, expected: bool) -> None:
    assert alerts.due(status, least) is expected


def test_due_refuses_an_unknown_severity() -> None:
    with pytest.raises(ValueError, match="unknown alert severity"):
        alerts.due("critical", "page")


# --- message -----------------------------------------------------------------------------------

def _texts(payload: dict[str, Any]) -> list[str]:
    return [payload["text"], *(b["text"]["text"] for b in payload["blocks"])]


def _entry_sections(payload: dict[str, Any]) -> list[str]:
    return [b["text"]["text"] for b in payload["blocks"]
            if b["type"] == "section" and b["text"]["text"].startswith(("*warning*", "*critical*"))]


def injected(title: str, remediation: str = "drop it") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary, reports = load_run()
    reports = copy.deepcopy(reports)
    reports["latency"]["findings"].append({"check": "custom", "severity": "critical", "title": title,
                                           "remediation": remediation, "evidence": []})
    return summary, alerts.entries(summary, reports)


def test_message_escapes_what_came_from_the_database() -> None:
    summary, found = injected("app <script>alert(1)</script> & friends held <!channel>")
    payload = alerts.message(summary, found, "/var/tmp/run/index.html")
    first = _entry_sections(payload)[0]
    assert first.startswith("*critical* app &lt;script&gt;alert(1)&lt;/script&gt; &amp; friends "
                            "held &lt;!channel&gt; — Next: drop it")
    dumped = json.dumps(payload)
    assert "<script>" not in dumped and "<!channel>" not in dumped and "& friends" not in dumped


def test_message_holds_no_password() -> None:
    summary, found = injected("cannot reach postgresql://app:secret@h/db",
                              remediation="check password=secret in the DSN")
    summary = {**summary, "target": "postgresql://app:secret@h/db"}
    payload = alerts.message(summary, found, "https://ops:secret@reports.example/run/index.html")
    dumped = json.dumps(payload)
    assert "secret" not in dumped
    assert "postgresql://app:***@h/db" in dumped


def test_message_shows_the_top_most_entries_and_counts_the_rest() -> None:
    summary, reports = load_run()
    found = alerts.entries(summary, reports)
    payload = alerts.message(summary, found, "/var/tmp/run/index.html", most=3)
    sections = _entry_sections(payload)
    assert len(sections) == 3
    assert sections[0].startswith(f"*warning* {alerts.escape(found[0]['title'])} — Next: ")
    assert any(t.startswith(f"…and {len(found) - 3} more") for t in _texts(payload))
    assert payload["blocks"][0] == {"type": "header", "text": {
        "type": "plain_text", "emoji": False, "text": "pg-runbooks: warning"}}
    assert payload["text"] == ("pg-runbooks warning on postgresql://postgres:***@127.0.0.1:45669/cosnap: "
                               "0 critical, 16 warning")
    assert "\n" not in payload["text"]
    assert payload["blocks"][-1]["text"]["text"] == "*Report:* /var/tmp/run/index.html"

    everything = alerts.message(summary, found, "/var/tmp/run/index.html", most=len(found))
    assert len(_entry_sections(everything)) == len(found)
    assert not any(t.startswith("…and") for t in _texts(everything))


def test_message_links_each_entry_when_the_report_is_a_url() -> None:
    summary, reports = load_run()
    found = alerts.entries(summary, reports)
    payload = alerts.message(summary, found, "https://reports.example/run?a=1&b=2/index.html", most=1)
    lead = found[0]["report"]
    assert _entry_sections(payload)[0].endswith(
        f"<https://reports.example/{lead}|{lead}>")
    assert payload["blocks"][-1]["text"]["text"] == (
        "*Report:* <https://reports.example/run?a=1&amp;b=2/index.html|"
        "https://reports.example/run?a=1&amp;b=2/index.html>")


def test_message_stays_within_slack_limits() -> None:
    summary, found = injected("&" * 20000, remediation="<" * 20000)
    summary = {**summary, "status": "x" * 400}
    payload = alerts.message(summary, found * 30, "/r/index.html", most=100)
    assert len(payload["blocks"]) <= 50
    assert len(payload["blocks"][0]["text"]["text"]) <= 150
    for text in _texts(payload)[1:]:
        assert len(text) <= 3000
    first = _entry_sections(payload)[0]
    body = first.split(" — Next: ")[0]
    assert body.endswith("&amp;…")  # clipped between entities, never inside one
    assert len(payload["text"]) <= 500


# --- deliver -----------------------------------------------------------------------------------

class Webhook:
    """A real HTTP server on 127.0.0.1 answering POSTs from a script of (status, headers, body);
    the last answer repeats."""

    def __init__(self, script: list[tuple[int, dict[str, str], str]]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, headers, text = hook.script[min(len(hook.requests), len(hook.script)) - 1]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, auth: str = "") -> str:
        return f"http://{auth}127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}?token=SECRET"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def webhook() -> Iterator[Any]:
    made: list[Webhook] = []

    def make(*script: tuple[int, dict[str, str], str]) -> Webhook:
        made.append(Webhook(list(script)))
        return made[-1]

    yield make
    for hook in made:
        hook.close()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


PAYLOAD = {"text": "pg-runbooks critical", "blocks": []}
OK: tuple[int, dict[str, str], str] = (200, {}, "ok")


def assert_safe(result: alerts.Delivery) -> None:
    assert "SECRET" not in result.error and "/services" not in result.error
    assert "token" not in result.error


def test_delivered_at_the_first_try(webhook: Any) -> None:
    hook, sleeps = webhook(OK), Sleeps()
    result = alerts.deliver(hook.url(), PAYLOAD, sleep=sleeps)
    assert result == alerts.Delivery(True, 1, 200, "")
    assert len(hook.requests) == 1 and sleeps == []
    request = hook.requests[0]
    assert request["path"] == f"{SECRET_PATH}?token=SECRET"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == PAYLOAD


def test_a_5xx_is_retried_after_the_backoff(webhook: Any) -> None:
    hook, sleeps = webhook((500, {}, "oops"), OK), Sleeps()
    result = alerts.deliver(hook.url(), PAYLOAD, backoff_s=0.5, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (True, 2, 200)
    assert sleeps == [0.5]
    assert [json.loads(r["body"]) for r in hook.requests] == [PAYLOAD, PAYLOAD]


def test_always_5xx_gives_up_after_the_attempts(webhook: Any) -> None:
    hook, sleeps = webhook((500, {}, "internal")), Sleeps()
    result = alerts.deliver(hook.url(), PAYLOAD, attempts=4, backoff_s=1.0, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 4, 500)
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(hook.requests) == 4
    assert "HTTP 500" in result.error and "after 4 attempts" in result.error
    assert result.error.startswith(f"http://127.0.0.1:{hook.server.server_address[1]}: ")
    assert_safe(result)


def test_a_4xx_is_not_retried_and_says_why(webhook: Any) -> None:
    echo = f"no_service: no hook at {SECRET_PATH}?token=SECRET"  # servers echo the path they refuse
    hook, sleeps = webhook((404, {}, echo), OK), Sleeps()
    result = alerts.deliver(hook.url(), PAYLOAD, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 1, 404)
    assert len(hook.requests) == 1 and sleeps == []
    assert "HTTP 404" in result.error and "no_service" in result.error
    assert_safe(result)


@pytest.mark.parametrize(("retry_after", "waited"), [("7", 7.0), ("86400", alerts.RETRY_AFTER_MAX_S),
                                                     ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0)])
def test_a_429_waits_as_long_as_retry_after_says(webhook: Any, retry_after: str, waited: float) -> None:
    hook, sleeps = webhook((429, {"Retry-After": retry_after}, "rate_limited"), OK), Sleeps()
    result = alerts.deliver(hook.url(), PAYLOAD, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (True, 2, 200)
    assert sleeps == [waited]


def test_a_redirect_is_reported_not_followed(webhook: Any) -> None:
    hook, sleeps = webhook((302, {"Location": "/elsewhere"}, ""), OK), Sleeps()
    result = alerts.deliver(hook.url(), PAYLOAD, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 1, 302)
    assert len(hook.requests) == 1


def test_userinfo_is_sent_as_basic_auth_and_never_shown(webhook: Any) -> None:
    hook, sleeps = webhook((503, {}, "")), Sleeps()
    result = alerts.deliver(hook.url("hookuser:hookpw@"), PAYLOAD, attempts=2, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 2, 503)
    expected = "Basic " + base64.b64encode(b"hookuser:hookpw").decode()
    assert [r["headers"]["Authorization"] for r in hook.requests] == [expected, expected]
    assert "hookuser" not in result.error and "hookpw" not in result.error
    assert_safe(result)


def test_a_closed_port_fails_without_raising() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    result = alerts.deliver(f"http://127.0.0.1:{port}{SECRET_PATH}", PAYLOAD, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert sleeps == [1.0, 2.0]
    assert "refused" in result.error.lower()
    assert_safe(result)


def test_a_server_that_never_answers_times_out_without_raising() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        sleeps = Sleeps()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}{SECRET_PATH}"
        result = alerts.deliver(url, PAYLOAD, attempts=2, timeout_s=0.2, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 2, None)
    assert sleeps == [1.0]
    assert "0.2 s" in result.error
    assert_safe(result)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/services/T000/B000/SECRET", "http://",
                                 "http://[::1/services/T000/B000/SECRET", "SECRET"])
def test_what_is_no_web_address_is_not_sent(url: str) -> None:
    sleeps = Sleeps()
    result = alerts.deliver(url, PAYLOAD, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 0, None)
    assert sleeps == []
    assert_safe(result)


def test_shown_url_keeps_only_scheme_host_and_port() -> None:
    assert shown_url("https://hooks.slack.com" + SECRET_PATH) == "https://hooks.slack.com"
    assert shown_url("http://u:p@127.0.0.1:8080" + SECRET_PATH + "?t=1#f") == "http://127.0.0.1:8080"
