"""What is derived from the registry and committed: the notebooks' code cells (the parameters
cell, the cell that starts the run, one `rb.step(...)` cell per declared step, the verdict) and
the README's parameter tables. The notebooks' markdown (what each step looks at and why) is
written by hand. `python -m runbooks_lib.derived` rewrites both from the registry; a test fails
when a committed file differs from what this module derives.
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import registry


def start_cell(name: str) -> str:
    return ("from runbooks_lib.lab import start\n\n"
            "# the connection attempt starts here, while the checks are loaded; every parameter\n"
            "# above is checked against the runbook's declaration; in JupyterLab, the control\n"
            "# panel (headless, nothing more)\n"
            f'rb = start("{name}", globals())')


def step_cell(key: str) -> str:
    return f'rb.step("{key}")'


VERDICT = "verdict = rb.finish()"
LIVE = "rb.live()"


def expected_code(spec: registry.RunbookSpec) -> list[str]:
    """The code cells of SPEC's notebook, in order."""
    return [registry.parameters_cell(spec), start_cell(spec.name),
            *([LIVE] if spec.live else []), *(step_cell(s.key) for s in spec.steps), VERDICT]


def sync(path: Path) -> bool:
    """Rewrite PATH's code cells from the registry (markdown kept); True when it changed.
    The notebook must already have one code cell per expected cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    spec = registry.runbook(path.stem)
    want = expected_code(spec)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    if len(cells) != len(want):
        raise SystemExit(f"{path.name}: {len(cells)} code cells, the registry declares "
                         f"{len(want)} (parameters, start, {len(spec.steps)} steps, verdict): "
                         "add or remove a markdown + code cell pair by hand first")
    changed = False
    for cell, source in zip(cells, want, strict=True):
        if cell.source != source:
            cell.source, changed = source, True
        cell.outputs, cell.execution_count = [], None
    cells[0].metadata["tags"] = ["parameters"]
    if changed:
        nbformat.write(nb, path)
    return changed


def readme_section(name: str) -> str:
    spec = registry.runbook(name)
    return (f"<!-- parameters:{name} (generated: python -m runbooks_lib.derived) -->\n"
            f"{registry.readme_table(spec)}\n<!-- /parameters:{name} -->")


def readme_sections(text: str) -> dict[str, str]:
    """The generated parameter tables found in the README's TEXT, by runbook."""
    import re

    return {m.group(1): m.group(0) for m in re.finditer(
        r"<!-- parameters:(\w+) .*?-->\n.*?<!-- /parameters:\1 -->", text, re.S)}


def sync_readme(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    new = text
    for name, old in readme_sections(text).items():
        new = new.replace(old, readme_section(name))
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str]) -> int:
    from .notebooks import available

    for name, path in available().items():
        if name in registry.runbooks():
            print(f"{path.name}: {'rewritten' if sync(path) else 'up to date'}")
    readme = Path(__file__).resolve().parent.parent / "README.md"
    print(f"README.md: {'rewritten' if sync_readme(readme) else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
