"""The restore drill against plain pg_dump/pg_restore and pgBackRest, on one database (issue 10).

On a sandbox server holding the demo app at benchmark size (``--scale``, at least 700 MB by
pg_database_size; kept in ``--dir`` with its generation time, so re-runs skip it):

1. The drill through the library, as the notebook runs it (``Runbook.start("restore_drill")``
   then ``rb.step`` per step) with a tink key and the sandbox's ``postgres`` database as the
   restore target: wall time of each step, and per phase the seconds and MB/s read from its
   snapshots (backup_taken, backup_opened, restored, verified). The drill counted in the ratio
   is backup + integrity + restore + verify; one_table and pitr are reported beside it.
2. Plain ``pg_dump -Fd -j2 -Z 6`` then ``pg_restore -j2`` into a fresh database, with the same
   binaries. Goal: drill <= 1.25 x (dump + restore).
3. pgBackRest (``apt-get install pgbackrest``; skipped, saying why, when it is missing or does
   not support the server's major): a stanza on the sandbox (repo under --dir,
   ``compress-type=zst``, ``process-max=2``, archive-push as archive_command, which needs
   archive_mode=on and a restart), a full backup, a restore into a new data directory, and a
   server started on it until it accepts connections out of recovery. The sandbox's
   postgresql.auto.conf is put back as it was and the sandbox restarted afterwards. Goal: the
   drill's backup + restore-to-usable (integrity and restore) faster than pgBackRest's
   backup + restore + start.
4. Memory: each drill runs in a process of its own, so its peak RSS (``ru_maxrss``, and
   RUSAGE_CHILDREN for pg_dump, pg_restore, pg_amcheck) is its own; the drill runs again on a
   database 10x smaller (scale / 10). Goal: peak RSS flat in database size.

Each measurement runs --repeat times (plain and drill alternately, so both see the same load
from other work) and the run with the median time is reported, with every run's figures; the
PITR drill runs in the first drill only. After each big drill, before its clean-up, a profile
times what the verification and the restore would cost done otherwise, on the drill's own
restored copy: pg_amcheck without heapallindexed, the fingerprint on two connections, the
fingerprint and pg_amcheck at once, one pg_restore -j2 over every section.

Prints JSON with every figure, then a summary and the goals met or not. Exits 1 when a drill
did not prove its backup (a check not ok, an error), 0 otherwise whatever the goals say.

Usage: python benchmarks/restore_drill.py [--scale 100] [--repeat 3] [--bindir DIR]
       [--dir /var/tmp/pg-runbooks-drill-bench] [--parts plain,drill,small,pgbackrest]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from runbooks_lib.sandbox import demo, server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the checkout
from benchmarks.drill_seal import peak_rss_mb, status_mb  # noqa: E402 - after the line above

ROOT = Path(__file__).resolve().parent.parent
BIG_DB, SMALL_DB = "cosnap", "cosnap_small"
COUNTED = ("backup", "integrity", "restore", "verify")  # the drill of the ratio
TO_USABLE = ("backup", "integrity", "restore")  # a usable copy, before it is proved exact
STEPS = ("inventory", *COUNTED, "one_table", "pitr", "cleanup")
STANZA = "bench"
PARTS = ("plain", "drill", "small", "pgbackrest")
START = time.strftime("%Y-%m-%dT%H:%M:%S")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def maxrss_mb(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # KiB on Linux


class ChildPeaks:
    """Peak RSS of every program run below this process, by name, sampled from /proc (VmHWM of
    each descendant). RUSAGE_CHILDREN cannot tell: a child forked (or vforked) from this Python
    process keeps that process's resident size in its ru_maxrss, whatever it executes next
    (`true` started from a 500 MB Python reports 500 MB)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.root, self.interval = os.getpid(), interval
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        parent: dict[int, int] = {}
        name: dict[int, str] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                head, _, tail = (d / "stat").read_text().rpartition(")")
                pid = int(d.name)
                parent[pid], name[pid] = int(tail.split()[1]), head.partition("(")[2]
            except (OSError, ValueError, IndexError):
                continue
        for pid in parent:
            p, seen = parent[pid], 0
            while p not in (0, 1, self.root) and p in parent and seen < 64:
                p, seen = parent[p], seen + 1
            if p != self.root:
                continue
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    size = int(line.split()[1]) / 1024
                    self.peaks[name[pid]] = round(max(size, self.peaks.get(name[pid], 0.0)), 1)


def mb(n: float) -> float:
    return round(n / 1e6, 1)


def rate(nbytes: float, seconds: float) -> float:
    return round(nbytes / 1e6 / max(seconds, 1e-6), 1)


