"""Restores into scratch databases the drill creates itself, and the log that lets it drop
exactly those (and nothing else) afterwards.

The restore server is a libpq target or ``sandbox`` (the embedded server, started if needed).
It may never be the source database: the same server (by system identifier) and the same
database name are refused before anything is created. pg_restore runs once per section
(pre-data, data, post-data), so each phase is timed on its own and progress is one line per
phase; ``--no-owner --no-privileges`` because the source's roles need not exist on the restore
server (owners and grants are not what a drill proves).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from .. import queries
from ..errors import DrillError
from ..target import mask_text, resolve
from . import tools

log = logging.getLogger("runbooks_lib")

SANDBOX = "sandbox"
SECTIONS = ("pre-data", "data", "post-data")
Say = Callable[[str], None]


def _state_dir(env: str, leaf: str) -> Path:
    given = os.environ.get(env)
    if given:
        return Path(given)
    if os.geteuid() == 0:  # the sandbox's system user must reach PITR files: not under /root
        return Path("/var/lib/pg-runbooks") / leaf
    home = Path.home() / ".local" / ("share" if leaf == "backups" else "state")
    base = Path(os.environ.get("XDG_DATA_HOME" if leaf == "backups" else "XDG_STATE_HOME", home))
    return base / "pg-runbooks" / leaf


def default_backup_dir() -> Path:
    return _state_dir("RUNBOOKS_BACKUP_DIR", "backups")


def default_drill_dir() -> Path:
    return _state_dir("RUNBOOKS_DRILL_DIR", "drills")


@dataclass(frozen=True)
class Server:
    """Where scratch databases are created: an admin conninfo (secret) and how to show it."""

    conninfo: str = field(repr=False)
    shown: str
    sandbox: bool = False
    bindir: str | None = None  # the sandbox's own programs

    def url(self, database: str) -> str:
        """This server's conninfo with DATABASE instead (secret: never shown)."""
        return psycopg.conninfo.make_conninfo(self.conninfo, dbname=database)


def restore_server(spec: str, say: Say) -> Server:
    """The restore server named by SPEC: ``sandbox`` (started if needed) or a target."""
    value = spec.strip()
    if value.startswith("env:") and os.environ.get(value[4:], "").strip() == SANDBOX:
        value = SANDBOX
    if value == SANDBOX:
        from ..sandbox import server

        sb, running = server.status()
        if sb is None or not running:  # started if needed; a running one is used as it is
            say("restore: starting the embedded sandbox server")
            sb = server.start(say=say)
        return Server(sb.url("postgres", "postgres"), f"sandbox (127.0.0.1:{sb.port})", True,
                      sb.bindir)
    target = resolve(value)
    return Server(target.conninfo, target.masked())


def identity(conninfo: str, what: str) -> tuple[str, str]:
    """(system identifier, database) of the server CONNINFO reaches (WHAT names it)."""
    try:
        with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
            row = conn.execute("SELECT (SELECT system_identifier::text FROM pg_control_system()),"
                               " current_database()").fetchone()
    except psycopg.Error as exc:
        raise DrillError(f"cannot reach {what}: {mask_text(str(exc).strip())}") from None
    assert row is not None
    return str(row[0]), str(row[1])


def refuse_source(source_conninfo: str, server: Server, scratch: str) -> bool:
    """DrillError when the restore target is the source database (same server by system
    identifier, same database) or SCRATCH would be; True when the restore server is the
    source's own server (a cost worth saying, not a refusal)."""
    src_id, src_db = identity(source_conninfo, "the source")
    dst_id, dst_db = identity(server.conninfo, f"the restore server {server.shown}")
    if src_id != dst_id:
        return False
    if dst_db == src_db:
        raise DrillError(f"restore_target is the source database {src_db} itself: a drill never "
                         "restores into the source; name another server, or a maintenance "
                         "database such as postgres on it")
    if scratch == src_db:
        raise DrillError(f"scratch database {scratch} is the source database: choose another "
                         "scratch_name")
    return True


def scratch_name(given: str, now: dt.datetime | None = None) -> str:
    """GIVEN, or ``drill_<UTC timestamp>_<4 hex>`` (two drills in one second differ)."""
    t = now or dt.datetime.now(dt.UTC)
    return given or f"drill_{t:%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"


