"""Snapshots of the restore drill's probes from YAML (see tests/snapshots.py for the format).

Backup listings go through the real inventory rules (runbooks_lib.drill.inventory) at the
snapshots' NOW, so a case states sets by their age and kind and the rules do the rest.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from runbooks_lib.drill import archive, fingerprint, inventory, restore
from runbooks_lib.drill.pitr import PitrResult
from runbooks_lib.errors import DrillError, SkipStep
from runbooks_lib.probes import drill as D
from runbooks_lib.probes import drill_restore as R

from .snapshots import NOW, fields, rows

SET_KEYS = ("name", "kind", "age_hours", "legacy", "encrypted", "problem", "mb")


def backup_listing(value: Any) -> D.Listing:
    spec = fields(value, ("sets", "policy"), "backup_listing")
    found = []
    for item in rows(spec.get("sets"), "backup_listing sets"):
        s = fields(item, SET_KEYS, "backup set")
        at = NOW - dt.timedelta(hours=float(s.get("age_hours", 1)))
        found.append(inventory.SetInfo(Path("/backups") / str(s.get("name", f"{at:%Y%m%dT%H%M%SZ}")),
                                       str(s.get("name", f"{at:%Y%m%dT%H%M%SZ}-daily")),
                                       str(s.get("kind", "daily")), at,
                                       int(float(s.get("mb", 10)) * 1e6), bool(s.get("legacy")),
                                       bool(s.get("encrypted", True)), str(s.get("problem", ""))))
    found.sort(key=lambda x: x.time)
    policy = inventory.Policy(**fields(spec.get("policy"), ("full_every_days", "full_keep_days",
                                                            "daily_keep_days", "monthly_keep_days"),
                                       "policy"))
    return D.Listing("/backups", found, inventory.inventory(found, policy, NOW), NOW)


def archiver(value: Any) -> dict[str, Any]:
    spec = fields(value, ("archive_mode", "archived_age_s", "failed_age_s", "failed_count",
                          "archived_count"), "archiver")

    def ago(key: str) -> dt.datetime | None:
        return None if spec.get(key) is None else NOW - dt.timedelta(seconds=float(spec[key]))
    return {"archive_mode": spec.get("archive_mode", "on"), "archive_command": "cp %p /a/%f",
            "archived_count": spec.get("archived_count", 100), "last_archived_wal": "0000000100",
            "last_archived_time": ago("archived_age_s") if "archived_age_s" in spec
            else NOW - dt.timedelta(seconds=30),
            "failed_count": spec.get("failed_count", 0), "last_failed_wal": "0000000101",
            "last_failed_time": ago("failed_age_s"), "stats_reset": None, "now": NOW}


def pgbackrest_info(value: Any) -> list[dict[str, Any]]:
    out = []
    for item in rows(value, "pgbackrest_info"):
        s = fields(item, ("name", "code", "message", "backups"), "stanza")
        out.append({"name": s.get("name", "main"),
                    "status": {"code": s.get("code", 0), "message": s.get("message", "ok")},
                    "backup": [{"label": f"b{i}", "type": "full",
                                "timestamp": {"stop": NOW.timestamp() - 3600}}
                               for i in range(int(s.get("backups", 1)))]})
    return out


def drill_plan(value: Any) -> D.Plan:
    spec = fields(value, ("refused", "same_server", "source_mb"), "drill_plan")
    plan = D.Plan("", "cosnap", int(float(spec.get("source_mb", 100)) * 1e6), 0.0, 1e12,
                  Path("/backups"), Path("/drills/x"), restore.DrillLog.__new__(restore.DrillLog),
                  "drill_x", refused=str(spec.get("refused", "")),
                  same_server=bool(spec.get("same_server", False)))
    return plan


def backup_taken(value: Any) -> D.Taken:
    spec = fields(value, ("error", "requested", "encrypted", "existing", "fingerprint",
                          "dump_s", "seal_s", "mb"), "backup_taken")
    if spec.get("error"):
        return D.Taken(error=str(spec["error"]), requested=bool(spec.get("requested", True)))
    path = Path("/backups/20250101T115900Z-daily")
    fp = fingerprint_of({"tables": [{"name": "users", "rows": 10}]}) \
        if spec.get("fingerprint", True) else None
    if spec.get("existing"):
        return D.Taken(set_dir=path, source_print=fp, requested=False)
    scheme = "tink AES256_GCM_HKDF_1MB" if spec.get("encrypted", True) else "none"
    b = archive.BackupSet(path, path.name, "daily", {"encryption": {"scheme": scheme}},
                          float(spec.get("dump_s", 2)), float(spec.get("seal_s", 0.5)),
                          int(float(spec.get("mb", 50)) * 1e6), int(float(spec.get("mb", 50)) * 1e6))
    return D.Taken(set_dir=path, backup=b, source_print=fp)


def backup_opened(value: Any) -> D.Opened:
    spec = fields(value, ("bad", "authenticated", "reason", "files", "problem"), "backup_opened")
    files = [archive.FileCheck(f"{i}.dat.gz", size=1000) for i in range(int(spec.get("files", 3)))]
    for item in rows(spec.get("bad"), "bad files"):
        b = fields(item, ("name", "problem"), "bad file")
        files.append(archive.FileCheck(str(b["name"]), str(b["problem"])))
    auth = bool(spec.get("authenticated", True))
    opened = archive.Opened(Path("/backups/s"), "s", "daily", "directory", not auth, auth, auth,
                            str(spec.get("reason", "")), files,
                            None if any(not f.ok for f in files) else Path("/staging"), 1.0,
                            len(files) * 1000)
    return D.Opened(opened, 1.0, Path("/staging"))


def restored(value: Any) -> R.Restored:
    spec = fields(value, ("seconds", "errors"), "restored")
    secs = float(spec.get("seconds", 10))
    warnings = tuple(str(e) for e in rows(spec.get("errors"), "errors"))
    phases = [restore.Phase("pre-data", secs * 0.1), restore.Phase("data", secs * 0.6, warnings),
              restore.Phase("post-data", secs * 0.3)]
    return R.Restored("drill_x", phases, secs, secs, 100_000_000)


def fingerprint_of(value: Any) -> fingerprint.Fingerprint:
    spec = fields(value, ("tables",), "fingerprint")
    tables = {}
    for item in rows(spec.get("tables"), "tables"):
        t = fields(item, ("name", "rows", "content"), "table")
        key = f'"public"."{t["name"]}"'
        tables[key] = fingerprint.TablePrint("public", str(t["name"]), int(t.get("rows", 1)),
                                             str(t.get("content", "abc")), 8192, "primary key (id)")
    return fingerprint.Fingerprint({"tables": len(tables)}, tables, {}, 0.1)


def verified(value: Any) -> R.Verified:
    spec = fields(value, ("tables", "differences", "behind", "amcheck", "source"), "verified")
    got = fingerprint_of({"tables": spec.get("tables", [{"name": "users"}, {"name": "posts"}])})
    diffs = [fingerprint.Difference(**fields(d, ("kind", "object", "source", "restored",
                                                 "detail"), "difference"))
             for d in rows(spec.get("differences"), "differences")]
    a = fields(spec.get("amcheck"), ("status", "why", "corrupt"), "amcheck")
    amcheck = fingerprint.AmcheckResult(str(a.get("status", "clean")), str(a.get("why", "")),
                                        {str(k): list(v) for k, v in (a.get("corrupt") or {}).items()})
    return R.Verified(got, diffs, [str(x) for x in rows(spec.get("behind"), "behind")], amcheck,
                      1.0, bool(spec.get("source", True)))


def one_table(value: Any) -> R.OneTable:
    spec = fields(value, ("seconds", "matches", "detail", "rows"), "one_table")
    return R.OneTable('"public"."posts"', "drill_x_table", float(spec.get("seconds", 3)),
                      int(spec.get("rows", 100)), spec.get("matches", True),
                      str(spec.get("detail", "")))


def pitr_drill(value: Any) -> PitrResult | DrillError:
    spec = fields(value, ("error", "before", "after", "rto_s", "rpo_s", "skip"), "pitr_drill")
    if spec.get("skip"):
        raise SkipStep(str(spec["skip"]))
    if spec.get("error"):
        return DrillError(str(spec["error"]))
    rto = float(spec.get("rto_s", 20))
    return PitrResult(NOW, bool(spec.get("before", True)), bool(spec.get("after", False)),
                      NOW, float(spec.get("rpo_s", 0.05)), 2.0, "used", 1.0, 1.0, 0.3, rto / 2,
                      rto / 2, rto, 50_000_000, ())


def drill_cleaned(value: Any) -> R.Cleaned:
    spec = fields(value, ("dropped", "kept", "problems"), "drill_cleaned")
    return R.Cleaned([str(x) for x in rows(spec.get("dropped", ["drill_x"]), "dropped")], [],
                     [str(x) for x in rows(spec.get("kept"), "kept")],
                     [str(x) for x in rows(spec.get("problems"), "problems")], [])


BUILDERS = {f.__name__: f for f in (backup_listing, archiver, pgbackrest_info, drill_plan,
                                    backup_taken, backup_opened, restored, verified, one_table,
                                    pitr_drill, drill_cleaned)}