def db_bytes(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0


def checkpoint(sb: server.Sandbox) -> None:
    """Dirty pages written before each measurement, not during the next one."""
    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


# -- the database ---------------------------------------------------------------------------

def generate(sb: server.Sandbox, db: str, scale: float, state: Path) -> dict[str, Any]:
    """The demo app at SCALE in DB, generated once (and again when the scale changed)."""
    known: dict[str, Any] = json.loads(state.read_text()) if state.exists() else {}
    url = sb.url("app", db)
    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
        if exists and known.get(db, {}).get("scale") != scale:
            say(f"{db}: not generated at scale {scale} by this script: generated again")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db)))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER app").format(sql.Identifier(db)))
            known.pop(db, None)
    if db not in known:
        say(f"{db}: generating the demo app at scale {scale}")
        t0 = time.monotonic()
        rows = demo.load(url, scale)
        seconds = time.monotonic() - t0
        with psycopg.connect(sb.url("postgres", db), autocommit=True) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")  # no hint-bit writes during the timings
        size = db_bytes(url)
        known[db] = {"scale": scale, "generation_s": round(seconds, 1),
                     "vacuum_s": round(time.monotonic() - t0 - seconds, 1),
                     "bytes": size, "rows": rows, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        state.write_text(json.dumps(known, indent=2))
        say(f"{db}: {mb(size)} MB in {seconds:.0f} s")
    out = dict(known[db])
    out["bytes"] = db_bytes(url)
    out["mb"] = mb(out["bytes"])
    out["generated_now"] = "generated_at" in out and out["generated_at"] >= START
    return out


# -- 1. the drill, in a process of its own ------------------------------------------------------

def drill_child(spec_path: str, out_path: str) -> None:
    """One drill as the notebook runs it; writes its figures to OUT_PATH (JSON)."""
    from runbooks_lib.drill import keys
    from runbooks_lib.runbook import Runbook

    spec = json.loads(Path(spec_path).read_text())
    os.environ["RB_BENCH_KEY"] = keys.generate()
    os.environ["RB_BENCH_URL"] = spec["source"]
    os.environ["RB_BENCH_RESTORE"] = spec["restore"]
    os.environ["RUNBOOKS_DRILL_DIR"] = spec["drill_dir"]
    work = Path(spec["work"])
    rss_start = status_mb("VmRSS") or 0.0
    rb = Runbook.start("restore_drill", {
        "target": "env:RB_BENCH_URL", "restore_target": "env:RB_BENCH_RESTORE",
        "backup_dir": str(work / "backups"), "encryption_key_env": "RB_BENCH_KEY",
        "jobs": 2, "compress_level": 6, "pitr": bool(spec["pitr"]), "bindir": spec["bindir"],
        "findings_path": str(work / "findings.json"), "audit_log": str(work / "audit.jsonl")})
    steps: dict[str, Any] = {}
    profiled: dict[str, Any] = {}
    try:
        with ChildPeaks() as children:
            for step in STEPS:
                if step == "cleanup" and spec.get("profile"):
                    profiled = profile(rb, spec["bindir"])  # the scratch copy is still there
                peak_rss_mb(reset=True)
                t0 = time.monotonic()
                rb.step(step)
                steps[step] = {"wall_s": round(time.monotonic() - t0, 2),
                               "peak_rss_mb": round(peak_rss_mb(), 1)}
                say(f"  drill {spec['db']}: {step} {steps[step]['wall_s']:.1f} s")
        result = {"steps": steps, **phases(rb, int(spec["db_bytes"])),
                  "profile": profiled,
                  "findings": [{"check": f.check, "severity": f.severity, "title": f.title}
                               for f in rb.report.findings],
                  "skipped": [{"check": s.check, "reason": s.reason} for s in rb.report.skipped],
                  "errors": [{"step": e.step, "message": e.message} for e in rb.report.errors],
                  "rss_after_imports_mb": round(rss_start, 1),
                  "peak_rss_self_mb": maxrss_mb(resource.RUSAGE_SELF),
                  "peak_rss_children_mb": max((v for k, v in children.peaks.items()
                                               if k != "postgres"), default=0.0),
                  "peak_rss_by_program_mb": children.peaks,
                  "ru_maxrss_children_mb": maxrss_mb(resource.RUSAGE_CHILDREN)}
    finally:
        rb.close()
    Path(out_path).write_text(json.dumps(result, indent=2, default=str))


def profile(rb: Any, bindir: str) -> dict[str, Any]:
    """What the verification and the restore would cost done otherwise, on the drill's own
    restored copy and staging (before its clean-up): pg_amcheck without heapallindexed, the
    fingerprint on two connections (tables split by size), the fingerprint and pg_amcheck at
    the same time, and one pg_restore -j2 of every section into another scratch database."""
    from runbooks_lib.drill import fingerprint, restore, tools

    pl, r, v, o = (rb.snapshot(n) for n in ("drill_plan", "restored", "verified",
                                            "backup_opened"))
    url = pl.server.url(r.database)
    out: dict[str, Any] = {}

    def timed(fn: Any) -> float:
        t0 = time.monotonic()
        fn()
        return round(time.monotonic() - t0, 2)

    def fingerprint_of(tables: list[str] | None) -> None:
        with psycopg.connect(url) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            fingerprint.take(conn, tables=tables)
            conn.rollback()

    out["amcheck_heapallindexed_s"] = round(v.amcheck.seconds, 2)
    out["amcheck_plain_s"] = timed(lambda: fingerprint.amcheck(
        url, heapallindexed=False, jobs=2, bindir=bindir))
    out["fingerprint_1_conn_s"] = timed(lambda: fingerprint_of(None))
    groups: list[list[str]] = [[], []]
    weight = [0, 0]
    for key, tp in sorted(v.restored_print.tables.items(), key=lambda kv: -kv[1].bytes):
        i = weight.index(min(weight))
        groups[i].append(key)
        weight[i] += tp.bytes

    def two() -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(fingerprint_of, groups))
    out["fingerprint_2_conn_s"] = timed(two)

    def overlapped() -> None:
        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(fingerprint.amcheck, url, heapallindexed=True, jobs=2,
                               bindir=bindir)
            fingerprint_of(None)
            done.result()
    out["fingerprint_with_amcheck_heapallindexed_s"] = timed(overlapped)
    name = f"{pl.scratch}_onerun"
    restore.create_scratch(pl.server, name, pl.log)  # the drill's clean-up drops it

    def one_run() -> None:
        tools.run([tools.find("pg_restore", bindir), "--no-owner", "--no-privileges", "-j2",
                   "-d", "{conninfo}", o.result.restore_path], conninfo=pl.server.url(name),
                  timeout=3600)
    out["pg_restore_one_run_s"] = timed(one_run)
    say(f"  profile: {out}")
    return out


