"""Point-in-time recovery drill: a time between two marker rows, recovered exactly.

A base backup (plus an incremental one on 17+) is taken, a "before" row is committed, the target
time is read from the server's clock, an "after" row is committed, and the WAL written since the
backup is fetched with pg_receivewal. The backup is restored into a new data directory and
recovered up to the target: the "before" row must be there, the "after" row must not.

The source is never restarted or reconfigured (archive_mode needs a restart): a temporary
replication slot, created before the base backup and held by the drill's own session, keeps the
WAL from being recycled until pg_receivewal has it, and disappears with that session even when
the drill is killed. The recovered copy runs with settings of its own (the source's may preload
libraries it lacks or archive into the production archive), hot_standby off, and listens only
on a socket in a private directory (trust there needs no password and opens nothing to others).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .. import queries
from ..errors import DrillError, SandboxError
from ..sandbox import server
from ..target import mask_text
from . import tools

MARKER = "runbooks_drill_marker"
PROGRAMS = ("postgres", "pg_basebackup", "pg_verifybackup", "pg_waldump", "pg_receivewal",
            "pg_ctl", "initdb")
LIMITS = ("max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions",
          "max_locks_per_transaction")  # at least the source's, or replay may refuse to go on
SEGMENT = re.compile(r"[0-9A-F]{24}")
Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class PitrResult:
    """What the drill proved and how long each phase took (seconds)."""

    target_time: datetime  # between the two markers, from the source's clock
    before_present: bool  # must be True
    after_present: bool  # must be False
    last_commit: datetime | None  # the last commit replayed (pg_last_xact_replay_timestamp)
    rpo_seconds: float  # target_time - last_commit
    base_backup_seconds: float
    incremental: str  # "used" or "skipped: <why>"
    incremental_seconds: float | None
    combine_seconds: float | None
    verify_seconds: float  # pg_verifybackup, every backup taken
    copy_seconds: float  # the data directory put in place and configured
    replay_seconds: float  # pg_ctl start until promoted at the target and accepting connections
    rto_seconds: float  # combine + copy + replay
    backup_bytes: int
    created: tuple[str, ...]  # every table, slot and directory made, for the clean-up log
    wal_seconds: float = 0.0  # pg_receivewal fetching the WAL written after the backup
    kept: str | None = None  # the recovered data directory, when kept

    @property
    def ok(self) -> bool:
        return self.before_present and not self.after_present


def _connect(conninfo: str) -> Conn:
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=5,
                               application_name="runbooks/pitr-drill")
    except psycopg.Error as exc:
        raise DrillError(f"cannot connect to the source: {mask_text(str(exc)).strip()}") from None


def _binaries_unmet(major: int, bindir: str | Path | None) -> str | None:
    wrong: list[str] = []
    for program in PROGRAMS:
        try:
            found = tools.major(tools.find(program, bindir))
            wrong += [f"{program} is {found}"] if found != major else []
        except DrillError:
            wrong.append(f"{program} missing")
    if not wrong:
        return None
    hint = Path(f"/usr/lib/postgresql/{major}/bin")
    fix = (f"pass bindir='{hint}'" if (hint / "pg_basebackup").exists() else
           f"install the PostgreSQL {major} server and pass its bin directory as bindir")
    return (f"the source runs PostgreSQL {major} and the PITR drill needs PostgreSQL {major} server "
            f"binaries ({', '.join(PROGRAMS)}); {f'in {bindir}' if bindir else 'by default'}: "
            f"{', '.join(wrong)}: {fix}")


def unmet(source_conninfo: str, bindir: str | Path | None) -> str | None:
    """Why the PITR drill cannot run here (None when it can); each reason says the fix."""
    try:
        with _connect(source_conninfo) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version_num')::int / 10000, pg_is_in_recovery(),"
                " r.rolsuper, r.rolreplication, session_user, current_database(), current_schema(),"
                " has_schema_privilege(current_schema(), 'CREATE'),"
                " EXISTS (SELECT FROM pg_class WHERE relname = %s AND relnamespace ="
                "  (SELECT oid FROM pg_namespace WHERE nspname = current_schema())),"
                " (SELECT count(*) FROM pg_tablespace WHERE spcname NOT LIKE 'pg\\_%%'),"
                " current_setting('max_replication_slots')::int"
                "  - (SELECT count(*) FROM pg_replication_slots)"
                " FROM pg_roles r WHERE r.rolname = session_user", (MARKER,)).fetchone()
    except DrillError as exc:
        return str(exc)
    except psycopg.Error as exc:
        return f"cannot read the source's settings and privileges: {mask_text(str(exc)).strip()}"
    assert row is not None
    major, standby, superuser, replication, role, db, schema, create, leftover, spaces, slots = row
    if major < 13:
        return f"the source runs PostgreSQL {major}: the PITR drill needs 13+ (backup manifests)"
    reasons = [r for r in [_binaries_unmet(major, bindir)] if r]
    ident = sql.Identifier(role).as_string()
    if standby:
        reasons.append("the source is a standby: run the PITR drill on the primary (it writes)")
    if not (superuser or replication):
        reasons.append(f"role {role} lacks REPLICATION (pg_basebackup and pg_receivewal need it): "
                       f"ALTER ROLE {ident} REPLICATION; as a superuser, or use a role that has it")
    if schema is None:
        reasons.append(f"role {role} has no schema on its search_path in {db} for the marker "
                       f"table: ALTER ROLE {ident} SET search_path = public;")
    elif not create:
        reasons.append(f"role {role} cannot CREATE a table in schema {schema} of {db}: "
                       f"GRANT CREATE ON SCHEMA {sql.Identifier(schema).as_string()} TO {ident};")
    elif leftover:
        reasons.append(f"table {schema}.{MARKER} exists (a drill running now, or a killed one's): "
                       f"when none runs, DROP TABLE {sql.Identifier(schema, MARKER).as_string()};")
    if spaces:
        reasons.append(f"the source has {spaces} tablespace(s) of its own: the PITR drill restores "
                       "a plain data directory only (drill by hand with --tablespace-mapping)")
    if slots < 2:
        reasons.append("fewer than 2 free replication slots (the drill and pg_basebackup hold one "
                       "each): raise max_replication_slots (needs a restart)")
    try:
        if superuser or replication:  # else refused for the reason above
            psycopg.connect(source_conninfo, replication="true", connect_timeout=5).close()
    except psycopg.Error as exc:
        reasons.append(f"the server refuses a replication connection "
                       f"({' '.join(mask_text(str(exc)).split())}): allow it in pg_hba.conf "
                       f"(host replication {role} <drill host> scram-sha-256), check "
                       "max_wal_senders, then SELECT pg_reload_conf()")
    return "; ".join(reasons) or None


def _chown(path: Path, user: str | None) -> None:
    """Give PATH (recursively) to the server's system user when we are root."""
    if user:
        uid, gid = server._user_ids(user)
        for p in [path, *path.rglob("*")]:
            os.lchown(p, uid, gid)


