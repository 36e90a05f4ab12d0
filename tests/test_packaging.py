"""Set-up files agree with each other and notebooks are stored clean."""

import json
import re
import tomllib

import yaml

from runbooks_lib import registry
from runbooks_lib.outputs import OVERVIEW

from .conftest import ROOT

START_PAGE = "start_here.ipynb"  # markdown only: the page `make lab` opens, no runbook


def test_environment_yml_pins_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {p for p in pip_section if not p.startswith("-e")}
    assert conda_pins == pins
    assert all(re.search(r"==\S+$", p) for p in pins), "every dependency is pinned exactly"


def test_notebooks_are_stored_without_outputs_and_have_parameters() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path
        if path.name == START_PAGE:
            assert not code, f"{START_PAGE} is markdown only"
            continue
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: one cell tagged parameters"
        assert nb["cells"][0]["cell_type"] == "markdown"


def test_start_page_links_every_runbook_and_the_overview() -> None:
    nb = json.loads((ROOT / "notebooks" / START_PAGE).read_text())
    assert {c["cell_type"] for c in nb["cells"]} == {"markdown"}
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    linked = set(re.findall(r"\]\(([^)\s]+\.ipynb)\)", text))
    expected = {f"{name}.ipynb" for name in [*registry.runbooks(), OVERVIEW]}
    assert expected <= linked, f"not linked from {START_PAGE}: {sorted(expected - linked)}"
    for target in linked:
        assert (ROOT / "notebooks" / target).is_file(), f"{START_PAGE} links to a missing {target}"