def phases(rb: Any, size: int) -> dict[str, Any]:
    """Seconds and MB/s of each phase, from the drill's snapshots (MB/s of the database size
    unless said otherwise: the dump's own bytes are gzip-compressed)."""
    def snap(name: str) -> Any:
        value = rb.snapshots.get(name)
        return None if value is None or isinstance(value, Exception) else value

    out: dict[str, Any] = {}
    t, o, r, v = snap("backup_taken"), snap("backup_opened"), snap("restored"), snap("verified")
    if t is not None and t.backup is not None:
        b = t.backup
        out["backup"] = {
            "seconds": round(t.seconds, 2), "db_mb_s": rate(size, t.seconds),
            "pg_dump_s": round(b.dump_seconds, 2), "pg_dump_db_mb_s": rate(size, b.dump_seconds),
            "seal_s": round(b.seal_seconds, 2), "seal_mb_s": rate(b.plain_bytes, b.seal_seconds),
            "source_fingerprint_s": round(t.print_seconds, 2),
            "source_fingerprint_db_mb_s": rate(size, t.print_seconds),
            "dump_mb": mb(b.plain_bytes), "stored_mb": mb(b.stored_bytes),
            "files": len(b.manifest.get("files", [])),
            "waited_for_fingerprint_s": round(max(0.0, t.print_seconds - b.dump_seconds
                                                  - b.seal_seconds), 2)}
    if o is not None:
        out["integrity"] = {"seconds": round(o.seconds, 2), "mb_s": rate(o.result.plain_bytes,
                                                                         o.seconds),
                            "ok": bool(o.result.ok), "authenticated": bool(o.result.authenticated)}
    if r is not None:
        out["restore"] = {"seconds": round(r.seconds, 2), "db_mb_s": rate(size, r.seconds),
                          "rto_seconds": round(r.rto_seconds, 2),
                          "sections": {p.name: round(p.seconds, 2) for p in r.phases}}
    if v is not None:
        fp = v.restored_print
        hashed = sum(tp.bytes for tp in fp.tables.values())
        slowest = sorted(fp.tables.items(), key=lambda kv: -kv[1].seconds)[:3]
        out["verify"] = {"seconds": round(v.seconds, 2), "db_mb_s": rate(size, v.seconds),
                         "fingerprint_s": round(fp.seconds, 2),
                         "fingerprint_table_mb_s": rate(hashed, fp.seconds),
                         "amcheck_s": round(v.amcheck.seconds, 2), "amcheck": v.amcheck.status,
                         "differences": len(v.differences), "tables": len(fp.tables),
                         "slowest_tables_s": {k: round(tp.seconds, 2) for k, tp in slowest}}
    one = snap("one_table")
    if one is not None:
        out["one_table"] = {"seconds": round(one.seconds, 2), "table": one.table,
                            "rows": one.rows, "matches": one.matches}
    x = rb.snapshots.get("pitr_drill")  # a DrillError is returned, not raised
    if x is not None and hasattr(x, "rto_seconds"):
        out["pitr"] = {"rto_seconds": round(x.rto_seconds, 2), "ok": bool(x.ok),
                       "base_backup_s": round(x.base_backup_seconds, 2),
                       "incremental": x.incremental, "verify_s": round(x.verify_seconds, 2),
                       "copy_s": round(x.copy_seconds, 2), "replay_s": round(x.replay_seconds, 2),
                       "rpo_seconds": round(x.rpo_seconds, 3), "backup_mb": mb(x.backup_bytes)}
    elif x is not None:
        out["pitr"] = {"error": str(x)}
    return out


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose KEY is the median (the lower one of an even count): a real run, so its
    phases add up."""
    ranked = sorted(runs, key=lambda r: float(r[key]))
    return dict(ranked[(len(ranked) - 1) // 2])


def run_drill(sb: server.Sandbox, db: str, size: int, bindir: Path, work: Path,
              profile: bool = False, pitr: bool = True) -> dict[str, Any]:
    """The drill on DB in a fresh Python process (its peak RSS is the drill's alone)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    drills = Path(os.environ.get("RUNBOOKS_DRILL_DIR") or work / "drills")
    drills.mkdir(parents=True, exist_ok=True)
    drills.chmod(0o755)  # the PITR drill's recovered server (system user) works beside it
    spec = {"db": db, "db_bytes": size, "source": sb.url("postgres", db),
            "restore": sb.url("postgres", "postgres"), "bindir": str(bindir),
            "drill_dir": str(drills), "work": str(work), "profile": profile,
            "pitr": pitr}
    fd, spec_path = tempfile.mkstemp(dir=work, suffix=".json")
    with os.fdopen(fd, "w") as fh:  # mode 600: it holds the passwords
        json.dump(spec, fh)
    out = work / "result.json"
    checkpoint(sb)
    t0 = time.monotonic()
    with open(work / "drill.log", "w") as log:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--drill-child",
                               spec_path, str(out)], cwd=ROOT, stdout=log, stderr=sys.stderr,
                              check=False)
    wall = time.monotonic() - t0
    Path(spec_path).unlink()
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"the drill on {db} failed (exit {proc.returncode}); see {work}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["process_wall_s"] = round(wall, 2)
    s = result["steps"]
    result["counted_s"] = round(sum(s[k]["wall_s"] for k in COUNTED), 2)
    result["to_usable_s"] = round(sum(s[k]["wall_s"] for k in TO_USABLE), 2)
    result["share_of_counted"] = {k: round(s[k]["wall_s"] / max(result["counted_s"], 1e-6), 3)
                                  for k in COUNTED}
    result["not_ok"] = [f for f in result["findings"] if f["severity"] not in ("ok", "info")]
    shutil.rmtree(work / "backups", ignore_errors=True)  # a set per run: not kept
    return result


