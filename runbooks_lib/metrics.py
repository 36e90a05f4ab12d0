"""Prometheus metrics of runs, with prometheus_client: a textfile for node_exporter, or a Pushgateway.

One registry holds one or many runs (a fleet writes one file): every series carries ``target``.
A check that did not run gives no series: never green without evidence.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import push_to_gateway, write_to_textfile
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from .findings import COULD_NOT_RUN, SEVERITIES, exit_code, finite, run_reports
from .stories import LOUD, loud
from .target import mask_text, shown_url

JOB = "pg_runbooks"
PUSH_TIMEOUT_S = 5.0
CHECK_PREFIX = "pg_runbooks_check_"
LAST_SUCCESS = "pg_runbooks_last_success_timestamp_seconds"
# label values taken from figures: short tokens only, never free text
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

Kind = Literal["gauge", "counter"]
Keep = Literal["last", "max"]

# name -> (type, help, label names); the order of the file
FAMILIES: dict[str, tuple[Kind, str, tuple[str, ...]]] = {
    "database_connections_active": (
        "gauge", "Client connections open on the server when the runbook looked.", ("target",)),
    "database_connections_max": (
        "gauge", "Connections the server allows (its connection limit) when the runbook looked.",
        ("target",)),
    "database_transactions_total": (
        "counter", "Transactions committed (status=success) or rolled back (status=rollback): the "
        "server's cumulative pg_stat_database counters.", ("target", "status")),
    "database_errors_total": (
        "counter", "Errors in the server log by class, counted over the window each run scanned (its "
        "since parameter) and added up run after run in a stable --metrics-file.",
        ("target", "class")),
    "database_alerts_total": (
        "counter", "Warning and critical alerts by severity (findings about the same subject count "
        "once, across runbooks), added up run after run in a stable --metrics-file.",
        ("target", "severity")),
    "pg_runbooks_run_status_code": (
        "gauge", "Exit status of the whole run (0 ok or info, 1 warning, 2 critical, 3 could not run).",
        ("target",)),
    "pg_runbooks_status_code": (
        "gauge", "Status of the runbook (0 ok or info, 1 warning, 2 critical, 3 could not run).",
        ("target", "runbook")),
    "pg_runbooks_duration_seconds": (
        "gauge", "Wall time of the runbook's run.", ("target", "runbook")),
    "pg_runbooks_findings": (
        "gauge", "Findings of the runbook's last run, by severity.", ("target", "runbook", "severity")),
    "pg_runbooks_checks_skipped": (
        "gauge", "Checks the runbook skipped in its last run (each says why in its findings JSON).",
        ("target", "runbook")),
    "pg_runbooks_last_run_timestamp_seconds": (
        "gauge", "When the runbook last ran, successful or not (Unix time).", ("target", "runbook")),
    LAST_SUCCESS: (
        "gauge", "When the runbook last ran to the end, whatever it found (Unix time); kept from the "
        "previous file while it cannot run.", ("target", "runbook")),
}
ACCUMULATED = ("database_errors_total", "database_alerts_total")  # counted per run, added up
# figure name -> (family, the one label it carries besides target, allowed values or None: a token)
FIGURES: dict[str, tuple[str, str | None, frozenset[str] | None]] = {
    "connections_active": ("database_connections_active", None, None),
    "connections_max": ("database_connections_max", None, None),
    "transactions": ("database_transactions_total", "status", frozenset({"success", "rollback"})),
    "log_errors": ("database_errors_total", "class", None),
}


@dataclass(frozen=True)
class Run:
    """One run against one target: its summary.json and findings JSONs (runbook name -> data).

    TARGET is a short label such as ``db.internal:5432/cosnap``, never a password. FINISHED_AT is
    Unix time; None takes the summary's ``finished_at``."""

    target: str
    summary: Mapping[str, Any]
    reports: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    finished_at: float | None = None

    @property
    def timestamp(self) -> float:
        if self.finished_at is not None:
            return self.finished_at
        text = str(self.summary.get("finished_at") or "")
        try:
            return dt.datetime.fromisoformat(text).timestamp()
        except ValueError:
            return dt.datetime.now(dt.UTC).timestamp()

    @classmethod
    def load(cls, target: str, out: Path) -> Run:
        """The run written in OUT (summary.json and the findings JSONs it names)."""
        summary: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        return cls(target, summary, run_reports(out, summary))


def metric_name(name: str) -> str:
    """The gauge of a check's metric: a valid Prometheus name, units kept.

    >>> metric_name("connection_usage_ratio")
    'pg_runbooks_check_connection_usage_ratio'
    >>> metric_name("p95 latency/ms")
    'pg_runbooks_check_p95_latency_ms'
    """
    return CHECK_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", name.strip())


