"""Metrics from a recorded demo run (tests/data/demo_run, figures added by hand), read back
with prometheus_client's own parser; pushes to a local Pushgateway-compatible endpoint."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runbooks_lib import metrics
from runbooks_lib.metrics import Run
from runbooks_lib.stories import loud

DATA = Path(__file__).parent / "data" / "demo_run"
TARGET = "db.internal:5432/cosnap"
FINISHED = dt.datetime(2026, 11, 28, 23, 45, 26, tzinfo=dt.UTC).timestamp()  # summary.json
LABELS = {"target", "runbook", "severity", "status", "class"}

Sample = tuple[str, dict[str, str], float]


def demo(target: str = TARGET) -> Run:
    return Run.load(target, DATA)


def read(path: Path) -> tuple[list[Sample], dict[str, str]]:
    """Every sample of the file and the type of every family."""
    samples, types = [], {}
    for fam in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        types[fam.name] = fam.type
        samples += [(s.name, dict(s.labels), s.value) for s in fam.samples]
    return samples, types


def written(tmp_path: Path, runs: list[Run], previous: Path | None = None,
            name: str = "metrics.prom") -> list[Sample]:
    path = tmp_path / name
    metrics.write_file(metrics.build(runs, previous), path)
    return read(path)[0]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The one sample of NAME with LABELS (a subset of its labels)."""
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def names(samples: list[Sample]) -> set[str]:
    return {n for n, _, _ in samples}


def assert_unique(samples: list[Sample]) -> None:
    keys = [(n, tuple(sorted(lab.items()))) for n, lab, _ in samples]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]


def with_figures(run: Run, figures: dict[str, list[dict[str, Any]] | None]) -> Run:
    reports = {name: dict(copy.deepcopy(data)) for name, data in run.reports.items()}
    for name, figs in figures.items():
        if figs is None:
            reports[name].pop("figures", None)
        else:
            reports[name]["figures"] = figs
    return Run(run.target, run.summary, reports, run.finished_at)


def failed(run: Run, runbook: str, at: float) -> Run:
    """RUN with RUNBOOK marked 'could not run', finished at AT."""
    summary = copy.deepcopy(dict(run.summary))
    for entry in summary["runbooks"]:
        if entry["name"] == runbook:
            entry.update(status="could not run", exit_code=3)
    summary.update(status="could not run", exit_code=3)
    return Run(run.target, summary, run.reports, at)