# -- 2. plain pg_dump and pg_restore ------------------------------------------------------------

def run_plain(sb: server.Sandbox, db: str, size: int, bindir: Path, work: Path) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = sb.passwords["postgres"]
    conn = f"host=127.0.0.1 port={sb.port} user=postgres dbname="
    dump, target = work / "dump", "bench_plain_restore"
    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
    checkpoint(sb)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    watch = ChildPeaks().__enter__()
    t0 = time.monotonic()
    subprocess.run([str(bindir / "pg_dump"), "-Fd", "-j2", "-Z", "6", "-f", str(dump),
                    "-d", conn + db], env=env, check=True)
    dump_s = time.monotonic() - t0
    dump_bytes = sum(p.stat().st_size for p in dump.iterdir())
    checkpoint(sb)
    t1 = time.monotonic()
    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target)))
    subprocess.run([str(bindir / "pg_restore"), "-j2", "-d", conn + target, str(dump)], env=env,
                   check=True)
    restore_s = time.monotonic() - t1
    watch.__exit__()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    restored = db_bytes(sb.url("postgres", target))
    with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target)))
    shutil.rmtree(work, ignore_errors=True)
    return {"pg_dump_s": round(dump_s, 2), "pg_dump_db_mb_s": rate(size, dump_s),
            "pg_restore_s": round(restore_s, 2), "pg_restore_db_mb_s": rate(size, restore_s),
            "total_s": round(dump_s + restore_s, 2), "dump_mb": mb(dump_bytes),
            "restored_db_mb": mb(restored), "peak_rss_by_program_mb": watch.peaks,
            "children_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
                                    - before.ru_stime, 1)}


# -- 3. pgBackRest ------------------------------------------------------------------------------

