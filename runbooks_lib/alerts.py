"""Alerts for a run: deduplicated across runbooks, and sent to a Slack-compatible webhook.

A run's alerts are its loud stories (``stories.loud``: the same root blocker seen by two
runbooks is one story, so one alert) plus one critical alert per runbook that could not run:
a missing answer is never quieter than a bad one. ``entries`` is the content of alerts.json,
``message`` turns them into a Slack payload, ``deliver`` posts it without ever raising (a
scheduler's run must not fail because chat is down) and without ever showing the webhook's
path (a Slack webhook URL is its own secret).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from . import stories
from .findings import COULD_NOT_RUN, SEVERITIES
from .target import mask_text, shown_url

log = logging.getLogger(__name__)

SECTION_MAX = 3000  # Slack: a section's text
HEADER_MAX = 150  # Slack: a header's plain_text
BLOCKS_MAX = 50  # Slack: blocks per message; MOST is capped below it
TITLE_MAX = 300  # our own budgets, so that one long query text cannot push the rest out
NEXT_MAX = 600
TEXT_MAX = 500  # the fallback line (notifications show about one line)
RETRY_AFTER_MAX_S = 30.0  # a scheduled run waits at most this long on a server's Retry-After
BODY_SHOWN = 200  # characters of a refusing server's answer kept in the error ("no_service")


def _html_file(summary: Mapping[str, Any], runbook: str) -> str:
    """The runbook's HTML report file as summary.json names it."""
    for book in summary.get("runbooks") or []:
        if book.get("name") == runbook:
            return str((book.get("files") or {}).get("html") or f"{runbook}.html")
    return f"{runbook}.html"


