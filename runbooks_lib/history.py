"""Run history: every run recorded under the reports root, so a reader sees what moved.

Run directories sit side by side under a reports root (``reports/<UTC timestamp>/``: the root
of a run is its parent). The root holds ``history.jsonl``, one JSON object per run, oldest first:
the run's status, each runbook's status, duration and counts, its key figures (each finding's
``metric``, and a findings JSON's top-level ``figures``) and its warning and critical findings
named by :func:`stories.identity`, the name that stays the same from one run to the next while
their figures change. From it the nightly overview and ``runbooks history`` say which findings
are new, gone or still open since the run before: "new since yesterday" is read first.

Concurrency: a line is appended with one ``write`` on an ``O_APPEND`` descriptor, and appends
and prunes hold an exclusive ``flock`` on ``.history.lock`` beside it (a separate file, because
a prune replaces ``history.jsonl`` atomically and a lock on the replaced file would lock
nothing). Readers take no lock: they see the old or the new file, and skip a torn line.

Failure: :func:`record` and :func:`prune` raise ``OSError`` only (an unwritable root); the runner
catches it and warns, because losing a history line must never fail the run it describes.
:func:`runs` skips malformed lines silently and returns ``[]`` when there is no history yet.

>>> r = {"started_at": "2026-11-28T23:44:47Z", "status": "warning", "target_label": "db",
...      "runbooks": {"latency": {"status": "warning"}},
...      "findings": [{"id": "latency/seq_scan/table:posts", "runbook": "latency",
...                    "check": "seq_scan", "severity": "warning", "title": "Seq scans on posts"}]}
>>> diff(None, r).headline()
'first run'
>>> diff(r, r).headline()
'+0 new / -0 gone'
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .findings import COULD_NOT_RUN, SEVERITIES, finite, write_text
from .stories import LOUD, identity
from .target import mask_text

log = logging.getLogger("runbooks_lib")

HISTORY = "history.jsonl"
LOCK = ".history.lock"
VERSION = 1



# ---------------------------------------------------------------- building and appending

def _rank(severity: Any) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _findings(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = data.get("findings")
    return [f for f in found if isinstance(f, Mapping)] if isinstance(found, list) else []


def key_figures(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, float | int]:
    """{runbook/check/metric name: value}: one value per name, the most severe finding's (the
    first listed among equals), so the figure tracked is the one the runbook judged."""
    best: dict[str, tuple[int, float | int]] = {}
    for book, data in reports.items():
        for f in _findings(data):
            m = f.get("metric")
            value = finite(m.get("value")) if isinstance(m, Mapping) else None
            if value is None or not isinstance(m, Mapping):
                continue
            key = f"{book}/{f.get('check')}/{m.get('name')}"
            rank = _rank(f.get("severity"))
            if key not in best or rank > best[key][0]:
                best[key] = (rank, value)
    return {k: v for k, (_, v) in best.items()}


def figures(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The findings JSONs' top-level ``figures`` ([{name, value, labels}]), with their runbook;
    entries without a name or a finite value are left out."""
    out: list[dict[str, Any]] = []
    for book, data in reports.items():
        listed = data.get("figures")
        for fig in listed if isinstance(listed, list) else []:
            if not isinstance(fig, Mapping) or not fig.get("name"):
                continue
            value = finite(fig.get("value"))
            if value is None:
                continue
            labels = fig.get("labels")
            out.append({"runbook": book, "name": str(fig["name"]), "value": value,
                        "labels": ({str(k): str(v) for k, v in labels.items()}
                                   if isinstance(labels, Mapping) else {})})
    return out


