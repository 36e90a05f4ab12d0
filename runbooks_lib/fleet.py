"""The fleet file: which targets a sweep looks at, and which runbooks with which parameters.

Checked against the registry before anything runs; every refusal names the file's line (a
usage error: exit 64). A target is named as ``env:VAR`` or ``service:NAME`` only: the file is
kept in git and handed to schedulers, so a password or a DSN in it is refused, never used.

>>> fleet = parse('''
... runbooks: [connectivity]
... params: {connect_attempts: 2}
... targets:
...   - {name: app-1, target: "env:APP1_URL", tags: [prod]}
... ''')
>>> fleet.targets[0].name, fleet.targets[0].params["connect_attempts"], fleet.runbooks
('app-1', 2, ['connectivity'])
>>> parse('targets:\\n  - {name: a, target: "postgresql://u:pw@h/db"}', "f.yaml")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
runbooks_lib.params.UsageError: f.yaml:2: target a: give env:VAR or service:NAME, never a DSN ...
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .findings import COULD_NOT_RUN, status_of
from .params import UsageError, declared
from .registry import Value

if TYPE_CHECKING:
    from .report import Outcome

TOP_KEYS = ("runbooks", "params", "targets")
TARGET_KEYS = ("name", "target", "tags", "params")
# keys someone might use to put a secret in the file: refused with the reason, not as a typo
SECRET_KEYS = ("password", "passwd", "dsn", "url", "uri", "conninfo", "connection_string")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RUNNER_PARAMS = ("target", "findings_path")  # set by the sweep for each target


@dataclass(frozen=True)
class FleetTarget:
    """One target of the fleet: its name (also its output directory), how the workers find
    it (env:VAR or service:NAME) and its own parameters over the fleet's."""

    name: str
    spec: str
    tags: tuple[str, ...] = ()
    params: dict[str, Value] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Fleet:
    runbooks: list[str]
    targets: list[FleetTarget]
    source: str = "<fleet>"


def is_reference(spec: str) -> bool:
    """An env:VAR or service:NAME reference: nothing secret in the text itself.

    >>> is_reference("env:DATABASE_URL"), is_reference("service:db"), is_reference("host=db")
    (True, True, False)
    """
    return bool(re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*|service:[A-Za-z0-9_.-]+", spec))


class _Doc:
    """The YAML node tree with the values it holds and the line of each (yaml.compose)."""

    def __init__(self, text: str, source: str) -> None:
        import yaml

        self.source = source
        self._yaml = yaml
        try:
            self.loader = yaml.SafeLoader(text)
            self.root = self.loader.get_single_node()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise self.error(line, f"not valid YAML: {problem}") from None

    def error(self, line: int, message: str) -> UsageError:
        return UsageError(f"{self.source}:{line}: {message}" if line else f"{self.source}: {message}")

    @staticmethod
    def line(node: Any) -> int:
        return int(node.start_mark.line) + 1

    def value(self, node: Any) -> Any:
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: Any, what: str) -> list[tuple[str, Any, Any]]:
        """(key, key node, value node) of a mapping; a duplicate key is refused."""
        if not isinstance(node, self._yaml.MappingNode):
            raise self.error(self.line(node), f"{what} must be a mapping of keys to values")
        seen: dict[str, int] = {}
        out = []
        for knode, vnode in node.value:
            key = str(self.value(knode))
            if key in seen:
                raise self.error(self.line(knode), f"{what}: {key} given twice (first on line "
                                 f"{seen[key]})")
            seen[key] = self.line(knode)
            out.append((key, knode, vnode))
        return out

    def sequence(self, node: Any, what: str) -> list[Any]:
        if not isinstance(node, self._yaml.SequenceNode):
            raise self.error(self.line(node), f"{what} must be a list")
        return list(node.value)

    def string(self, node: Any, what: str) -> str:
        value = self.value(node)
        if not isinstance(value, str) or not value.strip():
            raise self.error(self.line(node), f"{what} must be a non-empty string")
        return value.strip()


def _unknown(doc: _Doc, knode: Any, key: str, known: tuple[str, ...], where: str) -> UsageError:
    if key.lower() in SECRET_KEYS:
        return doc.error(doc.line(knode), f"{where}: no {key} in the fleet file: give the target "
                         "as env:VAR or service:NAME (the workers resolve it; the file holds no "
                         "secret)")
    close = difflib.get_close_matches(key, known, n=1)
    return doc.error(doc.line(knode), f"{where}: unknown key {key}"
                     + (f" (did you mean {close[0]}?)" if close else "")
                     + f"; the keys: {', '.join(known)}")


def _target_param(doc: _Doc, line: int, key: str, value: Any, where: str) -> None:
    """A *_target parameter (admin_target, restore_target) is a reference too."""
    if (key.endswith("_target")) and isinstance(value, str) and value and not is_reference(value):
        raise doc.error(line, f"{where}: {key} must be env:VAR or service:NAME, never a DSN or "
                        "password in the fleet file")