@dataclass
class _Family:
    kind: Kind
    help: str
    labels: tuple[str, ...]
    samples: dict[tuple[str, ...], float] = field(default_factory=dict)

    def set(self, values: tuple[str, ...], value: float, keep: Keep = "last") -> None:
        """One sample per label set: a repeat replaces it (last) or keeps the largest (max)."""
        assert len(values) == len(self.labels)
        if keep == "max" and values in self.samples:
            value = max(value, self.samples[values])
        self.samples[values] = value

    def metric(self, name: str) -> Metric:
        fam: Metric
        if self.kind == "counter":
            fam = CounterMetricFamily(name, self.help, labels=self.labels)
        else:
            fam = GaugeMetricFamily(name, self.help, labels=self.labels)
        for values, value in self.samples.items():
            fam.add_metric(list(values), value)
        return fam


class _Snapshot:
    """Families computed once; collected (and described to the registry) as they are."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics)

    def describe(self) -> Iterable[Metric]:
        return list(self._metrics)


class _OneTarget:
    """The samples of REGISTRY labelled with TARGET."""

    def __init__(self, registry: Collector, target: str) -> None:
        self._registry, self._target = registry, target

    def collect(self) -> Iterable[Metric]:
        out = []
        for fam in self._registry.collect():
            mine = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            mine.samples = [s for s in fam.samples if s.labels.get("target") == self._target]
            if mine.samples:
                out.append(mine)
        return out


def _number(value: Any) -> float | None:
    """VALUE as a float when it is a finite number (see findings.finite), else None."""
    found = finite(value)
    return None if found is None else float(found)


def _entries(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The summary's runbook entries that have a name, each name once (the last entry wins)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in summary.get("runbooks") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]:
            found[entry["name"]] = dict(entry)
    return list(found.values())


def _status_code(entry: Mapping[str, Any]) -> int:
    code = entry.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return exit_code(str(entry.get("status", COULD_NOT_RUN)))


def _previous(path: Path | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value in an earlier metrics file; {} when it is missing or
    not a metrics file."""
    if path is None:
        return {}
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    try:
        for fam in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            for s in fam.samples:
                value = _number(s.value)
                if value is not None:
                    out[(s.name, tuple(sorted(s.labels.items())))] = value
    except Exception:  # noqa: BLE001 - missing, unreadable or garbage: nothing to carry over
        return {}
    return out


def _previous_success(before: dict[tuple[str, tuple[tuple[str, str], ...]], float]
                      ) -> dict[tuple[str, str], float]:
    """(target, runbook) -> last success time carried in the earlier file."""
    out: dict[tuple[str, str], float] = {}
    for (name, labels), value in before.items():
        found = dict(labels)
        if name == LAST_SUCCESS and value > 0 and {"target", "runbook"} <= found.keys():
            out[(found["target"], found["runbook"])] = value
    return out


