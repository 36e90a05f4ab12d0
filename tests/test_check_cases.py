"""Every check judged on tables of cases, without a server (in the style of sqlfluff's rule tests).

`tests/cases/*.yml` maps a check id to its cases, by name. A case gives:

- `params`: overrides of the check's parameters (the others keep the runbook's defaults);
- `snapshots`: by probe name, what tests/snapshots.py builds that probe's snapshot from (one
  entry for each probe of the check; null means the builder's defaults);
- either `expect`, the findings and skips the check returns, in order: each
  `{check, severity}` (the finding's `check` field) with optional `title_contains`,
  `detail_contains`, `remediation_contains` and `metric` (a number: its value; or a mapping of
  name, value and threshold; null: no metric), or `{check, skipped}` for a Skipped entry whose
  reason holds that text (`expect: []` is no finding at all);
- or `skip`: text of the reason of the SkipStep the check raises (or its probe: a builder
  raises it where the probe would, e.g. for a log that could not be read);
- optionally `doc` (why the case is there) and `xfail` (a known defect: the case states the
  documented behaviour and fails until the check is fixed; strict, so a fix is noticed).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbooks_lib import registry
from runbooks_lib.errors import SkipStep
from runbooks_lib.findings import SEVERITIES, Finding, Skipped

from . import snapshots

CASES_DIR = Path(__file__).resolve().parent / "cases"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parses the tables 10x faster
CASE_KEYS = {"doc", "params", "snapshots", "expect", "skip", "xfail"}
EXPECT_KEYS = {"check", "severity", "skipped", "title_contains", "detail_contains",
               "remediation_contains", "metric"}
METRIC_KEYS = {"name", "value", "threshold"}
FAILING = ("warning", "critical")
# Checks that only show evidence or act: their evaluate returns no finding and they emit none,
# so a passing case is all they can have.
NO_VERDICT = {
    "connectivity.session_stats": "shows the session counters for the reader, judges nothing",
    "connectivity.terminate_idle_in_transaction": "the action reports what it did (actions.py)",
    "latency.window": "the sampling window is the evidence of the checks after it, judges nothing",
    "latency.signal_blocker": "the action reports what it did (actions.py); the check only "
                              "notes the root blockers it leaves out",
}
# Verdicts whose only cases are xfail, a known defect making every such case fail: counted as
# covered until the defect is fixed (its cases then pass, so their xfail goes, and so must the
# entry here: the coverage test says so).
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Case:
    source: str  # file name
    check: str
    name: str
    params: dict[str, Any]
    snapshots: dict[str, Any]
    expect: list[dict[str, Any]] | None
    skip: str | None
    xfail: str | None

    @property
    def id(self) -> str:
        return f"{self.check}:{self.name}"

    @property
    def verdicts(self) -> set[str]:
        """'fail' (a warning or critical finding), 'skip' (cannot judge), else 'pass'."""
        out = set()
        if self.skip is not None:
            out.add("skip")
        for e in self.expect or []:
            if e.get("severity") in FAILING:
                out.add("fail")
            if "skipped" in e:
                out.add("skip")
        return out or {"pass"}


def no_duplicate_keys(node: Any, where: str) -> None:
    """PyYAML keeps the last of two equal keys: a second case of the same name would silently
    replace the first."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ValueError(f"{where}: key {key.value!r} given twice (line "
                                     f"{key.start_mark.line + 1})")
                seen.add(key.value)
            no_duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            no_duplicate_keys(item, where)


