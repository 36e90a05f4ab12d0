"""The registry: every probe, check and runbook declared once; everything else derived from it.

A **probe** runs read-only SQL (or reads a log) and returns a typed snapshot. A **check** is a
pure function of the snapshots it names and of its parameters, returning findings. A **runbook**
is an ordered list of steps, each a list of check ids. From these declarations come the
notebook's parameters cell, `runbooks list`, the README's parameter tables, the CLI's
validation of `-p` values and the demo's expectations (tests keep each of them equal to the
registry).

>>> spec = runbook("connectivity")
>>> spec.steps[0].checks
('shared.reachability',)
>>> parameter("connection_usage_warning").default
0.8
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .findings import Figure, Finding, Skipped
    from .session import ServerFacts

Value = int | float | bool | str
Params = Mapping[str, Any]
FORBIDDEN_IN_HELP = ("=", '"', "'", "#")  # papermill's parameter parser drops such lines


@dataclass(frozen=True)
class Param:
    """One parameter: its type, default, unit, allowed range and what it means."""

    name: str
    kind: type
    default: Value
    help: str
    unit: str = ""
    low: float | None = None  # allowed range, inclusive
    high: float | None = None
    choices: tuple[str, ...] = ()
    form: Callable[[str], object] | None = field(default=None, compare=False)  # text: a parser
    form_help: str = ""  # what FORM accepts, in words

    def __post_init__(self) -> None:
        bad = [c for c in FORBIDDEN_IN_HELP if c in self.help]
        if bad:
            raise ValueError(f"{self.name}: help text may not hold {bad} (papermill drops the line)")
        if self.kind not in (int, float, bool, str):
            raise ValueError(f"{self.name}: kind must be int, float, bool or str")
        self.check(self.default)

    @property
    def type_name(self) -> str:
        return self.kind.__name__

    def allowed(self) -> str:
        """What values are allowed, in words: for messages and tables."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.form_help:
            return self.form_help
        if self.kind is bool:
            return "true or false"
        noun = {int: "an integer", float: "a number"}.get(self.kind, "text")
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{noun} of at least {self.low:g}"
        if self.high is not None:
            return f"{noun} of at most {self.high:g}"
        return noun

    def check(self, value: Any) -> Value:
        """VALUE if it is of this parameter's type and range, else ValueError saying why."""
        kind = self.kind
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{self.name}={value!r}: expected {self.allowed()}")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name}={value!r}: expected {self.allowed()}")
        if self.form is not None and isinstance(value, str):
            try:
                self.form(value)
            except ValueError:
                raise ValueError(f"{self.name}={value!r}: expected {self.allowed()}") from None
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (
                    self.high is not None and value > self.high) or value != value:
                raise ValueError(f"{self.name}={value!r}: expected {self.allowed()}")
        assert isinstance(value, int | float | bool | str)
        return value

    def parse(self, text: str) -> Value:
        """A value given as text on the command line, typed and checked."""
        raw = text.strip()
        value: Any
        try:
            if self.kind is bool:
                lowered = raw.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value = lowered in ("true", "1", "yes", "on")
            elif self.kind is int:
                value = int(raw)
            elif self.kind is float:
                value = float(raw)
            else:
                value = text
            return self.check(value)
        except ValueError:
            raise ValueError(f"{self.name}={text!r}: expected {self.allowed()}") from None

    def line(self) -> str:
        """This parameter as a line of the notebook's parameters cell (typed, commented)."""
        return f"{self.name}: {self.type_name} = {self.default!r}  # {self.comment()}"

    def comment(self) -> str:
        unit = f" ({self.unit})" if self.unit in ("s", "ms", "MB") else ""
        return f"{self.help}{unit}"


MONITOR_ROLES = ("pg_read_all_stats", "pg_read_all_settings", "pg_stat_scan_tables")


@dataclass(frozen=True)
class Requires:
    """What a probe needs from the server; unmet, its checks are skipped with the reason."""

    privilege: str = ""  # a predefined role (superusers hold them all)
    server_version: int = 0  # minimum server_version_num
    extension: str = ""

    def unmet(self, facts: ServerFacts) -> str | None:
        if self.server_version and facts.version_num < self.server_version:
            return f"needs PostgreSQL {self.server_version // 10000} or later"
        if self.extension and self.extension not in facts.extensions:
            return f"needs the {self.extension} extension (CREATE EXTENSION {self.extension})"
        if self.privilege and not facts.has_role(self.privilege):
            grant = "pg_monitor" if self.privilege in MONITOR_ROLES else self.privilege
            from .sqltext import ident

            return (f"role {facts.current_user} lacks {self.privilege}: GRANT {grant} TO "
                    f"{ident(facts.current_user)}")
        return None


@dataclass(frozen=True)
class Probe:
    """Read-only data collection: FETCH(context, params) -> snapshot, memoised per run."""

    name: str
    fetch: Callable[..., Any]
    doc: str
    params: tuple[Param, ...] = ()
    requires: Requires = Requires()
    needs: tuple[str, ...] = ()  # probes whose snapshots FETCH reads through the context