def entries(summary: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """alerts.json: one critical entry per runbook that could not run (first: its evidence is
    missing), then one entry per warning or critical story, in the stories' rank."""
    target = str(summary.get("target", ""))
    out: list[dict[str, Any]] = []
    for book in summary.get("runbooks") or []:
        if book.get("status") != COULD_NOT_RUN:
            continue
        name = str(book.get("name"))
        errors = [{"step": str(e.get("step", "")), "message": str(e.get("message", ""))}
                  for e in book.get("errors") or (reports.get(name) or {}).get("errors") or []]
        first = errors[0] if errors else {"step": "", "message": "no error recorded"}
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        out.append({
            "kind": COULD_NOT_RUN, "severity": "critical",
            "title": f"{name} could not run: {first['step']}: {first['message']}{more}",
            "next": "read the failed step in the runbook's report, fix its cause, then run the "
                    "runbook again: until then its checks have no answer",
            "runbooks": [name], "checks": [], "errors": errors,
            "report": _html_file(summary, name), "target": target, "key": f"{name}/{COULD_NOT_RUN}"})
    for story in stories.loud(reports):
        lead = story.lead
        checks = [str(i.finding.get("check")) for i in [lead, *story.related]]
        out.append({
            "kind": "finding", "severity": story.severity, "title": story.title,
            "next": story.next, "runbooks": story.runbooks, "checks": list(dict.fromkeys(checks)),
            "report": f"{_html_file(summary, lead.runbook)}#{lead.anchor}", "target": target,
            "key": story.key()})
    return out


def due(status: str, least: str) -> bool:
    """Whether a run of STATUS is worth an alert at LEAST (``--alert-severity``); a run that
    could not run, or whose status is unknown, counts as critical: silence needs evidence.

    >>> [due(s, "warning") for s in ("ok", "info", "warning", "critical", "could not run")]
    [False, False, True, True, True]
    """
    if least not in SEVERITIES:
        raise ValueError(f"unknown alert severity {least!r}: one of {', '.join(SEVERITIES)}")
    rank = SEVERITIES.index(status) if status in SEVERITIES else len(SEVERITIES)
    return rank >= SEVERITIES.index(least)


def escape(text: str) -> str:
    """Slack mrkdwn's three control characters, so that a query text or an application name
    cannot format, link or mention (``<!channel>``).

    >>> escape("a < b && <script>")
    'a &lt; b &amp;&amp; &lt;script&gt;'
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe(text: Any, limit: int) -> str:
    """Masked, clipped to LIMIT characters, then escaped: the text of a finding as shown."""
    return escape(_clip(mask_text(" ".join(str(text).split())), limit))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(limit - 1, 0)].rstrip() + "…"


def _clip_escaped(text: str, limit: int) -> str:
    """Clip escaped text without cutting an entity (``&am``) in two."""
    if len(text) <= limit:
        return text
    return re.sub(r"&[a-z]*$", "", text[:max(limit - 1, 0)]).rstrip() + "…"


def _is_web(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _link(url: str, label: str) -> str:
    """A mrkdwn link (``|`` would end the URL), or the label alone when URL is no web address."""
    if not _is_web(url):
        return label
    return f"<{escape(mask_text(url).replace('|', '%7C'))}|{label}>"


def message(summary: Mapping[str, Any], entries: list[dict[str, Any]], report: str,
            most: int = 5) -> dict[str, Any]:
    """A Slack-compatible payload: a fallback ``text`` line and blocks showing the top MOST
    entries (capped by Slack's block limit), each within Slack's section limit."""
    most = max(0, min(most, BLOCKS_MAX - 5))
    status = str(summary.get("status", ""))
    target = _safe(summary.get("target", ""), 500)
    loud = [e for e in entries if e.get("kind") != COULD_NOT_RUN]
    tally = [f"{sum(e.get('severity') == s for e in loud)} {s}" for s in ("critical", "warning")]
    failed = len(entries) - len(loud)
    if failed:
        tally.append(f"{failed} runbook(s) could not run")
    counts = ", ".join(tally)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": False,
                                    "text": _clip(f"pg-runbooks: {status}", HEADER_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip_escaped(
            f"*Status:* {_safe(status, 100)}\n*Target:* {target}\n*Alerts:* {counts}", SECTION_MAX)}},
    ]
    for entry in entries[:most]:
        where = _safe(entry.get("report", ""), 200)
        ref = _link(urljoin(report, str(entry.get("report", ""))), where) if len(report) < 500 else where
        tail = f"\n_{_safe(', '.join(entry.get('runbooks') or []), 200)}_ · {ref}"
        body = (f"*{_safe(entry.get('severity', ''), 20)}* {_safe(entry.get('title', ''), TITLE_MAX)}"
                f" — Next: {_safe(entry.get('next', '') or '(none given)', NEXT_MAX)}")
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": _clip_escaped(body, SECTION_MAX - len(tail)) + tail}})
    if len(entries) > most:
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": f"…and {len(entries) - most} more (alerts.json has them all)"}})
    shown = _safe(report, 1000)
    blocks.append({"type": "section", "text": {
        "type": "mrkdwn", "text": f"*Report:* {_link(report, shown) if len(report) <= 1000 else shown}"}})
    text = _clip_escaped(f"pg-runbooks {escape(status)} on {target}: {counts}", TEXT_MAX)
    return {"text": text, "blocks": blocks}


@dataclass(frozen=True)
class Delivery:
    """What happened to one alert: ok, how many POSTs, the last HTTP status, and a safe why."""

    ok: bool
    attempts: int
    status: int | None
    error: str


def _scrub(text: str, url: str) -> str:
    """TEXT without any piece of URL beyond what shown_url shows (an exception may quote it)."""
    try:
        parts = urlsplit(url)
        pieces = [url, parts.netloc, parts.path, parts.query, parts.fragment,
                  parts.username or "", parts.password or ""]
    except ValueError:
        pieces = [url]
    for piece in sorted((p for p in pieces if len(p) > 1), key=len, reverse=True):
        text = text.replace(piece, "…")
    return mask_text(text)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirected POST would silently become a GET without the alert: report the 3xx."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, capped; None when absent or an HTTP date (backoff applies)."""
    try:
        return min(max(float(value or ""), 0.0), RETRY_AFTER_MAX_S)
    except ValueError:
        return None


def deliver(url: str, payload: Mapping[str, Any], attempts: int = 3, backoff_s: float = 1.0,
            timeout_s: float = 5.0, sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST PAYLOAD as JSON to the webhook URL; retry connection errors, timeouts, 5xx and 429
    (after Retry-After when given, else backoff_s, 2x, 4x ...); never raise. A user:password
    in URL is sent as HTTP Basic authentication."""
    where = shown_url(url)
    if not _is_web(url) or where == "(url)":
        return Delivery(False, 0, None, f"{where}: not an http(s) URL with a host, nothing sent")
    headers = {"Content-Type": "application/json"}
    parts = urlsplit(url)
    if parts.username is not None:  # urllib would take user:pw@ for part of the host name
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode())
        headers["Authorization"] = f"Basic {token.decode()}"
        target = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    else:
        target = url
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        data = json.dumps(payload).encode()
    except (TypeError, ValueError) as exc:
        return Delivery(False, 0, None, f"payload is not JSON: {_scrub(str(exc), url)}")
    status: int | None = None
    error = ""
    tries = 0
    for tries in range(1, max(attempts, 1) + 1):
        wait: float | None = None
        retry = False
        try:
            request = urllib.request.Request(target, data=data, method="POST", headers=headers)
            with opener.open(request, timeout=timeout_s) as response:
                status = int(response.status)
                response.read()
            log.debug("alert delivered to %s (HTTP %s, attempt %d)", where, status, tries)
            return Delivery(True, tries, status, "")
        except urllib.error.HTTPError as exc:
            status = exc.code
            body = ""
            try:
                body = " ".join(exc.read(BODY_SHOWN).decode("utf-8", "replace").split())
            except Exception:  # noqa: BLE001 - the body is a courtesy; the status says enough
                pass
            error = f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")
            retry = exc.code == 429 or exc.code >= 500
            if retry:
                wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        except TimeoutError:
            status, error, retry = None, f"no answer within {timeout_s:g} s", True
        except urllib.error.URLError as exc:
            status, retry = None, True
            reason = exc.reason
            error = f"timed out after {timeout_s:g} s" if isinstance(reason, TimeoutError) \
                else f"cannot connect: {reason}"
        except OSError as exc:  # a connection reset or closed before the answer
            status, error, retry = None, f"connection failed: {type(exc).__name__}: {exc}", True
        except http.client.InvalidURL as exc:
            status, error, retry = None, f"invalid URL: {exc}", False
        except http.client.HTTPException as exc:  # a garbled answer: the server may recover
            status, error, retry = None, f"bad answer: {type(exc).__name__}: {exc}", True
        except Exception as exc:  # noqa: BLE001 - never raise: whatever else goes wrong is reported
            status, error, retry = None, f"{type(exc).__name__}: {exc}", False
        log.debug("alert to %s failed (attempt %d): %s", where, tries, _scrub(error, url))
        if not retry or tries >= attempts:
            break
        sleep(wait if wait is not None else backoff_s * 2 ** (tries - 1))
    return Delivery(False, tries, status,
                    f"{where}: {_scrub(error, url)} (after {tries} attempt{'s' if tries > 1 else ''})")