def _status(pid_file: Path) -> str:
    """A live postmaster's status line in its pid file ("starting", "standby", "ready")."""
    lines = pid_file.read_text().splitlines()
    os.kill(int(lines[0]), 0)  # OSError once it has exited
    return lines[7].strip() if len(lines) > 7 else ""


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Drill:
    """One drill: its source session, what it created, its phases' seconds, the time left."""

    def __init__(self, conninfo: str, workdir: Path, bindir: str | Path | None, timeout: float,
                 say: Callable[[str], None]):
        self.conninfo, self.workdir, self.bindir, self.say = conninfo, workdir, bindir, say
        self.deadline = time.monotonic() + timeout
        self.user = server._run_as()  # PostgreSQL refuses to run as root
        self.created: list[str] = []
        self.dirs: list[Path] = []
        self.seconds: dict[str, float] = {}
        self.backup_bytes = 0
        self.conn: Conn | None = None
        self.table: sql.Identifier | None = None
        self.restored = workdir / "restored"
        self.socket_dir: Path | None = None
        self.bins: Path | None = None

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DrillError("the PITR drill ran out of time (drill_timeout_minutes)")
        return left

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seconds[phase] = time.monotonic() - started

    def execute(self, query: sql.Composed | str, *params: object) -> tuple[Any, ...]:
        """One statement in the drill's source session; its first row."""
        assert self.conn is not None
        try:
            cur = self.conn.execute(queries.tagged(query, self.conn), params or None)
            return (cur.fetchone() or ()) if cur.description else ()
        except psycopg.Error as exc:
            raise DrillError(f"on the source: {mask_text(str(exc)).strip()}") from None

    def run(self, program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return tools.run([tools.find(program, self.bindir), *args], conninfo=self.conninfo,
                         timeout=self.left())

    def pg_ctl(self, *args: str | Path, timeout: float) -> None:
        """pg_ctl on the recovered copy, as the server's system user when we are root."""
        assert self.bins is not None
        try:
            server._run([str(self.bins / "pg_ctl"), "-D", str(self.restored), *map(str, args)],
                        self.user, timeout=timeout)
        except SandboxError as exc:
            raise DrillError(mask_text(str(exc))) from None

    def claim(self, name: str) -> Path:
        """WORKDIR/NAME for the drill to create (refused when it exists: never ours to remove)."""
        path = self.workdir / name
        if path.exists():
            raise DrillError(f"{path} exists (left by an earlier drill?): remove it or give "
                             "another workdir")
        self.dirs.append(path)
        self.created.append(f"directory {path}")
        return path

    def server_bins(self) -> Path:
        """The server binaries, copied into the workdir when the system user cannot reach them
        (as the sandbox does: opening up someone's home directory would be a surprise)."""
        bins = tools.find("postgres", self.bindir).parent.resolve()
        if not self.user or server._reaches(self.user, bins / "postgres"):
            return bins
        try:
            copy = server._installed_copy(bins, self.workdir, server.fingerprint(bins), self.user)
        except SandboxError as exc:
            raise DrillError(str(exc)) from None
        self.dirs.append(self.workdir / copy.relative_to(self.workdir).parts[0])
        self.created.append(f"directory {self.dirs[-1]} (server binaries for {self.user})")
        return copy

    def open(self) -> None:
        """The write session, the marker table, and the slot that keeps the WAL until fetched."""
        self.conn = _connect(self.conninfo)
        self.execute("SET lock_timeout = '5s'")
        self.execute("SET statement_timeout = '60s'")
        self.execute("SET synchronous_commit = local")  # markers flushed at once: sendable
        row = self.execute("SELECT current_setting('server_version_num')::int / 10000, "
                           "current_schema(), session_user, current_database(), "
                           "current_setting('summarize_wal', true), "
                           + ", ".join(f"current_setting('{k}')" for k in LIMITS))
        self.major, schema, self.role, self.db, self.summarize = row[:5]
        self.limits = dict(zip(LIMITS, row[5:], strict=True))
        self.table = sql.Identifier(schema, MARKER)
        self.execute(sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, label text NOT NULL,"
                             " at timestamptz NOT NULL DEFAULT clock_timestamp())")
                     .format(self.table))
        self.created.append(f"table {schema}.{MARKER} (database {self.db})")
        self.slot = f"runbooks_pitr_{secrets.token_hex(4)}"
        self.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", self.slot)
        self.created.append(f"replication slot {self.slot} (temporary)")
        self.say(f"pitr: marker table {schema}.{MARKER} and temporary slot {self.slot} created")

    def mark(self, label: str) -> datetime:
        assert self.table is not None
        at: datetime = self.execute(sql.SQL("INSERT INTO {} (label) VALUES (%s) RETURNING at")
                                    .format(self.table), label)[0]
        return at

    def backup(self, name: str, *extra: str) -> Path:
        dest = self.claim(name)
        with self.timed(name):
            self.run("pg_basebackup", "-d", "{conninfo}", "-D", dest, "-X", "stream", "-c", "fast",
                     "--manifest-checksums=SHA256", "-l", "pg-runbooks pitr drill", *extra)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        self.backup_bytes += size
        self.say(f"pitr: {'incremental' if extra else 'base'} backup {size / 1e6:.1f} MB in "
                 f"{self.seconds[name]:.1f} s")
        return dest

    def incremental(self, base: Path) -> tuple[str, Path | None]:
        """An incremental backup on top of BASE when the source can: "used", else why not."""
        if self.major < 17:
            return f"skipped: PostgreSQL {self.major} has no incremental backups (17+)", None
        if self.summarize != "on":
            return ("skipped: summarize_wal is off on the source (ALTER SYSTEM SET summarize_wal "
                    "= on; SELECT pg_reload_conf(); no restart needed)"), None
        try:
            tools.find("pg_combinebackup", self.bindir)
            return "used", self.backup("incr", f"--incremental={base / 'backup_manifest'}")
        except DrillError as exc:
            return f"skipped: {exc}", None

    def fetch_wal(self, last_backup: Path, endpos: str) -> Path:
        """The WAL from the last backup's end to ENDPOS, named as restore_command is asked.

        pg_receivewal has no start position: it resumes after the newest segment in its
        directory, or at the start of a .partial one, so the backup's last segment is put
        as .partial. Its own last segment stays .partial: renamed to the name recovery asks for.
        """
        wal = self.claim("wal")
        wal.mkdir(mode=0o700)  # WAL holds the source's data
        last = max(p.name for p in (last_backup / "pg_wal").iterdir() if SEGMENT.fullmatch(p.name))
        shutil.copyfile(last_backup / "pg_wal" / last, wal / f"{last}.partial")
        with self.timed("wal"):
            self.run("pg_receivewal", "-d", "{conninfo}", "-D", wal, f"--endpos={endpos}",
                     "--no-loop")
        for partial in wal.glob("*.partial"):
            partial.rename(partial.with_suffix(""))
        _chown(wal, self.user)
        return wal

    def configure(self, target: datetime, wal: Path) -> None:
        """Recovery settings of our own; the source's files are kept beside them, unused."""
        data = self.restored
        self.socket_dir = sock = Path(tempfile.mkdtemp(prefix="rb-pitr-"))  # paths max 107 bytes
        self.created.append(f"directory {sock} (the recovered server's socket)")
        for name in ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"):
            if (data / name).exists():
                (data / name).rename(data / f"{name}.source")
        (data / "standby.signal").unlink(missing_ok=True)
        restore = "cp " + shlex.quote(str(wal)).replace("%", "%%") + "/%f %p"
        settings = {
            "listen_addresses": "''", "port": "5432", "unix_socket_directories": _quote(str(sock)),
            "unix_socket_permissions": "0700", "hot_standby": "off", "archive_mode": "off",
            "shared_preload_libraries": "''", "logging_collector": "off", "lc_messages": "'C'",
            "restore_command": _quote(restore), "recovery_target_time": _quote(str(target)),
            "recovery_target_inclusive": "off", "recovery_target_action": "'promote'",
            **self.limits}
        (data / "postgresql.conf").write_text(
            "# pg-runbooks PITR drill: a throwaway copy recovered to a target time\n"
            + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        (data / "pg_hba.conf").write_text("local all all trust\n")  # the socket is ours alone
        for name in ("postgresql.auto.conf", "pg_ident.conf", "recovery.signal", "recovery.log"):
            (data / name).write_text("")
        data.chmod(0o700)
        _chown(data, self.user)
        _chown(sock, self.user)

    def recover(self) -> tuple[datetime | None, list[str]]:
        """Start the copy and wait until it is promoted: the last replayed commit, the markers.

        pg_ctl -w returns as soon as a server without hot standby starts recovering ("standby"
        in postmaster.pid): "ready" there means the target was reached and it was promoted."""
        pid_file = self.restored / "postmaster.pid"
        with self.timed("replay"):
            try:
                self.pg_ctl("-l", self.restored / "recovery.log", "-w", "-t",
                            str(max(1, int(self.left()))), "start", timeout=self.left())
                while _status(pid_file) != "ready":
                    self.left()
                    time.sleep(0.05)
            except (DrillError, OSError, ValueError, IndexError) as exc:
                raise DrillError(f"the recovered server did not reach the target "
                                 f"({' '.join(str(exc).split())}); its log: {self.log_tail()}"
                                 ) from None
        assert self.table is not None and self.socket_dir is not None
        try:
            with psycopg.connect(host=str(self.socket_dir), port=5432, user=self.role,
                                 dbname=self.db, autocommit=True, connect_timeout=10) as conn:
                row = conn.execute(sql.SQL(
                    "SELECT pg_last_xact_replay_timestamp(), (SELECT array_agg(label::text)"
                    " FROM {})").format(self.table)).fetchone()
        except psycopg.Error as exc:
            raise DrillError(f"cannot read the recovered copy: {mask_text(str(exc)).strip()}"
                             ) from None
        assert row is not None
        return row[0], row[1] or []

    def log_tail(self) -> str:
        """The recovered server's errors, else its last lines."""
        try:
            lines = (self.restored / "recovery.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        errors = [x for x in lines if re.search(r"\b(FATAL|PANIC|ERROR): ", x)]
        return mask_text(" | ".join(x.strip() for x in (errors or lines)[-4:]))

    def clean(self, keep: bool) -> list[str]:
        """Stop the copy, drop the marker table, remove what was made; what could not be."""
        problems: list[str] = []
        if self.bins and (self.restored / "postmaster.pid").exists():
            try:
                self.pg_ctl("stop", "-m", "fast", "-w", timeout=90)
            except DrillError as exc:
                problems.append(f"the recovered server did not stop ({exc}): kill the postmaster "
                                f"in {self.restored / 'postmaster.pid'}")
        if self.table is not None:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = _connect(self.conninfo)
                self.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.table))
            except DrillError as exc:
                problems.append(f"marker table not dropped ({exc}): DROP TABLE "
                                f"{self.table.as_string()};")
        if self.conn is not None:
            self.conn.close()  # ends the temporary slot too
        for path in [*([] if keep else self.dirs), *([self.socket_dir] if self.socket_dir else [])]:
            shutil.rmtree(path, ignore_errors=True)
            problems += [f"{path} could not be removed"] if path.exists() else []
        return problems