def test_demo_run_gives_every_series_once_with_the_recorded_values(tmp_path: Path) -> None:
    run = demo()
    path = tmp_path / "metrics.prom"
    metrics.write_file(metrics.build([run]), path)
    samples, types = read(path)
    assert_unique(samples)
    assert samples and all(lab.get("target") == TARGET for _, lab, _ in samples)
    assert all(set(lab) <= LABELS for _, lab, _ in samples), "no free text in labels"

    assert types["database_connections_active"] == types["database_connections_max"] == "gauge"
    assert types["database_transactions"] == types["database_errors"] == "counter"
    assert value(samples, "database_connections_active") == 91
    assert value(samples, "database_connections_max") == 97
    assert value(samples, "database_transactions_total", status="success") == 1234567
    assert value(samples, "database_transactions_total", status="rollback") == 25
    assert value(samples, "database_errors_total", **{"class": "timeout"}) == 3
    assert value(samples, "database_errors_total", **{"class": "integrity"}) == 6

    stories = loud(run.reports)
    warnings = sum(s.severity == "warning" for s in stories)
    raw = sum(f["severity"] == "warning" for r in run.reports.values() for f in r["findings"])
    assert value(samples, "database_alerts_total", severity="warning") == warnings
    assert 0 < warnings < raw == 23, "related findings count once"
    assert value(samples, "database_alerts_total", severity="critical") == 0

    assert value(samples, "pg_runbooks_run_status_code") == 1
    books = ["connectivity", "latency", "transaction_failures", "restore_drill"]
    for book in books:
        assert value(samples, "pg_runbooks_status_code", runbook=book) == 1
        assert value(samples, "pg_runbooks_last_run_timestamp_seconds", runbook=book) == FINISHED
        assert value(samples, "pg_runbooks_last_success_timestamp_seconds", runbook=book) == FINISHED
        assert {lab["severity"] for n, lab, _ in samples
                if n == "pg_runbooks_findings" and lab["runbook"] == book} == \
            {"ok", "info", "warning", "critical"}
    assert value(samples, "pg_runbooks_duration_seconds", runbook="latency") == 9.976
    assert value(samples, "pg_runbooks_findings", runbook="latency", severity="warning") == 11
    assert value(samples, "pg_runbooks_findings", runbook="latency", severity="ok") == 7
    assert value(samples, "pg_runbooks_findings", runbook="latency", severity="critical") == 0
    assert value(samples, "pg_runbooks_checks_skipped", runbook="restore_drill") == 1
    assert value(samples, "pg_runbooks_checks_skipped", runbook="latency") == 0

    check = "pg_runbooks_check_"
    assert value(samples, check + "connection_usage_ratio", runbook="connectivity") == 0.938144
    assert value(samples, check + "connection_usage_ratio_threshold", runbook="connectivity") == 0.8
    # two warning seq_scan findings (46914000 and 500000 rows read): one series, the largest
    assert value(samples, check + "seq_tup_read", runbook="latency") == 46914000
    # four errors_* warnings of 6, 6, 2 and 3: one series
    assert value(samples, check + "errors", runbook="transaction_failures") == 6
    assert value(samples, check + "connect_seconds", runbook="transaction_failures") == 0.048
    assert value(samples, check + "average_active_sessions", runbook="latency") == 2.84
    assert check + "average_active_sessions_threshold" not in names(samples), "no threshold: none"
    assert value(samples, check + "rto_seconds", runbook="restore_drill") == 0.632