def mapping(value: Any, where: str, allowed: set[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {value!r}")
    if allowed is not None and set(value) - allowed:
        raise ValueError(f"{where}: unknown key(s) {sorted(map(str, set(value) - allowed))}; "
                         f"allowed: {sorted(allowed)}")
    return value


def parse_case(source: str, check: str, name: str, raw: Any) -> Case:
    where = f"{source}: {check}:{name}"
    spec = mapping(raw, where, CASE_KEYS)
    if ("expect" in spec) == ("skip" in spec):
        raise ValueError(f"{where}: give either expect or skip")
    expect = spec.get("expect")
    if expect is not None:
        if not isinstance(expect, list):
            raise ValueError(f"{where}: expect must be a list")
        for e in expect:
            e = mapping(e, f"{where}: expectation", EXPECT_KEYS)
            if "check" not in e or ("severity" in e) == ("skipped" in e):
                raise ValueError(f"{where}: an expectation is {{check, severity, ...}} or "
                                 f"{{check, skipped}}: {e}")
            if "severity" in e and e["severity"] not in SEVERITIES:
                raise ValueError(f"{where}: unknown severity {e['severity']!r}")
            if isinstance(e.get("metric"), dict):
                mapping(e["metric"], f"{where}: metric", METRIC_KEYS)
    return Case(source, check, str(name), mapping(spec.get("params"), f"{where}: params"),
                mapping(spec.get("snapshots"), f"{where}: snapshots"), expect,
                None if spec.get("skip") is None else str(spec["skip"]),
                None if spec.get("xfail") is None else str(spec["xfail"]))


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*.yml")):
        text = path.read_text(encoding="utf-8")
        no_duplicate_keys(yaml.compose(text, Loader=LOADER), path.name)
        tables = mapping(yaml.load(text, Loader=LOADER), path.name)  # noqa: S506 - a safe loader
        for check, table in tables.items():
            for name, raw in mapping(table, f"{path.name}: {check}").items():
                cases.append(parse_case(path.name, str(check), name, raw))
    return cases


CASES = load_cases()


def spec_of(name: str) -> registry.RunbookSpec:
    """Runbook NAME with its check modules imported, alone: registry.runbook(name) imports
    every runbook, so one being written would fail the cases of all the others."""
    importlib.import_module(f"runbooks_lib.runbooks.{name}")
    spec = registry.RUNBOOKS[name]
    for module in spec.modules:
        importlib.import_module(f"runbooks_lib.checks.{module}")
    return spec


def home_of(check_id: str) -> registry.RunbookSpec | None:
    """The first runbook (of those that import) running CHECK_ID."""
    for name in registry.RUNBOOK_MODULES:
        module = f"runbooks_lib.runbooks.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a runbook not written yet: look elsewhere
            if exc.name != module:
                raise
            continue
        spec = registry.RUNBOOKS[name]
        if any(check_id in step.checks for step in spec.steps):
            return spec_of(name)
    return None


def check_of(check_id: str) -> registry.Check:
    """The check, found through the runbook running it (else in checks/<family>.py)."""
    if home_of(check_id) is None and check_id not in registry.CHECKS:
        module = f"runbooks_lib.checks.{check_id.split('.', 1)[0]}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    if check_id not in registry.CHECKS:
        raise KeyError(f"no check {check_id!r} in any runbook nor registered")
    return registry.CHECKS[check_id]


def default_params(check: registry.Check) -> dict[str, Any]:
    """The defaults of the first runbook running CHECK (else of the check and its probes)."""
    spec = home_of(check.id)
    if spec is not None:
        return {p.name: p.default for p in registry.parameters(spec)}
    own = [*check.params, *(p for probe in registry.probes_of(check) for p in probe.params)]
    return {p.name: p.default for p in own}


def params_for(check: registry.Check, case: Case) -> dict[str, Any]:
    declared = {p.name: p for p in check.params}
    declared.update({p.name: p for probe in registry.probes_of(check) for p in probe.params})
    out = default_params(check)
    for name, value in case.params.items():
        if name not in declared:
            raise KeyError(f"{case.id}: {name} is no parameter of {check.id} (its parameters: "
                           f"{sorted(declared)})")
        out[name] = declared[name].check(value)
    return out


def snapshots_for(check: registry.Check, case: Case) -> list[Any]:
    given, wanted = set(case.snapshots), set(check.probes)
    if given != wanted:
        raise KeyError(f"{case.id}: snapshots must be given for exactly the probes of {check.id} "
                       f"{list(check.probes)} (null for the defaults); missing "
                       f"{sorted(wanted - given)}, extra {sorted(given - wanted)}")
    return [snapshots.build(name, case.snapshots[name]) for name in check.probes]


def describe(results: Sequence[Finding | Skipped]) -> str:
    lines = []
    for r in results:
        if isinstance(r, Skipped):
            lines.append(f"  skipped {r.check}: {r.reason}")
        else:
            lines.append(f"  {r.severity} {r.check}: {r.title}\n    detail: {r.detail}\n    "
                         f"metric: {r.metric}\n    remediation: {r.remediation}")
    return "\n".join(lines) or "  (nothing)"


def close(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float | int) and not isinstance(expected, bool):
        return isinstance(actual, float | int) and math.isclose(actual, expected, rel_tol=1e-9,
                                                                abs_tol=1e-9)
    return bool(actual == expected)


def mismatches(result: Finding | Skipped, e: dict[str, Any]) -> list[str]:
    """How RESULT differs from expectation E (nothing when it matches)."""
    out = []
    if result.check != e["check"]:
        out.append(f"check {result.check!r}, expected {e['check']!r}")
    if "skipped" in e:
        if not isinstance(result, Skipped):
            return [*out, f"a {result.severity} finding, expected a skip"]
        if e["skipped"] not in result.reason:
            out.append(f"reason {result.reason!r} does not hold {e['skipped']!r}")
        return out
    if not isinstance(result, Finding):
        return [*out, f"skipped ({result.reason}), expected a {e['severity']} finding"]
    if result.severity != e["severity"]:
        out.append(f"severity {result.severity}, expected {e['severity']}")
    for key, text in (("title_contains", result.title), ("detail_contains", result.detail),
                      ("remediation_contains", result.remediation)):
        if key in e and str(e[key]) not in text:
            out.append(f"{key.removesuffix('_contains')} {text!r} does not hold {e[key]!r}")
    if "metric" in e:
        want = e["metric"]
        if want is None:
            if result.metric is not None:
                out.append(f"metric {result.metric}, expected none")
        elif result.metric is None:
            out.append(f"no metric, expected {want}")
        else:
            for key, expected in (want if isinstance(want, dict) else {"value": want}).items():
                actual = getattr(result.metric, key)
                if not close(actual, expected):
                    out.append(f"metric {key} {actual!r}, expected {expected!r}")
    return out


def case_param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [case_param(c) for c in CASES])
def test_case(case: Case) -> None:
    check = check_of(case.check)
    params = params_for(check, case)
    if case.skip is not None:
        with pytest.raises(SkipStep) as raised:  # raised by the check, or by its probe
            results = check.evaluate(*snapshots_for(check, case), params)
            pytest.fail(f"{case.id}: expected SkipStep holding {case.skip!r}, got:\n"
                        f"{describe(results)}")
        assert case.skip in str(raised.value), f"{case.id}: skip reason {str(raised.value)!r}"
        return
    results = list(check.evaluate(*snapshots_for(check, case), params))
    assert case.expect is not None
    problems = []
    if len(results) != len(case.expect):
        problems.append(f"{len(results)} result(s), expected {len(case.expect)}")
    for n, (result, e) in enumerate(zip(results, case.expect, strict=False), 1):
        problems += [f"result {n}: {m}" for m in mismatches(result, e)]
    for result in results:  # the registry's declaration: what the check's findings are called
        if isinstance(result, Finding) and result.check not in check.emits:
            problems.append(f"finding {result.check!r} is not among {check.id}'s emits "
                            f"{check.emits}")
    assert not problems, (f"{case.id} ({case.source}):\n  " + "\n  ".join(problems)
                          + f"\ngot:\n{describe(results)}")


# the names of registry.runbooks(), without importing them here (see spec_of)
@pytest.mark.parametrize("runbook", registry.RUNBOOK_MODULES)
def test_every_check_has_passing_and_failing_cases(runbook: str) -> None:
    """A check emitting findings needs a passing and a failing (warning or critical) case; one
    emitting none (it only skips) a passing and a skip case; one in NO_VERDICT a passing one.
    Cases marked xfail count only for the verdicts listed in KNOWN_DEFECTS."""
    missing = []
    for check in registry.checks_of(spec_of(runbook)):
        if check.id in NO_VERDICT:
            # an action reports what it did (action_* information), never a verdict
            assert not check.emits or check.act, \
                f"{check.id} emits {check.emits}: remove it from NO_VERDICT"
            needed = {"pass"}
        else:
            needed = {"pass", "fail" if check.emits else "skip"}
        have: set[str] = set()
        known: set[str] = set()
        for case in CASES:
            if case.check == check.id:
                (known if case.xfail else have).update(case.verdicts)
        for verdict in needed:
            if (check.id, verdict) not in KNOWN_DEFECTS:
                continue
            if verdict in have:
                missing.append(f"{check.id}: a {verdict} case passes now; remove "
                               f"({check.id!r}, {verdict!r}) from KNOWN_DEFECTS")
            elif verdict in known:
                have.add(verdict)
        if needed - have:
            missing.append(f"{check.id}: no {' nor '.join(sorted(needed - have))} case")
    assert not missing, f"{runbook}: " + "; ".join(missing)


def test_cases_name_registered_checks() -> None:
    """A table for a renamed or removed check would otherwise never run against anything."""
    unknown = set()
    for case in CASES:
        try:
            check_of(case.check)
        except KeyError:
            unknown.add(f"{case.source}: {case.check}")
    assert not unknown, sorted(unknown)
