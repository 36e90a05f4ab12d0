"""The restore drill's probes after the integrity check: the restore, its verification, one
table, point-in-time recovery and the clean-up (see probes/drill.py for the phases before)."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from ..drill import fingerprint, pitr, restore
from ..errors import DrillError, RunbookError, SkipStep
from ..registry import Params, Probe, register_probe
from ..target import mask_text
from .drill import HEAPALLINDEXED, KEEP, PITR, TABLE, Opened, Plan, Taken, _say

if TYPE_CHECKING:
    from ..runbook import Runbook


@dataclass
class Restored:
    database: str
    phases: list[restore.Phase]
    seconds: float  # the restore itself
    rto_seconds: float  # integrity and decryption included: restore-to-usable
    dump_bytes: int


def _restorable(rb: Runbook) -> tuple[Plan, Opened]:
    pl: Plan = rb.snapshot("drill_plan")
    o: Opened = rb.snapshot("backup_opened")
    if not o.result.ok or o.result.restore_path is None:
        raise SkipStep("no restore: the backup failed its integrity check")
    assert pl.server is not None
    return pl, o


def restored(rb: Runbook, p: Params) -> Restored:
    pl, o = _restorable(rb)
    assert pl.server is not None
    restore.create_scratch(pl.server, pl.scratch, pl.log)
    started = time.monotonic()
    assert o.result.restore_path is not None
    phases = restore.restore(o.result.restore_path, pl.server, pl.scratch, jobs=int(p["jobs"]),
                             bindir=str(p["bindir"]) or None, timeout=pl.remaining(), say=_say)
    seconds = time.monotonic() - started
    return Restored(pl.scratch, phases, seconds, seconds + o.seconds, o.result.plain_bytes)


register_probe(Probe("restored", restored, "pg_restore into a new scratch database, timed per "
                     "section.", needs=("backup_opened",)))


@dataclass
class Verified:
    restored_print: Any
    differences: list[Any]
    behind: list[str]
    amcheck: Any
    seconds: float
    source_available: bool


def verified(rb: Runbook, p: Params) -> Verified:
    pl: Plan = rb.snapshot("drill_plan")
    t: Taken = rb.snapshot("backup_taken")
    r: Restored = rb.snapshot("restored")
    assert pl.server is not None
    started = time.monotonic()
    with psycopg.connect(pl.server.url(r.database), connect_timeout=10) as conn, \
            ThreadPoolExecutor(1) as pool:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute("SELECT 1")  # the snapshot, before pg_amcheck adds (and drops) amcheck
        # both read the copy, which nothing writes: side by side, the slower one sets the time
        checked = pool.submit(fingerprint.amcheck, pl.server.url(r.database),
                              heapallindexed=bool(p["heapallindexed"]), jobs=int(p["jobs"]),
                              bindir=str(p["bindir"]) or pl.server.bindir, timeout=pl.remaining())
        got = fingerprint.take(conn, chunk_rows=int(p["verify_chunk_rows"]), deadline=pl.deadline)
        conn.rollback()
        check = checked.result()
    diffs = fingerprint.compare(t.source_print, got) if t.source_print is not None else []
    return Verified(got, diffs, fingerprint.behind_sequences(got), check,
                    time.monotonic() - started, t.source_print is not None)


register_probe(Probe("verified", verified, "The restored copy's fingerprint against the source's, "
                     "and pg_amcheck.", params=(HEAPALLINDEXED,), needs=("restored",)))


@dataclass
class OneTable:
    table: str
    database: str
    seconds: float
    rows: int
    matches: bool | None  # None: no source fingerprint of that table
    detail: str = ""


def one_table(rb: Runbook, p: Params) -> OneTable:
    pl, o = _restorable(rb)
    assert pl.server is not None
    t: Taken = rb.snapshot("backup_taken")
    if o.result.format == "plain":
        raise SkipStep("a plain SQL backup cannot restore one table alone: take backups in "
                       "pg_dump's directory or custom format")
    name = str(p["table"]) or _largest(t)
    if not name:
        raise SkipStep("no table to restore: give table")
    key = _qualified_key(name)
    if t.source_print is not None and key not in t.source_print.tables:
        raise SkipStep(f"no table {key} in the backup; its tables: "
                       + ", ".join(sorted(t.source_print.tables)[:20]))
    database = f"{pl.scratch}_table"
    restore.create_scratch(pl.server, database, pl.log)
    started = time.monotonic()
    assert o.result.restore_path is not None
    restore.restore(o.result.restore_path, pl.server, database, jobs=int(p["jobs"]),
                    tables=(key.replace('"', ""),),
                    bindir=str(p["bindir"]) or None, timeout=pl.remaining(), say=_say)
    seconds = time.monotonic() - started
    with psycopg.connect(pl.server.url(database), connect_timeout=10) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        got = fingerprint.take(conn, chunk_rows=int(p["verify_chunk_rows"]), tables=[key])
        conn.rollback()
    mine = got.tables.get(key)
    want = t.source_print.tables.get(key) if t.source_print is not None else None
    rows = mine.rows if mine else 0
    if mine is None:
        return OneTable(key, database, seconds, 0, False, "the table is missing after the restore")
    if want is None:
        return OneTable(key, database, seconds, rows, None, "no source fingerprint of the table")
    same = (mine.rows, mine.content) == (want.rows, want.content)
    detail = "" if same else f"rows {mine.rows} restored, {want.rows} in the source snapshot"
    return OneTable(key, database, seconds, rows, same, detail)


def _largest(t: Taken) -> str:
    if t.source_print is None or not t.source_print.tables:
        return ""
    key, _ = max(t.source_print.tables.items(), key=lambda kv: (kv[1].bytes, kv[1].rows))
    return str(key)


def _qualified_key(name: str) -> str:
    """'Post', 'public.Post' or '"public"."Post"' as the fingerprint's key."""
    from ..sqltext import ident

    if name.startswith('"'):
        return name if "." in name else f'"public".{name}'
    schema, _, table = name.rpartition(".")
    return f"{ident(schema or 'public')}.{ident(table)}"


