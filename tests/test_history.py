"""Run history on a real recorded run (tests/data/demo_run, from a demo run) and three
synthetic successors made by editing it: what a manager reads first ("new since yesterday") must
be right, and prune must never delete what it did not record."""

from __future__ import annotations

import copy
import datetime as dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

from runbooks_lib import history, trend
from runbooks_lib.stories import identity

DATA = Path(__file__).parent / "data" / "demo_run"
BOOKS = ("connectivity", "latency", "transaction_failures", "restore_drill")


def base() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    summary = json.loads((DATA / "summary.json").read_text())
    reports = {b: json.loads((DATA / f"{b}.findings.json").read_text()) for b in BOOKS}
    return summary, reports


def finding(reports: dict[str, dict[str, Any]], book: str, check: str) -> dict[str, Any]:
    return next(f for f in reports[book]["findings"] if f["check"] == check)


def save(root: Path, name: str, started: str, summary: dict[str, Any],
         reports: dict[str, dict[str, Any]], label: str = "cosnap") -> dict[str, Any]:
    """A run directory with its summary.json, recorded like the runner will."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    summary = {**summary, "started_at": started, "out_dir": str(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return history.record(root, run_dir, summary, reports, label)


def three_runs(root: Path) -> list[dict[str, Any]]:
    """Run 1 as recorded; run 2: a duplicate index fixed, the rollback rate turned critical, the
    connection count moved (91 -> 92 of 97); run 3: numbers only."""
    summary, reports = base()
    r1 = save(root, "2026-11-26T234447Z", "2026-11-26T23:44:47Z", summary, reports)

    s2, rep2 = copy.deepcopy(summary), copy.deepcopy(reports)
    rep2["latency"]["findings"] = [f for f in rep2["latency"]["findings"]
                                   if f["check"] != "duplicate_index"]
    rb = finding(rep2, "transaction_failures", "rollback_rate")
    rb.update(severity="critical", title="Rollback rate 7.2% in the last 5 s (2107 of 29267 transactions)",
              metric={"name": "rollback_rate", "value": 0.072, "threshold": 0.05})
    cu = finding(rep2, "connectivity", "connection_usage")
    cu.update(title="Connection slots 95% used (92 of 97)",
              metric={"name": "connection_usage_ratio", "value": 0.948454, "threshold": 0.8})
    s2["status"], s2["exit_code"] = "critical", 2
    s2["runbooks"][2].update(status="critical", exit_code=2)
    r2 = save(root, "2026-11-27T234447Z", "2026-11-27T23:44:47Z", s2, rep2)

    s3, rep3 = copy.deepcopy(s2), copy.deepcopy(rep2)
    cu = finding(rep3, "connectivity", "connection_usage")
    cu.update(title="Connection slots 96% used (93 of 97)",
              metric={"name": "connection_usage_ratio", "value": 0.958763, "threshold": 0.8})
    finding(rep3, "latency", "seq_scan")["title"] = finding(rep3, "latency", "seq_scan")["title"].replace(
        "2234 scans", "2301 scans")
    finding(rep3, "restore_drill", "backup_age")["metric"]["value"] = 10700.0
    r3 = save(root, "2026-11-28T234447Z", "2026-11-28T23:44:47Z", s3, rep3)
    return [r1, r2, r3]


def ids(entries: list[dict[str, Any]]) -> set[str]:
    return {f["id"] for f in entries}


def test_record_holds_the_run(tmp_path: Path) -> None:
    summary, reports = base()
    rec = save(tmp_path, "run1", "2026-11-28T23:44:47Z", summary, reports)
    assert rec["run_dir"] == "run1"
    assert (rec["status"], rec["exit_code"], rec["target_label"]) == ("warning", 1, "cosnap")
    assert rec["runbooks"]["latency"] == {"status": "warning", "duration_s": 9.976,
                                          "counts": {"critical": 0, "warning": 11, "info": 0, "ok": 7}}
    assert rec["metrics"]["connectivity/connection_usage/connection_usage_ratio"] == 0.938144
    assert rec["metrics"]["transaction_failures/rollback_rate/rollback_rate"] == 0.000854
    # two seq_scan findings, same metric name: the first of the most severe
    assert rec["metrics"]["latency/seq_scan/seq_tup_read"] == 46914000
    assert len(rec["findings"]) == 23 and {f["severity"] for f in rec["findings"]} == {"warning"}
    cu = finding(reports, "connectivity", "connection_usage")
    assert identity("connectivity", cu) in ids(rec["findings"])
    assert history.runs(tmp_path) == [rec]  # what was appended reads back the same


def test_key_figures_take_the_most_severe_finding_and_figures_are_kept() -> None:
    reports = {"latency": {"findings": [
        {"check": "seq_scan", "severity": "ok", "metric": {"name": "seq_tup_read", "value": 1}},
        {"check": "seq_scan", "severity": "critical", "metric": {"name": "seq_tup_read", "value": 9}},
        {"check": "seq_scan", "severity": "warning", "metric": {"name": "seq_tup_read", "value": 5}},
        {"check": "load", "severity": "ok", "metric": {"name": "aas", "value": True}},
        {"check": "load", "severity": "ok", "metric": {"name": "nan", "value": float("nan")}}],
        "figures": [{"name": "p95_ms", "value": 212.5, "labels": {"db": "cosnap"}},
                    {"name": "broken", "value": "12"}, "junk"]}}
    assert history.key_figures(reports) == {"latency/seq_scan/seq_tup_read": 9}
    assert history.figures(reports) == [{"runbook": "latency", "name": "p95_ms", "value": 212.5,
                                         "labels": {"db": "cosnap"}}]


def test_target_masked_and_outside_run_dir_absolute(tmp_path: Path) -> None:
    summary, reports = base()
    summary["target"] = "postgresql://app:hunter2@db:5432/cosnap"
    elsewhere = tmp_path / "elsewhere"
    rec = history.record(tmp_path / "root", elsewhere, summary, reports, "cosnap")
    assert "hunter2" not in json.dumps(rec)
    assert "hunter2" not in (tmp_path / "root" / "history.jsonl").read_text()
    assert rec["run_dir"] == str(elsewhere.resolve())


def test_new_gone_still_across_three_runs(tmp_path: Path) -> None:
    r1, r2, r3 = three_runs(tmp_path)
    _, reports = base()
    rollback = "transaction_failures/rollback_rate/Rollback rate #% in the last # s"
    dup = identity("latency", finding(reports, "latency", "duplicate_index"))
    conn = identity("connectivity", finding(reports, "connectivity", "connection_usage"))

    first = history.diff(None, r1)
    assert first.first_run and ids(first.new) == ids(r1["findings"]) and not first.still

    d12 = history.diff(r1, r2)
    assert not d12.first_run
    assert ids(d12.new) == {rollback}
    assert ids(d12.gone) == {dup}
    assert conn in ids(d12.still) and len(d12.still) == 22
    assert d12.headline() == "+1 new / -1 gone"

    d23 = history.diff(r2, r3)  # numbers only: "92 of 97" -> "93 of 97" is the same finding
    assert (d23.new, d23.gone, d23.worse) == ([], [], [])
    assert ids(d23.still) == ids(r3["findings"]) and conn in ids(d23.still)
    assert d23.headline() == "+0 new / -0 gone"

    assert history.previous(tmp_path, "cosnap", r3["started_at"]) == r2
    assert history.previous(tmp_path, "cosnap", r1["started_at"]) is None


def test_worse_is_still_open_not_new_and_unrun_runbook_is_not_gone(tmp_path: Path) -> None:
    summary, reports = base()
    r1 = save(tmp_path, "a", "2026-11-27T00:00:00Z", summary, reports)
    s2, rep2 = copy.deepcopy(summary), copy.deepcopy(reports)
    finding(rep2, "connectivity", "connection_usage")["severity"] = "critical"
    s2["runbooks"] = [rb for rb in s2["runbooks"] if rb["name"] != "restore_drill"]
    del rep2["restore_drill"]
    s2["runbooks"][1]["status"] = "could not run"
    rep2["latency"]["findings"].append({"check": "long_running", "severity": "warning",
                                        "title": "Statement running 75 s", "evidence": []})
    r2 = save(tmp_path, "b", "2026-11-28T00:00:00Z", s2, rep2)
    d = history.diff(r1, r2)
    conn = identity("connectivity", finding(reports, "connectivity", "connection_usage"))
    assert d.new == [] and d.gone == []
    assert [(f["id"], f["was"], f["severity"]) for f in d.worse] == [(conn, "warning", "critical")]
    assert conn in ids(d.still)
    # restore_drill not run and latency could not run: their findings prove nothing either way
    assert {f["runbook"] for f in d.still} >= {"latency"}
    assert {f["runbook"] for f in d.unknown} == {"restore_drill", "latency"}
    assert [f["title"] for f in d.unknown if f["runbook"] == "latency"] == ["Statement running 75 s"]
    assert "1 worse" in d.headline()


def test_malformed_lines_are_skipped(tmp_path: Path) -> None:
    summary, reports = base()
    r1 = save(tmp_path, "a", "2026-11-27T00:00:00Z", summary, reports)
    with (tmp_path / "history.jsonl").open("ab") as fh:
        fh.write(b'not json\n[1, 2]\n{"no": "started_at"}\n\xff\xfe garbage\n\n{"started_at": 5}\n'
                 b'{"started_at": "2026-11-27T01:00:00Z", "target_label": "cosnap", '
                 b'"findings": "x", "runbooks": [1]}\n'
                 b'{"started_at": "2026-11-27T02:00:00Z", "findings": [')  # torn: no newline
    r2 = save(tmp_path, "b", "2026-11-28T00:00:00Z", summary, reports)
    got = history.runs(tmp_path)
    assert [r["started_at"] for r in got] == ["2026-11-27T00:00:00Z", "2026-11-27T01:00:00Z",
                                              "2026-11-28T00:00:00Z"]
    assert got[0] == r1 and got[2] == r2  # the torn line did not swallow the next record
    assert (got[1]["findings"], got[1]["runbooks"]) == ([], {})
    assert "+0 new / -0 gone / 23 not compared" in trend.table(got)
    assert history.runs(tmp_path / "nothing-here") == []


def test_unwritable_root_raises_oserror_only(tmp_path: Path) -> None:
    summary, reports = base()
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        history.record(tmp_path / "file" / "root", tmp_path / "run", summary, reports, "cosnap")


def test_two_targets_are_kept_apart(tmp_path: Path) -> None:
    summary, reports = base()
    quiet = copy.deepcopy(reports)
    for data in quiet.values():
        data["findings"] = [f for f in data["findings"] if f["severity"] not in ("warning", "critical")]
    save(tmp_path, "a1", "2026-11-27T00:00:00Z", summary, reports, "cosnap")
    b1 = save(tmp_path, "b1", "2026-11-27T00:01:00Z", summary, quiet, "billing")
    a2 = save(tmp_path, "a2", "2026-11-28T00:00:00Z", summary, reports, "cosnap")
    b2 = save(tmp_path, "b2", "2026-11-28T00:01:00Z", summary, quiet, "billing")
    assert [r["run_dir"] for r in history.runs(tmp_path, "billing")] == ["b1", "b2"]
    assert history.previous(tmp_path, "billing", b2["started_at"]) == b1
    assert history.previous(tmp_path, "cosnap", b2["started_at"]) == a2
    pairs = trend.changes(history.runs(tmp_path))
    assert [d.headline() for _, d in pairs] == ["first run", "first run", "+0 new / -0 gone",
                                                "+0 new / -0 gone"]


def test_prune_deletes_only_recorded_run_dirs_inside_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "reports", tmp_path / "outside"
    summary, reports = base()
    old = "2026-10-01T00:00:00Z"
    gone = save(root, "old-run", old, summary, reports)
    save(root, "decoy", old, summary, reports)
    (root / "decoy" / "summary.json").unlink()           # recorded, but no summary.json
    outside.mkdir()
    (outside / "summary.json").write_text("{}")
    history.record(root, outside, summary | {"started_at": old}, reports, "cosnap")
    history.record(root, root / ".." / "outside", summary | {"started_at": old}, reports, "cosnap")
    (root / "link").symlink_to(outside, target_is_directory=True)
    history.record(root, root / "link", summary | {"started_at": old}, reports, "cosnap")
    lines = (root / "history.jsonl").read_text()
    (root / "history.jsonl").write_text(lines + json.dumps(
        {"started_at": old, "run_dir": "link", "findings": []}) + "\nnot json\n")  # the link, unresolved
    unrecorded = root / "unrecorded"
    unrecorded.mkdir()
    (unrecorded / "summary.json").write_text("{}")
    os.utime(unrecorded, (0, 0))
    busy = save(root, "busy", old, summary, reports)
    recent = save(root, "recent", "2026-11-28T00:00:00Z", summary, reports)
    now = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)

    assert history.prune(root, 0, now=now) == []   # keep_days <= 0 keeps everything
    assert (root / "old-run").is_dir()

    with (root / "busy" / ".runbooks.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                # a run writes there right now
        removed = history.prune(root, 30, now=now)
    assert removed == [(root / "old-run").resolve()]
    assert not (root / "old-run").exists()
    for survivor in ("decoy", "link", "unrecorded", "busy", "recent"):
        assert (root / survivor).exists(), survivor
    assert (outside / "summary.json").exists() and (root / "link").is_symlink()
    left = [r["run_dir"] for r in history.runs(root)]
    assert left == [busy["run_dir"], recent["run_dir"]]
    assert gone["run_dir"] not in left
    assert "not json" not in (root / "history.jsonl").read_text()  # a prune tidies what no one can read
    assert history.prune(root, 30, now=now) == [(root / "busy").resolve()]  # not busy any more


def history_of_three(tmp_path: Path) -> str:
    three_runs(tmp_path)
    return trend.table(history.runs(tmp_path))


def test_table_shows_statuses_figures_and_changes(tmp_path: Path) -> None:
    text = history_of_three(tmp_path)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["when", "(UTC)", "target", "status", "conn"]
    assert lines[1].startswith("2026-11-26 23:44  cosnap  warning") and "first run" in lines[1]
    assert "critical" in lines[2] and "CRIT" in lines[2] and "+1 new / -1 gone" in lines[2]
    assert "+0 new / -0 gone" in lines[3]
    assert "94%" in lines[1] and "95%" in lines[2] and "96%" in lines[3]
    assert "0.1%" in lines[1] and "7.2%" in lines[2]
    assert "2.8 h" in lines[1] and "3.0 h" in lines[3]
    assert "cosnap, run of 2026-11-28 23:44 (2026-11-28T234447Z): +0 new / -0 gone" in text
    assert "still open (23)" in text and "... and 8 more" in text


def test_table_lists_new_and_gone_titles_of_the_newest_run(tmp_path: Path) -> None:
    recs = three_runs(tmp_path)
    text = trend.table(recs[:2])
    assert "new (1):\n    CRIT  transaction_failures    Rollback rate 7.2%" in text
    assert "gone (1):\n    warn  latency                 Duplicate index public.posts_user_id_idx" in text


def test_table_strips_terminal_escapes(tmp_path: Path) -> None:
    summary, reports = base()
    finding(reports, "latency", "load")["title"] = "app \x1b]0;owned\x07 name"
    save(tmp_path, "a", "2026-11-28T00:00:00Z", summary, reports)
    text = trend.table(history.runs(tmp_path))
    assert "\x1b" not in text and "\x07" not in text and "app  ]0;owned  name" in text


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert trend.main(tmp_path, None, 10, False) == 0
    assert capsys.readouterr().out.startswith(f"no runs recorded under {tmp_path}: `runbooks run")
    three_runs(tmp_path)
    assert trend.main(tmp_path, "cosnap", 2, False) == 0
    out = capsys.readouterr().out
    assert "2026-11-26" not in out.split("\n\n")[0] and "+1 new / -1 gone" in out
    assert trend.main(tmp_path, "cosnap", 10, True) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["runs"]) == 3 and data["changes"][0]["new"] == []
    assert len(data["changes"][0]["still"]) == 23
    assert trend.main(tmp_path, "other", 10, False) == 0
    assert "for target other" in capsys.readouterr().out


def test_concurrent_appends_each_stay_one_line(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    summary, reports = base()

    def one(i: int) -> None:
        history.record(tmp_path, tmp_path / f"run{i}", summary | {"started_at": f"2026-11-28T00:00:{i:02}Z"},
                       reports, "cosnap")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(40)))
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert len(lines) == 40 and len(history.runs(tmp_path)) == 40