@dataclass(frozen=True)
class Check:
    """A judgement: EVALUATE(*snapshots of PROBES, params) -> findings, pure (it may also
    return Skipped entries, or raise SkipStep, for what it cannot judge).

    DOC says what the finding means and what to do; EMITS lists the `check` names its findings
    carry in the findings JSON; SHOW (optional) displays its evidence in the notebook; FIGURES
    (optional, pure, same snapshots) returns the numbers it measured for metrics and history."""

    id: str
    title: str
    doc: str
    evaluate: Callable[..., Sequence[Finding | Skipped]]
    probes: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    emits: tuple[str, ...] = ()
    show: Callable[..., None] | None = None
    act: bool = False  # the last probe's snapshot is an actions.Plan, run behind its guards
    figures: Callable[..., list[Figure]] | None = None

    @property
    def family(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def short(self) -> str:
        return self.id.split(".", 1)[1]


@dataclass(frozen=True)
class Step:
    """One section of a runbook's notebook: a heading and the checks it runs."""

    key: str
    title: str
    checks: tuple[str, ...]


@dataclass(frozen=True)
class RunbookSpec:
    name: str
    title: str
    when: str
    steps: tuple[Step, ...]
    params: tuple[Param, ...] = ()  # the runbook's own (target, timeouts, ...)
    modules: tuple[str, ...] = ()  # check modules to import (registration)
    tail: tuple[Param, ...] = field(default=())  # parameters listed last (set by the runner)
    time_limit: str = ""  # a minutes parameter that raises the runner's time limits for it
    # the step until which it loads the source (a backup reads every table): the runbooks that
    # sample the server wait for it, so they do not report its load as the application's
    loads_source_until: str = ""
    on_stop: str = ""  # "module:function" called with the parameters when a run is stopped
    live: bool = False  # its notebook shows the live views (rb.live()) after the start cell

    def stopped(self, params: dict[str, Any]) -> None:
        """The clean-up of a stopped run (ON_STOP), if it declares one."""
        if self.on_stop:
            module, _, name = self.on_stop.partition(":")
            getattr(importlib.import_module(module), name)(params)

    def step(self, key: str) -> Step:
        for s in self.steps:
            if s.key == key:
                return s
        raise KeyError(f"{self.name} has no step {key!r}; its steps: "
                       + ", ".join(s.key for s in self.steps))


PROBES: dict[str, Probe] = {}
CHECKS: dict[str, Check] = {}
RUNBOOKS: dict[str, RunbookSpec] = {}
RUNBOOK_MODULES = ("connectivity", "latency", "transaction_failures", "restore_drill")


def register_probe(probe: Probe) -> Probe:
    PROBES[probe.name] = probe
    return probe


def register(check: Check) -> Check:
    CHECKS[check.id] = check
    return check


def register_runbook(spec: RunbookSpec) -> RunbookSpec:
    RUNBOOKS[spec.name] = spec
    return spec


def _load() -> None:
    for name in RUNBOOK_MODULES:
        importlib.import_module(f"runbooks_lib.runbooks.{name}")


def runbooks() -> dict[str, RunbookSpec]:
    """Every declared runbook, in the order of RUNBOOK_MODULES."""
    _load()
    return {n: RUNBOOKS[n] for n in RUNBOOK_MODULES}


def runbook(name: str) -> RunbookSpec:
    specs = runbooks()
    if name not in specs:
        raise KeyError(name)
    spec = specs[name]
    for module in spec.modules:
        importlib.import_module(f"runbooks_lib.checks.{module}")
    return spec


def checks_of(spec: RunbookSpec) -> Iterator[Check]:
    for s in spec.steps:
        for cid in s.checks:
            yield CHECKS[cid]


def probes_of(check: Check) -> Iterator[Probe]:
    """The probes a check reads, with the probes those read, each once, dependencies first."""
    seen: set[str] = set()

    def walk(name: str) -> Iterator[Probe]:
        if name in seen:
            return
        seen.add(name)
        probe = PROBES[name]
        for dep in probe.needs:
            yield from walk(dep)
        yield probe

    for name in check.probes:
        yield from walk(name)


def parameters(spec: RunbookSpec) -> list[Param]:
    """The runbook's parameters: its own, then those of its checks and probes in step order,
    then the runner's; each name once (a name declared twice must be declared alike)."""
    out: dict[str, Param] = {}

    def add(p: Param) -> None:
        if p.name in out and out[p.name] != p:
            raise ValueError(f"parameter {p.name} is declared twice, differently")
        out.setdefault(p.name, p)

    for p in spec.params:
        add(p)
    for check in checks_of(spec):
        for probe in probes_of(check):
            for p in probe.params:
                add(p)
        for p in check.params:
            add(p)
    for p in spec.tail:
        add(p)
    return list(out.values())


def parameter(name: str) -> Param:
    """A parameter by name, from whichever runbook declares it."""
    for spec in runbooks().values():
        runbook(spec.name)
        for p in parameters(spec):
            if p.name == name:
                return p
    raise KeyError(name)


def parameters_cell(spec: RunbookSpec) -> str:
    """The source of the notebook's cell tagged `parameters` (a test keeps them equal)."""
    return "\n".join(p.line() for p in parameters(spec))


def list_text() -> str:
    """`runbooks list`: each runbook, its steps and its parameters."""
    lines: list[str] = []
    for name in runbooks():
        spec = runbook(name)
        lines.append(f"{name}: {spec.title}")
        lines.append(f"  when: {spec.when}")
        lines.append(f"  steps: {', '.join(s.key for s in spec.steps)}")
        for p in parameters(spec):
            lines.append(f"    {p.name} ({p.type_name}) = {p.default!r}: {p.comment()}; "
                         f"{p.allowed()}")
    return "\n".join(lines)


def readme_table(spec: RunbookSpec) -> str:
    """The runbook's parameter table in the README (a test keeps them equal)."""
    rows = ["| parameter | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for p in parameters(spec):
        default = "''" if p.default == "" else str(p.default)
        rows.append(f"| `{p.name}` | {p.type_name} | `{default}` | {p.allowed()} | "
                    f"{p.comment()} |")
    return "\n".join(rows)