register_probe(Probe("one_table", one_table, "One table restored alone (pg_restore -t) into its "
                     "own scratch database and verified.", params=(TABLE,),
                     needs=("backup_opened",)))


def pitr_drill(rb: Runbook, p: Params) -> Any:
    pl: Plan = rb.snapshot("drill_plan")
    if not p["pitr"]:
        raise SkipStep("pitr=false: the point-in-time recovery drill was not asked for")
    bindir = str(p["bindir"]) or (pl.server.bindir if pl.server else None)
    why = pitr.unmet(pl.source, bindir)
    if why:
        raise SkipStep(why)
    # beside the private workdir, not in it: the recovered server's system user must reach it
    work = pl.workdir.with_name(pl.workdir.name + ".pitr")
    pl.log.record("created", "directory", str(work))
    # before it exists: a drill killed half-way leaves it, and the next drill drops it
    pl.log.record("created", "table", pitr.MARKER, rb.report.target)
    try:
        return pitr.run_drill(pl.source, work, bindir, timeout=pl.remaining(), say=_say)
    except DrillError as exc:
        return exc
    finally:  # run_drill drops its table, also on failure
        pl.log.record("removed", "table", pitr.MARKER, rb.report.target)


register_probe(Probe("pitr_drill", pitr_drill, "A base backup, WAL, and recovery to a time "
                     "between two marker rows.", params=(PITR,), needs=("drill_plan",)))


@dataclass(frozen=True)
class Cleaned:
    dropped: list[str]
    removed: list[str]
    kept: list[str]
    problems: list[str]
    summary: list[dict[str, Any]]  # each phase's figure beside its objective


def summary(rb: Runbook, p: Params) -> list[dict[str, Any]]:
    """The drill in one table: what each phase measured, against its objective."""
    def got(name: str) -> Any:
        value = rb.snapshots.get(name)
        return None if value is None or isinstance(value, Exception) else value

    rows: list[dict[str, Any]] = []
    r, v, t, x = got("restored"), got("verified"), got("one_table"), got("pitr_drill")
    if r is not None:
        rows.append({"measure": "RTO, full restore (s)", "value": f"{r.rto_seconds:.1f}",
                     "objective": f"{float(p.get('rto_minutes', 30)) * 60:g}"})
    if t is not None:
        rows.append({"measure": "RTO, one table (s)", "value": f"{t.seconds:.1f}",
                     "objective": f"{float(p.get('table_rto_minutes', 5)) * 60:g}"})
    if x is not None:
        rows.append({"measure": "RTO, point in time (s)", "value": f"{x.rto_seconds:.1f}",
                     "objective": f"{float(p.get('pitr_rto_minutes', 15)) * 60:g}"})
        rows.append({"measure": "RPO achieved (s)", "value": f"{x.rpo_seconds:.3f}",
                     "objective": f"{float(p.get('rpo_wal_minutes', 15)) * 60:g}"})
    if v is not None:
        bad = len({d.object for d in v.differences})
        rows.append({"measure": "tables verified", "value": str(len(v.restored_print.tables) - bad),
                     "objective": str(len(v.restored_print.tables))})
    return rows


def cleaned(rb: Runbook, p: Params) -> Cleaned:
    pl: Plan = rb.snapshot("drill_plan")
    dropped: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    problems: list[str] = []
    for name in pl.log.live("database"):
        if p["keep_scratch"]:
            kept.append(name)
            continue
        try:
            assert pl.server is not None
            restore.drop_scratch(pl.server, name, pl.log)
            dropped.append(name)
        except (RunbookError, psycopg.Error, AssertionError) as exc:
            problems.append(mask_text(f"{name}: {exc}"))
    for path in pl.log.live("directory"):
        shutil.rmtree(path, ignore_errors=True)
        pl.log.record("removed", "directory", path)
        removed.append(path)
    return Cleaned(dropped, removed, kept, problems, summary(rb, p))


register_probe(Probe("drill_cleaned", cleaned, "Drops what the drill's log says it created.",
                     params=(KEEP,), needs=("drill_plan",)))