def _accumulate(fams: dict[str, _Family],
                before: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    """The per-run counts made counters: this run's added to the earlier file's total, so that
    rate() and increase() over a stable --metrics-file are right."""
    for family in ACCUMULATED:
        fam = fams[family]
        for values in list(fam.samples):
            labels = tuple(sorted(zip(fam.labels, values, strict=True)))
            fam.samples[values] += before.get((family, labels), 0.0)


def _latest(runs: Iterable[Run]) -> list[Run]:
    """One run per target: the one that finished last (the later one in the list on a tie)."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.target not in best or run.timestamp >= best[run.target].timestamp:
            best[run.target] = run
    return list(best.values())


def _figures(fams: dict[str, _Family], run: Run, names: list[str]) -> None:
    """The database_* series from the reports' figures, in run order: a gauge seen by two
    runbooks keeps the later reading, a counter the largest (counters only grow)."""
    for name in names:
        figures = (run.reports.get(name) or {}).get("figures")
        for fig in figures if isinstance(figures, list) else []:
            if not isinstance(fig, Mapping) or fig.get("name") not in FIGURES:
                continue
            family, label, allowed = FIGURES[str(fig["name"])]
            value = _number(fig.get("value"))
            labels = fig.get("labels")
            if value is None or value < 0:  # counts, every one of them
                continue
            values: tuple[str, ...] = (run.target,)
            if label is not None:
                extra = labels.get(label) if isinstance(labels, Mapping) else None
                if not isinstance(extra, str) or not _TOKEN.fullmatch(extra) \
                        or (allowed is not None and extra not in allowed):
                    continue
                values += (extra,)
            fams[family].set(values, value, "max" if fams[family].kind == "counter" else "last")


def _checks(checks: dict[str, _Family], thresholds: dict[str, _Family], run: Run, name: str) -> None:
    """pg_runbooks_check_<metric>{target, runbook}: per metric name the value of the most severe
    finding that measured it (ties: the largest value)."""
    best: dict[str, tuple[int, float, float | None]] = {}
    for f in (run.reports.get(name) or {}).get("findings") or []:
        m = f.get("metric") if isinstance(f, Mapping) else None
        if not isinstance(m, Mapping) or not isinstance(m.get("name"), str) or not m["name"].strip():
            continue
        value = _number(m.get("value"))
        if value is None:
            continue
        sev = SEVERITIES.index(f["severity"]) if f.get("severity") in SEVERITIES else 0
        key = metric_name(m["name"])
        if key not in best or (sev, value) > best[key][:2]:
            best[key] = (sev, value, _number(m.get("threshold")))
    for key, (_, value, threshold) in best.items():
        checks.setdefault(key, _Family("gauge", f"{key.removeprefix(CHECK_PREFIX)} as the runbook's "
                                       "checks measured it (the most severe finding's value).",
                                       ("target", "runbook"))).set((run.target, name), value)
        if threshold is not None:
            thresholds.setdefault(f"{key}_threshold", _Family(
                "gauge", f"The threshold {key} was graded against.", ("target", "runbook"),
            )).set((run.target, name), threshold)


def build(runs: list[Run], previous: Path | None = None) -> CollectorRegistry:
    """A registry with the series of RUNS (one per target: the latest). PREVIOUS, the metrics file
    about to be replaced, gives the last success time of a runbook that could not run this time."""
    fams = {name: _Family(kind, text, labels) for name, (kind, text, labels) in FAMILIES.items()}
    checks: dict[str, _Family] = {}
    thresholds: dict[str, _Family] = {}
    earlier = _previous(previous)
    before = _previous_success(earlier)
    for run in _latest(runs):
        entries = _entries(run.summary)
        names = [e["name"] for e in entries]
        _figures(fams, run, names)
        if any(n in run.reports for n in names):
            per = dict.fromkeys(LOUD, 0)
            for story in loud({n: run.reports[n] for n in names if n in run.reports}):
                per[story.severity] += 1
            for sev in reversed(LOUD):
                fams["database_alerts_total"].set((run.target, sev), per[sev])
        code = run.summary.get("exit_code")
        if entries and isinstance(code, int) and not isinstance(code, bool):
            fams["pg_runbooks_run_status_code"].set((run.target,), code)
        elif entries:
            fams["pg_runbooks_run_status_code"].set((run.target,), max(map(_status_code, entries)))
        for entry in entries:
            name, at = entry["name"], (run.target, entry["name"])
            report = run.reports.get(name) or {}
            fams["pg_runbooks_status_code"].set(at, _status_code(entry))
            duration = _number(entry.get("duration_s", report.get("duration_s")))
            if duration is not None:
                fams["pg_runbooks_duration_seconds"].set(at, duration)
            counts = entry.get("findings")
            if not isinstance(counts, Mapping):
                findings = report.get("findings") or []
                counts = {s: sum(f.get("severity") == s for f in findings) for s in SEVERITIES}
            for sev in reversed(SEVERITIES):
                fams["pg_runbooks_findings"].set((*at, sev), _number(counts.get(sev)) or 0)
            skipped = _number(entry.get("skipped"))
            if skipped is None and isinstance(report.get("skipped"), list):
                skipped = len(report["skipped"])
            if skipped is not None:
                fams["pg_runbooks_checks_skipped"].set(at, skipped)
            fams["pg_runbooks_last_run_timestamp_seconds"].set(at, run.timestamp)
            if entry.get("status") != COULD_NOT_RUN and _status_code(entry) != 3:
                fams[LAST_SUCCESS].set(at, run.timestamp)
            elif at in before:
                fams[LAST_SUCCESS].set(at, before[at])
            _checks(checks, thresholds, run, name)
    _accumulate(fams, earlier)
    ordered = dict(fams)
    for name, fam in checks.items():
        ordered[name] = fam
        limit = f"{name}_threshold"
        if limit in thresholds and limit not in checks:  # a measured value of that name wins
            ordered[limit] = thresholds[limit]
    registry = CollectorRegistry()
    registry.register(_Snapshot([fam.metric(name) for name, fam in ordered.items() if fam.samples]))
    return registry


def write_file(registry: Collector, path: Path) -> None:
    """PATH written atomically (a temporary file beside it, renamed; readable as the umask allows),
    its directory created when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)


def _basic_auth(user: str, password: str) -> Callable[..., Callable[[], None]]:
    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, user, password)

    return handler


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def push(registry: Collector, url: str, target: str) -> str | None:
    """Replace the group {job=pg_runbooks, target=TARGET} on the Pushgateway at URL with the
    series of REGISTRY labelled TARGET (credentials in URL become basic auth). None when done,
    else a one-line reason, with no password in it; never raises."""
    shown = shown_url(url)
    secrets: list[str] = []
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        user, password = parts.username, parts.password
        secrets = [s for s in (password, unquote(password or ""), user if password is None else "") if s]
        clean = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        handler = default_handler if user is None else _basic_auth(unquote(user), unquote(password or ""))
        mine = _OneTarget(registry, target)
        if not list(mine.collect()):
            return f"pushgateway {shown}: no series for target {target}, nothing pushed"
        push_to_gateway(clean, job=JOB, registry=mine, grouping_key={"target": target},
                        timeout=PUSH_TIMEOUT_S, handler=handler)
    except Exception as exc:  # noqa: BLE001 - a push is best effort; the run's outcome stands
        message = " ".join(f"pushgateway {shown}: {_reason(exc)}".split())
        return mask_text(message, *secrets)
    return None

