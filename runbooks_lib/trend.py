"""Run history shown: the table `runbooks history` prints (and its JSON), also the trend in the
health overview: status, key figures and what is new or gone, run after run (history.py keeps
the records)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .findings import COULD_NOT_RUN, finite
from .history import HISTORY, Diff, diff, runs, when

# (column heading, metric name, unit) of the key figures `runbooks history` shows
KEY_FIGURES = (("conn use", "connection_usage_ratio", "ratio"),
               ("rollback", "rollback_rate", "ratio"),
               ("backup age", "newest_backup_age_seconds", "seconds"))
SHORT = {"connectivity": "conn", "latency": "lat", "transaction_failures": "txfail",
         "restore_drill": "drill", "health_overview": "health"}
WORD = {"ok": "ok", "info": "info", "warning": "warn", "critical": "CRIT", COULD_NOT_RUN: "FAIL"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clip(text: Any, width: int = 100) -> str:
    """One printable line: titles hold application names and query texts from the database,
    and an escape sequence must not reach the terminal."""
    one = _CONTROL.sub(" ", str(text))
    return one if len(one) <= width else one[: width - 3] + "..."


def _clock(iso_time: Any) -> str:
    t = when(iso_time)
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if t else _clip(iso_time, 16)


def _figure(rec: Mapping[str, Any], name: str, unit: str) -> str:
    """The worst value of metric NAME among the run's runbooks and checks, shown for a person."""
    values = [v for k, v in (rec.get("metrics") or {}).items()
              if str(k).rsplit("/", 1)[-1] == name and finite(v) is not None]
    if not values:
        return "-"
    v = max(values)
    if unit == "ratio":
        return f"{v * 100:.0f}%" if v >= 0.1 else f"{v * 100:.1f}%"
    if v < 120:
        return f"{v:.0f} s"
    if v < 7200:
        return f"{v / 60:.0f} min"
    return f"{v / 3600:.1f} h" if v < 172800 else f"{v / 86400:.1f} d"


def changes(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Diff]]:
    """Each record with its diff against the run before it of the same target."""
    last: dict[str, dict[str, Any]] = {}
    out = []
    for rec in records:
        label = str(rec.get("target_label", ""))
        out.append((rec, diff(last.get(label), rec)))
        last[label] = rec
    return out


def _rows(heads: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [heads, *rows]]


def _listing(head: str, entries: list[dict[str, Any]], limit: int | None = None) -> list[str]:
    if not entries:
        return []
    shown = entries if limit is None else entries[:limit]
    lines = [f"  {head} ({len(entries)}):"]
    lines += [f"    {WORD.get(str(f.get('severity')), '?'):4}  {_clip(f.get('runbook'), 22):22}  "
              f"{_clip(f.get('title'))}" for f in shown]
    if len(entries) > len(shown):
        lines.append(f"    ... and {len(entries) - len(shown)} more (runbooks history --json)")
    return lines


def table(records: list[dict[str, Any]], last: int = 10) -> str:
    """What `runbooks history` prints: the last LAST runs, one line each (oldest first), then
    what changed in the newest run of each target against the run before it. LAST <= 0: all."""
    pairs = changes(records)[-last:] if last > 0 else changes(records)
    if not pairs:
        return "no runs recorded"
    books = list(dict.fromkeys(b for rec, _ in pairs for b in rec["runbooks"]))
    heads = ["when (UTC)", "target", "status", *[SHORT.get(b, b[:8]) for b in books],
             *[h for h, _, _ in KEY_FIGURES], "since previous"]
    rows = [[_clock(rec["started_at"]), _clip(rec.get("target_label") or "-", 24),
             _clip(rec.get("status"), 16),
             *[WORD.get(str(rec["runbooks"].get(b, {}).get("status")), "-") for b in books],
             *[_figure(rec, name, unit) for _, name, unit in KEY_FIGURES], d.headline()]
            for rec, d in pairs]
    lines = _rows(heads, rows)
    lines.append("warn = warning, CRIT = critical, FAIL = could not run, - = not run")
    newest: dict[str, tuple[dict[str, Any], Diff]] = {}
    for rec, d in pairs:
        newest[str(rec.get("target_label", ""))] = (rec, d)
    for rec, d in newest.values():
        lines += ["", f"{_clip(rec.get('target_label') or '-', 40)}, run of "
                      f"{_clock(rec['started_at'])} ({_clip(rec.get('run_dir') or '?', 80)}): "
                      f"{d.headline()}"]
        lines += (_listing("open (first run recorded)", d.new, limit=15) if d.first_run
                  else _listing("new", d.new))
        lines += _listing("worse", d.worse)
        lines += _listing("gone", d.gone)
        lines += _listing("still open", d.still, limit=15)
        lines += _listing("not compared (runbook not run in both)", d.unknown, limit=5)
        if not (d.new or d.gone or d.still or d.unknown):
            lines.append("  no warning or critical finding")
    return "\n".join(lines)


def main(root: Path, target: str | None, last: int, as_json: bool) -> int:
    """`runbooks history`: print the table (or JSON) of the runs under ROOT. Returns 0, also
    when nothing is recorded yet (a fresh install is not a failure: the run's own exit status
    is what a scheduler watches), and 1 only when history.jsonl exists but cannot be read."""
    try:
        recs = runs(root, target)
    except OSError as exc:
        print(f"cannot read {root / HISTORY}: {exc.strerror or exc}")
        return 1
    if as_json:
        pairs = changes(recs)[-last:] if last > 0 else changes(recs)
        newest = {str(r.get("target_label", "")): (r, d) for r, d in pairs}
        print(json.dumps({"root": str(root), "runs": [r for r, _ in pairs],
                          "changes": [{"target_label": label, "started_at": r["started_at"],
                                       "run_dir": r.get("run_dir"), **d.to_dict()}
                                      for label, (r, d) in newest.items()]}, indent=2))
    elif not recs:
        where = "" if root.is_dir() else f" ({root} is no directory)"
        if (root / "summary.json").exists():
            where = f" ({root} is a run directory: its parent is the reports root)"
        print(f"no runs recorded under {root}"
              + (f" for target {target}" if target is not None else "") + where
              + ": `runbooks run --out ROOT/NAME` records each run in ROOT/history.jsonl")
    else:
        print(table(recs, last))
    return 0