def pgbackrest_conf(work: Path, sb: server.Sandbox, sock: Path) -> str:
    return f"""[global]
repo1-path={work / 'repo'}
repo1-retention-full=1
compress-type=zst
process-max=2
start-fast=y
log-path={work / 'log'}
lock-path={work / 'lock'}
spool-path={work / 'spool'}
log-level-console=warn
log-level-file=info

[{STANZA}]
pg1-path={sb.datadir}
pg1-port={sb.port}
pg1-socket-path={sock}
pg1-user=postgres
"""


def run_pgbackrest(base: Path, sb: server.Sandbox, bin_arg: str | None, size: int,
                   work: Path, repeat: int) -> tuple[dict[str, Any], server.Sandbox]:
    """pgBackRest's backup, restore and start on the sandbox, REPEAT times; returns the figures
    and the sandbox as it runs again afterwards (its configuration put back)."""
    program = shutil.which("pgbackrest")
    if program is None:
        return {"skipped": "pgbackrest is not installed (apt-get install -y pgbackrest)"}, sb
    version = subprocess.run([program, "version"], capture_output=True, text=True,
                             check=False).stdout.strip()
    user = server._run_as()
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("repo", "log", "lock", "spool", "sock"):
        (work / sub).mkdir(parents=True)
    work.chmod(0o755)
    conf, sock = work / "pgbackrest.conf", work / "sock"
    uid, gid = server._user_ids(user) if user else (os.getuid(), os.getgid())
    for p in [work, *work.rglob("*")]:
        os.chown(p, uid, gid)
    pgbr = [program, f"--config={conf}", f"--stanza={STANZA}"]
    auto = sb.datadir / "postgresql.auto.conf"
    saved = auto.read_bytes()
    out: dict[str, Any] = {"version": version}
    try:
        with psycopg.connect(sb.url("postgres", "postgres"), autocommit=True) as c:
            c.execute("ALTER SYSTEM SET archive_mode = on")
            c.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(
                " ".join([*pgbr, "archive-push", "%p"]))))
            c.execute(sql.SQL("ALTER SYSTEM SET unix_socket_directories = {}").format(
                sql.Literal(str(sock))))  # pgBackRest reaches a local server by its socket
        server.stop(base)
        sb = server.start(base, bin_arg, max_connections=sb.max_connections)
        conf.write_text(pgbackrest_conf(work, sb, sock))  # the port may change on a restart
        os.chown(conf, uid, gid)
        try:
            server._run([*pgbr, "stanza-create"], user, timeout=300)
            server._run([*pgbr, "check"], user, timeout=300)
        except Exception as exc:  # noqa: BLE001 - e.g. a server major this version does not know
            out["skipped"] = f"{version} cannot back up this server: {exc}"
        else:
            runs = [_pgbackrest_once(sb, pgbr, user, work, i, uid, gid) for i in range(repeat)]
            out["runs"] = runs
            for k in ("backup_s", "restore_s", "start_s", "total_s"):
                out[k] = round(statistics.median(r[k] for r in runs), 2)
            out["repo_mb"] = runs[-1]["repo_mb"]
            out["restored_db_mb"] = runs[-1]["restored_db_mb"]
            out["backup_db_mb_s"] = rate(size, out["backup_s"])
            out["restore_db_mb_s"] = rate(size, out["restore_s"])
    finally:
        server.stop(base)
        auto.write_bytes(saved)  # owner and mode kept: the file is rewritten in place
        sb = server.start(base, bin_arg, max_connections=sb.max_connections)
        with psycopg.connect(sb.url("postgres", "postgres")) as c:
            row = c.execute("SELECT current_setting('archive_mode')").fetchone()
        out["sandbox_archive_mode_after"] = row[0] if row else None
        if "skipped" in out or "total_s" in out:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"pgBackRest part failed: its files are kept in {work}")
    return out, sb