def run_drill(source_conninfo: str, workdir: Path, bindir: str | Path | None = None,
              timeout: float = 3600, say: Callable[[str], None] = print,
              keep: bool = False) -> PitrResult:
    """Back up the source, commit markers around a target time, recover a copy to that time.

    Everything created (marker table, slot, directories, the recovered server) is removed at
    the end, also on failure; with KEEP the backups and the recovered data directory stay.
    """
    reason = unmet(source_conninfo, bindir)
    if reason:
        raise DrillError(f"the PITR drill cannot run: {reason}")
    workdir = Path(workdir).resolve()
    made_workdir = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    d = _Drill(source_conninfo, workdir, bindir, timeout, say)
    failed = True
    try:
        if d.user and not server._reaches(d.user, workdir):
            raise DrillError(f"system user {d.user} (the recovered server's) cannot reach "
                             f"{workdir}: give a workdir whose parents all users can search")
        d.open()
        d.bins = d.server_bins()
        base = d.backup("base")
        d.mark("base")  # a change for the incremental backup to carry
        incremental, incr = d.incremental(base)
        if incr is None:
            say(f"pitr: incremental {incremental}")
        before_at = d.mark("before")
        time.sleep(0.05)
        target: datetime = d.execute("SELECT clock_timestamp()")[0]  # strictly after "before"
        time.sleep(0.05)
        d.mark("after")
        endpos = d.execute("SELECT pg_current_wal_flush_lsn()::text")[0]
        d.mark("end")  # pg_receivewal stops at the first WAL it receives past --endpos
        wal = d.fetch_wal(incr or base, endpos)
        d.execute("SELECT pg_drop_replication_slot(%s)", d.slot)
        say(f"pitr: target {target}; WAL up to {endpos} fetched in {d.seconds['wal']:.1f} s")

        with d.timed("verify"):
            for backup in (base, incr) if incr else (base,):
                d.run("pg_verifybackup", "--quiet", backup)
        say(f"pitr: pg_verifybackup passed in {d.seconds['verify']:.1f} s")
        d.claim("restored")
        if incr:
            with d.timed("combine"):
                d.run("pg_combinebackup", base, incr, "-o", d.restored)
            say(f"pitr: pg_combinebackup in {d.seconds['combine']:.1f} s")
        with d.timed("copy"):
            if not incr:
                shutil.copytree(base, d.restored, symlinks=True)
            d.configure(target, wal)
        say(f"pitr: data directory in place in {d.seconds['copy']:.1f} s")
        replayed, labels = d.recover()
        say(f"pitr: recovered to the target and promoted in {d.seconds['replay']:.1f} s")

        last_commit, sec = replayed or before_at, d.seconds
        result = PitrResult(
            target_time=target, before_present="before" in labels,
            after_present="after" in labels, last_commit=last_commit,
            rpo_seconds=(target - last_commit).total_seconds(),
            base_backup_seconds=sec["base"], incremental=incremental,
            incremental_seconds=sec.get("incr"), combine_seconds=sec.get("combine"),
            verify_seconds=sec["verify"], copy_seconds=sec["copy"], replay_seconds=sec["replay"],
            rto_seconds=sec["copy"] + sec["replay"] + sec.get("combine", 0.0),
            backup_bytes=d.backup_bytes, created=tuple(d.created), wal_seconds=sec["wal"],
            kept=str(d.restored) if keep else None)
        say(f"pitr: before-marker {'present' if result.before_present else 'MISSING'}, "
            f"after-marker {'PRESENT' if result.after_present else 'absent'}: "
            f"{'recovered exactly to the target' if result.ok else 'NOT the target state'} "
            f"(RPO {result.rpo_seconds:.3f} s, RTO {result.rto_seconds:.1f} s)")
        failed = False
        return result
    finally:
        problems = d.clean(keep)
        if made_workdir and not keep and not any(workdir.iterdir()):
            workdir.rmdir()
        say(f"pitr: clean-up: {'; '.join(problems)}" if problems else
            f"pitr: cleaned up ({len(d.created)} created, {'kept' if keep else 'all removed'})")
        if problems and not failed:
            raise DrillError(f"the PITR drill left something behind: {'; '.join(problems)}")