class DrillLog:
    """The drill's own record (JSONL) of everything it created: clean-up drops only these."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def record(self, event: str, kind: str, name: str, where: str = "") -> None:
        line = {"ts": dt.datetime.now(dt.UTC).isoformat(), "event": event, "kind": kind,
                "name": name, "where": where}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def entries(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip()]

    def live(self, kind: str) -> list[str]:
        """Names of KIND created and not yet removed, in creation order."""
        out: list[str] = []
        for e in self.entries():
            if e["kind"] != kind:
                continue
            if e["event"] == "created" and e["name"] not in out:
                out.append(e["name"])
            elif e["event"] == "removed" and e["name"] in out:
                out.remove(e["name"])
        return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def interrupted(drill_dir: Path, mine: Path) -> list[DrillLog]:
    """The logs of other drills under DRILL_DIR whose process is gone but whose log still
    lists something created (a drill killed half-way: SIGTERM, a reboot)."""
    out: list[DrillLog] = []
    for path in sorted(drill_dir.glob("*/drill.jsonl")) if drill_dir.is_dir() else []:
        if path.parent == mine:
            continue
        log = DrillLog(path)
        pids = [int(e["name"]) for e in log.entries() if e["event"] == "started"]
        if pids and alive(pids[-1]):
            continue
        if any(log.live(kind) for kind in ("database", "directory", "table")):
            out.append(log)
    return out


def stop_server_in(path: Path) -> None:
    """Stop a postmaster whose data directory is under PATH (a recovered PITR copy)."""
    import signal

    for pidfile in path.rglob("postmaster.pid"):
        try:
            pid = int(pidfile.read_text().split()[0])
            if alive(pid):
                os.kill(pid, signal.SIGQUIT)  # immediate: the copy is thrown away anyway
        except (OSError, ValueError, IndexError):
            continue


def prune(drill_dir: Path, days: int = 30) -> None:
    """Drop the logs of finished drills older than DAYS (their work is gone already)."""
    import shutil

    cutoff = time.time() - days * 86400
    for path in drill_dir.glob("*/drill.jsonl") if drill_dir.is_dir() else []:
        log = DrillLog(path)
        if path.stat().st_mtime < cutoff and not any(
                log.live(k) for k in ("database", "directory", "table")):
            shutil.rmtree(path.parent, ignore_errors=True)


def recover(drill_dir: Path, mine: Path | None, server: Server | None, source: str,
            source_shown: str) -> list[str]:
    """Remove what drills killed half-way left behind (their logs say what): decrypted staging,
    PITR copies, scratch databases on SERVER, the marker table on SOURCE. Anything on another
    server or source is left for a drill that targets it."""
    import shutil

    done: list[str] = []
    for log in interrupted(drill_dir, mine or drill_dir):
        for path in log.live("directory"):
            stop_server_in(Path(path))
            shutil.rmtree(path, ignore_errors=True)
            log.record("removed", "directory", path)
            done.append(f"directory {path}")
        for e in [e for e in log.entries() if e["event"] == "created"]:
            try:
                if e["kind"] == "database" and server and e["where"] == server.shown \
                        and e["name"] in log.live("database"):
                    drop_scratch(server, e["name"], log)
                    done.append(f"database {e['name']}")
                elif e["kind"] == "table" and e["where"] == source_shown \
                        and e["name"] in log.live("table"):
                    with psycopg.connect(source, connect_timeout=10, autocommit=True) as c:
                        c.execute(queries.tagged(sql.SQL("DROP TABLE IF EXISTS {}").format(
                            sql.Identifier(e["name"])), c))  # in the role's schema, as created
                    log.record("removed", "table", e["name"], e["where"])
                    done.append(f"table {e['name']}")
            except (DrillError, psycopg.Error):
                continue
    return done


@contextmanager
def admin(server: Server) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    try:
        conn = psycopg.connect(server.conninfo, connect_timeout=10, autocommit=True,
                               application_name="runbooks/restore_drill")
    except psycopg.Error as exc:
        raise DrillError(f"cannot connect to the restore server {server.shown}: "
                         f"{mask_text(str(exc).strip())}") from None
    with conn:
        yield conn


def refuse_existing(conn: psycopg.Connection[tuple[object, ...]], server: Server,
                    name: str) -> None:
    """DrillError when database NAME exists on SERVER: the drill restores only into its own."""
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        raise DrillError(f"database {name} already exists on {server.shown}: the drill only "
                         "restores into a database it creates; choose another scratch_name")


def create_scratch(server: Server, name: str, log: DrillLog) -> None:
    """CREATE DATABASE NAME on SERVER; an existing database of that name is refused."""
    with admin(server) as conn:
        refuse_existing(conn, server, name)
        try:
            conn.execute(queries.tagged(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(name)), conn))
        except psycopg.Error as exc:
            raise DrillError(f"cannot create the scratch database {name} on {server.shown}: "
                             f"{mask_text(str(exc).strip())} (the role needs CREATEDB)") from None
    log.record("created", "database", name, server.shown)


def drop_scratch(server: Server, name: str, log: DrillLog) -> None:
    """Drop a database this drill's log says it created (anything else is refused)."""
    if name not in log.live("database"):
        raise DrillError(f"database {name} was not created by this drill: not dropped")
    with admin(server) as conn:
        conn.execute(queries.tagged(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)), conn))
    log.record("removed", "database", name, server.shown)


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    warnings: tuple[str, ...] = ()  # pg_restore's errors it went on past, masked