def _params(doc: _Doc, node: Any, runbooks: list[str], where: str) -> dict[str, Value]:
    """A params mapping typed and checked against the registry's declarations of RUNBOOKS."""
    known = declared(runbooks)
    out: dict[str, Value] = {}
    for key, knode, vnode in doc.mapping(node, where):
        if key in RUNNER_PARAMS:
            raise doc.error(doc.line(knode), f"{where}: {key} is set by the sweep for each "
                            "target" + (" (give it as the target's target: key)"
                                        if key == "target" else ""))
        p = known.get(key)
        if p is None:
            close = difflib.get_close_matches(key, known, n=1)
            raise doc.error(doc.line(knode), f"{where}: unknown parameter {key}"
                            + (f" (did you mean {close[0]}?)" if close else "")
                            + f" for {', '.join(runbooks)} (see `runbooks list`)")
        value = doc.value(vnode)
        _target_param(doc, doc.line(vnode), key, value, where)
        try:
            out[key] = p.parse(value) if isinstance(value, str) else p.check(value)
        except ValueError as exc:
            raise doc.error(doc.line(vnode), f"{where}: {exc}") from None
        if key == "allow_actions" and out[key]:
            raise doc.error(doc.line(vnode), f"{where}: allow_actions: a sweep never acts (run "
                            "the runbook on that target to act, after its preview)")
    return out


def _runbooks(doc: _Doc, node: Any | None) -> list[str]:
    from . import registry
    from .report import check_names

    if node is None:
        return list(registry.runbooks())
    names = []
    for item in doc.sequence(node, "runbooks"):
        name = doc.string(item, "a runbook")
        try:
            check_names([name])
        except UsageError as exc:
            raise doc.error(doc.line(item), str(exc)) from None
        if name in names:
            raise doc.error(doc.line(item), f"runbook {name} listed twice")
        names.append(name)
    if not names:
        raise doc.error(doc.line(node), "runbooks: name at least one, or leave the key out for all")
    return names


def _target(doc: _Doc, node: Any, runbooks: list[str], shared: Mapping[str, Value]) -> FleetTarget:
    fields_ = {k: (kn, vn) for k, kn, vn in doc.mapping(node, "a target")}
    name_node = fields_.get("name", (None, None))[1]
    if name_node is None:
        raise doc.error(doc.line(node), "a target without name: give each one a name (its "
                        "output directory)")
    name = doc.string(name_node, "name")
    if not NAME.fullmatch(name):
        raise doc.error(doc.line(name_node), f"target name {name!r}: letters, digits, '_', '.' "
                        "and '-' only, starting with a letter or digit, 64 at most (it names "
                        "its output directory)")
    where = f"target {name}"
    for key, (knode, _) in fields_.items():
        if key not in TARGET_KEYS:
            raise _unknown(doc, knode, key, TARGET_KEYS, where)
    spec_node = fields_.get("target", (None, None))[1]
    if spec_node is None:
        raise doc.error(doc.line(node), f"{where}: no target: give env:VAR or service:NAME")
    spec = doc.value(spec_node)
    if not isinstance(spec, str) or not is_reference(spec.strip()):
        raise doc.error(doc.line(spec_node), f"{where}: give env:VAR or service:NAME, never a "
                        "DSN or password in the fleet file (export the DSN in an environment "
                        "variable the workers have, and give env:VAR)")
    tags: tuple[str, ...] = ()
    if "tags" in fields_:
        tnode = fields_["tags"][1]
        tags = tuple(doc.string(t, f"{where}: a tag") for t in doc.sequence(tnode, f"{where}: tags"))
    own = _params(doc, fields_["params"][1], runbooks, f"{where}: params") if "params" in fields_ \
        else {}
    return FleetTarget(name, spec.strip(), tags, {**shared, **own}, doc.line(node))


def parse(text: str, source: str = "<fleet>") -> Fleet:
    """The fleet described by TEXT (YAML); UsageError naming SOURCE's line otherwise."""
    doc = _Doc(text, source)
    if doc.root is None:
        raise doc.error(0, "empty: list the targets under targets:")
    top = {k: (kn, vn) for k, kn, vn in doc.mapping(doc.root, "the fleet file")}
    for key, (knode, _) in top.items():
        if key not in TOP_KEYS:
            raise _unknown(doc, knode, key, TOP_KEYS, "the fleet file")
    runbooks = _runbooks(doc, top["runbooks"][1] if "runbooks" in top else None)
    shared = _params(doc, top["params"][1], runbooks, "params") if "params" in top else {}
    if "targets" not in top:
        raise doc.error(0, "no targets: list them under targets:")
    tnode = top["targets"][1]
    targets: list[FleetTarget] = []
    names: dict[str, int] = {}
    specs: dict[str, int] = {}
    for item in doc.sequence(tnode, "targets"):
        t = _target(doc, item, runbooks, shared)
        if t.name in names:
            raise doc.error(t.line, f"target {t.name} given twice (first on line {names[t.name]})")
        if t.spec in specs:  # two tasks on one server at once would break one connection each
            raise doc.error(t.line, f"target {t.name}: {t.spec} is already the target on line "
                            f"{specs[t.spec]}")
        names[t.name], specs[t.spec] = t.line, t.line
        targets.append(t)
    if not targets:
        raise doc.error(doc.line(tnode), "targets: list at least one")
    return Fleet(runbooks, targets, source)


def load(path: Path) -> Fleet:
    """The fleet file at PATH (UsageError when it cannot be read or is refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the fleet file "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    return parse(text, str(path))


@dataclass
class TargetResult:
    """What a worker sends back for one target: masked text and the files of its directory."""

    name: str
    shown: str  # the target as shown (password masked)
    label: str  # host:port/database
    started_at: str
    outcomes: list[Outcome] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # file name -> content
    rendered: bool = False  # executed notebooks in FILES
    retried: list[str] = field(default_factory=list)  # runbooks run again after a connect failure
    duration_s: float = 0.0

    @property
    def status(self) -> str:
        return status_of([o.status for o in self.outcomes if o.status != COULD_NOT_RUN],
                         sum(o.status == COULD_NOT_RUN for o in self.outcomes))
