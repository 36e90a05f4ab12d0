"""Client programs (pg_dump, pg_restore, pg_basebackup, ...) run safely.

Passwords never go on a command line (any local user can read it in ``ps``): the conninfo
handed to a program has its password removed and the password travels in ``PGPASSWORD``.
Every message is masked. The programs come from ``bindir`` when given, else from the same
bin directory as the embedded server, else from PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psycopg.conninfo

from ..errors import DrillError
from ..target import mask_text


def find(program: str, bindir: str | Path | None = None) -> Path:
    """The path of PROGRAM: in BINDIR when given, else the embedded server's, else PATH."""
    candidates: list[Path] = []
    if bindir:
        candidates.append(Path(bindir) / program)
    else:
        try:
            from ..sandbox.server import bindir as embedded

            candidates.append(embedded() / program)
        except Exception:  # noqa: BLE001 - no embedded server: PATH is the next place to look
            pass
        found = shutil.which(program)
        if found:
            candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = f"in {bindir}" if bindir else "beside the embedded server or on PATH"
    raise DrillError(f"{program} not found {where}: install the PostgreSQL client programs or "
                     "give bindir")


def major(program: Path) -> int:
    """The major version of a PostgreSQL program (``pg_dump (PostgreSQL) 18.1`` -> 18)."""
    out = subprocess.run([str(program), "--version"], capture_output=True, text=True,
                         check=False).stdout
    m = re.search(r"\)\s*(\d+)", out) or re.search(r"(\d+)", out)
    if not m:
        raise DrillError(f"cannot read the version of {program}: {out.strip()!r}")
    return int(m.group(1))


APPLICATION = "runbooks/restore_drill"


def split_secret(conninfo: str) -> tuple[str, dict[str, str]]:
    """CONNINFO without its password, and the environment that carries it (PGPASSWORD)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise DrillError(f"malformed target: {mask_text(str(exc))}") from None
    password = str(params.pop("password", "") or "")
    clean = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    return clean, ({"PGPASSWORD": password} if password else {})


def run(args: Sequence[str | Path], conninfo: str | None = None, timeout: float | None = None,
        env: dict[str, str] | None = None, cwd: str | Path | None = None,
        secrets: Sequence[str] = (), ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
    """Run a client program; a failure is a DrillError with its masked last words.

    When CONNINFO is given, ``{conninfo}`` in ARGS is replaced by it, password removed, and the
    password is passed in the environment. Exit statuses in OK are not failures (pg_amcheck
    exits 2 when it found corruption: its report is the result).
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    full_env["PGAPPNAME"] = APPLICATION  # in pg_stat_activity: the drill, not the application
    full_env.update(env or {})
    hidden = list(secrets)
    cmd = [str(a) for a in args]
    if conninfo is not None:
        clean, secret_env = split_secret(conninfo)
        full_env.update(secret_env)
        hidden += list(secret_env.values())
        cmd = [clean if a == "{conninfo}" else a for a in cmd]
    name = Path(cmd[0]).name
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DrillError(f"{name} did not finish within {timeout:.0f} s (drill_timeout_minutes)"
                         ) from None
    except OSError as exc:
        raise DrillError(f"cannot run {name}: {exc.strerror}") from None
    if proc.returncode not in ok:
        words = (proc.stderr or proc.stdout).strip()[-1500:]
        raise DrillError(f"{name} failed (exit {proc.returncode}): {mask_text(words, *hidden)}")
    return proc