def restore(dump_dir: Path, server: Server, database: str, *, jobs: int = 2,
            tables: tuple[str, ...] = (), sections: tuple[str, ...] = SECTIONS,
            bindir: str | None = None, timeout: float = 3600, say: Say = print) -> list[Phase]:
    """pg_restore DUMP_DIR into DATABASE, one run per section; TABLES (schema-qualified
    ``schema.name``) limits the data section to those tables: the schema around them is
    restored whole (their types, their primary key and indexes: usable, not just present), and
    foreign keys to tables left empty fail. An error pg_restore goes on past ("errors ignored on
    restore") is kept in the phase's warnings, not raised: the verification then says what is
    missing."""
    deadline = time.monotonic() + timeout
    if dump_dir.is_file() and dump_dir.suffix == ".sql":  # a plain dump: psql replays it
        started = time.monotonic()
        tools.run([tools.find("psql", bindir or server.bindir), "-X", "-q", "-v",
                   "ON_ERROR_STOP=1", "-d", "{conninfo}", "-f", dump_dir],
                  conninfo=server.url(database), timeout=timeout)
        say(f"restore: plain SQL replayed in {time.monotonic() - started:.1f} s")
        return [Phase("sql", time.monotonic() - started)]
    program = tools.find("pg_restore", bindir or server.bindir)
    phases: list[Phase] = []
    for section in sections:
        args: list[str | Path] = [program, "--no-owner", "--no-privileges", f"--section={section}",
                                  "-d", "{conninfo}"]
        if section != "pre-data" and jobs > 1:
            args += ["-j", str(jobs)]
        if tables and section == "data":
            for t in tables:
                schema, _, name = t.rpartition(".")
                args += ["-n", schema or "public", "-t", name]
        args.append(dump_dir)
        started = time.monotonic()
        try:
            tools.run(args, conninfo=server.url(database),
                      timeout=max(1.0, deadline - time.monotonic()))
            warnings: tuple[str, ...] = ()
        except DrillError as exc:
            if "errors ignored on restore" not in str(exc):
                raise
            warnings = tuple(line.strip() for line in str(exc).splitlines()
                             if "error:" in line)[:20]
        phases.append(Phase(section, time.monotonic() - started, warnings))
        say(f"restore: {section} in {phases[-1].seconds:.1f} s"
            + (f" ({len(warnings)} errors ignored, the first: {warnings[0][:160]})"
               if warnings else ""))
    return phases


def after_stop(params: dict[str, object]) -> None:
    """What a stopped drill left (decrypted staging, scratch databases, the marker table)
    removed at once rather than at the next drill: its kernel is gone. Best effort."""
    try:
        source = resolve(str(params["target"]))
        server = restore_server(str(params.get("restore_target", "sandbox")), lambda _: None)
        recover(default_drill_dir(), None, server, source.conninfo, source.masked())
    except Exception:  # noqa: BLE001 - the next drill removes what is left, from its log
        log.debug("clean-up after a stop failed", exc_info=True)
