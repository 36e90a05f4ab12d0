"""The restore drill's probes: each phase does its work once and returns what it measured.

Unlike the other runbooks' probes these do more than read: they write a backup, create a
scratch database and restore into it. None of them writes to the source database, except the
point-in-time drill's two marker rows in a table it creates and drops (`pitr=false` turns the
drill off). A phase that fails keeps its error in its snapshot (a failed backup is a finding,
not a crash) and the phases after it are skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from .. import present
from ..drill import archive, fingerprint, inventory, keys, restore, tools
from ..errors import DrillError, RunbookError, SkipStep
from ..registry import Param, Params, Probe, register_probe

if TYPE_CHECKING:
    from ..runbook import Runbook

BACKUP_DIR = Param("backup_dir", str, "",
                   "directory of backup sets; empty means RUNBOOKS_BACKUP_DIR or the state directory")
TAKE_BACKUP = Param("take_backup", bool, True,
                    "take a new backup of the target first and restore that one")
BACKUP_SET = Param("backup_set", str, "latest",
                   "set restored when no backup is taken: latest or a set name")
BACKUP_KIND = Param("backup_kind", str, "auto", "kind of a new backup; auto means full when "
                    "one is due by full_every_days, else daily", "",
                    choices=("auto", "full", "daily", "monthly"))
KEY_ENV = Param("encryption_key_env", str, "RUNBOOKS_BACKUP_KEY",
                "environment variable holding the tink keyset (its name, never the key)")
KEY_FILE = Param("encryption_key_file", str, "", "or a keyset file only its owner may read")
LEGACY_ENV = Param("legacy_passphrase_env", str, "BACKUP_ENCRYPTION_KEY",
                   "variable holding the passphrase of openssl enc backups")
JOBS = Param("jobs", int, 2, "parallel pg_dump and pg_restore jobs", "", 1, 64)
COMPRESS = Param("compress_level", int, 6, "gzip level of a new backup", "", 0, 9)
def _not_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text


def _scratch(text: str) -> str:
    if len(text.encode()) > 57:  # 63 bytes, less the one-table copy's _table
        raise ValueError("too long")
    return text


RESTORE_TARGET = Param("restore_target", str, "sandbox",
                       "server for the scratch database: sandbox (embedded) or a target", "",
                       form=_not_empty, form_help="sandbox, env:VAR, service:NAME or a DSN")
SCRATCH = Param("scratch_name", str, "", "scratch database; empty means drill_ and the UTC time",
                form=_scratch, form_help="a database name of at most 57 bytes")
KEEP = Param("keep_scratch", bool, False, "keep the scratch databases for inspection")
TABLE = Param("table", str, "", "table of the one-table restore; empty means the largest")
CHUNK = Param("verify_chunk_rows", int, 50_000, "rows hashed per query", "", 1000, 10_000_000)
HEAPALLINDEXED = Param("heapallindexed", bool, True,
                       "pg_amcheck also checks every heap tuple is in its indexes")
PITR = Param("pitr", bool, True, "point-in-time recovery drill (two marker rows in a table "
             "it creates on the target, then drops)")
BINDIR = Param("bindir", str, "", "PostgreSQL programs; empty means those of the embedded server")
TIMEOUT = Param("drill_timeout_minutes", float, 60.0, "time limit of the whole drill", "min",
                1, 1440)
FULL_EVERY = Param("full_every_days", int, 7, "a full backup is due this often", "days", 1, 366)
FULL_KEEP = Param("full_keep_days", int, 30, "full backups are kept this long", "days", 1, 3660)
DAILY_KEEP = Param("daily_keep_days", int, 7, "daily backups are kept this long", "days", 1, 3660)
MONTHLY_KEEP = Param("monthly_keep_days", int, 365, "monthly archives are kept this long", "days",
                     1, 36600)


def backup_dir(p: Params) -> Path:
    return Path(str(p["backup_dir"])) if p["backup_dir"] else restore.default_backup_dir()


def _say(text: str) -> None:
    present.show_text(text)


# -- the plan: where the drill restores, refused before anything is created ------------------

@dataclass
class Plan:
    source: str = field(repr=False)  # the source's conninfo (secret)
    source_db: str
    source_bytes: int
    started: float
    deadline: float
    backup_dir: Path
    workdir: Path
    log: restore.DrillLog
    scratch: str
    server: restore.Server | None = None
    same_server: bool = False
    refused: str = ""
    key: Any = None  # keys.Key
    key_problem: str = ""
    recovered: list[str] = field(default_factory=list)  # left by an interrupted drill, removed

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise SkipStep("drill_timeout_minutes reached: later phases not run")
        return left


def plan(rb: Runbook, p: Params) -> Plan:
    if rb.target is None:
        raise SkipStep("no target")
    s = rb.session
    size = int(s.row("SELECT pg_database_size(current_database()) AS b")["b"])
    scratch = restore.scratch_name(str(p["scratch_name"]))
    workdir = restore.default_drill_dir() / scratch
    started = time.monotonic()
    pl = Plan(rb.target.conninfo, s.facts.database, size, started,
              started + float(p["drill_timeout_minutes"]) * 60,
              backup_dir(p),
              workdir, restore.DrillLog(workdir / "drill.jsonl"), scratch)
    pl.log.record("started", "drill", str(os.getpid()))
    try:
        pl.key = keys.load(str(p["encryption_key_env"]), str(p["encryption_key_file"]) or None)
    except DrillError as exc:
        pl.key_problem = str(exc)
    try:
        pl.server = restore.restore_server(str(p["restore_target"]), _say)
        if pl.server.sandbox and pl.source_db == "postgres":  # its maintenance database
            pl.server = dataclasses.replace(pl.server, conninfo=pl.server.url("template1"))
        pl.same_server = restore.refuse_source(pl.source, pl.server, scratch)
        with restore.admin(pl.server) as conn:
            restore.refuse_existing(conn, pl.server, scratch)
    except RunbookError as exc:
        pl.refused = rb.mask(str(exc))
    restore.prune(restore.default_drill_dir())
    pl.recovered = restore.recover(restore.default_drill_dir(), pl.workdir, pl.server, pl.source,
                                   rb.target.masked())
    return pl


register_probe(Probe("drill_plan", plan, "Where the drill restores; refusals before any change.",
                     params=(RESTORE_TARGET, SCRATCH, BACKUP_DIR, KEY_ENV, KEY_FILE, TIMEOUT),
                     needs=("connection",)))


# -- inventory: what the backup directory holds, WAL archiving, pgBackRest -------------------

@dataclass(frozen=True)
class Listing:
    backup_dir: str
    sets: list[Any]
    inventory: Any  # inventory.Inventory
    now: dt.datetime


def listing(rb: Runbook, p: Params) -> Listing:
    bdir = backup_dir(p)
    found = archive.sets(bdir) if bdir.is_dir() else []  # no directory yet: nothing in it
    policy = inventory.Policy(int(p["full_every_days"]), int(p["full_keep_days"]),
                              int(p["daily_keep_days"]), int(p["monthly_keep_days"]))
    now = dt.datetime.now(dt.UTC)
    return Listing(str(bdir), found, inventory.inventory(found, policy, now), now)


register_probe(Probe("backup_listing", listing, "The backup sets of backup_dir, against policy.",
                     params=(BACKUP_DIR, FULL_EVERY, FULL_KEEP, DAILY_KEEP, MONTHLY_KEEP)))


def archiver(rb: Runbook, p: Params) -> dict[str, Any]:
    return rb.session.row(
        "SELECT current_setting('archive_mode') AS archive_mode, "
        "current_setting('archive_command') AS archive_command, a.archived_count, "
        "a.last_archived_wal, a.last_archived_time, a.failed_count, a.last_failed_wal, "
        "a.last_failed_time, a.stats_reset, now() AS now FROM pg_stat_archiver a")


register_probe(Probe("archiver", archiver, "pg_stat_archiver and the archiving settings.",
                     needs=("connection",)))


def pgbackrest_info(rb: Runbook, p: Params) -> Any:
    import json

    program = shutil.which("pgbackrest")
    if program is None:
        raise SkipStep("pgbackrest is not installed here")
    try:
        out = tools.run([program, "info", "--output=json"], timeout=60).stdout
    except DrillError as exc:
        raise SkipStep(f"pgbackrest info failed: {rb.mask(str(exc))}") from None
    data = json.loads(out or "[]")
    if not data:
        raise SkipStep("pgbackrest is installed but no stanza is configured")
    return data


register_probe(Probe("pgbackrest_info", pgbackrest_info, "pgbackrest info --output=json."))


# -- the backup, with the source's fingerprint in the snapshot pg_dump used ------------------

@dataclass
class Taken:
    set_dir: Path | None = None
    backup: Any = None  # archive.BackupSet
    source_print: Any = None  # fingerprint.Fingerprint of the source, in the dump's snapshot
    seconds: float = 0.0
    print_seconds: float = 0.0
    error: str = ""
    requested: bool = True
    legacy: bool = False


def _source_conn(pl: Plan) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(pl.source, connect_timeout=10, application_name="runbooks/restore_drill",
                           options="-c default_transaction_read_only=on -c lock_timeout=1000 "
                                   "-c idle_in_transaction_session_timeout=0")
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn


def taken(rb: Runbook, p: Params) -> Taken:
    pl: Plan = rb.snapshot("drill_plan")
    if pl.refused:
        raise SkipStep(f"restore refused: {pl.refused}")
    if not p["take_backup"]:
        return _chosen(pl, str(p["backup_set"]), rb.snapshot("backup_listing").sets)
    if pl.key_problem:
        return Taken(error=pl.key_problem)
    started = time.monotonic()
    out = Taken()
    try:
        with _source_conn(pl) as conn, ThreadPoolExecutor(1) as pool:
            snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert snap is not None
            # the fingerprint reads the snapshot while pg_dump dumps it; the manifest waits for it
            printed = pool.submit(fingerprint.take, conn, chunk_rows=int(p["verify_chunk_rows"]),
                                  deadline=pl.deadline)

            def in_manifest() -> dict[str, Any]:
                return {"fingerprint": fingerprint.to_dict(printed.result())}

            out.backup = archive.take_backup(
                pl.source, pl.backup_dir, jobs=int(p["jobs"]),
                compress_level=int(p["compress_level"]), key=pl.key, snapshot=str(snap[0]),
                kind=kind_of(rb, p), bindir=str(p["bindir"]) or None, say=_say,
                timeout=pl.remaining(), extra=in_manifest,
                lock_wait_ms=10 * int(p["lock_timeout_ms"]))
            out.source_print = printed.result()
            conn.rollback()
        out.set_dir = out.backup.path
        out.print_seconds = out.source_print.seconds
        _say(f"backup: {out.set_dir.name}; source fingerprint of {len(out.source_print.tables)} "
             f"tables in {out.print_seconds:.1f} s")
    except (RunbookError, psycopg.Error) as exc:
        out.error = rb.mask(str(exc).strip())
    out.seconds = time.monotonic() - started
    return out


def kind_of(rb: Runbook, p: Params) -> str:
    """backup_kind, or with auto: full when the policy says a full one is due, else daily."""
    kind = str(p["backup_kind"])
    if kind != "auto":
        return kind
    try:
        listing: Listing = rb.snapshot("backup_listing")
    except SkipStep:
        return "full"
    return "daily" if listing.inventory.full_status == "ok" else "full"


def _chosen(pl: Plan, name: str, found: list[Any]) -> Taken:
    if not found:
        return Taken(requested=False, error=f"no backup set in {pl.backup_dir}: take one "
                     "(take_backup=true) or point backup_dir at the backups")
    usable = [s for s in found if not s.problem]
    chosen = (usable[-1] if usable else None) if name == "latest" else next(
        (s for s in found if s.name == name), None)
    if chosen is None:
        return Taken(requested=False, error=f"no set {name} in {pl.backup_dir}; sets: "
                     + ", ".join(s.name for s in found[-10:]))
    fp = None
    if not chosen.legacy and not chosen.problem:
        manifest = archive.read_manifest(chosen.path)
        if manifest.get("database") not in (None, pl.source_db):
            return Taken(requested=False, error=f"set {chosen.name} is a backup of database "
                         f"{manifest['database']}, not of the target {pl.source_db}: point "
                         "backup_dir at this database's backups, or the target at that database")
        printed = manifest.get("fingerprint")
        if printed == archive.SEALED and pl.key is not None:
            try:
                printed = archive.sealed_manifest(chosen.path, pl.key).get("fingerprint")
            except DrillError:
                printed = None  # the integrity check says why
        fp = fingerprint.from_dict(printed if isinstance(printed, dict) else None)
    return Taken(set_dir=chosen.path, source_print=fp, requested=False, legacy=chosen.legacy)


register_probe(Probe("backup_taken", taken, "A new backup (pg_dump -Fd, sealed) and the "
                     "source's fingerprint in its snapshot; or the chosen existing set.",
                     params=(TAKE_BACKUP, BACKUP_SET, BACKUP_KIND, FULL_EVERY, JOBS, COMPRESS, CHUNK,
                             BINDIR), needs=("drill_plan", "backup_listing")))


# -- integrity, then the restore -------------------------------------------------------------

@dataclass
class Opened:
    result: Any  # archive.Opened
    seconds: float
    staging: Path


def opened(rb: Runbook, p: Params) -> Opened:
    pl: Plan = rb.snapshot("drill_plan")
    t: Taken = rb.snapshot("backup_taken")
    if t.set_dir is None:
        raise SkipStep(f"no backup to check: {t.error or 'none chosen'}")
    staging = pl.workdir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o700)
    pl.log.record("created", "directory", str(staging))
    if pl.key_problem:  # a key given but unusable: say that, not "no key" for every file
        raise DrillError(pl.key_problem)
    passphrase = keys.legacy_passphrase(str(p["legacy_passphrase_env"]))
    started = time.monotonic()
    result = archive.open_set(t.set_dir, pl.key, staging, legacy_passphrase=passphrase,
                              jobs=int(p["jobs"]), say=_say)
    return Opened(result, time.monotonic() - started, staging)


register_probe(Probe("backup_opened", opened, "Every checksum and authentication tag of the set, "
                     "decrypted into a private staging directory.", params=(LEGACY_ENV,),
                     needs=("backup_taken",)))