def loud_findings(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Warning and critical findings as {id, runbook, check, severity, title}; two findings with
    one identity are one entry (the most severe), so a diff compares sets."""
    out: dict[str, dict[str, str]] = {}
    for book, data in reports.items():
        for f in _findings(data):
            sev = str(f.get("severity"))
            if sev not in LOUD:
                continue
            entry = {"id": identity(book, f), "runbook": book, "check": str(f.get("check")),
                     "severity": sev, "title": str(f.get("title", ""))}
            if entry["id"] not in out or _rank(sev) > _rank(out[entry["id"]]["severity"]):
                out[entry["id"]] = entry
    return list(out.values())


def _runbooks(summary: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]]
              ) -> dict[str, dict[str, Any]]:
    """Per runbook {status, duration_s, counts}: summary.json's entries, else the findings JSON."""
    out: dict[str, dict[str, Any]] = {}
    listed = summary.get("runbooks")
    for rb in listed if isinstance(listed, list) else []:
        if not isinstance(rb, Mapping) or not rb.get("name"):
            continue
        counts = _map(rb.get("findings"))
        out[str(rb["name"])] = {
            "status": str(rb.get("status", COULD_NOT_RUN)),
            "duration_s": finite(rb.get("duration_s")),
            "counts": {s: n for s in reversed(SEVERITIES)
                       if isinstance(n := counts.get(s, 0), int) and not isinstance(n, bool)}}
    for book, data in reports.items():
        if book not in out:
            counts_of = dict.fromkeys(reversed(SEVERITIES), 0)
            for f in _findings(data):
                if f.get("severity") in counts_of:
                    counts_of[str(f["severity"])] += 1
            out[book] = {"status": str(data.get("status", COULD_NOT_RUN)),
                         "duration_s": finite(data.get("duration_s")), "counts": counts_of}
    return out


def _relative(root: Path, run_dir: Path) -> str:
    """The run directory relative to the root when inside it (the tree can move), else absolute."""
    r, d = root.resolve(), run_dir.resolve()
    return d.relative_to(r).as_posix() if d != r and d.is_relative_to(r) else str(d)


def build(root: Path, run_dir: Path, summary: Mapping[str, Any],
          reports: Mapping[str, Mapping[str, Any]], target_label: str) -> dict[str, Any]:
    """The history record of one run (see the module docstring); never raises on odd input."""
    started = summary.get("started_at")
    return {
        "v": VERSION,
        "run_dir": _relative(root, run_dir),
        "started_at": str(started) if started else _now_iso(),
        "finished_at": str(summary.get("finished_at") or ""),
        "target": mask_text(str(summary.get("target", ""))),
        "target_label": str(target_label),
        "status": str(summary.get("status", COULD_NOT_RUN)),
        "exit_code": summary.get("exit_code") if isinstance(summary.get("exit_code"), int) else 3,
        "runbooks": _runbooks(summary, reports),
        "metrics": key_figures(reports),
        "figures": figures(reports),
        "findings": loud_findings(reports),
    }


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """An exclusive flock on ROOT/.history.lock (created no more readable than the umask)."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record(root: Path, run_dir: Path, summary: Mapping[str, Any],
           reports: Mapping[str, Mapping[str, Any]], target_label: str) -> dict[str, Any]:
    """Append the record of one run to ROOT/history.jsonl and return it. Raises OSError only
    (root not writable, disk full): the caller catches it, the run itself has succeeded."""
    rec = build(root, run_dir, summary, reports, target_label)
    line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode("ascii")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        fd = os.open(root / HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line must not swallow this one
            written = os.write(fd, line)
            while written < len(line):  # a short write on a regular file: finish it, still locked
                written += os.write(fd, line[written:])
        finally:
            os.close(fd)
    return rec


# ---------------------------------------------------------------- reading

def _clean(rec: Any) -> dict[str, Any] | None:
    """A record as the readers expect it, or None for a line that is not one."""
    if not isinstance(rec, dict) or not isinstance(rec.get("started_at"), str):
        return None
    found = rec.get("findings")
    rec["findings"] = [f for f in found if isinstance(f, dict) and isinstance(f.get("id"), str)
                       ] if isinstance(found, list) else []
    for key in ("runbooks", "metrics"):
        if not isinstance(rec.get(key), dict):
            rec[key] = {}
    rec["runbooks"] = {k: v for k, v in rec["runbooks"].items() if isinstance(v, dict)}
    rec.setdefault("target_label", "")
    rec.setdefault("status", "")
    return rec


def _lines(root: Path) -> list[str]:
    """The lines of ROOT/history.jsonl; [] when there is none yet."""
    try:
        text = (root / HISTORY).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()


def _parse(line: str) -> dict[str, Any] | None:
    try:
        return _clean(json.loads(line))
    except ValueError:
        return None


def runs(root: Path, target_label: str | None = None) -> list[dict[str, Any]]:
    """The recorded runs, oldest first, of TARGET_LABEL when given. Malformed lines are skipped
    without a word; OSError only when history.jsonl exists and cannot be read."""
    recs = [r for r in map(_parse, _lines(root)) if r is not None
            and (target_label is None or r["target_label"] == target_label)]
    return sorted(recs, key=lambda r: str(r["started_at"]))


def previous(root: Path, target_label: str, before: str) -> dict[str, Any] | None:
    """The newest run of TARGET_LABEL that started before BEFORE (an ISO started_at): the run a
    new one is compared with."""
    earlier = [r for r in runs(root, target_label) if str(r["started_at"]) < before]
    return earlier[-1] if earlier else None


# ---------------------------------------------------------------- comparing

@dataclass
class Diff:
    """What changed between two runs of one target, as findings entries of the current run
    (``gone``: of the previous one).

    A finding is the same when its identity is (its numbers may change: "91 of 97" then
    "92 of 97" is still open). A finding whose severity rose is not new, it is ``still`` open
    and also listed in ``worse`` (with ``was``, its previous severity): reporting it as new and
    gone would tell the reader it was fixed. Findings of a runbook that did not complete in one
    of the two runs (not run, or could not run) are neither new nor gone but ``unknown``: their
    absence proves nothing. With no previous run every finding is new and ``first_run`` is set.
    """

    new: list[dict[str, Any]] = field(default_factory=list)
    gone: list[dict[str, Any]] = field(default_factory=list)
    still: list[dict[str, Any]] = field(default_factory=list)
    worse: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)
    first_run: bool = False

    def headline(self) -> str:
        """'+N new / -M gone' (and 'K worse', 'U not compared'): what the overview and the table
        show beside a run."""
        if self.first_run:
            return "first run"
        text = f"+{len(self.new)} new / -{len(self.gone)} gone"
        text += f" / {len(self.worse)} worse" if self.worse else ""
        return text + (f" / {len(self.unknown)} not compared" if self.unknown else "")

    def to_dict(self) -> dict[str, Any]:
        return {"first_run": self.first_run, "new": self.new, "gone": self.gone,
                "still": self.still, "worse": self.worse, "unknown": self.unknown}


def _completed(rec: Mapping[str, Any]) -> set[str]:
    books = rec.get("runbooks")
    return {name for name, rb in books.items() if isinstance(rb, Mapping)
            and rb.get("status") != COULD_NOT_RUN} if isinstance(books, Mapping) else set()


def _by_severity(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda f: -_rank(f.get("severity")))


def diff(prev: Mapping[str, Any] | None, cur: Mapping[str, Any]) -> Diff:
    """New, gone and still open findings of CUR against PREV (see :class:`Diff`)."""
    now = {f["id"]: f for f in cur.get("findings") or []}
    if prev is None:
        return Diff(new=_by_severity(now.values()), first_run=True)
    before = {f["id"]: f for f in prev.get("findings") or []}
    judged = _completed(prev) & _completed(cur)
    out = Diff()
    for fid, f in now.items():
        if fid in before:
            out.still.append(f)
            was = before[fid].get("severity")
            if _rank(f.get("severity")) > _rank(was):
                out.worse.append({**f, "was": was})
        elif f.get("runbook") in judged:
            out.new.append(f)
        else:
            out.unknown.append(f)
    for fid, f in before.items():
        if fid not in now:
            (out.gone if f.get("runbook") in judged else out.unknown).append(f)
    out.new, out.gone, out.still = map(_by_severity, (out.new, out.gone, out.still))
    return out


# ---------------------------------------------------------------- pruning

def when(text: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _run_path(root: Path, rec: Mapping[str, Any]) -> Path | None:
    where = rec.get("run_dir")
    if not isinstance(where, str) or not where:
        return None
    p = Path(where)
    return p if p.is_absolute() else root / p


def _ours(root: Path, path: Path) -> Path | None:
    """PATH resolved when prune may delete it: a real directory (not a symlink, no symlink on
    the way out of the root) strictly inside ROOT, holding a regular summary.json."""
    try:
        if path.is_symlink():
            return None
        real = path.resolve(strict=True)
        if real == root or not real.is_relative_to(root) or not stat.S_ISDIR(os.lstat(real).st_mode):
            return None
        return real if stat.S_ISREG(os.lstat(real / "summary.json").st_mode) else None
    except (OSError, RuntimeError):
        return None


def _real(path: Path | None) -> Path | None:
    try:
        return path.resolve() if path is not None else None
    except (OSError, RuntimeError):
        return None


def _busy(run_dir: Path) -> bool:
    """A run is writing there now (it holds .runbooks.lock, see report.claimed)."""
    try:
        fd = os.open(run_dir / ".runbooks.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def prune(root: Path, keep_days: float, now: dt.datetime | None = None) -> list[Path]:
    """Drop the records older than KEEP_DAYS and delete their run directories; return those
    deleted. A directory is deleted only when it is recorded, inside ROOT and holds a
    summary.json (see :func:`_ours`); the record of any other is dropped and the directory left
    alone. A record whose directory could not be deleted, or is in use, is kept to retry.
    KEEP_DAYS <= 0 keeps everything. Raises OSError only (history not writable)."""
    if keep_days <= 0 or not (root / HISTORY).exists():
        return []
    cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=keep_days)
    real_root = root.resolve()
    removed: list[Path] = []
    with _locked(root):
        parsed = [(line, _parse(line)) for line in _lines(root) if line.strip()]
        old = {i for i, (_, rec) in enumerate(parsed) if rec is not None
               and (t := when(rec["started_at"])) is not None and t < cutoff}
        kept_dirs = [p for i, (_, rec) in enumerate(parsed) if rec is not None and i not in old
                     and (p := _real(_run_path(root, rec))) is not None]
        dropped: set[int] = set()
        for i in sorted(old):
            rec = parsed[i][1]
            assert rec is not None
            path = _run_path(root, rec)
            real = _ours(real_root, path) if path is not None else None
            if real is not None:
                if _busy(real) or any(k.is_relative_to(real) for k in kept_dirs):
                    continue  # in use, or holds a run still kept: keep the record too
                try:
                    shutil.rmtree(real)
                except OSError as exc:
                    log.warning("history: cannot delete %s (%s); kept for the next prune",
                                real, exc.strerror or exc)
                    continue
                removed.append(real)
            dropped.add(i)
        if dropped:  # lines that are not records at all go too: nothing can ever read them
            keep = [line for i, (line, rec) in enumerate(parsed) if rec is not None and i not in dropped]
            write_text(root / HISTORY, "".join(line + "\n" for line in keep))
    return removed
