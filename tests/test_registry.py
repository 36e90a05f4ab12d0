"""The registry and everything derived from it: the notebooks' code cells, the README's tables,
the validation of parameters, and the shape of the library (no server needed)."""

from __future__ import annotations

import ast
import json

import pytest

from runbooks_lib import derived, params, registry
from runbooks_lib.registry import Param

from .conftest import ROOT

NAMES = list(registry.runbooks())


@pytest.mark.parametrize("name", NAMES)
def test_notebook_code_cells_are_the_registry_s(name: str) -> None:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert code == derived.expected_code(registry.runbook(name)), (
        "run `python -m runbooks_lib.derived` and commit the notebook")
    params_cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert params_cell["metadata"].get("tags") == ["parameters"]


@pytest.mark.parametrize("name", NAMES)
def test_each_step_has_its_explanation_above_it(name: str) -> None:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    cells = nb["cells"]
    for i, c in enumerate(cells):
        if c["cell_type"] == "code" and "".join(c["source"]).startswith("rb.step("):
            assert cells[i - 1]["cell_type"] == "markdown", f"{name}: cell {i} has no markdown"
            assert "".join(cells[i - 1]["source"]).startswith("## ")


def test_readme_parameter_tables_are_the_registry_s() -> None:
    sections = derived.readme_sections((ROOT / "README.md").read_text())
    assert set(sections) == set(NAMES)
    for name, text in sections.items():
        assert text == derived.readme_section(name), (
            "run `python -m runbooks_lib.derived` and commit README.md")


@pytest.mark.parametrize("name", NAMES)
def test_every_name_a_runbook_uses_is_declared(name: str) -> None:
    spec = registry.runbook(name)
    assert len({s.key for s in spec.steps}) == len(spec.steps)
    seen: set[str] = set()
    for check in registry.checks_of(spec):
        assert check.id not in seen, f"{check.id} runs twice in {name}"
        seen.add(check.id)
        assert check.id.split(".")[0] in (name, "shared", *spec.modules), check.id
        assert check.title and len(check.doc.split()) >= 10, f"{check.id}: say what it means"
        for probe in registry.probes_of(check):  # raises KeyError for an undeclared probe
            assert probe.doc, probe.name
    registry.parameters(spec)  # raises when one name is declared two ways


def test_parameter_help_must_parse_in_papermill() -> None:
    with pytest.raises(ValueError, match="help text may not hold"):
        Param("x", int, 1, "default = 1")
    with pytest.raises(ValueError, match="expected an integer from 0 to 5"):
        Param("x", int, 9, "a count", low=0, high=5)


@pytest.mark.parametrize(("given", "error"), [
    ({"allow_action": "true"}, "unknown parameter allow_action (did you mean allow_actions?)"),
    ({"connection_usage_warning": "2.5"}, "expected a number from 0.01 to 1"),
    ({"connect_timeout_s": "-1"}, "connect_timeout_s='-1': expected a number from 0.5 to 300"),
    ({"replicas": "2.5"}, "replicas='2.5': expected an integer of at least 1"),
    ({"allow_actions": "maybe"}, "expected true or false"),
    ({"connection_usage_warning": "nan"}, "expected a number"),
])
def test_bad_values_are_refused_with_what_is_allowed(given: dict[str, str], error: str) -> None:
    with pytest.raises(params.UsageError, match=error.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        params.validate(["connectivity"], given)


def test_good_values_are_typed() -> None:
    got = params.validate(["connectivity", "latency"], {
        "allow_actions": "yes", "replicas": "3", "connection_usage_warning": "0.7",
        "blocker_action": "terminate", "target": "service:prod"})
    assert got == {"allow_actions": True, "replicas": 3, "connection_usage_warning": 0.7,
                   "blocker_action": "terminate", "target": "service:prod"}


def test_no_runbook_imports_another_and_no_module_is_too_long() -> None:
    lib = ROOT / "runbooks_lib"
    for path in (lib / "runbooks").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module in ("registry", "params", None) or node.level == 0 and \
                    node.module == "__future__", f"{path.name} imports {node.module}"
    for path in lib.rglob("*.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 510, f"{path.relative_to(ROOT)} is too long"
        assert "runbooks_lib.runbooks" not in text or path.parent.name == "runbooks" \
            or path.name == "registry.py", f"{path.name} reaches into a runbook"


def test_user_facing_text_never_says_where_the_project_came_from() -> None:
    files = [*ROOT.glob("notebooks/*.ipynb"), ROOT / "README.md",
             *(ROOT / "runbooks_lib").rglob("*.py"), *(ROOT / "runbooks_lib").rglob("*.sql")]
    for path in files:
        assert "seed" not in path.read_text().lower(), path.name