def _pgbackrest_once(sb: server.Sandbox, pgbr: list[str], user: str | None, work: Path, i: int,
                     uid: int, gid: int) -> dict[str, Any]:
    """One full backup, its restore into a new data directory, and a server started on it
    until it is out of recovery (then stopped and removed)."""
    restored = work / f"restored-{i}"
    restored.mkdir(mode=0o700)
    os.chown(restored, uid, gid)
    out: dict[str, Any] = {}
    checkpoint(sb)
    t0 = time.monotonic()
    server._run([*pgbr, "--type=full", "backup"], user, timeout=3600)
    out["backup_s"] = round(time.monotonic() - t0, 2)
    out["repo_mb"] = mb(sum(p.stat().st_size for p in (work / "repo").rglob("*") if p.is_file()))
    t1 = time.monotonic()
    restore_command = " ".join([*pgbr, f"--pg1-path={restored}", "archive-get", "%f", '"%p"'])
    server._run([*pgbr, f"--pg1-path={restored}",
                 f"--recovery-option=restore_command={restore_command}", "restore"], user,
                timeout=3600)
    out["restore_s"] = round(time.monotonic() - t1, 2)
    other = server.Sandbox(**{**sb.__dict__, "base": str(work), "port": server.free_port()})
    pg_ctl = str(Path(sb.bindir) / "pg_ctl")
    t2 = time.monotonic()
    try:
        server._run([pg_ctl, "-D", str(restored), "start", "-w", "-t", "3600", "-l",
                     str(restored / "startup.log"), "-o",
                     f"-p {other.port} -c archive_mode=off -c unix_socket_directories=''"],
                    user, timeout=3660)
        out["pg_ctl_ready_s"] = round(time.monotonic() - t2, 2)
        url = other.url("postgres", BIG_DB)
        while True:  # usable: out of recovery, taking writes
            with psycopg.connect(url, autocommit=True) as c:
                row = c.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    break
            time.sleep(0.05)
        out["start_s"] = round(time.monotonic() - t2, 2)
        out["restored_db_mb"] = mb(db_bytes(url))
    finally:
        if (restored / "postmaster.pid").exists():
            server._run([pg_ctl, "-D", str(restored), "stop", "-m", "immediate", "-w"], user,
                        check=False)
    shutil.rmtree(restored)
    out["total_s"] = round(out["backup_s"] + out["restore_s"] + out["start_s"], 2)
    say(f"  pgBackRest run {i + 1}: backup {out['backup_s']:.1f} s, restore "
        f"{out['restore_s']:.1f} s, start {out['start_s']:.1f} s")
    return out


# -- the run ------------------------------------------------------------------------------------

