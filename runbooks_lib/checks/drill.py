"""The restore drill's judgements: the backups against the schedule and the RPO, the backup's
integrity, the restore against the RTO objectives, the restored data against the source.

Objectives (parameters) default to what the team promised: a full restore within 30 min (for
up to 10 GB), point-in-time recovery within 15 min, one table within 5 min, no more than 1 h of
data lost from backups and 15 min with WAL. A drill whose restore could not be proved is never
"ok": a failed integrity check is critical and nothing is restored.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .. import present
from ..findings import Finding, Metric, Skipped, graded
from ..probes import drill as D
from ..probes import drill_restore as R
from ..registry import Check, Param, Params, register
from ..sqltext import ident

RTO = Param("rto_minutes", float, 30.0, "full restore objective", "min", 0.1, 100_000)
PITR_RTO = Param("pitr_rto_minutes", float, 15.0, "point-in-time recovery objective", "min", 0.1,
                 100_000)
TABLE_RTO = Param("table_rto_minutes", float, 5.0, "one-table restore objective", "min", 0.1,
                  100_000)
RPO = Param("rpo_minutes", float, 60.0, "data loss objective from backups", "min", 1, 1_000_000)
RPO_WAL = Param("rpo_wal_minutes", float, 15.0, "data loss objective with WAL archiving", "min",
                0.1, 1_000_000)
PRODUCTION_GB = Param("production_size_gb", float, 0.0,
                      "size the RTO is projected to; 0 means the source size", "GB", 0, 1_000_000)
KEY_PROBLEMS = ("no key given", "wrong key", "bad decrypt", "no passphrase")
NEXT_KEY = "keep a keyset in RUNBOOKS_BACKUP_KEY (runbooks backup-key makes one)"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


# -- inventory ----------------------------------------------------------------------------------

def inventory(listing: D.Listing, p: Params) -> list[Finding]:
    inv = listing.inventory
    out: list[Finding] = []
    if inv.empty:  # a fact when this drill takes the backup, a gap when it cannot
        return [Finding("backup_inventory", "info" if p["take_backup"] else "warning",
                        f"No earlier backup in {listing.backup_dir}" + (
                            ": this drill takes the first" if p["take_backup"] else ""),
                        "nothing to restore but what this drill takes" if p["take_backup"]
                        else "nothing to restore", remediation="point backup_dir at the backups, "
                        "or schedule `runbooks run restore_drill` to take them")]
    age = inv.newest_age
    out.append(graded("backup_age", "newest_backup_age_seconds", age.total_seconds(),
                      float(p["rpo_minutes"]) * 60, 2 * 24 * 3600,
                      title=f"Newest backup {inv.newest.name} is {_age(age)} old "
                            f"(RPO objective {p['rpo_minutes']:g} min)",
                      detail=f"{len(listing.sets)} sets in {listing.backup_dir}: "
                             + ", ".join(f"{n} {k}" for k, n in inv.count.items() if n),
                      remediation="find why no newer backup exists: the schedule, the job's log",
                      quiet="ok"))
    if inv.missing_days:
        days = ", ".join(d.isoformat() for d in inv.missing_days)
        out.append(Finding("backup_missing", "warning",
                           f"Daily backup missing for {len(inv.missing_days)} days: {days}",
                           evidence=[{"day": d.isoformat()} for d in inv.missing_days],
                           remediation="find why the backup job did not run those days"))
    if inv.full_status != "ok":
        when = f"last one {_age(inv.full_age)} ago" if inv.full_age else "none found"
        taking = p["take_backup"] and p["backup_kind"] in ("auto", "full")
        out.append(Finding("backup_missing", "info" if taking else "warning",
                           f"Full backup {inv.full_status}: {when} (due every "
                           f"{p['full_every_days']} days)" + ("; this drill takes one now"
                                                             if taking else ""),
                           remediation="" if taking else "take a full backup now (backup_kind "
                           "full) and check its schedule"))
    if inv.missing_months:
        out.append(Finding("backup_missing", "warning", "Monthly archive missing for "
                           + ", ".join(inv.missing_months),
                           remediation="keep one backup a month as the archive"))
    for bad in inv.unusable:
        out.append(Finding("backup_missing", "warning", f"Backup set {bad.name} is unusable",
                           bad.problem, remediation="restore it with the drill to see why, or "
                                                    "remove it"))
    if inv.prune:
        out.append(Finding("backup_retention", "info",
                           f"Retention would prune {len(inv.prune)} sets (preview, nothing deleted)",
                           evidence=[{"set": s.name, "kind": s.kind, "at": s.time.isoformat()}
                                     for s in inv.prune[:20]]))
    return out


def _age(delta: dt.timedelta) -> str:
    s = delta.total_seconds()
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"


def show_inventory(listing: D.Listing, found: list[Finding], p: Params) -> None:
    import pandas as pd

    rows = [{"set": s.name, "kind": s.kind, "at": s.time, "MB": round(s.size / 1e6, 1),
             "format": "older script (not authenticated)" if s.legacy else
             "pg_dump -Fd, sealed" if s.encrypted else "pg_dump -Fd, not encrypted",
             "problem": s.problem}
            for s in listing.sets]
    present.show_table(pd.DataFrame(rows), "Backup sets")


register(Check("restore_drill.inventory", "Backups against the schedule and RPO",
               "Every backup set in backup_dir: the newest one's age against the RPO objective, "
               "missing daily backups, a late weekly full, the monthly archive, and what retention "
               "would prune (a preview: nothing is deleted).",
               inventory, ("backup_listing",), (RPO, D.TAKE_BACKUP, D.BACKUP_KIND),
               ("backup_inventory", "backup_age", "backup_missing", "backup_retention"),
               show=show_inventory))


def archiving(a: dict[str, Any], p: Params) -> list[Finding]:
    if a["archive_mode"] == "off":
        return [Finding("wal_archiving", "info", "WAL archiving is off",
                        f"point-in-time recovery is impossible and the data loss on a restore is "
                        f"the age of the newest backup, not the {p['rpo_wal_minutes']:g} min "
                        "objective with WAL",
                        remediation="set archive_mode = on and an archive_command (or "
                                    "archive_library), e.g. pgBackRest's archive-push; restart")]
    failed, ok_at = a["last_failed_time"], a["last_archived_time"]
    if failed is not None and (ok_at is None or failed > ok_at):
        return [Finding("wal_archiving", "critical",
                        f"WAL archiving is failing: {a['failed_count']} failures, last on "
                        f"{a['last_failed_wal']}",
                        "WAL piles up in pg_wal until the disk fills; recovery stops at the last "
                        "archived segment",
                        Metric("archive_failed_count", a["failed_count"]),
                        remediation="read the server log for the archive_command's error")]
    if ok_at is None:
        return [Finding("wal_archiving", "warning", "WAL archiving is on but nothing was archived "
                        "yet", remediation="check archive_command and the server log")]
    lag = (a["now"] - ok_at).total_seconds()
    return [graded("wal_archiving", "last_archived_age_seconds", lag,
                   float(p["rpo_wal_minutes"]) * 60,
                   title=f"Last WAL segment archived {lag / 60:.1f} min ago "
                         f"({a['archived_count']} archived)",
                   detail="on a quiet server no new segment is due: compare with archive_timeout",
                   remediation="set archive_timeout below the RPO objective so a quiet server "
                               "still archives")]


register(Check("restore_drill.archiving", "WAL archiving", "pg_stat_archiver: archiving off, "
               "failing, or behind the WAL RPO objective.", archiving, ("archiver",), (RPO_WAL,),
               ("wal_archiving",)))


def pgbackrest(info: Any, p: Params) -> list[Finding]:
    out: list[Finding] = []
    for stanza in info:
        status = stanza.get("status", {})
        backups = stanza.get("backup", [])
        last = backups[-1] if backups else {}
        stop = last.get("timestamp", {}).get("stop")
        when = dt.datetime.fromtimestamp(stop, dt.UTC).isoformat() if stop else "never"
        sev = "ok" if status.get("code", 1) == 0 else "critical"
        out.append(Finding("pgbackrest", sev, f"pgBackRest stanza {stanza.get('name')}: "
                           f"{status.get('message', '?')}, last backup {when}",
                           evidence=[{"label": b.get("label"), "type": b.get("type")}
                                     for b in backups[-10:]]))
    return out


register(Check("restore_drill.pgbackrest", "pgBackRest's own view", "The stanzas pgBackRest "
               "itself knows (pgbackrest info), when it is installed and configured here: an "
               "error status is critical.", pgbackrest, ("pgbackrest_info",),
               emits=("pgbackrest",)))


# -- backup and integrity -----------------------------------------------------------------------

def _first_words(error: str, most: int = 160) -> str:
    """An error's first line, short enough for a title (alerts show titles, not details).

    >>> _first_words("pg_dump failed (exit 1): pg_dump: error: permission denied" + chr(10) + "..")
    'pg_dump failed (exit 1): pg_dump: error: permission denied'
    """
    line = (error.strip().splitlines() or [""])[0]
    return line if len(line) <= most else line[:most - 1] + "…"


def backup(t: D.Taken, p: Params) -> list[Finding]:
    if t.error:
        return [Finding("backup", "critical", ("Backup failed: " if t.requested else
                        "No backup to drill: ") + _first_words(t.error), t.error,
                        remediation="fix the cause (the detail says it whole) and run the drill "
                                    "again")]
    out: list[Finding] = []
    if t.backup is not None:
        b = t.backup
        total = b.dump_seconds + b.seal_seconds
        out.append(Finding("backup", "ok", f"Backup {t.set_dir.name if t.set_dir else ''} taken: "
                           f"{_mb(b.stored_bytes)} in {total:.1f} s",
                           f"pg_dump {b.dump_seconds:.1f} s, checksums and encryption "
                           f"{b.seal_seconds:.1f} s", Metric("backup_seconds", round(total, 3))))
        if b.manifest.get("encryption", {}).get("scheme", "none") == "none":
            out.append(Finding("backup_encryption", "info", "The new backup is not encrypted",
                               "no key is configured: anyone who can read the backup directory "
                               "can read the data", remediation=NEXT_KEY))
    elif t.set_dir is not None:
        out.append(Finding("backup", "info", f"Restoring the existing set {t.set_dir.name}"))
        if t.source_print is None:
            out.append(Finding("backup", "warning", "The set holds no fingerprint of its source",
                               "restored data is checked for structure and corruption only, "
                               "not against the source's rows",
                               remediation="take backups with this runbook (take_backup=true)"))
    return out


register(Check("restore_drill.backup", "The backup", "A new logical backup (pg_dump -Fd, "
               "compressed, encrypted with tink streaming AEAD, SHA-256 per file, manifest), "
               "taken in one snapshot with the source's fingerprint.", backup, ("backup_taken",),
               emits=("backup", "backup_encryption")))


def integrity(o: D.Opened, p: Params) -> list[Finding]:
    r = o.result
    bad = [f for f in r.files if not f.ok]
    keyed = [f for f in bad if f.problem.startswith(KEY_PROBLEMS)]
    out = [Finding("backup_integrity", "critical", f"Backup file {f.name}: {f.problem}",
                   f.detail or "the set cannot be trusted: no restore was attempted",
                   remediation="restore an older set (backup_set) and find what altered this one")
           for f in bad if f not in keyed]
    if keyed:  # one cause for every file: said once, with its own fix
        out.insert(0, Finding("backup_integrity", "critical", f"Backup set {r.name}: "
                              f"{keyed[0].problem}", f"{len(keyed)} files could not be opened; "
                              "nothing was restored", remediation="give the key the set was "
                              "sealed with (encryption_key_env or encryption_key_file)"))
    if not bad and not r.ok:
        out.append(Finding("backup_integrity", "critical", f"Backup set {r.name} cannot be opened",
                           "; ".join(r.problems), remediation="restore an older set (backup_set)"))
    if out:
        return out
    what = "checksum and authentication tag" if r.authenticated else "checksum"
    out.append(Finding("backup_integrity", "ok",
                       f"Every {what} of {len(r.files)} files verified in {o.seconds:.1f} s",
                       f"{r.plain_bytes / 1e6:,.1f} MB at {r.mb_s:.0f} MB/s",
                       Metric("files_verified", len(r.files))))
    if not r.authenticated:  # ours unencrypted: said once, by the backup check, as a fact
        out.append(Finding("backup_integrity", "warning" if r.legacy else "info",
                           f"Backup {r.name} is not authenticated",
                           r.reason or "it is not encrypted: a checksum beside a file proves "
                           "nothing against someone who can rewrite both",
                           remediation="take backups with this runbook and a key: tink streaming "
                                       "AEAD authenticates every chunk"))
    return out


register(Check("restore_drill.integrity", "Integrity before restore", "Every checksum and "
               "authentication tag of the chosen set, before anything is restored. A flipped "
               "byte, a truncated file or a wrong key is critical, and nothing is restored.",
               integrity, ("backup_opened",), emits=("backup_integrity",)))


# -- restore, verification, one table, PITR -------------------------------------------------------

def restored(r: R.Restored, pl: D.Plan, p: Params) -> list[Finding]:
    prod = float(p["production_size_gb"]) * 1e9 or pl.source_bytes
    projected = r.rto_seconds * (prod / pl.source_bytes) if pl.source_bytes else r.rto_seconds
    rate = pl.source_bytes / r.rto_seconds / 1e6 if r.rto_seconds else 0.0
    objective = float(p["rto_minutes"]) * 60
    phases = ", ".join(f"{ph.name} {ph.seconds:.1f} s" for ph in r.phases)
    f = graded("restore", "rto_seconds", projected, objective,
               title=f"Restore to usable in {r.rto_seconds:.1f} s, projected {projected / 60:.1f} "
                     f"min for {prod / 1e9:.2f} GB (objective {objective / 60:g} min)",
               detail=f"{rate:.1f} MB/s of database; integrity and decryption included; {phases}",
               evidence=[{"phase": ph.name, "seconds": round(ph.seconds, 3)} for ph in r.phases],
               remediation="restore in parallel (jobs), use a faster restore server, or a "
                           "physical backup (pgBackRest) for this size")
    f.metric = Metric("rto_seconds", round(r.rto_seconds, 3), objective)
    out = [f]
    errors = [w for ph in r.phases for w in ph.warnings]
    if errors:
        out.append(Finding("restore", "warning", f"pg_restore went on past {len(errors)} errors",
                           errors[0], evidence=[{"error": e} for e in errors[:20]],
                           remediation="see the verification below for what is missing"))
    if pl.same_server:
        out.append(Finding("restore", "info", "The scratch database is on the source's own "
                           "server", "the restore competed with production for I/O",
                           remediation="use restore_target to restore elsewhere"))
    return out


register(Check("restore_drill.restore", "Restore into a scratch database", "pg_restore with "
               "parallel jobs into a database the drill creates (never the source), timed per "
               "section; restore-to-usable time against the RTO objective, projected to the "
               "production size.", restored, ("restored", "drill_plan"), (RTO, PRODUCTION_GB),
               ("restore",)))


def verify(v: R.Verified, p: Params) -> list[Finding | Skipped]:
    out: list[Finding | Skipped] = []
    for d in v.differences:
        out.append(Finding("restore_verify", "critical", f"{d.object}: {d.kind}", d.detail,
                           evidence=[{"source": str(d.source), "restored": str(d.restored)}]))
    n = len(v.restored_print.tables)
    if v.source_available and not v.differences:
        out.append(Finding("restore_verify", "ok", f"{n} tables verified row for row against the "
                           f"source snapshot in {v.seconds:.1f} s",
                           metric=Metric("tables_verified", n)))
    elif v.source_available:
        bad = len({d.object for d in v.differences})
        out.append(Finding("restore_verify", "critical", f"{bad} of {n} objects differ from the "
                           "source", metric=Metric("tables_failed", bad),
                           remediation="the backup does not restore what the source held: keep "
                                       "the scratch database (keep_scratch=true) and compare"))
    else:
        out.append(Skipped("restore_verify", "no source fingerprint for this set: contents not "
                           "compared"))
    for seq in v.behind:
        out.append(Finding("restore_verify", "critical", f"Sequence {seq} is behind its column",
                           "the next insert after a restore would fail on a duplicate key",
                           remediation=f"SELECT setval('{seq}', max(...)) on the restored copy"))
    a = v.amcheck
    if a.status == "skipped":
        out.append(Skipped("restore_amcheck", a.why))
    elif a.status == "corrupt":
        out.append(Finding("restore_amcheck", "critical", f"pg_amcheck found corruption in "
                           f"{len(a.corrupt)} relations of the restored copy",
                           "the backup restores damaged data, or the restore server's storage "
                           "is failing", evidence=[{"relation": rel, "problem": lines[0]}
                                                  for rel, lines in list(a.corrupt.items())[:20]],
                           remediation="keep the scratch database (keep_scratch=true) and run "
                                       "pg_amcheck on the source"))
    else:
        out.append(Finding("restore_amcheck", "ok", f"pg_amcheck: heap and btree indexes clean "
                           f"in {a.seconds:.1f} s"))
    return out


def show_verify(v: R.Verified, found: list[Finding], p: Params) -> None:
    import pandas as pd

    bad = {d.object for d in v.differences}
    rows = [{"table": k, "rows": t.rows, "ordered by": t.ordered_by,
             "verdict": "differs" if k in bad else ("same" if v.source_available else "-")}
            for k, t in sorted(v.restored_print.tables.items())]
    present.show_table(pd.DataFrame(rows), "Restored tables", max_rows=200)


register(Check("restore_drill.verify", "Verify the data exactly", "Object counts, row counts "
               "and content hashes (in primary-key order) of the restored copy against the "
               "source's fingerprint taken in the snapshot the dump used; sequences not behind "
               "their columns; pg_amcheck on heap and btree.", verify, ("verified",),
               emits=("restore_verify", "restore_amcheck"), show=show_verify))


def one_table(t: R.OneTable, p: Params) -> list[Finding]:
    objective = float(p["table_rto_minutes"]) * 60
    if t.matches is False:
        return [Finding("restore_table", "critical", f"One-table restore of {t.table} differs",
                        t.detail, Metric("table_rto_seconds", round(t.seconds, 3)))]
    f = graded("restore_table", "table_rto_seconds", t.seconds, objective,
               title=f"Table {t.table} restored alone in {t.seconds:.1f} s ({t.rows} rows, "
                     f"objective {objective / 60:g} min)",
               detail=t.detail or "rows and content equal to the source snapshot")
    return [f]


register(Check("restore_drill.one_table", "One table", "pg_restore -t of one table into its own "
               "scratch database, verified, against the one-table objective.", one_table,
               ("one_table",), (TABLE_RTO,), ("restore_table",)))


def pitr(r: Any, p: Params) -> list[Finding]:
    if isinstance(r, Exception):
        return [Finding("restore_pitr", "critical", "Point-in-time recovery drill failed: "
                        + _first_words(str(r)), str(r),
                        remediation="fix the cause (the detail says it whole): without it no "
                                    "point-in-time recovery")]
    objective = float(p["pitr_rto_minutes"]) * 60
    if not r.ok:
        what = "the row written after the target is present" if r.after_present else \
            "the row written before the target is missing"
        return [Finding("restore_pitr", "critical", f"Point-in-time recovery missed its target: "
                        f"{what}", f"target {r.target_time.isoformat()}")]
    out = [graded("restore_pitr", "pitr_rto_seconds", r.rto_seconds, objective,
                  title=f"Point-in-time recovery proved in {r.rto_seconds:.1f} s (objective "
                        f"{objective / 60:g} min)",
                  detail=f"copy {r.copy_seconds:.1f} s, WAL replay {r.replay_seconds:.1f} s; "
                         f"incremental backup: {r.incremental}")]
    out.append(graded("restore_rpo", "rpo_seconds", r.rpo_seconds, float(p["rpo_wal_minutes"]) * 60,
                      title=f"Achieved RPO {r.rpo_seconds:.2f} s: the last recovered commit "
                            "before the target"))
    return out


register(Check("restore_drill.pitr", "Point-in-time recovery", "A base backup (and on 17+ an "
               "incremental one, combined), checked with pg_verifybackup; WAL; recovery into a "
               "new data directory to a time between two marker rows: the row before is there, "
               "the row after is not. Needs the server's own binaries of the same major version.",
               pitr, ("pitr_drill",), (PITR_RTO, RPO_WAL), ("restore_pitr", "restore_rpo")))


def cleanup(c: R.Cleaned, p: Params) -> list[Finding]:
    out = [Finding("restore_cleanup", "warning", f"Could not drop {x}",
                   remediation="drop it by hand once checked") for x in c.problems]
    if c.kept:
        out.append(Finding("restore_cleanup", "info", "Kept for inspection: " + ", ".join(c.kept),
                           remediation="drop them on the restore server when done: " + " ".join(
                               f"DROP DATABASE {ident(name)};" for name in c.kept)))
    if not out:
        out.append(Finding("restore_cleanup", "ok", f"Dropped what the drill created: "
                           f"{', '.join(c.dropped) or 'nothing'}"))
    return out


def show_summary(c: R.Cleaned, found: list[Finding], p: Params) -> None:
    import pandas as pd

    present.show_table(pd.DataFrame(c.summary), "The drill against its objectives")


register(Check("restore_drill.cleanup", "Clean-up", "Drops only what the drill's own log says it "
               "created; keep_scratch keeps the scratch databases.", cleanup, ("drill_cleaned",),
               emits=("restore_cleanup",), show=show_summary))


def refused(pl: D.Plan, p: Params) -> list[Finding]:
    out: list[Finding] = []
    if pl.recovered:
        out.append(Finding("drill_leftovers", "warning", "An earlier drill was interrupted: "
                           f"removed what it left ({len(pl.recovered)} items)",
                           "; ".join(pl.recovered), remediation="find what stopped it (a "
                           "timeout, a reboot, a kill): a drill killed half-way leaves a "
                           "decrypted copy of the backup on disk until the next drill"))
    if pl.refused:
        unreachable = pl.refused.startswith("cannot reach")
        out.append(Finding("restore_refused", "critical",
                           "Restore target unreachable" if unreachable else "Restore refused",
                           pl.refused,
                           remediation="check restore_target (a server the drill can reach, "
                                       "with CREATEDB)" if unreachable else
                                       "give restore_target a server and database that are not "
                                       "the source, and a scratch_name that does not exist"))
    return out


register(Check("restore_drill.plan", "Where the drill restores", "The restore target may never "
               "be the source database, and the scratch database must not exist yet.", refused,
               ("drill_plan",), emits=("restore_refused", "drill_leftovers")))
