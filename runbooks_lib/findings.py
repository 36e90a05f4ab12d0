"""Findings: what a runbook concluded, in the findings JSON contract of DESIGN.md section 3."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SEVERITIES = ("ok", "info", "warning", "critical")
EXIT_CODES = {"ok": 0, "info": 0, "warning": 1, "critical": 2}
EXIT_COULD_NOT_RUN = 3
COULD_NOT_RUN = "could not run"  # a status of its own, never "ok" beside an error


def worst(severities: list[str]) -> str:
    """The most severe of SEVERITIES ('ok' for none)."""
    return max(severities, key=SEVERITIES.index, default="ok")


def exit_code(status: str) -> int:
    """0 ok or info, 1 warning, 2 critical, 3 could not run."""
    return EXIT_CODES.get(status, EXIT_COULD_NOT_RUN)


def status_of(severities: list[str], errors: int) -> str:
    return COULD_NOT_RUN if errors else worst(severities)


def grade(value: float, warning: float, critical: float) -> str:
    """Severity of a value against 'greater than' thresholds (default alerts: > 80 % warns, > 95 % pages)."""
    if value > critical:
        return "critical"
    if value > warning:
        return "warning"
    return "ok"


@dataclass
class Metric:
    name: str
    value: float | int | None
    threshold: float | int | None = None


@dataclass
class Finding:
    check: str
    severity: str
    title: str
    detail: str = ""
    metric: Metric | None = None
    evidence: list[dict[str, Any]] = field(default_factory=list)
    remediation: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")


def graded(check: str, metric: str, value: float, warning: float, critical: float = math.inf, *,
           title: str, detail: str = "", evidence: list[dict[str, Any]] | None = None,
           remediation: str = "", quiet: str = "ok") -> Finding:
    """A finding graded by VALUE against 'greater than' thresholds: the metric carries the
    threshold crossed, and the remediation is given only when there is something to do.
    QUIET is the severity below the warning threshold ('ok', or 'info' for a fact worth
    showing that is no incident)."""
    sev = grade(value, warning, critical)  # on the exact value: rounding is for the reader
    return Finding(check, quiet if sev == "ok" else sev, title, detail,
                   Metric(metric, round(value, 6), critical if sev == "critical" else warning),
                   evidence or [], remediation if sev != "ok" else "")


@dataclass
class Figure:
    """A number a runbook measured that is no judgement (connections in use, transactions
    committed): kept in the findings JSON for metrics and history."""

    name: str
    value: float | int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Skipped:
    check: str
    reason: str


@dataclass
class StepError:
    step: str
    message: str


def finite(value: Any) -> float | int | None:
    """VALUE when it is a finite int or float (a bool is no figure, NaN no value), else None.

    >>> finite(3), finite(0.5), finite(True), finite(float("nan")), finite("7")
    (3, 0.5, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """Values from PostgreSQL and pandas as JSON: times in ISO 8601, NaN/NaT as null."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if hasattr(value, "isoformat") and hasattr(value, "tzinfo"):  # pandas Timestamp
        return None if str(value) == "NaT" else value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def records(df: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The first rows of a DataFrame as JSON-safe evidence."""
    return [jsonable(r) for r in df.head(limit).to_dict(orient="records")]


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Report:
    """The findings of one runbook run; written to disk after every change."""

    runbook: str
    target: str
    path: Path | None = None
    server_version: str | None = None
    started_at: dt.datetime = field(default_factory=now_utc)
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[StepError] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    steps_done: list[str] = field(default_factory=list)  # the runner watches them
    window: dict[str, Any] = field(default_factory=dict)  # what the judgement covers in time

    @property
    def status(self) -> str:
        return COULD_NOT_RUN if self.errors else worst([f.severity for f in self.findings])

    @property
    def exit_code(self) -> int:
        return exit_code(self.status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "target": self.target,
            "server_version": self.server_version,
            "started_at": iso(self.started_at),
            "duration_s": round((now_utc() - self.started_at).total_seconds(), 3),
            "status": self.status,
            "findings": [jsonable(asdict(f)) for f in self.findings],
            "skipped": [asdict(s) for s in self.skipped],
            "errors": [asdict(e) for e in self.errors],
            "figures": [jsonable(asdict(f)) for f in self.figures],
            "steps_done": list(self.steps_done),
            "window": jsonable(self.window),
        }

    def write(self) -> None:
        """Write atomically, so a reader never sees half a file even if the kernel dies."""
        if self.path is None:
            return
        write_json(self.path, self.to_dict())


def umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_text(path: Path, text: str) -> None:
    """Write atomically (a reader never sees half a file, even if the process dies) and no
    more readable than the umask allows: reports hold query texts and client addresses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def run_reports(run_dir: Path, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The findings JSONs summary.json lists, by runbook, read from RUN_DIR (one that is
    missing or unreadable is left out: a runbook that could not run may not have written it)."""
    out: dict[str, dict[str, Any]] = {}
    listed = summary.get("runbooks")
    for rb in listed if isinstance(listed, list) else []:
        if not isinstance(rb, dict) or not rb.get("name"):
            continue
        files = rb.get("files")
        given = files.get("findings") if isinstance(files, dict) else None
        name = Path(str(given or f"{rb['name']}.findings.json")).name
        try:
            data = json.loads((run_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out[str(rb["name"])] = data
    return out