def goals(res: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    big, plain, br = res.get("drill"), res.get("plain"), res.get("pgbackrest") or {}
    if big and plain:
        ratio = big["counted_s"] / plain["total_s"]
        res["ratio_drill_to_plain"] = round(ratio, 2)
        paired = [round(d["counted_s"] / t, 2) for d, t in
                  zip(big.get("runs", []), plain.get("runs_total_s", []), strict=False)]
        res["ratio_drill_to_plain_paired"] = paired
        out.append(("drill <= 1.25 x (pg_dump + pg_restore)", ratio <= 1.25,
                    f"{big['counted_s']:.1f} s / {plain['total_s']:.1f} s = {ratio:.2f} x, "
                    f"medians; run by run {paired}"))
    if big and "total_s" in br:
        ratio = big["to_usable_s"] / br["total_s"]
        res["ratio_to_usable_to_pgbackrest"] = round(ratio, 2)
        out.append(("drill backup + restore-to-usable < pgBackRest backup + restore + start",
                    big["to_usable_s"] < br["total_s"],
                    f"{big['to_usable_s']:.1f} s vs {br['total_s']:.1f} s = {ratio:.2f} x "
                    f"(with verification: {big['counted_s']:.1f} s)"))
    elif big:
        out.append(("drill backup + restore-to-usable < pgBackRest backup + restore + start",
                    None, f"not measured: {br.get('skipped', 'pgbackrest part not run')}"))
    small = res.get("small_drill")
    if big and small:
        a, b = small["peak_rss_self_mb"], big["peak_rss_self_mb"]
        growth = b - a
        res["peak_rss_growth_mb"] = round(growth, 1)
        flat = growth <= max(20.0, 0.1 * a)
        out.append(("peak RSS flat in database size (growth <= max(20 MB, 10%))", flat,
                    f"{a:.0f} MB at {small['db_mb']:.0f} MB, {b:.0f} MB at {big['db_mb']:.0f} MB; "
                    f"children {small['peak_rss_children_mb']:.0f} / "
                    f"{big['peak_rss_children_mb']:.0f} MB"))
    return out


def projections(big: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """The drill's counted time (each step's median over the runs) had its restore run once
    (pg_restore -j2 over every section) and its verification done otherwise, from the profile's
    medians (measured, not guessed: each is a real run on the drill's restored copy). Seconds,
    and the ratio to plain's median."""
    pr = big.get("profile") or {}
    if not pr or "verify" not in big:
        return {}
    runs = big.get("runs") or [{"steps_s": {k: x["wall_s"] for k, x in big["steps"].items()}}]
    med = {k: statistics.median(r["steps_s"][k] for r in runs) for k in COUNTED}
    v = big["verify"]
    fixed = med["backup"] + med["integrity"]
    restore_s = min(med["restore"], pr["pg_restore_one_run_s"])
    verify_other = v["seconds"] - v["fingerprint_s"] - v["amcheck_s"]  # connections, sequences
    variants = {
        "as measured": med["verify"],
        "fingerprint and pg_amcheck --heapallindexed at once":
            pr["fingerprint_with_amcheck_heapallindexed_s"] + verify_other,
        "fingerprint on 2 connections, pg_amcheck --heapallindexed":
            pr["fingerprint_2_conn_s"] + pr["amcheck_heapallindexed_s"] + verify_other,
        "fingerprint on 2 connections, pg_amcheck without heapallindexed":
            pr["fingerprint_2_conn_s"] + pr["amcheck_plain_s"] + verify_other,
        "fingerprint only (no pg_amcheck)": pr["fingerprint_1_conn_s"] + verify_other,
    }
    out: dict[str, Any] = {"median_steps_s": {k: round(x, 2) for k, x in med.items()},
                           "restore_one_run_s": round(restore_s, 2)}
    for name, verify in variants.items():
        total = fixed + restore_s + verify
        out[name] = {"verify_s": round(verify, 2), "drill_s": round(total, 2),
                     "ratio": round(total / plain["total_s"], 2)}
    out["verify_budget_at_1_25_s"] = round(1.25 * plain["total_s"] - fixed - restore_s, 2)
    return out


def summary(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    big = res.get("drill")
    if big:
        s, p = big["steps"], big
        lines.append(f"drill on {big['db_mb']:.0f} MB (median of {len(big.get('runs', [1]))} "
                     "runs): " + ", ".join(
            f"{k} {s[k]['wall_s']:.1f} s ({100 * big['share_of_counted'][k]:.0f}%)"
            for k in COUNTED) + f" = {big['counted_s']:.1f} s; one_table {s['one_table']['wall_s']:.1f} s, "
            f"pitr {s['pitr']['wall_s']:.1f} s")
        if "backup" in p:
            b = p["backup"]
            lines.append(f"  backup: pg_dump {b['pg_dump_s']:.1f} s ({b['pg_dump_db_mb_s']:.0f} MB/s "
                         f"of database), seal {b['seal_s']:.1f} s ({b['seal_mb_s']:.0f} MB/s of "
                         f"{b['dump_mb']:.0f} MB dump), source fingerprint {b['source_fingerprint_s']:.1f} s "
                         f"alongside (waited {b['waited_for_fingerprint_s']:.1f} s)")
        if "verify" in p:
            v = p["verify"]
            lines.append(f"  verify: fingerprint {v['fingerprint_s']:.1f} s "
                         f"({v['fingerprint_table_mb_s']:.0f} MB/s of tables), pg_amcheck "
                         f"{v['amcheck_s']:.1f} s ({v['amcheck']}), {v['differences']} differences")
        if big["not_ok"] or big["errors"]:
            lines.append(f"  NOT ok: {big['not_ok']} {big['errors']}")
    small = res.get("small_drill")
    if small:
        lines.append(f"drill on {small['db_mb']:.0f} MB: {small['counted_s']:.1f} s counted; peak "
                     f"RSS {small['peak_rss_self_mb']:.0f} MB (drill process), "
                     f"{small['peak_rss_children_mb']:.0f} MB (largest child)")
    if big:
        lines.append(f"drill on {big['db_mb']:.0f} MB: peak RSS {big['peak_rss_self_mb']:.0f} MB "
                     f"(drill process), {big['peak_rss_children_mb']:.0f} MB (largest child)")
    if res.get("plain"):
        pl = res["plain"]
        lines.append(f"plain (median of {len(pl.get('runs_total_s', [1]))} runs): pg_dump "
                     f"{pl['pg_dump_s']:.1f} s + pg_restore {pl['pg_restore_s']:.1f} s = "
                     f"{pl['total_s']:.1f} s (all runs: {pl.get('runs_total_s')})")
    br = res.get("pgbackrest")
    if br:
        lines.append(f"pgBackRest: skipped: {br['skipped']}" if "skipped" in br else
                     f"{br['version']} (medians of {len(br['runs'])}): backup {br['backup_s']:.1f} s, "
                     f"restore {br['restore_s']:.1f} s, start {br['start_s']:.1f} s = "
                     f"{br['total_s']:.1f} s")
    if big and res.get("plain"):
        res["projections"] = pj = projections(big, res["plain"])
        if pj:
            lines.append(f"step medians {pj['median_steps_s']}; with the restore in one "
                         f"pg_restore run ({pj['restore_one_run_s']:.1f} s) "
                         f"the verification may take {pj['verify_budget_at_1_25_s']:.1f} s for "
                         "1.25 x; measured variants:")
            lines += [f"  {k}: verify {x['verify_s']:.1f} s, drill {x['drill_s']:.1f} s, "
                      f"{x['ratio']:.2f} x" for k, x in pj.items() if isinstance(x, dict) and "ratio" in x]
    for name, met, detail in goals(res):
        verdict = "not measured" if met is None else "met" if met else "NOT met"
        lines.append(f"goal {name}: {verdict} ({detail})")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=100, help="demo scale (100: about 740 MB)")
    ap.add_argument("--dir", default="/var/tmp/pg-runbooks-drill-bench",
                    help="kept between runs: the sandbox and its databases")
    ap.add_argument("--bindir", default=None, help="PostgreSQL bin directory (default: embedded)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of "
                    + ",".join(PARTS))
    ap.add_argument("--min-mb", type=float, default=700)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (medians)")
    ap.add_argument("--json", default=None, help="also write the JSON here")
    ap.add_argument("--drill-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.drill_child:
        drill_child(*args.drill_child)
        return 0
    parts = set(args.parts.split(","))
    base_dir = Path(args.dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    base_dir.chmod(0o755)
    bins = server.bindir(args.bindir).resolve()
    major = server.server_major(bins)
    base = base_dir / f"sandbox-pg{major}"
    work = base_dir / f"work-pg{major}"
    work.mkdir(exist_ok=True)
    work.chmod(0o755)
    res: dict[str, Any] = {"command": " ".join(["python", "benchmarks/restore_drill.py",
                                                *sys.argv[1:]]),
                           "server": f"PostgreSQL {major} ({bins})", "cores": os.cpu_count(),
                           "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    sb = server.start(base, args.bindir, max_connections=100)
    # the drill's client programs from the same bin directory as the server's
    t0 = time.monotonic()
    big = generate(sb, BIG_DB, args.scale, base_dir / f"generated-pg{major}.json")
    small = generate(sb, SMALL_DB, round(args.scale / 10, 3), base_dir / f"generated-pg{major}.json")
    res["generation"] = {"big": big, "small": small,
                         "this_run_s": round(time.monotonic() - t0, 1)}
    if big["bytes"] < args.min_mb * 1e6:
        say(f"{BIG_DB} is {mb(big['bytes'])} MB, under --min-mb {args.min_mb}: raise --scale")
    res["big_db_over_min"] = big["bytes"] >= args.min_mb * 1e6
    plains: list[dict[str, Any]] = []
    drills: list[dict[str, Any]] = []
    for i in range(args.repeat):  # alternately: both see the same load from other work
        if "plain" in parts:
            say(f"plain pg_dump -Fd -j2 -Z 6 and pg_restore -j2 (run {i + 1}/{args.repeat})")
            plains.append(run_plain(sb, BIG_DB, big["bytes"], bins, work / "plain"))
            say(f"plain: {plains[-1]['total_s']:.1f} s")
        if "drill" in parts:
            say(f"the drill on {BIG_DB} ({mb(big['bytes'])} MB) (run {i + 1}/{args.repeat}"
                + (", with pitr and the profile)" if i == 0 else ", without pitr)"))
            drills.append({"db_mb": mb(big["bytes"]),
                           **run_drill(sb, BIG_DB, big["bytes"], bins, work / "drill",
                                       profile=True, pitr=i == 0)})
    if plains:
        res["plain"] = {**median_run(plains, "total_s"),
                        "runs_total_s": [p["total_s"] for p in plains]}
    if drills:
        first = drills[0]
        res["drill"] = {**median_run(drills, "counted_s"),
                        "runs": [{"counted_s": d["counted_s"], "to_usable_s": d["to_usable_s"],
                                  "steps_s": {k: d["steps"][k]["wall_s"] for k in STEPS}}
                                 for d in drills],
                        "pitr": first.get("pitr"),
                        "profile": {k: round(statistics.median(d["profile"][k] for d in drills), 2)
                                    for k in first["profile"]},
                        "profile_runs": [d["profile"] for d in drills],
                        "peak_rss_self_mb": max(d["peak_rss_self_mb"] for d in drills),
                        "peak_rss_children_mb": max(d["peak_rss_children_mb"] for d in drills)}
        res["drill"]["steps"]["pitr"] = first["steps"]["pitr"]
    if "small" in parts:
        say(f"the drill on {SMALL_DB} ({mb(small['bytes'])} MB)")
        res["small_drill"] = {"db_mb": mb(small["bytes"]),
                              **run_drill(sb, SMALL_DB, small["bytes"], bins, work / "small")}
    if "pgbackrest" in parts:
        say("pgBackRest: full backup, restore, start")
        res["pgbackrest"], sb = run_pgbackrest(base, sb, args.bindir, big["bytes"],
                                               work / "pgbackrest", args.repeat)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    lines = summary(res)
    res["goals"] = {name: met for name, met, _ in goals(res)}
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print("\n".join(lines))
    ran = drills + ([res["small_drill"]] if "small_drill" in res else [])
    return 1 if any(d["not_ok"] or d["errors"] for d in ran) else 0  # a drill that failed


if __name__ == "__main__":
    sys.exit(main())