def test_atomic_write_creates_the_directory_leaves_no_temp_and_follows_the_umask(
        tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "collector" / "pg_runbooks.prom"
    old = os.umask(0o027)
    try:
        metrics.write_file(metrics.build([demo()]), path)
        path.write_text("stale\n")  # replaced whole, not appended to
        metrics.write_file(metrics.build([demo()]), path)
    finally:
        os.umask(old)
    assert os.listdir(path.parent) == ["pg_runbooks.prom"]
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.read_text().startswith("# HELP database_connections_active ")
    assert "stale" not in path.read_text()


def test_two_targets_in_one_file_do_not_collide(tmp_path: Path) -> None:
    other = with_figures(demo("db2.internal:5432/cosnap"), {"connectivity": [
        {"name": "connections_active", "value": 12, "labels": {}},
        {"name": "connections_max", "value": 100, "labels": {}}]})
    one = written(tmp_path, [demo()], name="one.prom")
    both = written(tmp_path, [demo(), other])
    assert_unique(both)
    assert {lab["target"] for _, lab, _ in both} == {TARGET, other.target}
    assert value(both, "database_connections_active", target=TARGET) == 91
    assert value(both, "database_connections_active", target=other.target) == 12
    assert value(both, "pg_runbooks_check_seq_tup_read", target=other.target) == 46914000
    assert len(both) == 2 * len(one), "the same demo data: every series once per target"


def test_one_target_twice_keeps_its_latest_run(tmp_path: Path) -> None:
    late = with_figures(Run(TARGET, demo().summary, demo().reports, FINISHED + 60),
                        {"connectivity": [{"name": "connections_active", "value": 5, "labels": {}}]})
    samples = written(tmp_path, [late, demo()])
    assert_unique(samples)
    assert value(samples, "database_connections_active") == 5
    assert "database_connections_max" not in names(samples), "nothing mixed in from the older run"
    assert value(samples, "pg_runbooks_last_run_timestamp_seconds", runbook="latency") == FINISHED + 60


def test_absent_or_unusable_figures_give_no_series(tmp_path: Path) -> None:
    run = with_figures(demo(), {"connectivity": None, "transaction_failures": [
        {"name": "transactions", "value": True, "labels": {"status": "success"}},
        {"name": "transactions", "value": "25", "labels": {"status": "rollback"}},
        {"name": "transactions", "value": 7, "labels": {"status": "committed, mostly"}},
        {"name": "log_errors", "value": 3, "labels": {"class": "ERROR: duplicate key value"}},
        {"name": "log_errors", "value": None, "labels": {"class": "timeout"}},
        {"name": "log_errors", "value": 4, "labels": {}},
        {"name": "connections_active", "value": -1},
    ]})
    samples = written(tmp_path, [run])
    assert not {n for n in names(samples) if n.startswith("database_")} - {"database_alerts_total"}


def test_a_gauge_seen_twice_keeps_the_later_reading_a_counter_the_largest(tmp_path: Path) -> None:
    run = with_figures(demo(), {
        "connectivity": [{"name": "connections_active", "value": 91, "labels": {}},
                         {"name": "transactions", "value": 1234000, "labels": {"status": "success"}}],
        "latency": [{"name": "connections_active", "value": 60, "labels": {}}]})
    samples = written(tmp_path, [run])
    assert_unique(samples)
    assert value(samples, "database_connections_active") == 60
    assert value(samples, "database_transactions_total", status="success") == 1234567


def test_the_most_severe_finding_speaks_for_a_metric_name(tmp_path: Path) -> None:
    def finding(severity: str, value: Any, threshold: Any = None, name: str = "seq_tup_read") \
            -> dict[str, Any]:
        return {"check": "seq_scan", "severity": severity, "title": "t",
                "metric": {"name": name, "value": value, "threshold": threshold}}

    summary = {"exit_code": 2, "finished_at": "2026-11-28T23:45:26Z", "runbooks": [
        {"name": "latency", "status": "critical", "exit_code": 2, "duration_s": 1.0}]}
    report = {"findings": [finding("warning", 900, 500), finding("critical", 700, 600),
                           finding("critical", 650, 600), finding("ok", 10_000),
                           finding("critical", True, name="flag"),
                           finding("critical", None, name="nothing"),
                           finding("critical", "12", name="text"),
                           finding("warning", 0.25, name="p95 latency/ms")]}
    samples = written(tmp_path, [Run("t", summary, {"latency": report})])
    assert_unique(samples)
    assert value(samples, "pg_runbooks_check_seq_tup_read") == 700
    assert value(samples, "pg_runbooks_check_seq_tup_read_threshold") == 600
    assert value(samples, "pg_runbooks_check_p95_latency_ms") == 0.25
    assert not {"pg_runbooks_check_flag", "pg_runbooks_check_nothing", "pg_runbooks_check_text"} \
        & names(samples)
    assert value(samples, "pg_runbooks_findings", severity="critical") == 5, "counted from the JSON"


def test_last_success_is_carried_over_while_a_runbook_cannot_run(tmp_path: Path) -> None:
    path = tmp_path / "metrics.prom"
    metrics.write_file(metrics.build([demo()]), path)
    later = FINISHED + 3600
    samples = written(tmp_path, [failed(demo(), "latency", later)], previous=path)
    assert_unique(samples)
    assert value(samples, "pg_runbooks_status_code", runbook="latency") == 3
    assert value(samples, "pg_runbooks_run_status_code") == 3
    assert value(samples, "pg_runbooks_last_run_timestamp_seconds", runbook="latency") == later
    assert value(samples, "pg_runbooks_last_success_timestamp_seconds", runbook="latency") == FINISHED
    assert value(samples, "pg_runbooks_last_success_timestamp_seconds", runbook="connectivity") == later

    # and again an hour later: the carried value keeps ageing
    again = written(tmp_path, [failed(demo(), "latency", later + 3600)], previous=path)
    assert value(again, "pg_runbooks_last_success_timestamp_seconds", runbook="latency") == FINISHED


@pytest.mark.parametrize("previous", [None, "missing.prom", "garbage.prom", "other-target.prom"])
def test_no_previous_success_means_no_series(tmp_path: Path, previous: str | None) -> None:
    (tmp_path / "garbage.prom").write_bytes(b"\xff\xfe not { a metrics file\n")
    metrics.write_file(metrics.build([demo("db9:5432/x")]), tmp_path / "other-target.prom")
    samples = written(tmp_path, [failed(demo(), "latency", FINISHED + 60)],
                      previous=tmp_path / previous if previous else None)
    last = [lab["runbook"] for n, lab, _ in samples
            if n == "pg_runbooks_last_success_timestamp_seconds"]
    assert sorted(last) == ["connectivity", "restore_drill", "transaction_failures"]


def test_per_run_counts_add_up_in_a_stable_file(tmp_path: Path) -> None:
    """database_errors_total and database_alerts_total are counters: a stable file adds each
    run's count to the last, so they never go down (rate() would read a drop as a reset)."""
    path = tmp_path / "metrics.prom"
    metrics.write_file(metrics.build([demo()]), path)
    once, _ = read(path)
    errors = value(once, "database_errors_total", **{"class": "timeout"})
    alerts = value(once, "database_alerts_total", severity="warning")
    assert errors > 0 and alerts > 0
    metrics.write_file(metrics.build([demo()], previous=path), path)
    twice, _ = read(path)
    assert value(twice, "database_errors_total", **{"class": "timeout"}) == 2 * errors
    assert value(twice, "database_alerts_total", severity="warning") == 2 * alerts
    assert value(twice, "database_connections_active") == value(once, "database_connections_active")


class Gateway:
    """A Pushgateway-compatible endpoint on 127.0.0.1 that records what it receives."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []


@contextmanager
def gateway(status: int = 200) -> Iterator[tuple[Gateway, int]]:
    seen = Gateway(status)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.requests.append((self.command, self.path, dict(self.headers), body))
            self.send_response(seen.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_PUT = do_POST = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_push_replaces_the_targets_group_with_its_series_only() -> None:
    other = demo("db2.internal:5432/cosnap")
    registry = metrics.build([demo(), other])
    with gateway() as (seen, port):
        assert metrics.push(registry, f"http://u:s%40cret@127.0.0.1:{port}/", TARGET) is None
    ((method, path, headers, body),) = seen.requests
    key = base64.urlsafe_b64encode(TARGET.encode()).decode()
    assert method == "PUT"
    assert path == f"/metrics/job/pg_runbooks/target@base64/{key}"
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"u:s@cret").decode()
    families = list(text_string_to_metric_families(body.decode()))
    pushed = [(s.name, s.labels) for f in families for s in f.samples]
    assert pushed and all(lab["target"] == TARGET for _, lab in pushed)
    assert ("database_connections_active", {"target": TARGET}) in pushed


def test_push_of_an_unknown_target_sends_nothing() -> None:
    with gateway() as (seen, port):
        error = metrics.push(metrics.build([demo()]), f"127.0.0.1:{port}", "nobody")
    assert error is not None and "nothing pushed" in error and not seen.requests


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["500", "closed"])
def test_a_failed_push_is_a_masked_line_not_an_exception(failure: str) -> None:
    registry = metrics.build([demo()])
    if failure == "500":
        with gateway(500) as (seen, port):
            error = metrics.push(registry, f"http://u:secret@127.0.0.1:{port}", TARGET)
        assert len(seen.requests) == 1 and error is not None and "500" in error
    else:
        port = closed_port()
        error = metrics.push(registry, f"http://u:secret@127.0.0.1:{port}", TARGET)
        assert error is not None and "refused" in error.lower()
    assert "secret" not in error and "\n" not in error
    assert f"http://127.0.0.1:{port}" in error and "u:" not in error


def test_a_malformed_url_is_a_message_too() -> None:
    error = metrics.push(metrics.build([demo()]), "http://u:secret@127.0.0.1:notaport", TARGET)
    assert error is not None and "secret" not in error
